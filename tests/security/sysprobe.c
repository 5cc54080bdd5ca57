/*
 * Calls system calls by number and prints the kernel's answer, one line
 * each: "name=ok" or "name=ERRNONAME".  Used by test_seccomp_verdict.py to
 * read the kernel's seccomp verdict from INSIDE a container; it never runs
 * on the host (the test only starts it through minibox).
 *
 * usage: sysprobe [--filter FILE] NAME:NR[:ARG]... ...   ARG is a number or "pid"
 *   --filter FILE  first install the classic-BPF seccomp program in FILE
 *                  (struct sock_filter[], as minibox compiles it)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/prctl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

static int install_filter(const char *path)
{
    static struct sock_filter program[4096];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t n = read(fd, program, sizeof(program));
    close(fd);
    if (n <= 0 || n % sizeof(struct sock_filter) != 0)
        return -1;
    struct sock_fprog prog = {.len = (unsigned short)(n / sizeof(struct sock_filter)), .filter = program};
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
        return -1;
    return (int)syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog);
}

int main(int argc, char **argv)
{
    int first = 1;
    if (argc > 2 && strcmp(argv[1], "--filter") == 0) {
        if (install_filter(argv[2]) != 0) {
            perror("sysprobe: installing the filter");
            return 3;
        }
        first = 3;
    }
    for (int i = first; i < argc; i++) {
        char *spec = strdup(argv[i]);
        char *name = strtok(spec, ":");
        char *nr_text = strtok(NULL, ":");
        long args[6] = {0, 0, 0, 0, 0, 0};
        char *arg;
        for (int k = 0; k < 6 && (arg = strtok(NULL, ":")) != NULL; k++)
            args[k] = strcmp(arg, "pid") == 0 ? (long)getpid() : strtol(arg, NULL, 0);
        if (name == NULL || nr_text == NULL) {
            fprintf(stderr, "bad spec %s\n", argv[i]);
            return 2;
        }
        errno = 0;
        long rc = syscall(strtol(nr_text, NULL, 0), args[0], args[1], args[2], args[3], args[4], args[5]);
        if (rc == -1)
            printf("%s=%s\n", name, strerrorname_np(errno) ? strerrorname_np(errno) : "E?");
        else
            printf("%s=ok\n", name);
        fflush(stdout);
    }
    printf("done=1\n");
    return 0;
}
