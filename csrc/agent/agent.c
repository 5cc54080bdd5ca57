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
 *   5. applies the rest of the Spec: hostname, environment, working
 *      directory, uid/gid                     (sethostname(2), setuid(2)...)
 *   6. runs the command with its stdout/stderr wired straight to the ports,
 *      serves exec requests from the host while it runs, reports how each
 *      command ended, and
 *   7. powers the machine off                                (reboot(2))
 *
 * The control port carries a small framed protocol (docs/vm.md):
 *     u32 length (little endian) | u8 type | u32 id | length bytes of payload
 * Guest -> host:  'H' hello (uname release)   'S' started (pid)
 *                 'O'/'E' output of an exec   'X' exit ("x N" or "s N")
 *                 'F' failure ("step\0errno\0detail")
 * Host -> guest:  'x' exec (argv, each NUL-terminated)   'k' kill (signal)
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
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>
/* the network: netdevice(7) and route(4) ioctls on an AF_INET socket */
#include <arpa/inet.h>
#include <net/if.h>
#include <net/route.h>
#include <netinet/in.h>
#include <sys/ioctl.h>
#include <sys/socket.h>

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

static char config[CONFIG_MAX];
static char *argv_[MAX_ARGS + 1];
static char *envp_[MAX_ENV + 1];
static int argc_, envc_;
static const char *cwd_ = "/", *hostname_ = "minibox", *root_tag = "rootfs";
static uid_t uid_;
static gid_t gid_;
static int root_readonly, probe_mode, have_stdin;
static struct mount_req mounts[MAX_MOUNTS];
static int nmounts;
/* record N: the NIC to configure (bridge mode); NULL ifname = no NIC */
static const char *net_ifname, *net_address, *net_prefixlen, *net_gateway;
/* records B: files of the initramfs bind-mounted read-only over rootfs files */
#define MAX_BINDS 8
static struct { const char *source, *target; } binds[MAX_BINDS];
static int nbinds;

/* ---- state ------------------------------------------------------------- */

static int ctl_fd = -1, out_fd = -1, err_fd = -1;
static pid_t main_pid = -1;

