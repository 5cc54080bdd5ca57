/*
 * minibox spawn engine: clone() a child into new namespaces and walk it,
 * step by named step, from the clone to execve().
 *
 * Kernel features: clone3(2) with CLONE_NEW* and CLONE_PIDFD (and
 * CLONE_INTO_CGROUP on cgroup v2), namespaces(7), mount_namespaces(7),
 * pivot_root(2), capabilities(7), prctl(2) PR_SET_NO_NEW_PRIVS,
 * seccomp(2), setns(2), cgroup_namespaces(7).  The mount steps themselves
 * (paths resolved inside the rootfs through fds) are in rootfs.c.
 *
 * Why C: the Python process that calls us may run other threads.  After a
 * clone without CLONE_VM only the calling thread exists in the child, and
 * any lock another thread held (malloc's arena, stdio, the GIL) stays held.
 * So between clone and execve the child calls only async-signal-safe
 * system calls on memory Python prepared beforehand: no malloc, no stdio,
 * no Python.  CPython's _posixsubprocess and runc's nsexec.c make the same
 * choice.
 *
 * Failure protocol (after CPython's _posixsubprocess): the child writes a
 * struct mb_error {step, errno, index} to plan->error_fd, which is
 * close-on-exec, and _exit()s.  The parent reads that pipe: EOF with no
 * data means execve succeeded.
 */
#define _GNU_SOURCE
#include "spawn.h"
#include "rootfs.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/capability.h>
#include <net/if.h>
#include <sys/socket.h>
#include <linux/filter.h>
#include <linux/nsfs.h>
#include <linux/sched.h>
#include <linux/seccomp.h>
#include <sched.h>
#include <signal.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <unistd.h>

#ifndef CLONE_INTO_CGROUP
#define CLONE_INTO_CGROUP 0x200000000ULL
#endif
#ifndef CLOSE_RANGE_UNSHARE
#define CLOSE_RANGE_UNSHARE (1U << 1)
#endif

#define MB_MAX_KEEP_FDS 64

/* ---- reporting --------------------------------------------------------- */

static void __attribute__((noreturn))
fail(const struct mb_plan *plan, int step, int err, int index)
{
    struct mb_error report = { step, err, index };
    ssize_t n;
    do {
        n = write(plan->error_fd, &report, sizeof report);
    } while (n < 0 && errno == EINTR);
    _exit(127);
}

#define CHECK(plan, step, expr) \
    do { if ((expr) < 0) fail((plan), (step), errno, -1); } while (0)

/* ---- small helpers, all async-signal-safe ------------------------------ */

static void reset_signals(void)
{
    /* Python ignores SIGPIPE and installs C handlers for SIGINT and others;
     * handlers and SIG_IGN survive fork, SIG_IGN even survives execve.  The
     * command must start with default dispositions and an empty mask. */
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    for (int sig = 1; sig < _NSIG; sig++) {
        if (sig == SIGKILL || sig == SIGSTOP)
            continue;
        (void)sigaction(sig, &dfl, NULL);  /* EINVAL for glibc-reserved signals */
    }
    sigset_t none;
    sigemptyset(&none);
    (void)sigprocmask(SIG_SETMASK, &none, NULL);
}

static int keep_fd(int *keep, int n, int fd)
{
    if (fd >= 3 && n < MB_MAX_KEEP_FDS) {
        for (int i = 0; i < n; i++)
            if (keep[i] == fd)
                return n;
        keep[n++] = fd;
    }
    return n;
}

static void close_range_fallback(unsigned int first, unsigned int last)
{
    struct rlimit lim;
    unsigned int top = 65536;
    if (getrlimit(RLIMIT_NOFILE, &lim) == 0 && lim.rlim_cur < top)
        top = (unsigned int)lim.rlim_cur;
    if (last > top)
        last = top;
    for (unsigned int fd = first; fd <= last; fd++)
        (void)close((int)fd);
}

/* Close every inherited fd >= 3 except the ones the plan still needs: other
 * Python threads may have opened fds without O_CLOEXEC, and none of them
 * may reach the sandbox. */
