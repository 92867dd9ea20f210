/* test_cuda_nn.c: the matrix products and nn ops on CUDA against the CPU (cuda_parity.h):
 * matmul, linear, layer norm, batch norm, softmax, class_position, cosine, attention,
 * attention_qkv, embedding, forward and input gradients, at the shapes the models use (CLIP
 * ViT-B/32: width 768, 50 tokens, 12 heads of 64; text: 77 tokens, width 512, causal) and at
 * odd sizes.
 *
 * The CUDA GEMMs run at the default precision, plain fp32 (no TF32). Tolerances are errors
 * relative to each tensor's largest value:
 *   1e-5  fp32 products and row sums in another order (cuBLAS tiles and split reductions vs
 *         OpenBLAS; warp trees vs sequential or double sums on the CPU): a few ulps times the
 *         square root of the reduction length (<= 2304) stays below 1e-5 of the largest value.
 *   2e-5  attention: two chained products around a softmax (and four in the backward), each
 *         adding its own reordering error, the CPU's exp a polynomial within 1.1 ulp.
 *   1e-6  embedding: the forward is a copy (exact); the backward adds repeated ids' rows in
 *         atomic order, one rounding per repeat.
 * Each case prints its worst error. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/pbw_ops.h"
#include "cuda_parity.h"
#include "gradcheck.h"
#include "pbw_test.h"
#ifdef PBW_HAVE_CUDA
#include "cuda/pbw_cuda.h"
#include "cuda/pbw_cuda_nn.h"
#endif

/* ---- matmul ---- */

typedef struct {
    int ta, tb;
} mm_arg;

static pbw_tensor *mm_fn(pbw_ctx *ctx, pbw_tensor **in, void *arg) {
    const mm_arg *a = arg;
    return pbw_matmul(ctx, in[0], in[1], a->ta, a->tb);
}

PBW_TEST(cuda_matmul) {
    const double tol = 1e-5; /* fp32 products in another order */
    const int M = 37, K = 53, N = 29;
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++) {
            mm_arg arg = {ta, tb};
            char name[64];
            /* plain 2-D */
            parity_input p2[] = {{2, {ta ? K : M, ta ? M : K}, 1}, {2, {tb ? N : K, tb ? K : N}, 1}};
            snprintf(name, sizeof name, "matmul ta=%d tb=%d", ta, tb);
            CHECK(parity_check(name, mm_fn, &arg, 2, p2, tol) == 0);
            /* batched (2,3,...) on both sides */
            parity_input pb[] = {{4, {2, 3, ta ? K : M, ta ? M : K}, 1},
                                 {4, {2, 3, tb ? N : K, tb ? K : N}, 1}};
            snprintf(name, sizeof name, "matmul batched ta=%d tb=%d", ta, tb);
            CHECK(parity_check(name, mm_fn, &arg, 2, pb, tol) == 0);
            /* shared 2-D b: its gradient sums the batch items (one tall GEMM, one GEMM with the
             * items stacked along K, or a loop of GEMMs, depending on the transposes) */
            parity_input ps[] = {{3, {5, ta ? K : M, ta ? M : K}, 1}, {2, {tb ? N : K, tb ? K : N}, 1}};
            snprintf(name, sizeof name, "matmul shared b ta=%d tb=%d", ta, tb);
            CHECK(parity_check(name, mm_fn, &arg, 2, ps, tol) == 0);
        }
    /* attention-shaped: (B,H,T,D) @ (B,H,T,D)^T, 12 heads of 64 over 50 tokens */
    mm_arg qk = {0, 1};
    parity_input pq[] = {{4, {2, 12, 50, 64}, 1}, {4, {2, 12, 50, 64}, 1}};
    CHECK(parity_check("matmul q k^T (2,12,50,64)", mm_fn, &qk, 2, pq, tol) == 0);
    /* CLIP's qkv projection (1600 x 768 x 2304 at 32 crops), at 4 crops to keep the CPU side
     * short: x (4,50,768) @ W (768,2304), W shared across the batch */
    mm_arg pl = {0, 0};
    parity_input pc[] = {{3, {4, 50, 768}, 1}, {2, {768, 2304}, 1}};
    CHECK(parity_check("matmul (4,50,768)@(768,2304)", mm_fn, &pl, 2, pc, tol) == 0);
}

/* ---- linear ---- */

static pbw_tensor *linear_fn(pbw_ctx *ctx, pbw_tensor **in, void *arg) {
    int has_b = *(const int *)arg;
    return pbw_linear(ctx, in[0], in[1], has_b ? in[2] : NULL);
}

PBW_TEST(cuda_linear) {
    const double tol = 1e-5; /* fp32 products in another order; bias sums over <= 200 rows */
    for (int has_b = 0; has_b < 2; has_b++) {
        /* CLIP ViT's qkv projection at 4 crops: (4,50,768) -> (4,50,2304) */
        parity_input clip[] = {{3, {4, 50, 768}, 1}, {2, {2304, 768}, 1}, {1, {2304}, 1}};
        CHECK(parity_check(has_b ? "linear clip qkv +b" : "linear clip qkv", linear_fn, &has_b,
                           2 + has_b, clip, tol) == 0);
        /* odd sizes */
        parity_input odd[] = {{3, {3, 7, 13}, 1}, {2, {5, 13}, 1}, {1, {5}, 1}};
        CHECK(parity_check(has_b ? "linear odd +b" : "linear odd", linear_fn, &has_b, 2 + has_b,
                           odd, tol) == 0);
    }
}

/* One row through two weights (its gradient written, then added to): x W^T + b + x W2^T. */
static pbw_tensor *linear_row_fn(pbw_ctx *ctx, pbw_tensor **in, void *arg) {
    (void)arg;
    return pbw_add(ctx, pbw_linear(ctx, in[0], in[1], in[2]), pbw_linear(ctx, in[0], in[3], NULL));
}

/* One-row products under bf16 (StyleGAN2's styles in an Adam step: a latent (1,512), constant
 * weights): the matrix-vector kernels, fp32 sums in another order than the CPU's, so within
 * cuda_linear's 1e-5; with 16-byte rows (512, 128) and without (13). Forward and x's gradient,
 * both taken by the kernels (pbw_cuda_rowvec_calls). */
PBW_TEST(cuda_linear_row) {
    const double tol = 1e-5; /* as cuda_linear: fp32 products in another order */
    const int64_t sizes[3][2] = {{512, 512}, {256, 128}, {5, 13}};
    for (int k = 0; k < 3; k++) {
        const int64_t O = sizes[k][0], I = sizes[k][1];
        parity_input in[] = {{2, {1, I}, 1}, {2, {O, I}, 0}, {1, {O}, 0}, {2, {O, I}, 0}};
        char name[64];
        snprintf(name, sizeof name, "linear one row %lld -> %lld, bf16", (long long)I,
                 (long long)O);
#ifdef PBW_HAVE_CUDA
        pbw_cuda_set_precision(PBW_PREC_BF16);
        const long before = pbw_cuda_rowvec_calls();
#endif
        CHECK(parity_check(name, linear_row_fn, NULL, 4, in, tol) == 0);
#ifdef PBW_HAVE_CUDA
        /* two forwards and two input gradients a run */
        CHECK(pbw_cuda_rowvec_calls() - before >= 4);
        pbw_cuda_set_precision(PBW_PREC_FP32);
#endif
    }
}

/* One row through three maps at once (pbw_linear_multi: StyleGAN2's styles made ahead), their
 * outputs side by side: x's gradient adds all three maps' shares. */
static pbw_tensor *linear_multi_fn(pbw_ctx *ctx, pbw_tensor **in, void *arg) {
    (void)arg;
    pbw_tensor *w[3] = {in[1], in[3], in[4]}, *b[3] = {in[2], NULL, in[5]}, *y[3];
    if (pbw_linear_multi(ctx, in[0], 3, w, b, y)) return NULL;
    return pbw_concat(ctx, 3, y, 1);
}

/* Under bf16 the three maps run as one kernel forward and two backward: each output row summed
 * as the one-row kernel sums it (the same bits as pbw_linear's), x's gradient the maps' sums
 * added in order, so within cuda_linear_row's 1e-5 of the CPU; 16-byte rows (512) and not
 * (13). */
PBW_TEST(cuda_linear_multi) {
    const double tol = 1e-5; /* as cuda_linear_row: fp32 sums in another order */
    parity_input in[] = {{2, {1, 512}, 1}, {2, {512, 512}, 0}, {1, {512}, 0},
                         {2, {256, 512}, 0}, {2, {13, 512}, 0}, {1, {13}, 0}};
#ifdef PBW_HAVE_CUDA
    pbw_cuda_set_precision(PBW_PREC_BF16);
    const long before = pbw_cuda_rowvec_calls();
#endif
    CHECK(parity_check("linear_multi one row, 3 maps, bf16", linear_multi_fn, NULL, 6, in, tol) ==
          0);
#ifdef PBW_HAVE_CUDA
    CHECK(pbw_cuda_rowvec_calls() - before >= 2); /* the three maps' kernels, each way */
    /* the same bits as three pbw_linear calls */
    pbw_err err;
    pbw_ctx *ctx = pbw_ctx_new(PBW_DEV_CUDA, &err);
    CHECK(ctx != NULL);
    if (ctx) {
        const int64_t O[3] = {512, 256, 13};
        float *xh = gc_rand(512, 5, -1, 1);
        pbw_tensor *x = pbw_tensor_from_host(ctx, xh, 2, (int64_t[]){1, 512}), *w[3], *b[3], *y[3];
        for (int k = 0; k < 3; k++) {
            float *wh = gc_rand(O[k] * 512, 10 + k, -1, 1), *bh = gc_rand(O[k], 20 + k, -1, 1);
            w[k] = pbw_tensor_from_host(ctx, wh, 2, (int64_t[]){O[k], 512});
            b[k] = k == 1 ? NULL : pbw_tensor_from_host(ctx, bh, 1, (int64_t[]){O[k]});
            free(wh), free(bh);
        }
        const long calls = pbw_cuda_rowvec_calls();
        CHECK(pbw_linear_multi(ctx, x, 3, w, b, y) == 0);
        CHECK(pbw_cuda_rowvec_calls() - calls == 1);
        for (int k = 0; k < 3 && !pbw_ctx_failed(ctx); k++) {
            pbw_tensor *one = pbw_linear(ctx, x, w[k], b[k]);
            const float *a = one ? pbw_tensor_host(ctx, one) : NULL, *m = pbw_tensor_host(ctx, y[k]);
            CHECK(a && m && memcmp(a, m, (size_t)O[k] * sizeof(float)) == 0);
        }
        CHECK(!pbw_ctx_failed(ctx));
        free(xh);
        pbw_ctx_free(ctx);
    }
    pbw_cuda_set_precision(PBW_PREC_FP32);
#endif
}

static pbw_tensor *linear_add_fn(pbw_ctx *ctx, pbw_tensor **in, void *arg) {
    int has_b = *(const int *)arg;
    return pbw_linear_add(ctx, in[0], in[1], has_b ? in[3] : NULL, in[2]);
}

/* The residual read as the product's C (cuBLASLt, beta = 1): forward, and the gradients of x, w,
 * b and the residual (which receives the output's gradient as it is). */
PBW_TEST(cuda_linear_add) {
    const double tol = 1e-5; /* as cuda_linear: fp32 products in another order */
    for (int has_b = 0; has_b < 2; has_b++) {
        /* CLIP ViT's out-projection at 4 crops: (4,50,768) W (768,768) + x */
        parity_input clip[] = {{3, {4, 50, 768}, 1}, {2, {768, 768}, 1}, {3, {4, 50, 768}, 1},
                               {1, {768}, 1}};
        CHECK(parity_check(has_b ? "linear_add clip out +b" : "linear_add clip out", linear_add_fn,
                           &has_b, 3 + has_b, clip, tol) == 0);
        parity_input odd[] = {{3, {3, 7, 13}, 1}, {2, {5, 13}, 1}, {3, {3, 7, 5}, 1}, {1, {5}, 1}};
        CHECK(parity_check(has_b ? "linear_add odd +b" : "linear_add odd", linear_add_fn, &has_b,
                           3 + has_b, odd, tol) == 0);
    }
}

/* linear_add_into: r + x W^T + b written over r without gradients (cuBLASLt with C = D on the
 * GPU, in place on the CPU; the function fails when it is not in place), and with gradients
 * a new tensor and linear_add's gradients. */
