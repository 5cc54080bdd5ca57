/*
 * A hostile program for INSIDE a minibox microVM (tests/security/test_vm_guest_hostile.py).
 * NEVER RUN IT ON THE HOST: it creates device nodes and set-id files and
 * writes raw bytes to the guest agent's control port.  It refuses to run
 * unless it is in a minibox guest (pid 1 is the agent, whose
 * /proc/1/cmdline is "/init").
 *
 *   hostile_guest shares DIR...
 *       on each writable share DIR tries what would plant privilege on the
 *       host: mknod of a char and a block device with the host disk's
 *       numbers, chmod 4755 and 2755, creating a file with mode 04755, and
 *       a file capability (the security.capability xattr: cap_setuid+ep,
 *       VFS_CAP_REVISION_2).  One line per attempt: "name=ok" or
 *       "name=ERRNO_NAME".
 *
 *   hostile_guest frames huge|malformed|empty SECONDS|forged
 *       grabs the agent's control port (pidfd_getfd(2) on pid 1's fd: root
 *       in the guest may) and writes crafted frames
 *       (u32 length | u8 type | u32 id | payload, little endian):
 *         huge       a frame announcing 4 GiB - 1 bytes, then 1 MiB of them
 *         malformed  an exit frame whose status is not a number
 *         empty      nine-byte empty frames as fast as it can, for SECONDS
 *         forged     an exit frame for the main command saying "x 0"
 *
 *   hostile_guest flood SECONDS
 *       writes to stdout as fast as it can for SECONDS.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

static const char *err_name(int e)
{
    switch (e) {
    case EPERM: return "EPERM";
    case EACCES: return "EACCES";
    case EROFS: return "EROFS";
    case EOPNOTSUPP: return "EOPNOTSUPP";
    case ENOSYS: return "ENOSYS";
    case EINVAL: return "EINVAL";
    case EEXIST: return "EEXIST";
    default: {
        static char buf[32];
        snprintf(buf, sizeof buf, "errno%d", e);
        return buf;
    }
    }
}

static void report(const char *dir, const char *what, int rc)
{
    printf("%s:%s=%s\n", dir, what, rc == 0 ? "ok" : err_name(errno));
}

static void path(char *buf, size_t size, const char *dir, const char *name)
{
    snprintf(buf, size, "%s/%s", dir, name);
}

static void shares(const char *dir)
{
    char p[4096];
    path(p, sizeof p, dir, "chr");
    report(dir, "mknod_chr", mknod(p, S_IFCHR | 0666, makedev(8, 0)));
    path(p, sizeof p, dir, "blk");
    report(dir, "mknod_blk", mknod(p, S_IFBLK | 0666, makedev(8, 0)));

    path(p, sizeof p, dir, "suid");
    int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC, 0755);
    if (fd >= 0) {
        if (write(fd, "#!/bin/sh\nid\n", 13) < 0) { /* the mode is what counts */ }
        close(fd);
    }
    report(dir, "create_plain", fd < 0 ? -1 : 0);
    report(dir, "chmod_4755", chmod(p, 04755));
    path(p, sizeof p, dir, "sgid");
    fd = open(p, O_WRONLY | O_CREAT | O_TRUNC, 0755);
    if (fd >= 0)
        close(fd);
    report(dir, "chmod_2755", chmod(p, 02755));
    path(p, sizeof p, dir, "born-suid");
    fd = open(p, O_WRONLY | O_CREAT | O_EXCL, 04755);
    report(dir, "create_04755", fd < 0 ? -1 : 0);
    if (fd >= 0)
        close(fd);

    /* struct vfs_cap_data, revision 2: magic_etc, then {permitted, inheritable} x 2 */
    uint32_t cap[5] = { 0x02000000 | 0x000001 /* VFS_CAP_REVISION_2 | EFFECTIVE */,
                        1u << 7 /* CAP_SETUID */, 0, 0, 0 };
    path(p, sizeof p, dir, "suid");
    report(dir, "setcap", setxattr(p, "security.capability", cap, sizeof cap, 0));
    fflush(stdout);
}

/* ---- the control port ------------------------------------------------- */

