/* test_stylegan2.c: the StyleGAN2 generator against our PyTorch reference
 * (tools/reference/stylegan2.py), its fused ops against finite differences, the loaders of the
 * three checkpoint formats, refusals, and the seed bank against NumPy.
 *
 * Fixtures (tests/fixtures/stylegan2, written by
 *   /usr/bin/python3 tools/reference/stylegan2.py fixtures tests/fixtures/stylegan2 --size 32 \
 *       --style-dim 32 --n-mlp 2 --channels 16,16,12,8 --seed 3 --batch 2):
 * a 32-px generator with narrow channels, random weights (nonzero noise weights and biases), its
 * checkpoint as torch zip, torch legacy and safetensors, and the reference's images, gradients
 * of sum(r * image) and masked-style outputs.
 *
 * Tolerances (float32 on both sides; the reference modulates weights where we modulate inputs,
 * and its convolutions sum in another order, so results agree to rounding, not bit for bit):
 *  - images: 2e-5 absolute on values of size ~1 (a dozen layers of float32 sums of at most
 *    16*9 terms; measured ~1e-6). A wrong tap, pad or scale is off by > 1e-2.
 *  - gradients: max |ours - ref| <= 1e-3 * max |ref| (the 1e-3 relative; measured ~1e-6).
 *    At full size that is float32's own noise floor: the gradient of sum(r * image) with random
 *    r sums terms of both signs over every pixel and layer, and PyTorch float32 itself is
 *    5e-4 .. 1e-3 (max-relative) away from the same model run in float64 at 64 px. So the
 *    parity directories also hold float64 gradients; there we must be within
 *    max(1e-3, 2 x PyTorch float32's distance) of float64, and print every number.
 *  - masks: 1e-6 (both computed in double, stored float).
 *  - fused ops: gc_check defaults (see gradcheck.h); both ops are piecewise polynomial.
 *
 * With PBW_SG2_PARITY_DIR set (tools/check_stylegan2.sh), stylegan2_parity_dir runs the same
 * comparisons on a directory the reference wrote for a full-size model and prints the numbers.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/pbw_ops.h"
#include "core/pbw_ops_stylegan.h"
#include "core/pbw_rng.h"
#include "formats/pbw_npy.h"
#include "gradcheck.h"
#include "models/pbw_stylegan2.h"
#include "pbw_test.h"

#define FIX "tests/fixtures/stylegan2"

/* Reads dir/name.npy into a tensor in ctx (NULL on failure, message printed). */
static pbw_tensor *load_npy(pbw_ctx *ctx, const char *dir, const char *name) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s.npy", dir, name);
    pbw_npy a;
    pbw_err err = {{0}};
    if (pbw_npy_read(path, &a, &err)) {
        fprintf(stderr, "  %s\n", err.msg);
        return NULL;
    }
    pbw_tensor *t = pbw_tensor_new(ctx, a.ndim, a.shape);
    if (t) memcpy(t->data, a.data, (size_t)a.numel * sizeof(float));
    pbw_npy_free(&a);
    return t;
}

/* max |a - b| over n. */
static double max_abs(const float *a, int64_t n) {
    double m = 0;
    for (int64_t i = 0; i < n; i++)
        if (fabs((double)a[i]) > m) m = fabs((double)a[i]);
    return m;
}

/* Compares an image with the reference file; returns max abs diff (or +inf). */
static double cmp_image(pbw_ctx *ctx, const char *dir, const char *name, const pbw_tensor *img) {
    pbw_tensor *ref = load_npy(ctx, dir, name);
    if (!ref || !img || ref->numel != img->numel) {
        fprintf(stderr, "  %s: missing output or size mismatch (%s)\n", name, pbw_ctx_error(ctx));
        return INFINITY;
    }
    return gc_max_diff(img->data, ref->data, ref->numel, NULL);
}

/* Gradient errors against one reference file: max|a-b| / max|b| and ||a-b|| / ||b||. */
typedef struct gerr {
    double max_rel, l2_rel;
    int present;
} gerr;

static gerr grad_err(pbw_ctx *ctx, const char *dir, const char *name, const pbw_tensor *t,
                     int optional) {
    gerr e = {INFINITY, INFINITY, 0};
    char path[600];
    snprintf(path, sizeof path, "%s/%s.npy", dir, name);
    FILE *f = fopen(path, "rb");
    if (!f && optional) return (gerr){0, 0, 0};
    if (f) fclose(f);
    pbw_tensor *ref = load_npy(ctx, dir, name);
    if (!ref || !t || !t->grad || ref->numel != t->numel) {
        fprintf(stderr, "  %s: missing gradient or size mismatch\n", name);
        return e;
    }
    double scale = max_abs(ref->data, ref->numel), d2 = 0, r2 = 0;
    for (int64_t i = 0; i < ref->numel; i++) {
        double d = (double)t->grad[i] - ref->data[i];
        d2 += d * d;
        r2 += (double)ref->data[i] * ref->data[i];
    }
    e.max_rel = gc_max_diff(t->grad, ref->data, ref->numel, NULL) / (scale > 0 ? scale : 1);
    e.l2_rel = sqrt(d2) / (r2 > 0 ? sqrt(r2) : 1);
    if (isnan(e.l2_rel)) e.l2_rel = INFINITY;
    e.present = 1;
    return e;
}

/* Against PyTorch float32 (name) and, when the directory has it, float64 (name_f64); then also
 * PyTorch float32 against float64 (torch_max_rel), the float32 noise floor of this gradient. */
typedef struct gcmp {
    gerr f32, f64;
    double torch_max_rel;
} gcmp;

static gcmp cmp_grad(pbw_ctx *ctx, const char *dir, const char *name, const pbw_tensor *t) {
    char n64[96];
    snprintf(n64, sizeof n64, "%s_f64", name);
    gcmp c = {grad_err(ctx, dir, name, t, 0), grad_err(ctx, dir, n64, t, 1), 0};
    if (c.f64.present) {
        pbw_tensor *r32 = load_npy(ctx, dir, name), *r64 = load_npy(ctx, dir, n64);
        if (r32 && r64 && r32->numel == r64->numel) {
            double scale = max_abs(r64->data, r64->numel);
            c.torch_max_rel = gc_max_diff(r32->data, r64->data, r64->numel, NULL) /
                              (scale > 0 ? scale : 1);
        } else {
            c.torch_max_rel = INFINITY;
        }
    }
    return c;
}

/* A leaf copy of a tensor that asks for its gradient (in the keep arena). */
static pbw_tensor *leaf(pbw_arena *keep, const pbw_tensor *t, int grad) {
    pbw_err err;
    pbw_tensor *l = pbw_tensor_new_in(keep, t->ndim, t->shape, &err);
    if (!l) return NULL;
    memcpy(l->data, t->data, (size_t)t->numel * sizeof(float));
    l->requires_grad = grad;
    return l;
}

typedef struct parity {
    double img_z, img_z_trunc, img_w, img_wplus, img_masked_orig, img_masked_mixed, masks;
    gcmp grad_z, grad_w, grad_wplus, grad_masked_orig, grad_masked_mixed;
} parity;

/* sum(r * img) backward from the image; fills the leaf's gradient. */
static int backward_r(pbw_ctx *ctx, pbw_tensor *img, const pbw_tensor *r) {
    pbw_err err = {{0}};
    if (!img || !r || img->numel != r->numel) return -1;
    if (pbw_backward(ctx, img, r->data, &err)) {
        fprintf(stderr, "  backward: %s\n", err.msg);
        return -1;
    }
    return 0;
}

/* Runs every comparison of a reference directory (fixture or parity run). */
static int run_parity(const char *dir, const char *ckpt, parity *p) {
    pbw_err err = {{0}};
    memset(p, 0, sizeof *p);
    pbw_stylegan2 *g;
    if (pbw_sg2_load(ckpt, &g, &err)) {
        fprintf(stderr, "  %s\n", err.msg);
        return -1;
    }
    pbw_ctx *ctx = pbw_ctx_new(PBW_DEV_CPU, &err);
    pbw_ctx *io = pbw_ctx_new(PBW_DEV_CPU, &err); /* holds inputs across resets of ctx */
    pbw_arena keep;
    pbw_arena_init(&keep, 1 << 16);
    pbw_tensor *z = load_npy(io, dir, "z"), *r = load_npy(io, dir, "r");
    pbw_tensor *w = load_npy(io, dir, "w"), *wp = load_npy(io, dir, "wplus");
    pbw_tensor *w0 = load_npy(io, dir, "w0"), *mask = load_npy(io, dir, "mask");
    int rc = -1;
    if (!z || !r || !w || !wp || !w0 || !mask) goto done;

    pbw_ctx_set_grad(ctx, 0);
    p->img_z = cmp_image(ctx, dir, "img_z", pbw_sg2_from_z(ctx, g, z, 1.0f, NULL));
    pbw_ctx_reset(ctx);
    p->img_z_trunc = cmp_image(ctx, dir, "img_z_trunc", pbw_sg2_from_z(ctx, g, z, 0.7f, NULL));
    pbw_ctx_reset(ctx);
    pbw_ctx_set_grad(ctx, 1);

    pbw_tensor *zl = leaf(&keep, z, 1);
    if (backward_r(ctx, pbw_sg2_from_z(ctx, g, zl, 0.7f, NULL), r)) goto done;
    p->grad_z = cmp_grad(ctx, dir, "grad_z_trunc", zl);
    pbw_ctx_reset(ctx);

    pbw_tensor *wl = leaf(&keep, w, 1);
    pbw_tensor *img = pbw_sg2_from_w(ctx, g, wl, NULL);
    p->img_w = cmp_image(ctx, dir, "img_w", img);
    if (backward_r(ctx, img, r)) goto done;
    p->grad_w = cmp_grad(ctx, dir, "grad_w", wl);
    pbw_ctx_reset(ctx);

    pbw_tensor *wpl = leaf(&keep, wp, 1);
    img = pbw_sg2_from_wplus(ctx, g, wpl, NULL);
    p->img_wplus = cmp_image(ctx, dir, "img_wplus", img);
    if (backward_r(ctx, img, r)) goto done;
    p->grad_wplus = cmp_grad(ctx, dir, "grad_wplus", wpl);
    pbw_ctx_reset(ctx);

    pbw_sg2_mask mk;
    if (pbw_sg2_mask_init(&mk, g, mask->data, (int)mask->shape[0], (int)mask->shape[1], &err)) {
        fprintf(stderr, "  %s\n", err.msg);
        goto done;
    }
    for (int i = 2; i <= g->log_size; i++) {
        char name[32];
        snprintf(name, sizeof name, "mask_%d", 1 << i);
        pbw_tensor *ref = load_npy(ctx, dir, name);
        double d = ref && ref->numel == mk.m[i]->numel
                       ? gc_max_diff(mk.m[i]->data, ref->data, ref->numel, NULL) : INFINITY;
        if (d > p->masks) p->masks = d;
    }
    pbw_ctx_reset(ctx);
    pbw_tensor *lat0[PBW_SG2_MAX_LATENT];
    for (int i = 0; i < g->n_latent; i++) lat0[i] = w0;
    for (int mixed = 0; mixed < 2; mixed++) {
        pbw_sg2_opts o = {.mask = &mk, .lat0 = lat0, .demod_mixed = mixed};
        pbw_tensor *wm = leaf(&keep, w, 1);
        img = pbw_sg2_from_w(ctx, g, wm, &o);
        double di = cmp_image(ctx, dir, mixed ? "img_masked_mixed" : "img_masked_orig", img);
        if (backward_r(ctx, img, r)) {
            pbw_sg2_mask_free(&mk);
            goto done;
        }
        gcmp dg = cmp_grad(ctx, dir, mixed ? "grad_masked_mixed" : "grad_masked_orig", wm);
        if (mixed) p->img_masked_mixed = di, p->grad_masked_mixed = dg;
        else p->img_masked_orig = di, p->grad_masked_orig = dg;
        pbw_ctx_reset(ctx);
    }
    pbw_sg2_mask_free(&mk);
    rc = 0;
done:
    if (pbw_ctx_failed(ctx)) fprintf(stderr, "  %s\n", pbw_ctx_error(ctx));
    pbw_ctx_free(ctx); /* first: it clears the gradients of the leaves in keep */
    pbw_ctx_free(io);
    pbw_arena_free(&keep);
    pbw_sg2_free(g);
    return rc;
}