static pbw_tensor *linear_add_into_fn(pbw_ctx *ctx, pbw_tensor **in, void *arg) {
    int has_b = *(const int *)arg;
    pbw_tensor *y = pbw_linear_add_into(ctx, in[0], in[1], has_b ? in[3] : NULL, in[2]);
    if (y && !in[0]->requires_grad && y != in[2])
        return pbw_ctx_fail(ctx, "linear_add_into: not written over the residual");
    return y;
}

PBW_TEST(cuda_linear_add_into) {
    const double tol = 1e-5; /* as cuda_linear: fp32 products in another order */
    for (int has_b = 0; has_b < 2; has_b++)
        for (int grad = 0; grad < 2; grad++) {
            parity_input clip[] = {{3, {4, 50, 768}, grad}, {2, {768, 768}, grad},
                                   {3, {4, 50, 768}, grad}, {1, {768}, grad}};
            char name[64];
            snprintf(name, sizeof name, "linear_add_into clip out%s%s", has_b ? " +b" : "",
                     grad ? " (gradients: a new tensor)" : " (in place)");
            CHECK(parity_check(name, linear_add_into_fn, &has_b, 3 + has_b, clip, tol) == 0);
        }
}

/* ---- layer norm ---- */

static pbw_tensor *ln_fn(pbw_ctx *ctx, pbw_tensor **in, void *arg) {
    int affine = *(const int *)arg;
    return pbw_layer_norm(ctx, in[0], affine ? in[1] : NULL, affine ? in[2] : NULL, 1e-5f);
}

PBW_TEST(cuda_layer_norm) {
    const double tol = 1e-5; /* fp32 warp sums vs the CPU's double sums over <= 768 values */
    const int64_t Ds[3] = {768, 512, 13};
    const int64_t Ts[3] = {50, 77, 5};
    for (int i = 0; i < 3; i++)
        for (int affine = 0; affine < 2; affine++) {
            int64_t D = Ds[i];
            /* inputs off-centre (mean 1.5): the two-pass variance is what keeps this exact */
            parity_input in[] = {{3, {2, Ts[i], D}, 1, 0.5f, 2.5f}, {1, {D}, 1}, {1, {D}, 1}};
            char name[64];
            snprintf(name, sizeof name, "layer_norm D=%lld%s", (long long)D, affine ? " w,b" : "");
            CHECK(parity_check(name, ln_fn, &affine, affine ? 3 : 1, in, tol) == 0);
        }
}

/* ---- LPIPS's weighted layer term ---- */

static pbw_tensor *lpl_fn(pbw_ctx *ctx, pbw_tensor **in, void *arg) {
    (void)arg;
    return pbw_lpips_layer(ctx, in[0], in[1], in[2], in[3], 1e-10f);
}

PBW_TEST(cuda_lpips_layer) {
    /* fp32 block sums against the CPU's double sum over up to 4k positions of fp32 terms */
    const double tol = 1e-5;
    /* wide maps (>= 1024 positions) and small ones run with different block shapes */
    static const int64_t shapes[4][5] = {{2, 64, 63, 63, 1}, {3, 192, 15, 15, 3}, {1, 7, 5, 3, 1},
                                         {1, 384, 31, 31, 1}};
    for (int i = 0; i < 4; i++) {
        const int64_t N = shapes[i][0], C = shapes[i][1], h = shapes[i][2], w = shapes[i][3],
                      nr = shapes[i][4];
        parity_input in[] = {{4, {N, C, h, w}, 1, 0.0f, 2.0f}, {4, {nr, C, h, w}, 0, -0.2f, 0.2f},
                             {1, {C}, 0, 0.0f, 1.0f}, {2, {h, w}, 0, 0.0f, 1.0f}};
        char name[80];
        snprintf(name, sizeof name, "lpips_layer (%lld,%lld,%lld,%lld) ref batch %lld",
                 (long long)N, (long long)C, (long long)h, (long long)w, (long long)nr);
        CHECK(parity_check(name, lpl_fn, NULL, 4, in, tol) == 0);
    }
}

/* ---- batch norm ---- */

static pbw_tensor *bn_fn(pbw_ctx *ctx, pbw_tensor **in, void *arg) {
    int affine = *(const int *)arg;
    return pbw_batch_norm(ctx, in[0], in[1], in[2], affine ? in[3] : NULL, affine ? in[4] : NULL,
                          1e-5f);
}

PBW_TEST(cuda_batch_norm) {
    const double tol = 1e-5; /* elementwise forward; weight gradients sum N*S values in fp32 */
    for (int affine = 0; affine < 2; affine++) {
        /* mean and var are constants (no gradient); var in (0.5, 2) */
        parity_input in[] = {{4, {2, 64, 9, 11}, 1}, {1, {64}, 0},
                             {1, {64}, 0, 0.5f, 2.0f}, {1, {64}, 1}, {1, {64}, 1}};
        CHECK(parity_check(affine ? "batch_norm w,b" : "batch_norm", bn_fn, &affine,
                           affine ? 5 : 3, in, tol) == 0);
        parity_input odd[] = {{3, {3, 5, 7}, 1}, {1, {5}, 0}, {1, {5}, 0, 0.5f, 2.0f},
                              {1, {5}, 1}, {1, {5}, 1}};
        CHECK(parity_check(affine ? "batch_norm odd w,b" : "batch_norm odd", bn_fn, &affine,
                           affine ? 5 : 3, odd, tol) == 0);
    }
}

/* ---- softmax ---- */

static pbw_tensor *softmax_fn(pbw_ctx *ctx, pbw_tensor **in, void *arg) {
    (void)arg;
    return pbw_softmax(ctx, in[0]);
}

PBW_TEST(cuda_softmax) {
    const double tol = 1e-5; /* expf vs the CPU's polynomial (1.1 ulp) and fp32 row sums */
    /* attention rows of CLIP's text (77) and image (50) towers, logits in (-4, 4) */
    parity_input t77[] = {{4, {2, 8, 77, 77}, 1, -4.0f, 4.0f}};
    CHECK(parity_check("softmax rows of 77", softmax_fn, NULL, 1, t77, tol) == 0);
    parity_input t50[] = {{4, {2, 12, 50, 50}, 1, -4.0f, 4.0f}};
    CHECK(parity_check("softmax rows of 50", softmax_fn, NULL, 1, t50, tol) == 0);
    /* long rows (a warp loops), short rows (lanes idle) */
    parity_input lng[] = {{2, {3, 1000}, 1, -4.0f, 4.0f}};
    CHECK(parity_check("softmax rows of 1000", softmax_fn, NULL, 1, lng, tol) == 0);
    parity_input sht[] = {{2, {9, 3}, 1, -4.0f, 4.0f}};
    CHECK(parity_check("softmax rows of 3", softmax_fn, NULL, 1, sht, tol) == 0);
}

/* ---- a ViT's class token and positions ---- */

static pbw_tensor *class_position_fn(pbw_ctx *ctx, pbw_tensor **in, void *arg) {
    (void)arg;
    return pbw_class_position(ctx, in[0], in[1], in[2]);
}

PBW_TEST(cuda_class_position) {
    const double tol = 0; /* one fp32 addition a value forward, a copy backward: exact */
    /* ViT-B/32's 49 patches of 768 at 3 crops (16-byte rows), and rows of 6 (the scalar path) */
    parity_input vit[] = {{3, {3, 49, 768}, 1}, {1, {768}, 0}, {2, {50, 768}, 0}};
    CHECK(parity_check("class_position 3 x 49 x 768", class_position_fn, NULL, 3, vit, tol) == 0);
    parity_input odd[] = {{3, {2, 5, 6}, 1}, {1, {6}, 0}, {2, {6, 6}, 0}};
    CHECK(parity_check("class_position 2 x 5 x 6", class_position_fn, NULL, 3, odd, tol) == 0);
}

/* ---- cosine of rows ---- */

static pbw_tensor *cosine_fn(pbw_ctx *ctx, pbw_tensor **in, void *arg) {
    (void)arg;
    return pbw_cosine(ctx, in[0], in[1]);
}

PBW_TEST(cuda_cosine) {
    /* sums in double on both sides in another order, then one rounding to float: the forward
     * within an ulp or two; the gradients are a few float products each */
    const double tol = 1e-6;
    /* the painting loss's shapes: 32 crops' embeddings against one text's (b's gradient, here
     * wanted too, a sum over the rows), and a row each */
    parity_input one[] = {{2, {32, 512}, 1}, {2, {1, 512}, 1}};
    CHECK(parity_check("cosine, 32 rows against one", cosine_fn, NULL, 2, one, tol) == 0);
    parity_input each[] = {{2, {9, 77}, 1}, {2, {9, 77}, 1}};
    CHECK(parity_check("cosine, a row each", cosine_fn, NULL, 2, each, tol) == 0);
    parity_input cnst[] = {{2, {3, 600}, 1}, {2, {1, 600}, 0}};
    CHECK(parity_check("cosine, b constant", cosine_fn, NULL, 2, cnst, tol) == 0);
}

/* ---- attention ---- */

static pbw_tensor *attn_fn(pbw_ctx *ctx, pbw_tensor **in, void *arg) {
    int causal = *(const int *)arg;
    return pbw_attention(ctx, in[0], in[1], in[2], causal, 0);
}

PBW_TEST(cuda_attention) {
    const double tol = 2e-5; /* chained products and a softmax, see the file comment */
    for (int causal = 0; causal < 2; causal++) {
        char name[64];
        /* CLIP ViT: 12 heads of 64 over 50 tokens (fused forward) */
        parity_input vit[] = {{4, {2, 12, 50, 64}, 1}, {4, {2, 12, 50, 64}, 1}, {4, {2, 12, 50, 64}, 1}};
        snprintf(name, sizeof name, "attention vit%s", causal ? " causal" : "");
        CHECK(parity_check(name, attn_fn, &causal, 3, vit, tol) == 0);
        /* T != S (fewer queries than keys) with an odd head size */
        parity_input ts[] = {{4, {2, 3, 10, 24}, 1}, {4, {2, 3, 21, 24}, 1}, {4, {2, 3, 21, 24}, 1}};
        snprintf(name, sizeof name, "attention T<S%s", causal ? " causal" : "");
        CHECK(parity_check(name, attn_fn, &causal, 3, ts, tol) == 0);
        /* K and V of a head too large for shared memory: the cuBLAS forward */
        parity_input big[] = {{4, {2, 3, 200, 64}, 1}, {4, {2, 3, 200, 64}, 1}, {4, {2, 3, 200, 64}, 1}};
        snprintf(name, sizeof name, "attention S=200%s", causal ? " causal" : "");
        CHECK(parity_check(name, attn_fn, &causal, 3, big, tol) == 0);
    }
    /* CLIP text: 8 heads of 64 over 77 tokens, causal */
    int causal = 1;
    parity_input txt[] = {{4, {2, 8, 77, 64}, 1}, {4, {2, 8, 77, 64}, 1}, {4, {2, 8, 77, 64}, 1}};
    CHECK(parity_check("attention text causal", attn_fn, &causal, 3, txt, tol) == 0);
}

/* ---- attention on packed q, k, v ---- */

typedef struct {
    int heads, causal;
    int64_t nq;
} qkv_arg;

static pbw_tensor *qkv_fn(pbw_ctx *ctx, pbw_tensor **in, void *arg) {
    const qkv_arg *a = arg;
    return pbw_attention_qkv(ctx, in[0], a->heads, a->nq, a->causal, 0);
}

PBW_TEST(cuda_attention_qkv) {
    const double tol = 2e-5; /* as cuda_attention */
    char name[80];
    /* CLIP ViT (2,50,3*768), 12 heads; all queries, then the class token only (last layer) */
    const int64_t nqs[2] = {50, 1};
    for (int i = 0; i < 2; i++) {
        qkv_arg a = {12, 0, nqs[i]};
        parity_input in[] = {{3, {2, 50, 3 * 768}, 1}};
        snprintf(name, sizeof name, "attention_qkv vit nq=%lld", (long long)nqs[i]);
        CHECK(parity_check(name, qkv_fn, &a, 1, in, tol) == 0);
    }
    /* CLIP text (2,77,3*512), 8 heads, causal, and causal with fewer queries */
    const int64_t tq[2] = {77, 20};
    for (int i = 0; i < 2; i++) {
        qkv_arg a = {8, 1, tq[i]};
        parity_input in[] = {{3, {2, 77, 3 * 512}, 1}};
        snprintf(name, sizeof name, "attention_qkv text causal nq=%lld", (long long)tq[i]);
        CHECK(parity_check(name, qkv_fn, &a, 1, in, tol) == 0);
    }
    /* odd head size; and long sequences (cuBLAS forward, one GEMM call per batch item because
     * the packed strides do not compose over batch and heads) */
    qkv_arg odd = {3, 1, 6};
    parity_input oin[] = {{3, {2, 7, 3 * 15}, 1}};
    CHECK(parity_check("attention_qkv odd D=5", qkv_fn, &odd, 1, oin, tol) == 0);
    qkv_arg lng = {2, 0, 150};
    parity_input lin[] = {{3, {2, 180, 3 * 128}, 1}};
    CHECK(parity_check("attention_qkv S=180", qkv_fn, &lng, 1, lin, tol) == 0);
}

