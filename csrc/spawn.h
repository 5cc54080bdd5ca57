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

/* The child's setup steps.  The numbers travel through the error pipe
 * (and from minibox-init, csrc/init/init.c, which reports MB_STEP_EXECVE),
 * so each is written out and never reused; minibox/container/spawn.py
 * names them, and tests/unit/test_spawn_protocol.py ties the two. */
enum mb_step {
    MB_STEP_CLONE = 1,
    MB_STEP_WAIT_PARENT = 2,
    MB_STEP_SETSID = 3,
    MB_STEP_STDIO = 5,
    MB_STEP_HOSTNAME = 6,
    MB_STEP_MOUNT_PRIVATE = 7,
    MB_STEP_BIND_ROOTFS = 8,
    MB_STEP_MOUNTS = 9,            /* one of plan->ops; index says which */
    MB_STEP_SEAL_ROOTFS = 10,      /* make the rootfs nodev (+ read-only) */
    MB_STEP_PIVOT_ROOT = 11,
    MB_STEP_DETACH_OLD_ROOT = 12,
    MB_STEP_CHDIR = 13,
    MB_STEP_RLIMITS = 14,
    MB_STEP_SETGROUPS = 15,
    MB_STEP_SETGID = 16,
    MB_STEP_SETUID = 17,
    MB_STEP_CAPABILITIES = 18,
    MB_STEP_NO_NEW_PRIVS = 19,
    MB_STEP_SECCOMP = 20,
    MB_STEP_EXECVE = 21,
    MB_STEP_SETNS = 23,            /* exec into a running container */
    MB_STEP_FORK = 24,
    MB_STEP_BECOME_ROOT = 25,
    MB_STEP_LOOPBACK = 26,
    MB_STEP_PTY = 27,
    MB_STEP_JOIN_CGROUP = 28,
    MB_STEP_ROOT_LAYER = 29,       /* one of plan->root_ops; index says which */
    MB_STEP_CGROUP_NAMESPACE = 30, /* unshare(CLONE_NEWCGROUP) once in the cgroup */
    MB_STEP_NON_DUMPABLE = 31,     /* prctl(PR_SET_DUMPABLE, 0) before entering */
    MB_STEP_CWD_OUTSIDE = 32,      /* the cwd is not below the root (a directory fd) */
};

/* The bytes the parent writes to sync_fd, in this order (runc also names
 * its sync protocol): the child checks each one it reads. */
enum mb_sync {
    MB_SYNC_MAPS_WRITTEN = 'M',    /* uid/gid maps are written: set up (user namespace only) */
    MB_SYNC_GO = 'G',              /* cgroups joined, network plugged in: run the command */
};

/* One file-system operation of the mount steps, run before pivot_root.
 * Each path lives inside a root and is resolved there through file
 * descriptors (csrc/rootfs.c): the rootfs, or with base >= 0 the mount
 * that op number `base` made (so "/dev/null" is "null" below the /dev
 * tmpfs).  The root ops (plan->root_ops) use the host's "/" as root. */
enum mb_op_kind {
    MB_OP_MOUNT = 1,     /* a new file system: fstype, source, flags, data */
    MB_OP_MKDIR = 2,     /* mkdir(target, mode), EEXIST is fine */
    MB_OP_TOUCH = 3,     /* create an empty file to bind a file onto; EEXIST is fine */
    MB_OP_SYMLINK = 4,   /* symlink(source, target), EEXIST is fine */
    MB_OP_BIND = 5,      /* bind source (MS_REC: with submounts), with MS_RDONLY,
                          * MS_NOSUID, MS_NODEV, MS_NOEXEC set before it is attached */
    MB_OP_WRITE = 6,     /* write data into the existing file target (a sysctl); with
                          * MB_WRITE_PID1 in flags only as pid 1 of a new pid namespace */
};

/* MB_OP_WRITE flags */
enum mb_write_flags {
    MB_WRITE_PID1 = 1,
};

/* Force the fallbacks of old kernels (for tests): no openat2 (walk one
 * O_NOFOLLOW component at a time), no new mount API (mount(2) on
 * /proc/self/fd/N).  Each is also taken by itself on ENOSYS. */
enum mb_compat {
    MB_COMPAT_NO_OPENAT2 = 1,
    MB_COMPAT_NO_MOUNT_API = 2,
};