static void print_gerr(const char *what, const char *name, const gcmp *g) {
    printf("  %s: gradient to %-12s vs PyTorch f32: max|d|/max|ref| %.3g, ||d||/||ref|| %.3g",
           what, name, g->f32.max_rel, g->f32.l2_rel);
    if (g->f64.present)
        printf(" | vs f64: %.3g, %.3g | PyTorch f32 vs f64: %.3g", g->f64.max_rel,
               g->f64.l2_rel, g->torch_max_rel);
    printf("\n");
}

static void print_parity(const char *what, const parity *p) {
    printf("  %s: max abs image diff: z %.3g, z trunc 0.7 %.3g, w %.3g, W+ %.3g, masked orig %.3g,"
           " masked mixed %.3g; masks %.3g\n", what, p->img_z, p->img_z_trunc, p->img_w,
           p->img_wplus, p->img_masked_orig, p->img_masked_mixed, p->masks);
    print_gerr(what, "z (trunc)", &p->grad_z);
    print_gerr(what, "w", &p->grad_w);
    print_gerr(what, "W+", &p->grad_wplus);
    print_gerr(what, "masked orig", &p->grad_masked_orig);
    print_gerr(what, "masked mixed", &p->grad_masked_mixed);
}

/* A gradient passes when it is within tol (max-relative) of the reference. With a float64
 * reference in the directory, that is the one, and tol grows to twice PyTorch float32's own
 * distance from it when that is larger: the gradient of a random linear function of a large
 * image sums terms of both signs over every pixel, and float32 cannot do better than its
 * rounding allows (see the file comment). */
static void check_grad(const gcmp *g, double tol) {
    if (g->f64.present) {
        double lim = 2 * g->torch_max_rel > tol ? 2 * g->torch_max_rel : tol;
        CHECK_NEAR(g->f64.max_rel, 0, lim);
    } else {
        CHECK_NEAR(g->f32.max_rel, 0, tol);
    }
}

static void check_parity(const parity *p, double img_tol, double grad_tol) {
    CHECK_NEAR(p->img_z, 0, img_tol);
    CHECK_NEAR(p->img_z_trunc, 0, img_tol);
    CHECK_NEAR(p->img_w, 0, img_tol);
    CHECK_NEAR(p->img_wplus, 0, img_tol);
    CHECK_NEAR(p->img_masked_orig, 0, img_tol);
    CHECK_NEAR(p->img_masked_mixed, 0, img_tol);
    CHECK_NEAR(p->masks, 0, 1e-6);
    check_grad(&p->grad_z, grad_tol);
    check_grad(&p->grad_w, grad_tol);
    check_grad(&p->grad_wplus, grad_tol);
    check_grad(&p->grad_masked_orig, grad_tol);
    check_grad(&p->grad_masked_mixed, grad_tol);
}

PBW_TEST(stylegan2_fixture_parity) {
    parity p;
    CHECK(run_parity(FIX, FIX "/g.pt", &p) == 0);
    print_parity("32 px fixture", &p);
    check_parity(&p, 2e-5, 1e-3);
}

/* Full-size parity on a directory written by tools/reference/stylegan2.py parity (see
 * tools/check_stylegan2.sh); skipped when PBW_SG2_PARITY_DIR is not set. */
PBW_TEST(stylegan2_parity_dir) {
    const char *dir = getenv("PBW_SG2_PARITY_DIR");
    if (!dir || !*dir) return;
    char ckpt[600];
    snprintf(ckpt, sizeof ckpt, "%s/g.pt", dir);
    parity p;
    CHECK(run_parity(dir, ckpt, &p) == 0);
    print_parity(dir, &p);
    check_parity(&p, 1e-4, 1e-3);
}

/* ---------- loaders ---------- */

static int same_tensor(const pbw_tensor *a, const pbw_tensor *b) {
    if (!a || !b) return a == b;
    return pbw_shape_equal(a, b) && memcmp(a->data, b->data, (size_t)a->numel * sizeof(float)) == 0;
}

PBW_TEST(stylegan2_formats_identical) {
    static const char *paths[3] = {FIX "/g.pt", FIX "/g_legacy.pt", FIX "/g.safetensors"};
    pbw_stylegan2 *g[3] = {0};
    pbw_err err = {{0}};
    for (int i = 0; i < 3; i++)
        CHECK_MSG(pbw_sg2_load(paths[i], &g[i], &err) == 0, "%s: %s", paths[i], err.msg);
    if (!g[0] || !g[1] || !g[2]) goto out;
    CHECK(g[0]->size == 32 && g[0]->style_dim == 32 && g[0]->n_mlp == 2);
    CHECK(g[0]->channels[2] == 16 && g[0]->channels[3] == 16 && g[0]->channels[4] == 12 &&
          g[0]->channels[5] == 8);
    CHECK(g[0]->n_latent == 8 && g[0]->num_layers == 7 && g[0]->latent_avg);
    for (int i = 1; i < 3; i++) {
        const pbw_stylegan2 *a = g[0], *b = g[i];
        int ok = a->size == b->size && a->style_dim == b->style_dim && a->n_mlp == b->n_mlp &&
                 same_tensor(a->input, b->input) && same_tensor(a->latent_avg, b->latent_avg);
        for (int l = 0; l < a->n_mlp; l++)
            ok &= same_tensor(a->style[l].weight, b->style[l].weight) &&
                  same_tensor(a->style[l].bias, b->style[l].bias);
        for (int l = 0; l < 2 * (a->log_size - 2); l++)
            ok &= same_tensor(a->convs[l].conv.weight, b->convs[l].conv.weight) &&
                  same_tensor(a->convs[l].conv.modulation.weight,
                              b->convs[l].conv.modulation.weight) &&
                  same_tensor(a->convs[l].activate_bias, b->convs[l].activate_bias) &&
                  a->convs[l].noise_weight == b->convs[l].noise_weight;
        for (int l = 0; l < a->num_layers; l++) ok &= same_tensor(a->noises[l], b->noises[l]);
        CHECK_MSG(ok, "%s differs from %s", paths[i], paths[0]);
    }
    /* and the images, through the whole forward */
    pbw_ctx *ctx = pbw_ctx_new(PBW_DEV_CPU, &err);
    pbw_ctx_set_grad(ctx, 0);
    pbw_tensor *z = load_npy(ctx, FIX, "z");
    pbw_tensor *img[3];
    for (int i = 0; i < 3; i++) img[i] = pbw_sg2_from_z(ctx, g[i], z, 0.7f, NULL);
    CHECK(img[0] && img[1] && img[2]);
    if (img[0] && img[1] && img[2]) {
        CHECK(memcmp(img[0]->data, img[1]->data, (size_t)img[0]->numel * 4) == 0);
        CHECK(memcmp(img[0]->data, img[2]->data, (size_t)img[0]->numel * 4) == 0);
    }
    pbw_ctx_free(ctx);
out:
    for (int i = 0; i < 3; i++) pbw_sg2_free(g[i]);
}

/* Loads the fixture's records for the refusal tests. */
static int fixture_records(pbw_records *recs) {
    pbw_err err = {{0}};
    if (pbw_load_checkpoint(FIX "/g.safetensors", recs, &err)) {
        fprintf(stderr, "  %s\n", err.msg);
        return -1;
    }
    return 0;
}

static pbw_record *find_rec(pbw_records *r, const char *name) {
    for (size_t i = 0; i < r->count; i++)
        if (!strcmp(r->items[i].name, name)) return &r->items[i];
    return NULL;
}

