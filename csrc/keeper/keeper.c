/*
 * minibox-keeper: end a VM's processes when the Python process that owns
 * them dies without cleaning up (SIGKILL, OOM kill, a crash).
 *
 * Kernel features: pidfd_open(2) and poll(2) on pidfds; a pipe whose write
 * end only the owner holds (pipe(7): when every write end is closed, the
 * read end reports POLLHUP).
 *
 * Why a separate process: QEMU does not exit when its QMP peer goes away,
 * and a guest paused at power-off (-action shutdown=pause) would hold its
 * RAM forever.  PR_SET_PDEATHSIG would do, but it fires when the *thread*
 * that started QEMU exits, and a library cannot know how long its caller's
 * threads live.  The owner's pipe closes exactly when the owner process is
 * gone.
 *
 * Usage: minibox-keeper OWNER_FD PID [PID...]
 *   OWNER_FD  the read end of the owner's pipe
 *   PID       processes to SIGKILL if the owner goes first
 * It exits when the owner closes the pipe (after killing what still runs)
 * or when every PID has exited.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>

#define MAX_PIDS 16

int main(int argc, char **argv)
{
    if (argc < 3 || argc - 2 > MAX_PIDS)
        return 2;
    struct pollfd fds[MAX_PIDS + 1];
    int n = 0;
    fds[n].fd = atoi(argv[1]);
    fds[n].events = POLLIN;
    n++;
    /* Open the pidfds now, while each pid is certainly still its process:
     * they are our owner's unreaped children. */
    for (int i = 2; i < argc; i++) {
        int pidfd = (int)syscall(SYS_pidfd_open, atoi(argv[i]), 0);
        if (pidfd < 0)
            continue;   /* already gone */
        fds[n].fd = pidfd;
        fds[n].events = POLLIN;
        n++;
    }
    int alive = n - 1;
    while (alive > 0) {
        if (poll(fds, (nfds_t)n, -1) < 0) {
            if (errno == EINTR)
                continue;
            return 1;
        }
        if (fds[0].revents & (POLLHUP | POLLERR | POLLIN)) {
            /* The owner is gone (or is done with them): nothing may outlive it. */
            for (int i = 1; i < n; i++)
                if (fds[i].fd >= 0)
                    syscall(SYS_pidfd_send_signal, fds[i].fd, SIGKILL, NULL, 0);
            return 0;
        }
        for (int i = 1; i < n; i++) {
            if (fds[i].fd >= 0 && (fds[i].revents & POLLIN)) {
                close(fds[i].fd);
                fds[i].fd = -1;   /* poll ignores negative fds */
                alive--;
            }
        }
    }
    return 0;
}