static void close_other_fds(const struct mb_plan *plan)
{
    int keep[MB_MAX_KEEP_FDS];
    int n = 0;
    n = keep_fd(keep, n, plan->error_fd);
    n = keep_fd(keep, n, plan->sync_fd);
    n = keep_fd(keep, n, plan->report_fd);
    /* not plan->cgroup_fd: clone3 used it in the parent, and a directory fd
     * of the host's cgroup tree open in the child as it chdirs would let a
     * cwd of /proc/self/fd/N start the command outside its root */
    n = keep_fd(keep, n, plan->stdin_fd);
    n = keep_fd(keep, n, plan->stdout_fd);
    n = keep_fd(keep, n, plan->stderr_fd);
    n = keep_fd(keep, n, plan->tty_socket);
    n = keep_fd(keep, n, plan->init_fd);
    for (int i = 0; i < plan->n_setns_fds; i++)
        n = keep_fd(keep, n, plan->setns_fds[i]);
    for (int i = 0; i < plan->n_cgroup_procs_fds; i++)
        n = keep_fd(keep, n, plan->cgroup_procs_fds[i]);
    for (int i = 0; i < plan->n_keep_fds; i++)
        n = keep_fd(keep, n, plan->keep_fds[i]);
    for (int i = 0; i < plan->n_join_fds; i++)
        n = keep_fd(keep, n, plan->join_fds[i]);
    /* insertion sort: n is tiny */
    for (int i = 1; i < n; i++) {
        int v = keep[i], j = i - 1;
        while (j >= 0 && keep[j] > v) {
            keep[j + 1] = keep[j];
            j--;
        }
        keep[j + 1] = v;
    }
    unsigned int first = 3;
    for (int i = 0; i <= n; i++) {
        unsigned int last = i < n ? (unsigned int)keep[i] - 1 : ~0U;
        if (first <= last) {
            if (syscall(SYS_close_range, first, last, 0) < 0)
                close_range_fallback(first, last);
        }
        if (i < n)
            first = (unsigned int)keep[i] + 1;
    }
}

static int dup_onto(int fd, int target)
{
    if (fd == target) {
        /* already in place: only clear close-on-exec */
        int flags = fcntl(fd, F_GETFD);
        if (flags < 0)
            return -1;
        return fcntl(fd, F_SETFD, flags & ~FD_CLOEXEC);
    }
    return dup2(fd, target) < 0 ? -1 : 0;
}

static int setup_stdio(const struct mb_plan *plan)
{
    int fds[3] = { plan->stdin_fd, plan->stdout_fd, plan->stderr_fd };
    for (int i = 0; i < 3; i++) {
        int fd = fds[i];
        if (fd < 0) {
            fd = open("/dev/null", i == 0 ? O_RDONLY : O_WRONLY);
            if (fd < 0)
                return -1;
            if (fd != i) {
                if (dup2(fd, i) < 0)
                    return -1;
                close(fd);
            }
            continue;
        }
        if (dup_onto(fd, i) < 0)
            return -1;
    }
    return 0;
}

static size_t str_len(const char *s)
{
    size_t n = 0;
    while (s[n])
        n++;
    return n;
}

/* A new network namespace has a loopback device that is down; programs
 * expect 127.0.0.1 to work.  Two ioctls do it, no netlink needed. */
static int loopback_up(void)
{
    struct ifreq req;
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    memset(&req, 0, sizeof req);
    memcpy(req.ifr_name, "lo", 3);
    if (ioctl(fd, SIOCGIFFLAGS, &req) < 0)
        goto fail;
    req.ifr_flags |= IFF_UP | IFF_RUNNING;
    if (ioctl(fd, SIOCSIFFLAGS, &req) < 0)
        goto fail;
    close(fd);
    return 0;
fail:
    {
        int saved = errno;
        close(fd);
        errno = saved;
    }
    return -1;
}

