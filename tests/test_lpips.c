/* test_lpips.c: LPIPS (src/models/pbw_lpips.c) against the PyTorch reference
 * tools/reference/lpips.py, whose fixture (tests/fixtures/lpips/) holds a random AlexNet trunk
 * in torchvision's names (float16, torch.save zip), two image batches (2,3,56,64), the real
 * v0.1 heads' outputs and the gradient of a random linear function of the spatial map. Also:
 * the real heads file loads with the expected shapes, LPIPS(x, x) = 0, a batch-1 reference
 * broadcasts, lpips-style trunk names load, errors name what is wrong, and the image gradient
 * agrees with central differences at single pixels.
 *
 * Tolerances (issue 5 asks 1e-4 for the values, 1e-3 relative for the gradient):
 *  - spatial map, scalar and Paint by Word's weighted value: |ours - ref| <= 1e-4 absolute.
 *    Both sides are float32 with the same fp16-exact weights and inputs; they differ only in
 *    summation order (PyTorch's oneDNN convolutions vs our im2col + OpenBLAS), a relative
 *    error of ~1e-6 per layer on values of size ~0.1, so ~1e-7 expected. 1e-4 is the
 *    acceptance line; the worst difference is printed.
 *  - gradient: max|ours - ref| / max|ref| <= 1e-3. The same rounding, plus the rare ReLU
 *    pre-activation or max-pool pair within rounding of each other choosing differently
 *    (which moves a few elements by a small amount), stays far below it; a wrong backward
 *    moves it to O(1).
 *  - finite differences (non-spatial LPIPS, 24 single pixels, eps 1e-2): 5e-6 + 5% of the
 *    numeric derivative. This check is coarse on purpose: per-pixel derivatives of the
 *    averaged distance are only 1e-5..1e-3, the float32 loss difference carries ~1e-8 of
 *    rounding (~5e-7 in the quotient), and a step of 1e-2 crosses some of the network's dense
 *    ReLU / max-pool kinks (measured: 1-2% disagreement, worst case a few 1e-6 absolute). It
 *    catches a wrong sign, a lost term or a misrouted gradient (errors of 100%); the 1e-3
 *    parity with PyTorch's autograd above is the precise check of the backward.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/pbw_ops.h"
#include "formats/pbw_npy.h"
#include "formats/pbw_records.h"
#include "gradcheck.h"
#include "models/pbw_lpips.h"
#include "pbw_test.h"

#define FIX "tests/fixtures/lpips/"
#define HEADS PBW_SHARED("data/lpips/v0.1/alex.pth")
#define TRUNK FIX "alexnet_features_fp16.pth"

static int load_npy(const char *path, pbw_npy *a) {
    pbw_err err;
    if (pbw_npy_read(path, a, &err)) {
        fprintf(stderr, "  %s\n", err.msg);
        return -1;
    }
    return 0;
}

static pbw_lpips *load_model(void) {
    pbw_lpips *m = NULL;
    pbw_err err;
    if (pbw_lpips_load(TRUNK, HEADS, &m, &err)) {
        fprintf(stderr, "  %s\n", err.msg);
        return NULL;
    }
    return m;
}

static pbw_tensor *wrap(pbw_ctx *ctx, pbw_npy *a) {
    return pbw_tensor_wrap(ctx, a->data, a->ndim, a->shape);
}


/* The painted region of tools/reference/lpips.py's mask_of: a rectangle with a 4-pixel ramp,
 * values k/4. */
static float mask_at(int y, int x) {
    int d = y - 12;
    if (40 - y < d) d = 40 - y;
    if (x - 16 < d) d = x - 16;
    if (48 - x < d) d = 48 - x;
    if (d < 0) d = 0;
    if (d > 4) d = 4;
    return (float)d / 4.0f;
}

