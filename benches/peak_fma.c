// The machine's fp32 ceiling, for reading the embedder's throughput against it: independent AVX2 FMA
// chains (12 per thread, enough to hide the FMA latency), nothing else, on N threads.
//   cc -O2 -mavx2 -mfma -pthread benches/peak_fma.c -o /tmp/peak_fma && /tmp/peak_fma 2
// The model costs ~21.2 MFLOP per word piece plus attention (~0.9 more at SciFact-like lengths), so
// tokens/s x 22e6 / this figure is the fraction of peak an embedder reaches.
#include <immintrin.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define CHAINS 12
#define ITERATIONS 200000000L

static void *spin(void *out) {
    __m256 acc[CHAINS];
    const __m256 mul = _mm256_set1_ps(1.0000001f), add = _mm256_set1_ps(1e-7f);
    for (int i = 0; i < CHAINS; i++) acc[i] = _mm256_set1_ps((float)i);
    for (long n = 0; n < ITERATIONS; n++) {
#pragma GCC unroll 12
        for (int i = 0; i < CHAINS; i++) acc[i] = _mm256_fmadd_ps(acc[i], mul, add);
    }
    // Store a result so that the compiler cannot drop the loop.
    float lanes[8], sum = 0;
    for (int i = 0; i < CHAINS; i++) {
        _mm256_storeu_ps(lanes, acc[i]);
        sum += lanes[0];
    }
    *(float *)out = sum;
    return NULL;
}

int main(int argc, char **argv) {
    int threads = argc > 1 ? atoi(argv[1]) : 2;
    if (threads < 1 || threads > 256) {
        fprintf(stderr, "usage: %s [THREADS 1..256]\n", argv[0]);
        return 2;
    }
    pthread_t *ids = calloc(threads, sizeof *ids);
    float *sums = calloc(threads, sizeof *sums);
    struct timespec start, end;
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (int t = 0; t < threads; t++) pthread_create(&ids[t], NULL, spin, &sums[t]);
    for (int t = 0; t < threads; t++) pthread_join(ids[t], NULL);
    clock_gettime(CLOCK_MONOTONIC, &end);
    double seconds = (end.tv_sec - start.tv_sec) + (end.tv_nsec - start.tv_nsec) / 1e9;
    // 8 lanes x 2 flops (multiply and add) per FMA.
    double flops = (double)threads * ITERATIONS * CHAINS * 16;
    printf("%d threads: %.1f GFLOP/s fp32 (checksum %g)\n", threads, flops / seconds / 1e9, sums[0]);
    free(ids);
    free(sums);
    return 0;
}