/* ---- embedding ---- */

typedef struct {
    const int32_t *ids;
    int ndim;
    int64_t shape[2];
} emb_arg;

static pbw_tensor *emb_fn(pbw_ctx *ctx, pbw_tensor **in, void *arg) {
    const emb_arg *a = arg;
    return pbw_embedding(ctx, in[0], a->ids, a->ndim, a->shape);
}

PBW_TEST(cuda_embedding) {
    const double tol = 1e-6; /* a copy forward; atomic sums of repeated ids backward */
    /* two prompts of 9 tokens with repeated ids (0, 5, 99 several times) */
    static const int32_t ids[18] = {0, 5, 17, 5, 99, 0, 0, 42, 99, 3, 5, 5, 5, 64, 99, 1, 0, 98};
    emb_arg a = {ids, 2, {2, 9}};
    parity_input in[] = {{2, {100, 512}, 1}};
    CHECK(parity_check("embedding repeated ids", emb_fn, &a, 1, in, tol) == 0);
}

/* ---------- products on half operands (pbw_cuda_half_gemm) ----------
 * CLIP's block pattern on bf16 and fp16: layer norm -> linear (its half copy read) and
 * QuickGELU -> linear, with weights moved to the GPU by pbw_arena_to_device (constants: their
 * half copies are cached), against the same ops on the CPU in fp32. The products then round
 * both operands to bf16 (unit roundoff 2^-9) or fp16 (2^-11) and sum 768 or 3072 terms in
 * fp32: a relative error of ~1e-3 of the outputs' scale, 1e-2 the bound (as TOL_HALF of the
 * convolutions); the half path must have been taken (pbw_cuda_linear_half_calls), and under
 * fp32 it never is (1e-5 against the CPU). */
#ifdef PBW_HAVE_CUDA
#include "core/pbw_rng.h"
#include "cuda/pbw_cuda_elementwise.h"

/* A context on dev in precision prec (CUDA) and an empty weight arena; half_end frees both,
 * puts the precision back and returns rc. */
static pbw_ctx *half_begin(pbw_device dev, pbw_precision prec, pbw_arena *a) {
    pbw_err err = {{0}};
    pbw_ctx *ctx = pbw_ctx_new(dev, &err);
    if (ctx && dev == PBW_DEV_CUDA) pbw_cuda_set_precision(prec);
    pbw_arena_init(a, 1 << 16);
    return ctx;
}

static int half_end(pbw_ctx *ctx, pbw_arena *a, int rc) {
    if (ctx && pbw_ctx_device(ctx) == PBW_DEV_CUDA) pbw_cuda_set_precision(PBW_PREC_FP32);
    pbw_ctx_free(ctx);
    pbw_arena_free(a);
    return rc;
}

/* x (R,D) -> layer norm -> linear (M) -> QuickGELU -> linear (D) into out; with gx (R*D floats,
 * else NULL) x's gradient too, from the output's gradient seed (R*D floats). With gh (R*M
 * floats, else NULL) the first product's output h also feeds sum(tanh(h)), added to the loss,
 * whose backward runs after QuickGELU's; gh gets h's gradient. */
static int half_mlp_grad(pbw_device dev, pbw_precision prec, float *out, int64_t R, int64_t D,
                         int64_t M, const float *seed, float *gx, float *gh) {
    pbw_err err = {{0}};
    pbw_arena a;
    pbw_ctx *ctx = half_begin(dev, prec, &a);
    if (!ctx) return half_end(ctx, &a, -1);
    pbw_tensor *w1 = pbw_tensor_new_in(&a, 2, (int64_t[]){M, D}, &err);
    pbw_tensor *b1 = pbw_tensor_new_in(&a, 1, (int64_t[]){M}, &err);
    pbw_tensor *w2 = pbw_tensor_new_in(&a, 2, (int64_t[]){D, M}, &err);
    pbw_tensor *b2 = pbw_tensor_new_in(&a, 1, (int64_t[]){D}, &err);
    pbw_tensor *lw = pbw_tensor_new_in(&a, 1, (int64_t[]){D}, &err);
    pbw_tensor *lb = pbw_tensor_new_in(&a, 1, (int64_t[]){D}, &err);
    int rc = -1;
    if (!w1 || !b1 || !w2 || !b2 || !lw || !lb) goto out;
    pbw_rng rng;
    pbw_rng_seed(&rng, 9);
    pbw_tensor *ws[6] = {w1, b1, w2, b2, lw, lb};
    const float sc[6] = {0.07f, 0.1f, 0.04f, 0.1f, 0.5f, 0.2f};
    for (int k = 0; k < 6; k++)
        for (int64_t i = 0; i < ws[k]->numel; i++)
            ws[k]->data[i] = sc[k] * (float)(2 * pbw_rng_uniform(&rng) - 1) + (k == 4 ? 1.0f : 0.0f);
    if (pbw_arena_to_device(&a, ctx, &err)) goto out;
    float *xh = malloc((size_t)(R * D) * sizeof(float));
    for (int64_t i = 0; i < R * D; i++) xh[i] = (float)(2 * pbw_rng_uniform(&rng) - 1);
    pbw_tensor *x = pbw_tensor_from_host(ctx, xh, 2, (int64_t[]){R, D});
    free(xh);
    if (x && gx) x->requires_grad = 1;
    pbw_tensor *h = pbw_linear(ctx, pbw_layer_norm(ctx, x, lw, lb, 1e-5f), w1, b1);
    pbw_tensor *t = gh ? pbw_sum_all(ctx, pbw_tanh(ctx, h)) : NULL;
    pbw_tensor *y = pbw_linear(ctx, pbw_quick_gelu(ctx, h), w2, b2), *loss = y;
    if (gh) {
        pbw_tensor *st = pbw_tensor_from_host(ctx, seed, 2, (int64_t[]){R, D});
        loss = pbw_add(ctx, pbw_sum_all(ctx, pbw_mul(ctx, y, st)), t);
    }
    const float *g = NULL, *g2 = NULL;
    if (loss && pbw_tensor_read(ctx, y, out) == 0 &&
        (!gx || (pbw_backward(ctx, loss, gh ? NULL : seed, &err) == 0 &&
                 (g = pbw_grad_host(ctx, x)) && (!gh || (g2 = pbw_grad_host(ctx, h)))))) {
        if (gx) memcpy(gx, g, (size_t)(R * D) * sizeof(float));
        if (gh) memcpy(gh, g2, (size_t)(R * M) * sizeof(float));
        rc = 0;
    } else {
        fprintf(stderr, "  %s\n", pbw_ctx_failed(ctx) ? pbw_ctx_error(ctx) : err.msg);
    }
out:
    return half_end(ctx, &a, rc);
}

static int half_mlp(pbw_device dev, pbw_precision prec, float *out, int64_t R, int64_t D,
                    int64_t M) {
    return half_mlp_grad(dev, prec, out, R, D, M, NULL, NULL, NULL);
}

/* One CLIP block, x (B,T,D) -> x + attn(ln1 x), then + mlp(ln2 .), with weights
 * moved by pbw_arena_to_device; out gets the block's output, mid (may be NULL) the QuickGELU
 * output read back (a half_only tensor under half activations: the read writes its fp32
 * values first). *n_half counts the intermediates that were half_only. */
typedef struct {
    int64_t B, T, D, M;
    int heads, causal, half_acts;
    int into; /* the residual adds in place (pbw_linear_add_into), x from a layer norm made
               * before half activations (as CLIP's ln_pre: fp32 values and a half copy) */
} block_case;

/* half_block with gradients when gx is not NULL: the loss sum(y * seed) (seed B*T*D floats),
 * x's gradient into gx. */
static int half_block_grad(pbw_device dev, pbw_precision prec, const block_case *bc, float *out,
                           float *mid, int *n_half, const float *seed, float *gx) {
    pbw_err err = {{0}};
    pbw_arena a;
    pbw_ctx *ctx = half_begin(dev, prec, &a);
    if (!ctx) return half_end(ctx, &a, -1);
    const int64_t B = bc->B, T = bc->T, D = bc->D, M = bc->M;
    /* ln1 w, b; qkv w, b; out w, b; ln2 w, b; fc1 w, b; fc2 w, b (second size 0: a vector) */
    const int64_t shapes[12][2] = {{D, 0}, {D, 0}, {3 * D, D}, {3 * D, 0}, {D, D}, {D, 0},
                                   {D, 0}, {D, 0}, {M, D},     {M, 0},     {D, M}, {D, 0}};
    pbw_tensor *ws[12];
    int rc = -1;
    for (int k = 0; k < 12; k++) {
        ws[k] = pbw_tensor_new_in(&a, shapes[k][1] ? 2 : 1, shapes[k], &err);
        if (!ws[k]) goto out;
    }
    pbw_rng rng;
    pbw_rng_seed(&rng, 11);
    for (int k = 0; k < 12; k++) { /* weights ~ 1/sqrt(fan-in); norms' gains near 1 */
        const int gain = k == 0 || k == 6;
        const float sc = ws[k]->ndim == 2 ? 1.0f / sqrtf((float)ws[k]->shape[1]) : 0.1f;
        for (int64_t i = 0; i < ws[k]->numel; i++)
            ws[k]->data[i] = sc * (float)(2 * pbw_rng_uniform(&rng) - 1) + (gain ? 1.0f : 0.0f);
    }
    if (pbw_arena_to_device(&a, ctx, &err)) goto out;
    float *xh = malloc((size_t)(B * T * D) * sizeof(float));
    for (int64_t i = 0; i < B * T * D; i++) xh[i] = (float)(2 * pbw_rng_uniform(&rng) - 1);
    pbw_tensor *x = pbw_tensor_from_host(ctx, xh, 3, (int64_t[]){B, T, D}), *x0 = x;
    free(xh);
    if (x && gx) x->requires_grad = 1;
    if (bc->into) x = pbw_layer_norm(ctx, x, NULL, NULL, 1e-5f);
    pbw_ctx_set_half_activations(ctx, bc->half_acts);
    pbw_tensor *(*add)(pbw_ctx *, pbw_tensor *, pbw_tensor *, pbw_tensor *, pbw_tensor *) =
        bc->into ? pbw_linear_add_into : pbw_linear_add;
    pbw_tensor *h = pbw_layer_norm(ctx, x, ws[0], ws[1], 1e-5f);
    pbw_tensor *qkv = pbw_linear(ctx, h, ws[2], ws[3]);
    pbw_tensor *att = pbw_attention_qkv(ctx, qkv, bc->heads, T, bc->causal, 0);
    pbw_tensor *x1 = add(ctx, att, ws[4], ws[5], x);
    const int x1_half = x1 && x1->half_only; /* the residual kept in the half type */
    pbw_tensor *h2 = pbw_layer_norm(ctx, x1, ws[6], ws[7], 1e-5f);
    pbw_tensor *f = pbw_linear_quick_gelu(ctx, h2, ws[8], ws[9]);
    pbw_tensor *y = add(ctx, f, ws[10], ws[11], x1);
    pbw_tensor *mids[5] = {h, qkv, att, h2, f};
    *n_half = 0;
    for (int k = 0; k < 5; k++) *n_half += mids[k] && mids[k]->half_only;
    *n_half += 10 * (x1_half + (y && y->half_only)); /* tens: residual sums kept half */
    /* the class token's row, sliced from a half_only y before y is read back: the same values
     * as y's first rows (one conversion from the half type either way) */
    pbw_tensor *cls = y && y->half_only ? pbw_slice(ctx, y, 1, 0, 1, 1) : NULL;
    float *cv = cls ? malloc((size_t)(B * D) * sizeof(float)) : NULL;
    if (cls && (!cv || pbw_tensor_read(ctx, cls, cv))) y = NULL;
    pbw_tensor *loss = NULL;
    if (gx) loss = pbw_sum_all(ctx, pbw_mul(ctx, y, pbw_tensor_from_host(ctx, seed, 3,
                                                                         (int64_t[]){B, T, D})));
    const float *g = NULL;
    if (y && pbw_tensor_read(ctx, y, out) == 0 && (!mid || pbw_tensor_read(ctx, f, mid) == 0) &&
        (!mid || !f->half_only) &&
        (!gx || (pbw_backward(ctx, loss, NULL, &err) == 0 && (g = pbw_grad_host(ctx, x0)))))
        rc = 0;
    else fprintf(stderr, "  %s\n", pbw_ctx_failed(ctx) ? pbw_ctx_error(ctx) : err.msg);
    if (g) memcpy(gx, g, (size_t)(B * T * D) * sizeof(float));
    for (int64_t b = 0; cls && cv && rc == 0 && b < B; b++)
        if (memcmp(cv + b * D, out + b * T * D, (size_t)D * sizeof(float))) {
            fprintf(stderr, "  the slice of a half_only tensor differs from its values\n");
            rc = -1;
        }
    free(cv);
out:
    return half_end(ctx, &a, rc);
}

