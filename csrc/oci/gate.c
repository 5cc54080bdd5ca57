/*
 * minibox-oci-gate: the container's init between `create` and `start`.
 *
 * Kernel features: fifo(7) and execve(2).  The OCI runtime spec splits a
 * container's start in two: `create` builds everything and leaves the
 * user's process "created", blocked before it runs; `start` lets it run.
 * runc keeps its own init binary waiting on an exec fifo for this.  In
 * minibox the C child (csrc/spawn.c) runs every setup step -- namespaces,
 * mounts, pivot_root, ids, capabilities, seccomp -- and then execs this
 * tiny static program from a sealed memfd (as it does minibox-init).  It
 * stays the same process (the container's pid 1 in its pid namespace, the
 * pid in --pid-file) and becomes the user's command with one more execve.
 *
 * Usage:  minibox-oci-gate ERROR_FD GATE_FD UMASK -- CMD [ARG...]
 *
 * ERROR_FD is the create command's error pipe: closing it tells `create`
 * that every setup step succeeded, so `create` can return while we wait.
 * GATE_FD is the container's exec fifo, opened read-write by `create` (a
 * fifo held open for writing by its own reader never reports EOF): `start`
 * writes one byte to it.  UMASK is octal, or "-" to keep the inherited one.
 * CMD is searched in the PATH of our environment, which is the process's.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <unistd.h>

static void say(const char *a, const char *b, const char *c)
{
    /* stderr is the container's stderr: the engine's log shows it */
    (void)!write(2, a, strlen(a));
    (void)!write(2, b, strlen(b));
    (void)!write(2, c, strlen(c));
    (void)!write(2, "\n", 1);
}

int main(int argc, char **argv)
{
    if (argc < 6 || strcmp(argv[4], "--") != 0)
        return 125;
    /* Non-dumpable until the command's execve makes it dumpable again: a
     * process sharing our pid namespace (a pod) must not open
     * /proc/<us>/fd/GATE_FD, the exec fifo in the host's --root, and start
     * the container behind the engine's back.  (execveat of this memfd
     * made us dumpable; the C child had been non-dumpable.)  Best effort:
     * a seccomp profile may refuse prctl. */
    (void)prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
    int error_fd = atoi(argv[1]);
    int gate_fd = atoi(argv[2]);
    char **command = &argv[5];

    if (strcmp(argv[3], "-") != 0)
        umask((mode_t)strtoul(argv[3], NULL, 8));

    /* Setup is done: let `create` return. */
    close(error_fd);

    /* Blocked before exec until `start`. */
    char go;
    ssize_t n;
    do {
        n = read(gate_fd, &go, 1);
    } while (n < 0 && errno == EINTR);
    if (n != 1)
        return 125;
    close(gate_fd);

    execvp(command[0], command);
    int err = errno;
    say("minibox-oci: exec ", command[0], err == ENOENT ? ": executable file not found in $PATH"
                                                         : err == EACCES ? ": permission denied"
                                                                         : ": exec failed");
    return err == ENOENT ? 127 : 126;
}
