/*
 * minibox-fsguard: start virtiofsd so that a guest cannot plant device
 * nodes or set-id files in the host directory it shares.
 *
 * virtiofsd runs as root on the host and does what the guest's FUSE
 * requests ask, so a guest's root can ask it to mknod a block device with
 * the host disk's numbers, or chmod 4755 a root-owned file, in the shared
 * directory, where other host users then find them.  Dropping virtiofsd's
 * CAP_MKNOD and CAP_FSETID (its "-o modcaps=") is not enough on its own:
 * the owner of a file (and root, by CAP_FOWNER) may always set S_ISUID
 * with chmod(2).  So this wrapper, before it execs virtiofsd,
 *
 *   1. enters a private mount namespace (unshare(2) CLONE_NEWNS, then
 *      MS_PRIVATE on / so nothing propagates back: mount_namespaces(7));
 *   2. bind-mounts the shared directory onto itself and remounts the bind
 *      nosuid,nodev (and read-only with -r): mount(2) MS_BIND|MS_REMOUNT.
 *      virtiofsd serves its source from this mount, so set-id bits and
 *      device nodes mean nothing through it, and a read-only share is
 *      read-only at the host whatever the guest remounts;
 *   3. installs a seccomp filter (seccomp(2), classic BPF: filter.txt in
 *      the kernel's Documentation/userspace-api/seccomp_filter.rst) that
 *      makes chmod, fchmod, fchmodat, fchmodat2, open, openat, creat,
 *      mknod and mknodat fail with EPERM when the mode carries S_ISUID or
 *      S_ISGID, and mknod/mknodat when it makes a character or block
 *      device; openat2 (whose mode sits in a struct the filter cannot
 *      read) fails with ENOSYS, so callers fall back to openat.  Other
 *      ABIs than x86_64 (i386 int 0x80, x32) are refused outright.
 *      virtiofsd stacks its own filter on top; the stricter answer wins;
 *   4. sets no_new_privs and execs virtiofsd (execv(2)); the pid stays
 *      the one minibox started.
 *
 * Usage: minibox-fsguard [-r] DIR -- PROGRAM [ARG...]
 * Exit status 125 with one line on stderr when a step fails.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sched.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <unistd.h>

/* x86_64 system call numbers (arch/x86/entry/syscalls/syscall_64.tbl);
 * spelled out because an older libc may not know the newest ones. */
#define NR_open 2
#define NR_creat 85
#define NR_chmod 90
#define NR_fchmod 91
#define NR_mknod 133
#define NR_openat 257
#define NR_mknodat 259
#define NR_fchmodat 268
#define NR_openat2 437
#define NR_fchmodat2 452
#define X32_SYSCALL_BIT 0x40000000u

#define SETID (S_ISUID | S_ISGID)
#define MAX_INSNS 128

static struct sock_filter prog[MAX_INSNS];
static unsigned short n;

static void emit(unsigned short code, unsigned char jt, unsigned char jf, unsigned int k)
{
    prog[n++] = (struct sock_filter){ code, jt, jf, k };
}

#define LD_NR() emit(BPF_LD | BPF_W | BPF_ABS, 0, 0, offsetof(struct seccomp_data, nr))
/* the low 32 bits of argument i (little endian): a mode_t fits there */
#define LD_ARG(i) emit(BPF_LD | BPF_W | BPF_ABS, 0, 0, offsetof(struct seccomp_data, args[i]))
#define RET(v) emit(BPF_RET | BPF_K, 0, 0, (v))
#define ALLOW SECCOMP_RET_ALLOW
#define EPERM_ (SECCOMP_RET_ERRNO | EPERM)

/* if nr == NR: EPERM when (arg & SETID), or (devices) when arg makes a
 * char/block device; else allow.  Falls through when nr != NR. */
static void mode_rule(unsigned int nr, int arg, int devices)
{
    LD_NR();
    unsigned short skip_at = n;
    emit(BPF_JMP | BPF_JEQ | BPF_K, 0, 0, nr);          /* jf patched below */
    if (devices) {
        LD_ARG(arg);
        emit(BPF_ALU | BPF_AND | BPF_K, 0, 0, S_IFMT);
        emit(BPF_JMP | BPF_JEQ | BPF_K, 5, 0, S_IFCHR);   /* -> deny */
        emit(BPF_JMP | BPF_JEQ | BPF_K, 4, 0, S_IFBLK);   /* -> deny */
    }
    LD_ARG(arg);
    emit(BPF_ALU | BPF_AND | BPF_K, 0, 0, SETID);
    emit(BPF_JMP | BPF_JEQ | BPF_K, 0, 1, 0);
    RET(ALLOW);
    RET(EPERM_);                                          /* deny */
    prog[skip_at].jf = (unsigned char)(n - skip_at - 1);
}

static int install_filter(void)
{
    emit(BPF_LD | BPF_W | BPF_ABS, 0, 0, offsetof(struct seccomp_data, arch));
    emit(BPF_JMP | BPF_JEQ | BPF_K, 1, 0, AUDIT_ARCH_X86_64);
    RET(SECCOMP_RET_KILL_PROCESS);
    LD_NR();
    emit(BPF_JMP | BPF_JGE | BPF_K, 0, 1, X32_SYSCALL_BIT);
    RET(SECCOMP_RET_KILL_PROCESS);
    emit(BPF_JMP | BPF_JEQ | BPF_K, 0, 1, NR_openat2);
    RET(SECCOMP_RET_ERRNO | ENOSYS);
    mode_rule(NR_chmod, 1, 0);
    mode_rule(NR_fchmod, 1, 0);
    mode_rule(NR_fchmodat, 2, 0);
    mode_rule(NR_fchmodat2, 2, 0);
    mode_rule(NR_open, 2, 0);
    mode_rule(NR_openat, 3, 0);
    mode_rule(NR_creat, 1, 0);
    mode_rule(NR_mknod, 1, 1);
    mode_rule(NR_mknodat, 2, 1);
    RET(ALLOW);
    struct sock_fprog fprog = { .len = n, .filter = prog };
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
        return -1;
    return prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &fprog);
}

static int die(const char *step, const char *what)
{
    fprintf(stderr, "minibox-fsguard: %s %s: %s\n", step, what, strerror(errno));
    return 125;
}

int main(int argc, char **argv)
{
    int readonly = 0, i = 1;
    if (i < argc && strcmp(argv[i], "-r") == 0) {
        readonly = 1;
        i++;
    }
    if (argc - i < 3 || strcmp(argv[i + 1], "--") != 0) {
        fprintf(stderr, "usage: minibox-fsguard [-r] DIR -- PROGRAM [ARG...]\n");
        return 2;
    }
    const char *dir = argv[i];
    char **command = &argv[i + 2];

    if (unshare(CLONE_NEWNS) < 0)
        return die("unshare", "CLONE_NEWNS");
    if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0)
        return die("mount", "/ private");
    if (mount(dir, dir, NULL, MS_BIND, NULL) < 0)
        return die("bind", dir);
    unsigned long flags = MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NODEV | (readonly ? MS_RDONLY : 0);
    if (mount(NULL, dir, NULL, flags, NULL) < 0)
        return die("remount", dir);
    if (install_filter() < 0)
        return die("seccomp", "filter");
    execv(command[0], command);
    return die("execv", command[0]);
}