static int half_block(pbw_device dev, pbw_precision prec, const block_case *bc, float *out,
                      float *mid, int *n_half) {
    return half_block_grad(dev, prec, bc, out, mid, n_half, NULL, NULL);
}
#endif

/* Half activations (pbw_ctx_set_half_activations): a CLIP block whose intermediates stay in
 * bf16/fp16 alone between products (layer norm, the qkv product, attention, and fc1 with its
 * QuickGELU as one fused cuDNN kernel (pbw_linear_quick_gelu), all half_only; the residual
 * stream fp32, or with the adds in place as CLIP's forward without gradients makes them, kept in the half type too and read so by the second
 * layer norm and by a slice of the class token's row) against the CPU in fp32, at the shapes
 * of the image tower (50 tokens), the text tower (77, causal) and ViT-B/16's image tower (197
 * tokens). Beyond cuda_linear_half's operand rounding, each intermediate is rounded once to
 * the half type (2^-9 relative in bf16) before the next op: a few more roundings of the same
 * size, within the same 1e-2 of the output's scale. The QuickGELU output read back checks the
 * fp32 values written on demand (1e-2 of its scale). */
PBW_TEST(cuda_half_activations) {
#ifdef PBW_HAVE_CUDA
    /* the last: ViT-B/16's 197 tokens, more than the tensor-core attention takes (80), so its
     * fallback runs inside a half-activation block; only the values are held to the bound
     * there (which intermediates stay half depends on the fallback) */
    const block_case cases[4] = {{4, 50, 768, 3072, 12, 0, 1, 0},
                                 {3, 77, 512, 2048, 8, 1, 1, 0},
                                 {4, 50, 768, 3072, 12, 0, 1, 1},
                                 {2, 197, 768, 3072, 12, 0, 1, 1}};
    const pbw_precision precs[2] = {PBW_PREC_BF16, PBW_PREC_FP16};
    for (int c = 0; c < 4; c++) {
        const block_case *bc = &cases[c];
        const int64_t ny = bc->B * bc->T * bc->D, nm = bc->B * bc->T * bc->M;
        float *ref = malloc((size_t)ny * sizeof(float)), *got = malloc((size_t)ny * sizeof(float));
        float *rm = malloc((size_t)nm * sizeof(float)), *gm = malloc((size_t)nm * sizeof(float));
        int nh = 0;
        CHECK(half_block(PBW_DEV_CPU, PBW_PREC_FP32, bc, ref, rm, &nh) == 0);
        CHECK(nh == 0); /* never on the CPU */
        double sy = 0, sm = 0;
        for (int64_t i = 0; i < ny; i++) sy = fmax(sy, fabs(ref[i]));
        for (int64_t i = 0; i < nm; i++) sm = fmax(sm, fabs(rm[i]));
        for (int k = 0; k < 2; k++) {
            const long fused0 = pbw_cuda_linear_quick_gelu_calls();
            CHECK(half_block(PBW_DEV_CUDA, precs[k], bc, got, gm, &nh) == 0);
            const long fused = pbw_cuda_linear_quick_gelu_calls() - fused0;
            double ey = 0, em = 0;
            for (int64_t i = 0; i < ny; i++) ey = fmax(ey, fabs(got[i] - ref[i]) / sy);
            for (int64_t i = 0; i < nm; i++) em = fmax(em, fabs(gm[i] - rm[i]) / sm);
            printf("  block T=%lld D=%lld%s%s, %s activations: %d of 5 intermediates and %d of "
                   "2 residual sums half only, %ld fused fc1, rel err out %.2e, QuickGELU %.2e "
                   "(tol 1e-2)\n",
                   (long long)bc->T, (long long)bc->D, bc->causal ? " causal" : "",
                   bc->into ? " in place" : "", pbw_precision_name(precs[k]), nh % 10, nh / 10,
                   fused, ey, em);
            CHECK((bc->T > 80 || nh == (bc->into ? 25 : 5)) && ey <= 1e-2 && em <= 1e-2);
            /* fc1 and QuickGELU as one cuDNN kernel wherever the precision's operands are half
             * (PBW_CUDA_GELU_FUSION=0 turns it off) */
            CHECK(fused == (pbw_env_zero("PBW_CUDA_GELU_FUSION") ? 0 : 1));
        }
        /* half activations off, or fp32 precision: no half-only tensor */
        block_case off = *bc;
        off.half_acts = 0;
        const long fused0 = pbw_cuda_linear_quick_gelu_calls();
        CHECK(half_block(PBW_DEV_CUDA, PBW_PREC_BF16, &off, got, NULL, &nh) == 0 && nh == 0);
        CHECK(half_block(PBW_DEV_CUDA, PBW_PREC_FP32, bc, got, NULL, &nh) == 0 && nh == 0);
        CHECK(pbw_cuda_linear_quick_gelu_calls() == fused0); /* neither fuses */
        double e = 0;
        for (int64_t i = 0; i < ny; i++) e = fmax(e, fabs(got[i] - ref[i]) / sy);
        printf("  fp32 precision with half activations asked: rel err %.2e (tol 1e-5)\n", e);
        CHECK(e <= 1e-5);
        free(ref), free(got), free(rm), free(gm);
    }
#endif
}

#ifdef PBW_HAVE_CUDA
/* x (B,T,D) -> y = [QuickGELU](LN(x; g, be) w^T + b) (O) through pbw_layer_norm_linear, x itself
 * made by a layer norm with a gain in [0.5, 1.5) and a shift in [0.5, 2.5) (rows whose means,
 * ~1.5, are larger than their spread, ~1): under half activations (x half_only) or before them
 * (fp32 values and a half copy, as CLIP's ln_pre). *fused: the fused runs it made. */
static int ln_linear_run(pbw_device dev, pbw_precision prec, int64_t B, int64_t T, int64_t D,
                         int64_t O, int quick, int x_half_only, float *out, long *fused) {
    pbw_err err = {{0}};
    pbw_arena a;
    pbw_ctx *ctx = half_begin(dev, prec, &a);
    if (!ctx) return half_end(ctx, &a, -1);
    const int64_t shapes[6][2] = {{D, 0}, {D, 0}, {D, 0}, {D, 0}, {O, D}, {O, 0}};
    const float lo[6] = {0.5f, 0.5f, 0.5f, -0.1f, 0, -0.1f}, hi[6] = {1.5f, 2.5f, 1.5f, 0.1f, 0, 0.1f};
    pbw_tensor *ws[6]; /* x's gain and shift; the fused norm's gain and shift; w; b */
    pbw_rng rng;
    pbw_rng_seed(&rng, 53 + (uint64_t)D + (uint64_t)O);
    for (int k = 0; k < 6; k++) {
        ws[k] = pbw_tensor_new_in(&a, shapes[k][1] ? 2 : 1, shapes[k], &err);
        if (!ws[k]) return half_end(ctx, &a, -1);
        const float l = k == 4 ? -1.0f / sqrtf((float)D) : lo[k], h = k == 4 ? -l : hi[k];
        for (int64_t i = 0; i < ws[k]->numel; i++)
            ws[k]->data[i] = l + (h - l) * (float)pbw_rng_uniform(&rng);
    }
    int rc = -1;
    float *xh = malloc((size_t)(B * T * D) * sizeof(float));
    for (int64_t i = 0; xh && i < B * T * D; i++) xh[i] = (float)(2 * pbw_rng_uniform(&rng) - 1);
    if (xh && pbw_arena_to_device(&a, ctx, &err) == 0) {
        pbw_tensor *x = pbw_tensor_from_host(ctx, xh, 3, (int64_t[]){B, T, D});
        pbw_ctx_set_half_activations(ctx, x_half_only);
        x = pbw_layer_norm(ctx, x, ws[0], ws[1], 1e-5f);
        pbw_ctx_set_half_activations(ctx, 1);
        const long f0 = pbw_cuda_layer_norm_linear_calls();
        pbw_tensor *y = pbw_layer_norm_linear(ctx, x, ws[2], ws[3], 1e-5f, ws[4], ws[5], quick);
        *fused = pbw_cuda_layer_norm_linear_calls() - f0;
        if (y && y->shape[2] == O && pbw_tensor_read(ctx, y, out) == 0) rc = 0;
        else fprintf(stderr, "  %s\n", pbw_ctx_failed(ctx) ? pbw_ctx_error(ctx) : err.msg);
    }
    free(xh);
    return half_end(ctx, &a, rc);
}
#endif

/* A layer norm and the product after it as one fused cuDNN product (pbw_layer_norm_linear on
 * half activations: the norm's gain folded into a centred half copy of w, each row scaled by its
 * 1/std in the epilogue, the shift folded into the bias), at CLIP's shapes (ViT-B/32's qkv and
 * fc1 with QuickGELU, the text tower's), against the CPU's two ops in fp32 and against the two
 * ops on the GPU (PBW_CUDA_LN_FOLD=0). Rounding: the centred weight once to the half type, as
 * w's half copy is, and x read as its halves (rounded by the op that wrote it); the rows' means
 * (~1.5 times their spread here) add the weight's rounding times mean / std (pbw_cuda_fusion.cu),
 * against the two ops' rounding of the norm's output: both within the 1e-2 of the output's scale
 * that the half products' tests take (cuda_half_activations). */
PBW_TEST(cuda_layer_norm_linear) {
#ifdef PBW_HAVE_CUDA
    const int64_t cases[4][5] = {/* B, T, D, O, QuickGELU */
                                 {4, 50, 768, 2304, 0},
                                 {4, 50, 768, 3072, 1},
                                 {3, 77, 512, 1536, 0},
                                 {3, 77, 512, 2048, 1}};
    for (int c = 0; c < 4; c++) {
        const int64_t B = cases[c][0], T = cases[c][1], D = cases[c][2], O = cases[c][3];
        const int quick = (int)cases[c][4];
        const int64_t n = B * T * O;
        float *ref = malloc((size_t)n * sizeof(float)), *got = malloc((size_t)n * sizeof(float));
        long fused = 0;
        CHECK(ln_linear_run(PBW_DEV_CPU, PBW_PREC_FP32, B, T, D, O, quick, 1, ref, &fused) == 0);
        CHECK(fused == 0);
        double sc = 0;
        for (int64_t i = 0; i < n; i++) sc = fmax(sc, fabs(ref[i]));
        const pbw_precision precs[2] = {PBW_PREC_BF16, PBW_PREC_FP16};
        for (int k = 0; k < 2; k++)
            for (int only = 1; only >= 0; only--)
                for (int off = 0; off < 2; off++) {
                    char *saved;
                    pbw_test_env_set("PBW_CUDA_LN_FOLD", off ? "0" : NULL, &saved);
                    CHECK(ln_linear_run(PBW_DEV_CUDA, precs[k], B, T, D, O, quick, only, got,
                                        &fused) == 0);
                    pbw_test_env_restore("PBW_CUDA_LN_FOLD", saved);
                    double e = 0;
                    for (int64_t i = 0; i < n; i++) e = fmax(e, fabs(got[i] - ref[i]) / sc);
                    printf("  %lld x %lld -> %lld%s, %s, x %s: %s, rel err %.2e (tol 1e-2)\n",
                           (long long)(B * T), (long long)D, (long long)O,
                           quick ? " QuickGELU" : "", pbw_precision_name(precs[k]),
                           only ? "half only" : "fp32 and halves",
                           off ? "two ops (PBW_CUDA_LN_FOLD=0)" : "fused", e);
                    CHECK(e <= 1e-2 && fused == (off ? 0 : 1));
                }
        if (c == 0) { /* a plan built afresh (no file, none in the process) timing 3 configs */
            char dir[] = "/tmp/pbw_fusion_time_XXXXXX";
            char *saved_dir, *saved_configs;
            CHECK(pbw_test_cache_dir_begin(dir, &saved_dir) == 0);
            pbw_test_env_set("PBW_CUDNN_FUSION_CONFIGS", "3", &saved_configs);
            pbw_cuda_linear_quick_gelu_forget();
            CHECK(ln_linear_run(PBW_DEV_CUDA, PBW_PREC_BF16, B, T, D, O, quick, 1, got,
                                &fused) == 0);
            pbw_test_env_restore("PBW_CUDNN_FUSION_CONFIGS", saved_configs);
            CHECK(pbw_test_cache_dir_end(dir, saved_dir) == 0);
            double e = 0;
            for (int64_t i = 0; i < n; i++) e = fmax(e, fabs(got[i] - ref[i]) / sc);
            printf("  bf16, the fastest of 3 configs timed: rel err %.2e (tol 1e-2)\n", e);
            CHECK(fused == 1 && e <= 1e-2);
        }
        /* fp32: the two ops */
        CHECK(ln_linear_run(PBW_DEV_CUDA, PBW_PREC_FP32, B, T, D, O, quick, 1, got, &fused) == 0);
        double e = 0;
        for (int64_t i = 0; i < n; i++) e = fmax(e, fabs(got[i] - ref[i]) / sc);
        printf("  fp32: rel err %.2e (tol 1e-4)\n", e);
        CHECK(fused == 0 && e <= 1e-4);
        free(ref), free(got);
    }
#endif
}