PBW_TEST(lpips_heads_load_from_real_file) {
    pbw_records r;
    pbw_err err;
    if (pbw_load_checkpoint(HEADS, &r, &err)) {
        CHECK_MSG(0, "%s", err.msg);
        return;
    }
    for (int k = 0; k < PBW_LPIPS_LAYERS; k++) {
        char name[64];
        snprintf(name, sizeof name, "lin%d.model.1.weight", k);
        const pbw_record *rec = pbw_records_find(&r, name);
        CHECK_MSG(rec, "%s missing", name);
        if (!rec) continue;
        CHECK(rec->ndim == 4 && rec->shape[0] == 1 && rec->shape[1] == pbw_lpips_channels[k] &&
              rec->shape[2] == 1 && rec->shape[3] == 1);
    }
    pbw_records_free(&r);
    CHECK(pbw_lpips_channels[0] == 64 && pbw_lpips_channels[1] == 192 &&
          pbw_lpips_channels[2] == 384 && pbw_lpips_channels[3] == 256 &&
          pbw_lpips_channels[4] == 256);

    pbw_lpips *m = load_model();
    CHECK(m);
    if (!m) return;
    for (int k = 0; k < PBW_LPIPS_LAYERS; k++) {
        const pbw_tensor *w = m->lin_w[k];
        CHECK(w->ndim == 4 && w->shape[0] == 1 && w->shape[1] == pbw_lpips_channels[k] &&
              w->shape[2] == 1 && w->shape[3] == 1 && !w->requires_grad);
        /* trained heads are nonnegative (lpips clamps them while training) and not all zero */
        float s = 0;
        for (int64_t i = 0; i < w->numel; i++) {
            CHECK(w->data[i] >= 0);
            s += w->data[i];
        }
        CHECK(s > 0);
        CHECK(!m->conv_w[k]->requires_grad && !m->conv_b[k]->requires_grad);
    }
    CHECK(m->conv_w[0]->shape[0] == 64 && m->conv_w[0]->shape[1] == 3 &&
          m->conv_w[0]->shape[2] == 11 && m->conv_w[4]->shape[0] == 256 &&
          m->conv_w[4]->shape[1] == 256 && m->conv_w[4]->shape[2] == 3);
    pbw_lpips_free(m);
}