/* Allocate a pseudo-terminal in the container's own devpts instance (so
 * its name, /dev/pts/N, resolves inside), hand the master to the parent
 * with SCM_RIGHTS, and make the slave our controlling terminal and stdio.
 * The same design as runc's --console-socket. */
static int open_pty(const struct mb_plan *plan)
{
    int unlock = 0;
    int master = open("/dev/ptmx", O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (master < 0)
        return -1;
    if (ioctl(master, TIOCSPTLCK, &unlock) < 0)
        return -1;
    int slave = ioctl(master, TIOCGPTPEER, O_RDWR | O_NOCTTY);
    if (slave < 0)
        return -1;

    char dummy = 'T';
    struct iovec iov = { &dummy, 1 };
    union {
        struct cmsghdr align;
        char buf[CMSG_SPACE(sizeof(int))];
    } control;
    memset(&control, 0, sizeof control);
    struct msghdr msg;
    memset(&msg, 0, sizeof msg);
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.buf;
    msg.msg_controllen = sizeof control.buf;
    struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg);
    cmsg->cmsg_level = SOL_SOCKET;
    cmsg->cmsg_type = SCM_RIGHTS;
    cmsg->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(cmsg), &master, sizeof(int));
    if (sendmsg(plan->tty_socket, &msg, MSG_NOSIGNAL) < 0)
        return -1;
    close(master);
    close(plan->tty_socket);

    if (ioctl(slave, TIOCSCTTY, 0) < 0)
        return -1;
    for (int fd = 0; fd < 3; fd++)
        if (dup2(slave, fd) < 0)
            return -1;
    if (slave > 2)
        close(slave);
    return 0;
}

/* ---- capabilities ----------------------------------------------------- */

static int apply_bounding_set(uint64_t bounding)
{
    for (int cap = 0; cap < 64; cap++) {
        if (bounding & (1ULL << cap))
            continue;
        if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0) {
            if (errno == EINVAL)   /* past CAP_LAST_CAP: nothing to drop */
                break;
            return -1;
        }
    }
    return 0;
}

static int apply_capsets(const struct mb_plan *plan)
{
    struct __user_cap_header_struct header = { _LINUX_CAPABILITY_VERSION_3, 0 };
    struct __user_cap_data_struct data[2];
    data[0].effective = (uint32_t)plan->cap_effective;
    data[1].effective = (uint32_t)(plan->cap_effective >> 32);
    data[0].permitted = (uint32_t)plan->cap_permitted;
    data[1].permitted = (uint32_t)(plan->cap_permitted >> 32);
    data[0].inheritable = (uint32_t)plan->cap_inheritable;
    data[1].inheritable = (uint32_t)(plan->cap_inheritable >> 32);
    if (syscall(SYS_capset, &header, data) < 0)
        return -1;
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) < 0 && errno != EINVAL)
        return -1;
    for (int cap = 0; cap < 64; cap++) {
        if (!(plan->cap_ambient & (1ULL << cap)))
            continue;
        if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap, 0, 0) < 0)
            return -1;
    }
    return 0;
}

static int install_seccomp(const struct mb_plan *plan)
{
    struct sock_fprog prog;
    prog.len = (unsigned short)plan->seccomp_len;
    prog.filter = (struct sock_filter *)plan->seccomp_filter;
    return prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog, 0, 0);
}

/* ---- execve with a PATH search that needs no malloc ------------------- */

