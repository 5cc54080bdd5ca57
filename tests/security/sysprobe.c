/*
 * Calls system calls by number and prints the kernel's answer, one line
 * each: "name=ok" or "name=ERRNONAME".  Used by test_seccomp_verdict.py to
 * read the kernel's seccomp verdict from INSIDE a container; it never runs
 * on the host (the test only starts it through minibox).
 *
 * usage: sysprobe NAME:NR[:ARG]... ...   ARG is a number or "pid" (getpid())
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
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