PBW_TEST(stylegan2_refusals) {
    pbw_records recs;
    if (fixture_records(&recs)) {
        CHECK(0);
        return;
    }
    pbw_err err = {{0}};
    pbw_stylegan2 *g = NULL;
    /* no g_ema: looking under another prefix stands for a checkpoint without it */
    CHECK(pbw_sg2_from_records(&recs, "g.", &g, &err) != 0 && !g);
    CHECK_MSG(strstr(err.msg, "g_ema") && strstr(err.msg, "'g.'"), "%s", err.msg);
    /* a shape that disagrees: convs.1 must take the 16 channels convs.0 makes */
    pbw_record *rec = find_rec(&recs, "g_ema.convs.1.conv.weight");
    CHECK(rec != NULL);
    if (rec) {
        int64_t keep = rec->shape[2];
        rec->shape[2] = 7;
        CHECK(pbw_sg2_from_records(&recs, "g_ema.", &g, &err) != 0 && !g);
        CHECK_MSG(strstr(err.msg, "'g_ema.convs.1.conv.weight'") && strstr(err.msg, "(1,16,7,3,3)")
                  && strstr(err.msg, "(1,16,16,3,3)"), "%s", err.msg);
        rec->shape[2] = keep;
    }
    /* a missing tensor: hide a noise buffer by renaming it */
    rec = find_rec(&recs, "g_ema.noises.noise_4");
    CHECK(rec != NULL);
    if (rec) {
        rec->name[0] = 'x';
        CHECK(pbw_sg2_from_records(&recs, "g_ema.", &g, &err) != 0 && !g);
        CHECK_MSG(strstr(err.msg, "'g_ema.noises.noise_4' is missing"), "%s", err.msg);
        rec->name[0] = 'g';
    }
    /* a bad latent_avg */
    rec = find_rec(&recs, "latent_avg");
    if (rec) {
        rec->shape[0] = 31;
        CHECK(pbw_sg2_from_records(&recs, "g_ema.", &g, &err) != 0);
        CHECK_MSG(strstr(err.msg, "latent_avg"), "%s", err.msg);
        rec->shape[0] = 32;
    }
    /* and intact again */
    CHECK_MSG(pbw_sg2_from_records(&recs, "g_ema.", &g, &err) == 0, "%s", err.msg);
    pbw_sg2_free(g);
    pbw_records_free(&recs);
    /* a file that is no checkpoint at all names the path */
    CHECK(pbw_sg2_load(FIX "/z.npy", &g, &err) != 0);
    CHECK_MSG(strstr(err.msg, "z.npy"), "%s", err.msg);
}

/* ---------- behaviour ---------- */

/* The fixture generator, a CPU context without gradients, the fixture's latents w and w0 and
 * the mask pyramid of its 32x32 mask: 0, or -1 (checked; what was made is freed). */
typedef struct masked_fixture {
    pbw_stylegan2 *g;
    pbw_ctx *ctx;
    pbw_tensor *w, *w0;
    pbw_sg2_mask mk;
} masked_fixture;

static void masked_fixture_close(masked_fixture *f) {
    if (f->ctx && pbw_ctx_failed(f->ctx)) fprintf(stderr, "  %s\n", pbw_ctx_error(f->ctx));
    pbw_sg2_mask_free(&f->mk);
    pbw_ctx_free(f->ctx);
    pbw_sg2_free(f->g);
}

static int masked_fixture_open(masked_fixture *f) {
    pbw_err err = {{0}};
    memset(f, 0, sizeof *f);
    if (pbw_sg2_load(FIX "/g.pt", &f->g, &err)) {
        CHECK_MSG(0, "%s", err.msg);
        return -1;
    }
    f->ctx = pbw_ctx_new(PBW_DEV_CPU, &err);
    if (!f->ctx) {
        CHECK_MSG(0, "%s", err.msg);
        masked_fixture_close(f);
        return -1;
    }
    pbw_ctx_set_grad(f->ctx, 0);
    f->w = load_npy(f->ctx, FIX, "w");
    f->w0 = load_npy(f->ctx, FIX, "w0");
    pbw_tensor *mask = load_npy(f->ctx, FIX, "mask");
    if (!f->w || !f->w0 || !mask || pbw_sg2_mask_init(&f->mk, f->g, mask->data, 32, 32, &err)) {
        CHECK(!"fixture latents and mask");
        masked_fixture_close(f);
        return -1;
    }
    return 0;
}

PBW_TEST(stylegan2_masked_identities) {
    pbw_err err = {{0}};
    masked_fixture f;
    if (masked_fixture_open(&f)) return;
    pbw_stylegan2 *g = f.g;
    pbw_ctx *ctx = f.ctx;
    pbw_tensor *w = f.w, *w0 = f.w0;
    const pbw_sg2_mask mk = f.mk;
    pbw_tensor *lat0[PBW_SG2_MAX_LATENT], *lat1[PBW_SG2_MAX_LATENT];
    pbw_tensor *w0row = pbw_slice(ctx, w0, 0, 0, 1, 1); /* (1,S): shared by the batch */
    for (int i = 0; i < g->n_latent; i++) lat0[i] = w0, lat1[i] = w0row;
    /* w == w0: any mask leaves the image of w0 (default demodulation) */
    pbw_tensor *plain = pbw_sg2_from_w(ctx, g, w0, NULL);
    pbw_sg2_opts o = {.mask = &mk, .lat0 = lat0};
    pbw_tensor *same = pbw_sg2_from_w(ctx, g, w0, &o);
    CHECK(plain && same);
    if (plain && same) CHECK_NEAR(gc_max_diff(plain->data, same->data, plain->numel, NULL), 0, 2e-6);
    /* mask of ones everywhere (no blur border): the mixed demodulation gives the image of w */
    pbw_sg2_mask ones = mk;
    pbw_arena a;
    pbw_arena_init(&a, 1 << 16);
    for (int i = 2; i <= g->log_size; i++) {
        ones.m[i] = pbw_tensor_new_in(&a, 4, mk.m[i]->shape, &err);
        for (int64_t p = 0; p < ones.m[i]->numel; p++) ones.m[i]->data[p] = 1.0f;
    }
    plain = pbw_sg2_from_w(ctx, g, w, NULL);
    pbw_sg2_opts o1 = {.mask = &ones, .lat0 = lat0, .demod_mixed = 1};
    pbw_tensor *mixed = pbw_sg2_from_w(ctx, g, w, &o1);
    CHECK(plain && mixed);
    if (plain && mixed) CHECK_NEAR(gc_max_diff(plain->data, mixed->data, plain->numel, NULL), 0, 2e-5);
    /* with the mixed demodulation and ToRGB unmasked, ones still give the image of w */
    o1.unmasked_torgb = 1;
    pbw_tensor *mixed2 = pbw_sg2_from_w(ctx, g, w, &o1);
    CHECK(mixed2 != NULL);
    if (plain && mixed2)
        CHECK_NEAR(gc_max_diff(plain->data, mixed2->data, plain->numel, NULL), 0, 2e-5);
    /* a mask of zeros gives the image of w0 whatever w is (default demodulation) ... */
    for (int i = 2; i <= g->log_size; i++)
        for (int64_t p = 0; p < ones.m[i]->numel; p++) ones.m[i]->data[p] = 0.0f;
    pbw_sg2_opts oz = {.mask = &ones, .lat0 = lat0};
    pbw_tensor *zero = pbw_sg2_from_w(ctx, g, w, &oz), *img0 = pbw_sg2_from_w(ctx, g, w0, NULL);
    CHECK(zero && img0);
    if (zero && img0) CHECK_NEAR(gc_max_diff(zero->data, img0->data, zero->numel, NULL), 0, 2e-6);
    /* ... unless ToRGB is left unmasked, as in the reference painter */
    oz.unmasked_torgb = 1;
    pbw_tensor *zero2 = pbw_sg2_from_w(ctx, g, w, &oz);
    CHECK(zero2 != NULL);
    if (zero2 && img0) CHECK(gc_max_diff(zero2->data, img0->data, zero2->numel, NULL) > 1e-3);
    /* a (1,S) original shared by the batch equals its (N,S) copy for sample 0 */
    pbw_tensor *w0b = pbw_concat(ctx, 2, (pbw_tensor *[]){w0row, w0row}, 0);
    for (int i = 0; i < g->n_latent; i++) lat0[i] = w0b;
    pbw_sg2_opts ob = {.mask = &mk, .lat0 = lat0}, os = {.mask = &mk, .lat0 = lat1};
    pbw_tensor *ib = pbw_sg2_from_w(ctx, g, w, &ob), *is = pbw_sg2_from_w(ctx, g, w, &os);
    CHECK(ib && is);
    if (ib && is) CHECK(memcmp(ib->data, is->data, (size_t)ib->numel * 4) == 0);
    pbw_arena_free(&a);
    masked_fixture_close(&f);
}

/* A masked synthesis's constants made once (pbw_sg2_fixed_make: lat0's styles and
 * demodulation) give the image and w's gradient that computing them on each pass gives, to the
 * bit (the same ops on the same values), with either demodulation and with ToRGB unmasked; and
 * the table holds every layer's entries. */
PBW_TEST(stylegan2_masked_fixed) {
    masked_fixture f;
    if (masked_fixture_open(&f)) return;
    pbw_stylegan2 *g = f.g;
    pbw_ctx *ctx = f.ctx;
    pbw_tensor *lat0[PBW_SG2_MAX_LATENT];
    pbw_tensor *w0row = pbw_slice(ctx, f.w0, 0, 0, 1, 1);
    for (int i = 0; i < g->n_latent; i++) lat0[i] = w0row;
    pbw_sg2_fixed fx;
    pbw_sg2_opts o = {.mask = &f.mk, .lat0 = lat0};
    CHECK(pbw_sg2_fixed_make(ctx, g, &o, &fx) == 0);
    int entries = 0;
    for (int i = 0; i < g->n_latent; i++)
        entries += (fx.conv_s0[i] && fx.conv_d0[i]) + (fx.rgb_s0[i] != NULL);
    /* every convolution (n_latent - 1 of them) and every ToRGB (log_size - 1) */
    CHECK(entries == g->n_latent - 1 + g->log_size - 1);
    pbw_err err = {{0}};
    pbw_ctx *run = pbw_ctx_new(PBW_DEV_CPU, &err); /* reset between runs; f's tensors stay */
    CHECK(run != NULL);
    const int64_t n = 3 * (int64_t)g->size * g->size * f.w->shape[0];
    float *img[2] = {malloc((size_t)n * 4), malloc((size_t)n * 4)};
    float *grad[2] = {malloc((size_t)f.w->numel * 4), malloc((size_t)f.w->numel * 4)};
    for (int v = 0; v < 3 && run; v++) {
        int ok = 1;
        for (int use = 0; use < 2; use++) {
            pbw_ctx_reset(run);
            pbw_tensor *w = pbw_tensor_copy(run, f.w);
            w->requires_grad = 1;
            pbw_sg2_opts ov = o;
            ov.demod_mixed = v == 1;
            ov.unmasked_torgb = v == 2;
            ov.fixed = use ? &fx : NULL;
            pbw_tensor *out = pbw_sg2_from_w(run, g, w, &ov);
            ok &= out && out->numel == n &&
                  pbw_backward(run, pbw_sum(run, pbw_square(run, out), 0, NULL, 0), NULL, &err) == 0 &&
                  w->grad;
            if (!ok) break;
            memcpy(img[use], out->data, (size_t)n * 4);
            memcpy(grad[use], w->grad, (size_t)f.w->numel * 4);
        }
        CHECK(ok);
        if (ok) {
            printf("  variant %d: image max diff %.1e, gradient %.1e\n", v,
                   gc_max_diff(img[0], img[1], n, NULL),
                   gc_max_diff(grad[0], grad[1], f.w->numel, NULL));
            CHECK(!memcmp(img[0], img[1], (size_t)n * 4) &&
                  !memcmp(grad[0], grad[1], (size_t)f.w->numel * 4));
        }
    }
    for (int i = 0; i < 2; i++) free(img[i]), free(grad[i]);
    pbw_ctx_free(run);
    masked_fixture_close(&f);
}

