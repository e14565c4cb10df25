/*
 * The README's C example, complete: a context with a pool, one step of a two-tensor model in
 * one call, an error and its message. CI compiles and runs it against the installed library:
 *
 *   cc -std=c11 capi/examples/example.c $(pkg-config --cflags --libs rmsprop_simd) -o example
 */
#include <rmsprop_simd.h>
#include <stdio.h>
#include <stdlib.h>

int main(void) {
    /* A context: the best backend, a pool of 2 threads for large steps. Share it freely. */
    RmspropContextOptions opts;
    rmsprop_context_options_init(&opts, sizeof opts);
    opts.threads = 2;
    RmspropContext *ctx = NULL;
    int rc = rmsprop_context_create(&opts, &ctx);
    if (rc != RMSPROP_OK) {
        fprintf(stderr, "context: %s\n", rmsprop_error_string(rc));
        return 1;
    }

    /* PyTorch's defaults, then momentum: each tensor needs square_avg and momentum_buffer. */
    RmspropHyperparameters hp;
    rmsprop_hyperparameters_init(&hp, sizeof hp);
    hp.lr = 1e-3;
    hp.momentum = 0.9;

    enum { W = 1000, B = 10 };
    float *w = calloc(W, sizeof(float)), *gw = malloc(W * sizeof(float));
    float *vw = calloc(W, sizeof(float)), *mw = calloc(W, sizeof(float));
    float *b = calloc(B, sizeof(float)), *gb = malloc(B * sizeof(float));
    float *vb = calloc(B, sizeof(float)), *mb = calloc(B, sizeof(float));
    for (int i = 0; i < W; i++) gw[i] = 0.5f;
    for (int i = 0; i < B; i++) gb[i] = -0.25f;

    /* One optimizer step over every tensor: one call. */
    const RmspropHyperparameters *hps[2] = {&hp, &hp};
    size_t lens[2] = {W, B};
    float *params[2] = {w, b};
    const float *grads[2] = {gw, gb};
    float *square_avg[2] = {vw, vb};
    float *momentum_buffer[2] = {mw, mb};
    rc = rmsprop_step_multi_f32(ctx, 2, hps, lens, params, grads, square_avg, NULL, momentum_buffer);
    if (rc != RMSPROP_OK) {
        char why[256];
        rmsprop_context_last_error(ctx, why, sizeof why);
        fprintf(stderr, "step: %s\n", why);
        return 1;
    }
    printf("w[0] = %g, b[0] = %g after one step\n", w[0], b[0]);

    /* Errors are codes, with the reason in the context; nothing is written on error. */
    hp.lr = -1.0;
    rc = rmsprop_step_f32(ctx, &hp, W, w, gw, vw, NULL, mw);
    char why[256];
    rmsprop_context_last_error(ctx, why, sizeof why);
    printf("lr = -1: error %d (%s): %s\n", rc, rmsprop_error_string(rc), why);

    int ok = rc == RMSPROP_ERROR_INVALID_HYPERPARAMETER && w[0] < 0;
    rmsprop_context_free(ctx);
    free(w), free(gw), free(vw), free(mw), free(b), free(gb), free(vb), free(mb);
    return ok ? 0 : 1;
}
