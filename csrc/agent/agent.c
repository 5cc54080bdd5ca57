/*
 * minibox guest agent: PID 1 of a minibox microVM.
 *
 * This is the guest half of minibox.vm: the "container init" of the
 * hypervisor path.  The host (minibox/vm/virtual_machine.py) boots a guest
 * kernel with an initramfs holding only this static binary, the kernel
 * modules it needs and a description of the Spec (/minibox/config).  As PID 1
 * the agent
 *
 *   1. mounts /proc, /sys and a devtmpfs on /dev            (mount(2))
 *   2. loads the kernel modules in the order the host chose (finit_module(2))
 *   3. opens the virtio-serial ports named minibox.control, minibox.stdout
 *      and minibox.stderr                    (Documentation: virtio_console)
 *      brings lo up and, for network="bridge", gives the virtio-net NIC the
 *      address and default route the host leased it (netdevice(7), route(4):
 *      SIOCSIFADDR, SIOCSIFNETMASK, SIOCSIFFLAGS, SIOCADDRT; no tools needed)
 *   4. mounts the Spec's rootfs, shared by the host through virtiofs, and the
 *      Spec's extra mounts, then makes it the root   (MS_MOVE + chroot, as
 *      switch_root(8) does)
 *   5. applies the rest of the Spec to every command it starts, in the
 *      order the container path's C child uses (csrc/spawn.c): session and
 *      pty, rlimits, the capability bounding set, uid/gid, the other
 *      capability sets, cwd, no_new_privs, the seccomp filter the host
 *      compiled, execve         (setrlimit(2), capset(2), prctl(2), seccomp(2))
 *   6. runs the command with its stdout/stderr wired straight to the ports,
 *      serves exec requests from the host while it runs, reports how each
 *      command ended (the main command's report once every other process
 *      is gone, with the bytes its ports carried: the host ends the VM as
 *      soon as it has them, docs/vm.md "How a run ends"), and
 *   7. powers the machine off                                (reboot(2))
 *
 * The control port carries a small framed protocol (docs/vm.md):
 *     u32 length (little endian) | u8 type | u32 id | length bytes of payload
 * Guest -> host:  'H' hello (uname release)   'S' started (pid)
 *                 'O'/'E' output of an exec   'X' exit ("x N" or "s N", usage;
 *                                             the main command's: + out/err bytes)
 *                 'F' failure ("step\0errno\0detail")
 * Host -> guest:  'x' exec (records like the config's: A argv, E env, C cwd,
 *                 U uid, G gid, T tty, and last I + raw stdin bytes)
 *                 'k' kill (signal)
 *                 'i' stdin bytes (id 0: a template clone's command, before 'c';
 *                     an exec's id: its streamed stdin, request record 'j'; empty: the end;
 *                     a tty exec's id: typed into its pty, as it comes)
 *                 'c' the run's config (template clones)
 *                 'w' a terminal's size ("rows cols"): id 0 the main command's, an exec's id its pty's
 *                 'r' re-initialise after a restore ("sec nsec\0hex\0": the
 *                     host's clock and entropy, as for a clone); answered by
 *                     'X' "x 0" with the same id, or 'F' naming the step
 *
 * Streamed stdin (config record 'J', the OCI runtime's VMs, oci/vm_supervisor.py):
 * a fourth port, minibox.stdin, is the main command's stdin as it is
 * (or, with a tty, relayed into the pty's master); the host ends it by
 * shutting down its side, which the guest reads as end of file.
 *
 * Template mode (config record 'W', docs/vm.md "Snapshots and templates"):
 * the agent stops after step 3 and waits on the control port for 'i'* then
 * 'c'.  The host snapshots the guest there, and restores it many times;
 * each clone then receives its own Spec in 'c', with the host's wall clock
 * (record 'Q', clock_settime(2)) and fresh entropy (record 'Z':
 * RNDADDENTROPY + RNDRESEEDCRNG, random(4)), so that no two clones share a
 * clock or a random stream.  A clone on the bridge also gets its NIC's own
 * MAC (record 'm', set before the link goes up), address (record 'N') and
 * /etc files (records 'f' + 'B'): the template's NIC stayed down.  Then it
 * goes on with step 4.
 *
 * It is built by minibox itself with `cc -static -O2` and never allocates
 * more than fixed tables: a guest has no one to report a malloc failure to.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/reboot.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>
/* the hardening: capabilities and seccomp */
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <termios.h>
/* the network: netdevice(7) and route(4) ioctls on an AF_INET socket */
#include <arpa/inet.h>
#include <net/if.h>
#include <net/if_arp.h>
#include <net/route.h>
#include <netinet/in.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
/* template clones: the clock and the RNG */
#include <linux/random.h>
#include <time.h>

#define MAX_ARGS 256
#define MAX_ENV 256
#define MAX_MOUNTS 32
#define MAX_EXECS 16
#define CONFIG_MAX (256 * 1024)
#define FRAME_MAX (1024 * 1024)

/* ---- the Spec, as the host wrote it into /minibox/config ------------------ */

struct mount_req {
    const char *kind;   /* "dir" (virtiofs), "file" (virtiofs + bind), "tmpfs" */
    const char *tag;    /* virtiofs tag */
    const char *name;   /* file name inside the shared parent ("file" only) */
    const char *target; /* absolute path inside the rootfs */
    int readonly;
    const char *size;   /* tmpfs size= option or "" */
};

/* One command to start: the Spec's (from the config) or an exec's (from
 * its request frame).  Strings point into the config or the frame. */
struct command {
    char *argv[MAX_ARGS + 1];
    char *envp[MAX_ENV + 1];
    int argc, envc;
    const char *cwd;
    uid_t uid;
    gid_t gid;
    int tty;                /* a new pty: its slave is stdin, stdout and stderr */
    const char *stdin_data; /* exec only: bytes to feed (NULL: /dev/null) */
    size_t stdin_len;
    int stdin_stream;       /* exec only (record j): stdin comes in 'i' frames, an empty one ends it */
};

static char config[CONFIG_MAX];
static struct command main_cmd = { .cwd = "/" };
static const char *hostname_ = "minibox", *root_tag = "rootfs";
static int root_readonly, probe_mode, have_stdin, template_mode;
/* record Q ("sec nsec", the host's CLOCK_REALTIME) and Z (hex entropy) of a clone's run */
static const char *clock_, *entropy_;
/* init semantics (Spec.init): the command's end by signal N is reported as
 * exit status 128+N, as minibox-init (csrc/init/init.c) reports it */
static int init_mode;
/* record J: the main command's stdin is the minibox.stdin port (streamed by the host) */
static int stdin_port_wanted, stdin_port = -1;

/* The hardening every command gets, from records K, n, S and L: the same
 * masks, flag, filter and limits the container path's child applies. */
#define MAX_RLIMITS 16
#define SECCOMP_MAX 4096
static int have_caps, no_new_privs;
static uint64_t cap_bounding, root_effective, root_permitted, root_inheritable, root_ambient;
static struct sock_filter seccomp_prog[SECCOMP_MAX];
static unsigned short seccomp_len;
static struct { int resource; struct rlimit lim; } rlimits[MAX_RLIMITS];
static int nrlimits;
/* Spec.limits inside the guest, from record c: one cgroup v2 group,
 * /sys/fs/cgroup/minibox, that every command joins first (cgroups(7)) */
static const char *cg_pids = "", *cg_memory = "", *cg_cpu = "";
static int cg_procs_fd = -1;
static struct mount_req mounts[MAX_MOUNTS];
static int nmounts;
/* record N: the NIC to configure (bridge mode); NULL ifname = no NIC */
static const char *net_ifname, *net_address, *net_prefixlen, *net_gateway;
/* records B: files of the initramfs bind-mounted read-only over rootfs files */
#define MAX_BINDS 8
static struct { const char *source, *target; } binds[MAX_BINDS];
static int nbinds;
/* a template clone on the bridge (run config): record m, the NIC's own MAC
 * (set before the link goes up), and records f, the generated /etc files'
 * contents, written to /minibox/etc/<name> for the B records to bind */
static const char *net_mac;
static struct { const char *name, *text; } etc_files[MAX_BINDS];
static int netc_files;

/* ---- state ------------------------------------------------------------- */

static int ctl_fd = -1, out_fd = -1, err_fd = -1;
static pid_t main_pid = -1;
static int main_master = -1;   /* the main command's pty (Spec.tty), or -1 */

struct exec_slot {
    uint32_t id;
    pid_t pid;
    int out, err;       /* read ends of the child's pipes (or its pty), -1 once at EOF */
    int in;             /* write end of a streamed stdin (record j), -1 when none or ended */
    int master;         /* a tty exec's pty master, for its input ('i') and size ('w'); else -1 */
    int status, exited;
    struct rusage ru;   /* from wait4(2): the exec's Result.usage */
    long oom_before;    /* oom_kills() when it started */
};
static struct exec_slot execs[MAX_EXECS];

