/*
 * sigalloc.h: sigalloc from C.
 *
 * sigalloc is a lock-free, async-signal-safe memory allocator. This header declares
 * libsigalloc (`cc app.c -lsigalloc`, or `pkg-config --cflags --libs sigalloc`): calls
 * prefixed `sigalloc_` that never clash with the system malloc, over one heap of
 * 2 MiB held inside the library, which grows by mmap once sigalloc_enable_mmap() is
 * called. libsigalloc also provides libatomic_ops' AO_malloc, AO_free and
 * AO_malloc_enable_mmap (include <atomic_ops_malloc.h> as before, link -lsigalloc).
 *
 * The same calls are exported by libsigalloc-preload.so, which also replaces malloc,
 * free, calloc, realloc, ... for the whole process (LD_PRELOAD) and grows by mmap from
 * its first call.
 *
 * "Async-signal-safe: yes" means the call may be made from a signal handler that
 * interrupted any other sigalloc call on the same thread, and from any number of
 * threads at once. Such calls are also lock-free: a thread stopped anywhere inside
 * one never blocks the others. Like malloc, a failing call sets errno; a handler that
 * allocates should save and restore errno, as usual.
 */
#ifndef SIGALLOC_H
#define SIGALLOC_H

#include <stddef.h>

#define SIGALLOC_VERSION_MAJOR 0
#define SIGALLOC_VERSION_MINOR 1
#define SIGALLOC_VERSION_PATCH 0
/* MAJOR * 10000 + MINOR * 100 + PATCH, as sigalloc_version() returns. */
#define SIGALLOC_VERSION                                                              \
    (SIGALLOC_VERSION_MAJOR * 10000 + SIGALLOC_VERSION_MINOR * 100 + SIGALLOC_VERSION_PATCH)

#if defined(__GNUC__)
#define SIGALLOC_MALLOC_ATTR __attribute__((__malloc__, __warn_unused_result__))
#define SIGALLOC_ALLOC_SIZE(n) __attribute__((__alloc_size__(n)))
#define SIGALLOC_ALLOC_SIZE2(n, m) __attribute__((__alloc_size__(n, m)))
#define SIGALLOC_ALLOC_ALIGN(n) __attribute__((__alloc_align__(n)))
#define SIGALLOC_WUR __attribute__((__warn_unused_result__))
#else
#define SIGALLOC_MALLOC_ATTR
#define SIGALLOC_ALLOC_SIZE(n)
#define SIGALLOC_ALLOC_SIZE2(n, m)
#define SIGALLOC_ALLOC_ALIGN(n)
#define SIGALLOC_WUR
#endif