/* Half activations with gradients (pbw_half_out_grad): every intermediate of the block is kept
 * as halves alone, 5 of 5 (the layer norms', attention's and QuickGELU's outputs, which their
 * own backward does not read, and the products' outputs qkv and fc1's, which attention and
 * QuickGELU read as halves, forward and backward). Against PBW_CUDA_HALF_ACTS_GRAD=0 (fp32 values
 * kept, none half only) the differences are fc1's output rounded to the half type before
 * QuickGELU and its derivative (attention rounds q, k and v so anyway), and that derivative
 * taken from fc2's input gradient in bf16 with approximate arithmetic (cuda_half_grad_block):
 * output and x's gradient within the half products' 1e-2 of the CPU's in fp32 either way, and
 * of each other. */
PBW_TEST(cuda_half_acts_grad) {
#ifdef PBW_HAVE_CUDA
    const block_case bc = {2, 50, 768, 3072, 12, 0, 1, 0};
    const int64_t n = bc.B * bc.T * bc.D;
    float *seed = malloc((size_t)n * sizeof(float)), *y[3], *g[3];
    for (int k = 0; k < 3; k++) {
        y[k] = malloc((size_t)n * sizeof(float));
        g[k] = malloc((size_t)n * sizeof(float));
    }
    pbw_rng rng;
    pbw_rng_seed(&rng, 43);
    for (int64_t i = 0; i < n; i++) seed[i] = (float)(2 * pbw_rng_uniform(&rng) - 1);
    int nh[3] = {0, 0, 0};
    CHECK(half_block_grad(PBW_DEV_CPU, PBW_PREC_FP32, &bc, y[2], NULL, &nh[2], seed, g[2]) == 0);
    char *saved;
    for (int off = 0; off < 2; off++) {
        pbw_test_env_set("PBW_CUDA_HALF_ACTS_GRAD", off ? "0" : NULL, &saved);
        CHECK(half_block_grad(PBW_DEV_CUDA, PBW_PREC_BF16, &bc, y[off], NULL, &nh[off], seed,
                              g[off]) == 0);
        pbw_test_env_restore("PBW_CUDA_HALF_ACTS_GRAD", saved);
    }
    double sy = 0, sg = 0, e[3][2] = {{0}};
    for (int64_t i = 0; i < n; i++) sy = fmax(sy, fabs(y[2][i])), sg = fmax(sg, fabs(g[2][i]));
    for (int k = 0; k < 3; k++) /* half only against the CPU, fp32 kept against it, the two */
        for (int64_t i = 0; i < n; i++) {
            const int a = k == 1, b = k == 2 ? 1 : 2;
            e[k][0] = fmax(e[k][0], fabs(y[a][i] - y[b][i]) / sy);
            e[k][1] = fmax(e[k][1], fabs(g[a][i] - g[b][i]) / sg);
        }
    printf("  bf16 block with gradients: %d of 5 intermediates half only (%d with "
           "PBW_CUDA_HALF_ACTS_GRAD=0, %d on the CPU); rel err out, x.grad against the CPU "
           "%.2e, %.2e (fp32 kept: %.2e, %.2e), between the two %.2e, %.2e (tol 1e-2)\n",
           nh[0], nh[1], nh[2], e[0][0], e[0][1], e[1][0], e[1][1], e[2][0], e[2][1]);
    CHECK(nh[0] == 5 && nh[1] == 0 && nh[2] == 0 && sg > 1e-3);
    for (int k = 0; k < 3; k++) CHECK(e[k][0] <= 1e-2 && e[k][1] <= 1e-2);
    for (int k = 0; k < 3; k++) free(y[k]), free(g[k]);
    free(seed);
#endif
}

#ifdef PBW_HAVE_CUDA
/* x (B,T,D) -> layer norm -> qkv product -> attention of the class token's query alone (as
 * CLIP's last block) -> sum(out * seed), seed (B*D floats); x's gradient into gx. */
static int cls_attention_grad(pbw_device dev, pbw_precision prec, int half_acts, int64_t B,
                              int64_t T, int64_t D, int heads, const float *seed, float *gx) {
    pbw_err err = {{0}};
    pbw_arena a;
    pbw_ctx *ctx = half_begin(dev, prec, &a);
    if (!ctx) return half_end(ctx, &a, -1);
    pbw_tensor *w = pbw_tensor_new_in(&a, 2, (int64_t[]){3 * D, D}, &err);
    pbw_tensor *b = pbw_tensor_new_in(&a, 1, (int64_t[]){3 * D}, &err);
    int rc = -1;
    if (!w || !b) goto out;
    pbw_rng rng;
    pbw_rng_seed(&rng, 59);
    for (int64_t i = 0; i < w->numel; i++)
        w->data[i] = (float)(2 * pbw_rng_uniform(&rng) - 1) / sqrtf((float)D);
    for (int64_t i = 0; i < b->numel; i++) b->data[i] = 0.1f * (float)(2 * pbw_rng_uniform(&rng) - 1);
    if (pbw_arena_to_device(&a, ctx, &err)) goto out;
    float *xv = malloc((size_t)(B * T * D) * sizeof(float));
    for (int64_t i = 0; i < B * T * D; i++) xv[i] = (float)(2 * pbw_rng_uniform(&rng) - 1);
    pbw_tensor *x = pbw_tensor_from_host(ctx, xv, 3, (int64_t[]){B, T, D});
    free(xv);
    if (x) x->requires_grad = 1;
    pbw_ctx_set_half_activations(ctx, half_acts);
    pbw_tensor *qkv = pbw_linear(ctx, pbw_layer_norm(ctx, x, NULL, NULL, 1e-5f), w, b);
    pbw_tensor *att = pbw_attention_qkv(ctx, qkv, heads, 1, 0, 0); /* (B,1,D) */
    pbw_tensor *st = pbw_tensor_from_host(ctx, seed, 3, (int64_t[]){B, 1, D});
    pbw_tensor *loss = pbw_sum_all(ctx, pbw_mul(ctx, att, st));
    const float *g = NULL;
    if (loss && pbw_backward(ctx, loss, NULL, &err) == 0 && (g = pbw_grad_host(ctx, x))) {
        memcpy(gx, g, (size_t)(B * T * D) * sizeof(float));
        rc = 0;
    } else {
        fprintf(stderr, "  %s\n", pbw_ctx_failed(ctx) ? pbw_ctx_error(ctx) : err.msg);
    }
out:
    return half_end(ctx, &a, rc);
}
#endif

/* The class token's attention with gradients under half activations (CLIP's last block): qkv
 * is held as halves alone and its gradient is added to, not written whole (one query of 50),
 * so the tensor-core backward adds from the same halves (pbw_cuda_attention_bwd_add_h) instead
 * of converting qkv to fp32 first. x's gradient within 1e-2 of its scale of the CPU's in fp32
 * (the bound of the half-operand products: q, k, v, dO and dS rounded once each), and the
 * same as without half activations (fp32 qkv, the same kernel's fp32-input instance) to 1e-2. */
PBW_TEST(cuda_attention_cls_half_grad) {
#ifdef PBW_HAVE_CUDA
    const int64_t B = 3, T = 50, D = 768, n = B * T * D;
    float *seed = malloc((size_t)(B * D) * sizeof(float)), *g[3];
    for (int k = 0; k < 3; k++) g[k] = malloc((size_t)n * sizeof(float));
    pbw_rng rng;
    pbw_rng_seed(&rng, 61);
    for (int64_t i = 0; i < B * D; i++) seed[i] = (float)(2 * pbw_rng_uniform(&rng) - 1);
    CHECK(cls_attention_grad(PBW_DEV_CPU, PBW_PREC_FP32, 0, B, T, D, 12, seed, g[2]) == 0);
    long calls[2];
    for (int h = 0; h < 2; h++) {
        const long c0 = pbw_cuda_attention_bwd_add_h_calls();
        CHECK(cls_attention_grad(PBW_DEV_CUDA, PBW_PREC_BF16, !h, B, T, D, 12, seed, g[h]) == 0);
        calls[h] = pbw_cuda_attention_bwd_add_h_calls() - c0;
    }
    double sg = 0, e[2] = {0, 0};
    for (int64_t i = 0; i < n; i++) sg = fmax(sg, fabs(g[2][i]));
    for (int64_t i = 0; i < n; i++) {
        e[0] = fmax(e[0], fabs(g[0][i] - g[2][i]) / sg);
        e[1] = fmax(e[1], fabs(g[0][i] - g[1][i]) / sg);
    }
    printf("  class token attention, bf16 with gradients: %ld added from halves (%ld without "
           "half activations); rel err x.grad %.2e against the CPU, %.2e against fp32 qkv "
           "(tol 1e-2)\n", calls[0], calls[1], e[0], e[1]);
    CHECK(calls[0] == 1 && calls[1] == 0 && sg > 1e-3 && e[0] <= 1e-2 && e[1] <= 1e-2);
    free(seed), free(g[0]), free(g[1]), free(g[2]);
#endif
}

/* The gradients CLIP's products read in bf16, written in bf16 by the op that makes them
 * (bf16 block with gradients and half activations): attention's backward writes qkv's
 * gradient as halves alone (pbw_tensor.grad_half), and the second layer norm's backward, the
 * last to add to the residual sum's gradient, writes its bf16 copy beside the fp32 values that
 * pass on to the residual (pbw_tensor.grad_half_copy). Each is the rounding the conversion pass
 * makes of the fp32 values: x's gradient must be the same bits as with PBW_CUDA_HALF_GRAD=0,
 * where neither is written, when the products' own input gradients stay fp32
 * (PBW_CUDA_HALF_GX=0 in both runs). By default those the layer norms and QuickGELU read are
 * written in bf16 alone (pbw_cuda_layer_norm_backward_gyh, pbw_cuda_unary_backward_half_hh;
 * QuickGELU's derivative then with the approximate exponential and division): one more
 * rounding (2^-9 relative) of each and a few float32 ulps, so x's gradient within 1e-2 of its
 * scale of the fp32 chain's, the bound of the other half-operand products. */