PBW_TEST(lpips_matches_pytorch) {
    pbw_lpips *m = load_model();
    pbw_npy x0, x1, r, e_sp, e_sc, e_g, e_w;
    memset(&x0, 0, sizeof x0), x1 = r = e_sp = e_sc = e_g = e_w = x0;
    if (!m || load_npy(FIX "x0.npy", &x0) || load_npy(FIX "x1.npy", &x1) ||
        load_npy(FIX "r.npy", &r) || load_npy(FIX "spatial.npy", &e_sp) ||
        load_npy(FIX "scalar.npy", &e_sc) || load_npy(FIX "grad_x0.npy", &e_g) ||
        load_npy(FIX "weighted.npy", &e_w)) {
        CHECK_MSG(0, "fixture or model missing (tools/reference/lpips.py writes them)");
        goto done;
    }
    pbw_err err;
    pbw_ctx *ctx = pbw_ctx_new(PBW_DEV_CPU, &err);
    pbw_tensor *t0 = wrap(ctx, &x0), *t1 = wrap(ctx, &x1);
    t0->requires_grad = 1;
    pbw_tensor *sp = pbw_lpips_forward(ctx, m, t0, t1, 1);
    CHECK_MSG(sp, "%s", pbw_ctx_error(ctx));
    if (sp) {
        CHECK(sp->ndim == 4 && sp->shape[0] == 2 && sp->shape[1] == 1 && sp->shape[2] == 56 &&
              sp->shape[3] == 64 && sp->numel == e_sp.numel);
        double rm, d = gc_max_diff(sp->data, e_sp.data, e_sp.numel, &rm);
        printf("  spatial map: max|d| = %.3g (max|ref| = %.3g)\n", d, rm);
        CHECK(d <= 1e-4);

        /* Paint by Word's weighting with weight = 1 - mask (1,1,H,W) */
        pbw_tensor *w = pbw_tensor_new(ctx, 4, (int64_t[]){1, 1, 56, 64});
        for (int y = 0; y < 56; y++)
            for (int x = 0; x < 64; x++) w->data[y * 64 + x] = 1.0f - mask_at(y, x);
        pbw_tensor *wt = pbw_lpips_weighted(ctx, sp, w);
        CHECK_MSG(wt && wt->numel == 2, "%s", pbw_ctx_error(ctx));
        if (wt) {
            d = gc_max_diff(wt->data, e_w.data, 2, &rm);
            printf("  weighted: max|d| = %.3g (ref %.6g %.6g)\n", d, e_w.data[0], e_w.data[1]);
            CHECK(d <= 1e-4);
        }

        /* gradient of sum(R * map) w.r.t. x0 */
        CHECK(pbw_backward(ctx, sp, r.data, &err) == 0);
        CHECK(t0->grad);
        if (t0->grad) {
            d = gc_max_diff(t0->grad, e_g.data, e_g.numel, &rm);
            printf("  d/dx0: max|d| / max|ref| = %.3g (max|ref| = %.3g)\n", d / rm, rm);
            CHECK(d <= 1e-3 * rm);
        }
        CHECK(t1->grad == NULL);
        for (int k = 0; k < PBW_LPIPS_LAYERS; k++)
            CHECK(m->conv_w[k]->grad == NULL && m->lin_w[k]->grad == NULL);
    }
    pbw_ctx_reset(ctx);

    pbw_tensor *sc = pbw_lpips_forward(ctx, m, wrap(ctx, &x0), wrap(ctx, &x1), 0);
    CHECK_MSG(sc, "%s", pbw_ctx_error(ctx));
    if (sc) {
        CHECK(sc->ndim == 4 && sc->shape[0] == 2 && sc->numel == 2);
        double rm, d = gc_max_diff(sc->data, e_sc.data, 2, &rm);
        printf("  scalar: max|d| = %.3g (ref %.6g %.6g)\n", d, e_sc.data[0], e_sc.data[1]);
        CHECK(d <= 1e-4);
        CHECK(!sc->requires_grad); /* nothing asked for a gradient: no tape */
    }
    pbw_ctx_free(ctx);
done:
    pbw_npy_free(&x0), pbw_npy_free(&x1), pbw_npy_free(&r), pbw_npy_free(&e_sp);
    pbw_npy_free(&e_sc), pbw_npy_free(&e_g), pbw_npy_free(&e_w);
    pbw_lpips_free(m);
}

PBW_TEST(lpips_of_identical_images_is_zero) {
    pbw_lpips *m = load_model();
    pbw_npy x0;
    memset(&x0, 0, sizeof x0);
    if (!m || load_npy(FIX "x0.npy", &x0)) {
        CHECK(0);
        goto done;
    }
    pbw_err err;
    pbw_ctx *ctx = pbw_ctx_new(PBW_DEV_CPU, &err);
    for (int spatial = 0; spatial < 2; spatial++) {
        pbw_tensor *a = wrap(ctx, &x0), *b = pbw_tensor_copy(ctx, a);
        a->requires_grad = 1;
        pbw_tensor *y = pbw_lpips_forward(ctx, m, a, b, spatial);
        CHECK_MSG(y, "%s", pbw_ctx_error(ctx));
        if (!y) break;
        int nonzero = 0;
        for (int64_t i = 0; i < y->numel; i++) nonzero += y->data[i] != 0.0f;
        CHECK_MSG(nonzero == 0, "spatial %d: %d nonzero outputs", spatial, nonzero);
        /* at the minimum the gradient is zero (and finite) */
        CHECK(pbw_backward(ctx, y, NULL, &err) == 0);
        int bad = 0;
        for (int64_t i = 0; a->grad && i < a->numel; i++) bad += a->grad[i] != 0.0f;
        CHECK_MSG(a->grad && bad == 0, "spatial %d: %d nonzero gradient elements", spatial, bad);
        pbw_ctx_reset(ctx);
    }
    pbw_ctx_free(ctx);
done:
    pbw_npy_free(&x0);
    pbw_lpips_free(m);
}

