/* Memory-read bandwidth of this machine: N threads sum disjoint slices of a 1 GiB buffer
   (far larger than any cache), best of 5 passes. This is the roofline for decoding one
   token, which reads every weight once: tokens/s <= bandwidth / bytes of weights.
   usage: bandwidth [threads]   prints: BANDWIDTH threads=<n> read_GB_s=<x> */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#if defined(__AVX2__)
#include <immintrin.h>
#endif

#define BYTES (1ul << 30)
typedef struct { const float *p; size_t n; double sum; } Slice;

static void *read_slice(void *arg) {
    Slice *s = arg;
#if defined(__AVX2__)
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (size_t i = 0; i + 32 <= s->n; i += 32) {
        a0 = _mm256_add_ps(a0, _mm256_load_ps(s->p + i));
        a1 = _mm256_add_ps(a1, _mm256_load_ps(s->p + i + 8));
        a2 = _mm256_add_ps(a2, _mm256_load_ps(s->p + i + 16));
        a3 = _mm256_add_ps(a3, _mm256_load_ps(s->p + i + 24));
    }
    float out[8];
    _mm256_storeu_ps(out, _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    for (int i = 0; i < 8; i++) s->sum += out[i];
#else
    float acc[8] = {0};
    for (size_t i = 0; i + 8 <= s->n; i += 8)
        for (int j = 0; j < 8; j++) acc[j] += s->p[i + j];
    for (int j = 0; j < 8; j++) s->sum += acc[j];
#endif
    return NULL;
}

int main(int argc, char **argv) {
    int nt = argc > 1 ? atoi(argv[1]) : 2;
    if (nt < 1 || nt > 64) { fprintf(stderr, "error: threads must be 1..64\n"); return 1; }
    float *buf = aligned_alloc(64, BYTES);
    if (!buf) { fprintf(stderr, "error: cannot allocate 1 GiB\n"); return 1; }
    for (size_t i = 0; i < BYTES / sizeof(float); i++) buf[i] = (float)(i & 7);
    double best = 0, total = 0;
    for (int pass = 0; pass < 5; pass++) {
        pthread_t th[64];
        Slice sl[64];
        size_t per = BYTES / sizeof(float) / nt / 32 * 32;
        struct timespec a, b;
        clock_gettime(CLOCK_MONOTONIC, &a);
        for (int i = 0; i < nt; i++) {
            sl[i] = (Slice){buf + per * i, per, 0};
            pthread_create(&th[i], NULL, read_slice, &sl[i]);
        }
        for (int i = 0; i < nt; i++) { pthread_join(th[i], NULL); total += sl[i].sum; }
        clock_gettime(CLOCK_MONOTONIC, &b);
        double s = (b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) * 1e-9;
        double gbs = per * nt * sizeof(float) / s / 1e9;
        if (gbs > best) best = gbs;
    }
    printf("BANDWIDTH threads=%d read_GB_s=%.2f (checksum %.0f)\n", nt, best, total);
    free(buf);
    return 0;
}
