/*
 * Tests the C ABI v1 from C:
 *  - every golden case of the project's PyTorch set through rmsprop_step_f32/f64 on every
 *    available backend, with a serial context and with pool contexts; the whole set at once
 *    through rmsprop_step_multi_f32/f64 (one call per step, tensors without a gradient skipped);
 *  - every error code, checking that nothing was written and that the context says why;
 *  - many threads on one context and on several contexts;
 *  - a forked child stepping with its parent's pool context;
 *  - calls from a thread-exit destructor;
 *  - FTZ/DAZ set by the caller: serial and pool results identical, and different from the
 *    default environment (so the comparison can fail);
 *  - versions and struct layouts.
 *
 *   python3 capi/tests/c/cases_to_text.py tests/golden/torch-2.15/cases.json > cases.txt
 *   cc -std=c11 -Wall -Wextra -Werror capi/tests/c/test_capi.c $(pkg-config --cflags --libs rmsprop_simd) -lm -lpthread
 *   ./a.out tests/golden/torch-2.15 < cases.txt
 *
 * Prints one line per check group and "N passed, N failed"; exits non-zero on any failure.
 */
#define _GNU_SOURCE
#include "rmsprop_simd.h"

#include <math.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#if defined(__x86_64__)
#include <xmmintrin.h>
#endif

static int passed = 0, failed = 0;
static pthread_mutex_t count_lock = PTHREAD_MUTEX_INITIALIZER;

#define CHECK(cond, ...)                                                                 \
    do {                                                                                 \
        bool ok_ = (cond);                                                               \
        pthread_mutex_lock(&count_lock);                                                 \
        if (ok_) {                                                                       \
            passed++;                                                                    \
        } else {                                                                         \
            failed++;                                                                    \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);                        \
            fprintf(stderr, __VA_ARGS__);                                                \
            fprintf(stderr, "\n");                                                       \
        }                                                                                \
        pthread_mutex_unlock(&count_lock);                                               \
    } while (0)

static const char *msg(const RmspropContext *ctx) {
    static _Thread_local char buf[512];
    rmsprop_context_last_error(ctx, buf, sizeof buf);
    return buf;
}

static RmspropContext *context(int backend, uint32_t threads, uint64_t min_len) {
    RmspropContextOptions o;
    rmsprop_context_options_init(&o, sizeof o);
    o.backend = backend;
    o.threads = threads;
    o.parallel_min_len = min_len;
    RmspropContext *ctx = NULL;
    int rc = rmsprop_context_create(&o, &ctx);
    if (rc != RMSPROP_OK || !ctx) {
        fprintf(stderr, "cannot create a context (backend %d, %u threads): %s\n", backend, threads,
                rmsprop_error_string(rc));
        exit(2);
    }
    return ctx;
}

/* ------------------------------------------------------------------ golden cases */

typedef struct {
    char name[128], dtype[8];
    size_t n, steps;
    double alpha, eps, weight_decay, momentum, tol_f32, tol_f64;
    int centered, maximize;
    char files[6][256]; /* params0 grads params square_avg grad_avg momentum_buffer ("-" absent) */
    int semantics, eps_in_sqrt, nesterov, bias_correction; /* 0 PyTorch, 1 optax, 2 Keras */
    double initial_scale;                                  /* optax: square_avg's start */
    double *lr;
} Case;

static void *read_file(const char *dir, const char *name, size_t bytes) {
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "cannot open %s\n", path);
        exit(2);
    }
    void *data = malloc(bytes ? bytes : 1);
    size_t got = fread(data, 1, bytes, f);
    fclose(f);
    if (got != bytes) {
        fprintf(stderr, "%s: read %zu of %zu bytes\n", path, got, bytes);
        exit(2);
    }
    return data; /* the files are little-endian, as is every target this test runs on */
}

/* The golden rule: NaN/+Inf/-Inf positions equal; max|x-e| <= tol * max(max|e-r|, tiny). */
static double rel_error(const double *x, const double *e, const double *r, size_t n, double tiny) {
    double scale = 0, worst = 0;
    for (size_t i = 0; i < n; i++) {
        int cx = isnan(x[i]) ? 1 : isinf(x[i]) ? (x[i] > 0 ? 2 : 3) : 0;
        int ce = isnan(e[i]) ? 1 : isinf(e[i]) ? (e[i] > 0 ? 2 : 3) : 0;
        if (cx != ce) return INFINITY;
        if (ce == 0) {
            scale = fmax(scale, fabs(e[i] - r[i]));
            worst = fmax(worst, fabs(x[i] - e[i]));
        }
    }
    return worst / fmax(scale, tiny);
}

static double *widen(const void *data, size_t n, bool f32) {
    double *out = malloc((n ? n : 1) * sizeof(double));
    for (size_t i = 0; i < n; i++) out[i] = f32 ? ((const float *)data)[i] : ((const double *)data)[i];
    return out;
}

/* One case's buffers. */
typedef struct {
    void *params, *params0, *square_avg, *grad_avg, *momentum_buffer;
    char *grads;
    RmspropHyperparameters hp;
} Run;

static void run_open(const char *dir, const Case *c, Run *r) {
    size_t es = strcmp(c->dtype, "f32") == 0 ? 4 : 8, n = c->n;
    r->params = read_file(dir, c->files[0], n * es);
    r->params0 = read_file(dir, c->files[0], n * es);
    r->grads = read_file(dir, c->files[1], c->steps * n * es);
    r->square_avg = calloc(n ? n : 1, es);
    for (size_t i = 0; i < n; i++) {
        if (es == 4)
            ((float *)r->square_avg)[i] = (float)c->initial_scale;
        else
            ((double *)r->square_avg)[i] = c->initial_scale;
    }
    r->grad_avg = strcmp(c->files[4], "-") ? calloc(n ? n : 1, es) : NULL;
    r->momentum_buffer = strcmp(c->files[5], "-") ? calloc(n ? n : 1, es) : NULL;
    if (c->semantics == 1)
        rmsprop_hyperparameters_init_optax(&r->hp, sizeof r->hp, 0.0);
    else if (c->semantics == 2)
        rmsprop_hyperparameters_init_keras(&r->hp, sizeof r->hp);
    else
        rmsprop_hyperparameters_init(&r->hp, sizeof r->hp);
    r->hp.eps_in_sqrt = (uint8_t)c->eps_in_sqrt;
    r->hp.nesterov = (uint8_t)c->nesterov;
    r->hp.bias_correction = (uint8_t)c->bias_correction;
    r->hp.alpha = c->alpha;
    r->hp.eps = c->eps;
    r->hp.weight_decay = c->weight_decay;
    r->hp.momentum = c->momentum;
    r->hp.centered = (uint8_t)c->centered;
    r->hp.maximize = (uint8_t)c->maximize;
}