/* pbw_lpips_keep (the painting loss's masked LPIPS, the spatial map's resize folded into the
 * weights) against the reference's weighted value and against pbw_lpips_weighted of the
 * spatial map, values and gradients. The same sums in another order: 1e-5 relative for the
 * values (about 20k fp32 terms), 1e-4 of the largest gradient element. */
PBW_TEST(lpips_keep_matches_weighted_map) {
    pbw_lpips *m = load_model();
    pbw_npy x0, x1, e_w;
    memset(&x0, 0, sizeof x0), x1 = e_w = x0;
    if (!m || load_npy(FIX "x0.npy", &x0) || load_npy(FIX "x1.npy", &x1) ||
        load_npy(FIX "weighted.npy", &e_w)) {
        CHECK_MSG(0, "fixture or model missing (tools/reference/lpips.py writes them)");
        goto done;
    }
    pbw_err err;
    pbw_ctx *ctx = pbw_ctx_new(PBW_DEV_CPU, &err);
    float keep[56 * 64];
    double keep_sum = 0;
    for (int y = 0; y < 56; y++)
        for (int x = 0; x < 64; x++) keep_sum += keep[y * 64 + x] = 1.0f - mask_at(y, x);
    pbw_tensor *ref[PBW_LPIPS_LAYERS], *kw[PBW_LPIPS_LAYERS];
    CHECK(pbw_lpips_features(ctx, m, wrap(ctx, &x1), ref) == 0);
    CHECK(pbw_lpips_keep_weights(ctx, keep, 56, 64, ref, kw) == 0);
    /* the adjoint: the weights sum to the keep map's sum (bilinear rows sum to 1) */
    for (int k = 0; k < PBW_LPIPS_LAYERS && kw[k]; k++) {
        double s = 0;
        for (int64_t i = 0; i < kw[k]->numel; i++) s += kw[k]->data[i];
        CHECK_MSG(fabs(s - keep_sum) <= 1e-4 * keep_sum, "layer %d: %.6g vs %.6g", k, s, keep_sum);
    }
    pbw_tensor *t0 = wrap(ctx, &x0);
    t0->requires_grad = 1;
    pbw_tensor *v = pbw_lpips_keep(ctx, m, t0, ref, kw, keep_sum);
    CHECK_MSG(v && v->numel == 2, "%s", pbw_ctx_error(ctx));
    pbw_ctx *ctx2 = pbw_ctx_new(PBW_DEV_CPU, &err); /* a tape of its own */
    pbw_tensor *w = pbw_tensor_from_host(ctx2, keep, 4, (int64_t[]){1, 1, 56, 64});
    pbw_tensor *u = wrap(ctx2, &x0);
    u->requires_grad = 1;
    pbw_tensor *c = pbw_lpips_weighted(ctx2, pbw_lpips_forward(ctx2, m, u, wrap(ctx2, &x1), 1), w);
    CHECK(c && c->numel == 2);
    if (v && c) {
        double rm, d = gc_max_diff(v->data, e_w.data, 2, &rm);
        double dc = gc_max_diff(v->data, c->data, 2, NULL);
        printf("  keep: %.7g %.7g; reference %.7g %.7g (max|d| %.3g); map %.3g apart\n",
               v->data[0], v->data[1], e_w.data[0], e_w.data[1], d, dc);
        CHECK(d <= 1e-4 && dc <= 1e-5 * rm);
        CHECK(pbw_backward(ctx, pbw_sum_all(ctx, v), NULL, &err) == 0 && t0->grad);
        CHECK(pbw_backward(ctx2, pbw_sum_all(ctx2, c), NULL, &err) == 0 && u->grad);
        if (t0->grad && u->grad) {
            double gm, gd = gc_max_diff(t0->grad, u->grad, t0->numel, &gm);
            printf("  d/dx0: max|d| / max|map's| = %.3g\n", gd / gm);
            CHECK(gm > 0 && gd <= 1e-4 * gm);
        }
    }
    pbw_ctx_free(ctx2);
    pbw_ctx_free(ctx);
done:
    pbw_npy_free(&x0), pbw_npy_free(&x1), pbw_npy_free(&e_w);
    pbw_lpips_free(m);
}

