/*
 * minibox-keeper: nothing a minibox owner started may outlive it.
 *
 * Kernel features: pidfd_open(2), pidfd_send_signal(2) and poll(2) on
 * pidfds; SCM_RIGHTS over a unix(7) socketpair to receive pidfds; EOF on a
 * socket whose other end only the owner holds (the kernel closes it when
 * the owner process is gone, however it dies).
 *
 * Why a separate process: QEMU does not exit when its QMP peer goes away,
 * and a container's init reparented to the host's init keeps running.
 * PR_SET_PDEATHSIG would do, but it fires when the *thread* that started
 * the child exits, and a library cannot know how long its caller's threads
 * live; it is also cleared when the child changes its credentials (QEMU's
 * -runas, a container's setuid).
 *
 * Usage:
 *   minibox-keeper watch SOCK_FD
 *       Fork into the background (the owner reaps the first process at
 *       once) and watch: every message on SOCK_FD carries pidfds to hold
 *       (SCM_RIGHTS).  A held pidfd that becomes readable (its process
 *       exited) is dropped.  EOF on SOCK_FD -- the owner is gone, or done --
 *       SIGKILLs every process still held, and the keeper exits.
 *   minibox-keeper hold GO_FD PROGRAM [ARG...]
 *       Wait for one byte "G" on GO_FD, then execvp PROGRAM in place (same
 *       pid).  EOF instead -- the owner died before it recorded this pid --
 *       exits without ever running PROGRAM.  This is how a VM's QEMU and
 *       virtiofsd start: they run only once the owner's record and keeper
 *       know them.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#ifndef SYS_close_range
#define SYS_close_range 436
#endif
#include <unistd.h>

#define MAX_FDS_PER_MESSAGE 16

static int pidfd_kill(int pidfd)
{
    return (int)syscall(SYS_pidfd_send_signal, pidfd, SIGKILL, NULL, 0);
}

/* ---- watch ----------------------------------------------------------- */

static struct pollfd *fds;
static size_t n_fds, cap_fds;

static int add_fd(int fd)
{
    if (n_fds == cap_fds) {
        size_t cap = cap_fds ? cap_fds * 2 : 64;
        struct pollfd *grown = realloc(fds, cap * sizeof *fds);
        if (grown == NULL)
            return -1;
        fds = grown;
        cap_fds = cap;
    }
    fds[n_fds].fd = fd;
    fds[n_fds].events = POLLIN;
    fds[n_fds].revents = 0;
    n_fds++;
    return 0;
}

/* Receive one message; its pidfds join the watch.  0 on EOF (the owner is gone). */
static ssize_t receive(int sock)
{
    char data[16];
    char control[CMSG_SPACE(sizeof(int) * MAX_FDS_PER_MESSAGE)];
    struct iovec iov = { data, sizeof data };
    struct msghdr msg = { 0 };
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof control;
    ssize_t n;
    do {
        n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
    } while (n < 0 && errno == EINTR);
    if (n <= 0)
        return n;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c != NULL; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
            continue;
        size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        int received[MAX_FDS_PER_MESSAGE];
        memcpy(received, CMSG_DATA(c), count * sizeof(int));
        for (size_t i = 0; i < count; i++) {
            if (add_fd(received[i]) < 0) {
                /* Out of memory: we cannot watch it, so it may not outlive us either. */
                pidfd_kill(received[i]);
                close(received[i]);
            }
        }
    }
    return n;
}

static int watch(int sock)
{
    /* Into the background: the owner reaps this first process right away,
     * and the keeper is nobody's child for long. */
    pid_t pid = fork();
    if (pid < 0)
        return 1;
    if (pid > 0)
        _exit(0);
    setsid();   /* a Ctrl-C meant for the owner does not stop the watch */
    /* Hold nothing of the owner's but our socket (0-2 are /dev/null). */
    if (sock > 3)
        syscall(SYS_close_range, 3, sock - 1, 0);
    syscall(SYS_close_range, sock + 1, ~0U, 0);
    struct rlimit lim;
    if (getrlimit(RLIMIT_NOFILE, &lim) == 0) {   /* one pidfd per sandbox process */
        lim.rlim_cur = lim.rlim_max;
        setrlimit(RLIMIT_NOFILE, &lim);
    }
    if (add_fd(sock) < 0)
        return 1;
    /* Hello: our pid, so the owner knows we are up (and who we are). */
    int me = (int)getpid();
    if (send(sock, &me, sizeof me, MSG_NOSIGNAL) != (ssize_t)sizeof me)
        return 1;
    for (;;) {
        if (poll(fds, (nfds_t)n_fds, -1) < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        if (fds[0].revents & POLLIN) {
            if (receive(sock) <= 0)
                break;   /* EOF: the owner is gone */
        } else if (fds[0].revents & (POLLHUP | POLLERR)) {
            break;
        }
        /* Drop the pidfds of processes that have exited. */
        size_t kept = 1;
        for (size_t i = 1; i < n_fds; i++) {
            if (fds[i].revents & (POLLIN | POLLHUP | POLLERR | POLLNVAL)) {
                close(fds[i].fd);
                continue;
            }
            fds[kept++] = fds[i];
        }
        n_fds = kept;
    }
    /* The owner is gone: nothing it started may outlive it. */
    for (size_t i = 1; i < n_fds; i++)
        pidfd_kill(fds[i].fd);
    return 0;
}

/* ---- hold ------------------------------------------------------------ */

static int hold(int go_fd, char **argv)
{
    char go = 0;
    ssize_t n;
    do {
        n = read(go_fd, &go, 1);
    } while (n < 0 && errno == EINTR);
    if (n != 1 || go != 'G')
        return 0;   /* the owner died first: never run what it could not record */
    close(go_fd);
    execvp(argv[0], argv);
    return 127;
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "watch") == 0)
        return watch(atoi(argv[2]));
    if (argc >= 4 && strcmp(argv[1], "hold") == 0)
        return hold(atoi(argv[2]), argv + 3);
    return 2;
}