static void run_check(const char *dir, const Case *c, Run *r, const char *how) {
    bool f32 = strcmp(c->dtype, "f32") == 0;
    size_t es = f32 ? 4 : 8, n = c->n;
    double tol = f32 ? c->tol_f32 : c->tol_f64, tiny = f32 ? 1.17549435e-38 : 2.2250738585072014e-308;
    double *zeros = calloc(n ? n : 1, sizeof(double));
    double *v0 = malloc((n ? n : 1) * sizeof(double));
    for (size_t i = 0; i < n; i++) v0[i] = f32 ? (double)(float)c->initial_scale : c->initial_scale;
    void *got[4] = {r->params, r->square_avg, r->grad_avg, r->momentum_buffer};
    const char *names[4] = {"params", "square_avg", "grad_avg", "momentum_buffer"};
    double *start = widen(r->params0, n, f32);
    for (int k = 0; k < 4; k++) {
        if (strcmp(c->files[2 + k], "-") == 0) continue;
        void *expected = read_file(dir, c->files[2 + k], n * es);
        double *x = widen(got[k], n, f32), *e = widen(expected, n, f32);
        double err = rel_error(x, e, k == 0 ? start : k == 1 ? v0 : zeros, n, tiny);
        CHECK(err <= tol, "%s %s (%s): relative error %g > %g", c->name, names[k], how, err, tol);
        free(x);
        free(e);
        free(expected);
    }
    free(start);
    free(zeros);
    free(v0);
    free(r->params);
    free(r->params0);
    free(r->grads);
    free(r->square_avg);
    free(r->grad_avg);
    free(r->momentum_buffer);
}

static void run_case(const char *dir, const Case *c, RmspropContext *ctx, const char *how) {
    bool f32 = strcmp(c->dtype, "f32") == 0;
    size_t es = f32 ? 4 : 8, n = c->n;
    Run r;
    run_open(dir, c, &r);
    for (size_t s = 0; s < c->steps; s++) {
        r.hp.lr = c->lr[s];
        r.hp.step = s + 1;
        int rc = f32 ? rmsprop_step_f32(ctx, &r.hp, n, r.params, (const float *)(r.grads + s * n * es),
                                        r.square_avg, r.grad_avg, r.momentum_buffer)
                     : rmsprop_step_f64(ctx, &r.hp, n, r.params, (const double *)(r.grads + s * n * es),
                                        r.square_avg, r.grad_avg, r.momentum_buffer);
        CHECK(rc == RMSPROP_OK, "%s step %zu: %d %s", c->name, s, rc, msg(ctx));
    }
    run_check(dir, c, &r, how);
}

/* Every case of one dtype as one tensor of a multi-tensor step: one call per step; a case whose
 * steps are over has a NULL gradient (skipped, as PyTorch skips a parameter without grad). */
static void run_multi(const char *dir, const Case *cases, size_t count, bool f32, RmspropContext *ctx,
                      const char *how) {
    Run *runs = calloc(count, sizeof(Run));
    const Case **sel = calloc(count, sizeof(Case *));
    size_t m = 0, max_steps = 0, es = f32 ? 4 : 8;
    for (size_t i = 0; i < count; i++) {
        if ((strcmp(cases[i].dtype, "f32") == 0) != f32) continue;
        sel[m] = &cases[i];
        run_open(dir, &cases[i], &runs[m]);
        if (cases[i].steps > max_steps) max_steps = cases[i].steps;
        m++;
    }
    const RmspropHyperparameters **hps = calloc(m, sizeof(void *));
    size_t *lens = calloc(m, sizeof(size_t));
    void **p = calloc(m, sizeof(void *)), **v = calloc(m, sizeof(void *)), **ga = calloc(m, sizeof(void *)),
         **b = calloc(m, sizeof(void *));
    const void **g = calloc(m, sizeof(void *));
    for (size_t s = 0; s < max_steps; s++) {
        for (size_t i = 0; i < m; i++) {
            const Case *c = sel[i];
            runs[i].hp.lr = s < c->steps ? c->lr[s] : 0.0;
            runs[i].hp.step = s + 1;
            hps[i] = &runs[i].hp;
            lens[i] = c->n;
            p[i] = runs[i].params;
            g[i] = s < c->steps ? runs[i].grads + s * c->n * es : NULL;
            v[i] = runs[i].square_avg;
            ga[i] = runs[i].grad_avg;
            b[i] = runs[i].momentum_buffer;
        }
        int rc = f32 ? rmsprop_step_multi_f32(ctx, m, hps, lens, (float *const *)p, (const float *const *)g,
                                              (float *const *)v, (float *const *)ga, (float *const *)b)
                     : rmsprop_step_multi_f64(ctx, m, hps, lens, (double *const *)p, (const double *const *)g,
                                              (double *const *)v, (double *const *)ga, (double *const *)b);
        CHECK(rc == RMSPROP_OK, "multi step %zu: %d %s", s, rc, msg(ctx));
    }
    for (size_t i = 0; i < m; i++) run_check(dir, sel[i], &runs[i], how);
    free(runs);
    free(sel);
    free(hps);
    free(lens);
    free(p);
    free(v);
    free(ga);
    free(b);
    free(g);
}

