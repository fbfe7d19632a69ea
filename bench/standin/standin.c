/*
 * Stand-in hypervisor for the vmscope benchmark.
 *
 * Installed (copied) as `qemu-system-x86_64` in a temporary directory and
 * started with a real QEMU command line, so that every tool under test sees
 * what it would see on a VM host: comm "qemu-system-x86", a QEMU argv, and
 * two threads named "CPU 0/KVM" and "CPU 1/KVM" (what QEMU does with
 * `-name ...,debug-threads=on`), so per-vCPU reads happen as with real QEMU.
 *
 * The arguments are ignored: they must look exactly like QEMU's, so the
 * knobs come from the environment:
 *   VMSCOPE_STANDIN_VCPUS     vCPU threads to create (default 2)
 *   VMSCOPE_STANDIN_TOUCH_MB  MiB of memory to allocate and touch (default 0)
 *   VMSCOPE_STANDIN_BURN_MS   CPU ms each vCPU thread burns per second (default 0)
 *
 * Installed as `bench-sleeper` it is a plain idle process with no threads
 * (the "other processes on the host" of the independence test).
 *
 * It asks the kernel to SIGKILL it when the benchmark driver dies
 * (PR_SET_PDEATHSIG), so a crashed or killed driver leaves nothing behind.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>

static long burn_ms;

static long env_long(const char *name, long dflt) {
    const char *v = getenv(name);
    if (!v || !*v) return dflt;
    return strtol(v, NULL, 10);
}

static double thread_cpu_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static void *vcpu(void *arg) {
    char name[16];
    snprintf(name, sizeof name, "CPU %ld/KVM", (long)arg);
    prctl(PR_SET_NAME, name, 0, 0, 0);
    if (burn_ms <= 0) {
        for (;;) pause();
    }
    if (burn_ms > 1000) burn_ms = 1000;
    for (;;) {
        double start = thread_cpu_ms();
        volatile unsigned long x = 0;
        while (thread_cpu_ms() - start < (double)burn_ms) x++;
        if (burn_ms < 1000) {
            struct timespec rest = {0, (1000 - burn_ms) * 1000000L};
            nanosleep(&rest, NULL);
        }
    }
    return NULL;
}

int main(int argc, char **argv) {
    (void)argc;
    prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
    if (getppid() == 1) return 0; /* the driver already died */

    const char *base = strrchr(argv[0], '/');
    base = base ? base + 1 : argv[0];
    if (strcmp(base, "bench-sleeper") == 0) {
        for (;;) pause();
    }

    long vcpus = env_long("VMSCOPE_STANDIN_VCPUS", 2);
    long touch_mb = env_long("VMSCOPE_STANDIN_TOUCH_MB", 0);
    burn_ms = env_long("VMSCOPE_STANDIN_BURN_MS", 0);

    if (touch_mb > 0) {
        size_t len = (size_t)touch_mb << 20;
        char *mem = malloc(len);
        if (mem) {
            long page = sysconf(_SC_PAGESIZE);
            for (size_t off = 0; off < len; off += (size_t)page) mem[off] = 1;
        }
    }

    pthread_attr_t attr;
    pthread_attr_init(&attr);
    /* Idle threads need almost no stack; keep 5000 stand-ins cheap. */
    pthread_attr_setstacksize(&attr, burn_ms > 0 ? 256 * 1024 : 64 * 1024);
    for (long i = 0; i < vcpus; i++) {
        pthread_t t;
        if (pthread_create(&t, &attr, vcpu, (void *)i) != 0) {
            fprintf(stderr, "stand-in: cannot create vCPU thread %ld\n", i);
            return 1;
        }
    }
    for (;;) pause();
}
