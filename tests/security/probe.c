/*
 * minibox security probe: reports, from INSIDE a container, what the
 * container's process can see and do.  One line per check, "name=value":
 * values are "ok", an errno name ("EPERM"), or a number / hex mask.
 *
 * It tries forbidden things on purpose (mount, module load, reboot, kexec,
 * sysrq, a chroot escape...), each chosen to be harmless even if it were
 * allowed: reboot asks for LINUX_REBOOT_CMD_CAD_OFF, kexec_load passes an
 * invalid architecture, clock_settime targets CLOCK_MONOTONIC (which can
 * never be set), /proc/sysrq-trigger is only opened, never written.  Even
 * so: NEVER RUN IT ON THE HOST.  It refuses to run when its pid or mount
 * namespace is the one named on its command line (the test passes the
 * host's).
 *
 * usage: probe HOST_PIDNS_INO HOST_MNTNS_INO HOST_PID MARKER_PATH [CHECK...]
 *   HOST_PID     a process the test started on the host (ptrace target)
 *   MARKER_PATH  a path that exists on the host but not in the rootfs
 *   CHECK        names of checks to run (default: all)
 *
 * Built by tests/security/test_hardening.py with `cc -static`.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/bpf.h>
#include <linux/keyctl.h>
#include <linux/reboot.h>
#include <netinet/in.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/personality.h>
#include <sys/ptrace.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

static int n_checks;
static char **checks;
static pid_t host_pid;
static const char *marker;

static int wanted(const char *name)
{
    if (n_checks == 0)
        return 1;
    for (int i = 0; i < n_checks; i++)
        if (strcmp(checks[i], name) == 0)
            return 1;
    return 0;
}

static const char *errname(int err)
{
    const char *name = strerrorname_np(err);
    return name ? name : "E?";
}

/* Print "name=ok" for rc >= 0, else "name=ERRNO". */
static void report(const char *name, long rc)
{
    if (rc >= 0)
        printf("%s=ok\n", name);
    else
        printf("%s=%s\n", name, errname(errno));
    fflush(stdout);
}

/* A raw syscall's return value (-errno convention) reported the same way. */
static void report_raw(const char *name, long rc)
{
    if (rc >= 0 || rc < -4095)
        printf("%s=ok\n", name);
    else
        printf("%s=%s\n", name, errname((int)-rc));
    fflush(stdout);
}

/* Run fn in a child; report its exit status as the check result, or the signal. */
static void in_child(const char *name, int (*fn)(void))
{
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0) {
        report(name, -1);
        return;
    }
    if (pid == 0)
        _exit(fn());
    int status;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    if (WIFSIGNALED(status))
        printf("%s=signal:%s\n", name, sigabbrev_np(WTERMSIG(status)) ? sigabbrev_np(WTERMSIG(status)) : "?");
    else if (WEXITSTATUS(status) == 0)
        printf("%s=ok\n", name);
    else
        printf("%s=%s\n", name, errname(WEXITSTATUS(status)));
    fflush(stdout);
}

static void status_fields(void)
{
    static const char *fields[][2] = {
        {"CapInh:", "cap_inh"}, {"CapPrm:", "cap_prm"}, {"CapEff:", "cap_eff"},
        {"CapBnd:", "cap_bnd"}, {"CapAmb:", "cap_amb"}, {"NoNewPrivs:", "no_new_privs"},
        {"Seccomp:", "seccomp"},
    };
    FILE *f = fopen("/proc/self/status", "r");
    if (!f) {
        report("status", -1);
        return;
    }
    char line[256];
    while (fgets(line, sizeof line, f)) {
        for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++) {
            size_t len = strlen(fields[i][0]);
            if (strncmp(line, fields[i][0], len) == 0) {
                char *value = line + len;
                while (*value == ' ' || *value == '\t')
                    value++;
                value[strcspn(value, "\n")] = 0;
                printf("%s=%s\n", fields[i][1], value);
            }
        }
    }
    fclose(f);
    printf("uid=%d\n", (int)getuid());
}

static int ino_of(const char *path, unsigned long *ino)
{
    struct stat st;
    if (stat(path, &st) < 0)
        return -1;
    *ino = st.st_ino;
    return 0;
}