static void __attribute__((noreturn)) exec_command(const struct mb_plan *plan)
{
    const char *file = plan->argv[0];
    char *const *argv = (char *const *)plan->argv;
    char *const *envp = (char *const *)plan->envp;

    if (plan->init_fd >= 0) {
        /* minibox-init reports the command's exec failure on error_fd */
        int flags = fcntl(plan->error_fd, F_GETFD);
        if (flags < 0 || fcntl(plan->error_fd, F_SETFD, flags & ~FD_CLOEXEC) < 0)
            fail(plan, MB_STEP_EXECVE, errno, -1);
        syscall(SYS_execveat, plan->init_fd, "", argv, envp, AT_EMPTY_PATH);
        fail(plan, MB_STEP_EXECVE, errno, -1);
    }

    for (const char *p = file; *p; p++) {
        if (*p == '/') {
            execve(file, argv, envp);
            fail(plan, MB_STEP_EXECVE, errno, -1);
        }
    }
    /* Python always passes a PATH (its DEFAULT_PATH when the Spec has none) */
    const char *path = plan->path_env ? plan->path_env : "";
    size_t file_len = str_len(file);
    int saved = ENOENT;
    char buf[4096];
    while (*path) {
        const char *end = path;
        while (*end && *end != ':')
            end++;
        size_t dir_len = (size_t)(end - path);
        if (dir_len == 0) {           /* empty entry: current directory */
            buf[0] = '.';
            dir_len = 1;
        } else if (dir_len < sizeof buf) {
            memcpy(buf, path, dir_len);
        }
        if (dir_len + 1 + file_len + 1 <= sizeof buf) {
            buf[dir_len] = '/';
            memcpy(buf + dir_len + 1, file, file_len + 1);
            execve(buf, argv, envp);
            if (errno == EACCES)
                saved = EACCES;   /* keep looking, but remember (as execvp does) */
            else if (errno != ENOENT && errno != ENOTDIR)
                fail(plan, MB_STEP_EXECVE, errno, -1);
        }
        path = *end ? end + 1 : end;
    }
    fail(plan, MB_STEP_EXECVE, saved, -1);
}

/* Read the parent's next sync byte; EOF means it died: give up.  Any
 * other byte than the expected one is a protocol error. */
static void wait_for_parent(const struct mb_plan *plan, char expected)
{
    char got;
    ssize_t n;
    do {
        n = read(plan->sync_fd, &got, 1);
    } while (n < 0 && errno == EINTR);
    if (n != 1)
        fail(plan, MB_STEP_WAIT_PARENT, n == 0 ? EPIPE : errno, -1);
    if (got != expected)
        fail(plan, MB_STEP_WAIT_PARENT, EPROTO, -1);
}

/* The file-system steps: build the root, bind it onto itself, run the
 * mount plan below it through file descriptors (csrc/rootfs.c), seal it
 * and pivot into it. */
static void setup_root(const struct mb_plan *plan)
{
    int failed = -1;
    /* Step: stop mount events from flowing back to the host. */
    CHECK(plan, MB_STEP_MOUNT_PRIVATE, mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL));
    /* Step: a writable layer over a shared, read-only image, when asked:
     * a tmpfs for the changes and an overlay mount that is the root.  Its
     * paths are minibox's own, on the host. */
    if (plan->n_root_ops > 0) {
        int host_root = open("/", O_PATH | O_DIRECTORY | O_CLOEXEC);
        int fds[plan->n_root_ops];
        if (host_root < 0)
            fail(plan, MB_STEP_ROOT_LAYER, errno, -1);
        if (mb_run_ops(plan->root_ops, plan->n_root_ops, host_root, plan->compat, fds, &failed) < 0)
            fail(plan, MB_STEP_ROOT_LAYER, errno, failed);
        mb_close_ops(fds, plan->n_root_ops);
        close(host_root);
    }
    /* Step: pivot_root needs the new root to be a mount point.  The
     * rootfs's own path is the caller's (nothing inside the rootfs can
     * change it); from here on everything inside it goes through root. */
    CHECK(plan, MB_STEP_BIND_ROOTFS,
          mount(plan->rootfs, plan->rootfs, NULL, MS_BIND | MS_REC, NULL));
    int root = open(plan->rootfs, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (root < 0)
        fail(plan, MB_STEP_BIND_ROOTFS, errno, -1);
    {
        int fds[plan->n_ops > 0 ? plan->n_ops : 1];
        if (mb_run_ops(plan->ops, plan->n_ops, root, plan->compat, fds, &failed) < 0)
            fail(plan, MB_STEP_MOUNTS, errno, failed);
        mb_close_ops(fds, plan->n_ops);
    }
    /* Step: seal the rootfs.  nodev: CAP_MKNOD lets root inside create
     * device nodes, but no node on a writable file system may open a
     * host device; the few devices a container needs are bind-mounted
     * into /dev by the plan. */
    CHECK(plan, MB_STEP_SEAL_ROOTFS,
          mb_seal_mount(root, MS_NODEV | (plan->readonly_rootfs ? MS_RDONLY : 0), plan->compat));
    /* Step: pivot_root(".", ".") stacks the old root on top of the new
     * one; unmounting "." then detaches it (the runc trick, which needs
     * no put_old directory inside a possibly read-only rootfs). */
    CHECK(plan, MB_STEP_PIVOT_ROOT, fchdir(root));
    CHECK(plan, MB_STEP_PIVOT_ROOT, syscall(SYS_pivot_root, ".", "."));
    CHECK(plan, MB_STEP_DETACH_OLD_ROOT, umount2(".", MNT_DETACH));
    CHECK(plan, MB_STEP_DETACH_OLD_ROOT, chdir("/"));
    close(root);
}