/* How a bind op's source is opened (mb_op.source_in_root). */
enum mb_source {
    MB_SOURCE_HOST = 0,         /* a host path, symlinks followed (OCI bundles' sources, as runc) */
    MB_SOURCE_IN_ROOT = 1,      /* below the op's base, resolved inside it */
    MB_SOURCE_NO_SYMLINKS = 2,  /* a host path no symlink on which is followed (the API's binds) */
};

struct mb_op {
    int kind;
    int base;            /* -1: the root; else the index of an earlier mount op */
    const char *source;  /* a host path, or with source_in_root one below base */
    int source_in_root;  /* enum mb_source: how source is opened */
    const char *target;
    const char *fstype;
    unsigned long flags;
    const char *data;
    unsigned int mode;
    int optional;        /* failure is ignored (e.g. masking a path that is absent) */
    int keep_fd;         /* a later op's base: keep the fd of the mount's root */
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
                                * no network plumbing); with setns_fds (an
                                * exec) the middle process and the command's
                                * both, and the command gets no go byte */
    const int *cgroup_procs_fds;   /* the child writes "0" to each after the go,
                                    * joining its cgroups itself (v1: "tasks",
                                    * no RCU wait; v2: cgroup.procs) */
    int n_cgroup_procs_fds;

    /* synchronisation: the child reads MB_SYNC_GO from sync_fd after its
     * file-system setup and before the command's own steps (rlimits, ids,
     * caps, seccomp, execve); with sync_early MB_SYNC_MAPS_WRITTEN before
     * any setup.
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
    int compat;                /* enum mb_compat bits: force old-kernel fallbacks */
    int unshare_cgroupns;      /* unshare the cgroup namespace after joining the
                                * cgroups (when they are joined after the clone),
                                * so that its root is the container's cgroup */

    /* process */
    const char *cwd;
    const char *const *argv;
    const char *const *envp;
    const char *path_env;      /* PATH used to search argv[0] (NULL: search nothing;
                                * Python passes the Spec's or spec.DEFAULT_PATH) */
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

    /* exec into a running container, or an OCI container that joins a
     * pid, user or mount namespace by path (those can only be joined
     * before the clone: a pid namespace takes only the caller's children,
     * a user or mount namespace only a process that shares nothing): the
     * child setns()es into these fds (the user namespace between the
     * others, see join_namespaces), then clones once more with
     * CLONE_PARENT and clone_flags, so the grandchild enters the pid
     * namespace, makes the new namespaces and is the caller's child; the
     * intermediate child writes the grandchild's pid (int32) to report_fd
     * and exits 0. */
    const int *setns_fds;
    int n_setns_fds;
    int report_fd;

    /* OCI runtime (minibox-oci): fds kept open through the child's fd
     * cleanup, with their own close-on-exec flag (--preserve-fds, the
     * start gate); supplementary groups for setgroups (none: just gid);
     * namespaces joined by path right after the clone (a pod's network,
     * IPC and UTS namespaces, when nothing needs setns_fds), while the
     * others are new. */
    const int *keep_fds;
    int n_keep_fds;
    const uint32_t *groups;
    int n_groups;
    const int *join_fds;
    int n_join_fds;

    /* The owner's keeper (minibox/owner.py, csrc/keeper/keeper.c), or -1:
     * the child hands it a pidfd of itself first thing, so that a caller
     * killed between this clone and its own keep() still takes the child
     * with it (the keeper SIGKILLs what it holds when the caller is gone). */
    int keeper_fd;

    /* prctl(PR_SET_DUMPABLE, 0) first thing in the child (and in the
     * middle process of a join): until it execs, the process runs the
     * host's binary (the caller's interpreter), and a dumpable process in
     * the container's pid namespace lets root inside open its
     * /proc/PID/exe -- and rewrite that binary (CVE-2019-5736) -- or its
     * /proc/PID/fd (CVE-2016-9962).  A non-dumpable one needs
     * CAP_SYS_PTRACE in the host's user namespace; execve makes the
     * command dumpable again.  In vfork mode the child shares the
     * caller's mm, and mb_spawn gives the caller its own setting back once
     * the child has exec'd.  Only for a root caller: an unprivileged one
     * could no longer write its child's uid_map. */
    int non_dumpable;
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

/* Open path inside the directory root_fd as the kernel would after a
 * chroot there, without magic links: an O_PATH|O_CLOEXEC fd, or -errno.
 * nofollow: do not follow a symlink in the last component.  compat: enum
 * mb_compat bits.  (csrc/rootfs.c; used by minibox.images.paths.) */
int mb_open_in_root(int root_fd, const char *path, int nofollow, int compat);


#endif