static void console(const char *fmt, ...)
{
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf - 1, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if (n > (int)sizeof buf - 2)
        n = sizeof buf - 2;
    buf[n++] = '\n';
    int fd = open("/dev/console", O_WRONLY | O_NOCTTY | O_CLOEXEC);
    if (fd < 0)
        fd = 2;
    if (write(fd, buf, n) < 0) { /* nowhere left to complain */ }
    if (fd != 2)
        close(fd);
}

static void power_off(void)
{
    sync();
    reboot(RB_POWER_OFF);
    for (;;)
        pause();
}

static int write_all(int fd, const void *data, size_t len)
{
    const char *p = data;
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0) {
            if (errno == EINTR || errno == EAGAIN) {
                if (errno == EAGAIN) {
                    struct pollfd pfd = { fd, POLLOUT, 0 };
                    poll(&pfd, 1, 100);
                }
                continue;
            }
            return -1;
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

static void send_frame(char type, uint32_t id, const void *payload, uint32_t len)
{
    unsigned char head[9];
    head[0] = len & 0xff; head[1] = (len >> 8) & 0xff;
    head[2] = (len >> 16) & 0xff; head[3] = (len >> 24) & 0xff;
    head[4] = (unsigned char)type;
    head[5] = id & 0xff; head[6] = (id >> 8) & 0xff;
    head[7] = (id >> 16) & 0xff; head[8] = (id >> 24) & 0xff;
    if (ctl_fd < 0)
        return;
    if (write_all(ctl_fd, head, sizeof head) < 0 || write_all(ctl_fd, payload, len) < 0)
        console("minibox-agent: control port write failed: %s", strerror(errno));
}

static void send_text(char type, uint32_t id, const char *fmt, ...)
{
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (n < 0)
        n = 0;
    if (n >= (int)sizeof buf)
        n = sizeof buf - 1;
    send_frame(type, id, buf, (uint32_t)n);
}

/* A setup step failed: tell the host which one and why, then stop. */
static void fail(uint32_t id, const char *step, int err, const char *detail)
{
    char buf[1024];
    int n = snprintf(buf, sizeof buf, "%s%c%d%c%s", step, 0, err, 0, detail ? detail : "");
    if (n >= (int)sizeof buf)
        n = sizeof buf - 1;
    console("minibox-agent: %s %s: %s", step, detail ? detail : "", strerror(err));
    send_frame('F', id, buf, (uint32_t)n);
    if (id == 0)
        power_off();
}

/* ---- reading the Spec ------------------------------------------------- */

static char *next_str(char **p, char *end)
{
    char *s = *p;
    char *z = memchr(s, 0, (size_t)(end - s));
    if (!z)
        return NULL;
    *p = z + 1;
    return s;
}

/* A record that describes a command (config and exec requests share them):
 * 0 when it was one, -1 when the tag is someone else's. */
static int command_record(struct command *c, char tag, char *s)
{
    switch (tag) {
    case 'A': if (c->argc < MAX_ARGS) c->argv[c->argc++] = s; return 0;
    case 'E': if (c->envc < MAX_ENV) c->envp[c->envc++] = s; return 0;
    case 'C': c->cwd = s; return 0;
    case 'U': c->uid = (uid_t)strtoul(s, NULL, 10); return 0;
    case 'G': c->gid = (gid_t)strtoul(s, NULL, 10); return 0;
    case 'T': c->tty = 1; return 0;
    case 'j': c->stdin_stream = 1; return 0;
    default: return -1;
    }
}

/* A policy record, applied to every command the agent starts (setup_child):
 * 0 if taken, 1 if the tag is not a policy record, -1 if malformed. */
static int policy_record(char tag, char *s)
{
    switch (tag) {
    case 'n': no_new_privs = 1; return 0;
    case 'K': {
        /* five hex masks: bounding effective permitted inheritable ambient */
        char *e = s;
        cap_bounding = strtoull(e, &e, 16);
        root_effective = strtoull(e, &e, 16);
        root_permitted = strtoull(e, &e, 16);
        root_inheritable = strtoull(e, &e, 16);
        root_ambient = strtoull(e, &e, 16);
        have_caps = 1;
        return 0;
    }
    case 'S': {
        /* the BPF program, hex: 8 bytes (16 digits) per struct sock_filter */
        size_t digits = strlen(s);
        if (digits % 16 || digits / 16 > SECCOMP_MAX)
            return -1;
        unsigned char *out = (unsigned char *)seccomp_prog;
        for (size_t i = 0; i < digits / 2; i++) {
            char byte[3] = { s[2 * i], s[2 * i + 1], 0 };
            out[i] = (unsigned char)strtoul(byte, NULL, 16);
        }
        seccomp_len = (unsigned short)(digits / 16);
        return 0;
    }
    case 'L': {
        /* "resource soft hard", decimal, unsigned 64-bit */
        if (nrlimits >= MAX_RLIMITS)
            return -1;
        char *e = s;
        rlimits[nrlimits].resource = (int)strtol(e, &e, 10);
        rlimits[nrlimits].lim.rlim_cur = strtoull(e, &e, 10);
        rlimits[nrlimits].lim.rlim_max = strtoull(e, &e, 10);
        nrlimits++;
        return 0;
    }
    default: return 1;
    }
}

/* Parse config[0..len) (the records' strings stay in config[]). */
static int parse_config(ssize_t len)
{
    char *p = config, *end = config + len;
    main_cmd = (struct command){ .cwd = "/" };
    nmounts = nbinds = nrlimits = netc_files = 0;
    have_caps = no_new_privs = 0;   /* the policy is this config's alone (a pooled clone's warm-up set one) */
    seccomp_len = 0;
    while (p < end) {
        char tag = *p++;
        char *s = next_str(&p, end);
        if (!s)
            return -1;
        if (command_record(&main_cmd, tag, s) == 0)
            continue;
        int policy = policy_record(tag, s);
        if (policy < 0)
            return -1;
        if (policy == 0)
            continue;
        switch (tag) {
        case 'H': hostname_ = s; break;
        case 'i': init_mode = 1; break;
        case 'c':
            /* pids.max, memory.max, cpu.max ("" = not limited) */
            cg_pids = s;
            cg_memory = next_str(&p, end);
            cg_cpu = next_str(&p, end);
            if (!cg_memory || !cg_cpu)
                return -1;
            break;
        case 'R': root_tag = s; break;
        case 'r': root_readonly = 1; break;
        case 'P': probe_mode = 1; break;
        case 'I': have_stdin = 1; break;
        case 'W': template_mode = 1; break;
        case 'J': stdin_port_wanted = 1; break;
        case 'Q': clock_ = s; break;
        case 'Z': entropy_ = s; break;
        case 'M': {
            if (nmounts >= MAX_MOUNTS)
                return -1;
            struct mount_req *m = &mounts[nmounts++];
            m->kind = s;
            m->tag = next_str(&p, end);
            m->name = next_str(&p, end);
            m->target = next_str(&p, end);
            const char *ro = next_str(&p, end);
            m->size = next_str(&p, end);
            if (!m->tag || !m->name || !m->target || !ro || !m->size)
                return -1;
            m->readonly = ro[0] == '1';
            break;
        }
        case 'N':
            net_ifname = s;
            net_address = next_str(&p, end);
            net_prefixlen = next_str(&p, end);
            net_gateway = next_str(&p, end);
            if (!net_address || !net_prefixlen || !net_gateway)
                return -1;
            break;
        case 'm': net_mac = s; break;
        case 'f':
            if (netc_files >= MAX_BINDS || strchr(s, '/') || !s[0] || s[0] == '.')
                return -1;
            etc_files[netc_files].name = s;
            etc_files[netc_files].text = next_str(&p, end);
            if (!etc_files[netc_files++].text)
                return -1;
            break;
        case 'B':
            if (nbinds >= MAX_BINDS)
                return -1;
            binds[nbinds].source = s;
            binds[nbinds].target = next_str(&p, end);
            if (!binds[nbinds++].target)
                return -1;
            break;
        default: return -1;
        }
    }
    main_cmd.argv[main_cmd.argc] = NULL;
    main_cmd.envp[main_cmd.envc] = NULL;
    return main_cmd.argc > 0 || template_mode ? 0 : -1;
}

static int load_config(void)
{
    int fd = open("/minibox/config", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t len = read(fd, config, sizeof config - 1);
    close(fd);
    if (len < 0)
        return -1;
    return parse_config(len);
}

/* ---- the machine ------------------------------------------------------ */

static void load_modules(void)
{
    struct dirent **names;
    int n = scandir("/minibox/modules", &names, NULL, alphasort);
    for (int i = 0; i < n; i++) {
        char path[512];
        if (names[i]->d_name[0] != '.') {
            snprintf(path, sizeof path, "/minibox/modules/%s", names[i]->d_name);
            int fd = open(path, O_RDONLY | O_CLOEXEC);
            if (fd < 0 || (syscall(SYS_finit_module, fd, "", 0) < 0 && errno != EEXIST))
                console("minibox-agent: finit_module %s: %s", path, strerror(errno));
            if (fd >= 0)
                close(fd);
        }
        free(names[i]);
    }
    if (n >= 0)
        free(names);
}

/* virtio-serial ports show up in sysfs a moment after virtio_console loads. */
static int open_port(const char *want, char *dev, size_t devlen)
{
    for (int tries = 0; tries < 1000; tries++) {
        DIR *d = opendir("/sys/class/virtio-ports");
        struct dirent *e;
        while (d && (e = readdir(d))) {
            char path[300], name[128] = "";
            if (e->d_name[0] == '.')
                continue;
            snprintf(path, sizeof path, "/sys/class/virtio-ports/%s/name", e->d_name);
            int fd = open(path, O_RDONLY | O_CLOEXEC);
            if (fd < 0)
                continue;
            ssize_t n = read(fd, name, sizeof name - 1);
            close(fd);
            if (n <= 0)
                continue;
            name[n] = 0;
            if (name[n - 1] == '\n')
                name[n - 1] = 0;
            if (strcmp(name, want) == 0) {
                snprintf(path, sizeof path, "/dev/%s", e->d_name);
                fd = open(path, O_RDWR | O_CLOEXEC | O_NOCTTY);
                if (fd >= 0) {
                    if (dev)
                        snprintf(dev, devlen, "%s", e->d_name);
                    closedir(d);
                    return fd;
                }
            }
        }
        if (d)
            closedir(d);
        usleep(5000);
    }
    return -1;
}

/* How many bytes the guest's virtio_console driver has handed to the host
 * on a port: the "bytes_sent:" line of its debugfs file
 * (drivers/char/virtio_console.c, port_debugfs_show), counted as each
 * write(2) queues its buffer.  The main command writes its output straight
 * to the stdout/stderr ports, so only the kernel knows how much it wrote;
 * with these counts in the exit frame the host knows when it has received
 * all of it and need not wait for QEMU to close the ports (docs/vm.md,
 * "How a run ends").  The files are opened before the root switch (after
 * it, the initramfs's /sys is out of reach) and read with pread(2), which
 * regenerates a seq_file from offset 0.  -1: no debugfs (a kernel built
 * without it); the host then waits for the ports' end of file as before. */
static int out_count_fd = -1, err_count_fd = -1;

static int open_count(const char *dev)
{
    char path[128];
    if (!dev[0])
        return -1;
    snprintf(path, sizeof path, "/sys/kernel/debug/virtio-ports/%s", dev);
    return open(path, O_RDONLY | O_CLOEXEC);
}

static void open_port_counters(const char *out_dev, const char *err_dev)
{
    mkdir("/sys/kernel/debug", 0700);
    if (mount("debugfs", "/sys/kernel/debug", "debugfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=0700") < 0 &&
        errno != EBUSY)
        return;
    out_count_fd = open_count(out_dev);
    err_count_fd = open_count(err_dev);
}

static long long port_bytes_sent(int fd)
{
    char buf[512];
    if (fd < 0)
        return -1;
    ssize_t n = pread(fd, buf, sizeof buf - 1, 0);
    if (n <= 0)
        return -1;
    buf[n] = 0;
    char *at = strstr(buf, "bytes_sent: ");
    return at ? strtoll(at + 12, NULL, 10) : -1;
}

static void mkdirs(const char *path)
{
    char buf[4096];
    snprintf(buf, sizeof buf, "%s", path);
    for (char *p = buf + 1; *p; p++) {
        if (*p == '/') {
            *p = 0;
            mkdir(buf, 0755);
            *p = '/';
        }
    }
    mkdir(buf, 0755);
}

static int write_file(const char *path, const char *text)
{
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    int rc = write_all(fd, text, strlen(text));
    int saved = errno;
    close(fd);
    errno = saved;
    return rc;
}

/* The guest's own cgroup for Spec.limits: cgroup2 on /sys/fs/cgroup of the
 * new root, the controllers handed down, the limits written, and
 * cgroup.procs kept open for every command to join (setup_child). */
static void setup_cgroup(void)
{
    static const struct { const char **value; const char *controller, *file; } knobs[] = {
        { &cg_pids, "+pids", "pids.max" }, { &cg_memory, "+memory", "memory.max" },
        { &cg_cpu, "+cpu", "cpu.max" },
    };
    if (!cg_pids[0] && !cg_memory[0] && !cg_cpu[0])
        return;
    if (mount("cgroup2", "/newroot/sys/fs/cgroup", "cgroup2", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) < 0)
        fail(0, "cgroup", errno, "mount cgroup2");
    for (size_t i = 0; i < sizeof knobs / sizeof knobs[0]; i++)
        if ((*knobs[i].value)[0] &&
            write_file("/newroot/sys/fs/cgroup/cgroup.subtree_control", knobs[i].controller) < 0)
            fail(0, "cgroup", errno, knobs[i].controller);
    if (mkdir("/newroot/sys/fs/cgroup/minibox", 0755) < 0 && errno != EEXIST)
        fail(0, "cgroup", errno, "mkdir");
    for (size_t i = 0; i < sizeof knobs / sizeof knobs[0]; i++) {
        char path[128];
        snprintf(path, sizeof path, "/newroot/sys/fs/cgroup/minibox/%s", knobs[i].file);
        if ((*knobs[i].value)[0] && write_file(path, *knobs[i].value) < 0)
            fail(0, "cgroup", errno, knobs[i].file);
    }
    /* no swap in the guest; memory.swap.max stays as it is */
    cg_procs_fd = open("/newroot/sys/fs/cgroup/minibox/cgroup.procs", O_WRONLY | O_CLOEXEC);
    if (cg_procs_fd < 0)
        fail(0, "cgroup", errno, "cgroup.procs");
}

/* memory.events' oom_kill: how many processes the guest's OOM killer ended
 * in the cgroup (a SIGKILL with a new one is Result.reason "oom") */
static long oom_kills(void)
{
    char buf[512];
    int fd = open("/sys/fs/cgroup/minibox/memory.events", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return 0;
    buf[n] = 0;
    char *at = strstr(buf, "oom_kill ");
    return at ? strtol(at + 9, NULL, 10) : 0;
}

static int root_prepared; /* prepare_root() ran (a template's guest: before it was saved) */

/* What every run's root gets whatever its Spec: the rootfs mounted at
 * /newroot, the API file systems and a devpts of its own.  A template's
 * guest does this before it is saved, so that a clone only does the part of
 * setup_root() that depends on its run (and executes less guest code after
 * the restore, each path of it a first pass through an empty TCG cache). */
static void prepare_root(void)
{
    /* Mounted read-write first, so that missing mount points can be created
     * (as runc does); made read-only once everything is mounted. */
    if (root_tag[0] == 0) {
        /* the rootfs was packed into the initramfs under /newroot: make it a
         * mount point of its own so that it can be moved and made read-only */
        if (mount("/newroot", "/newroot", NULL, MS_BIND | MS_REC, NULL) < 0)
            fail(0, "mount", errno, "rootfs (initramfs)");
    } else if (mount(root_tag, "/newroot", "virtiofs", 0, NULL) < 0) {
        fail(0, "mount", errno, "rootfs (virtiofs)");
    }
    static const struct { const char *src, *dst, *type; unsigned long flags; } api[] = {
        { "proc", "/newroot/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC },
        { "sysfs", "/newroot/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC },
        { "devtmpfs", "/newroot/dev", "devtmpfs", MS_NOSUID },
    };
    for (size_t i = 0; i < sizeof api / sizeof api[0]; i++) {
        mkdir(api[i].dst, 0755);
        if (mount(api[i].src, api[i].dst, api[i].type, api[i].flags, NULL) < 0)
            fail(0, "mount", errno, api[i].dst + 8);
    }
    /* a devpts of its own, for Spec.tty and exec(tty=True): ptys are
     * allocated through its ptmx node (devpts(5): ptmxmode) */
    mkdir("/newroot/dev/pts", 0755);
    if (mount("devpts", "/newroot/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC,
              "newinstance,ptmxmode=0666,mode=0620") < 0)
        console("minibox-agent: devpts: %s", strerror(errno));
    root_prepared = 1;
}

/* The run's root: prepare_root() (unless a template did it), then the
 * Spec's cgroup and mounts, read-only, switch_root and the hostname. */
static void setup_root(void)
{
    char target[4096];

    if (!root_prepared)
        prepare_root();
    else if (root_tag[0] != 0)  /* a template's guest prepared the initramfs root; this run wants another */
        fail(0, "mount", EINVAL, "rootfs (the template prepared the initramfs root)");
    setup_cgroup();
    for (int i = 0; i < nmounts; i++) {
        struct mount_req *m = &mounts[i];
        snprintf(target, sizeof target, "/newroot%s", m->target);
        unsigned long flags = m->readonly ? MS_RDONLY : 0;
        if (strcmp(m->kind, "file") == 0) {
            char staging[512], source[4096];
            snprintf(staging, sizeof staging, "/minibox/staging/%s", m->tag);
            mkdirs(staging);
            if (mount(m->tag, staging, "virtiofs", flags, NULL) < 0)
                fail(0, "mount", errno, m->target);
            snprintf(source, sizeof source, "%s/%s", staging, m->name);
            char *slash = strrchr(target, '/');
            *slash = 0;
            mkdirs(target);
            *slash = '/';
            int fd = open(target, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
            if (fd >= 0)
                close(fd);
            if (mount(source, target, NULL, MS_BIND, NULL) < 0)
                fail(0, "mount", errno, m->target);
            if (m->readonly && mount(NULL, target, NULL, MS_BIND | MS_REMOUNT | MS_RDONLY, NULL) < 0)
                fail(0, "mount", errno, m->target);
            continue;
        }
        mkdirs(target);
        if (strcmp(m->kind, "dir") == 0) {
            if (mount(m->tag, target, "virtiofs", flags, NULL) < 0)
                fail(0, "mount", errno, m->target);
        } else {
            char opts[64];
            /* the modes a container's tmpfs mounts get (container/rootfs.py) */
            snprintf(opts, sizeof opts, "mode=%s%s%s", strcmp(m->target, "/tmp") == 0 ? "1777" : "755",
                     m->size[0] ? ",size=" : "", m->size);
            if (mount("tmpfs", target, "tmpfs", flags | MS_NOSUID | MS_NODEV, opts) < 0)
                fail(0, "mount", errno, m->target);
        }
    }
    /* the generated /etc files of a bridged VM: bound over the rootfs's own
     * inside the guest only (the shared directory on the host is not written);
     * a rootfs without such a file (or with a symlink there) keeps its own */
    for (int i = 0; i < nbinds; i++) {
        struct stat st;
        snprintf(target, sizeof target, "/newroot%s", binds[i].target);
        if (lstat(target, &st) < 0 || !S_ISREG(st.st_mode))
            continue;
        if (mount(binds[i].source, target, NULL, MS_BIND, NULL) < 0 ||
            mount(NULL, target, NULL, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC,
                  NULL) < 0)
            fail(0, "mount", errno, binds[i].target);
    }
    if (root_readonly && mount(NULL, "/newroot", NULL, MS_REMOUNT | MS_BIND | MS_RDONLY, NULL) < 0)
        fail(0, "mount", errno, "rootfs read-only");
    /* switch_root: the shared directory becomes / for the agent and its children */
    if (chdir("/newroot") < 0 || mount(".", "/", NULL, MS_MOVE, NULL) < 0)
        fail(0, "switch_root", errno, NULL);
    if (chroot(".") < 0 || chdir("/") < 0)
        fail(0, "chroot", errno, NULL);
    if (sethostname(hostname_, strlen(hostname_)) < 0)
        fail(0, "sethostname", errno, hostname_);
}

/* ---- the network ------------------------------------------------------ */

static int set_up(int sock, const char *name)
{
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    snprintf(ifr.ifr_name, IFNAMSIZ, "%s", name);
    if (ioctl(sock, SIOCGIFFLAGS, &ifr) < 0)
        return -1;
    ifr.ifr_flags |= IFF_UP;
    return ioctl(sock, SIOCSIFFLAGS, &ifr);
}

static void set_inet(struct sockaddr *sa, in_addr_t addr)
{
    struct sockaddr_in sin = { .sin_family = AF_INET, .sin_addr.s_addr = addr };
    memcpy(sa, &sin, sizeof sin);
}

/* lo up (every VM, as every container's namespace has it); for the bridge:
 * the NIC's address, netmask, link up, and "default via gateway" -- what
 * `ip addr add; ip link set up; ip route add default via` do, with the
 * classic ioctls instead of rtnetlink. */
static void setup_network(void)
{
    int sock = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (sock < 0 || set_up(sock, "lo") < 0) {
        if (net_ifname)
            fail(0, "network", errno, "lo");
        console("minibox-agent: lo: %s", strerror(errno));
        if (sock >= 0)
            close(sock);
        return;
    }
    if (!net_ifname) {
        close(sock);
        return;
    }
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    snprintf(ifr.ifr_name, IFNAMSIZ, "%s", net_ifname);
    /* the NIC appears when virtio_net has probed the virtio-mmio device */
    int tries = 0;
    while (ioctl(sock, SIOCGIFFLAGS, &ifr) < 0) {
        if (errno != ENODEV || tries++ >= 2000)
            fail(0, "network", errno, net_ifname);
        usleep(5000);
    }
    if (net_mac) {
        /* a clone's own MAC: its template's NIC had another (netdevice(7)) */
        struct ifreq hw;
        memset(&hw, 0, sizeof hw);
        snprintf(hw.ifr_name, IFNAMSIZ, "%s", net_ifname);
        hw.ifr_hwaddr.sa_family = ARPHRD_ETHER;
        unsigned int b[6];
        if (sscanf(net_mac, "%x:%x:%x:%x:%x:%x", &b[0], &b[1], &b[2], &b[3], &b[4], &b[5]) != 6)
            fail(0, "network", EINVAL, net_mac);
        for (int i = 0; i < 6; i++)
            hw.ifr_hwaddr.sa_data[i] = (char)b[i];
        if (ioctl(sock, SIOCSIFHWADDR, &hw) < 0)
            fail(0, "network", errno, "SIOCSIFHWADDR");
    }
    struct in_addr addr, gateway;
    long prefix = strtol(net_prefixlen, NULL, 10);
    if (inet_pton(AF_INET, net_address, &addr) != 1 || inet_pton(AF_INET, net_gateway, &gateway) != 1 ||
        prefix < 1 || prefix > 32)
        fail(0, "network", EINVAL, net_address);
    set_inet(&ifr.ifr_addr, addr.s_addr);
    if (ioctl(sock, SIOCSIFADDR, &ifr) < 0)
        fail(0, "network", errno, "SIOCSIFADDR");
    set_inet(&ifr.ifr_netmask, htonl(~0u << (32 - prefix)));
    if (ioctl(sock, SIOCSIFNETMASK, &ifr) < 0)
        fail(0, "network", errno, "SIOCSIFNETMASK");
    if (set_up(sock, net_ifname) < 0)
        fail(0, "network", errno, "SIOCSIFFLAGS");
    struct rtentry rt;
    memset(&rt, 0, sizeof rt);
    set_inet(&rt.rt_dst, INADDR_ANY);
    set_inet(&rt.rt_genmask, INADDR_ANY);
    set_inet(&rt.rt_gateway, gateway.s_addr);
    rt.rt_flags = RTF_UP | RTF_GATEWAY;
    if (ioctl(sock, SIOCADDRT, &rt) < 0)
        fail(0, "network", errno, "SIOCADDRT default route");
    close(sock);
    /* virtio-net reports its link a moment after the probe: wait (briefly)
     * for the carrier, so that the command's first packet is not dropped.
     * Not for operstate "up": the kernel's linkwatch sets that up to a
     * second later, while the link already carries frames. */
    char path[128], state[4];
    snprintf(path, sizeof path, "/sys/class/net/%s/carrier", net_ifname);
    for (int i = 0; i < 600; i++) {
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        ssize_t n = fd < 0 ? -1 : read(fd, state, sizeof state - 1);
        if (fd >= 0)
            close(fd);
        if (n >= 1 && state[0] == '1')
            return;
        usleep(5000);
    }
    console("minibox-agent: %s: no carrier yet", net_ifname);
}

/* ---- running commands ------------------------------------------------- */

static const char *env_path(const struct command *c)
{
    for (int i = 0; i < c->envc; i++)
        if (strncmp(c->envp[i], "PATH=", 5) == 0)
            return c->envp[i] + 5;
    return "/usr/sbin:/usr/bin:/sbin:/bin";
}

/* execvpe(3) with the command's PATH, not the agent's. */
static void exec_search(const struct command *c)
{
    char *const *argv = c->argv;
    if (strchr(argv[0], '/')) {
        execve(argv[0], argv, c->envp);
        return;
    }
    const char *p = env_path(c);
    int saved = ENOENT;
    while (*p) {
        const char *colon = strchrnul(p, ':');
        char path[4096];
        snprintf(path, sizeof path, "%.*s/%s", (int)(colon - p), p, argv[0]);
        execve(path, argv, c->envp);
        if (errno == EACCES)
            saved = EACCES;   /* keep looking, but remember (as execvp does) */
        p = *colon ? colon + 1 : colon;
    }
    errno = saved;
}

/* The steps between fork and execve, named as the host reports them (the
 * same names as csrc/spawn.h's, where the step is the same). */
enum { STEP_CGROUP, STEP_SETSID, STEP_PTY, STEP_STDIO, STEP_RLIMITS, STEP_CAPS, STEP_SETGROUPS, STEP_SETGID,
       STEP_SETUID, STEP_CHDIR, STEP_NNP, STEP_SECCOMP, STEP_EXECVE };
static const char *const step_names[] = {
    "join cgroup", "setsid", "controlling tty", "stdio", "setrlimit", "capabilities", "setgroups", "setgid",
    "setuid", "chdir", "no_new_privs", "seccomp", "execve",
};

static int apply_bounding_set(void)
{
    for (int cap = 0; cap < 64; cap++) {
        if (cap_bounding & (1ULL << cap))
            continue;
        if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0) {
            if (errno == EINVAL)   /* past CAP_LAST_CAP: nothing to drop */
                break;
            return -1;
        }
    }
    return 0;
}

/* The masks are a root command's; a command of any other uid keeps only the
 * bounding set, as policy/capabilities.py's masks_for() decides for a container. */
static int apply_capsets(uid_t uid)
{
    uint64_t cap_effective = uid == 0 ? root_effective : 0, cap_permitted = uid == 0 ? root_permitted : 0;
    uint64_t cap_inheritable = uid == 0 ? root_inheritable : 0, cap_ambient = uid == 0 ? root_ambient : 0;
    struct __user_cap_header_struct header = { _LINUX_CAPABILITY_VERSION_3, 0 };
    struct __user_cap_data_struct data[2];
    data[0].effective = (uint32_t)cap_effective;
    data[1].effective = (uint32_t)(cap_effective >> 32);
    data[0].permitted = (uint32_t)cap_permitted;
    data[1].permitted = (uint32_t)(cap_permitted >> 32);
    data[0].inheritable = (uint32_t)cap_inheritable;
    data[1].inheritable = (uint32_t)(cap_inheritable >> 32);
    if (syscall(SYS_capset, &header, data) < 0)
        return -1;
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) < 0 && errno != EINVAL)
        return -1;
    for (int cap = 0; cap < 64; cap++)
        if ((cap_ambient & (1ULL << cap)) && prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap, 0, 0) < 0)
            return -1;
    return 0;
}

static int install_seccomp(void)
{
    struct sock_fprog prog = { .len = seccomp_len, .filter = seccomp_prog };
    return prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog, 0, 0);
}

/* In the child, between fork and execve: the Spec's hardening, in the
 * container path's order (csrc/spawn.c).  Returns the failed step. */
#define STEP(n, call) do { if ((call) < 0) return (n); } while (0)
static int setup_child(const struct command *c, int in, int out, int err, int slave)
{
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    if (cg_procs_fd >= 0)
        STEP(STEP_CGROUP, write(cg_procs_fd, "0", 1));   /* "0": the writer itself */
    STEP(STEP_SETSID, setsid());
    if (slave >= 0) {
        /* a new session whose controlling terminal is the pty (ioctl_tty(2)) */
        STEP(STEP_PTY, ioctl(slave, TIOCSCTTY, 0));
        in = out = err = slave;
    }
    STEP(STEP_STDIO, dup2(in, 0));
    STEP(STEP_STDIO, dup2(out, 1));
    STEP(STEP_STDIO, dup2(err, 2));
    for (int i = 0; i < nrlimits; i++)
        STEP(STEP_RLIMITS, setrlimit(rlimits[i].resource, &rlimits[i].lim));
    /* Without no_new_privs, installing a filter needs CAP_SYS_ADMIN, which
     * the capability step may drop: install it first then (as runc does). */
    int seccomp_early = seccomp_len > 0 && !no_new_privs;
    if (seccomp_early)
        STEP(STEP_SECCOMP, install_seccomp());
    if (have_caps) {
        STEP(STEP_CAPS, apply_bounding_set());
        STEP(STEP_CAPS, prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0));  /* across setuid() */
    }
    gid_t gid = c->gid;
    STEP(STEP_SETGROUPS, setgroups(1, &gid));
    STEP(STEP_SETGID, setresgid(c->gid, c->gid, c->gid));
    STEP(STEP_SETUID, setresuid(c->uid, c->uid, c->uid));
    if (have_caps) {
        STEP(STEP_CAPS, apply_capsets(c->uid));
        STEP(STEP_CAPS, prctl(PR_SET_KEEPCAPS, 0, 0, 0, 0));
    }
    STEP(STEP_CHDIR, chdir(c->cwd ? c->cwd : "/"));   /* after the id switch: its permissions */
    if (no_new_privs)
        STEP(STEP_NNP, prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0));
    if (seccomp_len > 0 && !seccomp_early)
        STEP(STEP_SECCOMP, install_seccomp());   /* last: nothing above is filtered */
    exec_search(c);
    return STEP_EXECVE;
}

