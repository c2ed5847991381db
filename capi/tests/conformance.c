/* Conformance of sigalloc's C calls to the malloc contract (glibc 2.36 where C leaves a
 * choice, 2.38 for aligned_alloc's argument check). Built two ways:
 *   cc -DPREFIXED conformance.c -lsigalloc      the sigalloc_ calls of libsigalloc
 *   cc conformance.c -ldl; LD_PRELOAD=libsigalloc-preload.so ./a.out
 *                                               malloc & co. replaced process-wide
 * Every check runs and prints a line when it fails; the exit status is the number of
 * failures (0: all passed). The last line is "conformance: N checks, F failed". */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <malloc.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "sigalloc.h"

#ifdef PREFIXED
#define MALLOC sigalloc_malloc
#define CALLOC sigalloc_calloc
#define REALLOC sigalloc_realloc
#define FREE sigalloc_free
#define ALIGNED_ALLOC sigalloc_aligned_alloc
#define POSIX_MEMALIGN sigalloc_posix_memalign
#define USABLE sigalloc_usable_size
#define MODE "prefixed"
#else
#define MALLOC malloc
#define CALLOC calloc
#define REALLOC realloc
#define FREE free
#define ALIGNED_ALLOC aligned_alloc
#define POSIX_MEMALIGN posix_memalign
#define USABLE malloc_usable_size
#define MODE "preload"
/* Under LD_PRELOAD the sigalloc_ calls come from the preloaded library. */
#pragma weak sigalloc_owns
#pragma weak sigalloc_set_error_hook
#pragma weak sigalloc_max_align
#pragma weak sigalloc_mmap_enabled
#pragma weak sigalloc_percpu_active
#pragma weak sigalloc_disable_percpu
void *reallocarray(void *, size_t, size_t);
void *pvalloc(size_t);
void *valloc(size_t);
void *memalign(size_t, size_t);
void free_sized(void *, size_t);
void free_aligned_sized(void *, size_t, size_t);
#pragma weak free_sized
#pragma weak free_aligned_sized
#endif

