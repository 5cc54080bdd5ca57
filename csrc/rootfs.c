/*
 * minibox mount engine: the child's file-system steps, run through file
 * descriptors so that nobody who can write the rootfs can redirect them.
 *
 * Kernel features: openat2(2) with RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS,
 * the new mount API (fsopen(2), fsconfig(2), fsmount(2), open_tree(2),
 * mount_setattr(2), move_mount(2)), and mount(2) onto /proc/self/fd/N where
 * that API is missing; path_resolution(7), mount_namespaces(7).
 *
 * The threat (CVE-2021-30465 in runc): a rootfs directory is shared with
 * another container that is running untrusted code.  Between the moment a
 * path like "/mnt/x" is resolved and the moment it is used, that code can
 * swap a directory on the path for a symlink to "..", to "/" or to a host
 * path.  A runtime that handles the path as a string then mounts, creates
 * or remounts somewhere else -- outside the rootfs, or leaving a read-only
 * bind writable.  So no path inside the rootfs is ever used as a string:
 *
 *   - each step resolves its path once, inside a root fd, with openat2
 *     RESOLVE_IN_ROOT (symlinks and ".." can never leave that root; magic
 *     links such as /proc/self/root are refused), falling back to a walk of
 *     one O_NOFOLLOW component at a time where openat2 is missing (ENOSYS);
 *   - it creates (mkdirat, openat O_EXCL, symlinkat) below the parent fd it
 *     resolved, and mounts onto the target fd it resolved (move_mount);
 *   - a new file system is made with fsopen/fsmount, a bind with
 *     open_tree(OPEN_TREE_CLONE); either is a detached mount whose flags
 *     (read-only, nodev...) are set before it is attached, so no writable
 *     window exists, and whose fd stays valid after move_mount: steps below
 *     a mount minibox made ("/dev/null" below the /dev tmpfs) resolve from
 *     that fd (the op's "base"), not again from the rootfs, so renaming the
 *     mount point under it redirects nothing.
 *
 * Where the new mount API is missing (Linux < 5.2; mount_setattr < 5.12)
 * each mount is made with mount(2) on /proc/self/fd/N as runc and crun do,
 * the mount's root is re-resolved and checked, and read-only is a second
 * remount: that fallback has a short window the main path does not.
 *
 * Everything here runs in the child between clone and execve (see
 * spawn.c): only system calls on memory prepared beforehand, no malloc.
 * mb_open_in_root is also called by Python (minibox.images.paths).
 */
#define _GNU_SOURCE
#include "spawn.h"
#include "rootfs.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/magic.h>
#include <linux/openat2.h>
#include <sched.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef RESOLVE_IN_ROOT
#define RESOLVE_IN_ROOT 0x10
#endif
#ifndef RESOLVE_NO_SYMLINKS
#define RESOLVE_NO_SYMLINKS 0x04
#endif
#ifndef RESOLVE_NO_MAGICLINKS
#define RESOLVE_NO_MAGICLINKS 0x02
#endif

#define MB_PATH_MAX 4096
#define MB_MAX_LINKS 40        /* as the kernel's MAXSYMLINKS */
#define MB_WALK_DEPTH 256      /* directories the fallback walk keeps open */
#define MB_EAGAIN_TRIES 256    /* openat2 retries while renames race it */

static size_t path_len(const char *s)
{
    size_t n = 0;
    while (s[n])
        n++;
    return n;
}

static void close_keep_errno(int fd)
{
    int saved = errno;
    if (fd >= 0)
        close(fd);
    errno = saved;
}