PBW_TEST(stylegan2_noise_modes) {
    pbw_err err = {{0}};
    pbw_stylegan2 *g;
    if (pbw_sg2_load(FIX "/g.pt", &g, &err)) {
        CHECK_MSG(0, "%s", err.msg);
        return;
    }
    pbw_ctx *ctx = pbw_ctx_new(PBW_DEV_CPU, &err);
    pbw_ctx_set_grad(ctx, 0);
    pbw_tensor *w = load_npy(ctx, FIX, "w");
    pbw_rng rng;
    pbw_rng_seed(&rng, 7);
    pbw_sg2_opts fixed = {0}, rnd = {.noise = PBW_SG2_NOISE_RANDOM, .rng = &rng},
                 none = {.noise = PBW_SG2_NOISE_NONE};
    pbw_tensor *a = pbw_sg2_from_w(ctx, g, w, &fixed), *b = pbw_sg2_from_w(ctx, g, w, &fixed);
    pbw_tensor *r1 = pbw_sg2_from_w(ctx, g, w, &rnd), *r2 = pbw_sg2_from_w(ctx, g, w, &rnd);
    pbw_tensor *n0 = pbw_sg2_from_w(ctx, g, w, &none);
    CHECK(a && b && r1 && r2 && n0);
    if (a && b && r1 && r2 && n0) {
        const int64_t n = a->numel;
        CHECK(memcmp(a->data, b->data, (size_t)n * 4) == 0); /* fixed noise is deterministic */
        CHECK(gc_max_diff(a->data, r1->data, n, NULL) > 1e-3);
        CHECK(gc_max_diff(r1->data, r2->data, n, NULL) > 1e-3); /* fresh draws */
        CHECK(gc_max_diff(a->data, n0->data, n, NULL) > 1e-3);
    }
    /* truncation without latent_avg fails clearly; estimating it makes it work */
    pbw_tensor *keep = g->latent_avg;
    g->latent_avg = NULL;
    pbw_tensor *z = load_npy(ctx, FIX, "z");
    CHECK(pbw_sg2_from_z(ctx, g, z, 0.5f, NULL) == NULL);
    CHECK_MSG(strstr(pbw_ctx_error(ctx), "latent_avg"), "%s", pbw_ctx_error(ctx));
    pbw_ctx_reset(ctx);
    CHECK(pbw_sg2_mean_latent(ctx, g, 600, 0, &err) == 0 && g->latent_avg);
    /* the estimate is near the reference's own (a mean over 512 draws) */
    if (g->latent_avg) CHECK_NEAR(gc_max_diff(g->latent_avg->data, keep->data, 32, NULL), 0, 0.3);
    pbw_ctx_free(ctx);
    pbw_sg2_free(g);
}

PBW_TEST(stylegan2_batch_independent) {
    /* a batch of two gives each sample's image alone (fixed noise is shared) */
    pbw_err err = {{0}};
    pbw_stylegan2 *g;
    if (pbw_sg2_load(FIX "/g.pt", &g, &err)) {
        CHECK_MSG(0, "%s", err.msg);
        return;
    }
    pbw_ctx *ctx = pbw_ctx_new(PBW_DEV_CPU, &err);
    pbw_ctx_set_grad(ctx, 0);
    pbw_tensor *w = load_npy(ctx, FIX, "w");
    pbw_tensor *both = pbw_sg2_from_w(ctx, g, w, NULL);
    pbw_tensor *one = pbw_sg2_from_w(ctx, g, pbw_slice(ctx, w, 0, 1, 2, 1), NULL);
    CHECK(both && one);
    if (both && one)
        CHECK_NEAR(gc_max_diff(both->data + one->numel, one->data, one->numel, NULL), 0, 1e-6);
    pbw_ctx_free(ctx);
    pbw_sg2_free(g);
}

/* begin (k blocks for the whole batch), rows, finish (the rest per row) equals the synthesis
 * of each row alone, masked or not, for every k; mismatched rows are refused. */
PBW_TEST(stylegan2_split_synthesis) {
    masked_fixture f;
    if (masked_fixture_open(&f)) return;
    pbw_stylegan2 *g = f.g;
    pbw_ctx *ctx = f.ctx;
    pbw_tensor *w = f.w, *w0 = f.w0;
    const pbw_sg2_mask *mk = &f.mk;
    CHECK(w->shape[0] >= 2);
    if (w->shape[0] < 2) goto out;
    pbw_tensor *la[PBW_SG2_MAX_LATENT], *lat0[PBW_SG2_MAX_LATENT];
    pbw_tensor *w0row = pbw_slice(ctx, w0, 0, 0, 1, 1);
    for (int i = 0; i < g->n_latent; i++) la[i] = w, lat0[i] = w0row;
    const int64_t N = w->shape[0], per = 3 * (int64_t)g->size * g->size;
    for (int masked = 0; masked < 2; masked++) {
        pbw_sg2_opts o = {0};
        if (masked) o = (pbw_sg2_opts){.mask = mk, .lat0 = lat0};
        pbw_tensor *full = pbw_sg2_synthesis(ctx, g, la, &o);
        CHECK(full != NULL);
        if (!full) break;
        for (int k = 0; k <= g->log_size - 2; k++) {
            pbw_sg2_partial p, q;
            CHECK(pbw_sg2_synthesis_begin(ctx, g, la, &o, k, &p) == 0 && p.next_block == k);
            CHECK(k == g->log_size - 2 ? p.x == NULL : p.x != NULL);
            for (int64_t r = 0; r < N; r++) {
                pbw_tensor *lr[PBW_SG2_MAX_LATENT];
                pbw_tensor *wr = pbw_slice(ctx, w, 0, r, r + 1, 1);
                for (int i = 0; i < g->n_latent; i++) lr[i] = wr;
                CHECK(pbw_sg2_partial_rows(ctx, &p, r, 1, &q) == 0);
                pbw_tensor *img = pbw_sg2_synthesis_finish(ctx, g, lr, &o, &q);
                CHECK_MSG(img != NULL, "%s", pbw_ctx_error(ctx));
                if (img)
                    CHECK_NEAR(gc_max_diff(img->data, full->data + r * per, per, NULL), 0, 1e-6);
            }
            /* the whole batch's latents do not fit a one-row partial */
            CHECK(pbw_sg2_partial_rows(ctx, &p, 0, 1, &q) == 0);
            CHECK(pbw_sg2_synthesis_finish(ctx, g, la, &o, &q) == NULL);
            CHECK(strstr(pbw_ctx_error(ctx), "partial"));
            pbw_ctx_reset(ctx);
            w = load_npy(ctx, FIX, "w");
            w0row = pbw_slice(ctx, load_npy(ctx, FIX, "w0"), 0, 0, 1, 1);
            for (int i = 0; i < g->n_latent; i++) la[i] = w, lat0[i] = w0row;
            full = pbw_sg2_synthesis(ctx, g, la, &o);
            if (!w || !full) break;
        }
    }
    /* rows out of range and blocks out of range are refused */
    pbw_sg2_partial p, q;
    CHECK(pbw_sg2_synthesis_begin(ctx, g, la, NULL, g->log_size - 1, &p) != 0);
    pbw_ctx_reset(ctx);
    w = load_npy(ctx, FIX, "w");
    for (int i = 0; i < g->n_latent; i++) la[i] = w;
    CHECK(w && pbw_sg2_synthesis_begin(ctx, g, la, NULL, 1, &p) == 0);
    CHECK(pbw_sg2_partial_rows(ctx, &p, w ? w->shape[0] - 1 : 0, 2, &q) != 0);
    pbw_ctx_reset(ctx); /* the refusals above left their messages */
out:
    masked_fixture_close(&f);
}

/* ---------- fused ops against finite differences ---------- */

typedef struct mod_case {
    int n, c, h, w, s_rows, s0_rows, m_rows; /* m_rows 0: unmasked */
} mod_case;

static pbw_tensor *f_modulate(pbw_ctx *ctx, pbw_tensor **in, void *user) {
    const mod_case *mc = user;
    return pbw_sg_modulate(ctx, in[0], in[1], mc->m_rows ? in[2] : NULL,
                           mc->m_rows ? in[3] : NULL);
}