/* ---- the chroot escape, in a child: exit 0 = contained, ESCAPED = escaped, else errno */
#define ESCAPED 200
static int chroot_escape(void)
{
    const char *dir = "/tmp/probe-chroot";
    if (mkdir(dir, 0700) < 0 && errno != EEXIST)
        return errno;
    if (chdir("/tmp") < 0 || chroot("probe-chroot") < 0)
        return errno;
    /* cwd (/tmp) is now outside the new root: walk up as far as the kernel lets us */
    for (int i = 0; i < 64; i++)
        if (chdir("..") < 0)
            return errno;
    if (chroot(".") < 0)
        return errno;
    struct stat st;
    return stat(marker, &st) == 0 ? ESCAPED : 0;
}

static void chroot_check(void)
{
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0)
        _exit(chroot_escape());
    int status;
    waitpid(pid, &status, 0);
    if (!WIFEXITED(status))
        printf("chroot_escape=signal\n");
    else if (WEXITSTATUS(status) == 0)
        printf("chroot_escape=contained\n");
    else if (WEXITSTATUS(status) == ESCAPED)
        printf("chroot_escape=ESCAPED\n");
    else
        printf("chroot_escape=%s\n", errname(WEXITSTATUS(status)));
    /* and a plain look for the marker, without chroot tricks */
    struct stat st;
    printf("marker_visible=%s\n", stat(marker, &st) == 0 ? "yes" : "no");
    fflush(stdout);
}

/* ---- 32-bit and x32 entry points ------------------------------------- */
static int keyctl_i386(void)
{
#if defined(__x86_64__)
    long rc;
    /* i386 keyctl is 288; KEYCTL_GET_KEYRING_ID=0, KEY_SPEC_SESSION_KEYRING=-3, create=0 */
    __asm__ volatile("int $0x80" : "=a"(rc) : "a"(288L), "b"(0L), "c"(-3L), "d"(0L) : "memory");
    return rc < 0 && rc > -4096 ? (int)-rc : 0;
#else
    return ENOSYS;
#endif
}

static int keyctl_x32(void)
{
    long rc = syscall(0x40000000L | 250, KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 0);
    return rc < 0 ? errno : 0;
}

static int ptrace_sibling(void)
{
    pid_t child = fork();
    if (child == 0) {
        pause();
        _exit(0);
    }
    int rc = 0;
    if (ptrace(PTRACE_ATTACH, child, 0, 0) < 0)
        rc = errno;
    else
        ptrace(PTRACE_DETACH, child, 0, 0);
    kill(child, SIGKILL);
    waitpid(child, NULL, 0);
    return rc;
}