/* "/proc/self/fd/N" into buf: the path form of an fd for mount(2). */
static void fd_path(char buf[32], int fd)
{
    static const char prefix[] = "/proc/self/fd/";
    char digits[12];
    int n = 0;
    unsigned int v = (unsigned int)fd;
    memcpy(buf, prefix, sizeof prefix - 1);
    do {
        digits[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    for (int i = 0; i < n; i++)
        buf[sizeof prefix - 1 + i] = digits[n - 1 - i];
    buf[sizeof prefix - 1 + n] = '\0';
}

/* ---- resolving a path inside a root ----------------------------------- */

/* openat2(2) with O_PATH, retried on EAGAIN: a rename elsewhere raced a ".."
 * step; the kernel refuses to guess, and so do we after enough tries (a
 * typed failure, not a guess).  -1 with errno ENOSYS where the kernel has
 * no openat2: the callers then walk the path themselves. */
static int openat2_path(int dir_fd, const char *path, int flags, unsigned long long resolve)
{
    struct open_how how;
    memset(&how, 0, sizeof how);
    how.flags = (unsigned long long)(O_PATH | O_CLOEXEC | flags);
    how.resolve = resolve;
    for (int tries = 0; tries < MB_EAGAIN_TRIES; tries++) {
        long fd = syscall(SYS_openat2, dir_fd, path, &how, sizeof how);
        if (fd >= 0)
            return (int)fd;
        if (errno != EAGAIN && errno != EINTR)
            return -1;
    }
    return -1;
}

static int openat2_in_root(int root_fd, const char *path, int nofollow)
{
    return openat2_path(root_fd, path, nofollow ? O_NOFOLLOW : 0, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS);
}

/* Only procfs has magic links (/proc/PID/root, /proc/self/fd/N, ns/...);
 * its plain symlinks (self, thread-self, mounts, net) live in its root. */
static int holds_magic_links(int dir_fd)
{
    struct statfs sfs;
    struct stat st;
    if (fstatfs(dir_fd, &sfs) < 0 || sfs.f_type != PROC_SUPER_MAGIC)
        return 0;
    return fstat(dir_fd, &st) < 0 || st.st_ino != 1;
}

/* The fallback: one component at a time, each opened O_NOFOLLOW below the
 * fd of its parent; symlinks are read and spliced into the rest of the
 * path, absolute ones restart at the root; ".." pops our own stack of
 * directory fds and never goes above the root.  The kernel is never asked
 * to follow a link or to walk "..", so a concurrent rename cannot take the
 * walk out of the root (the approach of filepath-securejoin and libpathrs).
 * no_symlinks: refuse a symlink at any step (ELOOP) instead of following it. */
static int walk_in_root(int root_fd, const char *path, int nofollow, int no_symlinks)
{
    char rest[MB_PATH_MAX];
    char link[MB_PATH_MAX];
    int stack[MB_WALK_DEPTH];
    int depth = 0, links = 0, result = -1;
    size_t len = path_len(path), pos = 0;

    if (len >= sizeof rest) {
        errno = ENAMETOOLONG;
        return -1;
    }
    memcpy(rest, path, len + 1);
    for (;;) {
        int cur = depth ? stack[depth - 1] : root_fd;
        while (rest[pos] == '/')
            pos++;
        if (!rest[pos]) {
            result = openat(cur, ".", O_PATH | O_CLOEXEC);
            break;
        }
        size_t start = pos;
        while (rest[pos] && rest[pos] != '/')
            pos++;
        size_t next = pos;
        while (rest[next] == '/')
            next++;
        int last = rest[next] == '\0';
        char saved = rest[pos];
        rest[pos] = '\0';
        const char *name = rest + start;
        if (name[0] == '.' && name[1] == '\0') {
            rest[pos] = saved;
            continue;
        }
        if (name[0] == '.' && name[1] == '.' && name[2] == '\0') {
            if (depth)
                close(stack[--depth]);
            rest[pos] = saved;
            continue;
        }
        int fd = openat(cur, name, O_PATH | O_NOFOLLOW | O_CLOEXEC);
        if (fd < 0)
            break;
        struct stat st;
        if (fstat(fd, &st) < 0) {
            close_keep_errno(fd);
            break;
        }
        if (S_ISLNK(st.st_mode) && !(last && nofollow)) {
            if (no_symlinks || holds_magic_links(cur) || ++links > MB_MAX_LINKS) {
                close(fd);
                errno = ELOOP;
                break;
            }
            ssize_t n = readlinkat(fd, "", link, sizeof link);
            close_keep_errno(fd);
            if (n < 0)
                break;
            if ((size_t)n >= sizeof link) {
                errno = ENAMETOOLONG;
                break;
            }
            /* rest := link + "/" + what followed this component */
            const char *tail = rest + next;
            size_t tail_len = path_len(tail);
            if ((size_t)n + 1 + tail_len + 1 > sizeof rest) {
                errno = ENAMETOOLONG;
                break;
            }
            memmove(rest + n + 1, tail, tail_len + 1);
            memcpy(rest, link, (size_t)n);
            rest[n] = '/';
            pos = 0;
            if (link[0] == '/')
                while (depth)
                    close(stack[--depth]);
            continue;
        }
        if (last) {
            result = fd;
            break;
        }
        if (!S_ISDIR(st.st_mode) || depth == MB_WALK_DEPTH) {
            close(fd);
            errno = S_ISDIR(st.st_mode) ? ENAMETOOLONG : ENOTDIR;
            break;
        }
        stack[depth++] = fd;
        rest[pos] = saved;
    }
    while (depth)
        close_keep_errno(stack[--depth]);
    return result;
}

int mb_resolve_in_root(int root_fd, const char *path, int nofollow, int compat)
{
    if (!(compat & MB_COMPAT_NO_OPENAT2)) {
        int fd = openat2_in_root(root_fd, path, nofollow);
        if (fd >= 0 || errno != ENOSYS)
            return fd;
    }
    return walk_in_root(root_fd, path, nofollow, 0);
}

/* A host path opened without following any symlink on it (MB_SOURCE_NO_SYMLINKS):
 * the API's bind sources, which spec.py refuses when a symlink is on their
 * path.  One swapped in since that check is ELOOP here, never a redirect
 * (e.g. to /etc).  Kernels without openat2: the fallback walk from "/",
 * refusing a symlink at any step the same way. */
static int open_host_no_symlinks(const char *path, int compat)
{
    if (!(compat & MB_COMPAT_NO_OPENAT2)) {
        int fd = openat2_path(AT_FDCWD, path, 0, RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS);
        if (fd >= 0 || errno != ENOSYS)
            return fd;
    }
    int root = open("/", O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (root < 0)
        return -1;
    int fd = walk_in_root(root, path, 0, 1);
    close_keep_errno(root);
    return fd;
}

int mb_open_in_root(int root_fd, const char *path, int nofollow, int compat)
{
    int fd = mb_resolve_in_root(root_fd, path, nofollow, compat);
    return fd < 0 ? -errno : fd;
}

/* The parent directory of path's last component, resolved in the root;
 * *name points at that component inside buf (which the caller provides).
 * A path with no last component (the root itself, ".", "..") is EEXIST:
 * it exists, and nothing must be created in its place. */
static int parent_in_root(int root_fd, const char *path, int compat, char *buf, const char **name)
{
    size_t len = path_len(path);
    if (len >= MB_PATH_MAX) {
        errno = ENAMETOOLONG;
        return -1;
    }
    memcpy(buf, path, len + 1);
    while (len && buf[len - 1] == '/')
        buf[--len] = '\0';
    size_t slash = len;
    while (slash && buf[slash - 1] != '/')
        slash--;
    const char *last = buf + slash;
    if (!*last || (last[0] == '.' && (!last[1] || (last[1] == '.' && !last[2])))) {
        errno = EEXIST;
        return -1;
    }
    *name = last;
    if (slash == 0)
        return mb_resolve_in_root(root_fd, ".", 0, compat);
    buf[slash - 1] = '\0';
    int fd = mb_resolve_in_root(root_fd, buf[0] ? buf : "/", 0, compat);
    buf[slash - 1] = '/';
    return fd;
}

/* ---- mounting onto fds ------------------------------------------------ */

static unsigned int mount_attrs(unsigned long flags)
{
    unsigned int attrs = 0;
    if (flags & MS_RDONLY)
        attrs |= MOUNT_ATTR_RDONLY;
    if (flags & MS_NOSUID)
        attrs |= MOUNT_ATTR_NOSUID;
    if (flags & MS_NODEV)
        attrs |= MOUNT_ATTR_NODEV;
    if (flags & MS_NOEXEC)
        attrs |= MOUNT_ATTR_NOEXEC;
    return attrs;
}

/* In a user namespace the kernel locks the nosuid/nodev/noexec/atime flags
 * of mounts inherited from a more privileged namespace; a remount that
 * drops them fails with EPERM (mount_namespaces(7)), so keep them. */
static unsigned long locked_flags(int fd)
{
    struct statvfs sv;
    unsigned long flags = 0;
    if (fstatvfs(fd, &sv) < 0)
        return 0;
    if (sv.f_flag & ST_NOSUID)
        flags |= MS_NOSUID;
    if (sv.f_flag & ST_NODEV)
        flags |= MS_NODEV;
    if (sv.f_flag & ST_NOEXEC)
        flags |= MS_NOEXEC;
    if (sv.f_flag & ST_NOATIME)
        flags |= MS_NOATIME;
    if (sv.f_flag & ST_NODIRATIME)
        flags |= MS_NODIRATIME;
    if (sv.f_flag & ST_RELATIME)
        flags |= MS_RELATIME;
    return flags;
}

static int remount_fd(int fd, unsigned long flags)
{
    char at[32];
    fd_path(at, fd);
    return mount(NULL, at, NULL, MS_REMOUNT | MS_BIND | locked_flags(fd) | flags, NULL);
}

/* Set mount flags on the mount whose root fd is; only adds, never clears. */
int mb_seal_mount(int fd, unsigned long flags, int compat)
{
    unsigned int attrs = mount_attrs(flags);
    if (!attrs)
        return 0;
    if (!(compat & MB_COMPAT_NO_MOUNT_API)) {
        struct mount_attr attr;
        memset(&attr, 0, sizeof attr);
        attr.attr_set = attrs;
        if (syscall(SYS_mount_setattr, fd, "", AT_EMPTY_PATH, &attr, sizeof attr) == 0)
            return 0;
        if (errno != ENOSYS)
            return -1;
    }
    return remount_fd(fd, flags);
}

/* fsconfig(2) each "key=value" or "flag" of a mount(2)-style data string. */
static int configure_fs(int fs, const char *source, const char *data)
{
    char buf[MB_PATH_MAX];
    if (source && syscall(SYS_fsconfig, fs, FSCONFIG_SET_STRING, "source", source, 0) < 0)
        return -1;
    if (data) {
        size_t len = path_len(data);
        if (len >= sizeof buf) {
            errno = E2BIG;
            return -1;
        }
        memcpy(buf, data, len + 1);
        char *key = buf;
        while (*key) {
            char *end = key;
            while (*end && *end != ',')
                end++;
            char more = *end;
            *end = '\0';
            char *value = key;
            while (*value && *value != '=')
                value++;
            long rc;
            if (*value) {
                *value++ = '\0';
                rc = syscall(SYS_fsconfig, fs, FSCONFIG_SET_STRING, key, value, 0);
            } else if (*key) {
                rc = syscall(SYS_fsconfig, fs, FSCONFIG_SET_FLAG, key, NULL, 0);
            } else {
                rc = 0;
            }
            if (rc < 0)
                return -1;
            key = more ? end + 1 : end;
        }
    }
    return (int)syscall(SYS_fsconfig, fs, FSCONFIG_CMD_CREATE, NULL, NULL, 0);
}

/* A detached mount: a new file system (fsopen) or a clone of a tree
 * (open_tree), with its flags already set.  -1 with ENOSYS: no new API. */
static int detached_mount(const struct mb_op *op, int source_fd)
{
    unsigned int attrs = mount_attrs(op->flags);
    if (op->kind == MB_OP_BIND) {
        int rec = (op->flags & MS_REC) ? AT_RECURSIVE : 0;
        int tree = (int)syscall(SYS_open_tree, source_fd, "",
                                OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_EMPTY_PATH | rec);
        if (tree < 0 || !attrs)
            return tree;
        struct mount_attr attr;
        memset(&attr, 0, sizeof attr);
        attr.attr_set = attrs;
        if (syscall(SYS_mount_setattr, tree, "", AT_EMPTY_PATH | rec, &attr, sizeof attr) < 0) {
            close_keep_errno(tree);
            return -1;
        }
        return tree;
    }
    int fs = (int)syscall(SYS_fsopen, op->fstype, FSOPEN_CLOEXEC);
    if (fs < 0)
        return -1;
    int mnt = -1;
    if (configure_fs(fs, op->source, op->data) == 0)
        mnt = (int)syscall(SYS_fsmount, fs, FSMOUNT_CLOEXEC, attrs);
    close_keep_errno(fs);
    return mnt;
}

/* The fallback: mount(2) onto /proc/self/fd/N, then find the new mount's
 * root by resolving the target again and checking that it is a different
 * mount than before (for a bind: the source's inode), then remount it
 * read-only if asked.  Between the two a read-only bind is writable. */
static int legacy_mount(const struct mb_op *op, int base_fd, int source_fd, int target_fd, int compat)
{
    char to[32], from[32];
    struct stat below, above, src;
    fd_path(to, target_fd);
    if (fstat(target_fd, &below) < 0)
        return -1;
    if (op->kind == MB_OP_BIND) {
        fd_path(from, source_fd);
        if (mount(from, to, NULL, MS_BIND | (op->flags & MS_REC), NULL) < 0 || fstat(source_fd, &src) < 0)
            return -1;
    } else if (mount(op->source, to, op->fstype, op->flags, op->data) < 0) {
        return -1;
    }
    int fd = mb_resolve_in_root(base_fd, op->target, 0, compat);
    if (fd < 0)
        return -1;
    if (fstat(fd, &above) < 0 ||
        (op->kind == MB_OP_BIND ? (above.st_dev != src.st_dev || above.st_ino != src.st_ino)
                                : (above.st_dev == below.st_dev))) {
        close(fd);
        errno = EAGAIN;   /* the target moved between mount and check: a lost race */
        return -1;
    }
    if (op->kind == MB_OP_BIND && mount_attrs(op->flags) && remount_fd(fd, op->flags & ~MS_REC) < 0) {
        close_keep_errno(fd);
        return -1;
    }
    return fd;
}

/* Mount op onto the target it names below base_fd.  With op->keep_fd,
 * *mnt_fd receives the fd of the new mount's root (later ops below it use
 * it as their base); else -1.  0 or -1 with errno. */
static int mount_op(const struct mb_op *op, int base_fd, int compat, int *mnt_fd)
{
    int source_fd = -1, target_fd = -1, rc = -1;
    struct stat target, base;

    *mnt_fd = -1;
    if (op->kind == MB_OP_BIND) {
        if (op->source_in_root == MB_SOURCE_IN_ROOT)
            source_fd = mb_resolve_in_root(base_fd, op->source, 0, compat);
        else if (op->source_in_root == MB_SOURCE_NO_SYMLINKS)
            source_fd = open_host_no_symlinks(op->source, compat);
        else
            source_fd = open(op->source, O_PATH | O_CLOEXEC);  /* a host path, as OCI bundles name them */
        if (source_fd < 0)
            return -1;
    }
    target_fd = mb_resolve_in_root(base_fd, op->target, 0, compat);
    if (target_fd < 0)
        goto out;
    /* A target that names something below its base but resolves to the
     * base itself went through a symlink to ".." or "/": mounting there
     * would cover the whole root.  Refuse it. */
    if (fstat(target_fd, &target) < 0 || fstat(base_fd, &base) < 0)
        goto out;
    if (target.st_dev == base.st_dev && target.st_ino == base.st_ino) {
        errno = EBUSY;
        goto out;
    }
    /* A directory goes on a directory, a file on a file: ENOTDIR as
     * mount(2) says it (move_mount(2) would say EINVAL). */
    struct stat src;
    int src_is_dir = 1;
    if (source_fd >= 0) {
        if (fstat(source_fd, &src) < 0)
            goto out;
        src_is_dir = S_ISDIR(src.st_mode);
    }
    if (src_is_dir != S_ISDIR(target.st_mode)) {
        errno = ENOTDIR;
        goto out;
    }
    /* A mount nothing later resolves below, with no flags to set on a
     * detached copy first (a new file system takes its flags atomically, a
     * bind without flags has none): one mount(2) onto the target fd's
     * magic link, as runc and crun do, instead of the new API's four to
     * eight calls.  Same target, no window; it keeps the fast path fast. */
    if (!op->keep_fd && (op->kind == MB_OP_MOUNT || !mount_attrs(op->flags))) {
        char to[32], from[32];
        fd_path(to, target_fd);
        if (op->kind == MB_OP_BIND) {
            fd_path(from, source_fd);
            rc = mount(from, to, NULL, MS_BIND | (op->flags & MS_REC), NULL);
        } else {
            rc = mount(op->source, to, op->fstype, op->flags, op->data);
        }
        goto out;
    }
    int mnt = -1;
    if (!(compat & MB_COMPAT_NO_MOUNT_API)) {
        int detached = detached_mount(op, source_fd);
        if (detached >= 0) {
            if (syscall(SYS_move_mount, detached, "", target_fd, "",
                        MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH) < 0) {
                close_keep_errno(detached);
                goto out;
            }
            mnt = detached;   /* still the root of the now attached mount */
        } else if (errno != ENOSYS) {
            goto out;
        }
    }
    if (mnt < 0)
        mnt = legacy_mount(op, base_fd, source_fd, target_fd, compat);
    if (mnt < 0)
        goto out;
    rc = 0;
    if (op->keep_fd)
        *mnt_fd = mnt;
    else
        close(mnt);
out:
    close_keep_errno(source_fd);
    close_keep_errno(target_fd);
    return rc;
}

/* Run one op; *mnt_fd receives the fd of a mount it made (else -1). */
static int run_op(const struct mb_op *op, int base_fd, int compat, int *mnt_fd)
{
    char buf[MB_PATH_MAX];
    const char *name = NULL;
    int dir = -1, fd, rc = -1;

    *mnt_fd = -1;
    switch (op->kind) {
    case MB_OP_MOUNT:
    case MB_OP_BIND:
        return mount_op(op, base_fd, compat, mnt_fd);
    case MB_OP_WRITE:
        /* A per-pid-namespace sysctl (kernel.pid_max since Linux 6.14) is
         * the writer's own namespace's: only pid 1 of a new one may write
         * it, or the write would change the host's value. */
        if ((op->flags & MB_WRITE_PID1) && getpid() != 1) {
            errno = EPERM;
            return -1;
        }
        fd = mb_resolve_in_root(base_fd, op->target, 0, compat);
        if (fd < 0)
            return -1;
        fd_path(buf, fd);
        dir = fd;   /* reopen the resolved file itself for writing */
        fd = open(buf, O_WRONLY | O_CLOEXEC);
        close_keep_errno(dir);
        if (fd < 0)
            return -1;
        size_t len = path_len(op->data), done = 0;
        while (done < len) {
            ssize_t n = write(fd, op->data + done, len - done);
            if (n < 0 && errno == EINTR)
                continue;
            if (n <= 0) {
                if (n == 0)
                    errno = EIO;
                close_keep_errno(fd);
                return -1;
            }
            done += (size_t)n;
        }
        close(fd);
        return 0;
    case MB_OP_MKDIR:
    case MB_OP_TOUCH:
    case MB_OP_SYMLINK:
        dir = parent_in_root(base_fd, op->target, compat, buf, &name);
        if (dir < 0)
            return errno == EEXIST ? 0 : -1;
        if (op->kind == MB_OP_MKDIR) {
            rc = mkdirat(dir, name, op->mode);
        } else if (op->kind == MB_OP_SYMLINK) {
            rc = symlinkat(op->source, dir, name);
        } else {
            /* O_EXCL: never opens what is there (a fifo would block us,
             * a symlink is not followed); an existing entry is fine */
            fd = openat(dir, name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, op->mode);
            if (fd >= 0)
                close(fd);
            rc = fd < 0 ? -1 : 0;
        }
        if (rc < 0 && errno == EEXIST)
            rc = 0;
        close_keep_errno(dir);
        return rc;
    default:
        errno = EINVAL;
        return -1;
    }
}

int mb_run_ops(const struct mb_op *ops, int n, int root_fd, int compat, int *fds, int *failed)
{
    for (int i = 0; i < n; i++)
        fds[i] = -1;
    for (int i = 0; i < n; i++) {
        const struct mb_op *op = &ops[i];
        int base = root_fd;
        if (op->base >= 0) {
            if (op->base >= i || fds[op->base] < 0) {
                /* its base mount was optional and is absent: so is this */
                if (op->optional)
                    continue;
                errno = op->base >= i ? EINVAL : ENOENT;
                *failed = i;
                return -1;
            }
            base = fds[op->base];
        }
        if (run_op(op, base, compat, &fds[i]) < 0 && !op->optional) {
            *failed = i;
            return -1;
        }
    }
    return 0;
}

void mb_close_ops(int *fds, int n)
{
    for (int i = 0; i < n; i++) {
        if (fds[i] >= 0)
            close(fds[i]);
        fds[i] = -1;
    }
}
