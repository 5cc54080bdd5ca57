/*
 * The mount engine's entry points for spawn.c (see rootfs.c).  Not parsed
 * by cffi; mb_open_in_root, which Python calls, is declared in spawn.h.
 */
#ifndef MINIBOX_ROOTFS_H
#define MINIBOX_ROOTFS_H

/* Resolve path inside root_fd (RESOLVE_IN_ROOT semantics); an O_PATH fd,
 * or -1 with errno. */
int mb_resolve_in_root(int root_fd, const char *path, int nofollow, int compat);

/* Run ops[0..n) below root_fd; fds[i] gets the root fd of the mount op i
 * made (or -1).  On failure: -1, errno, and *failed = the op's index. */
int mb_run_ops(const struct mb_op *ops, int n, int root_fd, int compat, int *fds, int *failed);

/* Close what mb_run_ops left open. */
void mb_close_ops(int *fds, int n);

/* Add MS_RDONLY/MS_NOSUID/MS_NODEV/MS_NOEXEC to the mount rooted at fd. */
int mb_seal_mount(int fd, unsigned long flags, int compat);

#endif
