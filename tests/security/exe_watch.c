/*
 * exe_watch: a hostile container init that watches for processes entering
 * its pid namespace (``minibox-oci exec``) and tries to get hold of the
 * host binary they run before they exec, as CVE-2019-5736's exploit did
 * with runc: open(/proc/PID/exe, O_PATH).  With such an fd, root inside
 * holding CAP_DAC_OVERRIDE reopens the host's interpreter for writing
 * (/proc/self/fd/N) once no process runs it.  This probe only opens and
 * stats; it never writes.
 *
 * Usage: exe_watch SECONDS OUTFILE
 * In a new pid namespace the next process gets the next pid, so the probe
 * spins on the few pids above the highest it has seen.  For every pid whose
 * exe it could open, it writes "PID DEV INO TARGET" to OUTFILE; a line per
 * pid, the first time it is opened.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define WINDOW 4
#define MAX_PID 65536

static unsigned char reported[MAX_PID];

static int highest_pid(void)
{
    int top = 1;
    DIR *d = opendir("/proc");
    if (!d)
        return top;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        int pid = atoi(e->d_name);
        if (pid > top)
            top = pid;
    }
    closedir(d);
    return top;
}

int main(int argc, char **argv)
{
    if (argc != 3)
        return 2;
    int seconds = atoi(argv[1]);
    FILE *out = fopen(argv[2], "w");
    if (!out)
        return 2;
    setvbuf(out, NULL, _IOLBF, 0);
    fprintf(out, "ready %d\n", (int)getpid());
    struct timespec start, now;
    clock_gettime(CLOCK_MONOTONIC, &start);
    int base = highest_pid();
    for (unsigned long round = 0;; round++) {
        for (int pid = base > WINDOW ? base - WINDOW : 1; pid <= base + WINDOW && pid < MAX_PID; pid++) {
            char path[64];
            snprintf(path, sizeof path, "/proc/%d/exe", pid);
            int fd = open(path, O_PATH | O_CLOEXEC);
            if (fd < 0)
                continue;
            struct stat st;
            char target[512];
            ssize_t n = readlink(path, target, sizeof target - 1);
            target[n > 0 ? n : 0] = '\0';
            if (fstat(fd, &st) == 0 && !reported[pid]) {
                reported[pid] = 1;
                fprintf(out, "%d %llu %llu %s\n", pid, (unsigned long long)st.st_dev,
                        (unsigned long long)st.st_ino, target);
            }
            close(fd);
        }
        if (round % 256 == 0) {
            int top = highest_pid();
            if (top > base)
                base = top;
            clock_gettime(CLOCK_MONOTONIC, &now);
            if (now.tv_sec - start.tv_sec >= seconds)
                break;
        }
    }
    fprintf(out, "done\n");
    return 0;
}