PBW_TEST(cuda_half_grad_block) {
#ifdef PBW_HAVE_CUDA
    const block_case bc = {2, 50, 768, 3072, 12, 0, 1, 0};
    const int64_t n = bc.B * bc.T * bc.D;
    float *seed = malloc((size_t)n * sizeof(float)), *y = malloc((size_t)n * sizeof(float));
    float *g[3] = {malloc((size_t)n * sizeof(float)), malloc((size_t)n * sizeof(float)),
                   malloc((size_t)n * sizeof(float))};
    pbw_rng rng;
    pbw_rng_seed(&rng, 47);
    for (int64_t i = 0; i < n; i++) seed[i] = (float)(2 * pbw_rng_uniform(&rng) - 1);
    /* run 0 the default, 1 PBW_CUDA_HALF_GX=0, 2 that and PBW_CUDA_HALF_GRAD=0 */
    long att[3], ln[3], lnh[3], hh[3];
    int nh = 0;
    char *saved[2];
    for (int k = 0; k < 3; k++) {
        pbw_test_env_set("PBW_CUDA_HALF_GX", k ? "0" : NULL, &saved[0]);
        pbw_test_env_set("PBW_CUDA_HALF_GRAD", k == 2 ? "0" : NULL, &saved[1]);
        const long a0 = pbw_cuda_attention_bwd_half_out_calls();
        const long l0 = pbw_cuda_layer_norm_backward_copy_calls();
        const long lh0 = pbw_cuda_layer_norm_backward_gyh_calls();
        const long h0 = pbw_cuda_unary_backward_half_hh_calls();
        CHECK(half_block_grad(PBW_DEV_CUDA, PBW_PREC_BF16, &bc, y, NULL, &nh, seed, g[k]) == 0);
        att[k] = pbw_cuda_attention_bwd_half_out_calls() - a0;
        ln[k] = pbw_cuda_layer_norm_backward_copy_calls() - l0;
        lnh[k] = pbw_cuda_layer_norm_backward_gyh_calls() - lh0;
        hh[k] = pbw_cuda_unary_backward_half_hh_calls() - h0;
        pbw_test_env_restore("PBW_CUDA_HALF_GRAD", saved[1]);
        pbw_test_env_restore("PBW_CUDA_HALF_GX", saved[0]);
    }
    double sg = 0, e = 0;
    for (int64_t i = 0; i < n; i++) sg = fmax(sg, fabs(g[2][i]));
    for (int64_t i = 0; i < n; i++) e = fmax(e, fabs(g[0][i] - g[2][i]) / sg);
    const int same = memcmp(g[1], g[2], (size_t)n * sizeof(float)) == 0;
    for (int k = 0; k < 3; k++)
        printf("  bf16 block with gradients%s: written in bf16: %ld attention gradients, %ld "
               "layer norm copies, %ld layer norm and %ld QuickGELU gradients from bf16\n",
               k == 0 ? "" : k == 1 ? ", PBW_CUDA_HALF_GX=0" : ", and PBW_CUDA_HALF_GRAD=0",
               att[k], ln[k], lnh[k], hh[k]);
    printf("  x.grad: %s bits in the last two, rel err %.2e of the default from the fp32 chain "
           "(tol 1e-2)\n", same ? "the same" : "DIFFERENT", e);
    CHECK(att[0] == 1 && ln[0] == 1 && lnh[0] == 2 && hh[0] == 1);
    CHECK(att[1] == 1 && ln[1] == 1 && lnh[1] == 0 && hh[1] == 0);
    CHECK(att[2] == 0 && ln[2] == 0 && lnh[2] == 0 && hh[2] == 0);
    CHECK(same && sg > 1e-3 && e <= 1e-2);
    free(seed), free(y), free(g[0]), free(g[1]), free(g[2]);
#endif
}

/* fc1's fused plan (pbw_cuda_fusion.cu) written to the cache folder and read back as a new
 * process would (pbw_cuda_linear_quick_gelu_forget drops the process's plans): the same block
 * output and QuickGELU output to the bit, without building, and the file left as it was; a
 * file whose plan cuDNN refuses (its JSON replaced) is rebuilt and written afresh; PBW_CUDNN_CACHE=0 neither reads nor
 * writes a file. */
#ifdef PBW_HAVE_CUDA
/* The fused plans' files under dir: how many, and the first one's path and size. */
static int fusion_files(const char *dir, char *path, size_t n, long *size) {
    char pattern[600];
    snprintf(pattern, sizeof pattern, "%s/cudnn-fusion-qgelu-*.txt", dir);
    const int count = pbw_test_files(pattern, path, n);
    *size = 0;
    FILE *f = path[0] ? fopen(path, "rb") : NULL;
    if (f) {
        fseek(f, 0, SEEK_END);
        *size = ftell(f);
        fclose(f);
    }
    return count;
}
#endif

PBW_TEST(cuda_linear_quick_gelu_plan_file) {
#ifdef PBW_HAVE_CUDA
    const block_case bc = {4, 50, 768, 3072, 12, 0, 1, 1};
    const int64_t ny = bc.B * bc.T * bc.D, nm = bc.B * bc.T * bc.M;
    char dir[] = "/tmp/pbw_fusion_cache_XXXXXX";
    char *saved_dir, *saved_cache, *saved_configs;
    CHECK(pbw_test_cache_dir_begin(dir, &saved_dir) == 0);
    pbw_test_env_set("PBW_CUDNN_CACHE", NULL, &saved_cache);
    /* every build takes the heuristic's first config (untimed), so the rebuilt plans are the
     * first one's and their outputs its bits */
    pbw_test_env_set("PBW_CUDNN_FUSION_CONFIGS", "1", &saved_configs);
    float *y[4], *m[4];
    for (int k = 0; k < 4; k++) {
        y[k] = malloc((size_t)ny * sizeof(float));
        m[k] = malloc((size_t)nm * sizeof(float));
    }
    pbw_cuda_linear_quick_gelu_forget();
    static const char *what[4] = {"first process (builds, writes the file)",
                                  "second process (reads the file)",
                                  "a file cuDNN refuses (rebuilt, written again)",
                                  "PBW_CUDNN_CACHE=0 (no file read or written)"};
    char path[512];
    long size0 = 0;
    for (int k = 0; k < 4; k++) {
        long size;
        if (k == 2) { /* keep the header line, replace cuDNN's JSON */
            fusion_files(dir, path, sizeof path, &size);
            FILE *f = fopen(path, "rb");
            char head[256] = "";
            if (f && !fgets(head, sizeof head, f)) head[0] = 0;
            if (f) fclose(f);
            f = fopen(path, "wb");
            CHECK(f && head[0]);
            if (f) fprintf(f, "%s{\"not\": \"a plan\"}\n", head), fclose(f);
        }
        if (k == 3) {
            remove(path);
            setenv("PBW_CUDNN_CACHE", "0", 1);
        }
        const long f0 = pbw_cuda_linear_quick_gelu_calls();
        int nh = 0;
        CHECK(half_block(PBW_DEV_CUDA, PBW_PREC_BF16, &bc, y[k], m[k], &nh) == 0);
        const long fused = pbw_cuda_linear_quick_gelu_calls() - f0;
        const long loaded = pbw_cuda_linear_quick_gelu_forget();
        const int files = fusion_files(dir, path, sizeof path, &size);
        const int same = k == 0 || (!memcmp(y[k], y[0], (size_t)ny * sizeof(float)) &&
                                    !memcmp(m[k], m[0], (size_t)nm * sizeof(float)));
        printf("  %s: %ld fused, %ld plan(s) from a file, %d file(s) of %ld bytes, %s\n", what[k],
               fused, loaded, files, size, same ? "outputs equal to the first" : "OUTPUTS DIFFER");
        CHECK(fused == 1 && same);
        if (k == 0) size0 = size;
        if (k == 0) CHECK(loaded == 0 && files == 1 && size > 100);
        if (k == 1) CHECK(loaded == 1 && files == 1 && size == size0);
        if (k == 2) CHECK(loaded == 0 && files == 1 && size > 100);
        if (k == 3) CHECK(loaded == 0 && files == 0);
    }
    for (int k = 0; k < 4; k++) free(y[k]), free(m[k]);
    pbw_test_env_restore("PBW_CUDNN_FUSION_CONFIGS", saved_configs);
    pbw_test_env_restore("PBW_CUDNN_CACHE", saved_cache);
    CHECK(pbw_test_cache_dir_end(dir, saved_dir) == 0);
#endif
}

/* Attention on half activations: qkv made by a layer norm and a product with a half output
 * (half_only), then pbw_attention_qkv, against the CPU in fp32. q, k and v are rounded once to the half type, the
 * tensor-core forward (head size 64, S <= 80) also rounds the softmax weights before P V, and the
 * output is rounded: a few roundings of 2^-9 (bf16) relative, ~4e-3 of the output's scale, 1e-2
 * the bound (as cuda_half_activations). *mma: tensor-core launches it made. */
#ifdef PBW_HAVE_CUDA
typedef struct {
    int64_t B, T;
    int heads, D, causal;
    int64_t nq;
} attn_half_case;

static int half_attention(pbw_device dev, pbw_precision prec, const attn_half_case *ac, float *out,
                          int *half_out, long *mma) {
    pbw_err err = {{0}};
    pbw_arena a;
    pbw_ctx *ctx = half_begin(dev, prec, &a);
    if (!ctx) return half_end(ctx, &a, -1);
    const int64_t I = 96, W = (int64_t)ac->heads * ac->D, R = ac->B * ac->T;
    pbw_tensor *w = pbw_tensor_new_in(&a, 2, (int64_t[]){3 * W, I}, &err);
    pbw_tensor *b = pbw_tensor_new_in(&a, 1, (int64_t[]){3 * W}, &err);
    int rc = -1;
    if (!w || !b) goto out;
    pbw_rng rng;
    pbw_rng_seed(&rng, 23);
    /* unit-variance rows in: q, k entries ~0.5, scores of 64 terms scaled by 1/8 spread over
     * a few units, softmax rows neither flat nor one-hot */
    for (int64_t i = 0; i < w->numel; i++) w->data[i] = 0.15f * (float)(2 * pbw_rng_uniform(&rng) - 1);
    for (int64_t i = 0; i < b->numel; i++) b->data[i] = 0.1f * (float)(2 * pbw_rng_uniform(&rng) - 1);
    if (pbw_arena_to_device(&a, ctx, &err)) goto out;
    float *xh = malloc((size_t)(R * I) * sizeof(float));
    for (int64_t i = 0; i < R * I; i++) xh[i] = (float)(2 * pbw_rng_uniform(&rng) - 1);
    pbw_tensor *x = pbw_tensor_from_host(ctx, xh, 3, (int64_t[]){ac->B, ac->T, I});
    free(xh);
    pbw_ctx_set_half_activations(ctx, 1);
    long before = dev == PBW_DEV_CUDA ? pbw_cuda_attention_mma_calls() : 0;
    /* a layer norm first, as in CLIP's blocks: its half output makes the product's half */
    pbw_tensor *qkv = pbw_linear(ctx, pbw_layer_norm(ctx, x, NULL, NULL, 1e-5f), w, b);
    pbw_tensor *att = pbw_attention_qkv(ctx, qkv, ac->heads, ac->nq, ac->causal, 0);
    *mma = dev == PBW_DEV_CUDA ? pbw_cuda_attention_mma_calls() - before : 0;
    *half_out = att && att->half_only;
    if (att && pbw_tensor_read(ctx, att, out) == 0) rc = 0;
    else fprintf(stderr, "  %s\n", pbw_ctx_error(ctx));
out:
    return half_end(ctx, &a, rc);
}
#endif

