/*
 * minibox-oci: the runc command line's light verbs in C, every other one in Python.
 *
 * Kernel features: flock(2), fifo(7), rmdir(2) on cgroupfs, /proc/PID/stat
 * (proc(5)).  Spec: runc(8)'s command line as engines call it; the OCI
 * runtime spec's state (runtime-spec runtime.md#state).
 *
 * Why C.  An engine starts its runtime once per verb: podman runs
 * `create`, `start`, `state` and `delete` for every `podman run`,
 * containerd's shim the same.  A Python interpreter costs ~8 ms before the
 * first line of minibox runs (docs/benchmarks.md), crun's whole `start` or
 * `delete` about 3 ms: three light verbs in Python cost more than crun's
 * entire lifecycle.  So this program is `minibox-oci`: it does `state`,
 * `start` and `delete` of a container itself, in the common case, and
 * hands everything else to the Python implementation
 * (src/minibox/oci/cli.py) by execve(2) with the same argv.
 *
 * "Everything else" is deliberately broad: any verb but those three, any
 * flag not in the short table below, a container in a VM, one with
 * poststart or poststop hooks, a `start` of a container that is not
 * "created", a `delete` of one that is not "stopped", a --root whose
 * owner or mode is not right, a record this program does not recognise.
 * Python then does the verb, or says why not: every error message and
 * every rare case has one implementation, and this one only ever does
 * what Python would have done, faster.  Nothing is changed before the
 * decision to hand over, except cgroup directories `delete` removed
 * (Python's own `delete` starts the same way, and an rmdir is idempotent).
 *
 * It reads one file of a container's record: `light-state`, which
 * `create` writes last, once the container is fully made
 * (src/minibox/oci/state.py, write_light_state).  The record lives in
 * --root, which must be ours and closed to others (as Python's check_root
 * demands); the file is still parsed as if it could be wrong: bounded in
 * size, one known key per line, cgroup paths absolute under
 * /sys/fs/cgroup with no "..", anything else a hand-over.
 *
 * The Python script this program hands over to lives in
 * <dir of this program>/../libexec/minibox/<minibox-oci or minibox-oci-vm>
 * (python -m minibox._entry scripts puts both there).
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define DEFAULT_ROOT "/run/minibox-oci"
#define OCI_VERSION "1.1.0"
#define LIGHT_MAGIC "minibox-oci light-state 1"
#define LIGHT_MAX (256 * 1024)   /* annotations make it long; a larger one goes to Python */
#define MAX_CGROUP_DIRS 16
#define CGROUP_ROOT "/sys/fs/cgroup/"

static char **saved_argv;

/* -- handing over to Python ------------------------------------------------ */

/* execve the Python implementation with our own argv; never returns. */
static void hand_over(void)
{
    char self[PATH_MAX], script[PATH_MAX + 64];
    ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
    if (n > 0) {
        self[n] = '\0';
        char *slash = strrchr(self, '/');
        if (slash != NULL) {
            *slash = '\0';
            const char *name = saved_argv[0] ? strrchr(saved_argv[0], '/') : NULL;
            name = name ? name + 1 : (saved_argv[0] ? saved_argv[0] : "");
            size_t len = strlen(name);
            /* the executable's name picks the isolation, as in Python (cli.py) */
            const char *script_name = len >= 3 && strcmp(name + len - 3, "-vm") == 0
                                          ? "minibox-oci-vm" : "minibox-oci";
            snprintf(script, sizeof(script), "%s/../libexec/minibox/%s", self, script_name);
            execv(script, saved_argv);
            /* e.g. a copy of this program, away from the venv it was built for */
            fprintf(stderr, "minibox-oci: cannot run %s: %s (this program hands most verbs to it: "
                            "run minibox-oci from its venv's bin/, or a symlink to it, not a copy; "
                            "or reinstall with make setup)\n", script, strerror(errno));
            _exit(127);
        }
    }
    fprintf(stderr, "minibox-oci: cannot find its own executable: %s\n", strerror(errno));
    _exit(127);
}

/* -- the log an engine reads (--log FILE --log-format text|json) ---------- */

static const char *log_path;
static int log_json;