static int checks, failures;
#define CHECK(cond, ...)                                                                   \
    do {                                                                                   \
        checks++;                                                                          \
        if (!(cond)) {                                                                     \
            failures++;                                                                    \
            printf("FAIL %s:%d: %s: ", MODE, __LINE__, #cond);                             \
            printf(__VA_ARGS__);                                                           \
            printf("\n");                                                                  \
        }                                                                                  \
    } while (0)

/* Sizes the compiler cannot see through. */
static volatile size_t v_ptrdiff_max = PTRDIFF_MAX;
static volatile size_t v_size_max = SIZE_MAX;

static int hook_kind[8];
static void *hook_ptr;
static void on_error(int kind, void *ptr) {
    if (kind >= 0 && kind < 8) hook_kind[kind]++;
    hook_ptr = ptr;
    errno = 999; /* sigalloc must restore errno after the hook */
}

static void fill(unsigned char *p, size_t n, unsigned seed) {
    for (size_t i = 0; i < n; i++) p[i] = (unsigned char)(seed + i * 7);
}
static size_t first_bad(const unsigned char *p, size_t n, unsigned seed) {
    for (size_t i = 0; i < n; i++)
        if (p[i] != (unsigned char)(seed + i * 7)) return i;
    return n;
}

static const size_t sizes[] = {0,    1,     8,     15,     16,      17,      24,     100,
                               255,  256,   1000,  4095,   4096,    4097,    16384,  65535,
                               65536, 100000, 262144, 1048575, 1048576, 1048577, 3 << 20, 9 << 20};
#define NSIZES (sizeof sizes / sizeof sizes[0])

static void test_malloc(void) {
    void *a = MALLOC(0), *b = MALLOC(0);
    CHECK(a && b && a != b, "malloc(0) must return unique blocks: %p %p", a, b);
    FREE(a);
    FREE(b);
    for (size_t i = 0; i < NSIZES; i++) {
        size_t n = sizes[i];
        unsigned char *p = MALLOC(n);
        CHECK(p != NULL, "malloc(%zu)", n);
        if (!p) continue;
        CHECK(((uintptr_t)p & 15) == 0, "malloc(%zu) = %p not 16-aligned", n, (void *)p);
        size_t u = USABLE(p);
        CHECK(u >= n, "usable %zu < %zu", u, n);
        fill(p, u, (unsigned)n);
        CHECK(first_bad(p, u, (unsigned)n) == u, "pattern of malloc(%zu)", n);
        CHECK(USABLE(p) == u, "usable size changed");
        FREE(p);
    }
    CHECK(USABLE(NULL) == 0, "usable_size(NULL)");
    FREE(NULL);
    errno = 0;
    CHECK(MALLOC(v_ptrdiff_max + 1) == NULL && errno == ENOMEM, "malloc(PTRDIFF_MAX+1) errno %d", errno);
    errno = 0;
    CHECK(MALLOC(v_size_max) == NULL && errno == ENOMEM, "malloc(SIZE_MAX) errno %d", errno);
    errno = 0;
    CHECK(MALLOC(v_ptrdiff_max) == NULL && errno == ENOMEM, "malloc(PTRDIFF_MAX) errno %d", errno);
    errno = 0;
    CHECK(MALLOC(v_size_max - 4095) == NULL && errno == ENOMEM, "malloc(SIZE_MAX-4095) must not wrap");
}

static void test_calloc(void) {
    errno = 0;
    CHECK(CALLOC(v_size_max / 2 + 1, 2) == NULL && errno == ENOMEM, "calloc overflow errno %d", errno);
    errno = 0;
    CHECK(CALLOC(v_size_max >> 31, v_size_max >> 31) == NULL && errno == ENOMEM, "calloc 2^66");
    errno = 0;
    CHECK(CALLOC(v_ptrdiff_max / 2 + 1, 2) == NULL && errno == ENOMEM, "calloc > PTRDIFF_MAX");
    void *z = CALLOC(0, 0);
    CHECK(z != NULL, "calloc(0, 0) must be a unique block");
    FREE(z);
    for (size_t i = 0; i < NSIZES; i++) {
        size_t n = sizes[i];
        /* dirty a block of the same size first, so calloc gets reused memory */
        unsigned char *d = MALLOC(n);
        if (d) {
            memset(d, 0xAA, USABLE(d));
            FREE(d);
        }
        unsigned char *p = CALLOC(1, n);
        CHECK(p != NULL, "calloc(1, %zu)", n);
        if (!p) continue;
        size_t bad = n;
        for (size_t j = 0; j < n; j++)
            if (p[j]) { bad = j; break; }
        CHECK(bad == n, "calloc(1, %zu) byte %zu not zero", n, bad);
        FREE(p);
    }
}

static void test_realloc(void) {
    void *p = REALLOC(NULL, 0);
    CHECK(p != NULL, "realloc(NULL, 0) must be a unique block");
    FREE(p);
    p = REALLOC(NULL, 100);
    CHECK(p != NULL && USABLE(p) >= 100, "realloc(NULL, 100)");

    /* realloc(p, 0) frees p and returns NULL; errno untouched */
    memset(hook_kind, 0, sizeof hook_kind);
    errno = 1234;
    void *r = REALLOC(p, 0);
    CHECK(r == NULL && errno == 1234, "realloc(p, 0) = %p errno %d", r, errno);
#ifndef PREFIXED
    if (sigalloc_set_error_hook)
#endif
    {
        FREE(p); /* p was freed: a second free is reported, never a crash */
        CHECK(hook_kind[SIGALLOC_ERROR_DOUBLE_FREE] == 1, "realloc(p, 0) must have freed p");
    }

    /* failure leaves the block intact */
    unsigned char *q = MALLOC(1000);
    fill(q, 1000, 3);
    errno = 0;
    CHECK(REALLOC(q, v_ptrdiff_max + 1) == NULL && errno == ENOMEM, "realloc > PTRDIFF_MAX");
    errno = 0;
    CHECK(REALLOC(q, v_size_max) == NULL && errno == ENOMEM, "realloc SIZE_MAX");
    CHECK(first_bad(q, 1000, 3) == 1000, "failed realloc changed the block");
    FREE(q);

    /* growing and shrinking keep the whole usable size */
    for (size_t i = 0; i < NSIZES; i++) {
        for (size_t k = 0; k < NSIZES; k++) {
            size_t from = sizes[i], to = sizes[k];
            unsigned char *a = MALLOC(from);
            if (!a) { CHECK(0, "malloc(%zu)", from); continue; }
            size_t u = USABLE(a);
            fill(a, u, (unsigned)(from + to));
            unsigned char *b = REALLOC(a, to);
            if (to == 0) { CHECK(b == NULL, "realloc(p, 0)"); continue; }
            CHECK(b != NULL, "realloc %zu -> %zu", from, to);
            if (!b) { FREE(a); continue; }
            size_t keep = u < to ? u : to;
            size_t bad = first_bad(b, keep, (unsigned)(from + to));
            CHECK(bad == keep, "realloc %zu (usable %zu) -> %zu lost byte %zu", from, u, to, bad);
            CHECK(USABLE(b) >= to, "realloc usable");
            FREE(b);
        }
    }
}

static void test_free_errno(void) {
    for (size_t i = 0; i < NSIZES; i++) {
        void *p = MALLOC(sizes[i]);
        errno = 4321;
        FREE(p);
        CHECK(errno == 4321, "free of %zu bytes changed errno to %d", sizes[i], errno);
    }
    errno = 4321;
    FREE(NULL);
    CHECK(errno == 4321, "free(NULL) changed errno");
    /* an error report must not change errno either (the hook sets 999); sigalloc
     * refuses a double free, other mallocs abort */
#ifndef PREFIXED
    if (!sigalloc_set_error_hook) return;
#endif
    void *p = MALLOC(64);
    FREE(p);
    errno = 4321;
    FREE(p);
    CHECK(errno == 4321, "a refused free changed errno to %d", errno);
}

static size_t max_align(void) {
#ifndef PREFIXED
    if (!sigalloc_max_align) return 0;
#endif
    return sigalloc_max_align();
}

static void test_aligned(void) {
    /* every power of two up to 2 MiB must be served */
    for (int k = 0; k <= 21; k++) {
        size_t al = (size_t)1 << k;
        size_t reqs[] = {0, 1, al, 3 * al + 5};
        for (int j = 0; j < 4; j++) {
            size_t n = reqs[j];
            errno = 0;
            unsigned char *p = ALIGNED_ALLOC(al, n);
            CHECK(p && ((uintptr_t)p & (al - 1)) == 0, "aligned_alloc(%zu, %zu) = %p errno %d", al, n, (void *)p, errno);
            if (p) {
                CHECK(USABLE(p) >= n, "usable");
                memset(p, 1, n);
                FREE(p);
            }
            void *m = (void *)0x1;
            int rc = POSIX_MEMALIGN(&m, al, n);
            if (al < sizeof(void *)) {
                CHECK(rc == EINVAL && m == (void *)0x1, "posix_memalign(align %zu) rc %d", al, rc);
            } else {
                CHECK(rc == 0 && m && ((uintptr_t)m & (al - 1)) == 0, "posix_memalign(%zu, %zu) rc %d", al, n, rc);
                if (rc == 0) {
                    CHECK(USABLE(m) >= n, "usable");
                    memset(m, 2, n);
                    FREE(m);
                }
            }
#ifndef PREFIXED
            errno = 0;
            unsigned char *q = memalign(al, n);
            CHECK(q && ((uintptr_t)q & (al - 1)) == 0, "memalign(%zu, %zu) = %p errno %d", al, n, (void *)q, errno);
            if (q) { memset(q, 3, n); free(q); }
#endif
        }
    }
    /* huge sizes take the mapping path: the alignment must hold there too */
    for (int k = 4; k <= 21; k++) {
        size_t al = (size_t)1 << k, n = ((size_t)3 << 20) + 100;
        unsigned char *p = ALIGNED_ALLOC(al, n);
        CHECK(p && ((uintptr_t)p & (al - 1)) == 0 && USABLE(p) >= n, "aligned_alloc(%zu, 3 MiB) = %p", al, (void *)p);
        if (p) {
            p[0] = 1;
            p[n - 1] = 2;
            FREE(p);
        }
    }
    void *m = (void *)0x1;
    CHECK(POSIX_MEMALIGN(&m, 0, 8) == EINVAL && m == (void *)0x1, "posix_memalign align 0");
    CHECK(POSIX_MEMALIGN(&m, 24, 8) == EINVAL && m == (void *)0x1, "posix_memalign align 24");
    CHECK(POSIX_MEMALIGN(&m, 3, 8) == EINVAL && m == (void *)0x1, "posix_memalign align 3");
    CHECK(POSIX_MEMALIGN(&m, 64, v_size_max) == ENOMEM && m == (void *)0x1, "posix_memalign SIZE_MAX");
    CHECK(POSIX_MEMALIGN(&m, 64, v_ptrdiff_max + 1) == ENOMEM && m == (void *)0x1, "posix_memalign > PTRDIFF_MAX");
    CHECK(POSIX_MEMALIGN(&m, 64, 0) == 0 && m != (void *)0x1 && m, "posix_memalign size 0");
    FREE(m);
    errno = 0;
    CHECK(ALIGNED_ALLOC(0, 8) == NULL && errno == EINVAL, "aligned_alloc(0, 8) errno %d", errno);
    errno = 0;
    CHECK(ALIGNED_ALLOC(24, 8) == NULL && errno == EINVAL, "aligned_alloc(24, 8) errno %d", errno);
    errno = 0;
    CHECK(ALIGNED_ALLOC(64, v_size_max) == NULL && errno == ENOMEM, "aligned_alloc SIZE_MAX");

    /* above the documented limit: a clean failure */
    size_t lim = max_align();
    CHECK(lim >= ((size_t)1 << 21), "sigalloc_max_align() = %zu, want at least 2 MiB", lim);
    if (lim && lim < ((size_t)1 << 40)) {
        m = (void *)0x1;
        CHECK(POSIX_MEMALIGN(&m, lim * 2, 64) == ENOMEM && m == (void *)0x1, "posix_memalign above the limit");
        errno = 0;
        CHECK(ALIGNED_ALLOC(lim * 2, 64) == NULL && errno == ENOMEM, "aligned_alloc above the limit");
    }

#ifndef PREFIXED
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    unsigned char *q = memalign(24, 100);
    CHECK(q && ((uintptr_t)q & 31) == 0, "memalign(24) rounds the alignment up to 32");
    free(q);
    errno = 0;
    CHECK(memalign(v_size_max / 2 + 2, 8) == NULL && errno == EINVAL, "memalign huge alignment errno %d", errno);
    q = valloc(100);
    CHECK(q && ((uintptr_t)q & (page - 1)) == 0, "valloc");
    free(q);
    q = pvalloc(0);
    CHECK(q && ((uintptr_t)q & (page - 1)) == 0, "pvalloc(0)");
    free(q);
    q = pvalloc(1);
    CHECK(q && ((uintptr_t)q & (page - 1)) == 0 && malloc_usable_size(q) >= page, "pvalloc(1) is a whole page");
    free(q);
    errno = 0;
    CHECK(pvalloc(v_size_max) == NULL && errno == ENOMEM, "pvalloc(SIZE_MAX)");

    /* reallocarray */
    unsigned char *a = malloc(100);
    fill(a, 100, 9);
    errno = 0;
    CHECK(reallocarray(a, v_size_max / 2 + 1, 2) == NULL && errno == ENOMEM, "reallocarray overflow");
    CHECK(first_bad(a, 100, 9) == 100, "failed reallocarray changed the block");
    unsigned char *b = reallocarray(a, 50, 4);
    CHECK(b && first_bad(b, 100, 9) == 100, "reallocarray grow");
    free(b);
    errno = 0;
    b = reallocarray(NULL, 0, 0);
    CHECK(b != NULL && errno == 0, "reallocarray(NULL, 0, 0)");
    free(b);
    CHECK(free_sized && free_aligned_sized, "free_sized and free_aligned_sized exported");
    if (free_sized && free_aligned_sized) {
        errno = 77;
        free_sized(malloc(10), 10);
        b = aligned_alloc(256, 1000);
        free_aligned_sized(b, 256, 1000);
        CHECK(errno == 77, "free_sized errno");
    }
#endif
}

static unsigned char foreign_static[4096] __attribute__((aligned(64)));

static void test_foreign(void) {
    unsigned char stack_buf[256];
    unsigned char *mapped = mmap(NULL, 1 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    void *foreign[] = {foreign_static, foreign_static + 64, stack_buf, mapped, mapped + 4096, mapped + 16};
    for (size_t i = 0; i < sizeof foreign / sizeof foreign[0]; i++) {
        unsigned char *f = foreign[i];
        fill(f, 200, 11);
        CHECK(USABLE(f) == 0, "usable_size of foreign pointer %zu", i);
        memset(hook_kind, 0, sizeof hook_kind);
        errno = 55;
        FREE(f);
        CHECK(errno == 55, "free of a foreign pointer changed errno");
        CHECK(first_bad(f, 200, 11) == 200, "free of a foreign pointer wrote to it");
#ifndef PREFIXED
        if (sigalloc_set_error_hook)
#endif
            CHECK(hook_kind[SIGALLOC_ERROR_INVALID_FREE] == 1, "free of foreign pointer %zu reported", i);
        errno = 0;
        void *r = REALLOC(f, 1000);
        CHECK(r == NULL && errno == ENOMEM, "realloc of foreign pointer %zu: %p errno %d (must fail, not copy)", i, r, errno);
        CHECK(first_bad(f, 200, 11) == 200, "realloc of a foreign pointer wrote to it");
        if (r) FREE(r);
    }
    munmap(mapped, 1 << 20);
}

static void test_double_free(void) {
    for (size_t i = 0; i < NSIZES; i++) {
        void *p = MALLOC(sizes[i]);
        FREE(p);
        memset(hook_kind, 0, sizeof hook_kind);
        FREE(p);
        CHECK(hook_kind[SIGALLOC_ERROR_DOUBLE_FREE] + hook_kind[SIGALLOC_ERROR_INVALID_FREE] == 1,
              "second free of a %zu-byte block reported", sizes[i]);
    }
    /* the heap still works */
    void *p = MALLOC(100);
    CHECK(p != NULL, "malloc after double frees");
    FREE(p);
}

#ifdef PREFIXED
static char stats_text[16384];
static size_t stats_len;
static int stats_calls;
static void collect(void *opaque, const char *s) {
    size_t n = strlen(s);
    stats_calls++;
    CHECK(opaque == (void *)stats_text, "cbopaque passed through");
    if (stats_len + n < sizeof stats_text) {
        memcpy(stats_text + stats_len, s, n);
        stats_len += n;
        stats_text[stats_len] = 0;
    }
}

static void test_library(void) {
    CHECK(sigalloc_version() == SIGALLOC_VERSION, "version %d vs header %d", sigalloc_version(), SIGALLOC_VERSION);
    char want[32];
    snprintf(want, sizeof want, "%d.%d.%d", SIGALLOC_VERSION_MAJOR, SIGALLOC_VERSION_MINOR, SIGALLOC_VERSION_PATCH);
    CHECK(strcmp(sigalloc_version_string(), want) == 0, "version string %s", sigalloc_version_string());

    /* before enable_mmap: the 2 MiB heap only */
    CHECK(!sigalloc_mmap_enabled(), "mmap is off until enabled");
    errno = 0;
    CHECK(sigalloc_malloc(3 << 20) == NULL && errno == ENOMEM, "3 MiB without mmap fails with ENOMEM");
    void *blocks[64];
    int n = 0;
    while (n < 64 && (blocks[n] = sigalloc_malloc(64 << 10)) != NULL) n++;
    CHECK(n > 8 && n < 64, "the inline heap holds %d blocks of 64 KiB", n);
    CHECK(sigalloc_owns(blocks[0]) && !sigalloc_owns(foreign_static), "owns");
    static unsigned char bank[1 << 20] __attribute__((aligned(4096)));
    size_t got = sigalloc_claim(bank, sizeof bank);
    CHECK(got > 0 && got <= sizeof bank, "claim of 1 MiB: %zu bytes", got);
    void *more = sigalloc_malloc(64 << 10);
    CHECK(more && (unsigned char *)more >= bank && (unsigned char *)more < bank + sizeof bank,
          "allocation from the claimed bank");
    sigalloc_free(more);
    for (int i = 0; i < n; i++) sigalloc_free(blocks[i]);
    CHECK(sigalloc_good_size(100) >= 100, "good_size");

    stats_len = 0;
    sigalloc_stats_print(collect, stats_text, NULL);
    CHECK(strstr(stats_text, "sigalloc statistics") && strstr(stats_text, "heap"), "text stats: %.80s", stats_text);
    CHECK(stats_calls > 1, "stats printed in pieces (%d)", stats_calls);
    stats_len = 0;
    sigalloc_stats_print(collect, stats_text, "J");
    CHECK(stats_text[0] == '{' && strstr(stats_text, "\"bytes_in_use\"") && stats_text[stats_len - 2] == '}',
          "json stats: %.80s", stats_text);
    sigalloc_stats_print(NULL, NULL, "J"); /* to stderr */

    sigalloc_enable_mmap();
    CHECK(sigalloc_mmap_enabled(), "enable_mmap");
    void *big = sigalloc_malloc(64 << 20);
    CHECK(big != NULL && sigalloc_usable_size(big) >= (64 << 20), "64 MiB after enable_mmap");
    if (big) memset(big, 5, 64 << 20);
    sigalloc_free(big);
    sigalloc_trim();
}
#endif

#ifndef PREFIXED
static void test_interposed(void) {
    Dl_info info;
    CHECK(dladdr((void *)malloc, &info) && info.dli_fname && strstr(info.dli_fname, "sigalloc"),
          "malloc comes from %s", info.dli_fname ? info.dli_fname : "?");
    CHECK(sigalloc_owns != NULL, "the sigalloc_ calls are exported by the preload");
    if (!sigalloc_owns) return;
    CHECK(sigalloc_mmap_enabled(), "growth is on from the first call");
    char *s = strdup("hello");
    CHECK(sigalloc_owns(s), "strdup uses the replacement");
    free(s);
    FILE *f = fopen("/proc/self/maps", "r");
    CHECK(f && sigalloc_owns(f), "fopen's FILE comes from the replacement");
    char *line = NULL;
    size_t cap = 0;
    if (f) {
        CHECK(getline(&line, &cap, f) > 0 && sigalloc_owns(line), "getline's buffer");
        fclose(f);
    }
    free(line);
}
#endif

/* The per-CPU caches' switch: whatever they were, after sigalloc_disable_percpu they
 * are off, and allocations go on (distinct, usable, freed). Run last: it is for good. */
static void test_percpu(void) {
#ifndef PREFIXED
    if (!sigalloc_percpu_active || !sigalloc_disable_percpu) {
        CHECK(0, "the preload exports the per-CPU calls");
        return;
    }
#endif
    void *p = MALLOC(48);
    CHECK(p != NULL, "malloc before the switch");
    FREE(p);
    int before = sigalloc_percpu_active();
    CHECK(before == 0 || before == 1, "percpu_active is 0 or 1 (%d)", before);
    sigalloc_disable_percpu();
    CHECK(!sigalloc_percpu_active(), "the caches are off after sigalloc_disable_percpu");
    unsigned char *q[200];
    for (int i = 0; i < 200; i++) {
        q[i] = MALLOC(16 + (size_t)i * 8);
        CHECK(q[i] != NULL, "malloc %d with the caches off", i);
        if (q[i]) fill(q[i], 16 + (size_t)i * 8, (unsigned)i);
    }
    for (int i = 0; i < 200; i++) {
        if (!q[i]) continue;
        CHECK(first_bad(q[i], 16 + (size_t)i * 8, (unsigned)i) == 16 + (size_t)i * 8,
              "block %d kept its bytes", i);
        FREE(q[i]);
    }
    sigalloc_disable_percpu(); /* idempotent */
    CHECK(!sigalloc_percpu_active(), "still off");
    printf("conformance (%s): per-CPU caches were %s, now off\n", MODE, before ? "on" : "off");
}

int main(void) {
#ifndef PREFIXED
    void *brk0 = sbrk(0);
    test_interposed();
    if (sigalloc_set_error_hook) sigalloc_set_error_hook(on_error);
#else
    test_library();
    sigalloc_set_error_hook(on_error);
#endif
    test_malloc();
    test_calloc();
    test_realloc();
    test_free_errno();
    test_aligned();
    test_foreign();
#ifndef PREFIXED
    if (sigalloc_set_error_hook)
#endif
        test_double_free();
    test_percpu();
#ifndef PREFIXED
    CHECK(sbrk(0) == brk0, "the program break moved: something used glibc's malloc");
#endif
    printf("conformance (%s): %d checks, %d failed\n", MODE, checks, failures);
    return failures ? 1 : 0;
}