/* ---- the child: fixed, named steps ----------------------------------- */

/* Hand the owner's keeper a pidfd of ourselves (pidfd_open(2) of our own
 * pid, as seen in our pid namespace; SCM_RIGHTS, unix(7)).  The caller
 * hands the keeper the same process once the clone returns (owner.keep);
 * this closes the window before that, in which a caller killed by SIGKILL
 * would leave the child running with nobody to end it.  Best effort: if it
 * fails the caller's own hand-over still follows, as before. */
static void hand_self_to_keeper(int keeper_fd)
{
    int self = (int)syscall(SYS_pidfd_open, getpid(), 0);
    if (self < 0)
        return;
    char byte = 'K';
    struct iovec iov = { &byte, 1 };
    union { char buf[CMSG_SPACE(sizeof(int))]; struct cmsghdr align; } control;
    struct msghdr msg;
    memset(&msg, 0, sizeof msg);
    memset(&control, 0, sizeof control);
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.buf;
    msg.msg_controllen = sizeof control.buf;
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(c), &self, sizeof self);
    ssize_t n;
    do {
        n = sendmsg(keeper_fd, &msg, MSG_NOSIGNAL);
    } while (n < 0 && errno == EINTR);
    close(self);
}

static void __attribute__((noreturn)) child_main(const struct mb_plan *plan)
{
    reset_signals();
    /* Step: nobody in the container may reach us through /proc/PID (see
     * struct mb_plan's non_dumpable). */
    if (plan->non_dumpable)
        CHECK(plan, MB_STEP_NON_DUMPABLE, prctl(PR_SET_DUMPABLE, 0, 0, 0, 0));
    /* Step: before anything else, the keeper holds us (see hand_self_to_keeper). */
    if (plan->keeper_fd >= 0)
        hand_self_to_keeper(plan->keeper_fd);
    close_other_fds(plan);

    /* Step: join the namespaces given by path (a pod's shared ones). */
    for (int i = 0; i < plan->n_join_fds; i++) {
        CHECK(plan, MB_STEP_SETNS, setns(plan->join_fds[i], 0));
        close(plan->join_fds[i]);
    }

    /* Step: in a new user namespace, wait for the parent to write our
     * uid/gid maps: nothing we create before that could be owned by anyone. */
    if (plan->sync_early)
        wait_for_parent(plan, MB_SYNC_MAPS_WRITTEN);

    /* Step: in a new user namespace we start as the overflow id until we
     * switch to a mapped one; files we create would fail with EOVERFLOW. */
    if (plan->become_root) {
        CHECK(plan, MB_STEP_BECOME_ROOT, setresgid(0, 0, 0));
        CHECK(plan, MB_STEP_BECOME_ROOT, setresuid(0, 0, 0));
    }

    CHECK(plan, MB_STEP_STDIO, setup_stdio(plan));

    /* Step: a new session, so the sandbox never shares the caller's
     * controlling terminal (no keystroke injection into it). */
    CHECK(plan, MB_STEP_SETSID, setsid());

    if (plan->hostname)
        CHECK(plan, MB_STEP_HOSTNAME, sethostname(plan->hostname, str_len(plan->hostname)));

    if (plan->loopback_up)
        CHECK(plan, MB_STEP_LOOPBACK, loopback_up());

    if (plan->rootfs)
        setup_root(plan);

    if (plan->tty_socket >= 0)
        CHECK(plan, MB_STEP_PTY, open_pty(plan));

    /* Step: wait for the parent's go.  Meanwhile it wrote our id maps,
     * plugged in the network, or (cgroup v2, exec) attached us to our
     * cgroups; our own setup above ran in parallel.  Nothing of the
     * command runs before it: rlimits, ids, capabilities and seccomp come
     * next. */
    if (plan->sync_fd >= 0)
        wait_for_parent(plan, MB_SYNC_GO);

    /* Step: join our cgroups ourselves, "0" meaning "me".  The fds are
     * each hierarchy's "tasks" on cgroup v1: a thread moving itself skips
     * the kernel's global threadgroup lock, whose first taking after a
     * quiet spell waits out an RCU grace period (5-18 ms here); we are
     * single-threaded, so the thread is the whole process.  On v2 they are
     * cgroup.procs (vfork mode only; clone3 uses CLONE_INTO_CGROUP). */
    for (int i = 0; i < plan->n_cgroup_procs_fds; i++) {
        ssize_t n;
        do {
            n = write(plan->cgroup_procs_fds[i], "0", 1);
        } while (n < 0 && errno == EINTR);
        if (n < 0)
            fail(plan, MB_STEP_JOIN_CGROUP, errno, i);
        close(plan->cgroup_procs_fds[i]);
    }

    /* Step: a cgroup namespace is rooted at the cgroups its creator is in.
     * A child that joined its cgroups after the clone (vfork mode, cgroup
     * v1, a parent that attaches it) makes its own now, as runc does, so
     * /proc/self/cgroup shows "/" and not the host's layout. */
    if (plan->unshare_cgroupns)
        CHECK(plan, MB_STEP_CGROUP_NAMESPACE, unshare(CLONE_NEWCGROUP));

    for (int i = 0; i < plan->n_rlimits; i++) {
        struct rlimit lim = { plan->rlimits[i].soft, plan->rlimits[i].hard };
        CHECK(plan, MB_STEP_RLIMITS, setrlimit(plan->rlimits[i].resource, &lim));
    }

    /* Without no_new_privs, installing a filter needs CAP_SYS_ADMIN, which
     * the capability step may drop: install it first then (as runc does);
     * the filter allows the few calls that remain before execve. */
    int seccomp_early = plan->seccomp_len > 0 && !plan->no_new_privs;
    if (seccomp_early)
        CHECK(plan, MB_STEP_SECCOMP, install_seccomp(plan));

    if (plan->set_caps) {
        CHECK(plan, MB_STEP_CAPABILITIES, apply_bounding_set(plan->cap_bounding));
        /* keep permitted caps across setuid() to a non-zero uid */
        CHECK(plan, MB_STEP_CAPABILITIES, prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0));
    }
    if (plan->set_ids) {
        gid_t gid = plan->gid;
        if (plan->set_groups && plan->n_groups > 0)
            CHECK(plan, MB_STEP_SETGROUPS, setgroups((size_t)plan->n_groups, (const gid_t *)plan->groups));
        else if (plan->set_groups)
            CHECK(plan, MB_STEP_SETGROUPS, setgroups(1, &gid));
        CHECK(plan, MB_STEP_SETGID, setresgid(plan->gid, plan->gid, plan->gid));
        CHECK(plan, MB_STEP_SETUID, setresuid(plan->uid, plan->uid, plan->uid));
    }
    if (plan->set_caps) {
        CHECK(plan, MB_STEP_CAPABILITIES, apply_capsets(plan));
        CHECK(plan, MB_STEP_CAPABILITIES, prctl(PR_SET_KEEPCAPS, 0, 0, 0, 0));
    }

    /* chdir after the id switch, so the command's own permissions apply.
     * Then check where it led: a cwd of /proc/self/fd/N names whatever
     * fd N is, and a directory outside the root there (an fd the caller
     * passed, or leaked) would start the command in the host's file
     * system (runc's CVE-2024-21626).  The kernel's getcwd marks a
     * directory the root cannot reach "(unreachable)". */
    if (plan->cwd) {
        char where[4096];
        CHECK(plan, MB_STEP_CHDIR, chdir(plan->cwd));
        long n = syscall(SYS_getcwd, where, sizeof where);
        if (n > 0 && where[0] != '/')
            fail(plan, MB_STEP_CWD_OUTSIDE, EPERM, -1);
    }

    if (plan->no_new_privs)
        CHECK(plan, MB_STEP_NO_NEW_PRIVS, prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0));

    /* Step: seccomp, last, so none of the setup above is filtered. */
    if (plan->seccomp_len > 0 && !seccomp_early)
        CHECK(plan, MB_STEP_SECCOMP, install_seccomp(plan));

    exec_command(plan);
}

