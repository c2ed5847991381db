/* Allocation inside a SIGALRM handler that fires every 50 us, while 4 threads
 * allocate, fill, verify and free (malloc, calloc, realloc; small, span and huge
 * sizes). Any allocator that is not async-signal-safe deadlocks or corrupts here;
 * sigalloc must finish with no corruption. A watchdog ends a hang with status 3.
 * Usage: signal_storm [seconds [watchdog-seconds]]. Prints "signal_storm: ..." and exits 0 when clean. */
#include "common.h"

#include <errno.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/time.h>

#define THREADS 4
#define SLOTS 256
#define HANDLER_SLOTS 64

static atomic_int stop;
static atomic_long handler_runs, handler_allocs, handler_bad, thread_ops, thread_bad, stats_bytes;

#ifndef PREFIXED
/* Under LD_PRELOAD the sigalloc_ calls come from the preloaded library, if it is one. */
void sigalloc_stats_print(void (*)(void *, const char *), void *, const char *);
#pragma weak sigalloc_stats_print
#define HAVE_STATS_PRINT (sigalloc_stats_print != NULL)
#else
#define HAVE_STATS_PRINT 1
#endif
static void count_stats(void *opaque, const char *s) {
    atomic_fetch_add_explicit((atomic_long *)opaque, (long)strlen(s), memory_order_relaxed);
}
/* The timer's signal goes to any thread, so handlers run on several threads at once:
 * each thread's handler keeps its own blocks (the handler does not interrupt itself). */
static __thread void *handler_slot[HANDLER_SLOTS];
static __thread uint32_t handler_seed;

/* Blocks SIGALRM on this thread, then checks and frees its handler's blocks. */
static void handler_cleanup(void) {
    sigset_t block;
    sigemptyset(&block);
    sigaddset(&block, SIGALRM);
    pthread_sigmask(SIG_BLOCK, &block, NULL);
    for (int i = 0; i < HANDLER_SLOTS; i++)
        if (handler_slot[i]) {
            if (!tagged_ok(handler_slot[i])) atomic_fetch_add(&handler_bad, 1);
            FREE(handler_slot[i]);
            handler_slot[i] = NULL;
        }
}

static void on_alarm(int sig) {
    (void)sig;
    int saved = errno;
    if (!handler_seed) handler_seed = (uint32_t)(uintptr_t)&saved | 1;
    long run = atomic_fetch_add_explicit(&handler_runs, 1, memory_order_relaxed);
    /* the stats printer is async-signal-safe too (it walks the heap: now and then) */
    if (run % 2000 == 0 && HAVE_STATS_PRINT) sigalloc_stats_print(count_stats, &stats_bytes, "J");
    for (int k = 0; k < 3; k++) {
        uint32_t r = rng_next(&handler_seed);
        int i = r % HANDLER_SLOTS;
        if (handler_slot[i]) {
            if (!tagged_ok(handler_slot[i])) atomic_fetch_add(&handler_bad, 1);
            FREE(handler_slot[i]);
            handler_slot[i] = NULL;
        }
        size_t size = (r >> 8) % 8 == 0 ? (r >> 12) % 200000 : (r >> 12) % 600;
        if ((r & 0xfff) == 7) size = (size_t)2 << 20; /* now and then a huge block */
        void *p = tagged_new(size, r, (r >> 4) % 4 == 0);
        if (p == (void *)-1) {
            atomic_fetch_add(&handler_bad, 1);
            continue;
        }
        if (p) atomic_fetch_add_explicit(&handler_allocs, 1, memory_order_relaxed);
        handler_slot[i] = p;
    }
    errno = saved;
}

static void *worker(void *arg) {
    uint32_t seed = (uint32_t)(uintptr_t)arg * 7919u + 1;
    void *slot[SLOTS] = {0};
    long ops = 0, bad = 0;
    while (!atomic_load_explicit(&stop, memory_order_relaxed)) {
        uint32_t r = rng_next(&seed);
        int i = r % SLOTS;
        if (slot[i]) {
            if (!tagged_ok(slot[i])) bad++;
            if ((r >> 9) % 4 == 0) {
                /* grow or shrink: the prefix must survive */
                struct tagged *t = slot[i];
                uint32_t tseed = t->seed;
                size_t keep = t->size, size = (r >> 12) % 100000 + sizeof *t;
                unsigned char *q = REALLOC(slot[i], size);
                if (q) {
                    size_t n = keep < size ? keep : size;
                    for (size_t j = sizeof(struct tagged); j < n; j += 7)
                        if (q[j] != (unsigned char)(tseed + j)) { bad++; break; }
                    FREE(q);
                } else {
                    FREE(slot[i]);
                }
            } else {
                FREE(slot[i]);
            }
            slot[i] = NULL;
        }
        size_t size = (r >> 8) % 16 == 0 ? (r >> 12) % 300000 : (r >> 12) % 1024;
        if ((r & 0xffff) == 3) size = (size_t)3 << 20;
        void *p = tagged_new(size, r, (r >> 5) % 8 == 0);
        if (p == (void *)-1) { bad++; p = NULL; }
        slot[i] = p;
        ops++;
    }
    for (int i = 0; i < SLOTS; i++)
        if (slot[i]) {
            if (!tagged_ok(slot[i])) bad++;
            FREE(slot[i]);
        }
    handler_cleanup();
    atomic_fetch_add(&thread_ops, ops);
    atomic_fetch_add(&thread_bad, bad);
    return NULL;
}

int main(int argc, char **argv) {
    int seconds = argc > 1 ? atoi(argv[1]) : 3;
    watchdog(argc > 2 ? (unsigned)atoi(argv[2]) : (unsigned)seconds + 20);
#ifdef PREFIXED
    sigalloc_enable_mmap();
#endif
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_alarm;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGALRM, &sa, NULL);
    struct itimerval it = {{0, 50}, {0, 50}};
    setitimer(ITIMER_REAL, &it, NULL);

    pthread_t t[THREADS];
    for (uintptr_t i = 0; i < THREADS; i++) pthread_create(&t[i], NULL, worker, (void *)(i + 1));
    struct timespec ts = {seconds, 0};
    while (nanosleep(&ts, &ts) != 0) {}
    atomic_store(&stop, 1);
    for (int i = 0; i < THREADS; i++) pthread_join(t[i], NULL);
    struct itimerval off = {{0, 0}, {0, 0}};
    setitimer(ITIMER_REAL, &off, NULL);
    handler_cleanup();
    long bad = handler_bad + thread_bad;
    printf("signal_storm (%s): %ld signals, %ld handler allocations, %ld thread operations, "
           "%ld stats bytes printed in handlers, %ld corrupted\n",
           ALLOCATOR, (long)handler_runs, (long)handler_allocs, (long)thread_ops, (long)stats_bytes, bad);
    return bad == 0 && handler_runs > 1000 && handler_allocs > 1000 ? 0 : 1;
}
