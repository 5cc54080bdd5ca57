/*
 * minibox spawn engine: the plan Python hands to C.
 *
 * Everything the child does between clone() and execve() happens in C,
 * because the calling Python process may have other threads: after a fork
 * only the calling thread survives, and a lock another thread held (malloc,
 * stdio, the GIL) stays held forever in the child.  CPython's
 * _posixsubprocess and runc's nsexec.c are in C for the same reason.
 *
 * Python validates the Spec and prepares a struct mb_plan made of plain
 * arrays and strings it owns; the child only reads it, never allocates.
 * This header is also parsed by cffi (csrc/build_native.py), so it holds
 * only declarations cffi understands.
 */
#ifndef MINIBOX_SPAWN_H
#define MINIBOX_SPAWN_H

#include <stdint.h>

/* The child's setup steps, in the order it runs them.  The numbers travel
 * through the error pipe; minibox/container/spawn.py names them. */
enum mb_step {
    MB_STEP_CLONE = 1,
    MB_STEP_WAIT_PARENT,
    MB_STEP_SETSID,
    MB_STEP_TTY,
    MB_STEP_STDIO,
    MB_STEP_HOSTNAME,
    MB_STEP_MOUNT_PRIVATE,
    MB_STEP_BIND_ROOTFS,
    MB_STEP_MOUNTS,          /* one of plan->ops; index says which */
    MB_STEP_SEAL_ROOTFS,     /* remount the rootfs nodev (+ read-only) */
    MB_STEP_PIVOT_ROOT,
    MB_STEP_DETACH_OLD_ROOT,
    MB_STEP_CHDIR,
    MB_STEP_RLIMITS,
    MB_STEP_SETGROUPS,
    MB_STEP_SETGID,
    MB_STEP_SETUID,
    MB_STEP_CAPABILITIES,
    MB_STEP_NO_NEW_PRIVS,
    MB_STEP_SECCOMP,
    MB_STEP_EXECVE,
    MB_STEP_CLOSE_FDS,
    MB_STEP_SETNS,           /* exec into a running container */
    MB_STEP_FORK,
    MB_STEP_BECOME_ROOT,
    MB_STEP_LOOPBACK,
    MB_STEP_PTY,
    MB_STEP_JOIN_CGROUP,
    MB_STEP_ROOT_LAYER,      /* one of plan->root_ops; index says which */
};

/* One file-system operation of the mount steps, run before pivot_root.
 * Paths are absolute host paths (Python prefixed the rootfs). */
enum mb_op_kind {
    MB_OP_MOUNT = 1,     /* mount(source, target, fstype, flags, data) */
    MB_OP_MKDIR,         /* mkdir(target, mode), EEXIST is fine */
    MB_OP_TOUCH,         /* create an empty file to bind a file onto */
    MB_OP_SYMLINK,       /* symlink(source, target), EEXIST is fine */
    MB_OP_REMOUNT,       /* bind-remount with flags (MS_RDONLY, MS_NODEV...), keeping locked ones */
    MB_OP_MKNOD,         /* mknod(target, mode, dev), for /dev without userns */
    MB_OP_WRITE,         /* write data into the existing file target (a sysctl); with
                          * MB_WRITE_PID1 in flags only as pid 1 of a new pid namespace */
};

/* MB_OP_WRITE flags */
#define MB_WRITE_PID1 1UL

struct mb_op {
    int kind;
    const char *source;
    const char *target;
    const char *fstype;
    unsigned long flags;
    const char *data;
    unsigned int mode;
    unsigned long dev;
    int optional;        /* failure is ignored (e.g. masking a path that is absent) */
};

struct mb_rlimit {
    int resource;
    uint64_t soft;
    uint64_t hard;
};

struct mb_plan {
    /* clone */
    uint64_t clone_flags;      /* CLONE_NEW* */
    int cgroup_fd;             /* >= 0: clone3 CLONE_INTO_CGROUP (cgroup v2) */
    int use_vfork;             /* CLONE_VM|CLONE_VFORK: no page-table copy; the
                                * caller's thread sleeps until execve, so the
                                * child must need nothing from it (no id maps,
                                * no network plumbing): it joins its cgroups
                                * itself through cgroup_procs_fds */
    const int *cgroup_procs_fds;
    int n_cgroup_procs_fds;

    /* synchronisation: the child reads one byte from sync_fd after its
     * file-system setup and before the command's own steps (rlimits, ids,
     * caps, seccomp, execve); with sync_early one more before any setup.
     * On failure it writes struct mb_error to error_fd (close-on-exec). */
    int sync_fd;
    int sync_early;            /* also read one byte before setup (user namespace: maps) */
    int error_fd;

    /* stdio: the child dup2()s these onto 0, 1, 2 (-1: /dev/null) */
    int stdin_fd;
    int stdout_fd;
    int stderr_fd;
    int tty_socket;            /* >= 0: allocate a pty in the container's own
                                * devpts, send the master back over this
                                * unix socket (SCM_RIGHTS), make the slave
                                * the controlling tty and stdio */

    int become_root;           /* in a new user namespace: setresuid/gid(0) once mapped */
    const char *hostname;      /* NULL: keep */
    int loopback_up;           /* new network namespace: bring "lo" up */

    /* mounts */
    const struct mb_op *root_ops;  /* build the root first (e.g. an overlay over a
                                    * shared image); run before the rootfs bind */
    int n_root_ops;
    const char *rootfs;        /* NULL: no pivot_root (exec path) */
    const struct mb_op *ops;
    int n_ops;
    int readonly_rootfs;       /* the rootfs is always sealed nodev; also read-only? */

    /* process */
    const char *cwd;
    const char *const *argv;
    const char *const *envp;
    const char *path_env;      /* PATH used to search argv[0], or NULL */
    int init_fd;               /* >= 0: execveat() this fd (minibox-init) instead
                                * of searching argv[0]; argv is then
                                * {"minibox-init", "<error_fd>", "--", cmd...}
                                * and error_fd stays open across the exec */
    uint32_t uid;
    uint32_t gid;
    int set_ids;               /* call setgid/setuid */
    int set_groups;            /* call setgroups (not allowed in an unprivileged userns) */

    const struct mb_rlimit *rlimits;
    int n_rlimits;

    /* capabilities: 64-bit masks, index = CAP_* number */
    int set_caps;
    uint64_t cap_bounding;
    uint64_t cap_effective;
    uint64_t cap_permitted;
    uint64_t cap_inheritable;
    uint64_t cap_ambient;

    int no_new_privs;

    /* seccomp: a compiled classic-BPF program (struct sock_filter[]) */
    const void *seccomp_filter;
    int seccomp_len;           /* number of sock_filter instructions, 0 = none */

    /* exec into a running container: the child setns()es into these fds
     * (user namespace first), then clones once more with CLONE_PARENT so
     * the grandchild enters the pid namespace and is the caller's child;
     * the intermediate child writes the grandchild's pid (int32) to
     * report_fd and exits 0. */
    const int *setns_fds;
    int n_setns_fds;
    int report_fd;
};

struct mb_error {
    int32_t step;
    int32_t err;     /* errno */
    int32_t index;   /* index into ops, or -1 */
};

/* Clone a child that runs the plan.  Returns the child's pid (> 0) and sets
 * *pidfd (-1 when the kernel has no CLONE_PIDFD), or -errno on failure in
 * the parent. */
int mb_spawn(const struct mb_plan *plan, int *pidfd);


#endif