/* setns(2) into every namespace of plan->setns_fds.  The user namespace
 * grants the capabilities to join those it owns, but once in it we lose
 * them over namespaces it does not own (a pod's network namespace may
 * belong to the host's user namespace): so first join every other one we
 * can, then the user namespace, then retry those that said EPERM (what
 * crun does).  NS_GET_NSTYPE (ioctl_ns(2)) tells which fd is which. */
static void join_namespaces(const struct mb_plan *plan)
{
    int user_fd = -1;
    int deferred[MB_MAX_KEEP_FDS];
    int n_deferred = 0;
    for (int i = 0; i < plan->n_setns_fds; i++) {
        int fd = plan->setns_fds[i];
        if (ioctl(fd, NS_GET_NSTYPE) == CLONE_NEWUSER) {
            user_fd = fd;
            continue;
        }
        if (setns(fd, 0) == 0)
            continue;
        if (errno != EPERM || n_deferred == MB_MAX_KEEP_FDS)
            fail(plan, MB_STEP_SETNS, errno, i);
        deferred[n_deferred++] = fd;
    }
    if (user_fd >= 0)
        CHECK(plan, MB_STEP_SETNS, setns(user_fd, CLONE_NEWUSER));
    for (int i = 0; i < n_deferred; i++)
        CHECK(plan, MB_STEP_SETNS, setns(deferred[i], 0));
}

