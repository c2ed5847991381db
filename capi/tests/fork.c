/* fork while other threads allocate, and fork from a signal handler. Every child
 * allocates small and huge blocks, checks them and exits with _exit(0); the parent
 * checks every child's status. A child that cannot allocate (an allocator lock held
 * by a thread that does not exist in the child) hangs and is killed by its own alarm;
 * the parent has a watchdog. Usage: fork [forks]. Exits 0 when every child was clean. */
#include "common.h"

#include <errno.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/time.h>
#include <sys/wait.h>

#define THREADS 3
#define SLOTS 128

static atomic_int stop;
static atomic_long thread_bad, thread_ops;

static void *worker(void *arg) {
    uint32_t seed = (uint32_t)(uintptr_t)arg * 104729u + 7;
    void *slot[SLOTS] = {0};
    long ops = 0, bad = 0;
    while (!atomic_load_explicit(&stop, memory_order_relaxed)) {
        uint32_t r = rng_next(&seed);
        int i = r % SLOTS;
        if (slot[i]) {
            if (!tagged_ok(slot[i])) bad++;
            FREE(slot[i]);
        }
        size_t size = (r >> 8) % 16 == 0 ? (r >> 12) % 200000 : (r >> 12) % 700;
        if ((r & 0x3ff) == 1) size = (size_t)2 << 20;
        void *p = tagged_new(size, r, 0);
        slot[i] = p == (void *)-1 ? NULL : p;
        ops++;
    }
    for (int i = 0; i < SLOTS; i++)
        if (slot[i]) {
            if (!tagged_ok(slot[i])) bad++;
            FREE(slot[i]);
        }
    atomic_fetch_add(&thread_bad, bad);
    atomic_fetch_add(&thread_ops, ops);
    return NULL;
}

/* What every child does: allocate small and huge, check, free, exit. Only
 * async-signal-safe calls besides the allocator's (it may run inside a handler). */
static void child_work(uint32_t seed) {
    alarm(10); /* a hung child dies of SIGALRM */
    void *small[200];
    int bad = 0;
    for (int i = 0; i < 200; i++) {
        small[i] = tagged_new(rng_next(&seed) % 3000, seed, i % 5 == 0);
        if (!small[i] || small[i] == (void *)-1) { bad = 1; small[i] = NULL; }
    }
    void *huge = tagged_new((size_t)2 << 20, seed, 0);
    if (!huge || !tagged_ok(huge)) bad = 1;
    else FREE(huge);
    for (int i = 0; i < 200; i++)
        if (small[i]) {
            if (!tagged_ok(small[i])) bad = 1;
            FREE(small[i]);
        }
    _exit(bad ? 1 : 0);
}

/* 0 if the child exited 0. */
static int reap(pid_t pid, const char *what) {
    int status;
    while (waitpid(pid, &status, 0) < 0)
        if (errno != EINTR) return 1;
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0) return 0;
    fprintf(stderr, "fork: %s child %d: %s %d\n", what, (int)pid,
            WIFSIGNALED(status) ? "killed by signal" : "exit status",
            WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status));
    return 1;
}

/* Forks from the SIGUSR1 handler; the parent's handler records the child. */
static volatile sig_atomic_t handler_pid;
static atomic_uint handler_seed = 1;
static void on_usr1(int sig) {
    (void)sig;
    int saved = errno;
    uint32_t seed = atomic_fetch_add(&handler_seed, 7919);
    /* allocate in the handler too, before forking */
    void *p = tagged_new(seed % 5000, seed, 0);
    pid_t pid = fork();
    if (pid == 0) child_work(seed);
    if (p && p != (void *)-1) FREE(p);
    handler_pid = pid;
    errno = saved;
}

int main(int argc, char **argv) {
    int forks = argc > 1 ? atoi(argv[1]) : 200;
    watchdog(120);
#ifdef PREFIXED
    sigalloc_enable_mmap();
#endif
    pthread_t t[THREADS];
    for (uintptr_t i = 0; i < THREADS; i++) pthread_create(&t[i], NULL, worker, (void *)(i + 1));

    /* 1. the main thread forks while the others allocate */
    int failed = 0;
    for (int i = 0; i < forks; i++) {
        void *mine = tagged_new((size_t)i * 37 % 4000, (uint32_t)i, 0);
        pid_t pid = fork();
        if (pid == 0) child_work((uint32_t)i + 1);
        if (pid < 0) { failed++; continue; }
        failed += reap(pid, "fork");
        if (mine && mine != (void *)-1) FREE(mine);
    }

    /* 2. fork from a signal handler, the signal landing on the main thread while the
     *    workers allocate and while the main thread itself is inside the allocator */
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr1;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGUSR1, &sa, NULL);
    int handler_forks = forks / 2;
    for (int i = 0; i < handler_forks; i++) {
        handler_pid = 0;
        pthread_kill(pthread_self(), SIGUSR1);
        /* keep allocating while a signal may be pending */
        for (int k = 0; k < 50 && !handler_pid; k++) {
            void *p = MALLOC(64 + (size_t)k * 100);
            FREE(p);
        }
        while (!handler_pid) {}
        if (handler_pid < 0) { failed++; continue; }
        failed += reap(handler_pid, "handler-fork");
    }
    atomic_store(&stop, 1);
    for (int i = 0; i < THREADS; i++) pthread_join(t[i], NULL);
    printf("fork (%s): %d forks while %d threads allocated (%ld operations), %d forks from a "
           "signal handler; %d children failed, %ld corrupted blocks\n",
           ALLOCATOR, forks, THREADS, (long)thread_ops, handler_forks, failed, (long)thread_bad);
    return failed == 0 && thread_bad == 0 ? 0 : 1;
}