PBW_TEST(cuda_attention_half) {
#ifdef PBW_HAVE_CUDA
    /* B, T, heads, head size, causal, queries; the first seven take the tensor cores (keys in
     * 1 to 5 tiles of 16), the last two do not (head size 32; 81 keys) and run the tiled or the
     * fp32 forward */
    const attn_half_case cases[] = {
        {3, 50, 12, 64, 0, 50}, /* ViT-B/32 */
        {3, 50, 12, 64, 0, 1},  /* its last block: the class token's query alone */
        {2, 77, 8, 64, 1, 77},  /* text */
        {2, 5, 2, 64, 0, 5},    {2, 33, 3, 64, 1, 33}, {2, 80, 2, 64, 0, 80},
        {200, 50, 12, 64, 0, 50}, /* 2,400 heads: more than the resident grid has blocks */
        {200, 50, 12, 64, 0, 1},  /* the same, the last block's class-token query */
        {60, 77, 8, 64, 1, 77},   /* 480 text heads */
        {240, 33, 3, 64, 1, 33},  /* 720 heads of odd sizes */
        {2, 20, 4, 32, 0, 20},  {1, 81, 2, 64, 1, 81},
    };
    const int n = (int)(sizeof cases / sizeof cases[0]);
    const pbw_precision precs[2] = {PBW_PREC_BF16, PBW_PREC_FP16};
    for (int c = 0; c < n; c++) {
        const attn_half_case *ac = &cases[c];
        const int64_t ny = ac->B * ac->nq * ac->heads * ac->D;
        float *ref = malloc((size_t)ny * sizeof(float)), *got = malloc((size_t)ny * sizeof(float));
        int ho = 0;
        long mma = 0;
        CHECK(half_attention(PBW_DEV_CPU, PBW_PREC_FP32, ac, ref, &ho, &mma) == 0);
        double sy = 0;
        for (int64_t i = 0; i < ny; i++) sy = fmax(sy, fabs(ref[i]));
        CHECK(sy > 0.1); /* a real signal, not zeros */
        for (int k = 0; k < 2; k++) {
            const long pipe0 = pbw_cuda_attention_pipe_calls();
            CHECK(half_attention(PBW_DEV_CUDA, precs[k], ac, got, &ho, &mma) == 0);
            const long pipe = pbw_cuda_attention_pipe_calls() - pipe0;
            double e = 0;
            for (int64_t i = 0; i < ny; i++) e = fmax(e, fabs(got[i] - ref[i]) / sy);
            const int want_mma = ac->D == 64 && ac->T <= 80;
            printf("  B=%lld T=%lld heads=%d D=%d%s queries=%lld, %s: %s%s, half output %d, "
                   "rel err %.2e (tol 1e-2)\n", (long long)ac->B, (long long)ac->T, ac->heads,
                   ac->D, ac->causal ? " causal" : "", (long long)ac->nq,
                   pbw_precision_name(precs[k]), mma ? "tensor cores" : "other kernel",
                   pipe ? " (resident grid)" : "", ho, e);
            CHECK(e <= 1e-2 && mma == want_mma && (ho || !want_mma));
            /* 2,400 heads are more than any GPU keeps resident: the resident kernel ran */
            CHECK(ac->B * ac->heads < 2400 || pipe == 1);
            /* the resident double-buffered kernel against a block a head: the same bits */
            float *one = malloc((size_t)ny * sizeof(float));
            setenv("PBW_CUDA_ATTN_PIPE", "0", 1);
            CHECK(half_attention(PBW_DEV_CUDA, precs[k], ac, one, &ho, &mma) == 0);
            unsetenv("PBW_CUDA_ATTN_PIPE");
            CHECK(memcmp(one, got, (size_t)ny * sizeof(float)) == 0);
            free(one);
        }
        free(ref), free(got);
    }
#endif
}

PBW_TEST(cuda_linear_half) {
#ifdef PBW_HAVE_CUDA
    const int64_t R = 200, D = 768, M = 3072;
    float *ref = malloc((size_t)(R * D) * sizeof(float)), *got = malloc((size_t)(R * D) * sizeof(float));
    float *f32 = malloc((size_t)(R * D) * sizeof(float));
    CHECK(half_mlp(PBW_DEV_CPU, PBW_PREC_FP32, ref, R, D, M) == 0);
    double scale = 0;
    for (int64_t i = 0; i < R * D; i++) scale = fmax(scale, fabs(ref[i]));
    const pbw_precision precs[2] = {PBW_PREC_BF16, PBW_PREC_FP16};
    for (int k = 0; k < 2; k++) {
        long before = pbw_cuda_linear_half_calls();
        CHECK(half_mlp(PBW_DEV_CUDA, precs[k], got, R, D, M) == 0);
        long calls = pbw_cuda_linear_half_calls() - before;
        double e = 0;
        for (int64_t i = 0; i < R * D; i++) e = fmax(e, fabs(got[i] - ref[i]) / scale);
        printf("  layer norm -> linear -> QuickGELU -> linear, %s operands: %ld half products, "
               "rel err %.2e (tol 1e-2)\n", pbw_precision_name(precs[k]), calls, e);
        CHECK(calls == 2 && e <= 1e-2);
    }
    long before = pbw_cuda_linear_half_calls();
    CHECK(half_mlp(PBW_DEV_CUDA, PBW_PREC_FP32, f32, R, D, M) == 0);
    CHECK(pbw_cuda_linear_half_calls() == before); /* fp32: never half operands */
    double e = 0;
    for (int64_t i = 0; i < R * D; i++) e = fmax(e, fabs(f32[i] - ref[i]) / scale);
    printf("  fp32 precision: rel err %.2e (tol 1e-5)\n", e);
    CHECK(e <= 1e-5);
    free(ref), free(got), free(f32);
#endif
}

/* ---------- measured cuBLASLt algorithms, kept on disk ----------
 * half_mlp's two products on bf16 operands (136 rows: shapes no other test makes) measure their
 * algorithms in a first "process", which writes the cache file; after pbw_cuda_linear_lt_forget
 * (what a new process starts from) they take both from the file, measure nothing and give the
 * same bytes (the same algorithms on the same data). Lines whose algorithm cuBLASLt rejects
 * (cublasLtMatmulAlgoCheck) are passed over and measured afresh; PBW_CUBLASLT_CACHE=0 neither
 * reads nor writes; fp32 takes the heuristic's pick and measures nothing. With gradients the
 * two input gradients' products (plans of their own, lt_key.grad) are measured and written the
 * same way: a second process measures nothing and gives the same gradient bytes. */
#ifdef PBW_HAVE_CUDA
static int lines_of(const char *path) {
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    int n = 0;
    for (int c; (c = fgetc(f)) != EOF;) n += c == '\n';
    fclose(f);
    return n;
}

/* Rewrites every line of the file with the same key and an algorithm of all ones bits. */
static int foreign_algorithms(const char *path) {
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    char out[4096] = "", line[512];
    while (fgets(line, sizeof line, f)) {
        char *p = line;
        for (int k = 0; k < 10 && p; k++) p = strchr(p + 1, ' '); /* the tag, 9 key fields */
        if (!p) continue;
        *p = 0;
        size_t n = strlen(out);
        snprintf(out + n, sizeof out - n, "%s", line);
        for (int k = 0; k < 8; k++) {
            n = strlen(out);
            snprintf(out + n, sizeof out - n, " 0xffffffffffffffff");
        }
        n = strlen(out);
        snprintf(out + n, sizeof out - n, "\n");
    }
    fclose(f);
    f = fopen(path, "w");
    if (!f) return -1;
    int rc = fputs(out, f) >= 0 ? 0 : -1;
    fclose(f);
    return rc;
}
#endif

PBW_TEST(cuda_linear_lt_choice) {
#ifdef PBW_HAVE_CUDA
    const int64_t R = 136, D = 768, M = 3072;
    char dir[] = "/tmp/pbw_cublaslt_cache_XXXXXX";
    char *saved_dir, *saved_heur, *saved_cache;
    CHECK(pbw_test_cache_dir_begin(dir, &saved_dir) == 0);
    pbw_test_env_set("PBW_CUBLASLT_HEURISTIC", NULL, &saved_heur); /* measuring and the file */
    pbw_test_env_set("PBW_CUBLASLT_CACHE", NULL, &saved_cache);    /* on, as by default */
    float *y1 = malloc((size_t)(R * D) * sizeof(float)), *y2 = malloc((size_t)(R * D) * sizeof(float));
    pbw_cuda_linear_lt_forget();
    long m = pbw_cuda_linear_lt_measured();
    long measured[5], hits[5];
    for (int k = 0; k < 5; k++) {
        if (k == 3) setenv("PBW_CUBLASLT_CACHE", "0", 1);
        CHECK(half_mlp(PBW_DEV_CUDA, k == 4 ? PBW_PREC_FP32 : PBW_PREC_BF16, k ? y2 : y1, R, D,
                       M) == 0);
        unsetenv("PBW_CUBLASLT_CACHE");
        measured[k] = pbw_cuda_linear_lt_measured() - m;
        m += measured[k];
        hits[k] = pbw_cuda_linear_lt_forget();
        char path[512], pattern[600];
        snprintf(pattern, sizeof pattern, "%s/cublaslt-*.txt", dir);
        pbw_test_files(pattern, path, sizeof path);
        int lines = lines_of(path);
        double e = 0, sc = 0;
        for (int64_t i = 0; i < R * D; i++) {
            e = fmax(e, fabs(y2[i] - y1[i]));
            sc = fmax(sc, fabs(y1[i]));
        }
        static const char *what[5] = {"first process", "second process (the file)",
                                      "foreign algorithms in the file", "PBW_CUBLASLT_CACHE=0",
                                      "fp32"};
        printf("  %s: %ld measured, %ld from the file, %d line(s)%s", what[k], measured[k],
               hits[k], lines, k ? "" : "\n");
        if (k) printf(", max diff to the first %.2e of %.2f\n", e, sc);
        const int want_lines[5] = {2, 2, 4, 4, 4};
        CHECK(lines == want_lines[k]);
        if (k == 0) CHECK(measured[k] == 2 && hits[k] == 0);
        if (k == 1) CHECK(measured[k] == 0 && hits[k] == 2 && e == 0);
        if (k == 2 || k == 3) CHECK(measured[k] == 2 && hits[k] == 0 && e <= 1e-2 * sc);
        if (k == 4) CHECK(measured[k] == 0 && hits[k] == 0 && e <= 1e-2 * sc);
        if (k == 1) CHECK(foreign_algorithms(path) == 0 && lines_of(path) == 2);
    }
    float *seed = malloc((size_t)(R * D) * sizeof(float)), *g[2];
    g[0] = malloc((size_t)(R * D) * sizeof(float)), g[1] = malloc((size_t)(R * D) * sizeof(float));
    pbw_rng rng;
    pbw_rng_seed(&rng, 53);
    for (int64_t i = 0; i < R * D; i++) seed[i] = (float)(2 * pbw_rng_uniform(&rng) - 1);
    long mg[2];
    int lg[2];
    for (int k = 0; k < 2; k++) {
        CHECK(half_mlp_grad(PBW_DEV_CUDA, PBW_PREC_BF16, y1, R, D, M, seed, g[k], NULL) == 0);
        mg[k] = pbw_cuda_linear_lt_measured() - m;
        m += mg[k];
        pbw_cuda_linear_lt_forget();
        char path[512], pattern[600];
        snprintf(pattern, sizeof pattern, "%s/cublaslt-*.txt", dir);
        pbw_test_files(pattern, path, sizeof path);
        lg[k] = lines_of(path);
    }
    const int same = memcmp(g[0], g[1], (size_t)(R * D) * sizeof(float)) == 0;
    printf("  with gradients: %ld measured (%d lines), then %ld (%d lines), x.grad %s bits\n",
           mg[0], lg[0], mg[1], lg[1], same ? "the same" : "DIFFERENT");
    CHECK(mg[0] >= 2 && lg[0] == 4 + mg[0] && mg[1] == 0 && lg[1] == lg[0] && same);
    free(seed), free(g[0]), free(g[1]);
    pbw_test_env_restore("PBW_CUBLASLT_CACHE", saved_cache);
    pbw_test_env_restore("PBW_CUBLASLT_HEURISTIC", saved_heur);
    free(y1), free(y2);
    CHECK(pbw_test_cache_dir_end(dir, saved_dir) == 0);
#endif
}

/* ---------- input gradients on bf16 operands (pbw_cuda_linear_backward_half) ----------
 * CLIP's MLP shapes at 4 crops: x (4,50,768) -> linear W (3072,768) + b, and h (4,50,3072) ->
 * linear_add W (768,3072) + b + r, x, h and the residual r needing gradients, the weights
 * constants moved by pbw_arena_to_device; the loss a fixed random-weighted sum of the output
 * (pbw_backward's seed), so x.grad = seed W and r.grad = seed. Against the CPU in fp32: the
 * half path rounds the seed and W to bf16 (8 bits of mantissa, unit roundoff 2^-9) and sums
 * 3072 or 768 products in fp32: ~3e-3 of the largest value expected, 1e-2 the bound. r.grad is
 * the seed added to zeros in the same pass: exact (1e-6). The half path must be taken once per
 * product in bf16 (pbw_cuda_linear_half_backward_calls) and never in fp16 (small gradients
 * would flush to zero without loss scaling), fp32 (1e-5 against the CPU, as cuda_linear) or
 * with PBW_CUDA_HALF_BACKWARD=0 (the fp32-operand product in bf16 math: 1e-2). */
#ifdef PBW_HAVE_CUDA
/* add 0: linear of x (4,50,768); add 1: linear_add of x (4,50,3072) and r (4,50,768). gx gets
 * x's gradient, gr (add 1 only) r's. */