/* A (1,3,H,W) reference against a batch equals comparing each image with it; the features
 * path (pbw_lpips_features + pbw_lpips_compare) equals pbw_lpips_forward. */
PBW_TEST(lpips_broadcasts_one_reference) {
    pbw_lpips *m = load_model();
    pbw_npy x0, x1;
    memset(&x0, 0, sizeof x0), x1 = x0;
    if (!m || load_npy(FIX "x0.npy", &x0) || load_npy(FIX "x1.npy", &x1)) {
        CHECK(0);
        goto done;
    }
    pbw_err err;
    pbw_ctx *ctx = pbw_ctx_new(PBW_DEV_CPU, &err);
    int64_t per = 3 * 56 * 64, one[4] = {1, 3, 56, 64};
    pbw_tensor *ref1 = pbw_tensor_wrap(ctx, x1.data, 4, one); /* x1[0] */
    pbw_tensor *batch = pbw_lpips_forward(ctx, m, wrap(ctx, &x0), ref1, 1);
    CHECK_MSG(batch, "%s", pbw_ctx_error(ctx));
    for (int n = 0; batch && n < 2; n++) {
        pbw_tensor *single =
            pbw_lpips_forward(ctx, m, pbw_tensor_wrap(ctx, x0.data + n * per, 4, one), ref1, 1);
        CHECK(single);
        if (!single) break;
        /* same arithmetic per image, so equal up to GEMM blocking: 1e-6 */
        double d = gc_max_diff(batch->data + n * 56 * 64, single->data, 56 * 64, NULL);
        CHECK_MSG(d <= 1e-6, "image %d: max|d| = %.3g", n, d);
    }
    pbw_tensor *f0[PBW_LPIPS_LAYERS], *f1[PBW_LPIPS_LAYERS];
    CHECK(pbw_lpips_features(ctx, m, wrap(ctx, &x0), f0) == 0);
    CHECK(pbw_lpips_features(ctx, m, ref1, f1) == 0);
    static const int64_t hw[PBW_LPIPS_LAYERS][2] = {{13, 15}, {6, 7}, {2, 3}, {2, 3}, {2, 3}};
    for (int k = 0; k < PBW_LPIPS_LAYERS; k++)
        CHECK(f0[k] && f0[k]->shape[0] == 2 && f0[k]->shape[1] == pbw_lpips_channels[k] &&
              f0[k]->shape[2] == hw[k][0] && f0[k]->shape[3] == hw[k][1]);
    pbw_tensor *c = pbw_lpips_compare(ctx, m, f0, f1, 1, 56, 64);
    CHECK(c && batch && gc_max_diff(c->data, batch->data, c->numel, NULL) == 0);
    /* the reference's features kept in a second context across resets of the first */
    pbw_ctx *keep = pbw_ctx_new(PBW_DEV_CPU, &err);
    float *expect = malloc((size_t)2 * 56 * 64 * sizeof(float));
    if (batch) memcpy(expect, batch->data, (size_t)2 * 56 * 64 * sizeof(float));
    CHECK(pbw_lpips_features(keep, m, pbw_tensor_wrap(keep, x1.data, 4, one), f1) == 0);
    for (int step = 0; step < 2; step++) {
        pbw_ctx_reset(ctx);
        pbw_tensor *a = wrap(ctx, &x0);
        a->requires_grad = 1;
        CHECK(pbw_lpips_features(ctx, m, a, f0) == 0);
        c = pbw_lpips_compare(ctx, m, f0, f1, 1, 56, 64);
        CHECK(c && gc_max_diff(c->data, expect, c->numel, NULL) == 0);
        CHECK(c && pbw_backward(ctx, pbw_sum_all(ctx, c), NULL, &err) == 0 && a->grad);
    }
    free(expect);
    pbw_ctx_free(keep);
    pbw_ctx_free(ctx);
done:
    pbw_npy_free(&x0), pbw_npy_free(&x1);
    pbw_lpips_free(m);
}

typedef struct fd_user {
    const pbw_lpips *m;
    pbw_tensor *ref;
} fd_user;