PBW_TEST(stylegan2_op_modulate_grad) {
    static const mod_case cases[] = {
        {2, 3, 4, 5, 2, 0, 0},
        {2, 3, 4, 5, 1, 0, 0},
        {2, 3, 4, 5, 2, 2, 1},
        {2, 3, 4, 5, 1, 2, 2},
        {3, 2, 5, 3, 3, 1, 1},
    };
    for (int i = 0; i < (int)(sizeof cases / sizeof cases[0]); i++) {
        const mod_case *mc = &cases[i];
        float *x = gc_rand((int64_t)mc->n * mc->c * mc->h * mc->w, 10 + i, -1, 1);
        float *s = gc_rand((int64_t)mc->s_rows * mc->c, 20 + i, 0.2f, 1.5f);
        float *s0 = gc_rand((int64_t)mc->n * mc->c, 30 + i, -1, 1);
        float *m = gc_rand((int64_t)mc->n * mc->h * mc->w, 40 + i, 0, 1);
        gc_input in[4] = {
            {4, {mc->n, mc->c, mc->h, mc->w}, x, 1},
            {2, {mc->s_rows, mc->c}, s, 1},
            {2, {mc->s0_rows ? mc->s0_rows : 1, mc->c}, s0, 1},
            {4, {mc->m_rows ? mc->m_rows : 1, 1, mc->h, mc->w}, m, 1},
        };
        CHECK_MSG(gc_check("sg_modulate", f_modulate, (void *)mc, mc->m_rows ? 4 : 2, in,
                           (gc_opts){0}) == 0, "case %d", i);
        free(x), free(s), free(s0), free(m);
    }
}

typedef struct act_case {
    int n, o, h, w;
    int d_kind;     /* 0 none, 1 (N,O), 2 (1,O), 3 (N,O,H,W) */
    int noise_rows; /* 0 none */
    int bias;
} act_case;

static pbw_tensor *f_bias_act(pbw_ctx *ctx, pbw_tensor **in, void *user) {
    const act_case *ac = user;
    return pbw_sg_bias_act(ctx, in[0], ac->d_kind ? in[1] : NULL, ac->noise_rows ? in[2] : NULL,
                           ac->bias ? in[3] : NULL, 0.7f, 0.2f, 1.41421356f);
}

PBW_TEST(stylegan2_op_bias_act_grad) {
    static const act_case cases[] = {
        {2, 3, 4, 5, 1, 1, 1}, {2, 3, 4, 5, 2, 2, 1}, {2, 3, 4, 5, 3, 1, 0},
        {1, 4, 3, 3, 0, 0, 1}, {3, 2, 2, 6, 1, 3, 1},
    };
    for (int i = 0; i < (int)(sizeof cases / sizeof cases[0]); i++) {
        const act_case *ac = &cases[i];
        int64_t ny = (int64_t)ac->n * ac->o * ac->h * ac->w;
        float *y = gc_rand(ny, 50 + i, -1, 1);
        float *d = gc_rand(ny, 60 + i, 0.3f, 2);
        float *nz = gc_rand((int64_t)ac->n * ac->h * ac->w, 70 + i, -1, 1);
        float *b = gc_rand(ac->o, 80 + i, -0.5f, 0.5f);
        gc_input in[4] = {
            {4, {ac->n, ac->o, ac->h, ac->w}, y, 1},
            {0, {0}, d, 1},
            {4, {ac->noise_rows ? ac->noise_rows : 1, 1, ac->h, ac->w}, nz, 1},
            {1, {ac->o}, b, 1},
        };
        if (ac->d_kind == 1) in[1].ndim = 2, in[1].shape[0] = ac->n, in[1].shape[1] = ac->o;
        if (ac->d_kind == 2 || ac->d_kind == 0)
            in[1].ndim = 2, in[1].shape[0] = 1, in[1].shape[1] = ac->o;
        if (ac->d_kind == 3) in[1] = (gc_input){4, {ac->n, ac->o, ac->h, ac->w}, d, 1};
        /* keep every pre-activation at least 0.02 from the leaky ReLU's kink, so that no
         * +-eps step (which moves it by < 3e-3) straddles it */
        int64_t P = (int64_t)ac->h * ac->w;
        for (int64_t e = 0; e < ny; e++) {
            int64_t n = e / (ac->o * P), o = e / P % ac->o, p = e % P;
            float dv = ac->d_kind == 3 ? d[e] : ac->d_kind == 1 ? d[n * ac->o + o]
                     : ac->d_kind == 2 ? d[o] : 1.0f;
            float pre = y[e] * dv + (ac->noise_rows ? 0.7f * nz[(ac->noise_rows > 1 ? n : 0) * P + p]
                                                   : 0.0f) + (ac->bias ? b[o] : 0.0f);
            if (fabsf(pre) < 0.02f) y[e] += (pre < 0 ? -0.1f : 0.1f) / dv;
        }
        CHECK_MSG(gc_check("sg_bias_act", f_bias_act, (void *)ac, 4, in, (gc_opts){.eps = 1e-3})
                      == 0, "case %d", i);
        free(y), free(d), free(nz), free(b);
    }
}

/* pbw_sg_pointwise: the forward against the sum written out, the backward (through the
 * batched product it records) by finite differences (both inputs; the op is bilinear, so the
 * central difference is exact up to rounding), and its shape errors. */
static pbw_tensor *f_pointwise(pbw_ctx *ctx, pbw_tensor **in, void *user) {
    (void)user;
    return pbw_sg_pointwise(ctx, in[0], in[1]);
}

PBW_TEST(stylegan2_op_pointwise) {
    const int N = 2, C = 5, H = 3, W = 4, O = 3, P = H * W;
    float *x = gc_rand((int64_t)N * C * P, 91, -1, 1), *w = gc_rand((int64_t)N * O * C, 92, -1, 1);
    pbw_err err = {{0}};
    pbw_ctx *ctx = pbw_ctx_new(PBW_DEV_CPU, &err);
    pbw_tensor *tx = pbw_tensor_from_host(ctx, x, 4, (int64_t[]){N, C, H, W});
    pbw_tensor *tw = pbw_tensor_from_host(ctx, w, 3, (int64_t[]){N, O, C});
    pbw_tensor *y = pbw_sg_pointwise(ctx, tx, tw);
    CHECK_MSG(y && y->ndim == 4 && y->shape[0] == N && y->shape[1] == O && y->shape[2] == H &&
                  y->shape[3] == W, "%s", pbw_ctx_error(ctx));
    double e = 0;
    for (int n = 0; y && n < N; n++)
        for (int o = 0; o < O; o++)
            for (int p = 0; p < P; p++) {
                double r = 0;
                for (int c = 0; c < C; c++)
                    r += (double)w[(n * O + o) * C + c] * x[(n * C + c) * P + p];
                e = fmax(e, fabs(y->data[(n * O + o) * P + p] - r));
            }
    CHECK_MSG(e < 1e-5, "max diff %g", e); /* fp32 sums of 5 products of values below 1 */
    CHECK(pbw_sg_pointwise(ctx, tx, pbw_tensor_zeros(ctx, 3, (int64_t[]){N, O, C + 1})) == NULL);
    CHECK_MSG(strstr(pbw_ctx_error(ctx), "sg_pointwise") && strstr(pbw_ctx_error(ctx), "(2,3,6)"),
              "%s", pbw_ctx_error(ctx));
    pbw_ctx_free(ctx);
    gc_input in[2] = {{4, {N, C, H, W}, x, 1}, {3, {N, O, C}, w, 1}};
    CHECK(gc_check("sg_pointwise", f_pointwise, NULL, 2, in, (gc_opts){0}) == 0);
    free(x), free(w);
}

/* pbw_sg_pointwise_blend: the forward against y0 + m (y1 - y0) + bias written out (masks of
 * batch 1 and N, without a mask, without a bias), finite differences for x, w and the mask
 * (the op is the ops it stands for on the CPU), and its shape errors. */
static pbw_tensor *f_pointwise_blend(pbw_ctx *ctx, pbw_tensor **in, void *user) {
    (void)user;
    return pbw_sg_pointwise_blend(ctx, in[0], in[1], in[2], in[3]);
}

PBW_TEST(stylegan2_op_pointwise_blend) {
    const int N = 2, C = 5, H = 3, W = 4, O = 3, P = H * W;
    float *x = gc_rand((int64_t)N * C * P, 93, -1, 1), *w = gc_rand((int64_t)N * 2 * O * C, 94, -1, 1);
    float *m = gc_rand((int64_t)N * P, 95, 0, 1), *b = gc_rand(O, 96, -1, 1);
    pbw_err err = {{0}};
    pbw_ctx *ctx = pbw_ctx_new(PBW_DEV_CPU, &err);
    pbw_tensor *tx = pbw_tensor_from_host(ctx, x, 4, (int64_t[]){N, C, H, W});
    pbw_tensor *tb = pbw_tensor_from_host(ctx, b, 4, (int64_t[]){1, O, 1, 1});
    for (int k = 0; k < 4; k++) { /* mask per sample, mask shared, no mask, no bias */
        const int mb = k == 0 ? N : 1, masked = k != 2, biased = k != 3;
        pbw_tensor *tw = pbw_tensor_from_host(ctx, w, 3, (int64_t[]){N, masked ? 2 * O : O, C});
        pbw_tensor *tm = masked ? pbw_tensor_from_host(ctx, m, 4, (int64_t[]){mb, 1, H, W}) : NULL;
        pbw_tensor *y = pbw_sg_pointwise_blend(ctx, tx, tw, tm, biased ? tb : NULL);
        CHECK_MSG(y && y->shape[0] == N && y->shape[1] == O && y->shape[2] == H, "%s",
                  pbw_ctx_error(ctx));
        double e = 0;
        for (int n = 0; y && n < N; n++)
            for (int o = 0; o < O; o++)
                for (int p = 0; p < P; p++) {
                    double y1 = 0, y0 = 0;
                    const int rows = masked ? 2 * O : O;
                    for (int c = 0; c < C; c++) {
                        y1 += (double)w[(n * rows + o) * C + c] * x[(n * C + c) * P + p];
                        if (masked) y0 += (double)w[(n * rows + O + o) * C + c] * x[(n * C + c) * P + p];
                    }
                    const double mv = masked ? m[(mb == N ? n : 0) * P + p] : 0;
                    const double r = (masked ? y0 + mv * (y1 - y0) : y1) + (biased ? b[o] : 0);
                    e = fmax(e, fabs(y->data[(n * O + o) * P + p] - r));
                }
        CHECK_MSG(e < 1e-5, "variant %d: max diff %g", k, e); /* fp32 sums of 5 products, 3 ops */
        pbw_ctx_reset(ctx);
        tx = pbw_tensor_from_host(ctx, x, 4, (int64_t[]){N, C, H, W});
        tb = pbw_tensor_from_host(ctx, b, 4, (int64_t[]){1, O, 1, 1});
    }
    /* odd weight rows with a mask, a mask of another size, a bias of another length, weights
     * for other channels */
    CHECK(!pbw_sg_pointwise_blend(ctx, tx, pbw_tensor_zeros(ctx, 3, (int64_t[]){N, O, C + 1}), NULL,
                                  NULL));
    CHECK_MSG(strstr(pbw_ctx_error(ctx), "(2,3,6)"), "%s", pbw_ctx_error(ctx));
    pbw_ctx_reset(ctx);
    tx = pbw_tensor_from_host(ctx, x, 4, (int64_t[]){N, C, H, W});
    pbw_tensor *m1 = pbw_tensor_zeros(ctx, 4, (int64_t[]){1, 1, H, W});
    CHECK(!pbw_sg_pointwise_blend(ctx, tx, pbw_tensor_zeros(ctx, 3, (int64_t[]){N, 5, C}), m1, NULL));
    CHECK_MSG(strstr(pbw_ctx_error(ctx), "sg_pointwise_blend"), "%s", pbw_ctx_error(ctx));
    pbw_ctx_reset(ctx);
    tx = pbw_tensor_from_host(ctx, x, 4, (int64_t[]){N, C, H, W});
    CHECK(!pbw_sg_pointwise_blend(ctx, tx, pbw_tensor_zeros(ctx, 3, (int64_t[]){N, 6, C}),
                                  pbw_tensor_zeros(ctx, 4, (int64_t[]){1, 1, H + 1, W}), NULL));
    pbw_ctx_reset(ctx);
    tx = pbw_tensor_from_host(ctx, x, 4, (int64_t[]){N, C, H, W});
    CHECK(!pbw_sg_pointwise_blend(ctx, tx, pbw_tensor_zeros(ctx, 3, (int64_t[]){N, O, C}), NULL,
                                  pbw_tensor_zeros(ctx, 1, (int64_t[]){O + 1})));
    pbw_ctx_free(ctx);
    gc_input in[4] = {{4, {N, C, H, W}, x, 1}, {3, {N, 2 * O, C}, w, 1}, {4, {N, 1, H, W}, m, 1},
                      {4, {1, O, 1, 1}, b, 1}};
    CHECK(gc_check("sg_pointwise_blend", f_pointwise_blend, NULL, 4, in, (gc_opts){0}) == 0);
    free(x), free(w), free(m), free(b);
}