#ifdef __cplusplus
#define SIGALLOC_NOEXCEPT noexcept
extern "C" {
#else
#define SIGALLOC_NOEXCEPT
#endif

/* ---- Allocation: all async-signal-safe and lock-free. ---------------------------- */

/* size bytes aligned to 16; size 0 gets a unique block. NULL and errno = ENOMEM when
 * the heap cannot serve it or size > PTRDIFF_MAX.
 * Async-signal-safe: yes. */
SIGALLOC_MALLOC_ATTR SIGALLOC_ALLOC_SIZE(1)
void *sigalloc_malloc(size_t size) SIGALLOC_NOEXCEPT;

/* n * size zeroed bytes. NULL and errno = ENOMEM on overflow or when it cannot be
 * served. Async-signal-safe: yes. */
SIGALLOC_MALLOC_ATTR SIGALLOC_ALLOC_SIZE2(1, 2)
void *sigalloc_calloc(size_t n, size_t size) SIGALLOC_NOEXCEPT;

/* Resizes ptr, in place when possible, keeping min(usable size, size) bytes.
 * ptr NULL: sigalloc_malloc(size). size 0: frees ptr and returns NULL (glibc's
 * choice). Failure: NULL, errno = ENOMEM, ptr untouched and still valid; that
 * includes a ptr sigalloc does not own (no data is lost). Async-signal-safe: yes. */
SIGALLOC_WUR SIGALLOC_ALLOC_SIZE(2)
void *sigalloc_realloc(void *ptr, size_t size) SIGALLOC_NOEXCEPT;

/* Frees ptr (any block of this library, whatever its size or alignment). NULL does
 * nothing; a pointer sigalloc does not own is ignored and reported to the error hook
 * (as is a double free). Never changes errno. Async-signal-safe: yes. */
void sigalloc_free(void *ptr) SIGALLOC_NOEXCEPT;

/* size bytes aligned to align, which must be a power of two (else NULL, errno =
 * EINVAL); size need not be a multiple of align. Alignments above sigalloc_max_align()
 * fail with ENOMEM. Async-signal-safe: yes. */
SIGALLOC_MALLOC_ATTR SIGALLOC_ALLOC_ALIGN(1) SIGALLOC_ALLOC_SIZE(2)
void *sigalloc_aligned_alloc(size_t align, size_t size) SIGALLOC_NOEXCEPT;

/* posix_memalign: 0 and *memptr set on success; EINVAL unless align is a power of two
 * and a multiple of sizeof(void *); ENOMEM when it cannot be served (above
 * sigalloc_max_align() included). *memptr and errno are untouched on failure.
 * Async-signal-safe: yes. */
SIGALLOC_WUR
int sigalloc_posix_memalign(void **memptr, size_t align, size_t size) SIGALLOC_NOEXCEPT;

/* Bytes usable at ptr: at least what was asked, all of them the caller's, constant
 * while the block lives. 0 for NULL and for pointers sigalloc does not own.
 * Async-signal-safe: yes. */
size_t sigalloc_usable_size(const void *ptr) SIGALLOC_NOEXCEPT;

/* The usable size a request of size bytes would get, 0 if it could never be served.
 * Async-signal-safe: yes. */
size_t sigalloc_good_size(size_t size) SIGALLOC_NOEXCEPT;

/* Nonzero if ptr points into memory sigalloc manages (its heap, claimed and mapped
 * regions, or the start of a live huge block). Async-signal-safe: yes. */
int sigalloc_owns(const void *ptr) SIGALLOC_NOEXCEPT;

/* The largest alignment the aligned calls serve. Async-signal-safe: yes. */
size_t sigalloc_max_align(void) SIGALLOC_NOEXCEPT;

/* ---- Growth and memory. ---------------------------------------------------------- */

/* Lets the heap grow by mmap when it runs dry, and maps requests of 1 MiB or more one
 * per mapping (off until called, like AO_malloc_enable_mmap; idempotent).
 * Async-signal-safe: yes (later calls map memory from a handler: mmap is a plain
 * system call on Linux). */
void sigalloc_enable_mmap(void) SIGALLOC_NOEXCEPT;

/* Nonzero once growth by mmap is on. Async-signal-safe: yes. */
int sigalloc_mmap_enabled(void) SIGALLOC_NOEXCEPT;

/* Gives every free chunk of the mapped regions back to the OS now; returns the bytes
 * given back. Async-signal-safe: yes (lock-free, but it walks every mapped region). */
size_t sigalloc_trim(void) SIGALLOC_NOEXCEPT;

/* ---- Per-CPU caches. ------------------------------------------------------------- */

/* Nonzero while the per-CPU caches serve allocations (Linux x86_64 with glibc 2.35 or
 * later, after the first allocation; 0 before it, where rseq is unavailable, e.g. under
 * GLIBC_TUNABLES=glibc.pthread.rseq=0 or valgrind, and after sigalloc_disable_percpu).
 * Async-signal-safe: yes. */
int sigalloc_percpu_active(void) SIGALLOC_NOEXCEPT;

/* Turns the per-CPU caches off for good: every block parked in them goes back to the
 * heap, and every later call takes the shared path (slower on a hit, the same
 * guarantees). Async-signal-safe: yes (lock-free; one membarrier system call). */
void sigalloc_disable_percpu(void) SIGALLOC_NOEXCEPT;

/* Hands len bytes at mem to the heap for good (a static buffer, a memory bank).
 * Returns the bytes that now serve allocations, 0 if none (too small, or the region
 * table is full). mem must stay valid for the rest of the process and must not be used
 * otherwise. Async-signal-safe: yes. */
size_t sigalloc_claim(void *mem, size_t len) SIGALLOC_NOEXCEPT;

/* ---- Observability. --------------------------------------------------------------- */

/* Prints the heap's statistics like jemalloc's malloc_stats_print: in pieces, each a
 * NUL-terminated string passed to write_cb(cbopaque, piece); write_cb NULL writes to
 * stderr with write(2). opts NULL or a string; "J" selects one JSON object instead of
 * text. Formats into a buffer on the stack and allocates nothing.
 * Async-signal-safe: yes, if write_cb is (stderr is). */
void sigalloc_stats_print(void (*write_cb)(void *cbopaque, const char *s), void *cbopaque,
                          const char *opts) SIGALLOC_NOEXCEPT;

/* What the error hook hears (the call was ignored; the heap is intact). */
enum sigalloc_error {
    SIGALLOC_ERROR_INVALID_FREE = 1,    /* free of a pointer sigalloc never handed out */
    SIGALLOC_ERROR_DOUBLE_FREE = 2,     /* free of a block already free */
    SIGALLOC_ERROR_LAYOUT_MISMATCH = 3, /* (Rust callers only) */
    SIGALLOC_ERROR_OUT_OF_MEMORY = 4,   /* a request the heap cannot serve now */
    SIGALLOC_ERROR_OVERFLOW = 5,        /* a size or alignment no heap could serve */
    SIGALLOC_ERROR_CORRUPTED = 6        /* sigalloc found its own state broken */
};

/* Installs hook(kind, ptr), kind an enum sigalloc_error, called on each refused call;
 * NULL removes it. The hook runs inside the failing call, so possibly inside a signal
 * handler: it must be async-signal-safe itself. errno is restored after it.
 * Async-signal-safe: yes. */
void sigalloc_set_error_hook(void (*hook)(int kind, void *ptr)) SIGALLOC_NOEXCEPT;

/* SIGALLOC_VERSION of the library actually loaded. Async-signal-safe: yes. */
int sigalloc_version(void) SIGALLOC_NOEXCEPT;

/* The version as a static string, e.g. "0.1.0". Async-signal-safe: yes. */
const char *sigalloc_version_string(void) SIGALLOC_NOEXCEPT;

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* SIGALLOC_H */
