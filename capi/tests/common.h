/* Shared by the C tests: which allocator the program calls (the process's malloc,
 * replaced by LD_PRELOAD, or libsigalloc's prefixed calls with -DPREFIXED), a
 * random-number generator, fill/verify, and a watchdog. */
#ifndef SIGALLOC_TEST_COMMON_H
#define SIGALLOC_TEST_COMMON_H
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#ifdef PREFIXED
#include "sigalloc.h"
#define MALLOC sigalloc_malloc
#define CALLOC sigalloc_calloc
#define REALLOC sigalloc_realloc
#define FREE sigalloc_free
#define ALLOCATOR "libsigalloc (prefixed calls)"
#else
#define MALLOC malloc
#define CALLOC calloc
#define REALLOC realloc
#define FREE free
#define ALLOCATOR "the process's malloc"
#endif

static inline uint32_t rng_next(uint32_t *s) {
    uint32_t x = *s;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    return *s = x ? x : 0x9e3779b9u;
}

/* A block starts with its size and seed, then a pattern derived from the seed. */
struct tagged {
    size_t size;
    uint32_t seed;
};

static inline void *tagged_new(size_t size, uint32_t seed, int zeroed) {
    if (size < sizeof(struct tagged)) size = sizeof(struct tagged);
    unsigned char *p = zeroed ? CALLOC(1, size) : MALLOC(size);
    if (!p) return NULL;
    if (zeroed) {
        for (size_t i = 0; i < size; i += 61)
            if (p[i]) return (void *)-1; /* calloc handed out dirty memory */
    }
    struct tagged *t = (struct tagged *)p;
    t->size = size;
    t->seed = seed;
    for (size_t i = sizeof *t; i < size; i++) p[i] = (unsigned char)(seed + i);
    return p;
}

/* 1 if the block kept its pattern. Huge blocks are sampled. */
static inline int tagged_ok(const void *b) {
    const struct tagged *t = b;
    const unsigned char *p = b;
    size_t step = t->size > 65536 ? 4093 : 1;
    for (size_t i = sizeof *t; i < t->size; i += step)
        if (p[i] != (unsigned char)(t->seed + i)) return 0;
    return p[t->size - 1] == (unsigned char)(t->seed + t->size - 1) || t->size == sizeof *t;
}

static unsigned watchdog_seconds;
static void *watchdog_main(void *arg) {
    (void)arg;
    /* sleep() returns early when a signal arrives: sleep until the deadline. */
    struct timespec now, end;
    clock_gettime(CLOCK_MONOTONIC, &end);
    end.tv_sec += watchdog_seconds;
    do {
        sleep(1);
        clock_gettime(CLOCK_MONOTONIC, &now);
    } while (now.tv_sec < end.tv_sec);
    static const char msg[] = "watchdog: the test hung (deadlock or livelock), aborting\n";
    if (write(2, msg, sizeof msg - 1) < 0) {}
    _exit(3);
}
/* Exits the process with status 3 after `seconds` unless it finished. */
static inline void watchdog(unsigned seconds) {
    pthread_t t;
    sigset_t all, old;
    watchdog_seconds = seconds;
    /* The watchdog starts with every signal blocked: no handler can run (and hang) on it. */
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    pthread_create(&t, NULL, watchdog_main, NULL);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    pthread_detach(t);
}
#endif
