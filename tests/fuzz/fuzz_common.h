/* Shared by the libFuzzer harnesses in tests/fuzz/: an allocation tracker, a
   file-from-bytes helper, and then run.c itself (built with -DHLA_FUZZ, so main is
   left out and fatal() longjmps to fuzz_fatal_jump).

   Why track allocations: after fatal() longjmps out of a loader, memory held only
   by the loader's locals is unreachable (tokenizer_load's file buffer, for one), so
   a harness that ran millions of failing inputs would grow until it hit
   -rss_limit_mb. Every malloc/calloc/realloc/free made by run.c's code goes through
   the wrappers below (macros defined after the system headers, before run.c), which
   keep the live blocks in a list. A harness calls fz_free_all() after a longjmp to
   drop what was left behind, and fz_live() == 0 after a successful round trip
   checks that run.c's own free functions release everything.

   The wrappers also emulate a machine where an absurd request fails: calloc/malloc
   of more than FZ_MAX_ALLOC bytes returns NULL (run.c then calls fatal), instead of
   libFuzzer reporting "out-of-memory (malloc(N))" for a request that a real
   system would refuse anyway. */
#ifndef HLA_FUZZ_COMMON_H
#define HLA_FUZZ_COMMON_H

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
/* every header run.c includes, before the allocation macros below exist */
#include <math.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <sys/stat.h>
#include <time.h>

#ifndef FZ_MAX_ALLOC
#define FZ_MAX_ALLOC ((size_t)256 << 20) /* one request: 256 MiB */
#endif
#ifndef FZ_MAX_TOTAL
#define FZ_MAX_TOTAL ((size_t)768 << 20)  /* all live blocks together */
#endif

typedef struct FzBlock { struct FzBlock *prev, *next; size_t size; size_t pad; } FzBlock; /* 32 bytes: keeps 16-byte alignment */
static FzBlock fz_head = { &fz_head, &fz_head, 0, 0 };
static size_t fz_nlive, fz_bytes;

static void fz_link(FzBlock *b) { b->prev = &fz_head; b->next = fz_head.next; fz_head.next->prev = b; fz_head.next = b; fz_nlive++; fz_bytes += b->size; }
static void fz_unlink(FzBlock *b) { b->prev->next = b->next; b->next->prev = b->prev; fz_nlive--; fz_bytes -= b->size; }

static void *fz_malloc(size_t n) {
    if (n > FZ_MAX_ALLOC || n > FZ_MAX_TOTAL - fz_bytes) return NULL;
    FzBlock *b = (malloc)(sizeof(FzBlock) + n);
    if (!b) return NULL;
    b->size = n;
    fz_link(b);
    return b + 1;
}
static void *fz_calloc(size_t n, size_t size) {
    size_t total;
    if (__builtin_mul_overflow(n, size, &total) || total > FZ_MAX_ALLOC) return NULL;
    void *p = fz_malloc(total);
    if (p) memset(p, 0, total);
    return p;
}
static void fz_free(void *p) {
    if (!p) return;
    FzBlock *b = (FzBlock *)p - 1;
    fz_unlink(b);
    (free)(b);
}
static void *fz_realloc(void *p, size_t n) {
    if (!p) return fz_malloc(n);
    FzBlock *b = (FzBlock *)p - 1;
    if (n > FZ_MAX_ALLOC || n > FZ_MAX_TOTAL - (fz_bytes - b->size)) return NULL;
    fz_unlink(b);
    FzBlock *nb = (realloc)(b, sizeof(FzBlock) + n);
    if (!nb) { fz_link(b); return NULL; }
    nb->size = n;
    fz_link(nb);
    return nb + 1;
}
/* free every block run.c still holds (after a longjmp out of it) */
static void fz_free_all(void) {
    while (fz_head.next != &fz_head) fz_free(fz_head.next + 1);
}
static size_t fz_live(void) { return fz_nlive; }

#define malloc(n) fz_malloc(n)
#define calloc(n, s) fz_calloc(n, s)
#define realloc(p, n) fz_realloc(p, n)
#define free(p) fz_free(p)

#include "../../run.c"
/* the macros stay defined: harness code frees run.c's blocks with the same wrappers;
   memory from libc itself (open_memstream's buffer) is freed with (free)(p) */

/* The fuzz input as a file that run.c can open by path: one memfd per process,
   rewritten for every input; the path is /proc/self/fd/N. */
static const char *fz_input_path(const uint8_t *data, size_t size) {
    static int fd = -1;
    static char path[64];
    if (fd < 0) {
        fd = memfd_create("hla-fuzz-input", 0);
        if (fd < 0) { perror("memfd_create"); abort(); }
        snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    }
    if (ftruncate(fd, 0) != 0) { perror("ftruncate"); abort(); }
    size_t done = 0;
    while (done < size) {
        ssize_t w = pwrite(fd, data + done, size - done, (off_t)done);
        if (w <= 0) { perror("pwrite"); abort(); }
        done += (size_t)w;
    }
    return path;
}

#define FZ_CHECK(cond, ...) do { if (!(cond)) { fprintf(stderr, "FUZZ CHECK FAILED %s:%d: %s\n", __FILE__, __LINE__, #cond); \
    fprintf(stderr, __VA_ARGS__); fputc('\n', stderr); abort(); } } while (0)

#endif
