/* A larson-like benchmark (Larson & Krishnan, ISMM 1998): each thread owns an array of
 * live blocks and replaces a random one at a time (free, then malloc of a random size
 * in 16..1024); every round the arrays rotate between threads, so blocks are freed by
 * threads that did not allocate them. Run under LD_PRELOAD to compare mallocs.
 * Usage: bench_larson THREADS [SECONDS]. Prints "... Mops/s X". */
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define SLOTS 2000
#define MAX_THREADS 16

static void **arrays[MAX_THREADS];
static int nthreads;
static atomic_int stop;
static pthread_barrier_t barrier;
static atomic_long total_ops;
static int finish; /* written between the two barriers of a round */

static uint32_t next(uint32_t *s) {
    *s ^= *s << 13;
    *s ^= *s >> 17;
    *s ^= *s << 5;
    return *s;
}

static void *worker(void *arg) {
    int id = (int)(intptr_t)arg;
    uint32_t seed = 0x9e3779b9u * (uint32_t)(id + 1);
    long ops = 0;
    for (int round = 0;; round++) {
        void **a = arrays[(id + round) % nthreads];
        for (int i = 0; i < 20000; i++) {
            uint32_t r = next(&seed);
            int k = r % SLOTS;
            free(a[k]);
            size_t size = 16 + (r >> 16) % 1009;
            a[k] = malloc(size);
            ((char *)a[k])[0] = (char)r;
        }
        ops += 20000;
        /* everyone is done with this round's arrays; one thread decides for all
         * whether to stop, the second barrier publishes its decision */
        if (pthread_barrier_wait(&barrier) == PTHREAD_BARRIER_SERIAL_THREAD) finish = atomic_load(&stop);
        pthread_barrier_wait(&barrier);
        if (finish) break;
    }
    atomic_fetch_add(&total_ops, ops);
    return NULL;
}

int main(int argc, char **argv) {
    nthreads = argc > 1 ? atoi(argv[1]) : 1;
    double seconds = argc > 2 ? atof(argv[2]) : 1.0;
    if (nthreads < 1 || nthreads > MAX_THREADS) return 2;
    for (int t = 0; t < nthreads; t++) {
        arrays[t] = calloc(SLOTS, sizeof(void *));
        for (int i = 0; i < SLOTS; i++) arrays[t][i] = malloc(16 + (size_t)(i * 37) % 1009);
    }
    pthread_barrier_init(&barrier, NULL, (unsigned)nthreads);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    pthread_t th[MAX_THREADS];
    for (int t = 0; t < nthreads; t++) pthread_create(&th[t], NULL, worker, (void *)(intptr_t)t);
    struct timespec d = {(time_t)seconds, (long)((seconds - (time_t)seconds) * 1e9)};
    nanosleep(&d, NULL);
    atomic_store(&stop, 1);
    for (int t = 0; t < nthreads; t++) pthread_join(th[t], NULL);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double el = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    printf("larson: %d threads, %ld ops in %.2f s, Mops/s %.2f\n", nthreads, (long)total_ops, el,
           (double)total_ops / el / 1e6);
    return 0;
}
