/*
 * The floor: only the kernel reads that one vmscope collection needs, and
 * nothing else (no parsing, no allocation, no exposition).
 *
 * Setup (not measured): find the VM processes (comm starting with "qemu-system"
 * or the pids given), open and keep open per VM `/proc/PID/stat`,
 * `/proc/PID/statm`, `/proc/PID/io` and `/proc/PID/task/TID/schedstat` of every thread named
 * "CPU N/..."; one `/proc/PID/net/dev` per network namespace; `/proc/stat`,
 * `/proc/meminfo`, `/proc/loadavg`.
 * Each iteration re-reads every held file with one pread(fd, buf, 0) (procfs
 * regenerates these files on each read at offset 0), optionally also lists
 * /proc (--listing: the getdents a discovery pass needs).
 *
 * Files beyond the descriptor limit are opened, read and closed on each
 * iteration instead (as vmscope does past its descriptor budget).
 *
 * Output: "ready" on stderr once set up (the driver waits for it), then one
 * JSON object on stdout with the process CPU time
 * (CLOCK_PROCESS_CPUTIME_ID, ns resolution) per iteration.
 *
 * --eof-read adds the second pread per file that a read-until-EOF loop makes
 * (the one that returns 0), to price that syscall.
 *
 * Usage: floor [--iterations K] [--interval-ms MS] [--listing] [--eof-read] [PID...]
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#define BUF_SIZE (4 << 20)
static char buf[BUF_SIZE];

static int *fds;
/* 1 for files with many records (net/dev): procfs returns at most one page
 * of records per read, so these are read at increasing offsets until a read
 * returns 0. Single-record files (stat, io, schedstat) come whole in one read. */
static char *multi;
static size_t nfds, capfds;
/* Files past the descriptor limit: opened, read and closed each iteration
 * (what vmscope does past its descriptor budget). */
static char **unheld;
static size_t nunheld;

static void add_fd_kind(const char *path, char is_multi);
static void add_fd(const char *path) { add_fd_kind(path, 0); }

/* Descriptors the floor may hold: the limit minus a reserve. Holding up to
 * the limit itself left none for the setup's own reads (each VM's `comm`,
 * its task directory) nor for opening the unheld files per iteration: at
 * 10 000 VMs and a limit of 20 000 the floor then saw only the first 3999
 * VMs and read none of the rest. */
#define FD_RESERVE 64
static size_t hold_cap = (size_t)-1;

static void add_fd_kind(const char *path, char is_multi) {
    int fd = nfds < hold_cap ? open(path, O_RDONLY | O_CLOEXEC) : -1;
    if (nfds >= hold_cap || (fd < 0 && (errno == EMFILE || errno == ENFILE))) {
        unheld = realloc(unheld, (nunheld + 1) * sizeof *unheld);
        if (!unheld || !(unheld[nunheld] = strdup(path))) { perror("realloc"); exit(1); }
        nunheld++;
        return;
    }
    if (fd < 0) return; /* a thread or file that vanished: skip */
    if (nfds == capfds) {
        capfds = capfds ? capfds * 2 : 1024;
        fds = realloc(fds, capfds * sizeof *fds);
        multi = realloc(multi, capfds);
        if (!fds || !multi) { perror("realloc"); exit(1); }
    }
    multi[nfds] = is_multi;
    fds[nfds++] = fd;
}

static int is_vm(int pid) {
    char path[64], comm[64] = {0};
    snprintf(path, sizeof path, "/proc/%d/comm", pid);
    int fd = open(path, O_RDONLY);
    if (fd < 0) return 0;
    ssize_t n = read(fd, comm, sizeof comm - 1);
    close(fd);
    return n > 0 && strncmp(comm, "qemu-system", 11) == 0;
}

static char (*namespaces)[64];
static size_t nns;

