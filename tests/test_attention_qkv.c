/* test_attention_qkv.c: pbw_attention_qkv (attention on packed q, k, v projections) against the
 * unfused path (slice, permute to (B,H,T,D), pbw_attention, merge heads), and its backward
 * against central finite differences.
 *
 * Forward tolerance 1e-5 absolute on O(1) outputs: the same arithmetic in another order.
 * Backward: gradcheck's defaults with atol 5e-4 as for pbw_attention (the loss sums ~100 O(1)
 * terms, whose float rounding over 2*eps is ~1e-4). */
#include <stdlib.h>
#include <string.h>

#include "core/pbw_ops.h"
#include "gradcheck.h"
#include "pbw_test.h"

typedef struct {
    int heads, causal;
    int64_t nq;
} qkv_user;

static pbw_tensor *fused(pbw_ctx *ctx, pbw_tensor **in, void *u) {
    const qkv_user *q = u;
    return pbw_attention_qkv(ctx, in[0], q->heads, q->nq, q->causal, 0);
}

/* The same with general ops. */
static pbw_tensor *unfused(pbw_ctx *ctx, pbw_tensor *qkv, const qkv_user *u) {
    int64_t B = qkv->shape[0], T = qkv->shape[1], W = qkv->shape[2] / 3, H = u->heads, D = W / H;
    pbw_tensor *x = pbw_reshape(ctx, qkv, 5, (int64_t[]){B, T, 3, H, D});
    x = pbw_permute(ctx, x, (int[]){2, 0, 3, 1, 4});
    pbw_tensor *p[3];
    for (int i = 0; i < 3; i++)
        p[i] = pbw_reshape(ctx, pbw_slice(ctx, x, 0, i, i + 1, 1), 4, (int64_t[]){B, H, T, D});
    pbw_tensor *o = pbw_attention(ctx, p[0], p[1], p[2], u->causal, 0);
    o = pbw_permute(ctx, o, (int[]){0, 2, 1, 3});
    o = pbw_reshape(ctx, o, 3, (int64_t[]){B, T, W});
    return pbw_slice(ctx, o, 1, 0, u->nq, 1);
}

PBW_TEST(ops_attention_qkv) {
    const int64_t B = 2, T = 7;
    /* D = 64 takes the register-blocked path, D = 5 the general one */
    const int64_t Ds[2] = {64, 5};
    for (int di = 0; di < 2; di++)
        for (int causal = 0; causal < 2; causal++)
            for (int64_t nq = T; nq >= 1; nq -= T - 1) {
                qkv_user u = {3, causal, nq};
                int64_t W = u.heads * Ds[di];
                float *x = gc_rand(B * T * 3 * W, 7 + di, -1.5f, 1.5f);
                pbw_err err;
                pbw_ctx *ctx = pbw_ctx_new(PBW_DEV_CPU, &err);
                pbw_tensor *t = pbw_tensor_wrap(ctx, x, 3, (int64_t[]){B, T, 3 * W});
                pbw_tensor *a = fused(ctx, &t, &u), *b = unfused(ctx, t, &u);
                CHECK_MSG(a && b, "%s", pbw_ctx_error(ctx));
                if (a && b) {
                    CHECK(a->ndim == 3 && a->shape[1] == nq && a->shape[2] == W);
                    CHECK_MSG(gc_compare("attention_qkv", a->data, b->data, b->numel, 1e-5, 0) == 0,
                              "D=%lld causal=%d nq=%lld forward", (long long)Ds[di], causal, (long long)nq);
                }
                pbw_ctx_free(ctx);
                if (Ds[di] == 5) { /* finite differences on the small one */
                    gc_input in = {3, {B, T, 3 * W}, x, 1};
                    CHECK_MSG(gc_check("attention_qkv", fused, &u, 1, &in, (gc_opts){.atol = 5e-4}) == 0,
                              "causal=%d nq=%lld backward", causal, (long long)nq);
                } else { /* D = 64: backward against the unfused path's */
                    float *g[2];
                    for (int which = 0; which < 2; which++) {
                        ctx = pbw_ctx_new(PBW_DEV_CPU, &err);
                        t = pbw_tensor_wrap(ctx, x, 3, (int64_t[]){B, T, 3 * W});
                        t->requires_grad = 1;
                        pbw_tensor *o = which ? unfused(ctx, t, &u) : fused(ctx, &t, &u);
                        float *seed = gc_rand(o->numel, 99, -1, 1);
                        CHECK(pbw_backward(ctx, o, seed, &err) == 0);
                        g[which] = malloc((size_t)t->numel * sizeof(float));
                        memcpy(g[which], t->grad, (size_t)t->numel * sizeof(float));
                        free(seed);
                        pbw_ctx_free(ctx);
                    }
                    CHECK_MSG(gc_compare("attention_qkv grad", g[0], g[1], B * T * 3 * W, 1e-5, 0) == 0,
                              "causal=%d nq=%lld backward", causal, (long long)nq);
                    free(g[0]);
                    free(g[1]);
                }
                free(x);
            }
}

PBW_TEST(ops_attention_qkv_errors) {
    pbw_err err;
    pbw_ctx *ctx = pbw_ctx_new(PBW_DEV_CPU, &err);
    pbw_tensor *t = pbw_tensor_zeros(ctx, 3, (int64_t[]){1, 4, 12});
    CHECK(pbw_attention_qkv(ctx, t, 3, 4, 0, 0) == NULL); /* 12 is not 3 * 3 * D */
    CHECK(strstr(pbw_ctx_error(ctx), "(1,4,12)") != NULL);
    pbw_ctx_reset(ctx);
    CHECK(pbw_attention_qkv(ctx, t, 2, 5, 0, 0) == NULL); /* more queries than positions */
    pbw_ctx_reset(ctx);
    CHECK(pbw_attention_qkv(ctx, t, 2, 4, 1, 0) != NULL);
    pbw_ctx_free(ctx);
}