/* A new pty in the guest's devpts (/dev/pts, mounted by setup_root): the
 * master stays with the agent, which relays it; the slave goes to the child. */
static int open_pty(int *master, int *slave)
{
    int unlock = 0;
    *master = open("/dev/pts/ptmx", O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (*master < 0)
        return -1;
    if (ioctl(*master, TIOCSPTLCK, &unlock) < 0 ||
        (*slave = ioctl(*master, TIOCGPTPEER, O_RDWR | O_NOCTTY | O_CLOEXEC)) < 0) {
        close(*master);
        return -1;
    }
    return 0;
}

/* fork + the child's setup + exec, with fds 0/1/2 given (or a pty when the
 * command asks for one: then *master is its master, else -1).  Returns the
 * pid, or -1 with errno set and *step naming what failed. */
static pid_t spawn(const struct command *c, int in, int out, int err, int *master, const char **step)
{
    int pipefd[2], slave = -1;
    *master = -1;
    *step = "fork";
    if (c->tty) {
        *step = "allocate a pty";
        if (open_pty(master, &slave) < 0)
            return -1;
    }
    if (pipe2(pipefd, O_CLOEXEC) < 0)
        goto fail;
    /* vfork(2), not fork: the child borrows our memory until its execve, so
     * there is no copy of our page tables and no copy-on-write fault after
     * it.  Under TCG every such kernel path runs for the first time in a
     * VM restored from a template: fork then exec took ~100 ms there, vfork
     * then exec ~55-65 ms (measured with the guest's CLOCK_MONOTONIC,
     * 2026-12-02).  It is safe because the agent is single-threaded (its
     * setresuid & co. are plain system calls, no signals to other threads)
     * and the child, on our stack, only makes system calls before execve or
     * _exit, as CPython's _posixsubprocess does with vfork. */
    pid_t pid = vfork();
    if (pid < 0) {
        close(pipefd[0]);
        close(pipefd[1]);
        goto fail;
    }
    if (pid == 0) {
        int report[2];
        report[0] = setup_child(c, in, out, err, slave);
        report[1] = errno;
        if (write(pipefd[1], report, sizeof report) < 0) { /* parent sees EOF */ }
        _exit(127);
    }
    close(pipefd[1]);
    if (slave >= 0)
        close(slave);
    int report[2];
    ssize_t n;
    do {
        n = read(pipefd[0], report, sizeof report);
    } while (n < 0 && errno == EINTR);
    close(pipefd[0]);
    if (n == sizeof report) {
        waitpid(pid, NULL, 0);
        if (*master >= 0)
            close(*master);
        *master = -1;
        *step = step_names[report[0]];
        errno = report[1];
        return -1;
    }
    return pid;
fail:;
    int saved = errno;
    if (slave >= 0)
        close(slave);
    if (*master >= 0)
        close(*master);
    *master = -1;
    errno = saved;
    return -1;
}

/* stdin of an exec: its bytes in a memfd the child reads like a file. */
static int stdin_fd(const struct command *c, int *stream_w)
{
    *stream_w = -1;
    if (c->stdin_stream && !c->tty) {
        /* a pipe the host's 'i' frames are written into (a large one: the agent never blocks on it) */
        int p[2];
        if (pipe2(p, O_CLOEXEC) < 0)
            return -1;
        fcntl(p[1], F_SETPIPE_SZ, 1 << 20);
        fcntl(p[1], F_SETFL, O_NONBLOCK);
        *stream_w = p[1];
        return p[0];
    }
    if (!c->stdin_data || c->tty)
        return open("/dev/null", O_RDONLY | O_CLOEXEC);
    int fd = (int)syscall(SYS_memfd_create, "stdin", MFD_CLOEXEC);
    if (fd < 0)
        return -1;
    if (write_all(fd, c->stdin_data, c->stdin_len) < 0 || lseek(fd, 0, SEEK_SET) < 0) {
        close(fd);
        return -1;
    }
    return fd;
}

/* A pty's input: what the caller gave, written once without blocking the
 * agent (a pty takes some KiB the command has not read yet; the container
 * path writes it once too).  Returns how much it took. */
static ssize_t feed_pty(int master, const char *data, size_t len)
{
    if (master < 0 || !data || !len)
        return 0;
    int flags = fcntl(master, F_GETFL);
    fcntl(master, F_SETFL, flags | O_NONBLOCK);
    ssize_t put = write(master, data, len);   /* short or -1: the command will see less input */
    fcntl(master, F_SETFL, flags);
    return put;
}

/* An exec request: the same records as the config's command, then 'I' and
 * the raw stdin bytes up to the end of the frame. */
static int parse_request(struct command *c, char *payload, uint32_t len)
{
    memset(c, 0, sizeof *c);
    c->cwd = "/";
    char *p = payload, *end = payload + len;
    while (p < end) {
        char tag = *p++;
        if (tag == 'I') {
            c->stdin_data = p;
            c->stdin_len = (size_t)(end - p);
            break;
        }
        char *s = next_str(&p, end);
        if (!s || command_record(c, tag, s) < 0)
            return -1;
    }
    c->argv[c->argc] = NULL;
    c->envp[c->envc] = NULL;
    return c->argc > 0 ? 0 : -1;
}

static void start_exec(uint32_t id, char *payload, uint32_t len)
{
    static struct command c;
    struct exec_slot *slot = NULL;
    for (int i = 0; i < MAX_EXECS; i++)
        if (execs[i].pid == 0) {
            slot = &execs[i];
            break;
        }
    if (parse_request(&c, payload, len) < 0 || !slot) {
        fail(id, "exec", slot ? EINVAL : EAGAIN, c.argc ? c.argv[0] : "");
        return;
    }
    int o[2] = { -1, -1 }, e[2] = { -1, -1 }, master = -1;
    const char *step = "pipe";
    int stream_w = -1;
    int in = stdin_fd(&c, &stream_w);
    if (in < 0 || (!c.tty && (pipe2(o, O_CLOEXEC) < 0 || pipe2(e, O_CLOEXEC) < 0)))
        goto err;
    pid_t pid = spawn(&c, in, o[1], e[1], &master, &step);
    if (pid < 0)
        goto err;
    close(in);
    if (!c.tty) {
        close(o[1]);
        close(e[1]);
    }
    feed_pty(master, c.stdin_data, c.stdin_len);
    /* a tty exec's master twice: its output is read (and closed at its end) through .out */
    int input = c.tty ? fcntl(master, F_DUPFD_CLOEXEC, 0) : -1;
    *slot = (struct exec_slot){ .id = id, .pid = pid, .out = c.tty ? master : o[0], .err = e[0], .in = stream_w,
                                .master = input,
                                .oom_before = oom_kills() };
    send_text('S', id, "%d", pid);
    return;
err:;
    int saved = errno;
    for (int i = 0; i < 2; i++) {
        if (o[i] >= 0) close(o[i]);
        if (e[i] >= 0) close(e[i]);
    }
    if (in >= 0)
        close(in);
    if (stream_w >= 0)
        close(stream_w);
    fail(id, step, saved, c.argv[0]);
}

/* "x N" (exited with N) or "s N" (killed by signal N); for an exec, then
 * its peak RSS in KiB and its CPU time in microseconds (getrusage(2)). */
static void report_exit(uint32_t id, int status, const struct rusage *ru, long oom_before)
{
    /* then the guest cgroup's OOM kills since it started (see oom_kills) */
    char usage[160];
    snprintf(usage, sizeof usage, " %ld %lld %ld", ru ? ru->ru_maxrss : 0L,
             ru ? (long long)(ru->ru_utime.tv_sec + ru->ru_stime.tv_sec) * 1000000LL +
                  ru->ru_utime.tv_usec + ru->ru_stime.tv_usec : 0LL,
             oom_kills() - oom_before);
    /* the main command's exit also says how many bytes its stdout and
     * stderr ports carried (port_bytes_sent), when the guest can count */
    long long out_sent = id == 0 ? port_bytes_sent(out_count_fd) : -1;
    long long err_sent = id == 0 ? port_bytes_sent(err_count_fd) : -1;
    if (out_sent >= 0 && err_sent >= 0) {
        size_t used = strlen(usage);
        snprintf(usage + used, sizeof usage - used, " %lld %lld", out_sent, err_sent);
    }
    if (WIFSIGNALED(status) && init_mode && id == 0)
        send_text('X', id, "x %d%s", 128 + WTERMSIG(status), usage);  /* as minibox-init exits */
    else if (WIFSIGNALED(status))
        send_text('X', id, "s %d%s", WTERMSIG(status), usage);
    else
        send_text('X', id, "x %d%s", WEXITSTATUS(status), usage);
}

/* Whether the run has a host directory shared in (virtiofs): what the
 * guest wrote there may sit in its page cache until a sync(2).  The
 * initramfs root and tmpfs mounts die with the guest: nothing to write back. */
static int uses_shares(void)
{
    if (root_tag[0] != 0)
        return 1;
    for (int i = 0; i < nmounts; i++)
        if (strcmp(mounts[i].kind, "tmpfs") != 0)
            return 1;
    return 0;
}

/* SIGKILL every process but this one (kill(2): pid -1), then reap them all:
 * orphans are our children, as PID 1.  Bounded: a process stuck in the
 * kernel (a hung share) must not keep the exit from the host for ever. */
static void end_other_processes(void)
{
    /* none at all (the common case): every process of the guest descends
     * from PID 1, so no child means no process; and under TCG even a
     * kill(-1) that finds nobody costs milliseconds of first-run code */
    if (waitpid(-1, NULL, WNOHANG) < 0 && errno == ECHILD)
        return;
    kill(-1, SIGKILL);
    for (int waited_ms = 0; waited_ms < 2000;) {
        pid_t pid = waitpid(-1, NULL, WNOHANG);
        if (pid < 0 && errno == EINTR)
            continue;
        if (pid < 0)
            return;   /* ECHILD: none left */
        if (pid == 0) {
            usleep(1000);
            waited_ms++;
        }
    }
}

static void finish_exec_if_done(struct exec_slot *s)
{
    if (s->pid && s->exited && s->out < 0 && s->err < 0) {
        report_exit(s->id, s->status, &s->ru, s->oom_before);
        if (s->in >= 0)
            close(s->in);
        if (s->master >= 0)
            close(s->master);
        s->in = s->master = -1;
        s->pid = 0;
    }
}

static void pump(struct exec_slot *s, int *fd, char type)
{
    char buf[65536];
    ssize_t n = read(*fd, buf, sizeof buf);
    if (n > 0) {
        send_frame(type, s->id, buf, (uint32_t)n);
        return;
    }
    if (n < 0 && errno == EINTR)
        return;
    close(*fd);
    *fd = -1;
    finish_exec_if_done(s);
}

/* The main command's pty -> the stdout port; -1 (fd closed) at its end. */
static int relay_master(int *master)
{
    char buf[65536];
    ssize_t n = read(*master, buf, sizeof buf);
    if (n > 0)
        return write_all(out_fd, buf, (size_t)n) < 0 ? -1 : 0;
    if (n < 0 && errno == EINTR)
        return 0;
    close(*master);   /* EIO: every slave is closed; EAGAIN: drained */
    *master = -1;
    return -1;
}

/* ---- the control channel --------------------------------------------- */

static char inbuf[FRAME_MAX + 9];
static size_t inlen;
static int run_config_ready; /* template mode: the 'c' frame arrived */

/* 'i': stdin for the command, appended to /minibox/stdin (the initramfs) */
static void add_stdin(const char *data, uint32_t len)
{
    int fd = open("/minibox/stdin", O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (fd < 0 || write_all(fd, data, len) < 0)
        fail(0, "stdin", errno, "/minibox/stdin");
    close(fd);
    have_stdin = 1;
}

static void reinit(uint32_t id, const char *payload, uint32_t len);
static void warm_up(uint32_t id, char *payload, uint32_t len);

/* 'c': the run's own config replaces the template's */
static void take_run_config(const char *payload, uint32_t len)
{
    if (!template_mode || run_config_ready || len >= sizeof config) {
        console("minibox-agent: unexpected run config");
        return;
    }
    memcpy(config, payload, len);
    int stdin_seen = have_stdin;
    if (parse_config((ssize_t)len) < 0 || main_cmd.argc == 0)
        fail(0, "config", EINVAL, "run config");
    have_stdin = have_stdin || stdin_seen;
    run_config_ready = 1;
}

static void handle_frame(char type, uint32_t id, char *payload, uint32_t len)
{
    switch (type) {
    case 'x':
        if (template_mode && !run_config_ready) /* nothing runs before the run's Spec is applied */
            fail(id, "exec", EAGAIN, "the template's guest has no run yet");
        else
            start_exec(id, payload, len);
        break;
    case 'i':
        if (id == 0) {
            add_stdin(payload, len);
            break;
        }
        /* an exec's streamed stdin: the bytes, or (empty) its end */
        for (int i = 0; i < MAX_EXECS; i++) {
            struct exec_slot *slot = &execs[i];
            if (slot->pid && slot->id == id && slot->master >= 0) {
                /* a tty's input, as typed (it has no end of file to pass on) */
                if (len && feed_pty(slot->master, payload, len) != (ssize_t)len)
                    console("minibox-agent: exec %u: its pty is full, input dropped", id);
                continue;
            }
            if (!slot->pid || slot->id != id || slot->in < 0)
                continue;
            if (len == 0 || write(slot->in, payload, len) != (ssize_t)len) {
                if (len)
                    console("minibox-agent: exec %u: stdin pipe full or closed, input dropped", id);
                close(slot->in);
                slot->in = -1;
            }
        }
        break;
    case 'c':
        take_run_config(payload, len);
        break;
    case 'w': {
        /* the host's terminal was resized: the kernel tells the command (SIGWINCH) */
        payload[len] = 0;
        struct winsize ws = { 0 };
        char *rest;
        ws.ws_row = (unsigned short)strtoul(payload, &rest, 10);
        ws.ws_col = (unsigned short)strtoul(rest, NULL, 10);
        int master = id == 0 ? main_master : -1;
        for (int i = 0; i < MAX_EXECS && id != 0; i++)
            if (execs[i].pid && execs[i].id == id)
                master = execs[i].master;
        if (master >= 0 && ws.ws_row && ws.ws_col)
            ioctl(master, TIOCSWINSZ, &ws);
        break;
    }
    case 'r':
        reinit(id, payload, len);
        break;
    case 'u':
        warm_up(id, payload, len);
        break;
    case 'k': {
        payload[len] = 0;
        int sig = atoi(payload);
        if (id == 0 && main_pid > 0) {
            if (kill(-main_pid, sig) < 0)
                kill(main_pid, sig);
        }
        for (int i = 0; i < MAX_EXECS; i++)
            if (execs[i].pid && execs[i].id == id && kill(-execs[i].pid, sig) < 0)
                kill(execs[i].pid, sig);
        break;
    }
    default:
        console("minibox-agent: unknown request %c", type);
    }
}

static int read_control(void)
{
    ssize_t n = read(ctl_fd, inbuf + inlen, sizeof inbuf - 1 - inlen);
    if (n < 0)
        return errno == EINTR || errno == EAGAIN ? 0 : -1;
    if (n == 0) {
        /* host not connected: avoid spinning until it is */
        usleep(10000);
        return 0;
    }
    inlen += (size_t)n;
    for (;;) {
        if (inlen < 9)
            break;
        unsigned char *h = (unsigned char *)inbuf;
        uint32_t len = h[0] | h[1] << 8 | h[2] << 16 | (uint32_t)h[3] << 24;
        uint32_t id = h[5] | h[6] << 8 | h[7] << 16 | (uint32_t)h[8] << 24;
        if (len > FRAME_MAX)
            return -1;
        if (inlen < 9 + len)
            break;
        char saved = inbuf[9 + len];
        handle_frame((char)h[4], id, inbuf + 9, len);
        inbuf[9 + len] = saved;
        memmove(inbuf, inbuf + 9 + len, inlen - 9 - len);
        inlen -= 9 + len;
    }
    return 0;
}

/* ---- a template clone: its own clock and entropy ---------------------- */

/* The snapshot froze the guest's wall clock at the template's build time:
 * set the host's, as it was when the host sent the run config. */
static int set_clock(uint32_t id)
{
    if (!clock_)
        return 0;
    struct timespec ts = { 0, 0 };
    char *rest;
    ts.tv_sec = (time_t)strtoll(clock_, &rest, 10);
    ts.tv_nsec = strtol(rest, NULL, 10);
    errno = 0;
    if (ts.tv_nsec < 0 || ts.tv_nsec >= 1000000000L || clock_settime(CLOCK_REALTIME, &ts) < 0) {
        fail(id, "clock_settime", errno ? errno : EINVAL, clock_);
        return -1;
    }
    return 0;
}

static int hexval(char c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* Every clone of one snapshot starts with the same CRNG state: mix the
 * host's random bytes into the input pool, credited (RNDADDENTROPY), then
 * force the CRNG to rekey from it now (RNDRESEEDCRNG), before anything of
 * the command runs.  random(4). */
static int reseed(uint32_t id)
{
    if (!entropy_)
        return 0;
    static struct { struct rand_pool_info info; uint8_t bytes[256]; } pool;
    size_t n = strlen(entropy_) / 2;
    if (n == 0 || n > sizeof pool.bytes) {
        fail(id, "reseed", EINVAL, "entropy record");
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        int hi = hexval(entropy_[2 * i]), lo = hexval(entropy_[2 * i + 1]);
        if (hi < 0 || lo < 0) {
            fail(id, "reseed", EINVAL, "entropy record");
            return -1;
        }
        pool.bytes[i] = (uint8_t)(hi << 4 | lo);
    }
    pool.info.entropy_count = (int)(n * 8);
    pool.info.buf_size = (int)n;
    int fd = open("/dev/random", O_RDWR | O_CLOEXEC);
    const char *what = NULL;
    if (fd < 0)
        what = "/dev/random";
    else if (ioctl(fd, RNDADDENTROPY, &pool.info) < 0)
        what = "RNDADDENTROPY";
    else if (ioctl(fd, RNDRESEEDCRNG) < 0)
        what = "RNDRESEEDCRNG";
    int err = errno;
    if (fd >= 0)
        close(fd);
    memset(&pool, 0, sizeof pool);
    if (what) {
        fail(id, "reseed", err, what);
        return -1;
    }
    return 0;
}

/* Template mode: the host snapshots the guest somewhere in here; whichever
 * clone wakes up reads its own stdin and config. */
static void wait_for_run(void)
{
    while (!run_config_ready) {
        struct pollfd pfd = { ctl_fd, POLLIN, 0 };
        if (poll(&pfd, 1, -1) < 0)
            continue;
        if (read_control() < 0) {
            console("minibox-agent: bad frame on the control port");
            power_off();
        }
    }
    set_clock(0);
    reseed(0);
    if (netc_files > 0 && mkdir("/minibox/etc", 0755) < 0 && errno != EEXIST)
        fail(0, "network", errno, "/minibox/etc");
    for (int i = 0; i < netc_files; i++) {
        char path[128];
        snprintf(path, sizeof path, "/minibox/etc/%s", etc_files[i].name);
        int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (fd < 0 || write_all(fd, etc_files[i].text, strlen(etc_files[i].text)) < 0)
            fail(0, "network", errno, path);
        close(fd);
    }
    if (net_ifname)  /* the template's NIC stayed down: address it now, as this clone's */
        setup_network();
}

/* 'r': a running guest restored from a snapshot (VirtualMachine.restore)
 * wakes with the saved wall clock and CRNG state, like a clone: take the
 * host's clock and entropy, then say so ('X' "x 0" with the request's id).
 * The command runs on meanwhile; what it read before the snapshot it keeps. */
static void reinit(uint32_t id, const char *payload, uint32_t len)
{
    const char *sep = memchr(payload, 0, len);
    if (id == 0 || !sep || !memchr(sep + 1, 0, len - (uint32_t)(sep + 1 - payload))) {
        fail(id ? id : 1, "reinit", EINVAL, "request");
        return;
    }
    clock_ = payload;
    entropy_ = sep + 1;
    int bad = set_clock(id) < 0 || reseed(id) < 0;
    clock_ = entropy_ = NULL;
    if (!bad)
        send_text('X', id, "x 0");
}

/* 'u': a pooled clone, restored ahead of its run, goes once through the
 * paths the run will take, so that QEMU has translated them (the TCG cache
 * lives in the QEMU process, not in the snapshot: after a restore every
 * guest path is translated on its first use).  It takes the host's clock
 * and entropy (as 'r'; the run's config brings its own again), then forks a
 * throwaway /bin/true of the image through setup_child (stdio on /dev/null,
 * chrooted into the prepared root) and reaps it: it leaves no process and
 * writes no file.  After the clock and entropy strings, the request may hold
 * policy records (K n S L, as in a config) and U G: the hardening and user
 * the pool's runs will have, applied to the throwaway only (a seccomp
 * filter's install and checks are paths of their own); they are dropped
 * again before the run's config, which brings its own.  Honoured only while the
 * clone waits for its run; answers 'X' (its exit) with the request's id. */
static void warm_up(uint32_t id, char *payload, uint32_t len)
{
    if (id == 0 || !template_mode || run_config_ready || !root_prepared) {
        fail(id ? id : 1, "warm-up", EAGAIN, "only a template's clone waiting for its run warms up");
        return;
    }
    char *end = payload + len, *p = payload, *clock = next_str(&p, end), *entropy = next_str(&p, end);
    static char true_path[] = "/bin/true";
    struct command warm = { .argv = { true_path, NULL }, .argc = 1, .cwd = "/" };
    int bad = !clock || !entropy;
    while (p < end && !bad) {
        char tag = *p++;
        char *s = next_str(&p, end);
        if (!s)
            bad = 1;
        else if (tag == 'U' || tag == 'G')
            command_record(&warm, tag, s);
        else
            bad = policy_record(tag, s) != 0;
    }
    if (bad) {
        fail(id, "warm-up", EINVAL, "request");
    } else {
        clock_ = clock;
        entropy_ = entropy;
        bad = set_clock(id) < 0 || reseed(id) < 0;
        clock_ = entropy_ = NULL;
    }
    if (bad) {
        have_caps = no_new_privs = nrlimits = 0;
        seccomp_len = 0;
        return;
    }
    /* the run's own mounts (a tmpfs, made read-only, moved), on a scratch
     * directory of the initramfs, outside the root the run will see; and
     * its hostname call, with the name the guest has now */
    if (mkdir("/minibox/warm-up", 0700) == 0 && mkdir("/minibox/warm-up/a", 0700) == 0 &&
        mkdir("/minibox/warm-up/b", 0700) == 0 &&
        mount("tmpfs", "/minibox/warm-up/a", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777") == 0) {
        mkdir("/minibox/warm-up/a/d", 0755);
        mount(NULL, "/minibox/warm-up/a", NULL, MS_REMOUNT | MS_BIND | MS_RDONLY, NULL);
        if (mount("/minibox/warm-up/a", "/minibox/warm-up/b", NULL, MS_MOVE, NULL) == 0)
            umount2("/minibox/warm-up/b", MNT_DETACH);
        else
            umount2("/minibox/warm-up/a", MNT_DETACH);
    }
    rmdir("/minibox/warm-up/a");
    rmdir("/minibox/warm-up/b");
    rmdir("/minibox/warm-up");
    struct utsname u;
    if (uname(&u) == 0)
        sethostname(u.nodename, strlen(u.nodename));
    int null_fd = open("/dev/null", O_RDWR | O_CLOEXEC), pipefd[2];
    if (null_fd < 0 || pipe2(pipefd, O_CLOEXEC) < 0) {
        fail(id, "warm-up", errno, "/dev/null");
        if (null_fd >= 0)
            close(null_fd);
        return;
    }
    pid_t pid = vfork();   /* as spawn() does: the run's own path, warmed */
    if (pid == 0) {
        int report[2] = { STEP_CHDIR, 0 };
        if (chroot("/newroot") == 0 && chdir("/") == 0)
            report[0] = setup_child(&warm, null_fd, null_fd, null_fd, -1);
        report[1] = errno;
        if (write(pipefd[1], report, sizeof report) < 0) { /* parent sees EOF */ }
        _exit(127);
    }
    int err = errno, status = 0;
    have_caps = no_new_privs = nrlimits = 0;   /* the throwaway's policy, not the run's */
    seccomp_len = 0;
    close(pipefd[1]);
    close(null_fd);
    if (pid > 0) {
        int report[2];
        ssize_t n;
        do {
            n = read(pipefd[0], report, sizeof report);   /* EOF: the exec happened (the pipe is CLOEXEC) */
        } while (n < 0 && errno == EINTR);
        while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {}
    }
    close(pipefd[0]);
    /* and the end of a run: no process is left to end, but the paths are the run's */
    end_other_processes();
    port_bytes_sent(out_count_fd);
    port_bytes_sent(err_count_fd);
    if (pid < 0)
        fail(id, "warm-up", err, "fork");
    else
        report_exit(id, status, NULL, 0);   /* the run's report, as the run will send it */
}

/* ---- PID 1 ------------------------------------------------------------ */

int main(void)
{
    mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
    mount("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
    mount("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, NULL);

    if (load_config() < 0) {
        console("minibox-agent: cannot read /minibox/config");
        power_off();
    }
    if (probe_mode) {
        console("MINIBOX-PROBE-OK");
        power_off();
    }
    load_modules();
    char out_dev[64] = "", err_dev[64] = "";
    ctl_fd = open_port("minibox.control", NULL, 0);
    out_fd = open_port("minibox.stdout", out_dev, sizeof out_dev);
    err_fd = open_port("minibox.stderr", err_dev, sizeof err_dev);
    if (stdin_port_wanted)
        stdin_port = open_port("minibox.stdin", NULL, 0);
    if (ctl_fd < 0 || out_fd < 0 || err_fd < 0 || (stdin_port_wanted && stdin_port < 0)) {
        console("minibox-agent: virtio-serial ports missing (is virtio_console loaded?)");
        power_off();
    }
    struct utsname u;
    uname(&u);
    open_port_counters(out_dev, err_dev);
    send_text('H', 0, "%s", u.release);
    setup_network();
    if (template_mode) {
        if (root_tag[0] == 0)
            prepare_root();
        wait_for_run();
    }

    int in_fd = stdin_port >= 0 ? stdin_port
                : open(have_stdin ? "/minibox/stdin" : "/dev/null", O_RDONLY | O_CLOEXEC);
    setup_root();
    if (in_fd < 0)
        in_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);

    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGCHLD);
    sigprocmask(SIG_BLOCK, &mask, NULL);
    int sfd = signalfd(-1, &mask, SFD_CLOEXEC);

    /* Spec.tty: the command's stdio is a pty whose master we relay to the
     * stdout port (stderr included, as on a terminal); stdin is fed to it */
    const char *step;
    main_pid = spawn(&main_cmd, in_fd, out_fd, err_fd, &main_master, &step);
    if (main_pid < 0)
        fail(0, step, errno, main_cmd.argv[0]);
    /* a streamed stdin with a tty: relayed into the pty as it comes (tty_in) */
    int tty_in = -1;
    if (main_master >= 0 && stdin_port >= 0) {
        tty_in = in_fd;
    } else {
        if (main_master >= 0) {
            static char input[65536];
            ssize_t got = read(in_fd, input, sizeof input);
            feed_pty(main_master, input, got > 0 ? (size_t)got : 0);
        }
        close(in_fd);
    }
    static char pending[4096];   /* read from tty_in, not yet written to the pty */
    size_t pending_len = 0, pending_off = 0;
    send_text('S', 0, "%d", main_pid);

    int main_status = 0, main_done = 0;
    while (!main_done) {
        struct pollfd pfd[4 + 2 * MAX_EXECS];
        struct { struct exec_slot *s; int *fd; char type; } who[2 * MAX_EXECS];
        int n = 0;
        pfd[n++] = (struct pollfd){ sfd, POLLIN, 0 };
        pfd[n++] = (struct pollfd){ ctl_fd, POLLIN, 0 };
        pfd[n++] = (struct pollfd){ main_master, POLLIN, 0 };  /* ignored while -1 */
        /* the streamed tty input: read it while nothing is pending, else wait until the pty takes it */
        if (tty_in >= 0 && main_master >= 0 && pending_len == 0)
            pfd[n++] = (struct pollfd){ tty_in, POLLIN, 0 };
        else
            pfd[n++] = (struct pollfd){ pending_len && main_master >= 0 ? main_master : -1, POLLOUT, 0 };
        int w = 0;
        for (int i = 0; i < MAX_EXECS; i++) {
            if (!execs[i].pid)
                continue;
            if (execs[i].out >= 0) {
                who[w++] = (typeof(who[0])){ &execs[i], &execs[i].out, 'O' };
                pfd[n++] = (struct pollfd){ execs[i].out, POLLIN, 0 };
            }
            if (execs[i].err >= 0) {
                who[w++] = (typeof(who[0])){ &execs[i], &execs[i].err, 'E' };
                pfd[n++] = (struct pollfd){ execs[i].err, POLLIN, 0 };
            }
        }
        if (poll(pfd, (nfds_t)n, -1) < 0)
            continue;
        for (int i = 4; i < n; i++)
            if (pfd[i].revents)
                pump(who[i - 4].s, who[i - 4].fd, who[i - 4].type);
        if (pfd[3].fd == tty_in && tty_in >= 0 && pfd[3].revents) {
            ssize_t got = read(tty_in, pending, sizeof pending);
            if (got > 0) {
                pending_len = (size_t)got;
                pending_off = 0;
            } else if (got == 0 || errno != EINTR) {
                close(tty_in);   /* the host ended its input (a terminal has no end of file to pass on) */
                tty_in = -1;
            }
        } else if (pending_len && pfd[3].revents & POLLOUT) {
            ssize_t put = write(main_master, pending + pending_off, pending_len - pending_off);
            if (put > 0)
                pending_off += (size_t)put;
            if (put < 0 && errno != EINTR && errno != EAGAIN)
                pending_off = pending_len;   /* the pty is gone: drop the rest */
            if (pending_off >= pending_len)
                pending_len = pending_off = 0;
        }
        if (main_master >= 0 && pfd[2].revents && relay_master(&main_master) < 0)
            main_master = -1;
        if (pfd[1].revents & (POLLIN | POLLHUP)) {
            if (read_control() < 0)
                console("minibox-agent: bad frame on the control port");
        }
        if (pfd[0].revents & POLLIN) {
            struct signalfd_siginfo si;
            if (read(sfd, &si, sizeof si) < 0) { /* drained below anyway */ }
            int status;
            pid_t pid;
            struct rusage ru;
            while ((pid = wait4(-1, &status, WNOHANG, &ru)) > 0) {
                if (pid == main_pid) {
                    main_status = status;
                    main_done = 1;
                }
                for (int i = 0; i < MAX_EXECS; i++)
                    if (execs[i].pid == pid) {
                        execs[i].exited = 1;
                        execs[i].status = status;
                        execs[i].ru = ru;
                        finish_exec_if_done(&execs[i]);
                    }
            }
        }
    }
    /* what the command wrote to its pty before it ended */
    if (main_master >= 0) {
        fcntl(main_master, F_SETFL, O_NONBLOCK);
        while (relay_master(&main_master) == 0) {}
    }
    /* The run is over.  What the host reports must be complete when the
     * exit frame arrives, because the host may end QEMU as soon as it has
     * the frame and the output the frame counts: so first end every other
     * process (an orphan could still be writing to the ports, or to a
     * shared file system) and write the guest's dirty pages back (a file
     * the command wrote on a virtiofs share), then count and report. */
    end_other_processes();
    if (uses_shares())
        sync();
    report_exit(0, main_status, NULL, 0);
    power_off();
    return 0;
}