static void add_vm(int pid) {
    char path[512], link[64] = {0};
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    add_fd(path);
    snprintf(path, sizeof path, "/proc/%d/statm", pid);
    add_fd(path);
    snprintf(path, sizeof path, "/proc/%d/io", pid);
    add_fd(path);
    snprintf(path, sizeof path, "/proc/%d/task", pid);
    DIR *d = opendir(path);
    if (d) {
        struct dirent *e;
        while ((e = readdir(d))) {
            if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
            char comm[64] = {0};
            snprintf(path, sizeof path, "/proc/%d/task/%s/comm", pid, e->d_name);
            int fd = open(path, O_RDONLY);
            if (fd < 0) continue;
            ssize_t n = read(fd, comm, sizeof comm - 1);
            close(fd);
            if (n > 4 && strncmp(comm, "CPU ", 4) == 0) {
                snprintf(path, sizeof path, "/proc/%d/task/%s/schedstat", pid, e->d_name);
                add_fd(path);
            }
        }
        closedir(d);
    }
    snprintf(path, sizeof path, "/proc/%d/ns/net", pid);
    ssize_t n = readlink(path, link, sizeof link - 1);
    if (n <= 0) return;
    link[n] = 0;
    for (size_t i = 0; i < nns; i++)
        if (strcmp(namespaces[i], link) == 0) return;
    namespaces = realloc(namespaces, (nns + 1) * sizeof *namespaces);
    if (!namespaces) { perror("realloc"); exit(1); }
    strcpy(namespaces[nns++], link);
    snprintf(path, sizeof path, "/proc/%d/net/dev", pid);
    add_fd_kind(path, 1);
}

static double cpu_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static double wall_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    long iterations = 30, interval_ms = 1000;
    int listing = 0, eof_read = 0, vms = 0;
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY)
        hold_cap = rl.rlim_cur > FD_RESERVE ? (size_t)(rl.rlim_cur - FD_RESERVE) : 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--iterations") && i + 1 < argc) iterations = atol(argv[++i]);
        else if (!strcmp(argv[i], "--interval-ms") && i + 1 < argc) interval_ms = atol(argv[++i]);
        else if (!strcmp(argv[i], "--listing")) listing = 1;
        else if (!strcmp(argv[i], "--eof-read")) eof_read = 1;
        else { add_vm(atoi(argv[i])); vms++; }
    }
    if (vms == 0) {
        DIR *d = opendir("/proc");
        struct dirent *e;
        while (d && (e = readdir(d))) {
            int pid = atoi(e->d_name);
            if (pid > 0 && is_vm(pid)) { add_vm(pid); vms++; }
        }
        if (d) closedir(d);
    }
    add_fd("/proc/stat");
    add_fd("/proc/meminfo");
    add_fd("/proc/loadavg");
    /* The driver starts its measurement window once every floor is set up. */
    fprintf(stderr, "ready\n");
    fflush(stderr);

    double cpu0 = cpu_seconds(), busy_wall = 0;
    long bytes = 0, failed = 0;
    for (long it = 0; it < iterations; it++) {
        double w0 = wall_seconds();
        for (size_t i = 0; i < nfds; i++) {
            ssize_t n = pread(fds[i], buf, BUF_SIZE, 0);
            if (n < 0) failed++; else bytes += n;
            if (multi[i]) {
                off_t off = n;
                while (n > 0 && off < BUF_SIZE) {
                    n = pread(fds[i], buf + off, BUF_SIZE - off, off);
                    if (n > 0) { off += n; bytes += n; }
                }
                continue;
            }
            if (eof_read && n > 0) (void)pread(fds[i], buf, BUF_SIZE, n);
        }
        for (size_t i = 0; i < nunheld; i++) {
            int fd = open(unheld[i], O_RDONLY | O_CLOEXEC);
            ssize_t n = fd < 0 ? -1 : pread(fd, buf, BUF_SIZE, 0);
            if (fd >= 0) close(fd);
            if (n < 0) failed++; else bytes += n;
        }
        if (listing) {
            int fd = open("/proc", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
            if (fd >= 0) {
                DIR *d = fdopendir(fd);
                while (d && readdir(d)) {}
                if (d) closedir(d);
            }
        }
        busy_wall += wall_seconds() - w0;
        if (interval_ms > 0 && it + 1 < iterations) {
            struct timespec rest = {interval_ms / 1000, (interval_ms % 1000) * 1000000L};
            nanosleep(&rest, NULL);
        }
    }
    double cpu = cpu_seconds() - cpu0;
    printf("{\"vms\": %d, \"files\": %zu, \"files_not_held\": %zu, \"netns\": %zu, \"listing\": %s, \"eof_read\": %s, \"iterations\": %ld, "
           "\"cpu_seconds\": %.9f, \"cpu_per_iteration_seconds\": %.9f, "
           "\"wall_per_iteration_seconds\": %.9f, \"bytes_per_iteration\": %ld, \"failed_reads\": %ld}\n",
           vms, nfds, nunheld, nns, listing ? "true" : "false", eof_read ? "true" : "false", iterations, cpu, cpu / iterations,
           busy_wall / iterations, iterations ? bytes / iterations : 0, failed);
    return 0;
}