PBW_TEST(stylegan2_op_shape_errors) {
    pbw_err err = {{0}};
    pbw_ctx *ctx = pbw_ctx_new(PBW_DEV_CPU, &err);
    pbw_tensor *x = pbw_tensor_zeros(ctx, 4, (int64_t[]){2, 3, 4, 4});
    pbw_tensor *s = pbw_tensor_zeros(ctx, 2, (int64_t[]){2, 4});
    CHECK(pbw_sg_modulate(ctx, x, s, NULL, NULL) == NULL);
    CHECK_MSG(strstr(pbw_ctx_error(ctx), "sg_modulate") && strstr(pbw_ctx_error(ctx), "(2,4)"),
              "%s", pbw_ctx_error(ctx));
    pbw_ctx_reset(ctx);
    x = pbw_tensor_zeros(ctx, 4, (int64_t[]){2, 3, 4, 4});
    pbw_tensor *b = pbw_tensor_zeros(ctx, 1, (int64_t[]){4});
    CHECK(pbw_sg_bias_act(ctx, x, NULL, NULL, b, 0, 0.2f, 1) == NULL);
    CHECK_MSG(strstr(pbw_ctx_error(ctx), "bias"), "%s", pbw_ctx_error(ctx));
    pbw_ctx_free(ctx);
}

/* ---------- seed bank ---------- */

PBW_TEST(stylegan2_seedbank_numpy) {
    pbw_npy ref;
    pbw_err err = {{0}};
    if (pbw_npy_read(PBW_SHARED("data/zbank/rows_0_1_30_1999.npy"), &ref, &err)) {
        CHECK_MSG(0, "%s", err.msg);
        return;
    }
    CHECK(ref.ndim == 2 && ref.shape[0] == 4 && ref.shape[1] == 512);
    static const int rows[4] = {0, 1, 30, 1999};
    float z[512];
    for (int i = 0; i < 4; i++) {
        CHECK(pbw_seedbank_z(rows[i], 1, 512, z) == 0);
        CHECK_MSG(memcmp(z, ref.data + i * 512, sizeof z) == 0, "row %d differs", rows[i]);
    }
    /* rows come out the same whether drawn alone or in a run */
    float two[2 * 512];
    CHECK(pbw_seedbank_z(0, 2, 512, two) == 0);
    CHECK(memcmp(two, ref.data, sizeof two) == 0);
    CHECK(pbw_seedbank_z(0, 1, 511, z) != 0);
    pbw_npy_free(&ref);
    /* numpy.random.RandomState(1234).random_sample() and the first raw word, to pin the
     * 53-bit double and the seeding independently of the Gaussian */
    pbw_rng r;
    pbw_rng_seed(&r, 5489);
    CHECK(pbw_rng_u32(&r) == 3499211612u); /* MT19937 reference output for seed 5489 */
    pbw_rng_seed(&r, 1234);
    CHECK_NEAR(pbw_rng_uniform(&r), 0.1915194503788923, 1e-16);
}

/* ---------- convolution with a packed, frozen weight ---------- */

typedef struct sgconv_case {
    int n, c, h, w, o, k, transposed;
} sgconv_case;

static const sgconv_case sgconv_cases[] = {
    {1, 3, 5, 7, 4, 3, 0},    /* O not a multiple of the 6-row panels */
    {2, 5, 17, 19, 13, 3, 0}, /* several tiles, ragged panels, batch */
    {1, 4, 16, 16, 6, 1, 0},  /* 1x1 */
    {1, 2, 9, 6, 3, 5, 0},    /* 5x5 */
    {1, 3, 4, 5, 5, 3, 1},    /* transposed */
    {2, 6, 9, 9, 7, 3, 1},    /* transposed, several tiles per phase */
    {1, 2, 3, 4, 3, 1, 1},    /* transposed 1x1 (odd phases empty of taps... rows only) */
    {1, 2, 4, 3, 2, 5, 1},    /* transposed 5x5 */
    {1, 7, 7, 9, 5, 3, 0},    /* odd sides: partial Winograd tiles */
    {1, 130, 6, 5, 7, 3, 0},  /* more channels than one Winograd K block */
    {1, 3, 5, 131, 4, 3, 0},  /* a tile row in two Winograd work items */
};

static pbw_tensor *f_sgconv(pbw_ctx *ctx, pbw_tensor **in, void *user) {
    return pbw_sg_conv(ctx, in[0], (const pbw_sg_conv_plan *)user);
}

PBW_TEST(stylegan2_op_sg_conv) {
    pbw_err err = {{0}};
    pbw_arena a;
    pbw_arena_init(&a, 1 << 16);
    pbw_ctx *ctx = pbw_ctx_new(PBW_DEV_CPU, &err);
    /* every case by the direct kernel, then the 3x3 non-transposed ones by Winograd */
    const int ncases = (int)(sizeof sgconv_cases / sizeof sgconv_cases[0]);
    for (int ii = 0; ii < 2 * ncases; ii++) {
        const int i = ii % ncases, direct = ii < ncases;
        const sgconv_case *sc = &sgconv_cases[i];
        if (!direct && (sc->k != 3 || sc->transposed)) continue;
        pbw_tensor *w = pbw_tensor_new_in(&a, 4, (int64_t[]){sc->o, sc->c, sc->k, sc->k}, &err);
        gc_fill(w->data, w->numel, 90 + i, -1, 1);
        pbw_sg_conv_plan *pl = pbw_sg_conv_prepare_ex(&a, w, sc->transposed, direct, &err);
        CHECK_MSG(pl != NULL, "%s", err.msg);
        if (!pl) continue;
        CHECK(!pl->cpu->packed); /* packed on the first CPU call */
        pbw_tensor *x = pbw_tensor_new(ctx, 4, (int64_t[]){sc->n, sc->c, sc->h, sc->w});
        gc_fill(x->data, x->numel, 100 + i, -1, 1);
        pbw_tensor *ref;
        if (!sc->transposed) {
            ref = pbw_conv2d(ctx, x, w, NULL,
                             (pbw_conv_params){.pad_h = sc->k / 2, .pad_w = sc->k / 2});
        } else {
            /* conv_transpose2d takes (C,O,k,k): the transpose of our (O,C,k,k) */
            pbw_tensor *wt = pbw_permute(ctx, w, (int[]){1, 0, 2, 3});
            ref = pbw_conv_transpose2d(ctx, x, wt, NULL,
                                       (pbw_conv_params){.stride_h = 2, .stride_w = 2});
        }
        pbw_tensor *y = pbw_sg_conv(ctx, x, pl);
        CHECK_MSG(y && ref && pbw_shape_equal(y, ref), "case %d: %s", i, pbw_ctx_error(ctx));
        CHECK(pl->cpu->packed && (direct || (pl->cpu->wino_fwd && pl->cpu->wino_bwd)));
        /* both are float32 sums of <= 6*25 products of unit-scale values */
        if (y && ref && pbw_shape_equal(y, ref))
            CHECK_MSG(gc_compare("sg_conv", y->data, ref->data, y->numel, 1e-5, 1e-5) == 0,
                      "case %d%s", i, direct ? "" : " (Winograd)");
        pbw_ctx_reset(ctx);
        float *xd = gc_rand((int64_t)sc->n * sc->c * sc->h * sc->w, 110 + i, -1, 1);
        gc_input in[1] = {{4, {sc->n, sc->c, sc->h, sc->w}, xd, 1}};
        CHECK_MSG(gc_check("sg_conv", f_sgconv, pl, 1, in, (gc_opts){0}) == 0, "case %d", i);
        free(xd);
    }
    pbw_ctx_free(ctx);
    pbw_arena_free(&a);
}