/* Exec into a running container (or start one that joins a pid, user or
 * mount namespace by path): join the namespaces, then clone once more so
 * that the new process is inside the pid namespace (setns on a pid
 * namespace only affects children) and, through CLONE_PARENT, is the
 * caller's own child that it can wait for. */
static int vfork_child(void *arg);
static long clone_vfork(const struct mb_plan *plan, uint64_t flags, int *pidfd, int (*fn)(void *));

static void __attribute__((noreturn)) join_and_fork(const struct mb_plan *plan)
{
    reset_signals();
    /* before the clone: the grandchild inherits it from its first instant */
    if (plan->non_dumpable)
        CHECK(plan, MB_STEP_NON_DUMPABLE, prctl(PR_SET_DUMPABLE, 0, 0, 0, 0));
    close_other_fds(plan);
    join_namespaces(plan);
    /* The grandchild makes the namespaces that are new (none for an exec;
     * for a container that joins some by path, the others, as runc's
     * nsexec does after its setns calls).  In vfork mode (an exec that
     * needs nothing from the caller: it joins its cgroups itself) it
     * borrows our memory too, which is the caller's: no page table is
     * copied on the way, and we sleep until it has exec'd. */
    long pid;
    if (plan->use_vfork)
        pid = clone_vfork(plan, CLONE_PARENT | plan->clone_flags, NULL, vfork_child);
    else
        pid = syscall(SYS_clone, CLONE_PARENT | plan->clone_flags | SIGCHLD, 0, NULL, NULL, 0);
    if (pid < 0)
        fail(plan, MB_STEP_FORK, errno, -1);
    if (pid == 0)
        child_main(plan);
    int32_t report = (int32_t)pid;
    ssize_t n;
    do {
        n = write(plan->report_fd, &report, sizeof report);
    } while (n < 0 && errno == EINTR);
    _exit(n == sizeof report ? 0 : 1);
}

