/*
 * Tests the C API from C: every golden case of the project's PyTorch set through
 * rmsprop_step_f32/f64 (on every available backend, serial and with a thread pool), then every
 * error code, checking that nothing was written on error.
 *
 *   python3 tests/c/cases_to_text.py tests/golden/torch-2.15/cases.json > cases.txt
 *   cc -std=c11 -Wall -Wextra -Werror -Iinclude tests/c/test_capi.c -Ltarget/release -lrmsprop_simd -lm
 *   ./a.out tests/golden/torch-2.15 < cases.txt
 *
 * Prints one line per check group and "N passed, N failed"; exits non-zero on any failure.
 */
#include "rmsprop_simd.h"

#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int passed = 0, failed = 0;

#define CHECK(cond, ...)                                                                 \
    do {                                                                                 \
        if (cond) {                                                                      \
            passed++;                                                                    \
        } else {                                                                         \
            failed++;                                                                    \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);                        \
            fprintf(stderr, __VA_ARGS__);                                                \
            fprintf(stderr, "\n");                                                       \
        }                                                                                \
    } while (0)

/* ------------------------------------------------------------------ golden cases */

typedef struct {
    char name[128], dtype[8];
    size_t n, steps;
    double alpha, eps, weight_decay, momentum, tol_f32, tol_f64;
    int centered, maximize;
    char files[6][256]; /* params0 grads params square_avg grad_avg momentum_buffer ("-" absent) */
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

static void run_case(const char *dir, const Case *c, int backend, size_t threads) {
    bool f32 = strcmp(c->dtype, "f32") == 0;
    size_t es = f32 ? 4 : 8, n = c->n;
    void *params = read_file(dir, c->files[0], n * es);
    void *params0 = read_file(dir, c->files[0], n * es);
    char *grads = read_file(dir, c->files[1], c->steps * n * es);
    void *square_avg = calloc(n ? n : 1, es);
    void *grad_avg = strcmp(c->files[4], "-") ? calloc(n ? n : 1, es) : NULL;
    void *momentum_buffer = strcmp(c->files[5], "-") ? calloc(n ? n : 1, es) : NULL;
    RmspropHyperparameters hp;
    CHECK(rmsprop_hyperparameters_init(&hp) == RMSPROP_OK, "init");
    hp.alpha = c->alpha;
    hp.eps = c->eps;
    hp.weight_decay = c->weight_decay;
    hp.momentum = c->momentum;
    hp.centered = (uint8_t)c->centered;
    hp.maximize = (uint8_t)c->maximize;
    CHECK(rmsprop_set_backend(backend) == RMSPROP_OK, "set backend %d", backend);
    CHECK(rmsprop_set_threads(threads) == RMSPROP_OK, "set threads %zu", threads);
    for (size_t s = 0; s < c->steps; s++) {
        hp.lr = c->lr[s];
        size_t gl = grad_avg ? n : 0, ml = momentum_buffer ? n : 0;
        int rc = f32 ? rmsprop_step_f32(&hp, params, n, (const float *)(grads + s * n * es), n, square_avg, n,
                                        grad_avg, gl, momentum_buffer, ml)
                     : rmsprop_step_f64(&hp, params, n, (const double *)(grads + s * n * es), n, square_avg, n,
                                        grad_avg, gl, momentum_buffer, ml);
        CHECK(rc == RMSPROP_OK, "%s step %zu: %d %s", c->name, s, rc, rmsprop_last_error_message());
    }
    double tol = f32 ? c->tol_f32 : c->tol_f64, tiny = f32 ? 1.17549435e-38 : 2.2250738585072014e-308;
    double *zeros = calloc(n ? n : 1, sizeof(double));
    void *got[4] = {params, square_avg, grad_avg, momentum_buffer};
    const char *names[4] = {"params", "square_avg", "grad_avg", "momentum_buffer"};
    double *start = widen(params0, n, f32);
    for (int k = 0; k < 4; k++) {
        if (strcmp(c->files[2 + k], "-") == 0) continue;
        void *expected = read_file(dir, c->files[2 + k], n * es);
        double *x = widen(got[k], n, f32), *e = widen(expected, n, f32);
        double err = rel_error(x, e, k == 0 ? start : zeros, n, tiny);
        CHECK(err <= tol, "%s %s backend %d threads %zu: relative error %g > %g", c->name, names[k], backend,
              threads, err, tol);
        free(x);
        free(e);
        free(expected);
    }
    free(start);
    free(zeros);
    free(params);
    free(params0);
    free(grads);
    free(square_avg);
    free(grad_avg);
    free(momentum_buffer);
}

static int run_golden(const char *dir) {
    Case cases[256];
    size_t count = 0;
    char line[65536];
    while (count < 256 && fgets(line, sizeof line, stdin)) {
        Case *c = &cases[count];
        int off = 0;
        if (sscanf(line, "%127s %7s %zu %zu %lf %lf %lf %lf %d %d %lf %lf %255s %255s %255s %255s %255s %255s%n",
                   c->name, c->dtype, &c->n, &c->steps, &c->alpha, &c->eps, &c->weight_decay, &c->momentum,
                   &c->centered, &c->maximize, &c->tol_f32, &c->tol_f64, c->files[0], c->files[1], c->files[2],
                   c->files[3], c->files[4], c->files[5], &off) != 18) {
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
    int backends[] = {RMSPROP_BACKEND_SCALAR, RMSPROP_BACKEND_AVX2_FMA, RMSPROP_BACKEND_AVX512, RMSPROP_BACKEND_NEON};
    size_t threads[] = {1, 2, 3};
    int before = failed;
    for (int b = 0; b < 4; b++) {
        if (!rmsprop_backend_available(backends[b])) {
            printf("golden: SKIPPING backend %d: not supported on this CPU\n", backends[b]);
            continue;
        }
        for (int t = 0; t < 3; t++)
            for (size_t i = 0; i < count; i++) run_case(dir, &cases[i], backends[b], threads[t]);
        printf("golden: backend %d, %zu cases x threads {1,2,3}: %s\n", backends[b], count,
               failed == before ? "ok" : "FAILED");
    }
    for (size_t i = 0; i < count; i++) free(cases[i].lr);
    CHECK(rmsprop_set_backend(RMSPROP_BACKEND_AUTO) == RMSPROP_OK, "auto");
    CHECK(rmsprop_set_threads(1) == RMSPROP_OK, "serial");
    return (int)count;
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
        B[i] = B0[i] = 0.125f;
    }
}

static bool untouched(void) {
    return !memcmp(P, P0, sizeof P) && !memcmp(V, V0, sizeof V) && !memcmp(GA, GA0, sizeof GA) &&
           !memcmp(B, B0, sizeof B);
}

/* Expects `rc` to be `code`, a non-empty message, and no buffer written. */
static void expect_error(const char *what, int rc, int code) {
    const char *msg = rmsprop_last_error_message();
    CHECK(rc == code, "%s: got %d, expected %d (%s)", what, rc, code, msg);
    CHECK(msg && strlen(msg) > 0, "%s: empty error message", what);
    CHECK(untouched(), "%s: a buffer was written on error", what);
    printf("error path %-44s -> %2d: %s\n", what, rc, msg);
}

static void run_errors(void) {
    RmspropHyperparameters hp, centered_momentum;
    rmsprop_hyperparameters_init(&hp);
    rmsprop_hyperparameters_init(&centered_momentum);
    centered_momentum.centered = 1;
    centered_momentum.momentum = 0.9;
    CHECK(hp.lr == 1e-2 && hp.alpha == 0.99 && hp.eps == 1e-8 && hp.weight_decay == 0 && hp.momentum == 0 &&
              !hp.centered && !hp.maximize && hp.struct_size == sizeof(RmspropHyperparameters),
          "PyTorch defaults from rmsprop_hyperparameters_init");
    CHECK(rmsprop_hyperparameters_init(NULL) == RMSPROP_ERROR_NULL_POINTER, "init(NULL)");

    fill();
    expect_error("hp NULL", rmsprop_step_f32(NULL, P, N, G, N, V, N, NULL, 0, NULL, 0), RMSPROP_ERROR_NULL_POINTER);
    expect_error("params NULL with length", rmsprop_step_f32(&hp, NULL, N, G, N, V, N, NULL, 0, NULL, 0),
                 RMSPROP_ERROR_NULL_POINTER);
    expect_error("grads NULL with length", rmsprop_step_f32(&hp, P, N, NULL, N, V, N, NULL, 0, NULL, 0),
                 RMSPROP_ERROR_NULL_POINTER);
    expect_error("grad_avg NULL with length", rmsprop_step_f32(&centered_momentum, P, N, G, N, V, N, NULL, N, B, N),
                 RMSPROP_ERROR_NULL_POINTER);
    expect_error("misaligned params", rmsprop_step_f32(&hp, (float *)((char *)P + 1), N - 1, G, N - 1, V, N - 1, NULL, 0, NULL, 0),
                 RMSPROP_ERROR_MISALIGNED);
    expect_error("params overlaps square_avg", rmsprop_step_f32(&hp, P, N, G, N, P + 10, N - 10, NULL, 0, NULL, 0),
                 RMSPROP_ERROR_OVERLAP);
    expect_error("grads aliases params", rmsprop_step_f32(&hp, P, N, P, N, V, N, NULL, 0, NULL, 0), RMSPROP_ERROR_OVERLAP);
    expect_error("grad_avg overlaps momentum_buffer",
                 rmsprop_step_f32(&centered_momentum, P, 100, G, 100, V, 100, B, 100, B + 50, 100), RMSPROP_ERROR_OVERLAP);
    expect_error("grads length mismatch", rmsprop_step_f32(&hp, P, N, G, N - 1, V, N, NULL, 0, NULL, 0),
                 RMSPROP_ERROR_LENGTH_MISMATCH);
    expect_error("square_avg length mismatch", rmsprop_step_f32(&hp, P, N, G, N, V, 7, NULL, 0, NULL, 0),
                 RMSPROP_ERROR_LENGTH_MISMATCH);
    expect_error("momentum_buffer length mismatch",
                 rmsprop_step_f32(&centered_momentum, P, N, G, N, V, N, GA, N, B, N - 64), RMSPROP_ERROR_LENGTH_MISMATCH);
    expect_error("missing grad_avg (centered)", rmsprop_step_f32(&centered_momentum, P, N, G, N, V, N, NULL, 0, B, N),
                 RMSPROP_ERROR_MISSING_STATE);
    expect_error("missing momentum_buffer (momentum > 0)",
                 rmsprop_step_f32(&centered_momentum, P, N, G, N, V, N, GA, N, NULL, 0), RMSPROP_ERROR_MISSING_STATE);
    expect_error("unexpected grad_avg (not centered)", rmsprop_step_f32(&hp, P, N, G, N, V, N, GA, N, NULL, 0),
                 RMSPROP_ERROR_UNEXPECTED_STATE);
    expect_error("unexpected momentum_buffer (momentum 0)", rmsprop_step_f32(&hp, P, N, G, N, V, N, NULL, 0, B, N),
                 RMSPROP_ERROR_UNEXPECTED_STATE);
    const char *names[5] = {"lr", "alpha", "eps", "weight_decay", "momentum"};
    double bad[4] = {-1e-3, NAN, INFINITY, 1e300};
    for (int k = 0; k < 5; k++) {
        for (int b = 0; b < 4; b++) {
            RmspropHyperparameters h = centered_momentum;
            double *field[5] = {&h.lr, &h.alpha, &h.eps, &h.weight_decay, &h.momentum};
            *field[k] = bad[b];
            char what[64];
            snprintf(what, sizeof what, "%s = %g", names[k], bad[b]);
            int need_b = k != 4 || h.momentum > 0; /* keep only the value wrong */
            expect_error(what, rmsprop_step_f32(&h, P, N, G, N, V, N, GA, N, need_b ? B : NULL, need_b ? N : 0),
                         RMSPROP_ERROR_INVALID_HYPERPARAMETER);
        }
    }
    RmspropHyperparameters old = hp;
    old.struct_size = 8;
    expect_error("struct_size from another version", rmsprop_step_f32(&old, P, N, G, N, V, N, NULL, 0, NULL, 0),
                 RMSPROP_ERROR_STRUCT_SIZE);
    double PD[4] = {1, 2, 3, 4}, GD[4] = {1, 1, 1, 1}, VD[4] = {0};
    int rc = rmsprop_step_f64(&hp, PD, 4, GD, 3, VD, 4, NULL, 0, NULL, 0);
    CHECK(rc == RMSPROP_ERROR_LENGTH_MISMATCH && PD[0] == 1 && VD[0] == 0, "f64 length mismatch: %d", rc);
    CHECK(rmsprop_set_backend(42) == RMSPROP_ERROR_UNSUPPORTED_BACKEND, "unknown backend code");
    printf("error path %-44s -> %2d: %s\n", "set_backend(42)", RMSPROP_ERROR_UNSUPPORTED_BACKEND, rmsprop_last_error_message());
    for (int b = 0; b <= 3; b++) {
        int rc2 = rmsprop_set_backend(b);
        CHECK(rc2 == (rmsprop_backend_available(b) ? RMSPROP_OK : RMSPROP_ERROR_UNSUPPORTED_BACKEND),
              "set_backend(%d) = %d", b, rc2);
        if (rc2 == RMSPROP_OK) CHECK(rmsprop_get_backend() == b, "get_backend after set %d", b);
    }
    CHECK(rmsprop_set_backend(RMSPROP_BACKEND_AUTO) == RMSPROP_OK, "set auto");
    CHECK(rmsprop_get_backend() == rmsprop_backend_detect(), "auto resolves to the detected backend");

    /* Empty buffers: a valid no-op, NULL allowed with length 0. */
    CHECK(rmsprop_step_f32(&hp, NULL, 0, NULL, 0, NULL, 0, NULL, 0, NULL, 0) == RMSPROP_OK, "empty no-op: %s",
          rmsprop_last_error_message());
    /* And a valid step writes. */
    CHECK(rmsprop_step_f32(&hp, P, N, G, N, V, N, NULL, 0, NULL, 0) == RMSPROP_OK && P[0] < P0[0], "valid step");
    CHECK(rmsprop_set_threads(4) == RMSPROP_OK && rmsprop_get_threads() == 4, "4 threads");
    CHECK(rmsprop_set_threads(1) == RMSPROP_OK && rmsprop_get_threads() == 1, "serial");
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s GOLDEN_DIR < cases.txt\n", argv[0]);
        return 2;
    }
    printf("detected backend %d\n", rmsprop_backend_detect());
    int cases = run_golden(argv[1]);
    printf("golden: %d cases read\n", cases);
    run_errors();
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
