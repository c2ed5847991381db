/* A program written for libatomic_ops' AO_malloc, as its users write them (the GC's
 * and libatomic_ops' own test_malloc: threads that allocate lists of blocks, check
 * them and free them; huge blocks once AO_malloc_enable_mmap was called). It includes
 * the unchanged <atomic_ops_malloc.h> and links against sigalloc (-lsigalloc) instead
 * of -latomic_ops_gpl. Prints "ao_users: ..." and exits 0 when every block kept its
 * contents. */
#include <atomic_ops_malloc.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define THREADS 4
#define ROUNDS 200
#define LIST 500

struct node {
    struct node *next;
    uint32_t size;
    uint32_t seed;
    unsigned char data[];
};

static int verify(const struct node *n) {
    for (uint32_t i = 0; i < n->size; i++)
        if (n->data[i] != (unsigned char)(n->seed + i)) return 0;
    return 1;
}

static void *worker(void *arg) {
    uintptr_t id = (uintptr_t)arg;
    uint32_t x = (uint32_t)(id * 2654435761u + 1);
    long bad = 0;
    for (int r = 0; r < ROUNDS; r++) {
        struct node *head = NULL;
        for (int i = 0; i < LIST; i++) {
            x = x * 1103515245u + 12345u;
            uint32_t size = (x >> 8) % 2000; /* AO's small sizes, mostly */
            struct node *n = AO_malloc(sizeof *n + size);
            if (!n) { bad++; continue; }
            n->size = size;
            n->seed = x;
            for (uint32_t k = 0; k < size; k++) n->data[k] = (unsigned char)(x + k);
            n->next = head;
            head = n;
        }
        while (head) {
            struct node *next = head->next;
            if (!verify(head)) bad++;
            AO_free(head);
            head = next;
        }
    }
    return (void *)bad;
}

int main(void) {
    /* Before AO_malloc_enable_mmap: a fixed heap; a request it cannot hold fails. */
    void *too_big = AO_malloc(8u << 20);
    if (too_big) {
        printf("ao_users: 8 MiB served before AO_malloc_enable_mmap\n");
        return 1;
    }
    void *small = AO_malloc(100);
    AO_free(small);
    AO_free(NULL);

    AO_malloc_enable_mmap();
    pthread_t t[THREADS];
    for (uintptr_t i = 0; i < THREADS; i++) pthread_create(&t[i], NULL, worker, (void *)i);

    /* huge blocks, meanwhile, on the main thread */
    long bad = 0;
    for (int i = 0; i < 20; i++) {
        size_t n = ((size_t)1 + i % 5) * (16u << 20);
        unsigned char *p = AO_malloc(n);
        if (!p) { bad++; continue; }
        memset(p, i, n);
        if (p[0] != (unsigned char)i || p[n - 1] != (unsigned char)i) bad++;
        AO_free(p);
    }
    for (int i = 0; i < THREADS; i++) {
        void *r;
        pthread_join(t[i], &r);
        bad += (long)r;
    }
    printf("ao_users: %d threads x %d rounds x %d blocks, 20 huge blocks, %ld bad\n", THREADS, ROUNDS, LIST, bad);
    return bad ? 1 : 0;
}