static pbw_tensor *lpips_fn(pbw_ctx *ctx, pbw_tensor **in, void *user) {
    fd_user *u = user;
    pbw_tensor *ref = pbw_tensor_wrap(ctx, u->ref->data, 4, u->ref->shape);
    return pbw_lpips_forward(ctx, u->m, in[0], ref, 0);
}

/* Per-pixel central differences of the (non-spatial) LPIPS against the backward, at 24
 * pixels spread over a 40x44 crop of the first image pair (gc_check; small so that the 48
 * extra forward passes stay cheap). A whole-image random direction is no good here: LPIPS is
 * so dense in ReLU and max-pool kinks that its central differences along such a direction
 * only settle for steps below ~1e-5 (checked in float64 with the reference), out of float32's
 * reach; one pixel moved by 1e-2 crosses few kinks. */
PBW_TEST(lpips_gradient_finite_differences) {
    pbw_lpips *m = load_model();
    pbw_npy x0, x1;
    memset(&x0, 0, sizeof x0), x1 = x0;
    if (!m || load_npy(FIX "x0.npy", &x0) || load_npy(FIX "x1.npy", &x1)) {
        CHECK(0);
        goto done;
    }
    enum { CH = 40, CW = 44, Y0 = 8, X0 = 12 };
    float a[3 * CH * CW], b[3 * CH * CW];
    for (int c = 0; c < 3; c++)
        for (int y = 0; y < CH; y++)
            for (int x = 0; x < CW; x++) {
                int64_t src = ((int64_t)c * 56 + Y0 + y) * 64 + X0 + x;
                a[(c * CH + y) * CW + x] = x0.data[src];
                b[(c * CH + y) * CW + x] = x1.data[src];
            }
    pbw_tensor ref;
    memset(&ref, 0, sizeof ref);
    ref.data = b;
    ref.ndim = 4;
    ref.shape[0] = 1, ref.shape[1] = 3, ref.shape[2] = CH, ref.shape[3] = CW;
    fd_user u = {m, &ref};
    gc_input in = {4, {1, 3, CH, CW}, a, 1};
    gc_opts o = {1e-2, 5e-6, 5e-2, 24};
    CHECK(gc_check("lpips pixels", lpips_fn, &u, 1, &in, o) == 0);
done:
    pbw_npy_free(&x0), pbw_npy_free(&x1);
    pbw_lpips_free(m);
}

/* The trunk under an lpips.LPIPS state dict's names (net.sliceK.I.*) with the heads in the
 * same records; and messages that name what is missing or misshapen. */
PBW_TEST(lpips_loader_names_and_errors) {
    pbw_records tv, hd, alt;
    pbw_err err;
    memset(&alt, 0, sizeof alt);
    if (pbw_load_checkpoint(TRUNK, &tv, &err) || pbw_load_checkpoint(HEADS, &hd, &err)) {
        CHECK_MSG(0, "%s", err.msg);
        return;
    }
    static const int slice_of[11] = {1, 0, 0, 2, 0, 0, 3, 0, 4, 0, 5};
    for (size_t i = 0; i < tv.count; i++) {
        int idx = atoi(tv.items[i].name + strlen("features."));
        char name[96];
        snprintf(name, sizeof name, "net.slice%d.%s", slice_of[idx],
                 tv.items[i].name + strlen("features."));
        pbw_record *rec = pbw_records_push(&alt, name, &err);
        char *nm = rec->name;
        *rec = tv.items[i]; /* data stays owned by tv */
        rec->name = nm;
    }
    for (size_t i = 0; i < hd.count; i++) {
        pbw_record *rec = pbw_records_push(&alt, hd.items[i].name, &err);
        char *nm = rec->name;
        *rec = hd.items[i];
        rec->name = nm;
    }
    pbw_lpips *a = NULL, *b = NULL;
    CHECK_MSG(pbw_lpips_from_records(&alt, &alt, &a, &err) == 0, "%s", err.msg);
    CHECK(pbw_lpips_from_records(&tv, &hd, &b, &err) == 0);
    if (a && b)
        for (int k = 0; k < PBW_LPIPS_LAYERS; k++) {
            CHECK(memcmp(a->conv_w[k]->data, b->conv_w[k]->data,
                         (size_t)a->conv_w[k]->numel * sizeof(float)) == 0);
            CHECK(memcmp(a->conv_b[k]->data, b->conv_b[k]->data,
                         (size_t)a->conv_b[k]->numel * sizeof(float)) == 0);
        }
    pbw_lpips_free(a);
    pbw_lpips_free(b);

    /* heads looked for in the trunk file */
    pbw_lpips *c = NULL;
    CHECK(pbw_lpips_load(TRUNK, NULL, &c, &err) != 0 && c == NULL);
    CHECK_MSG(strstr(err.msg, "lin0.model.1.weight") && strstr(err.msg, TRUNK), "%s", err.msg);
    /* no trunk at all */
    CHECK(pbw_lpips_load(HEADS, HEADS, &c, &err) != 0);
    CHECK_MSG(strstr(err.msg, "features.0.weight"), "%s", err.msg);
    /* a misshapen tensor is named with both shapes */
    alt.items[2].shape[1] = 7;
    CHECK(pbw_lpips_from_records(&alt, &alt, &c, &err) != 0);
    CHECK_MSG(strstr(err.msg, "net.slice2.3.weight") && strstr(err.msg, "(192,64,5,5)"), "%s",
              err.msg);
    pbw_records_free(&alt);
    pbw_records_free(&tv);
    pbw_records_free(&hd);
}

