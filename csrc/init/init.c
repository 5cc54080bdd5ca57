/*
 * minibox-init: a minimal pid 1 for containers (Spec.init=True, `--init`).
 *
 * Kernel feature: the init process of a pid namespace (pid_namespaces(7)).
 * The kernel treats a namespace's pid 1 specially: signals it has no handler
 * for are dropped, even SIGTERM and SIGINT, and orphaned processes are
 * re-parented to it, so it must reap them or they stay zombies.  Most
 * programs were not written to be pid 1.  This one is, in the spirit of
 * tini and docker-init: it starts the command as its child, forwards every
 * catchable signal to it, reaps every zombie, and exits with the command's
 * status (128+N when a signal N ended it), which ends the container.
 *
 * Usage (built by minibox, executed from a file descriptor, never copied
 * into the rootfs):  minibox-init ERROR_FD -- CMD [ARG...]
 *
 * ERROR_FD is minibox's close-on-exec error pipe (see csrc/spawn.c): if the
 * command cannot be executed, the child reports {step, errno, index} there,
 * so the caller gets the same CommandNotFoundError as without an init.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define STEP_EXECVE 21   /* MB_STEP_EXECVE in csrc/spawn.h */

struct report {
    int32_t step;
    int32_t err;
    int32_t index;
};

static void report_exec_failure(int error_fd, int err)
{
    struct report r = { STEP_EXECVE, err, -1 };
    ssize_t n;
    do {
        n = write(error_fd, &r, sizeof r);
    } while (n < 0 && errno == EINTR);
}

int main(int argc, char **argv)
{
    if (argc < 4 || strcmp(argv[2], "--") != 0)
        return 125;
    int error_fd = atoi(argv[1]);
    char **command = &argv[3];

    /* Block every signal: we take them synchronously with sigwaitinfo. */
    sigset_t all, none;
    sigfillset(&all);
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &all, NULL);

    pid_t child = fork();
    if (child < 0)
        return 125;
    if (child == 0) {
        sigprocmask(SIG_SETMASK, &none, NULL);
        /* Its own process group, so that a signal we forward can reach the
         * whole pipeline a shell starts -- unless it owns a terminal, where
         * the session's foreground group must stay ours to share. */
        if (!isatty(0))
            setpgid(0, 0);
        fcntl(error_fd, F_SETFD, FD_CLOEXEC);
        execvp(command[0], command);
        report_exec_failure(error_fd, errno);
        _exit(errno == ENOENT ? 127 : 126);
    }
    close(error_fd);   /* now EOF on the pipe means: the command exec'd */

    for (;;) {
        siginfo_t info;
        int sig = sigwaitinfo(&all, &info);
        if (sig < 0)
            continue;
        if (sig != SIGCHLD) {
            /* forward; to the group first (children of a shell), then the child */
            if (kill(-child, sig) < 0)
                kill(child, sig);
            continue;
        }
        for (;;) {
            int status;
            pid_t pid = waitpid(-1, &status, WNOHANG);
            if (pid <= 0)
                break;
            if (pid == child) {
                /* Our exit ends the pid namespace: the kernel kills the rest. */
                if (WIFSIGNALED(status))
                    return 128 + WTERMSIG(status);
                return WEXITSTATUS(status);
            }
        }
    }
}