static size_t read_cases(Case *cases, size_t max) {
    size_t count = 0;
    static char line[65536];
    while (count < max && fgets(line, sizeof line, stdin)) {
        Case *c = &cases[count];
        int off = 0;
        if (sscanf(line,
                   "%127s %7s %zu %zu %lf %lf %lf %lf %d %d %lf %lf %255s %255s %255s %255s %255s %255s "
                   "%d %d %d %d %lf%n",
                   c->name, c->dtype, &c->n, &c->steps, &c->alpha, &c->eps, &c->weight_decay, &c->momentum,
                   &c->centered, &c->maximize, &c->tol_f32, &c->tol_f64, c->files[0], c->files[1], c->files[2],
                   c->files[3], c->files[4], c->files[5], &c->semantics, &c->eps_in_sqrt, &c->nesterov,
                   &c->bias_correction, &c->initial_scale, &off) != 23) {
            fprintf(stderr, "malformed case line: %s\n", line);
            exit(2);
        }
        c->lr = malloc((c->steps ? c->steps : 1) * sizeof(double));
        char *p = line + off;
        for (size_t s = 0; s < c->steps; s++) {
            char *end;
            c->lr[s] = strtod(p, &end);
            if (end == p) {
                fprintf(stderr, "%s: %zu learning rates for %zu steps\n", c->name, s, c->steps);
                exit(2);
            }
            p = end;
        }
        count++;
    }
    if (count == 0) {
        fprintf(stderr, "no golden cases on stdin\n");
        exit(2);
    }
    return count;
}

static void test_golden(const char *dir, Case *cases, size_t count) {
    int backends[] = {RMSPROP_BACKEND_SCALAR, RMSPROP_BACKEND_AVX2_FMA, RMSPROP_BACKEND_AVX512, RMSPROP_BACKEND_NEON};
    uint32_t threads[] = {1, 2, 3};
    for (int bi = 0; bi < 4; bi++) {
        if (!rmsprop_backend_available(backends[bi])) {
            printf("golden: SKIPPING backend %d: not supported on this CPU\n", backends[bi]);
            continue;
        }
        int before = failed;
        for (int t = 0; t < 3; t++) {
            /* a small threshold, so that even short cases are split across the pool */
            RmspropContext *ctx = context(backends[bi], threads[t], 128);
            CHECK(rmsprop_context_backend(ctx) == backends[bi], "context backend");
            CHECK(rmsprop_context_threads(ctx) == threads[t], "context threads");
            char how[64];
            snprintf(how, sizeof how, "backend %d, %u threads", backends[bi], threads[t]);
            for (size_t i = 0; i < count; i++) run_case(dir, &cases[i], ctx, how);
            snprintf(how, sizeof how, "multi, backend %d, %u threads", backends[bi], threads[t]);
            run_multi(dir, cases, count, true, ctx, how);
            run_multi(dir, cases, count, false, ctx, how);
            rmsprop_context_free(ctx);
        }
        printf("golden: backend %d, %zu cases, single and multi-tensor, threads {1,2,3}: %s\n", backends[bi],
               count, failed == before ? "ok" : "FAILED");
    }
}

/* ------------------------------------------------------------------ error codes */

#define N 300
static float P[N], G[N], V[N], GA[N], B[N];
static float P0[N], V0[N], GA0[N], B0[N];

static void fill(void) {
    for (int i = 0; i < N; i++) {
        P[i] = P0[i] = 1.0f + (float)i;
        G[i] = 0.5f;
        V[i] = V0[i] = 2.0f;
        GA[i] = GA0[i] = 0.25f;
        B[i] = B0[i] = -1.0f;
    }
}

static bool untouched(void) {
    return memcmp(P, P0, sizeof P) == 0 && memcmp(V, V0, sizeof V) == 0 && memcmp(GA, GA0, sizeof GA) == 0 &&
           memcmp(B, B0, sizeof B) == 0;
}