static int clone_newuser(void)
{
    long rc = syscall(SYS_clone, (long)(CLONE_NEWUSER | SIGCHLD), 0L, 0L, 0L, 0L);
    if (rc == 0)
        _exit(0);
    if (rc < 0)
        return errno;
    waitpid((pid_t)rc, NULL, 0);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 5) {
        fprintf(stderr, "usage: probe HOST_PIDNS_INO HOST_MNTNS_INO HOST_PID MARKER [CHECK...]\n");
        return 2;
    }
    unsigned long host_pidns = strtoul(argv[1], NULL, 10), host_mntns = strtoul(argv[2], NULL, 10);
    unsigned long my_pidns = 0, my_mntns = 0;
    if (ino_of("/proc/self/ns/pid", &my_pidns) < 0 || ino_of("/proc/self/ns/mnt", &my_mntns) < 0
        || my_pidns == host_pidns || my_mntns == host_mntns) {
        fprintf(stderr, "probe: refusing to run outside a container (pid/mnt namespace is the host's)\n");
        return 3;
    }
    host_pid = (pid_t)atoi(argv[3]);
    marker = argv[4];
    checks = argv + 5;
    n_checks = argc - 5;
    setvbuf(stdout, NULL, _IOLBF, 0);

    if (wanted("status"))
        status_fields();

    if (wanted("rlimits")) {
        struct rlimit lim;
        getrlimit(RLIMIT_NOFILE, &lim);
        printf("rlimit_nofile=%llu:%llu\n", (unsigned long long)lim.rlim_cur, (unsigned long long)lim.rlim_max);
        getrlimit(RLIMIT_CORE, &lim);
        printf("rlimit_core=%llu:%llu\n", (unsigned long long)lim.rlim_cur, (unsigned long long)lim.rlim_max);
    }

    if (wanted("mount")) {
        mkdir("/tmp/probe-mnt", 0700);
        report("mount_tmpfs", mount("none", "/tmp/probe-mnt", "tmpfs", 0, NULL));
        report("umount_root", umount2("/", MNT_DETACH));
    }

    if (wanted("modules")) {
        static const char garbage[64] = "not an ELF module";
        report("init_module", syscall(SYS_init_module, garbage, sizeof garbage, ""));
        int fd = open("/proc/self/exe", O_RDONLY | O_CLOEXEC);
        report("finit_module", syscall(SYS_finit_module, fd, "", 0));
        close(fd);
        report("delete_module", syscall(SYS_delete_module, "minibox_no_such_module", O_NONBLOCK));
    }

    if (wanted("reboot"))
        report("reboot", syscall(SYS_reboot, LINUX_REBOOT_MAGIC1, LINUX_REBOOT_MAGIC2,
                                 LINUX_REBOOT_CMD_CAD_OFF, NULL));

    if (wanted("kexec"))   /* invalid architecture in flags: EINVAL even if it were allowed */
        report("kexec_load", syscall(SYS_kexec_load, 0UL, 0UL, NULL, 0xffff0000UL));

    if (wanted("ptrace")) {
        /* The host process is in another pid namespace: its number means
         * nothing here (ESRCH), or names some unrelated process of ours. */
        char path[64];
        snprintf(path, sizeof path, "/proc/%d/cmdline", (int)host_pid);
        int fd = open(path, O_RDONLY);
        printf("host_pid_visible=%s\n", fd >= 0 ? "yes" : "no");
        if (fd >= 0)
            close(fd);
        long rc = ptrace(PTRACE_ATTACH, host_pid, 0, 0);
        report("ptrace_outside", rc);
        if (rc == 0)
            ptrace(PTRACE_DETACH, host_pid, 0, 0);
        in_child("ptrace_sibling", ptrace_sibling);
    }

    if (wanted("devices")) {
        struct stat root;
        stat("/", &root);
        /* the block device holding the rootfs (or a disk-like one) */
        dev_t disk = major(root.st_dev) ? root.st_dev : makedev(8, 0);
        long rc = mknod("/tmp/probe-disk", S_IFBLK | 0600, disk);
        report("mknod_block", rc);
        if (rc == 0) {
            int fd = open("/tmp/probe-disk", O_RDONLY);
            report("open_block", fd);
            if (fd >= 0)
                close(fd);
            unlink("/tmp/probe-disk");
        }
        int fd = open("/dev/sda", O_RDONLY);
        report("open_dev_sda", fd);
        if (fd >= 0)
            close(fd);
        fd = open("/dev/mem", O_RDONLY);
        report("open_dev_mem", fd);
        if (fd >= 0)
            close(fd);
        /* host character devices by number: a virtual console (4:1) and KVM (10:232);
         * opened and closed, nothing more.  Only the devices cgroup (or a nodev
         * mount) stands between a CAP_MKNOD root and these. */
        static const struct { const char *name; unsigned maj, min; int flags; } chars[] = {
            {"open_tty1_node", 4, 1, O_RDONLY | O_NOCTTY | O_NONBLOCK},
            {"open_kvm_node", 10, 232, O_RDWR},
        };
        for (size_t i = 0; i < sizeof chars / sizeof chars[0]; i++) {
            unlink("/tmp/probe-char");
            if (mknod("/tmp/probe-char", S_IFCHR | 0600, makedev(chars[i].maj, chars[i].min)) < 0) {
                report(chars[i].name, -1);
                continue;
            }
            fd = open("/tmp/probe-char", chars[i].flags);
            report(chars[i].name, fd);
            if (fd >= 0)
                close(fd);
            unlink("/tmp/probe-char");
        }
        /* make our own /dev/mem node (char 1:1) and open it */
        rc = mknod("/tmp/probe-mem", S_IFCHR | 0600, makedev(1, 1));
        report("mknod_mem", rc);
        if (rc == 0) {
            fd = open("/tmp/probe-mem", O_RDONLY);
            report("open_mem_node", fd);
            if (fd >= 0)
                close(fd);
            unlink("/tmp/probe-mem");
        }
    }

    if (wanted("proc")) {
        int fd = open("/proc/kcore", O_RDONLY);
        if (fd < 0) {
            report("kcore_bytes", -1);
        } else {
            char buf[4096];
            ssize_t n = read(fd, buf, sizeof buf);
            if (n < 0)
                report("kcore_bytes", -1);
            else
                printf("kcore_bytes=%zd\n", n);
            close(fd);
        }
        /* open for writing only -- never write anything */
        fd = open("/proc/sysrq-trigger", O_WRONLY);
        report("sysrq_open_write", fd);
        if (fd >= 0)
            close(fd);
        fd = open("/proc/sys/kernel/hostname", O_WRONLY);
        report("proc_sys_open_write", fd);
        if (fd >= 0)
            close(fd);
        fd = open("/proc/keys", O_RDONLY);
        if (fd >= 0) {
            char buf[256];
            printf("proc_keys_bytes=%zd\n", read(fd, buf, sizeof buf));
            close(fd);
        } else {
            report("proc_keys_bytes", -1);
        }
    }

    if (wanted("tty")) {
        char c = 'x';
        report("tiocsti", ioctl(0, TIOCSTI, &c));
        /* the same command with garbage in the upper 32 bits of the argument register */
        report_raw("tiocsti_highbits", syscall(SYS_ioctl, 0, 0xdead00000000UL | TIOCSTI, &c) < 0 ? -errno : 0);
        char sub = 2;   /* TIOCL_SETSEL */
        report("tioclinux", ioctl(0, TIOCLINUX, &sub));
    }

    if (wanted("keys")) {
        report("keyctl", syscall(SYS_keyctl, KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 0));
        report("add_key", syscall(SYS_add_key, "user", "minibox-probe", "x", 1, KEY_SPEC_PROCESS_KEYRING));
        in_child("keyctl_i386", keyctl_i386);
        /* x32 ABI: keyctl (250) with __X32_SYSCALL_BIT; a filter without x32 kills the caller */
        in_child("keyctl_x32", keyctl_x32);
    }

    if (wanted("bpf"))
        report("bpf", syscall(SYS_bpf, BPF_PROG_LOAD, NULL, 0));

    if (wanted("misc")) {
        report("perf_event_open", syscall(SYS_perf_event_open, NULL, 0, -1, -1, 0));
        report("userfaultfd", syscall(SYS_userfaultfd, 0));
        report("open_by_handle_at", syscall(SYS_open_by_handle_at, -1, NULL, 0));
        report("iopl", syscall(SYS_iopl, 3));
        report("swapoff", syscall(SYS_swapoff, "/minibox-no-such-swap"));
        struct timespec ts = {0, 0};
        report("clock_settime", syscall(SYS_clock_settime, CLOCK_MONOTONIC, &ts));
        report("syslog_read", syscall(SYS_syslog, 3 /* SYSLOG_ACTION_READ_ALL */, NULL, 0));
        report("io_uring_setup", syscall(SYS_io_uring_setup, 0, NULL));
        report("personality_no_aslr", personality(ADDR_NO_RANDOMIZE));
        report("personality_query", personality(0xffffffff));
    }

    if (wanted("namespaces")) {
        report("unshare_user", unshare(CLONE_NEWUSER));
        report("unshare_net", unshare(CLONE_NEWNET));
        in_child("clone_user", clone_newuser);
        report("clone3", syscall(SYS_clone3, NULL, 0));
        report("setns", syscall(SYS_setns, 0, 0));
    }

    if (wanted("chroot"))
        chroot_check();

    if (wanted("allowed")) {
        /* things a program with the default capabilities must still be able to do */
        int fd = open("/tmp/probe-owned", O_CREAT | O_WRONLY, 0600);
        close(fd);
        report("chown", chown("/tmp/probe-owned", 1000, 1000));
        unlink("/tmp/probe-owned");
        int s = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(80)};
        report("bind_port_80", bind(s, (struct sockaddr *)&addr, sizeof addr));
        close(s);
        report("getpid", getpid());
        pid_t pid = fork();
        if (pid == 0)
            _exit(0);
        report("fork", pid < 0 ? -1 : waitpid(pid, NULL, 0));
    }
    printf("done=1\n");
    return 0;
}