/* ---- the parent side -------------------------------------------------- */

static long clone3_child(const struct mb_plan *plan, uint64_t flags, int *pidfd)
{
    struct clone_args args;
    memset(&args, 0, sizeof args);
    args.flags = flags | CLONE_PIDFD;
    args.pidfd = (uint64_t)(uintptr_t)pidfd;
    args.exit_signal = SIGCHLD;
    if (plan->cgroup_fd >= 0) {
        args.flags |= CLONE_INTO_CGROUP;
        args.cgroup = (uint64_t)plan->cgroup_fd;
    }
    return syscall(SYS_clone3, &args, sizeof args);
}

/* glibc's clone() runs this on the child's own stack (vfork mode). */
static int vfork_child(void *arg)
{
    child_main((const struct mb_plan *)arg);
}

/* The middle process of an exec in vfork mode: join, then clone the
 * command's process (join_and_fork). */
static int vfork_join(void *arg)
{
    join_and_fork((const struct mb_plan *)arg);
}

/* CLONE_VM|CLONE_VFORK, the way posix_spawn() starts a program: the child
 * borrows the parent's memory instead of copying its page tables, which for
 * a caller holding gigabytes saves milliseconds per start.  The calling
 * thread sleeps until the child calls execve() or exits; other threads run
 * on (the GIL is released by cffi).  The child writes only to its own stack
 * and to errno, which belongs to the sleeping thread. */
static long clone_vfork(const struct mb_plan *plan, uint64_t flags, int *pidfd, int (*fn)(void *))
{
    const size_t stack_size = 256 * 1024;
    char *stack = mmap(NULL, stack_size, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
    if (stack == MAP_FAILED)
        return -1;
    if (pidfd != NULL)
        flags |= CLONE_PIDFD;
    long pid = clone(fn, stack + stack_size, (int)(flags | CLONE_VM | CLONE_VFORK | SIGCHLD),
                     (void *)plan, pidfd);
    int saved = errno;
    munmap(stack, stack_size);   /* the child has exec'd or exited */
    errno = saved;
    return pid;
}

int mb_spawn(const struct mb_plan *plan, int *pidfd)
{
    int joining = plan->n_setns_fds > 0;
    uint64_t flags = joining ? 0 : plan->clone_flags;
    sigset_t all, old;
    long pid;

    *pidfd = -1;
    /* Block every signal across the clone so no Python-level handler can run
     * in the child before reset_signals() (as _posixsubprocess does). */
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);

    if (plan->use_vfork) {
        /* The child borrows our mm, so its PR_SET_DUMPABLE 0 is ours too
         * until it has exec'd (when clone_vfork returns): then give the
         * caller back what it had. */
        int dumpable = plan->non_dumpable ? prctl(PR_GET_DUMPABLE, 0, 0, 0, 0) : -1;
        /* joining (an exec): the middle process too, see join_and_fork() */
        pid = clone_vfork(plan, flags, pidfd, joining ? vfork_join : vfork_child);
        if (dumpable >= 0) {
            int saved_errno = errno;
            (void)prctl(PR_SET_DUMPABLE, dumpable, 0, 0, 0);
            errno = saved_errno;
        }
        goto done;
    }
    pid = clone3_child(plan, flags, pidfd);
    if (pid < 0 && (errno == ENOSYS || errno == E2BIG) && plan->cgroup_fd < 0) {
        /* kernels before 5.3: classic clone(2); the parent opens a pidfd */
        pid = syscall(SYS_clone, (unsigned long)flags | SIGCHLD, 0, NULL, NULL, 0);
    }
    if (pid == 0) {
        if (joining)
            join_and_fork(plan);
        child_main(plan);
    }
done:;
    int saved = errno;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (pid < 0)
        return -saved;
    return (int)pid;
}
