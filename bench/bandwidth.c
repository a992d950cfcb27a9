/* Memory-read bandwidth of this machine: the roofline for decoding one token, which reads
   every weight once (tokens/s <= bandwidth / bytes of weights read per token).

   Each of N threads allocates and first-touches its own buffer (total: --mb MiB, default
   2048, far larger than the caches: this VM's L3 is 260 MB) and streams it with the
   widest loads the compiler may use (AVX-512: 64-byte loads into 8 independent
   accumulators; else AVX2 with 8; else plain C), so neither the adds nor one core's
   issue rate, only memory, limits the rate. The threads start each pass together (a
   barrier) and the pass ends when the last one is done: bytes of all buffers / wall time.
   Passes: --reps (default 7), after one unmeasured pass; prints the best and the median.

   --file PATH: stream that file instead, mapped as ./run maps its weights (page cache, no
   first touch, equal slices per thread): the rate reachable on a model file itself.

   usage: bandwidth [threads] [--mb MiB] [--reps R] [--file PATH]
   prints: BANDWIDTH threads=<n> read_GB_s=<best> median_GB_s=<median> buffer_MB=<total> reps=<r> isa=<isa> */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

#if defined(__AVX512F__)
#define ISA "avx512"
#elif defined(__AVX2__)
#define ISA "avx2"
#else
#define ISA "scalar"
#endif

typedef struct {
    float *p;
    size_t n;  // floats, a multiple of 128
    int reps, touch;
    double sum;
} Worker;

static pthread_barrier_t start_bar, end_bar;

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static double read_all(const float *p, size_t n) {
#if defined(__AVX512F__)
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
    for (size_t i = 0; i < n; i += 128) {
        a0 = _mm512_add_ps(a0, _mm512_load_ps(p + i));
        a1 = _mm512_add_ps(a1, _mm512_load_ps(p + i + 16));
        a2 = _mm512_add_ps(a2, _mm512_load_ps(p + i + 32));
        a3 = _mm512_add_ps(a3, _mm512_load_ps(p + i + 48));
        a4 = _mm512_add_ps(a4, _mm512_load_ps(p + i + 64));
        a5 = _mm512_add_ps(a5, _mm512_load_ps(p + i + 80));
        a6 = _mm512_add_ps(a6, _mm512_load_ps(p + i + 96));
        a7 = _mm512_add_ps(a7, _mm512_load_ps(p + i + 112));
    }
    __m512 s = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)),
                             _mm512_add_ps(_mm512_add_ps(a4, a5), _mm512_add_ps(a6, a7)));
    return _mm512_reduce_add_ps(s);
#elif defined(__AVX2__)
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
    for (size_t i = 0; i < n; i += 64) {
        a0 = _mm256_add_ps(a0, _mm256_load_ps(p + i));
        a1 = _mm256_add_ps(a1, _mm256_load_ps(p + i + 8));
        a2 = _mm256_add_ps(a2, _mm256_load_ps(p + i + 16));
        a3 = _mm256_add_ps(a3, _mm256_load_ps(p + i + 24));
        a4 = _mm256_add_ps(a4, _mm256_load_ps(p + i + 32));
        a5 = _mm256_add_ps(a5, _mm256_load_ps(p + i + 40));
        a6 = _mm256_add_ps(a6, _mm256_load_ps(p + i + 48));
        a7 = _mm256_add_ps(a7, _mm256_load_ps(p + i + 56));
    }
    float out[8];
    _mm256_storeu_ps(out, _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)),
                                        _mm256_add_ps(_mm256_add_ps(a4, a5), _mm256_add_ps(a6, a7))));
    double s = 0;
    for (int i = 0; i < 8; i++) s += out[i];
    return s;
#else
    float acc[16] = {0};
    for (size_t i = 0; i < n; i += 16)
        for (int j = 0; j < 16; j++) acc[j] += p[i + j];
    double s = 0;
    for (int j = 0; j < 16; j++) s += acc[j];
    return s;
