/* Peak fp32 FMA throughput of this machine: the compute roofline of a prompt (prefill),
   which does 2 FLOPs per weight per token.

   Each of N threads runs 12 independent chains of vector FMAs (enough to cover the FMA
   latency, 4 cycles, on 2 FMA ports) on registers only, no memory traffic, for --ms
   milliseconds per pass; FLOPs = threads x iterations x 12 x lanes x 2. Measured for the
   widest vectors the compiler may use (AVX-512: 16 lanes) and for AVX2 (8 lanes), best
   of --reps passes (default 5) after one unmeasured pass.

   usage: fma [threads] [--ms M] [--reps R]
   prints: PEAK fma_gflops=<widest> avx512_gflops=<x|na> avx2_gflops=<y|na> threads=<n> */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

#define CHAINS 12
#define INNER 1000  // iterations between clock checks

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

typedef struct {
    int isa;  // 512 or 256
    double seconds, flops, sink;
} Job;

static pthread_barrier_t bar;

#if defined(__AVX512F__)
static double run512(double seconds, double *flops) {
    __m512 a[CHAINS], b = _mm512_set1_ps(0.999999f), c = _mm512_set1_ps(1e-7f);
    for (int j = 0; j < CHAINS; j++) a[j] = _mm512_set1_ps(1.0f + j);
    double t0 = now(), n = 0;
    while (now() - t0 < seconds) {
        for (int i = 0; i < INNER; i++) {
#pragma GCC unroll 12
            for (int j = 0; j < CHAINS; j++) a[j] = _mm512_fmadd_ps(a[j], b, c);
        }
        n += INNER;
    }
    *flops = n * CHAINS * 16 * 2;
    __m512 s = a[0];
    for (int j = 1; j < CHAINS; j++) s = _mm512_add_ps(s, a[j]);
    return _mm512_reduce_add_ps(s);
}
#endif

#if defined(__AVX2__) && defined(__FMA__)
static double run256(double seconds, double *flops) {
    __m256 a[CHAINS], b = _mm256_set1_ps(0.999999f), c = _mm256_set1_ps(1e-7f);
    for (int j = 0; j < CHAINS; j++) a[j] = _mm256_set1_ps(1.0f + j);
    double t0 = now(), n = 0;
    while (now() - t0 < seconds) {
        for (int i = 0; i < INNER; i++) {
#pragma GCC unroll 12
            for (int j = 0; j < CHAINS; j++) a[j] = _mm256_fmadd_ps(a[j], b, c);
        }
        n += INNER;
    }
    *flops = n * CHAINS * 8 * 2;
    float out[8];
    __m256 s = a[0];
    for (int j = 1; j < CHAINS; j++) s = _mm256_add_ps(s, a[j]);
    _mm256_storeu_ps(out, s);
    return out[0];
}
#endif

static void *worker(void *arg) {
    Job *j = arg;
    pthread_barrier_wait(&bar);
    j->flops = 0;
#if defined(__AVX512F__)
    if (j->isa == 512) j->sink = run512(j->seconds, &j->flops);
#endif
#if defined(__AVX2__) && defined(__FMA__)
    if (j->isa == 256) j->sink = run256(j->seconds, &j->flops);
#endif
    return NULL;
}

// GFLOP/s of nt threads together, best of reps passes
static double measure(int isa, int nt, double seconds, int reps) {
    double best = 0;
    for (int r = 0; r < reps + 1; r++) {
        pthread_t th[256];
        Job job[256];
        pthread_barrier_init(&bar, NULL, nt + 1);
        for (int i = 0; i < nt; i++) {
            job[i] = (Job){isa, seconds, 0, 0};
            pthread_create(&th[i], NULL, worker, &job[i]);
        }
        pthread_barrier_wait(&bar);
        double t0 = now(), flops = 0;
        for (int i = 0; i < nt; i++) { pthread_join(th[i], NULL); flops += job[i].flops; }
        double g = flops / (now() - t0) / 1e9;
        pthread_barrier_destroy(&bar);
        if (r > 0 && g > best) best = g;
    }
    return best;
}

int main(int argc, char **argv) {
    int nt = 2, reps = 5;
    double ms = 200;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--ms") && i + 1 < argc) ms = atof(argv[++i]);
        else if (!strcmp(argv[i], "--reps") && i + 1 < argc) reps = atoi(argv[++i]);
        else nt = atoi(argv[i]);
    }
    if (nt < 1 || nt > 256 || reps < 1 || ms <= 0) {
        fprintf(stderr, "usage: fma [threads 1..256] [--ms M] [--reps R]\n");
        return 1;
    }
    double g512 = 0, g256 = 0;
#if defined(__AVX512F__)
    g512 = measure(512, nt, ms * 1e-3, reps);
#endif
#if defined(__AVX2__) && defined(__FMA__)
    g256 = measure(256, nt, ms * 1e-3, reps);
#endif
    char s512[32] = "na", s256[32] = "na";
    if (g512 > 0) snprintf(s512, sizeof s512, "%.1f", g512);
    if (g256 > 0) snprintf(s256, sizeof s256, "%.1f", g256);
    printf("PEAK fma_gflops=%.1f avx512_gflops=%s avx2_gflops=%s threads=%d\n", g512 > g256 ? g512 : g256, s512, s256,
           nt);
    return 0;
}
