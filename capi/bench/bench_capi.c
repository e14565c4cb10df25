/*
 * C ABI benchmark, one run, figures as ratios:
 *  1. a whole model (a shape list such as support/models/resnet50.txt) stepped with one
 *     rmsprop_step_multi_f32 call against one rmsprop_step_f32 call per tensor, on a serial
 *     context and on a pool context (alternating, best of several rounds);
 *  2. a small step (64 elements) on a serial context and on a pool context: the pool must not
 *     be used for it (the old ABI moved every call to a pool thread: 7 us instead of 0.06 us).
 *
 *   cc -std=c11 -O2 capi/bench/bench_capi.c $(pkg-config --cflags --libs rmsprop_simd) -o bench_capi
 *   ./bench_capi support/models/resnet50.txt
 */
#define _POSIX_C_SOURCE 199309L
#include <rmsprop_simd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static RmspropContext *context(uint32_t threads) {
    RmspropContextOptions o;
    rmsprop_context_options_init(&o, sizeof o);
    o.threads = threads;
    RmspropContext *ctx = NULL;
    if (rmsprop_context_create(&o, &ctx) != RMSPROP_OK) exit(2);
    return ctx;
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s SHAPE_LIST\n", argv[0]);
        return 2;
    }
    FILE *f = fopen(argv[1], "r");
    if (!f) {
        perror(argv[1]);
        return 2;
    }
    size_t cap = 1024, count = 0, total = 0;
    size_t *lens = malloc(cap * sizeof(size_t));
    char line[512];
    while (fgets(line, sizeof line, f)) {
        if (line[0] == '#' || line[0] == '\n') continue;
        char name[256], shape[256];
        if (sscanf(line, "%255s %255s", name, shape) != 2) continue;
        size_t n = 1;
        for (char *p = strtok(shape, "x"); p; p = strtok(NULL, "x")) n *= strtoull(p, NULL, 10);
        lens[count++] = n;
        total += n;
    }
    fclose(f);
    float **p = malloc(count * sizeof(float *)), **v = malloc(count * sizeof(float *));
    const float **g = malloc(count * sizeof(float *));
    const RmspropHyperparameters **hps = malloc(count * sizeof(void *));
    RmspropHyperparameters hp;
    rmsprop_hyperparameters_init(&hp, sizeof hp);
    for (size_t i = 0; i < count; i++) {
        p[i] = malloc(lens[i] * sizeof(float));
        v[i] = calloc(lens[i], sizeof(float));
        float *gi = malloc(lens[i] * sizeof(float));
        for (size_t k = 0; k < lens[i]; k++) {
            p[i][k] = 0.5f;
            gi[k] = 1e-3f * (float)(1 + (k + i) % 100);
        }
        g[i] = gi;
        hps[i] = &hp;
    }
    printf("%s: %zu tensors, %zu elements\n", argv[1], count, total);
    printf("context  | multi-tensor call | one call per tensor | ratio\n");
    for (uint32_t threads = 1; threads <= 2; threads++) {
        RmspropContext *ctx = context(threads);
        double best_multi = 1e9, best_each = 1e9;
        for (int round = 0; round < 7; round++) {
            double t0 = now();
            rmsprop_step_multi_f32(ctx, count, hps, lens, p, g, v, NULL, NULL);
            double t1 = now();
            for (size_t i = 0; i < count; i++) rmsprop_step_f32(ctx, &hp, lens[i], p[i], g[i], v[i], NULL, NULL);
            double t2 = now();
            if (t1 - t0 < best_multi) best_multi = t1 - t0;
            if (t2 - t1 < best_each) best_each = t2 - t1;
        }
        printf("%u thread%s | %8.2f ms         | %8.2f ms           | %.2fx\n", threads, threads > 1 ? "s" : " ",
               1e3 * best_multi, 1e3 * best_each, best_each / best_multi);
        rmsprop_context_free(ctx);
    }
    /* a small step: serial context vs pool context */
    enum { SMALL = 64, REPS = 200000 };
    float sp[SMALL], sg[SMALL], sv[SMALL];
    for (int i = 0; i < SMALL; i++) sp[i] = 1.0f, sg[i] = 0.5f, sv[i] = 0.0f;
    RmspropContext *serial = context(1), *pool = context(2);
    double best[2] = {1e9, 1e9};
    for (int round = 0; round < 5; round++) {
        for (int c = 0; c < 2; c++) {
            RmspropContext *ctx = c ? pool : serial;
            double t0 = now();
            for (int r = 0; r < REPS; r++) rmsprop_step_f32(ctx, &hp, SMALL, sp, sg, sv, NULL, NULL);
            double per = (now() - t0) / REPS;
            if (per < best[c]) best[c] = per;
        }
    }
    printf("64-element step: serial context %.3f us, pool context %.3f us (%.2fx)\n", 1e6 * best[0], 1e6 * best[1],
           best[1] / best[0]);
    rmsprop_context_free(serial);
    rmsprop_context_free(pool);
    return 0;
}