struct exec_slot {
    uint32_t id;
    pid_t pid;
    int out, err;       /* read ends of the child's pipes, -1 once at EOF */
    int status, exited;
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

static int load_config(void)
{
    int fd = open("/minibox/config", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t len = read(fd, config, sizeof config - 1);
    close(fd);
    if (len < 0)
        return -1;
    char *p = config, *end = config + len;
    while (p < end) {
        char tag = *p++;
        char *s = next_str(&p, end);
        if (!s)
            return -1;
        switch (tag) {
        case 'A': if (argc_ < MAX_ARGS) argv_[argc_++] = s; break;
        case 'E': if (envc_ < MAX_ENV) envp_[envc_++] = s; break;
        case 'C': cwd_ = s; break;
        case 'H': hostname_ = s; break;
        case 'U': uid_ = (uid_t)strtoul(s, NULL, 10); break;
        case 'G': gid_ = (gid_t)strtoul(s, NULL, 10); break;
        case 'R': root_tag = s; break;
        case 'r': root_readonly = 1; break;
        case 'P': probe_mode = 1; break;
        case 'I': have_stdin = 1; break;
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
    argv_[argc_] = NULL;
    envp_[envc_] = NULL;
    return argc_ > 0 ? 0 : -1;
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
static int open_port(const char *want)
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

static void setup_root(void)
{
    char target[4096];

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
            snprintf(opts, sizeof opts, "mode=1777%s%s", m->size[0] ? ",size=" : "", m->size);
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

static const char *env_path(void)
{
    for (int i = 0; i < envc_; i++)
        if (strncmp(envp_[i], "PATH=", 5) == 0)
            return envp_[i] + 5;
    return "/usr/sbin:/usr/bin:/sbin:/bin";
}

/* execvpe(3) with the Spec's PATH, not the agent's. */
static void exec_search(char *const argv[])
{
    if (strchr(argv[0], '/')) {
        execve(argv[0], argv, envp_);
        return;
    }
    const char *p = env_path();
    int saved = ENOENT;
    while (*p) {
        const char *colon = strchrnul(p, ':');
        char path[4096];
        snprintf(path, sizeof path, "%.*s/%s", (int)(colon - p), p, argv[0]);
        execve(path, argv, envp_);
        if (errno != ENOENT)
            saved = errno;
        p = *colon ? colon + 1 : colon;
    }
    errno = saved;
}

/* fork + exec with fds 0/1/2 given; returns the pid, or -1 with errno set. */
static pid_t spawn(char *const argv[], int in, int out, int err)
{
    int pipefd[2];
    if (pipe2(pipefd, O_CLOEXEC) < 0)
        return -1;
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        setsid();
        int e = 0;
        if (dup2(in, 0) < 0 || dup2(out, 1) < 0 || dup2(err, 2) < 0)
            e = errno;
        else if (setgroups(0, NULL) < 0 || setgid(gid_) < 0 || setuid(uid_) < 0)
            e = errno;
        else if (chdir(cwd_) < 0)
            e = errno;
        else {
            exec_search(argv);
            e = errno;
        }
        if (write(pipefd[1], &e, sizeof e) < 0) { /* parent sees EOF */ }
        _exit(127);
    }
    close(pipefd[1]);
    int e = 0;
    ssize_t n;
    do {
        n = read(pipefd[0], &e, sizeof e);
    } while (n < 0 && errno == EINTR);
    close(pipefd[0]);
    if (n == sizeof e) {
        waitpid(pid, NULL, 0);
        errno = e;
        return -1;
    }
    return pid;
}

static void start_exec(uint32_t id, char *payload, uint32_t len)
{
    char *args[MAX_ARGS + 1];
    int n = 0;
    char *p = payload, *end = payload + len;
    while (p < end && n < MAX_ARGS) {
        char *s = next_str(&p, end);
        if (!s)
            break;
        args[n++] = s;
    }
    args[n] = NULL;
    struct exec_slot *slot = NULL;
    for (int i = 0; i < MAX_EXECS; i++)
        if (execs[i].pid == 0) {
            slot = &execs[i];
            break;
        }
    if (n == 0 || !slot) {
        fail(id, "exec", n == 0 ? EINVAL : EAGAIN, n ? args[0] : "");
        return;
    }
    int o[2], e[2];
    if (pipe2(o, O_CLOEXEC) < 0)
        goto err;
    if (pipe2(e, O_CLOEXEC) < 0) {
        close(o[0]); close(o[1]);
        goto err;
    }
    int devnull = open("/dev/null", O_RDONLY | O_CLOEXEC);
    pid_t pid = spawn(args, devnull < 0 ? o[0] : devnull, o[1], e[1]);
    int saved = errno;
    if (devnull >= 0)
        close(devnull);
    close(o[1]);
    close(e[1]);
    if (pid < 0) {
        close(o[0]); close(e[0]);
        fail(id, "execve", saved, args[0]);
        return;
    }
    *slot = (struct exec_slot){ .id = id, .pid = pid, .out = o[0], .err = e[0] };
    send_text('S', id, "%d", pid);
    return;
err:
    fail(id, "pipe", errno, args[0]);
}

static void report_exit(uint32_t id, int status)
{
    if (WIFSIGNALED(status))
        send_text('X', id, "s %d", WTERMSIG(status));
    else
        send_text('X', id, "x %d", WEXITSTATUS(status));
}

static void finish_exec_if_done(struct exec_slot *s)
{
    if (s->pid && s->exited && s->out < 0 && s->err < 0) {
        report_exit(s->id, s->status);
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

/* ---- the control channel --------------------------------------------- */

static char inbuf[FRAME_MAX + 9];
static size_t inlen;

static void handle_frame(char type, uint32_t id, char *payload, uint32_t len)
{
    switch (type) {
    case 'x':
        start_exec(id, payload, len);
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
    ctl_fd = open_port("minibox.control");
    out_fd = open_port("minibox.stdout");
    err_fd = open_port("minibox.stderr");
    if (ctl_fd < 0 || out_fd < 0 || err_fd < 0) {
        console("minibox-agent: virtio-serial ports missing (is virtio_console loaded?)");
        power_off();
    }
    struct utsname u;
    uname(&u);
    send_text('H', 0, "%s", u.release);
    setup_network();

    int in_fd = open(have_stdin ? "/minibox/stdin" : "/dev/null", O_RDONLY | O_CLOEXEC);
    setup_root();
    if (in_fd < 0)
        in_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);

    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGCHLD);
    sigprocmask(SIG_BLOCK, &mask, NULL);
    int sfd = signalfd(-1, &mask, SFD_CLOEXEC);

    main_pid = spawn(argv_, in_fd, out_fd, err_fd);
    if (main_pid < 0)
        fail(0, "execve", errno, argv_[0]);
    close(in_fd);
    send_text('S', 0, "%d", main_pid);

    int main_status = 0, main_done = 0;
    while (!main_done) {
        struct pollfd pfd[2 + 2 * MAX_EXECS];
        struct { struct exec_slot *s; int *fd; char type; } who[2 * MAX_EXECS];
        int n = 0;
        pfd[n++] = (struct pollfd){ sfd, POLLIN, 0 };
        pfd[n++] = (struct pollfd){ ctl_fd, POLLIN, 0 };
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
        for (int i = 2; i < n; i++)
            if (pfd[i].revents)
                pump(who[i - 2].s, who[i - 2].fd, who[i - 2].type);
        if (pfd[1].revents & (POLLIN | POLLHUP)) {
            if (read_control() < 0)
                console("minibox-agent: bad frame on the control port");
        }
        if (pfd[0].revents & POLLIN) {
            struct signalfd_siginfo si;
            if (read(sfd, &si, sizeof si) < 0) { /* drained below anyway */ }
            int status;
            pid_t pid;
            while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
                if (pid == main_pid) {
                    main_status = status;
                    main_done = 1;
                }
                for (int i = 0; i < MAX_EXECS; i++)
                    if (execs[i].pid == pid) {
                        execs[i].exited = 1;
                        execs[i].status = status;
                        finish_exec_if_done(&execs[i]);
                    }
            }
        }
    }
    report_exit(0, main_status);
    kill(-1, SIGKILL);
    power_off();
    return 0;
}