/* One error, as cli.py's Log writes it.  `message` is fixed text and a
 * container id (letters, digits, "_.+-"): nothing in it needs escaping. */
static void error_line(const char *message)
{
    fprintf(stderr, "minibox-oci: %s\n", message);
    if (log_path == NULL)
        return;
    char stamp[32];
    time_t now = time(NULL);
    struct tm tm;
    strftime(stamp, sizeof(stamp), "%Y-%m-%dT%H:%M:%SZ", gmtime_r(&now, &tm));
    int fd = open(log_path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0)
        return;   /* the log is advisory; stderr has it already */
    if (log_json)
        dprintf(fd, "{\"level\": \"error\", \"msg\": \"%s\", \"time\": \"%s\"}\n", message, stamp);
    else
        dprintf(fd, "time=\"%s\" level=error msg=\"%s\"\n", stamp, message);
    close(fd);
}

/* -- the command line ------------------------------------------------------ */

/* Python's state.valid_id: a letter or digit, then letters, digits, "_.+-"; at most 128. */
static int valid_id(const char *id)
{
    size_t len = strlen(id);
    if (len == 0 || len > 128)
        return 0;
    for (size_t i = 0; i < len; i++) {
        char c = id[i];
        int alnum = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
        if (!alnum && (i == 0 || (c != '_' && c != '.' && c != '+' && c != '-')))
            return 0;
    }
    return 1;
}

enum verb { STATE, START, DELETE };

struct command {
    const char *root;
    enum verb verb;
    int force;
    const char *id;
};

/* The global flags this program knows, as `--name value`, `--name=value`
 * or Go's `-name value`; anything else is Python's to parse. */
static void parse(int argc, char **argv, struct command *cmd)
{
    const char *log_format = "text";
    int i = 1;
    cmd->root = DEFAULT_ROOT;
    for (; i < argc && argv[i][0] == '-'; i++) {
        const char *name = argv[i] + (argv[i][1] == '-' ? 2 : 1);
        const char *eq = strchr(name, '=');
        size_t len = eq ? (size_t)(eq - name) : strlen(name);
        const char **slot = NULL;
        if (len == 4 && strncmp(name, "root", 4) == 0)
            slot = &cmd->root;
        else if (len == 3 && strncmp(name, "log", 3) == 0)
            slot = &log_path;
        else if (len == 10 && strncmp(name, "log-format", 10) == 0)
            slot = &log_format;
        else if (strcmp(name, "debug") == 0)
            continue;   /* the light verbs log nothing at debug level */
        else
            hand_over();
        if (eq)
            *slot = eq + 1;
        else if (++i < argc)
            *slot = argv[i];
        else
            hand_over();
    }
    if (strcmp(log_format, "json") == 0)
        log_json = 1;
    else if (strcmp(log_format, "text") != 0)
        hand_over();
    if (cmd->root[0] != '/' || i >= argc)
        hand_over();
    const char *verb = argv[i++];
    if (strcmp(verb, "state") == 0)
        cmd->verb = STATE;
    else if (strcmp(verb, "start") == 0)
        cmd->verb = START;
    else if (strcmp(verb, "delete") == 0)
        cmd->verb = DELETE;
    else
        hand_over();
    cmd->force = 0;
    for (; i < argc && argv[i][0] == '-'; i++) {
        if (cmd->verb == DELETE && (strcmp(argv[i], "--force") == 0 || strcmp(argv[i], "-force") == 0 ||
                                    strcmp(argv[i], "-f") == 0))
            cmd->force = 1;
        else
            hand_over();
    }
    if (argc - i != 1 || !valid_id(argv[i]))
        hand_over();
    cmd->id = argv[i];
}

/* Python's state.check_root: --root (and a symlink to it) owned by us or
 * root, and not writable by group or others; a missing one is Python's. */
static void check_root(const char *root)
{
    struct stat link, dir;
    uid_t me = geteuid();
    if (lstat(root, &link) < 0)
        hand_over();
    if (S_ISLNK(link.st_mode)) {
        if (stat(root, &dir) < 0)
            hand_over();
    } else {
        dir = link;
    }
    if ((link.st_uid != me && link.st_uid != 0) || (dir.st_uid != me && dir.st_uid != 0) ||
        !S_ISDIR(dir.st_mode) || (dir.st_mode & 022))
        hand_over();
}