PBW_TEST(lpips_rejects_bad_inputs) {
    pbw_lpips *m = load_model();
    if (!m) {
        CHECK(0);
        return;
    }
    pbw_err err;
    pbw_ctx *ctx = pbw_ctx_new(PBW_DEV_CPU, &err);
    pbw_tensor *ok = pbw_tensor_zeros(ctx, 4, (int64_t[]){2, 3, 40, 40});
    struct { int64_t s0[4], s1[4]; const char *msg; } bad[] = {
        {{2, 3, 34, 40}, {2, 3, 34, 40}, ">= 35"},   /* too small for AlexNet */
        {{2, 1, 40, 40}, {2, 1, 40, 40}, "(N,3,H,W)"}, /* grayscale */
        {{2, 3, 40, 40}, {2, 3, 40, 41}, "differ"},
        {{2, 3, 40, 40}, {3, 3, 40, 40}, "differ"},  /* batch neither N nor 1 */
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        pbw_tensor *a = pbw_tensor_zeros(ctx, 4, bad[i].s0), *b = pbw_tensor_zeros(ctx, 4, bad[i].s1);
        CHECK(pbw_lpips_forward(ctx, m, a, b, 1) == NULL && pbw_ctx_failed(ctx));
        CHECK_MSG(strstr(pbw_ctx_error(ctx), bad[i].msg), "case %zu: '%s'", i,
                  pbw_ctx_error(ctx));
        pbw_ctx_reset(ctx);
    }
    CHECK(pbw_lpips_forward(ctx, m, NULL, NULL, 1) == NULL);
    pbw_ctx_reset(ctx);

    /* weighting: a zero weight gives 0 (the reference skips the term), shapes are checked */
    ok = pbw_tensor_zeros(ctx, 4, (int64_t[]){2, 1, 40, 40});
    for (int64_t i = 0; i < ok->numel; i++) ok->data[i] = 1.0f;
    pbw_tensor *w0 = pbw_tensor_zeros(ctx, 4, (int64_t[]){1, 1, 40, 40});
    pbw_tensor *z = pbw_lpips_weighted(ctx, ok, w0);
    CHECK(z && z->numel == 2 && z->data[0] == 0 && z->data[1] == 0);
    pbw_tensor *w1 = pbw_tensor_zeros(ctx, 4, (int64_t[]){1, 1, 40, 41});
    CHECK(pbw_lpips_weighted(ctx, ok, w1) == NULL && strstr(pbw_ctx_error(ctx), "weight"));
    pbw_ctx_reset(ctx);
    pbw_ctx_free(ctx);
    pbw_lpips_free(m);
}