static int control_port(void)
{
    char want[256] = "";
    DIR *d = opendir("/sys/class/virtio-ports");
    struct dirent *e;
    while (d && (e = readdir(d))) {
        char p[512], name[64] = "";
        snprintf(p, sizeof p, "/sys/class/virtio-ports/%s/name", e->d_name);
        FILE *f = fopen(p, "r");
        if (f && fgets(name, sizeof name, f) && strncmp(name, "minibox.control", 15) == 0)
            snprintf(want, sizeof want, "/dev/%s", e->d_name);
        if (f)
            fclose(f);
    }
    if (d)
        closedir(d);
    int pidfd = (int)syscall(SYS_pidfd_open, 1, 0);
    if (!want[0] || pidfd < 0)
        return -1;
    d = opendir("/proc/1/fd");
    while (d && (e = readdir(d))) {
        char p[512], target[256];
        snprintf(p, sizeof p, "/proc/1/fd/%s", e->d_name);
        ssize_t n = readlink(p, target, sizeof target - 1);
        if (n <= 0)
            continue;
        target[n] = 0;
        if (strcmp(target, want) == 0) {
            int fd = (int)syscall(SYS_pidfd_getfd, pidfd, atoi(e->d_name), 0);
            closedir(d);
            return fd;
        }
    }
    if (d)
        closedir(d);
    errno = ENOENT;
    return -1;
}

static void put32(unsigned char *p, uint32_t v)
{
    p[0] = v & 0xff; p[1] = (v >> 8) & 0xff; p[2] = (v >> 16) & 0xff; p[3] = v >> 24;
}

static int write_all(int fd, const void *buf, size_t len)
{
    const char *p = buf;
    while (len) {
        ssize_t n = write(fd, p, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

static int frame(int fd, uint32_t len, char type, uint32_t id, const void *payload, size_t sent)
{
    unsigned char head[9];
    put32(head, len);
    head[4] = (unsigned char)type;
    put32(head + 5, id);
    if (write_all(fd, head, sizeof head) < 0)
        return -1;
    return sent ? write_all(fd, payload, sent) : 0;
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static int frames(const char *how, double seconds)
{
    int fd = control_port();
    if (fd < 0) {
        printf("control_port=%s\n", err_name(errno));
        return 1;
    }
    printf("control_port=ok\n");
    fflush(stdout);
    static char zeros[1 << 20];
    if (strcmp(how, "huge") == 0)
        frame(fd, 0xffffffffu, 'O', 1, zeros, sizeof zeros);
    else if (strcmp(how, "malformed") == 0)
        frame(fd, 8, 'X', 0, "x banana", 8);
    else if (strcmp(how, "forged") == 0)
        frame(fd, 3, 'X', 0, "x 0", 3);
    else if (strcmp(how, "empty") == 0) {
        static unsigned char block[9 * 4096];
        for (size_t i = 0; i < sizeof block; i += 9) {
            put32(block + i, 0);
            block[i + 4] = 'O';
            put32(block + i + 5, 77);
        }
        double end = now() + seconds;
        unsigned long long sent = 0;
        while (now() < end && write_all(fd, block, sizeof block) == 0)
            sent += sizeof block / 9;
        fprintf(stderr, "empty_frames=%llu\n", sent);
    }
    return 0;
}

static int flood(double seconds)
{
    static char block[1 << 16];
    memset(block, 'A', sizeof block);
    double end = now() + seconds;
    unsigned long long sent = 0;
    while (now() < end && write_all(1, block, sizeof block) == 0)
        sent += sizeof block;
    fprintf(stderr, "flood_bytes=%llu\n", sent);
    return 0;
}

int main(int argc, char **argv)
{
    char init[16] = "";
    int fd = open("/proc/1/cmdline", O_RDONLY);
    if (fd < 0 || read(fd, init, sizeof init - 1) < 0 || strcmp(init, "/init") != 0) {
        fprintf(stderr, "hostile_guest: not inside a minibox guest; refusing\n");
        return 2;
    }
    close(fd);
    if (argc >= 3 && strcmp(argv[1], "shares") == 0) {
        for (int i = 2; i < argc; i++)
            shares(argv[i]);
        return 0;
    }
    if (argc >= 3 && strcmp(argv[1], "frames") == 0)
        return frames(argv[2], argc > 3 ? atof(argv[3]) : 0);
    if (argc == 3 && strcmp(argv[1], "flood") == 0)
        return flood(atof(argv[2]));
    fprintf(stderr, "usage: see the header of hostile_guest.c\n");
    return 2;
}