/* -- the record ------------------------------------------------------------ */

struct light_state {
    long pid;
    unsigned long long starttime;
    int freeze_v2;                 /* freeze_file is cgroup.freeze (v2), else freezer.state (v1) */
    char *freeze_file;             /* NULL: no freezer, never "paused" */
    char *cgroup_dirs[MAX_CGROUP_DIRS];
    int n_cgroup_dirs;
    char *parents[2 * MAX_CGROUP_DIRS];
    int n_parents;
    char *state_tail;              /* the state JSON after "pid", as Python renders it */
    char text[LIGHT_MAX + 1];
};

static int cgroup_path_ok(const char *path)
{
    return strncmp(path, CGROUP_ROOT, strlen(CGROUP_ROOT)) == 0 && strstr(path, "/..") == NULL &&
           strstr(path, "//") == NULL;
}

static int parse_number(const char *text, unsigned long long *out)
{
    if (*text < '0' || *text > '9')
        return 0;
    errno = 0;
    char *end;
    *out = strtoull(text, &end, 10);
    return errno == 0 && *end == '\0';
}

/* Read <dir>/light-state (dir_fd: the container's directory); 0 if absent or not understood. */
static int load_light_state(int dir_fd, struct light_state *ls)
{
    int fd = openat(dir_fd, "light-state", O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return 0;
    struct stat st;
    ssize_t total = 0, n = 0;
    if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_size <= LIGHT_MAX) {
        while (total < LIGHT_MAX && (n = read(fd, ls->text + total, LIGHT_MAX - total)) > 0)
            total += n;
    }
    close(fd);
    if (n < 0 || total == 0 || total >= LIGHT_MAX)
        return 0;
    ls->text[total] = '\0';

    /* "key value" lines, then an empty line, then the JSON tail */
    char *body = strstr(ls->text, "\n\n");
    if (body == NULL)
        return 0;
    *body = '\0';
    ls->state_tail = body + 2;
    int have_pid = 0, have_start = 0;
    char *save = NULL;
    char *line = strtok_r(ls->text, "\n", &save);
    if (line == NULL || strcmp(line, LIGHT_MAGIC) != 0)
        return 0;
    while ((line = strtok_r(NULL, "\n", &save)) != NULL) {
        char *value = strchr(line, ' ');
        if (value == NULL)
            return 0;
        *value++ = '\0';
        unsigned long long number;
        if (strcmp(line, "pid") == 0 && parse_number(value, &number) && number > 0 && number < INT_MAX) {
            ls->pid = (long)number;
            have_pid = 1;
        } else if (strcmp(line, "starttime") == 0 && parse_number(value, &number)) {
            ls->starttime = number;
            have_start = 1;
        } else if ((strcmp(line, "freezer-state") == 0 || strcmp(line, "cgroup-freeze") == 0) &&
                   cgroup_path_ok(value)) {
            ls->freeze_v2 = line[0] == 'c';
            ls->freeze_file = value;
        } else if (strcmp(line, "cgroup") == 0 && cgroup_path_ok(value) && ls->n_cgroup_dirs < MAX_CGROUP_DIRS) {
            ls->cgroup_dirs[ls->n_cgroup_dirs++] = value;
        } else if (strcmp(line, "parent") == 0 && cgroup_path_ok(value) && ls->n_parents < 2 * MAX_CGROUP_DIRS) {
            ls->parents[ls->n_parents++] = value;
        } else {
            return 0;   /* a key this program does not know, or a value it will not use */
        }
    }
    return have_pid && have_start;
}

/* -- what is observed (Python's Record.alive, frozen, status) --------------- */

/* The init still runs: the recorded pid exists, with the recorded start
 * time (a recycled pid is another process), and is not a zombie. */