static int half_backward(pbw_device dev, pbw_precision prec, int add, float *gx, float *gr) {
    const int64_t B = 4, T = 50, I = add ? 3072 : 768, O = add ? 768 : 3072, R = B * T;
    pbw_err err = {{0}};
    pbw_arena a;
    pbw_ctx *ctx = half_begin(dev, prec, &a);
    if (!ctx) return half_end(ctx, &a, -1);
    pbw_tensor *w = pbw_tensor_new_in(&a, 2, (int64_t[]){O, I}, &err);
    pbw_tensor *b = pbw_tensor_new_in(&a, 1, (int64_t[]){O}, &err);
    float *xh = malloc((size_t)(R * I) * sizeof(float));
    float *rh = malloc((size_t)(R * O) * sizeof(float));
    float *seed = malloc((size_t)(R * O) * sizeof(float));
    int rc = -1;
    if (!w || !b || !xh || !rh || !seed) goto out;
    pbw_rng rng;
    pbw_rng_seed(&rng, 31);
    const float sc = 1.0f / sqrtf((float)I); /* weights ~ 1/sqrt(fan-in) */
    for (int64_t i = 0; i < w->numel; i++) w->data[i] = sc * (float)(2 * pbw_rng_uniform(&rng) - 1);
    for (int64_t i = 0; i < O; i++) b->data[i] = 0.1f * (float)(2 * pbw_rng_uniform(&rng) - 1);
    for (int64_t i = 0; i < R * I; i++) xh[i] = (float)(2 * pbw_rng_uniform(&rng) - 1);
    for (int64_t i = 0; i < R * O; i++) rh[i] = (float)(2 * pbw_rng_uniform(&rng) - 1);
    for (int64_t i = 0; i < R * O; i++) seed[i] = (float)(2 * pbw_rng_uniform(&rng) - 1);
    if (pbw_arena_to_device(&a, ctx, &err)) goto out;
    pbw_tensor *x = pbw_tensor_from_host(ctx, xh, 3, (int64_t[]){B, T, I});
    pbw_tensor *r = add ? pbw_tensor_from_host(ctx, rh, 3, (int64_t[]){B, T, O}) : NULL;
    if (!x || (add && !r)) goto out;
    x->requires_grad = 1;
    if (r) r->requires_grad = 1;
    pbw_tensor *y = add ? pbw_linear_add(ctx, x, w, b, r) : pbw_linear(ctx, x, w, b);
    if (!y || pbw_backward(ctx, y, seed, &err)) goto out;
    const float *g = pbw_grad_host(ctx, x);
    if (!g) goto out;
    memcpy(gx, g, (size_t)(R * I) * sizeof(float));
    if (r) {
        if (!(g = pbw_grad_host(ctx, r))) goto out;
        memcpy(gr, g, (size_t)(R * O) * sizeof(float));
    }
    rc = 0;
out:
    if (rc) fprintf(stderr, "  %s\n", pbw_ctx_failed(ctx) ? pbw_ctx_error(ctx) : err.msg);
    free(xh), free(rh), free(seed);
    return half_end(ctx, &a, rc);
}
#endif

PBW_TEST(cuda_linear_half_backward) {
#ifdef PBW_HAVE_CUDA
    const struct {
        pbw_precision prec;
        int env_off; /* PBW_CUDA_HALF_BACKWARD=0 */
        long want;   /* half products expected */
        double tol;
    } runs[4] = {{PBW_PREC_BF16, 0, 1, 1e-2},
                 {PBW_PREC_FP16, 0, 0, 1e-2},
                 {PBW_PREC_FP32, 0, 0, 1e-5},
                 {PBW_PREC_BF16, 1, 0, 1e-2}};
    for (int add = 0; add < 2; add++) {
        const int64_t nx = 200 * (add ? 3072 : 768), nr = 200 * 768;
        float *ref = malloc((size_t)nx * sizeof(float)), *got = malloc((size_t)nx * sizeof(float));
        float *rref = malloc((size_t)nr * sizeof(float));
        float *rgot = malloc((size_t)nr * sizeof(float));
        CHECK(half_backward(PBW_DEV_CPU, PBW_PREC_FP32, add, ref, rref) == 0);
        double sx = 0, sr = 0;
        for (int64_t i = 0; i < nx; i++) sx = fmax(sx, fabs(ref[i]));
        for (int64_t i = 0; add && i < nr; i++) sr = fmax(sr, fabs(rref[i]));
        CHECK(sx > 0.1); /* a real signal, not zeros */
        for (int k = 0; k < 4; k++) {
            if (runs[k].env_off) setenv("PBW_CUDA_HALF_BACKWARD", "0", 1);
            const long before = pbw_cuda_linear_half_backward_calls();
            CHECK(half_backward(PBW_DEV_CUDA, runs[k].prec, add, got, rgot) == 0);
            const long calls = pbw_cuda_linear_half_backward_calls() - before;
            if (runs[k].env_off) unsetenv("PBW_CUDA_HALF_BACKWARD");
            double e = 0, er = 0;
            for (int64_t i = 0; i < nx; i++) e = fmax(e, fabs(got[i] - ref[i]) / sx);
            for (int64_t i = 0; add && i < nr; i++) er = fmax(er, fabs(rgot[i] - rref[i]) / sr);
            printf("  %s, %s%s: %ld half products, rel err x.grad %.2e (tol %.0e)",
                   add ? "linear_add 3072 -> 768" : "linear 768 -> 3072",
                   pbw_precision_name(runs[k].prec),
                   runs[k].env_off ? ", PBW_CUDA_HALF_BACKWARD=0" : "", calls, e, runs[k].tol);
            if (add) printf(", r.grad %.2e (tol 1e-6)", er);
            printf("\n");
            CHECK(calls == runs[k].want && e <= runs[k].tol && er <= 1e-6);
        }
        free(ref), free(got), free(rref), free(rgot);
    }
#endif
}

/* QuickGELU's gradient into a product's input gradient (CLIP's MLP with gradients): in bf16
 * QuickGELU's backward writes its gradient in bf16 alone for fc1's product
 * (pbw_tensor.grad_half), which then needs no conversion pass. That is the rounding the
 * conversion made of the fp32 gradient: x's gradient must be the same bits as with
 * PBW_CUDA_HALF_GRAD=0 (fp32 gradient, then converted), and within the half products' 1e-2
 * of the CPU's. */
PBW_TEST(cuda_half_grad_chain) {
#ifdef PBW_HAVE_CUDA
    const int64_t R = 200, D = 768, M = 3072, n = R * D;
    float *y = malloc((size_t)n * sizeof(float)), *seed = malloc((size_t)n * sizeof(float));
    float *ref = malloc((size_t)n * sizeof(float)), *g[2];
    g[0] = malloc((size_t)n * sizeof(float)), g[1] = malloc((size_t)n * sizeof(float));
    pbw_rng rng;
    pbw_rng_seed(&rng, 41);
    for (int64_t i = 0; i < n; i++) seed[i] = (float)(2 * pbw_rng_uniform(&rng) - 1);
    CHECK(half_mlp_grad(PBW_DEV_CPU, PBW_PREC_FP32, y, R, D, M, seed, ref, NULL) == 0);
    double sx = 0;
    for (int64_t i = 0; i < n; i++) sx = fmax(sx, fabs(ref[i]));
    CHECK(sx > 1e-3); /* a real signal */
    long calls[2];
    for (int off = 0; off < 2; off++) {
        if (off) setenv("PBW_CUDA_HALF_GRAD", "0", 1);
        const long before = pbw_cuda_unary_backward_half_calls();
        CHECK(half_mlp_grad(PBW_DEV_CUDA, PBW_PREC_BF16, y, R, D, M, seed, g[off], NULL) == 0);
        calls[off] = pbw_cuda_unary_backward_half_calls() - before;
        if (off) unsetenv("PBW_CUDA_HALF_GRAD");
    }
    double e = 0;
    for (int64_t i = 0; i < n; i++) e = fmax(e, fabs(g[0][i] - ref[i]) / sx);
    const int same = memcmp(g[0], g[1], (size_t)n * sizeof(float)) == 0;
    printf("  bf16 MLP gradient: %ld and %ld half gradients written (PBW_CUDA_HALF_GRAD=0), "
           "%s bits; rel err x.grad %.2e (tol 1e-2)\n",
           calls[0], calls[1], same ? "the same" : "DIFFERENT", e);
    CHECK(calls[0] == 1 && calls[1] == 0 && same && e <= 1e-2);
    /* h feeding tanh too, whose backward adds to h's gradient after QuickGELU's wrote the bf16
     * copy: the copy is written out in fp32 first (pbw_grad_out), the product reads that, and
     * h's gradient read back is whole: x's and h's within 1e-2 of the CPU's */
    float *gh_ref = malloc((size_t)(R * M) * sizeof(float)), *gh = malloc((size_t)(R * M) * sizeof(float));
    CHECK(half_mlp_grad(PBW_DEV_CPU, PBW_PREC_FP32, y, R, D, M, seed, ref, gh_ref) == 0);
    const long before2 = pbw_cuda_unary_backward_half_calls();
    CHECK(half_mlp_grad(PBW_DEV_CUDA, PBW_PREC_BF16, y, R, D, M, seed, g[0], gh) == 0);
    const long calls2 = pbw_cuda_unary_backward_half_calls() - before2;
    double sx2 = 0, sh = 0, e2 = 0, eh = 0;
    for (int64_t i = 0; i < n; i++) sx2 = fmax(sx2, fabs(ref[i]));
    for (int64_t i = 0; i < R * M; i++) sh = fmax(sh, fabs(gh_ref[i]));
    for (int64_t i = 0; i < n; i++) e2 = fmax(e2, fabs(g[0][i] - ref[i]) / sx2);
    for (int64_t i = 0; i < R * M; i++) eh = fmax(eh, fabs(gh[i] - gh_ref[i]) / sh);
    printf("  h with a second consumer: %ld half gradients written, rel err x.grad %.2e, "
           "h.grad %.2e (tol 1e-2)\n", calls2, e2, eh);
    CHECK(calls2 == 1 && sx2 > 1e-3 && sh > 1e-3 && e2 <= 1e-2 && eh <= 1e-2);
    free(gh_ref), free(gh);
    free(y), free(seed), free(ref), free(g[0]), free(g[1]);
#endif
}

/* Attention with gradients on tensor cores (bf16/fp16 precision: the forward keeps fp32
 * outputs and weights, pbw_cuda_attention_mma_calls and pbw_cuda_attention_bwd_mma_calls must
 * grow): q, k, v, the weights, dO and dS are each rounded once to the half type (2^-9 relative
 * in bf16, 2^-11 in fp16) before fp32 sums of up to 64 terms, ~3e-3 of the outputs' and the
 * gradients' scale in bf16; 1e-2 is the bound, as for the other half-operand products. */
PBW_TEST(cuda_attention_bwd_half) {
#ifdef PBW_HAVE_CUDA
    const double tol = 1e-2;
    const pbw_precision precs[2] = {PBW_PREC_BF16, PBW_PREC_FP16};
    char name[80];
    for (int k = 0; k < 2; k++) {
        pbw_cuda_set_precision(precs[k]);
        const long before = pbw_cuda_attention_bwd_mma_calls(),
                   fwd_before = pbw_cuda_attention_mma_calls();
        /* CLIP ViT (2,50,3*768), 12 heads, all queries and the class token only */
        const int64_t nqs[2] = {50, 1};
        for (int i = 0; i < 2; i++) {
            qkv_arg a = {12, 0, nqs[i]};
            parity_input in[] = {{3, {2, 50, 3 * 768}, 1}};
            snprintf(name, sizeof name, "vit nq=%lld %s", (long long)nqs[i],
                     pbw_precision_name(precs[k]));
            CHECK(parity_check(name, qkv_fn, &a, 1, in, tol) == 0);
        }
        /* causal, 64 tokens (four whole row tiles), 2 heads */
        qkv_arg c = {2, 1, 64};
        parity_input cin[] = {{3, {3, 64, 3 * 128}, 1}};
        snprintf(name, sizeof name, "causal T=64 %s", pbw_precision_name(precs[k]));
        CHECK(parity_check(name, qkv_fn, &c, 1, cin, tol) == 0);
        const long calls = pbw_cuda_attention_bwd_mma_calls() - before,
                   fwd = pbw_cuda_attention_mma_calls() - fwd_before;
        printf("  %s: %ld forward and %ld backward launches on tensor cores\n",
               pbw_precision_name(precs[k]), fwd, calls);
        CHECK(calls >= 3 && fwd >= 3);
    }
    pbw_cuda_set_precision(PBW_PREC_FP32);
#endif
}