static pbw_tensor *f_modconv(pbw_ctx *ctx, pbw_tensor **in, void *user) {
    return pbw_sg_modconv(ctx, in[0], in[1], in[2], in[3], (const pbw_sg_conv_plan *)user);
}

/* pbw_sg_modconv on the CPU is pbw_sg_modulate then pbw_sg_conv: the same floats, and the
 * gradients of x, both styles and the mask (the GPU's fused forward: cuda_sg_modconv). */
PBW_TEST(stylegan2_op_sg_modconv) {
    pbw_err err = {{0}};
    pbw_arena a;
    pbw_arena_init(&a, 1 << 16);
    pbw_ctx *ctx = pbw_ctx_new(PBW_DEV_CPU, &err);
    for (int transposed = 0; transposed < 2; transposed++) {
        const int N = 2, C = 3, H = 5, W = 4, O = 4;
        pbw_tensor *w = pbw_tensor_new_in(&a, 4, (int64_t[]){O, C, 3, 3}, &err);
        gc_fill(w->data, w->numel, 120 + transposed, -1, 1);
        pbw_sg_conv_plan *pl = pbw_sg_conv_prepare(&a, w, transposed, &err);
        CHECK_MSG(pl != NULL, "%s", err.msg);
        if (!pl) continue;
        float *xd = gc_rand(N * C * H * W, 121, -1, 1), *sd = gc_rand(N * C, 122, 0.5f, 1.5f);
        float *s0d = gc_rand(C, 123, 0.5f, 1.5f), *md = gc_rand(N * H * W, 124, 0, 1);
        pbw_tensor *x = pbw_tensor_wrap(ctx, xd, 4, (int64_t[]){N, C, H, W});
        pbw_tensor *s = pbw_tensor_wrap(ctx, sd, 2, (int64_t[]){N, C});
        pbw_tensor *s0 = pbw_tensor_wrap(ctx, s0d, 2, (int64_t[]){1, C});
        pbw_tensor *m = pbw_tensor_wrap(ctx, md, 4, (int64_t[]){N, 1, H, W});
        pbw_tensor *y = pbw_sg_modconv(ctx, x, s, s0, m, pl);
        pbw_tensor *ref = pbw_sg_conv(ctx, pbw_sg_modulate(ctx, x, s, s0, m), pl);
        CHECK(y && ref && pbw_shape_equal(y, ref) &&
              memcmp(y->data, ref->data, (size_t)y->numel * sizeof(float)) == 0);
        /* the unmasked form, and the argument checks of both halves */
        CHECK(pbw_sg_modconv(ctx, x, s, NULL, NULL, pl) != NULL);
        CHECK(pbw_sg_modconv(ctx, x, s, s0, NULL, pl) == NULL &&
              strstr(pbw_ctx_error(ctx), "go together"));
        pbw_ctx_reset(ctx);
        gc_input in[4] = {{4, {N, C, H, W}, xd, 1}, {2, {N, C}, sd, 1}, {2, {1, C}, s0d, 1},
                          {4, {N, 1, H, W}, md, 1}};
        CHECK(gc_check("sg_modconv", f_modconv, pl, 4, in, (gc_opts){0}) == 0);
        free(xd), free(sd), free(s0d), free(md);
    }
    pbw_ctx_free(ctx);
    pbw_arena_free(&a);
}

/* slope 1: no kink for the finite differences to straddle (the leaky slope's own gradient is
 * stylegan2_op_sg_bias_act's, which keeps its inputs off the kink) */
static pbw_tensor *f_modconv_act(pbw_ctx *ctx, pbw_tensor **in, void *user) {
    return pbw_sg_modconv_act(ctx, in[0], in[1], in[2], in[3], (const pbw_sg_conv_plan *)user,
                              in[4], in[5], in[6], 0.7f, 1.0f, sqrtf(2.0f));
}

/* pbw_sg_modconv_act on the CPU runs pbw_sg_modconv then pbw_sg_bias_act: the equality checks
 * that each argument reaches its place (a swapped noise weight and slope, or d and noise, would
 * change the floats), and the gradients of x, the styles, the mask, d, the noise and the bias
 * that the backward follows them (the GPU's fused copy back: cuda_sg_modconv_act). */
PBW_TEST(stylegan2_op_sg_modconv_act) {
    pbw_err err = {{0}};
    pbw_arena a;
    pbw_arena_init(&a, 1 << 16);
    pbw_ctx *ctx = pbw_ctx_new(PBW_DEV_CPU, &err);
    const int N = 2, C = 3, H = 5, W = 4, O = 4;
    pbw_tensor *w = pbw_tensor_new_in(&a, 4, (int64_t[]){O, C, 3, 3}, &err);
    gc_fill(w->data, w->numel, 125, -1, 1);
    pbw_sg_conv_plan *pl = pbw_sg_conv_prepare(&a, w, 0, &err);
    CHECK_MSG(pl != NULL, "%s", err.msg);
    float *xd = gc_rand(N * C * H * W, 126, -1, 1), *sd = gc_rand(N * C, 127, 0.5f, 1.5f);
    float *s0d = gc_rand(C, 128, 0.5f, 1.5f), *md = gc_rand(N * H * W, 129, 0, 1);
    float *dd = gc_rand(N * O, 130, 0.5f, 1.5f), *nd = gc_rand(N * H * W, 131, -1, 1);
    float *bd = gc_rand(O, 132, -0.5f, 0.5f);
    if (pl) {
        pbw_tensor *x = pbw_tensor_wrap(ctx, xd, 4, (int64_t[]){N, C, H, W});
        pbw_tensor *s = pbw_tensor_wrap(ctx, sd, 2, (int64_t[]){N, C});
        pbw_tensor *s0 = pbw_tensor_wrap(ctx, s0d, 2, (int64_t[]){1, C});
        pbw_tensor *m = pbw_tensor_wrap(ctx, md, 4, (int64_t[]){N, 1, H, W});
        pbw_tensor *d = pbw_tensor_wrap(ctx, dd, 2, (int64_t[]){N, O});
        pbw_tensor *nz = pbw_tensor_wrap(ctx, nd, 4, (int64_t[]){N, 1, H, W});
        pbw_tensor *b = pbw_tensor_wrap(ctx, bd, 1, (int64_t[]){O});
        pbw_tensor *y = pbw_sg_modconv_act(ctx, x, s, s0, m, pl, d, nz, b, 0.7f, 0.2f, sqrtf(2.0f));
        pbw_tensor *ref = pbw_sg_bias_act(ctx, pbw_sg_modconv(ctx, x, s, s0, m, pl), d, nz, b,
                                          0.7f, 0.2f, sqrtf(2.0f));
        CHECK(y && ref && pbw_shape_equal(y, ref) &&
              memcmp(y->data, ref->data, (size_t)y->numel * sizeof(float)) == 0);
        /* a bias of the wrong size is refused with a message */
        CHECK(pbw_sg_modconv_act(ctx, x, s, NULL, NULL, pl, d, nz, s0, 0.7f, 0.2f, 1.0f) == NULL &&
              strstr(pbw_ctx_error(ctx), "bias"));
        pbw_ctx_reset(ctx);
        gc_input in[7] = {{4, {N, C, H, W}, xd, 1}, {2, {N, C}, sd, 1},  {2, {1, C}, s0d, 1},
                          {4, {N, 1, H, W}, md, 1}, {2, {N, O}, dd, 1},  {4, {N, 1, H, W}, nd, 1},
                          {1, {O}, bd, 1}};
        CHECK(gc_check("sg_modconv_act", f_modconv_act, pl, 7, in, (gc_opts){0}) == 0);
    }
    free(xd), free(sd), free(s0d), free(md), free(dd), free(nd), free(bd);
    pbw_ctx_free(ctx);
    pbw_arena_free(&a);
}

/* ---------- separable blur ---------- */

static pbw_tensor *f_blur(pbw_ctx *ctx, pbw_tensor **in, void *user) {
    return pbw_sg_blur(ctx, in[0], (const pbw_sg_fir *)user);
}

/* slope 1: no kink for the finite differences to straddle (as f_modconv_act) */
static pbw_tensor *f_blur_act(pbw_ctx *ctx, pbw_tensor **in, void *user) {
    return pbw_sg_blur_act(ctx, in[0], (const pbw_sg_fir *)user, in[1], in[2], in[3], 0.7f, 1.0f,
                           sqrtf(2.0f));
}

/* StyleGAN2's [1,3,3,1] blur with pads 1, 1 (an upsampling convolution's), its taps in a. */
static int fir_1331(pbw_arena *a, pbw_sg_fir *f) {
    static const float k1[4] = {1, 3, 3, 1};
    pbw_err err = {{0}};
    pbw_arena_init(a, 1 << 12);
    pbw_tensor *k = pbw_tensor_new_in(a, 2, (int64_t[]){4, 4}, &err);
    if (!k) return -1;
    for (int i = 0; i < 16; i++) k->data[i] = k1[i / 4] * k1[i % 4] / 16.0f;
    return pbw_sg_fir_init(f, k, 1, 1);
}

/* pbw_sg_blur_act on the CPU runs pbw_sg_blur then pbw_sg_bias_act: the equality checks that
 * each argument reaches its place, and the gradients of x, d, the noise and the bias that the
 * backward follows them (the GPU's fused write: cuda_sg_blur_act). */