static int alive(const struct light_state *ls)
{
    char path[64], data[1024];
    snprintf(path, sizeof(path), "/proc/%ld/stat", ls->pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    ssize_t n = read(fd, data, sizeof(data) - 1);
    close(fd);
    if (n <= 0)
        return 0;
    data[n] = '\0';
    char *p = strrchr(data, ')');   /* comm may hold spaces and parentheses: fields start after the last ')' */
    if (p == NULL || p[1] != ' ')
        return 0;
    p += 2;
    char state = *p;
    /* field 3 is the state; field 22 the start time: 19 fields further */
    for (int field = 3; field < 22 && p != NULL; field++) {
        p = strchr(p, ' ');
        if (p != NULL)
            p++;
    }
    unsigned long long start;
    if (p == NULL)
        return 0;
    char *end = strchr(p, ' ');
    if (end != NULL)
        *end = '\0';
    return parse_number(p, &start) && start == ls->starttime && state != 'Z' && state != 'X';
}

static int frozen(const struct light_state *ls)
{
    if (ls->freeze_file == NULL)
        return 0;
    char data[32];
    int fd = open(ls->freeze_file, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    ssize_t n = read(fd, data, sizeof(data) - 1);
    close(fd);
    if (n <= 0)
        return 0;
    data[n] = '\0';
    data[strcspn(data, " \n")] = '\0';
    return ls->freeze_v2 ? strcmp(data, "1") == 0 : strcmp(data, "THAWED") != 0;
}

static const char *status(int dir_fd, const struct light_state *ls)
{
    if (!alive(ls))
        return "stopped";
    if (frozen(ls))
        return "paused";
    struct stat st;
    return fstatat(dir_fd, "started", &st, AT_SYMLINK_NOFOLLOW) == 0 ? "running" : "created";
}

/* -- the verbs -------------------------------------------------------------- */

static int write_all(int fd, const char *data, size_t len)
{
    while (len > 0) {
        ssize_t n = write(fd, data, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        data += n;
        len -= (size_t)n;
    }
    return 0;
}

/* `state ID`: the state object, as Python prints it (json.dumps(..., indent=2)). */
static int do_state(const struct command *cmd, int dir_fd, const struct light_state *ls)
{
    const char *now = status(dir_fd, ls);
    long pid = strcmp(now, "stopped") == 0 ? 0 : ls->pid;
    char head[512];
    int len = snprintf(head, sizeof(head),
                       "{\n  \"ociVersion\": \"" OCI_VERSION "\",\n  \"id\": \"%s\",\n"
                       "  \"status\": \"%s\",\n  \"pid\": %ld,\n", cmd->id, now, pid);
    if (write_all(1, head, (size_t)len) < 0 || write_all(1, ls->state_tail, strlen(ls->state_tail)) < 0 ||
        write_all(1, "\n", 1) < 0)
        return 1;
    return 0;
}

/* `start ID`: one byte into the exec fifo the gate (csrc/oci/gate.c) waits
 * on; returns once the gate has read it, as Python's runtime.start. */
static int do_start(const struct command *cmd, int dir_fd, const struct light_state *ls)
{
    if (strcmp(status(dir_fd, ls), "created") != 0)
        hand_over();   /* Python says why not */
    int fifo = openat(dir_fd, "exec.fifo", O_WRONLY | O_NONBLOCK | O_CLOEXEC);
    if (fifo < 0)
        hand_over();   /* ENXIO: no reader, the init has gone */

    /* The point of no return: from here on, this program finishes the verb. */
    int marker = openat(dir_fd, "started", O_WRONLY | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
    char message[256];
    signal(SIGPIPE, SIG_IGN);   /* a gate gone since the open: EPIPE, not death */
    if (marker < 0 || write_all(fifo, "0", 1) < 0) {
        snprintf(message, sizeof(message), "cannot start container %s: %s", cmd->id,
                 marker < 0 ? "its record cannot be written" : "its init has gone");
        error_line(message);
        return 1;
    }
    close(marker);
    /* The gate execs the command right after reading: wait for the read,
     * looking often at first (it is usually scheduled within tens of µs). */
    struct timespec step = {0, 50 * 1000};
    struct timespec begin, now;
    clock_gettime(CLOCK_MONOTONIC, &begin);
    for (;;) {
        int unread = 0;
        if (ioctl(fifo, FIONREAD, &unread) < 0 || unread == 0 || !alive(ls))
            break;
        clock_gettime(CLOCK_MONOTONIC, &now);
        if (now.tv_sec - begin.tv_sec >= 10)
            break;
        nanosleep(&step, NULL);
        if (step.tv_nsec < 5 * 1000 * 1000)
            step.tv_nsec *= 2;
    }
    close(fifo);
    return 0;
}

static int longer_first(const void *a, const void *b)
{
    size_t la = strlen(*(char *const *)a), lb = strlen(*(char *const *)b);
    return la < lb ? 1 : la > lb ? -1 : 0;
}

/* unlink everything below dir_fd (a container's record holds files only;
 * a directory is followed at most a few levels, never through a symlink). */
static void remove_contents(int dir_fd, int depth)
{
    DIR *dir = fdopendir(fcntl(dir_fd, F_DUPFD_CLOEXEC, 0));
    if (dir == NULL)
        return;
    struct dirent *entry;
    while ((entry = readdir(dir)) != NULL) {
        if (strcmp(entry->d_name, ".") == 0 || strcmp(entry->d_name, "..") == 0)
            continue;
        if (unlinkat(dir_fd, entry->d_name, 0) == 0 || errno != EISDIR || depth >= 4)
            continue;
        int sub = openat(dir_fd, entry->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (sub >= 0) {
            remove_contents(sub, depth + 1);
            close(sub);
        }
        unlinkat(dir_fd, entry->d_name, AT_REMOVEDIR);
    }
    closedir(dir);
}

/* `delete [--force] ID` of a stopped container: its cgroup, then its record.
 * A stopped init can leave nothing running in an empty cgroup, and the
 * kernel refuses to rmdir a cgroup that holds a process (EBUSY): a
 * successful rmdir is the check.  A busy one goes to Python, which ends
 * what is left (exec'd processes of an init that has gone) first. */
static int do_delete(const struct command *cmd, int dir_fd, struct light_state *ls, const char *dir_path)
{
    (void)cmd;   /* --force changes nothing for a stopped container */
    if (strcmp(status(dir_fd, ls), "stopped") != 0)
        hand_over();   /* running or paused: Python refuses, or with --force kills first */
    qsort(ls->cgroup_dirs, (size_t)ls->n_cgroup_dirs, sizeof(char *), longer_first);
    for (int i = 0; i < ls->n_cgroup_dirs; i++) {
        if (rmdir(ls->cgroup_dirs[i]) < 0 && errno != ENOENT)
            hand_over();
    }
    /* the parents create made, and minibox's own, once empty (rmdir refuses one in use) */
    for (int i = 0; i < ls->n_parents; i++)
        (void)rmdir(ls->parents[i]);
    remove_contents(dir_fd, 0);
    (void)rmdir(dir_path);
    return 0;
}

int main(int argc, char **argv)
{
    saved_argv = argv;
    struct command cmd;
    parse(argc, argv, &cmd);
    check_root(cmd.root);

    char dir_path[PATH_MAX];
    if ((size_t)snprintf(dir_path, sizeof(dir_path), "%s/%s", cmd.root, cmd.id) >= sizeof(dir_path))
        hand_over();
    int dir_fd = open(dir_path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (dir_fd < 0)
        hand_over();   /* "does not exist", or delete --force of what never was: Python's */

    /* start and delete change the container: under its lock, as Python's
     * verbs are, so two engines' calls never interleave.  The lock is an
     * open file description: an execve to Python drops it (O_CLOEXEC). */
    if (cmd.verb != STATE) {
        int lock = openat(dir_fd, "lock", O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
        if (lock < 0)
            hand_over();
        while (flock(lock, LOCK_EX) < 0) {
            if (errno != EINTR)
                hand_over();
        }
    }
    static struct light_state ls;
    if (!load_light_state(dir_fd, &ls))
        hand_over();   /* a VM, hooks, a create still running or killed half way, an older record */
    switch (cmd.verb) {
    case STATE:
        return do_state(&cmd, dir_fd, &ls);
    case START:
        return do_start(&cmd, dir_fd, &ls);
    case DELETE:
        return do_delete(&cmd, dir_fd, &ls, dir_path);
    }
    return 1;
}