#endif
}

static void *worker(void *arg) {
    Worker *w = arg;
    // first touch by the thread that reads it (its NUMA node, where there are several)
    if (w->touch)
        for (size_t i = 0; i < w->n; i++) w->p[i] = (float)(i & 7);
    for (int r = 0; r < w->reps + 1; r++) {
        pthread_barrier_wait(&start_bar);
        w->sum += read_all(w->p, w->n);
        pthread_barrier_wait(&end_bar);
    }
    return NULL;
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    int nt = 2, reps = 7;
    size_t mb = 2048;
    const char *file = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--mb") && i + 1 < argc) mb = (size_t)atol(argv[++i]);
        else if (!strcmp(argv[i], "--file") && i + 1 < argc) file = argv[++i];
        else if (!strcmp(argv[i], "--reps") && i + 1 < argc) reps = atoi(argv[++i]);
        else nt = atoi(argv[i]);
    }
    if (nt < 1 || nt > 256 || reps < 1 || reps > 1000 || mb < 1) {
        fprintf(stderr, "usage: bandwidth [threads 1..256] [--mb MiB] [--reps R]\n");
        return 1;
    }
    float *map = NULL;
    size_t map_bytes = 0;
    if (file) {
        int fd = open(file, O_RDONLY);
        struct stat st;
        if (fd < 0 || fstat(fd, &st) != 0) { fprintf(stderr, "error: cannot open %s\n", file); return 1; }
        map_bytes = (size_t)st.st_size;
        map = mmap(NULL, map_bytes, PROT_READ, MAP_PRIVATE, fd, 0);
        close(fd);
        if (map == MAP_FAILED) { fprintf(stderr, "error: cannot map %s\n", file); return 1; }
        mb = map_bytes >> 20;
    }
    size_t per = (file ? map_bytes : mb << 20) / sizeof(float) / nt / 128 * 128;
    if (per == 0) { fprintf(stderr, "error: too little to read\n"); return 1; }
    Worker *w = calloc(nt, sizeof *w);
    pthread_t *th = calloc(nt, sizeof *th);
    pthread_barrier_init(&start_bar, NULL, nt + 1);
    pthread_barrier_init(&end_bar, NULL, nt + 1);
    for (int i = 0; i < nt; i++) {
        if (file) {
            w[i].p = map + per * i;
        } else {
            w[i].p = aligned_alloc(2 << 20, per * sizeof(float));
            if (!w[i].p) { fprintf(stderr, "error: cannot allocate %zu MiB\n", mb); return 1; }
            madvise(w[i].p, per * sizeof(float), MADV_HUGEPAGE);  // fewer TLB misses, if THP allows
            w[i].touch = 1;
        }
        w[i].n = per;
        w[i].reps = reps;
        pthread_create(&th[i], NULL, worker, &w[i]);
    }
    double *gbs = calloc(reps, sizeof *gbs);
    for (int r = 0; r < reps + 1; r++) {
        pthread_barrier_wait(&start_bar);  // every thread has touched its buffer (pass 0: warm-up)
        double t0 = now();
        pthread_barrier_wait(&end_bar);
        double s = now() - t0;
        if (r > 0) gbs[r - 1] = per * nt * sizeof(float) / s / 1e9;
    }
    double total = 0;
    for (int i = 0; i < nt; i++) {
        pthread_join(th[i], NULL);
        total += w[i].sum;
        if (!file) free(w[i].p);
    }
    if (file) munmap(map, map_bytes);
    qsort(gbs, reps, sizeof *gbs, cmp);
    printf("BANDWIDTH threads=%d read_GB_s=%.2f median_GB_s=%.2f buffer_MB=%zu reps=%d isa=%s%s%s (checksum %.0f)\n", nt,
           gbs[reps - 1], gbs[reps / 2], per * nt * sizeof(float) >> 20, reps, ISA, file ? " file=" : "",
           file ? file : "", total);
    return 0;
}
