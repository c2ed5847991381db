/* An xmalloc-like benchmark (after xmalloc-test in mimalloc-bench): threads allocate
 * batches of small blocks (8..256 bytes), publish each full batch on a shared stack,
 * and free batches that other threads allocated: nearly every free is remote. Run
 * under LD_PRELOAD to compare mallocs. Usage: bench_xmalloc THREADS [SECONDS].
 * Prints "... Mops/s X" (one op = one malloc or one free). */
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define BATCH 512
#define MAX_THREADS 16

struct batch {
    struct batch *next;
    void *blocks[BATCH];
};

/* A mutex-protected stack of full batches: the allocator under test is what varies. */
static struct batch *full;
static long nfull;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static atomic_int stop;
static atomic_long total_ops;
static int nthreads;

static void push(struct batch *b) {
    pthread_mutex_lock(&lock);
    b->next = full;
    full = b;
    nfull++;
    pthread_mutex_unlock(&lock);
}
static struct batch *pop(void) {
    pthread_mutex_lock(&lock);
    struct batch *b = full;
    if (b) {
        full = b->next;
        nfull--;
    }
    pthread_mutex_unlock(&lock);
    return b;
}

static void *worker(void *arg) {
    uint32_t seed = 2654435761u * (uint32_t)((intptr_t)arg + 1);
    long ops = 0;
    while (!atomic_load_explicit(&stop, memory_order_relaxed)) {
        struct batch *b = malloc(sizeof *b);
        for (int i = 0; i < BATCH; i++) {
            seed = seed * 1103515245u + 12345u;
            b->blocks[i] = malloc(8 + (seed >> 16) % 249);
            *(char *)b->blocks[i] = 1;
        }
        ops += BATCH + 1;
        push(b);
        /* free someone's batch (with one thread: our own) */
        struct batch *f = pop();
        if (f) {
            for (int i = 0; i < BATCH; i++) free(f->blocks[i]);
            free(f);
            ops += BATCH + 1;
        }
    }
    atomic_fetch_add(&total_ops, ops);
    return NULL;
}

int main(int argc, char **argv) {
    nthreads = argc > 1 ? atoi(argv[1]) : 1;
    double seconds = argc > 2 ? atof(argv[2]) : 1.0;
    if (nthreads < 1 || nthreads > MAX_THREADS) return 2;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    pthread_t th[MAX_THREADS];
    for (int t = 0; t < nthreads; t++) pthread_create(&th[t], NULL, worker, (void *)(intptr_t)t);
    struct timespec d = {(time_t)seconds, (long)((seconds - (time_t)seconds) * 1e9)};
    nanosleep(&d, NULL);
    atomic_store(&stop, 1);
    for (int t = 0; t < nthreads; t++) pthread_join(th[t], NULL);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    struct batch *b;
    while ((b = pop())) {
        for (int i = 0; i < BATCH; i++) free(b->blocks[i]);
        free(b);
    }
    double el = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    printf("xmalloc: %d threads, %ld ops in %.2f s, Mops/s %.2f\n", nthreads, (long)total_ops, el,
           (double)total_ops / el / 1e6);
    return 0;
}