PBW_TEST(stylegan2_op_sg_blur_act) {
    pbw_err err = {{0}};
    pbw_arena a;
    pbw_sg_fir f;
    CHECK(fir_1331(&a, &f) == 0);
    const int N = 2, C = 3, H = 6, W = 5, OH = H - 1, OW = W - 1;
    float *xd = gc_rand(N * C * H * W, 140, -1, 1), *dd = gc_rand(N * C, 141, 0.5f, 1.5f);
    float *nd = gc_rand(N * OH * OW, 142, -1, 1), *bd = gc_rand(C, 143, -0.5f, 0.5f);
    pbw_ctx *ctx = pbw_ctx_new(PBW_DEV_CPU, &err);
    pbw_tensor *x = pbw_tensor_wrap(ctx, xd, 4, (int64_t[]){N, C, H, W});
    pbw_tensor *d = pbw_tensor_wrap(ctx, dd, 2, (int64_t[]){N, C});
    pbw_tensor *nz = pbw_tensor_wrap(ctx, nd, 4, (int64_t[]){N, 1, OH, OW});
    pbw_tensor *b = pbw_tensor_wrap(ctx, bd, 1, (int64_t[]){C});
    pbw_tensor *y = pbw_sg_blur_act(ctx, x, &f, d, nz, b, 0.7f, 0.2f, sqrtf(2.0f));
    pbw_tensor *ref = pbw_sg_bias_act(ctx, pbw_sg_blur(ctx, x, &f), d, nz, b, 0.7f, 0.2f, sqrtf(2.0f));
    CHECK(y && ref && pbw_shape_equal(y, ref) &&
          memcmp(y->data, ref->data, (size_t)y->numel * sizeof(float)) == 0);
    pbw_ctx_free(ctx);
    gc_input in[4] = {{4, {N, C, H, W}, xd, 1}, {2, {N, C}, dd, 1}, {4, {N, 1, OH, OW}, nd, 1},
                      {1, {C}, bd, 1}};
    CHECK(gc_check("sg_blur_act", f_blur_act, &f, 4, in, (gc_opts){0}) == 0);
    free(xd), free(dd), free(nd), free(bd);
    pbw_arena_free(&a);
}

/* pbw_sg_blur_act_mod: on the CPU exactly pbw_sg_modulate of pbw_sg_blur_act (bit for bit,
 * with a mask and without), gradients to x and both styles and the mask by finite
 * differences, and a missing style refused. (The GPU's fused write: cuda_sg_nhwc_chain.) */
static pbw_tensor *f_blur_act_mod(pbw_ctx *ctx, pbw_tensor **in, void *user) {
    return pbw_sg_blur_act_mod(ctx, in[0], (const pbw_sg_fir *)user, in[1], NULL, NULL, 0.0f,
                               0.2f, sqrtf(2.0f), in[2], in[3], in[4]);
}

PBW_TEST(stylegan2_op_sg_blur_act_mod) {
    pbw_err err = {{0}};
    pbw_arena a;
    pbw_sg_fir f;
    CHECK(fir_1331(&a, &f) == 0);
    const int N = 2, C = 3, H = 6, W = 5, OH = H - 1, OW = W - 1;
    float *xd = gc_rand(N * C * H * W, 150, -1, 1), *dd = gc_rand(N * C, 151, 0.5f, 1.5f);
    float *sd = gc_rand(N * C, 152, 0.5f, 1.5f), *s0d = gc_rand(C, 153, 0.5f, 1.5f);
    float *md = gc_rand(N * OH * OW, 154, 0, 1);
    pbw_ctx *ctx = pbw_ctx_new(PBW_DEV_CPU, &err);
    pbw_tensor *x = pbw_tensor_wrap(ctx, xd, 4, (int64_t[]){N, C, H, W});
    pbw_tensor *d = pbw_tensor_wrap(ctx, dd, 2, (int64_t[]){N, C});
    pbw_tensor *s = pbw_tensor_wrap(ctx, sd, 2, (int64_t[]){N, C});
    pbw_tensor *s0 = pbw_tensor_wrap(ctx, s0d, 2, (int64_t[]){1, C});
    pbw_tensor *m = pbw_tensor_wrap(ctx, md, 4, (int64_t[]){N, 1, OH, OW});
    for (int masked = 0; masked < 2; masked++) {
        pbw_tensor *y = pbw_sg_blur_act_mod(ctx, x, &f, d, NULL, NULL, 0.0f, 0.2f, sqrtf(2.0f), s,
                                            masked ? s0 : NULL, masked ? m : NULL);
        pbw_tensor *ref = pbw_sg_modulate(ctx, pbw_sg_blur_act(ctx, x, &f, d, NULL, NULL, 0.0f,
                                                               0.2f, sqrtf(2.0f)),
                                          s, masked ? s0 : NULL, masked ? m : NULL);
        CHECK_MSG(y && ref && pbw_shape_equal(y, ref) &&
                      memcmp(y->data, ref->data, (size_t)y->numel * sizeof(float)) == 0,
                  "masked %d: %s", masked, pbw_ctx_error(ctx));
    }
    CHECK(!pbw_sg_blur_act_mod(ctx, x, &f, d, NULL, NULL, 0.0f, 0.2f, 1.0f, NULL, NULL, NULL));
    CHECK_MSG(strstr(pbw_ctx_error(ctx), "sg_blur_act_mod"), "%s", pbw_ctx_error(ctx));
    pbw_ctx_free(ctx);
    gc_input in[5] = {{4, {N, C, H, W}, xd, 1}, {2, {N, C}, dd, 0}, {2, {N, C}, sd, 1},
                      {2, {1, C}, s0d, 1}, {4, {N, 1, OH, OW}, md, 1}};
    CHECK(gc_check("sg_blur_act_mod", f_blur_act_mod, &f, 5, in, (gc_opts){0}) == 0);
    free(xd), free(dd), free(sd), free(s0d), free(md);
    pbw_arena_free(&a);
}

PBW_TEST(stylegan2_op_sg_blur) {
    static const float k1[4] = {1, 3, 3, 1};
    static const int pads[4][2] = {{1, 1}, {2, 1}, {0, 0}, {3, 2}};
    pbw_err err = {{0}};
    pbw_ctx *ctx = pbw_ctx_new(PBW_DEV_CPU, &err);
    pbw_arena a;
    pbw_arena_init(&a, 1 << 12);
    pbw_tensor *k = pbw_tensor_new_in(&a, 2, (int64_t[]){4, 4}, &err);
    for (int i = 0; i < 16; i++) k->data[i] = k1[i / 4] * k1[i % 4] / 64.0f * 4.0f;
    for (int c = 0; c < 4; c++) {
        pbw_sg_fir f;
        CHECK(pbw_sg_fir_init(&f, k, pads[c][0], pads[c][1]) == 0);
        pbw_tensor *x = pbw_tensor_new(ctx, 4, (int64_t[]){2, 3, 9 + c, 7});
        gc_fill(x->data, x->numel, 120 + c, -1, 1);
        pbw_tensor *ref = pbw_upfirdn2d(ctx, x, k, 1, 1, pads[c][0], pads[c][1], pads[c][0],
                                        pads[c][1]);
        pbw_tensor *y = pbw_sg_blur(ctx, x, &f);
        CHECK_MSG(y && ref && pbw_shape_equal(y, ref), "pads %d: %s", c, pbw_ctx_error(ctx));
        /* the row/column split rounds differently from the 16-term sum: 1e-6 on unit values */
        if (y && ref && pbw_shape_equal(y, ref))
            CHECK(gc_compare("sg_blur", y->data, ref->data, y->numel, 1e-6, 1e-6) == 0);
        pbw_ctx_reset(ctx);
        float *xd = gc_rand(2 * 3 * (9 + c) * 7, 130 + c, -1, 1);
        gc_input in[1] = {{4, {2, 3, 9 + c, 7}, xd, 1}};
        CHECK_MSG(gc_check("sg_blur", f_blur, &f, 1, in, (gc_opts){0}) == 0, "pads %d", c);
        free(xd);
    }
    /* a kernel that is no outer product is refused (the model then uses pbw_upfirdn2d) */
    k->data[5] += 0.1f;
    pbw_sg_fir f;
    CHECK(pbw_sg_fir_init(&f, k, 1, 1) != 0);
    pbw_arena_free(&a);
    pbw_ctx_free(ctx);
}

/* A checkpoint as rosinality's train.py writes it: g, d, g_ema, Adam states, an
 * argparse.Namespace `args`, ada_aug_p, and no latent_avg. */
PBW_TEST(stylegan2_training_checkpoint) {
    pbw_err err = {{0}};
    pbw_stylegan2 *g;
    if (pbw_sg2_load(FIX "/train.pt", &g, &err)) {
        CHECK_MSG(0, "%s", err.msg);
        return;
    }
    CHECK(g->size == 8 && g->style_dim == 8 && g->n_mlp == 1 && !g->latent_avg);
    pbw_ctx *ctx = pbw_ctx_new(PBW_DEV_CPU, &err);
    pbw_ctx_set_grad(ctx, 0);
    pbw_tensor *z = load_npy(ctx, FIX, "train_z");
    pbw_tensor *img = pbw_sg2_from_z(ctx, g, z, 1.0f, NULL);
    CHECK_MSG(img != NULL, "%s", pbw_ctx_error(ctx));
    if (img) CHECK_NEAR(cmp_image(ctx, FIX, "train_img", img), 0, 2e-5);
    pbw_ctx_free(ctx);
    pbw_sg2_free(g);
}

/* The smallest generator: 4 px, conv1 and to_rgb1 only (no upsampling block), batch 3,
 * truncation 0.5, from safetensors. */
PBW_TEST(stylegan2_size4) {
    pbw_err err = {{0}};
    pbw_stylegan2 *g;
    if (pbw_sg2_load(FIX "/g4.safetensors", &g, &err)) {
        CHECK_MSG(0, "%s", err.msg);
        return;
    }
    CHECK(g->size == 4 && g->n_latent == 2 && g->num_layers == 1 && g->channels[2] == 4);
    pbw_ctx *ctx = pbw_ctx_new(PBW_DEV_CPU, &err);
    pbw_tensor *z = load_npy(ctx, FIX, "g4_z");
    pbw_arena keep;
    pbw_arena_init(&keep, 1 << 12);
    pbw_tensor *zl = z ? leaf(&keep, z, 1) : NULL;
    pbw_tensor *img = zl ? pbw_sg2_from_z(ctx, g, zl, 0.5f, NULL) : NULL;
    CHECK_MSG(img != NULL, "%s", pbw_ctx_error(ctx));
    if (img) {
        CHECK_NEAR(cmp_image(ctx, FIX, "g4_img", img), 0, 2e-5);
        pbw_err e2 = {{0}};
        CHECK(pbw_backward(ctx, pbw_sum_all(ctx, img), NULL, &e2) == 0 && zl->grad);
    }
    pbw_ctx_free(ctx); /* first: it clears the gradients of the leaves in keep */
    pbw_arena_free(&keep);
    pbw_sg2_free(g);
}