#define EXPECT_ERR(ctx, call, code, needle)                                                                 \
    do {                                                                                                    \
        fill();                                                                                             \
        int rc_ = (call);                                                                                   \
        CHECK(rc_ == (code), "%s: got %d (%s), want %d", #call, rc_, msg(ctx), (code));                    \
        CHECK(untouched(), "%s: buffers changed on error", #call);                                         \
        CHECK(strstr(msg(ctx), (needle)) != NULL, "%s: message '%s' lacks '%s'", #call, msg(ctx), (needle)); \
        printf("error path %-60.60s -> %2d: %s\n", #call, rc_, msg(ctx));                                  \
    } while (0)

static void test_errors(void) {
    RmspropContext *ctx = context(RMSPROP_BACKEND_AUTO, 1, 0);
    RmspropHyperparameters hp, cm;
    rmsprop_hyperparameters_init(&hp, sizeof hp);
    rmsprop_hyperparameters_init(&cm, sizeof cm);
    cm.centered = 1;
    cm.momentum = 0.9;
    EXPECT_ERR(ctx, rmsprop_step_f32(ctx, NULL, N, P, G, V, NULL, NULL), RMSPROP_ERROR_NULL_POINTER, "hp");
    EXPECT_ERR(ctx, rmsprop_step_f32(ctx, &hp, N, NULL, G, V, NULL, NULL), RMSPROP_ERROR_NULL_POINTER, "params");
    EXPECT_ERR(ctx, rmsprop_step_f32(ctx, &hp, N, P, NULL, V, NULL, NULL), RMSPROP_ERROR_NULL_POINTER, "grads");
    EXPECT_ERR(ctx, rmsprop_step_f32(ctx, &hp, N, P, G, NULL, NULL, NULL), RMSPROP_ERROR_NULL_POINTER,
               "square_avg");
    EXPECT_ERR(ctx, rmsprop_step_f32(ctx, &hp, N - 1, (float *)((char *)P + 1), G, V, NULL, NULL),
               RMSPROP_ERROR_MISALIGNED, "aligned");
    EXPECT_ERR(ctx, rmsprop_step_f32(ctx, &hp, N, P, G, P + 10, NULL, NULL), RMSPROP_ERROR_OVERLAP, "overlap");
    EXPECT_ERR(ctx, rmsprop_step_f32(ctx, &hp, N, P, P, V, NULL, NULL), RMSPROP_ERROR_OVERLAP, "grads");
    EXPECT_ERR(ctx, rmsprop_step_f32(ctx, &cm, N, P, G, V, GA, GA + 5), RMSPROP_ERROR_OVERLAP, "overlap");
    EXPECT_ERR(ctx, rmsprop_step_f32(ctx, &hp, SIZE_MAX / 2, P, G, V, NULL, NULL), RMSPROP_ERROR_LENGTH_MISMATCH,
               "address space");
    EXPECT_ERR(ctx, rmsprop_step_f32(ctx, &cm, N, P, G, V, NULL, B), RMSPROP_ERROR_MISSING_STATE, "grad_avg");
    EXPECT_ERR(ctx, rmsprop_step_f32(ctx, &cm, N, P, G, V, GA, NULL), RMSPROP_ERROR_MISSING_STATE,
               "momentum_buffer");
    EXPECT_ERR(ctx, rmsprop_step_f32(ctx, &hp, N, P, G, V, GA, NULL), RMSPROP_ERROR_UNEXPECTED_STATE, "grad_avg");
    EXPECT_ERR(ctx, rmsprop_step_f32(ctx, &hp, N, P, G, V, NULL, B), RMSPROP_ERROR_UNEXPECTED_STATE,
               "momentum_buffer");
    const char *fields[] = {"lr", "alpha", "eps", "weight_decay", "momentum"};
    double bad[] = {-1.0, NAN, INFINITY, 1e300};
    for (int f = 0; f < 5; f++) {
        for (int k = 0; k < 4; k++) {
            RmspropHyperparameters h = hp;
            double *field = f == 0 ? &h.lr : f == 1 ? &h.alpha : f == 2 ? &h.eps : f == 3 ? &h.weight_decay : &h.momentum;
            *field = bad[k];
            float *mb = f == 4 && !(bad[k] != bad[k]) && bad[k] > 0 ? B : NULL;
            EXPECT_ERR(ctx, rmsprop_step_f32(ctx, &h, N, P, G, V, NULL, mb), RMSPROP_ERROR_INVALID_HYPERPARAMETER,
                       fields[f]);
        }
    }
    RmspropHyperparameters h = hp;
    h.version = 3;
    EXPECT_ERR(ctx, rmsprop_step_f32(ctx, &h, N, P, G, V, NULL, NULL), RMSPROP_ERROR_STRUCT_SIZE, "version");
    h = hp;
    h.struct_size = 64; /* version 2 is 72 bytes */
    EXPECT_ERR(ctx, rmsprop_step_f32(ctx, &h, N, P, G, V, NULL, NULL), RMSPROP_ERROR_STRUCT_SIZE, "struct_size");
    h = hp;
    h.reserved[0] = 1;
    EXPECT_ERR(ctx, rmsprop_step_f32(ctx, &h, N, P, G, V, NULL, NULL), RMSPROP_ERROR_STRUCT_SIZE, "reserved");
    /* multi-tensor: the message names the tensor; a bad second tensor writes nothing in the first */
    {
        const RmspropHyperparameters *hps[2] = {&hp, &cm};
        size_t lens[2] = {N / 2, N / 2};
        float *ps[2] = {P, P + N / 2};
        const float *gs[2] = {G, G + N / 2};
        float *vs[2] = {V, V + N / 2};
        float *gas[2] = {NULL, NULL}; /* tensor 1 is centered: missing */
        float *bs[2] = {NULL, B};
        EXPECT_ERR(ctx, rmsprop_step_multi_f32(ctx, 2, hps, lens, ps, gs, vs, gas, bs), RMSPROP_ERROR_MISSING_STATE,
                   "tensor 1: grad_avg");
        const RmspropHyperparameters *plain[2] = {&hp, &hp};
        float *ps_overlap[2] = {P, P + 10};
        EXPECT_ERR(ctx, rmsprop_step_multi_f32(ctx, 2, plain, lens, ps_overlap, gs, vs, NULL, NULL),
                   RMSPROP_ERROR_OVERLAP, "tensor");
        EXPECT_ERR(ctx, rmsprop_step_multi_f32(ctx, 2, NULL, lens, ps, gs, vs, NULL, bs), RMSPROP_ERROR_NULL_POINTER,
                   "hps");
    }
    /* contexts */
    RmspropContextOptions o;
    rmsprop_context_options_init(&o, sizeof o);
    o.backend = 42;
    RmspropContext *none = (RmspropContext *)&o;
    CHECK(rmsprop_context_create(&o, &none) == RMSPROP_ERROR_UNSUPPORTED_BACKEND && none == NULL, "backend 42");
    rmsprop_context_options_init(&o, sizeof o);
    o.reserved[2] = 7;
    CHECK(rmsprop_context_create(&o, &none) == RMSPROP_ERROR_STRUCT_SIZE, "options reserved");
    CHECK(rmsprop_context_create(NULL, NULL) == RMSPROP_ERROR_NULL_POINTER, "out NULL");
    CHECK(rmsprop_step_f32(NULL, &hp, N, P, G, V, NULL, NULL) == RMSPROP_ERROR_NULL_POINTER, "ctx NULL");
    CHECK(rmsprop_hyperparameters_init(NULL, 72) == RMSPROP_ERROR_NULL_POINTER, "init NULL");
    /* a caller compiled against the version-1 header (64 bytes): the library writes version 1
     * and not one byte more, and refuses what version 1 cannot say */
    {
        unsigned char old[64 + 16];
        memset(old, 0xA5, sizeof old);
        CHECK(rmsprop_hyperparameters_init((RmspropHyperparameters *)old, 64) == RMSPROP_OK, "init v1");
        bool canary = true;
        for (size_t i = 64; i < sizeof old; i++) canary = canary && old[i] == 0xA5;
        CHECK(canary, "init wrote past the caller's 64 bytes");
        uint32_t head[2];
        memcpy(head, old, sizeof head);
        CHECK(head[0] == 64 && head[1] == 1, "v1 header: size %u version %u", head[0], head[1]);
        CHECK(rmsprop_hyperparameters_init_optax((RmspropHyperparameters *)old, 64, 0.1) == RMSPROP_ERROR_STRUCT_SIZE,
              "optax needs version 2");
        CHECK(rmsprop_hyperparameters_init((RmspropHyperparameters *)old, 63) == RMSPROP_ERROR_STRUCT_SIZE, "too small");
        CHECK(rmsprop_context_options_init((RmspropContextOptions *)old, 39) == RMSPROP_ERROR_STRUCT_SIZE,
              "options too small");
        /* and a version-1 struct steps, as PyTorch's semantics */
        fill();
        CHECK(rmsprop_step_f32(ctx, (const RmspropHyperparameters *)old, N, P, G, V, NULL, NULL) == RMSPROP_OK,
              "v1 step: %s", msg(ctx));
    }
    rmsprop_context_free(NULL);
    /* the message is copied snprintf-style */
    fill();
    rmsprop_step_f32(ctx, &cm, N, P, G, V, NULL, B);
    char small[8];
    size_t full = rmsprop_context_last_error(ctx, small, sizeof small);
    CHECK(full > 7 && strlen(small) == 7, "truncated message: %zu, '%s'", full, small);
    CHECK(strcmp(rmsprop_error_string(RMSPROP_ERROR_OVERLAP), "two buffers overlap in memory") == 0, "strings");
    CHECK(strcmp(rmsprop_error_string(12345), "unknown error code") == 0, "unknown code");
    /* an empty step and an empty multi-step are valid no-ops */
    CHECK(rmsprop_step_f32(ctx, &cm, 0, NULL, NULL, NULL, NULL, NULL) == RMSPROP_OK, "empty: %s", msg(ctx));
    CHECK(rmsprop_step_multi_f32(ctx, 0, NULL, NULL, NULL, NULL, NULL, NULL, NULL) == RMSPROP_OK, "count 0");
    rmsprop_context_free(ctx);
}

/* ------------------------------------------------------------------ threads */

#define BIG 300000 /* above the default threshold: the pool is used */

typedef struct {
    RmspropContext *ctx;
    float *p, *g, *v;
    size_t n;
    int steps, rc;
} Job;

static void *job_run(void *arg) {
    Job *j = arg;
    RmspropHyperparameters hp;
    rmsprop_hyperparameters_init(&hp, sizeof hp);
    j->rc = RMSPROP_OK;
    for (int s = 0; s < j->steps && j->rc == RMSPROP_OK; s++) {
        hp.lr = 0.01 / (1 + s);
        j->rc = rmsprop_step_f32(j->ctx, &hp, j->n, j->p, j->g, j->v, NULL, NULL);
    }
    return NULL;
}

static void job_alloc(Job *j, RmspropContext *ctx, size_t n, int steps, unsigned seed) {
    j->ctx = ctx;
    j->n = n;
    j->steps = steps;
    j->p = malloc(n * sizeof(float));
    j->g = malloc(n * sizeof(float));
    j->v = calloc(n, sizeof(float));
    for (size_t i = 0; i < n; i++) {
        j->p[i] = (float)((i * 7 + seed) % 101) / 50.0f - 1.0f;
        j->g[i] = (float)((i * 13 + seed * 3) % 97) / 97.0f - 0.4f;
    }
}

static void job_free(Job *j) {
    free(j->p);
    free(j->g);
    free(j->v);
}

static void test_threads(void) {
    enum { T = 8 };
    RmspropContext *serial = context(RMSPROP_BACKEND_AUTO, 1, 0);
    RmspropContext *shared = context(RMSPROP_BACKEND_AUTO, 2, 0);
    RmspropContext *own[T];
    Job want[T], one[T], many[T];
    pthread_t th[T];
    for (int t = 0; t < T; t++) {
        size_t n = t % 2 ? BIG : 1000 + t; /* large (pool) and small (calling thread) steps */
        own[t] = context(RMSPROP_BACKEND_AUTO, 2, 4096);
        job_alloc(&want[t], serial, n, 5, (unsigned)t);
        job_alloc(&one[t], shared, n, 5, (unsigned)t);
        job_alloc(&many[t], own[t], n, 5, (unsigned)t);
        job_run(&want[t]);
    }
    for (int t = 0; t < T; t++) pthread_create(&th[t], NULL, job_run, &one[t]);
    for (int t = 0; t < T; t++) pthread_join(th[t], NULL);
    for (int t = 0; t < T; t++) pthread_create(&th[t], NULL, job_run, &many[t]);
    for (int t = 0; t < T; t++) pthread_join(th[t], NULL);
    for (int t = 0; t < T; t++) {
        CHECK(one[t].rc == RMSPROP_OK && many[t].rc == RMSPROP_OK, "thread %d: %d %d", t, one[t].rc, many[t].rc);
        CHECK(memcmp(one[t].p, want[t].p, want[t].n * sizeof(float)) == 0, "thread %d on one shared context", t);
        CHECK(memcmp(many[t].p, want[t].p, want[t].n * sizeof(float)) == 0, "thread %d on its own context", t);
        job_free(&want[t]);
        job_free(&one[t]);
        job_free(&many[t]);
        rmsprop_context_free(own[t]);
    }
    rmsprop_context_free(serial);
    rmsprop_context_free(shared);
    printf("threads: %d threads on one pool context and on %d contexts, equal to serial: %s\n", T, T,
           failed ? "see failures" : "ok");
}

/* ------------------------------------------------------------------ fork */

static void test_fork(void) {
    RmspropContext *pool = context(RMSPROP_BACKEND_AUTO, 2, 0);
    RmspropContext *serial = context(RMSPROP_BACKEND_AUTO, 1, 0);
    Job warm, child, want;
    job_alloc(&warm, pool, BIG, 2, 1);
    job_run(&warm); /* the pool's threads now exist in the parent */
    CHECK(warm.rc == RMSPROP_OK, "parent step");
    job_alloc(&want, serial, BIG, 3, 2);
    job_run(&want);
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        alarm(60); /* a hang (the old global pool) fails instead of blocking CI */
        job_alloc(&child, pool, BIG, 3, 2);
        job_run(&child);
        int ok = child.rc == RMSPROP_OK && memcmp(child.p, want.p, BIG * sizeof(float)) == 0;
        rmsprop_context_free(pool); /* the child may free its copy */
        _exit(ok ? 0 : 1);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "forked child stepping with the parent's pool context: status %d",
          status);
    /* the parent's context still works */
    job_alloc(&child, pool, BIG, 3, 2);
    job_run(&child);
    CHECK(child.rc == RMSPROP_OK && memcmp(child.p, want.p, BIG * sizeof(float)) == 0, "parent after fork");
    job_free(&warm);
    job_free(&child);
    job_free(&want);
    rmsprop_context_free(pool);
    rmsprop_context_free(serial);
    printf("fork: a child steps with its parent's pool context (the pool is recreated): %s\n",
           WIFEXITED(status) && WEXITSTATUS(status) == 0 ? "ok" : "FAILED");
}

/* ------------------------------------------------------------------ thread-exit destructors */

static pthread_key_t key;
static RmspropContext *dtor_ctx;
static int dtor_rc_ok = -100, dtor_rc_err = -100, dtor_msg_ok = 0;
static float DP[64], DG[64], DV[64];

static void destructor(void *value) {
    (void)value;
    RmspropHyperparameters hp;
    rmsprop_hyperparameters_init(&hp, sizeof hp);
    for (int i = 0; i < 64; i++) DG[i] = 0.5f;
    dtor_rc_ok = rmsprop_step_f32(dtor_ctx, &hp, 64, DP, DG, DV, NULL, NULL);
    hp.lr = -1;
    dtor_rc_err = rmsprop_step_f32(dtor_ctx, &hp, 64, DP, DG, DV, NULL, NULL);
    char buf[256];
    rmsprop_context_last_error(dtor_ctx, buf, sizeof buf);
    dtor_msg_ok = strstr(buf, "lr") != NULL;
    (void)rmsprop_error_string(dtor_rc_err);
}

static void *dtor_thread(void *arg) {
    (void)arg;
    pthread_setspecific(key, (void *)1);
    return NULL;
}

static void test_destructor(void) {
    dtor_ctx = context(RMSPROP_BACKEND_AUTO, 2, 0);
    pthread_key_create(&key, destructor);
    pthread_t t;
    pthread_create(&t, NULL, dtor_thread, NULL);
    pthread_join(t, NULL);
    CHECK(dtor_rc_ok == RMSPROP_OK, "step from a thread-exit destructor: %d", dtor_rc_ok);
    CHECK(dtor_rc_err == RMSPROP_ERROR_INVALID_HYPERPARAMETER, "error from a destructor: %d", dtor_rc_err);
    CHECK(dtor_msg_ok, "message from a destructor");
    CHECK(DP[0] != 0.0f, "the destructor's step ran");
    rmsprop_context_free(dtor_ctx);
    printf("thread-exit destructor: calls return their codes (%d, %d), no abort\n", dtor_rc_ok, dtor_rc_err);
}

/* ------------------------------------------------------------------ FTZ/DAZ */

#if defined(__x86_64__)
static unsigned fp_get(void) { return _mm_getcsr(); }
static void fp_set(unsigned v) { _mm_setcsr(v); }
static unsigned fp_flush(unsigned v) { return v | 0x8040; /* FTZ | DAZ */ }
#elif defined(__aarch64__)
static unsigned long fp_get(void) {
    unsigned long v;
    __asm__ volatile("mrs %0, fpcr" : "=r"(v));
    return v;
}
static void fp_set(unsigned long v) { __asm__ volatile("msr fpcr, %0" ::"r"(v)); }
static unsigned long fp_flush(unsigned long v) { return v | (1UL << 24); /* FZ */ }
#endif

#if defined(__x86_64__) || defined(__aarch64__)
static void ftz_run(RmspropContext *ctx, int flush, float *p) {
    float *g = malloc(BIG * sizeof(float)), *v = malloc(BIG * sizeof(float)), *b = malloc(BIG * sizeof(float));
    float tiny = 1.17549435e-38f / 4; /* subnormal */
    for (size_t i = 0; i < BIG; i++) {
        p[i] = tiny * (float)(1 + i % 3);
        g[i] = tiny * (float)(1 + i % 5);
        v[i] = tiny;
        b[i] = tiny;
    }
    RmspropHyperparameters hp;
    rmsprop_hyperparameters_init(&hp, sizeof hp);
    hp.lr = 1e-3;
    hp.momentum = 0.9;
    hp.weight_decay = 0.5;
    hp.eps = 0;
    __typeof__(fp_get()) saved = fp_get();
    if (flush) fp_set(fp_flush(saved));
    int rc = rmsprop_step_f32(ctx, &hp, BIG, p, g, v, NULL, b);
    fp_set(saved);
    CHECK(rc == RMSPROP_OK, "ftz step: %s", msg(ctx));
    free(g);
    free(v);
    free(b);
}

static void test_ftz(void) {
    RmspropContext *serial = context(RMSPROP_BACKEND_AUTO, 1, 0);
    RmspropContext *pool = context(RMSPROP_BACKEND_AUTO, 3, 1024);
    float *a = malloc(BIG * sizeof(float)), *b = malloc(BIG * sizeof(float)), *c = malloc(BIG * sizeof(float));
    ftz_run(serial, 1, a);
    ftz_run(pool, 1, b);
    ftz_run(serial, 0, c);
    size_t same = 0, differ = 0;
    for (size_t i = 0; i < BIG; i++) {
        same += memcmp(&a[i], &b[i], sizeof(float)) == 0;
        differ += memcmp(&a[i], &c[i], sizeof(float)) != 0;
    }
    CHECK(same == BIG, "FTZ|DAZ: pool differs from serial on %zu of %d elements", (size_t)BIG - same, BIG);
    CHECK(differ > BIG / 2, "FTZ|DAZ changed only %zu of %d results: the test would not notice", differ, BIG);
    printf("FTZ|DAZ: serial and pool identical on %zu of %d elements; %zu differ from the default environment\n",
           same, BIG, differ);
    free(a);
    free(b);
    free(c);
    rmsprop_context_free(serial);
    rmsprop_context_free(pool);
}
#endif

/* ------------------------------------------------------------------ main */


/* ------------------------------------------------------------------ 16-bit storage */

static float bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* IEEE nearest-even float -> bfloat16 (inputs here are finite). */
static uint16_t f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return (uint16_t)((u + 0x7FFF + ((u >> 16) & 1)) >> 16);
}

/* rmsprop_step_mixed, checked in C against its definition: widen every 16-bit value exactly,
 * run the float step (rmsprop_step_f32), round each result to nearest-even. All-bf16 storage,
 * and f32 master weights with bf16 gradients and a bf16 copy; every backend, serial and pool. */
static void test_mixed(void) {
    enum { M = 1001 };
    static uint16_t p16[M], g16[M], v16[M], copy[M];
    static float p[M], v[M], pe[M], ge[M], ve[M];
    RmspropHyperparameters hp;
    rmsprop_hyperparameters_init(&hp, sizeof hp);
    hp.lr = 1e-2;
    RmspropStepOptions opts;
    CHECK(rmsprop_step_options_init(&opts, sizeof opts) == RMSPROP_OK, "step options init");
    CHECK(sizeof(RmspropStepOptions) == 72, "step options layout: %zu bytes", sizeof(RmspropStepOptions));
    int backends[] = {RMSPROP_BACKEND_SCALAR, RMSPROP_BACKEND_AVX2_FMA, RMSPROP_BACKEND_AVX512, RMSPROP_BACKEND_NEON};
    for (size_t bi = 0; bi < 4; bi++) {
        if (!rmsprop_backend_available(backends[bi])) continue;
        for (uint32_t threads = 1; threads <= 2; threads++) {
            RmspropContext *ctx = context(backends[bi], threads, 64);
            for (size_t i = 0; i < M; i++) {
                p16[i] = f32_to_bf16((float)((i * 37) % 101) / 50.0f - 1.0f);
                g16[i] = f32_to_bf16((float)((i * 53) % 97) / 40.0f - 1.2f);
                v16[i] = f32_to_bf16((float)((i * 29) % 89) / 300.0f);
                pe[i] = bf16_to_f32(p16[i]);
                ge[i] = bf16_to_f32(g16[i]);
                ve[i] = bf16_to_f32(v16[i]);
                p[i] = pe[i];
                v[i] = ve[i];
            }
            RmspropContext *serial = context(backends[bi], 1, 0);
            int rc = rmsprop_step_f32(serial, &hp, M, pe, ge, ve, NULL, NULL);
            CHECK(rc == RMSPROP_OK, "float step: %d", rc);
            /* all bf16 */
            rc = rmsprop_step_mixed(ctx, &hp, &opts, M, p16, RMSPROP_DTYPE_BF16, g16, RMSPROP_DTYPE_BF16, v16, NULL,
                                    NULL, RMSPROP_DTYPE_BF16, NULL, RMSPROP_DTYPE_NONE);
            CHECK(rc == RMSPROP_OK, "mixed all-bf16: %d %s", rc, msg(ctx));
            size_t bad = 0;
            for (size_t i = 0; i < M; i++)
                bad += p16[i] != f32_to_bf16(pe[i]) || v16[i] != f32_to_bf16(ve[i]);
            CHECK(bad == 0, "all-bf16 (backend %d, %u threads): %zu elements differ from widen/step/round",
                  backends[bi], threads, bad);
            /* f32 master weights, bf16 gradients, a bf16 copy of the new params */
            rc = rmsprop_step_mixed(ctx, &hp, NULL, M, p, RMSPROP_DTYPE_F32, g16, RMSPROP_DTYPE_BF16, v, NULL, NULL,
                                    RMSPROP_DTYPE_F32, copy, RMSPROP_DTYPE_BF16);
            CHECK(rc == RMSPROP_OK, "mixed master: %d %s", rc, msg(ctx));
            bad = 0;
            for (size_t i = 0; i < M; i++)
                bad += memcmp(&p[i], &pe[i], 4) != 0 || memcmp(&v[i], &ve[i], 4) != 0 || copy[i] != f32_to_bf16(pe[i]);
            CHECK(bad == 0, "master + copy (backend %d, %u threads): %zu elements differ", backends[bi], threads, bad);
            /* an unknown dtype writes nothing */
            float before = p[0];
            rc = rmsprop_step_mixed(ctx, &hp, NULL, M, p, 7, g16, RMSPROP_DTYPE_BF16, v, NULL, NULL, RMSPROP_DTYPE_F32,
                                    NULL, RMSPROP_DTYPE_NONE);
            CHECK(rc == RMSPROP_ERROR_UNSUPPORTED_DTYPE && p[0] == before, "dtype 7: %d", rc);
            rmsprop_context_free(serial);
            rmsprop_context_free(ctx);
        }
    }
}

/* rmsprop_step_multi_mixed: one call over an all-bf16 tensor, an f32 master tensor with bf16
 * gradients and a bf16 copy, and a tensor without gradient equals one rmsprop_step_mixed per
 * tensor (nearest-even); a bad dtype in the last tensor refuses the call before the first is
 * written. Every backend, serial and pool. */
static void test_multi_mixed(void) {
    enum { M = 777 };
    static uint16_t a16[M], ag[M], av[M], b_g[M], bc[M], s16[M], c16[M];
    static uint16_t ra16[M], rav[M], rbc[M];
    static float bp[M], bv[M], rbp[M], rbv[M];
    RmspropHyperparameters hp;
    rmsprop_hyperparameters_init(&hp, sizeof hp);
    hp.lr = 1e-2;
    hp.momentum = 0;
    int backends[] = {RMSPROP_BACKEND_SCALAR, RMSPROP_BACKEND_AVX2_FMA, RMSPROP_BACKEND_AVX512, RMSPROP_BACKEND_NEON};
    for (size_t bi = 0; bi < 4; bi++) {
        if (!rmsprop_backend_available(backends[bi])) continue;
        for (uint32_t threads = 1; threads <= 2; threads++) {
            RmspropContext *ctx = context(backends[bi], threads, 64);
            for (size_t i = 0; i < M; i++) {
                a16[i] = ra16[i] = f32_to_bf16((float)((i * 37) % 101) / 50.0f - 1.0f);
                ag[i] = f32_to_bf16((float)((i * 53) % 97) / 40.0f - 1.2f);
                av[i] = rav[i] = f32_to_bf16((float)((i * 29) % 89) / 300.0f);
                b_g[i] = f32_to_bf16((float)((i * 31) % 83) / 30.0f - 1.1f);
                bp[i] = rbp[i] = (float)((i * 41) % 103) / 60.0f - 0.8f;
                bv[i] = rbv[i] = (float)((i * 43) % 79) / 200.0f;
                bc[i] = rbc[i] = 7;
                s16[i] = c16[i] = f32_to_bf16(0.25f);
            }
            const RmspropHyperparameters *hps[3] = {&hp, &hp, &hp};
            size_t lens[3] = {M, M, M};
            void *params[3] = {a16, bp, s16};
            int32_t pd[3] = {RMSPROP_DTYPE_BF16, RMSPROP_DTYPE_F32, RMSPROP_DTYPE_BF16};
            const void *grads[3] = {ag, b_g, NULL};
            int32_t gd[3] = {RMSPROP_DTYPE_BF16, RMSPROP_DTYPE_BF16, RMSPROP_DTYPE_BF16};
            void *sq[3] = {av, bv, c16};
            int32_t sd[3] = {RMSPROP_DTYPE_BF16, RMSPROP_DTYPE_F32, RMSPROP_DTYPE_BF16};
            uint16_t *copies[3] = {NULL, bc, NULL};
            int32_t cd[3] = {RMSPROP_DTYPE_NONE, RMSPROP_DTYPE_BF16, RMSPROP_DTYPE_NONE};
            /* a bad dtype in the last tensor: nothing written */
            sd[2] = 9;
            grads[2] = ag;
            int rc = rmsprop_step_multi_mixed(ctx, 3, hps, NULL, lens, params, pd, grads, gd, sq, NULL, NULL, sd,
                                              copies, cd);
            CHECK(rc == RMSPROP_ERROR_UNSUPPORTED_DTYPE && a16[0] == ra16[0] && bc[0] == 7 &&
                      strstr(msg(ctx), "tensor 2") != NULL,
                  "multi mixed, bad dtype: %d %s", rc, msg(ctx));
            sd[2] = RMSPROP_DTYPE_BF16;
            grads[2] = NULL;
            rc = rmsprop_step_multi_mixed(ctx, 3, hps, NULL, lens, params, pd, grads, gd, sq, NULL, NULL, sd, copies,
                                          cd);
            CHECK(rc == RMSPROP_OK, "multi mixed: %d %s", rc, msg(ctx));
            RmspropContext *serial = context(backends[bi], 1, 0);
            rc = rmsprop_step_mixed(serial, &hp, NULL, M, ra16, RMSPROP_DTYPE_BF16, ag, RMSPROP_DTYPE_BF16, rav, NULL,
                                    NULL, RMSPROP_DTYPE_BF16, NULL, RMSPROP_DTYPE_NONE);
            rc |= rmsprop_step_mixed(serial, &hp, NULL, M, rbp, RMSPROP_DTYPE_F32, b_g, RMSPROP_DTYPE_BF16, rbv, NULL,
                                     NULL, RMSPROP_DTYPE_F32, rbc, RMSPROP_DTYPE_BF16);
            CHECK(rc == RMSPROP_OK, "single mixed steps: %d", rc);
            size_t bad = 0, untouched = 0;
            for (size_t i = 0; i < M; i++) {
                bad += a16[i] != ra16[i] || av[i] != rav[i] || bc[i] != rbc[i];
                bad += memcmp(&bp[i], &rbp[i], 4) != 0 || memcmp(&bv[i], &rbv[i], 4) != 0;
                untouched += s16[i] == f32_to_bf16(0.25f) && c16[i] == f32_to_bf16(0.25f);
            }
            CHECK(bad == 0 && untouched == M, "multi mixed (backend %d, %u threads): %zu differ, %zu untouched",
                  backends[bi], threads, bad, untouched);
            rmsprop_context_free(serial);
            rmsprop_context_free(ctx);
        }
    }
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s GOLDEN_DIR < cases.txt\n", argv[0]);
        return 2;
    }
    CHECK(rmsprop_abi_version() == RMSPROP_ABI_VERSION, "ABI version %u", rmsprop_abi_version());
    CHECK(strlen(rmsprop_version()) > 0, "version string");
    CHECK(sizeof(RmspropHyperparameters) == 72, "hyperparameters layout: %zu bytes", sizeof(RmspropHyperparameters));
    CHECK(sizeof(RmspropContextOptions) == 40, "options layout: %zu bytes", sizeof(RmspropContextOptions));
    printf("rmsprop-simd %s, C ABI %u, detected backend %d\n", rmsprop_version(), rmsprop_abi_version(),
           rmsprop_backend_detect());
    static Case cases[256];
    size_t count = read_cases(cases, 256);
    test_golden(argv[1], cases, count);
    for (size_t i = 0; i < count; i++) free(cases[i].lr);
    test_errors();
    test_mixed();
    test_multi_mixed();
    test_threads();
    test_fork();
    test_destructor();
#if defined(__x86_64__) || defined(__aarch64__)
    test_ftz();
#else
    printf("FTZ|DAZ: NOT TESTED on this architecture\n");
#endif
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
