/* test_paint.c: the painting objective, masks, the painter and the GIF history (src/paint,
 * src/formats/pbw_gif.c), on the small fixture models: the 32 px StyleGAN2 of
 * tests/fixtures/stylegan2, the 64 px CLIP of tests/fixtures/clip/hf and the LPIPS fixture
 * (random fp16 AlexNet trunk, the real v0.1 heads from ../shared).
 *
 * What is checked, and the tolerances:
 *  - crops: the same seed gives the same crops; sides and offsets stay in the reference's ranges.
 *  - CLIP inputs: a crop whose side equals CLIP's size is exactly ((x + 1) / 2 clamped - mean) /
 *    std (1e-6: one float rounding of each step), in image-major order; the fused crop op equals
 *    the composed ops (slice, affine, resize, clamp, sub, div, concat) in values and gradients
 *    (1e-6).
 *  - loss-mode views on an 8x8 image against direct formulas (1e-6), the zoom box against the
 *    reference's square_bounding_box worked by hand.
 *  - masks from image files against PIL (Image.resize BILINEAR, convert('L')), byte for byte:
 *    the expected bytes below were written by PIL 9 (Debian's python3-pil).
 *  - the CLIP crop loss's gradient with respect to the image along random directions, on a
 *    smooth image whose crops stay inside the clamp's [0,1] (no kink anywhere): central
 *    differences with eps 1e-3 agree to 3e-3 relative (the loss is ~90 in float32, ulp 8e-6,
 *    so the quotient carries ~1e-3 of rounding).
 *  - the whole loss (CLIP over crops + L1 outside the mask; latent masking and output masking;
 *    every loss mode) with respect to w, through the generator, along random directions:
 *    |fd - analytic| <= 5e-3 + 3e-2 |analytic| with eps 2e-3. Looser, because this loss has
 *    kinks that central differences straddle: the crops' clamp to [0,1] (the random generator's
 *    pixels leave [-1,1]), |new - old| of L1 just outside the mask where latent masking barely
 *    changes pixels, and the generator's leaky ReLUs. Each crossed kink moves the quotient by
 *    ~1%, whatever eps (measured worst 2%: the curves were probed at 21 points and are smooth
 *    apart from them). A wrong or missing term is off by far more: the L1 term alone is ~25% of
 *    the directional derivative here.
 *    LPIPS needs 35 px, more than the 32 px generator makes, so the LPIPS part is checked on a
 *    48 px image directly (values against pbw_lpips_* within 1e-5; the gradient with new - old
 *    kept 0.1 away from 0 so no |.| kink is crossed, but AlexNet's ReLUs and max pools and the
 *    crops' clamp remain: 5e-3 + 3e-2 relative, measured worst 2%).
 *  - painter: 12 Adam steps on the fixtures lower the CLIP loss (same evaluation crops before
 *    and after; by > 0.3, measured 0.53 of ~86) while pixels 12 px or more from the 10x10
 *    corner mask change by at most 0.05 of the [-1,1] range (the generator's convolutions
 *    carry a masked-style change beyond the mask and the L1 term pulls it back; measured 0.012,
 *    against a mean change of 0.35 inside the mask); an empty mask is refused; the cancel
 *    flag stops the run after the current step with the best result so far; two runs with the
 *    same request give the same bytes; generation runs on z.
 *  - GIF: frames read back with giflib have the written size, count and (few-color) pixels.
 */
#include <gif_lib.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/pbw_ops.h"
#include "core/pbw_rng.h"
#include "formats/pbw_gif.h"
#include "models/pbw_clip.h"
#include "models/pbw_lpips.h"
#include "models/pbw_stylegan2.h"
#include "paint/pbw_loss.h"
#include "paint/pbw_painter.h"
#include "gradcheck.h"
#include "pbw_test.h"

#define SG2_FIX "tests/fixtures/stylegan2/g.pt"
#define CLIP_FIX "tests/fixtures/clip/hf"
#define LPIPS_TRUNK "tests/fixtures/lpips/alexnet_features_fp16.pth"
#define LPIPS_HEADS PBW_SHARED("data/lpips/v0.1/alex.pth")

/* a text of the fixture CLIP's 256-token vocabulary: start 254, end 255 */
static const int32_t IDS[] = {254, 17, 93, 140, 255};

/* ---------- crops ---------- */

PBW_TEST(paint_crops_reproducible) {
    pbw_rng a, b;
    pbw_rng_seed(&a, 11);
    pbw_rng_seed(&b, 11);
    pbw_crop ca[200], cb[200];
    pbw_crops_draw(&a, 256, 200, ca);
    pbw_crops_draw(&b, 256, 200, cb);
    CHECK(memcmp(ca, cb, sizeof ca) == 0);
    int smin = 1 << 30, smax = 0, bad = 0;
    for (int k = 0; k < 200; k++) {
        if (ca[k].side < smin) smin = ca[k].side;
        if (ca[k].side > smax) smax = ca[k].side;
        /* int(0.7 * 256) = 179, int(0.98 * 256) = 250 (exclusive); offsets < 256 - side */
        bad += ca[k].side < 179 || ca[k].side >= 250 || ca[k].y < 0 || ca[k].x < 0 ||
               ca[k].y >= 256 - ca[k].side || ca[k].x >= 256 - ca[k].side;
    }
    CHECK(bad == 0);
    CHECK(smin < 185 && smax > 243); /* 200 draws cover the range */
    pbw_rng_seed(&b, 12);
    pbw_crops_draw(&b, 256, 200, cb);
    CHECK(memcmp(ca, cb, sizeof ca) != 0);
    /* tiny images: never outside */
    pbw_crops_draw(&a, 3, 50, ca);
    for (int k = 0; k < 50; k++) CHECK(ca[k].side >= 1 && ca[k].y + ca[k].side <= 3);
}

PBW_TEST(paint_clip_crops_values) {
    pbw_err err;
    pbw_ctx *ctx = pbw_ctx_new(PBW_DEV_CPU, &err);
    const int B = 2, S = 12, R = 8;
    pbw_tensor *x = pbw_tensor_new(ctx, 4, (int64_t[]){B, 3, S, S});
    pbw_rng rng;
    pbw_rng_seed(&rng, 3);
    for (int64_t i = 0; i < x->numel; i++) x->data[i] = (float)(2.6 * pbw_rng_uniform(&rng) - 1.3);
    pbw_crop crops[2] = {{.y = 1, .x = 3, .side = R}, {.y = 4, .x = 0, .side = R}};
    pbw_tensor *px = pbw_clip_crops(ctx, x, crops, 2, R);
    CHECK(px && px->shape[0] == B * 2 && px->shape[2] == R);
    double worst = 0;
    for (int b = 0; b < B && px; b++)
        for (int k = 0; k < 2; k++)
            for (int c = 0; c < 3; c++)
                for (int yy = 0; yy < R; yy++)
                    for (int xx = 0; xx < R; xx++) {
                        float v = x->data[(((int64_t)b * 3 + c) * S + crops[k].y + yy) * S +
                                          crops[k].x + xx];
                        float u = (v + 1) / 2;
                        u = u < 0 ? 0 : (u > 1 ? 1 : u);
                        float want = (u - pbw_clip_mean[c]) / pbw_clip_std[c];
                        float got = px->data[((((int64_t)b * 2 + k) * 3 + c) * R + yy) * R + xx];
                        if (fabs(got - want) > worst) worst = fabs(got - want);
                    }
    CHECK_NEAR(worst, 0, 1e-6);
    /* resized crops: the same as resizing the slice ourselves */
    pbw_crop c3 = {.y = 2, .x = 1, .side = 9};
    pbw_tensor *p3 = pbw_clip_crops(ctx, x, &c3, 1, R);
    pbw_tensor *s3 = pbw_slice(ctx, pbw_slice(ctx, x, 2, 2, 11, 1), 3, 1, 10, 1);
    pbw_tensor *r3 = pbw_clamp(ctx, pbw_resize(ctx, pbw_affine(ctx, s3, 0.5f, 0.5f), R, R,
                                                PBW_RESIZE_BICUBIC), 0, 1);
    worst = 0;
    for (int64_t i = 0; p3 && r3 && i < p3->numel; i++) {
        int c = (int)((i / (R * R)) % 3);
        double want = (r3->data[i] - pbw_clip_mean[c]) / pbw_clip_std[c];
        if (fabs(p3->data[i] - want) > worst) worst = fabs(p3->data[i] - want);
    }
    CHECK(p3 && r3);
    CHECK_NEAR(worst, 0, 1e-6);
    /* the fused op against the composed ops, values and gradients, overlapping crops of a
     * batch: equal to 1e-6 (the same float steps; only the order of the overlapping crops'
     * gradient sums differs) */
    {
        /* two contexts: a backward runs its whole tape */
        pbw_ctx *ctx2 = pbw_ctx_new(PBW_DEV_CPU, &err);
        pbw_tensor *xa = pbw_tensor_copy(ctx, x);
        pbw_tensor *xb = pbw_tensor_copy(ctx2, x);
        xa->requires_grad = xb->requires_grad = 1;
        pbw_crop cs[4] = {{0, 0, 9}, {2, 1, 10}, {3, 3, 8}, {1, 1, 11}};
        pbw_tensor *fa = pbw_clip_crops(ctx, xa, cs, 4, 12);
        pbw_tensor *parts[4];
        pbw_tensor *mt = pbw_tensor_new(ctx2, 4, (int64_t[]){1, 3, 1, 1});
        pbw_tensor *st = pbw_tensor_new(ctx2, 4, (int64_t[]){1, 3, 1, 1});
        memcpy(mt->data, pbw_clip_mean, sizeof pbw_clip_mean);
        memcpy(st->data, pbw_clip_std, sizeof pbw_clip_std);
        for (int k = 0; k < 4; k++) {
            pbw_tensor *c = pbw_slice(ctx2, pbw_slice(ctx2, xb, 2, cs[k].y, cs[k].y + cs[k].side, 1),
                                      3, cs[k].x, cs[k].x + cs[k].side, 1);
            c = pbw_clamp(ctx2, pbw_resize(ctx2, pbw_affine(ctx2, c, 0.5f, 0.5f), 12, 12,
                                          PBW_RESIZE_BICUBIC), 0, 1);
            c = pbw_div(ctx2, pbw_sub(ctx2, c, mt), st);
            parts[k] = pbw_reshape(ctx2, c, 5, (int64_t[]){B, 1, 3, 12, 12});
        }
        pbw_tensor *fb = pbw_reshape(ctx2, pbw_concat(ctx2, 4, parts, 1), 4,
                                     (int64_t[]){B * 4, 3, 12, 12});
        CHECK(fa && fb && fa->numel == fb->numel);
        if (fa && fb) {
            CHECK(gc_compare("fused crops", fa->data, fb->data, fa->numel, 1e-6, 0) == 0);
            float *seed = gc_rand(fa->numel, 77, -1, 1);
            CHECK(pbw_backward(ctx, fa, seed, &err) == 0);
            CHECK(pbw_backward(ctx2, fb, seed, &err) == 0);
            CHECK(xa->grad && xb->grad);
            if (xa->grad && xb->grad)
                CHECK(gc_compare("fused crops grad", xa->grad, xb->grad, xa->numel, 1e-6, 1e-6) == 0);
            free(seed);
        }
        pbw_ctx_free(ctx2);
    }
    /* cut into patches of 4 (CLIP's patch embedding's input): element (u, patch py*2+px,
     * channel-major vector c*16 + yy*4 + xx) is the crop's (u, c, py*4 + yy, px*4 + xx) */
    pbw_ctx_reset(ctx);
    x = pbw_tensor_new(ctx, 4, (int64_t[]){B, 3, S, S});
    for (int64_t i = 0; i < x->numel; i++) x->data[i] = (float)(2.6 * pbw_rng_uniform(&rng) - 1.3);
    pbw_tensor *img = pbw_clip_crops(ctx, x, crops, 2, R);
    pbw_tensor *pt = pbw_clip_crops_patches(ctx, x, crops, 2, R, 4);
    CHECK(img && pt && pt->ndim == 3 && pt->shape[0] == B * 2 && pt->shape[1] == 4 &&
          pt->shape[2] == 48);
    int moved = 0;
    for (int64_t u = 0; img && pt && u < B * 2; u++)
        for (int c = 0; c < 3; c++)
            for (int yy = 0; yy < R; yy++)
                for (int xx = 0; xx < R; xx++) {
                    const int64_t j = (u * 4 + (yy / 4) * 2 + xx / 4) * 48 + c * 16 +
                                      (yy % 4) * 4 + xx % 4;
                    moved += pt->data[j] != img->data[((u * 3 + c) * R + yy) * R + xx];
                }
    CHECK(moved == 0);
    CHECK(pbw_clip_crops_patches(ctx, x, crops, 2, R, 3) == NULL); /* 3 does not tile 8 */
    CHECK_MSG(strstr(pbw_ctx_error(ctx), "patches of 3"), "%s", pbw_ctx_error(ctx));
    pbw_ctx_reset(ctx);
    /* a crop outside the image is refused */
    x = pbw_tensor_new(ctx, 4, (int64_t[]){B, 3, S, S});
    pbw_crop badc = {.y = 5, .x = 5, .side = 8};
    CHECK(pbw_clip_crops(ctx, x, &badc, 1, R) == NULL && pbw_ctx_failed(ctx));
    pbw_ctx_free(ctx);
}

/* ---------- masks ---------- */

/* PIL 9: Image.fromarray(...).convert('L').resize((w, h), Image.BILINEAR) (see the header) */
static const uint8_t rgb_in[351] = {175,196,25,246,67,211,151,103,92,185,142,23,72,89,110,42,218,136,167,230,68,176,127,135,172,0,75,55,250,6,19,188,44,191,69,56,152,183,181,112,251,189,192,34,56,201,206,38,4,238,137,87,227,195,72,83,176,1,192,144,118,159,93,172,92,252,71,23,10,233,35,192,61,135,151,92,247,224,149,100,163,225,67,123,219,225,19,155,4,19,33,123,30,185,229,73,221,209,127,159,130,83,178,146,21,119,67,203,186,47,16,12,93,107,233,137,76,67,110,142,124,20,53,252,143,59,35,48,4,43,200,218,250,54,43,239,215,205,178,39,131,157,140,204,79,29,136,54,166,117,198,149,44,219,135,209,234,239,197,100,180,233,169,29,26,64,252,190,214,226,12,134,232,162,187,106,110,116,241,93,230,234,17,5,79,49,182,76,105,232,220,182,175,165,201,87,149,4,219,76,233,75,6,120,225,213,85,158,107,220,56,51,247,183,121,140,76,109,164,199,85,186,41,230,143,43,59,82,63,156,144,133,35,77,32,117,215,223,161,45,168,116,219,142,45,105,42,96,34,95,112,183,230,146,9,201,13,85,171,1,31,142,208,48,153,241,238,161,213,211,255,82,64,205,58,10,254,180,250,27,156,8,247,225,100,217,172,254,179,54,42,92,7,241,143,128,210,231,236,176,192,44,9,46,184,226,176,127,171,5,149,144,233,11,106,160,40,36,69,156,107,93,49,61,110,234,180,240,223,135,92,239,58,178,176,78,47,126,190,205,211,105,77,24,67,135,49,234,160,33,75};
static const uint8_t alpha_in[35] = {91,68,230,95,125,251,241,61,94,78,108,171,76,144,113,122,154,224,124,235,97,8,180,94,97,207,150,184,181,34,12,4,44,55,20};
static const uint8_t rgb_down[20] = {143,135,145,109,127,125,128,160,114,137,132,133,128,130,138,125,143,136,140,123};
static const uint8_t rgb_up[220] = {170,154,134,121,127,137,101,112,157,181,177,144,91,89,156,139,117,106,141,174,193,148,107,151,160,153,154,137,109,134,144,140,124,102,74,96,114,113,154,191,158,133,116,173,153,102,121,136,149,162,158,137,137,119,75,86,96,92,136,177,114,106,108,167,128,52,93,131,167,195,180,120,135,128,87,93,101,100,133,163,125,101,84,132,114,74,136,150,128,179,174,111,142,133,63,95,133,159,167,170,233,199,151,91,121,190,196,197,193,152,149,186,200,165,65,86,135,206,194,172,136,138,130,67,111,196,161,128,98,126,133,121,135,145,144,99,84,134,115,88,107,130,149,117,114,123,103,98,102,134,130,89,84,106,161,161,160,170,139,109,100,141,178,138,132,141,132,119,104,109,110,107,123,133,131,161,182,175,146,120,94,131,165,122,136,177,189,168,124,101,109,147,178,173,121,118,123,131,114,97,88,82,81,113,99,74,156,201,217,188,171,165,131,134,190,110,56,90,85,76};
static const uint8_t alpha_mixed[51] = {78,78,79,79,109,145,153,127,101,119,137,152,165,177,187,197,199,78,84,105,125,127,125,132,151,170,163,156,160,171,178,155,133,127,107,106,101,97,79,59,47,45,44,72,102,110,102,95,93,91,90};

static int mask_matches(const pbw_image *im, int H, int W, const uint8_t *want) {
    float *m = malloc((size_t)H * W * sizeof *m);
    pbw_err err;
    int bad = pbw_mask_from_image(im, H, W, m, &err) ? -1 : 0;
    for (int i = 0; i < H * W && !bad; i++)
        if (lrintf(m[i] * 255.0f) != want[i]) {
            fprintf(stderr, "  mask %dx%d: value %d is %g, PIL %d\n", W, H, i, m[i] * 255.0f, want[i]);
            bad = 1;
        }
    free(m);
    return bad;
}

PBW_TEST(paint_mask_from_image_pil) {
    pbw_image rgb = {.w = 13, .h = 9, .c = 3, .data = (uint8_t *)rgb_in};
    CHECK(mask_matches(&rgb, 4, 5, rgb_down) == 0);
    CHECK(mask_matches(&rgb, 11, 20, rgb_up) == 0);
    /* RGBA with transparency: the alpha channel decides */
    uint8_t rgba[35 * 4];
    for (int i = 0; i < 35; i++) {
        rgba[4 * i] = rgba[4 * i + 1] = rgba[4 * i + 2] = 255; /* white everywhere: ignored */
        rgba[4 * i + 3] = alpha_in[i];
    }
    pbw_image ra = {.w = 7, .h = 5, .c = 4, .data = rgba};
    CHECK(mask_matches(&ra, 3, 17, alpha_mixed) == 0);
    /* opaque RGBA: the gray value; the same size: unchanged */
    for (int i = 0; i < 35; i++) rgba[4 * i + 3] = 255, rgba[4 * i] = (uint8_t)(i * 7);
    float m[35];
    pbw_err err;
    CHECK(pbw_mask_from_image(&ra, 5, 7, m, &err) == 0);
    CHECK(fabsf(m[3] - (float)((21 * 19595u + 255 * 38470u + 255 * 7471u + 0x8000u) >> 16) / 255.0f) < 1e-7f);
    CHECK(pbw_mask_count(m, 35) == 35);
}

PBW_TEST(paint_square_box) {
    float m[64] = {0};
    m[2 * 8 + 5] = m[3 * 8 + 6] = 0.5f; /* rows 2..3, cols 5..6 */
    int box[4];
    pbw_mask_square_box(m, 8, 8, 4, box);
    /* side 4; rows: excess 2, low 2 - 1 = 1 -> [1,5); cols: low 5 - 1 = 4, high 8 -> [4,8) */
    CHECK(box[0] == 1 && box[1] == 5 && box[2] == 4 && box[3] == 8);
    pbw_mask_square_box(m, 8, 8, 128, box); /* larger than the image: the whole image */
    CHECK(box[0] == 0 && box[1] == 8 && box[2] == 0 && box[3] == 8);
    float z[64] = {0};
    pbw_mask_square_box(z, 8, 8, 2, box);
    CHECK(box[0] == 0 && box[1] == 8 && box[2] == 0 && box[3] == 8);
    m[0] = 1; /* rows 0..3 (4), cols 0..6 (7): side 7 */
    pbw_mask_square_box(m, 8, 8, 2, box);
    CHECK(box[1] - box[0] == 7 && box[3] - box[2] == 7 && box[0] == 0 && box[2] == 0);
}

PBW_TEST(paint_loss_mode_views) {
    pbw_err err;
    pbw_ctx *ctx = pbw_ctx_new(PBW_DEV_CPU, &err);
    pbw_ctx *cctx = pbw_ctx_new(PBW_DEV_CPU, &err);
    const int S = 8;
    pbw_tensor *img = pbw_tensor_new(ctx, 4, (int64_t[]){2, 3, S, S});
    pbw_tensor *orig = pbw_tensor_new(ctx, 4, (int64_t[]){1, 3, S, S});
    for (int64_t i = 0; i < img->numel; i++) img->data[i] = (float)sin(0.37 * (double)i);
    for (int64_t i = 0; i < orig->numel; i++) orig->data[i] = (float)cos(0.21 * (double)i);
    float mask[64] = {0};
    for (int y = 2; y < 5; y++)
        for (int x = 3; x < 7; x++) mask[y * S + x] = y == 2 ? 0.5f : 1.0f;
    pbw_clip fake = {0};
    fake.cfg.image_size = 4;
    pbw_objective o;
    pbw_objective_init(&o, &fake, NULL, NULL, S, S);
    CHECK(o.R == 4 && o.n_crops == 32 && o.recon_weight == 5.0f && o.lpips_weight == 10.0f);
    CHECK(pbw_objective_set_mask(&o, cctx, mask, orig, &err) == 0);
    double ks = 0;
    for (int i = 0; i < 64; i++) ks += 1 - mask[i];
    CHECK_NEAR(o.keep_sum, ks, 1e-9);
    double worst[3] = {0};
    o.mode = PBW_LOSS_PASTE_BLANK;
    pbw_tensor *vb = pbw_objective_view(ctx, &o, img, 0);
    o.mode = PBW_LOSS_PASTE_ORIG;
    pbw_tensor *vo = pbw_objective_view(ctx, &o, img, 0);
    CHECK(pbw_objective_view(ctx, &o, img, 1) == img);
    for (int b = 0; b < 2; b++)
        for (int c = 0; c < 3; c++)
            for (int i = 0; i < 64; i++) {
                float x = img->data[(b * 3 + c) * 64 + i], x0 = orig->data[c * 64 + i];
                worst[0] = fmax(worst[0], fabs(vb->data[(b * 3 + c) * 64 + i] - mask[i] * x));
                worst[1] = fmax(worst[1], fabs(vo->data[(b * 3 + c) * 64 + i] -
                                                (x0 * (1 - mask[i]) + x * mask[i])));
            }
    CHECK_NEAR(worst[0], 0, 1e-6);
    CHECK_NEAR(worst[1], 0, 1e-6);
    /* zoom: box of side 4 around rows 2..4, cols 3..6 (min_size 128 is clipped to 8 here, so
     * the box is the whole image); resize to R = 4 bilinear */
    o.mode = PBW_LOSS_ZOOM;
    CHECK(o.box[0] == 0 && o.box[1] == 8);
    pbw_tensor *vz = pbw_objective_view(ctx, &o, img, 0);
    pbw_tensor *rz = pbw_resize(ctx, img, 4, 4, PBW_RESIZE_BILINEAR);
    for (int64_t i = 0; vz && rz && i < vz->numel; i++)
        worst[2] = fmax(worst[2], fabs(vz->data[i] - rz->data[i]));
    CHECK(vz && vz->shape[2] == 4);
    CHECK_NEAR(worst[2], 0, 0);
    CHECK(pbw_objective_view_side(&o) == 4);
    o.mode = PBW_LOSS_BLANK_FULL;
    CHECK(pbw_objective_crop_sets(&o) == 2 && pbw_objective_view_side(&o) == S);
    pbw_loss_mode lm;
    CHECK(pbw_loss_mode_parse("paste_onto_blank_full_orig", &lm) == 0 && lm == PBW_LOSS_BLANK_FULL);
    CHECK(pbw_loss_mode_parse("zoom", &lm) == 0 && lm == PBW_LOSS_ZOOM);
    CHECK(pbw_loss_mode_parse("zoomed", &lm) != 0);
    pbw_ctx_free(ctx);
    pbw_ctx_free(cctx);
}

/* ---------- fixture models ---------- */

typedef struct models {
    pbw_stylegan2 *g;
    pbw_clip *clip;
    pbw_lpips *lpips;
} models;

static int load_models(models *m, int lpips) {
    pbw_err err;
    memset(m, 0, sizeof *m);
    if (pbw_sg2_load(SG2_FIX, &m->g, &err) || pbw_clip_load(CLIP_FIX, &m->clip, &err) ||
        (lpips && pbw_lpips_load(LPIPS_TRUNK, LPIPS_HEADS, &m->lpips, &err))) {
        fprintf(stderr, "  fixtures: %s\n", err.msg);
        return -1;
    }
    return 0;
}

static void free_models(models *m) {
    pbw_sg2_free(m->g);
    pbw_clip_free(m->clip);
    pbw_lpips_free(m->lpips);
}

PBW_TEST(paint_clip_crop_loss_grad) {
    models m;
    if (load_models(&m, 0)) {
        CHECK(!"fixture models");
        free_models(&m);
        return;
    }
    pbw_err err;
    pbw_ctx *ctx = pbw_ctx_new(PBW_DEV_CPU, &err);
    pbw_ctx *cctx = pbw_ctx_new(PBW_DEV_CPU, &err);
    pbw_tensor *t = pbw_clip_encode_text(cctx, m.clip, IDS, 1, 5);
    const int S = 40, B = 2;
    const int64_t n = (int64_t)B * 3 * S * S;
    float *x = malloc((size_t)n * sizeof *x), *g = malloc((size_t)n * sizeof *g),
          *d = malloc((size_t)n * sizeof *d), *xp = malloc((size_t)n * sizeof *xp);
    /* smooth, within [-0.6, 0.6]: the bicubic overshoot cannot reach the clamp */
    for (int64_t i = 0; i < n; i++) {
        int64_t yy = (i / S) % S, xx = i % S, c = i / (S * S);
        x[i] = (float)(0.3 * sin(0.31 * yy + 0.7 * c) + 0.3 * cos(0.23 * xx - 0.4 * c));
    }
    pbw_rng rng;
    pbw_rng_seed(&rng, 8);
    pbw_crop crops[3];
    pbw_crops_draw(&rng, S, 3, crops);
    pbw_tensor *xt = pbw_tensor_wrap(ctx, x, 4, (int64_t[]){B, 3, S, S});
    xt->requires_grad = 1;
    pbw_tensor *l = pbw_clip_crop_loss(ctx, m.clip, xt, t, crops, 3);
    CHECK(l && l->numel == B);
    if (l && pbw_backward(ctx, pbw_sum_all(ctx, l), NULL, &err) == 0 && xt->grad) {
        memcpy(g, xt->grad, (size_t)n * sizeof *g);
        /* the values: mean over crops of 100 (1 - cos), per image, as the chunked path gives */
        pbw_ctx *scratch = pbw_ctx_new(PBW_DEV_CPU, &err);
        double v[2];
        CHECK(pbw_clip_crop_loss_values(scratch, m.clip, xt, t, crops, 3, 2, v, &err) == 0);
        CHECK_NEAR(v[0], l->data[0], 1e-5 * v[0]);
        CHECK_NEAR(v[1], l->data[1], 1e-5 * v[1]);
        pbw_ctx_free(scratch);
        for (int k = 0; k < 3; k++) {
            double ana = 0, f[2];
            for (int64_t i = 0; i < n; i++) {
                d[i] = (float)(2 * pbw_rng_uniform(&rng) - 1);
                ana += (double)g[i] * d[i];
            }
            /* a step of 1e-2: the loss (~90 per image) is fp32, its rounding (~1e-5) over a
             * step of 1e-3 alone made ~1e-2 of noise in the difference quotient */
            for (int sgn = 0; sgn < 2; sgn++) {
                for (int64_t i = 0; i < n; i++) xp[i] = x[i] + (sgn ? -1e-2f : 1e-2f) * d[i];
                pbw_ctx_reset(ctx);
                pbw_tensor *xq = pbw_tensor_wrap(ctx, xp, 4, (int64_t[]){B, 3, S, S});
                pbw_tensor *lq = pbw_sum_all(ctx, pbw_clip_crop_loss(ctx, m.clip, xq, t, crops, 3));
                f[sgn] = lq ? lq->data[0] : NAN;
            }
            double fd = (f[0] - f[1]) / 2e-2;
            fprintf(stderr, "  clip crop loss direction %d: analytic %.6f, finite diff %.6f\n", k,
                    ana, fd);
            CHECK(fabs(fd - ana) <= 3e-3 * fabs(ana) + 1e-3);
        }
    } else {
        CHECK(!"backward");
    }
    free(x), free(g), free(d), free(xp);
    pbw_ctx_free(ctx);
    pbw_ctx_free(cctx);
    free_models(&m);
}

/* Everything the whole-loss gradient check needs. */
typedef struct gc_setup {
    models m;
    pbw_ctx *cctx;
    pbw_tensor *w0, *orig, *orig_keep;
    pbw_tensor *lat0[PBW_SG2_MAX_LATENT];
    pbw_sg2_mask mk;
    pbw_objective o;
    pbw_crop crops[16];
    int output_mask;
} gc_setup;

static pbw_tensor *gc_render(pbw_ctx *ctx, gc_setup *s, pbw_tensor *w) {
    pbw_tensor *lat[PBW_SG2_MAX_LATENT];
    for (int i = 0; i < s->m.g->n_latent; i++) lat[i] = w;
    if (s->output_mask) {
        pbw_tensor *img = pbw_sg2_synthesis(ctx, s->m.g, lat, NULL);
        return pbw_add(ctx, pbw_mul(ctx, img, s->o.mask), s->orig_keep);
    }
    pbw_sg2_opts op = {.mask = &s->mk, .lat0 = s->lat0};
    return pbw_sg2_synthesis(ctx, s->m.g, lat, &op);
}

static double gc_total(pbw_ctx *ctx, gc_setup *s, const float *w, float *grad) {
    pbw_ctx_reset(ctx);
    const int D = s->m.g->style_dim;
    pbw_tensor *wt = pbw_tensor_new(ctx, 2, (int64_t[]){1, D});
    memcpy(wt->data, w, (size_t)D * sizeof *w);
    wt->requires_grad = grad != NULL;
    pbw_loss_parts parts;
    if (pbw_objective_eval(ctx, &s->o, gc_render(ctx, s, wt), s->crops, &parts)) {
        fprintf(stderr, "  loss failed: %s\n", pbw_ctx_error(ctx));
        return NAN;
    }
    double v = parts.total->data[0];
    if (grad) {
        pbw_err err;
        if (pbw_backward(ctx, parts.total, NULL, &err) || !wt->grad) return NAN;
        memcpy(grad, wt->grad, (size_t)D * sizeof *grad);
    }
    return v;
}

static int gc_setup_init(gc_setup *s, float *mask32) {
    memset(s, 0, sizeof *s);
    if (load_models(&s->m, 0)) return -1;
    pbw_err err;
    const int D = s->m.g->style_dim, S = s->m.g->size;
    s->cctx = pbw_ctx_new(PBW_DEV_CPU, &err);
    pbw_ctx_set_grad(s->cctx, 0);
    pbw_tensor *z = pbw_tensor_new(s->cctx, 2, (int64_t[]){1, D});
    pbw_seedbank_z(0, 1, D, z->data);
    s->w0 = pbw_sg2_mapping(s->cctx, s->m.g, z);
    for (int i = 0; i < s->m.g->n_latent; i++) s->lat0[i] = s->w0;
    s->orig = pbw_sg2_from_w(s->cctx, s->m.g, s->w0, NULL);
    pbw_tensor *t = pbw_clip_encode_text(s->cctx, s->m.clip, IDS, 1, 5);
    if (!s->orig || !t) return -1;
    for (int y = 0; y < S; y++)
        for (int x = 0; x < S; x++)
            mask32[y * S + x] = (y >= 6 && y < 22 && x >= 8 && x < 24) ? 1.0f
                                : (y >= 4 && y < 24 && x >= 6 && x < 26) ? 0.4f : 0.0f;
    pbw_objective_init(&s->o, s->m.clip, NULL, t, S, S);
    s->o.n_crops = 4;
    if (pbw_objective_set_mask(&s->o, s->cctx, mask32, s->orig, &err) ||
        pbw_sg2_mask_init(&s->mk, s->m.g, mask32, S, S, &err)) {
        fprintf(stderr, "  %s\n", err.msg);
        return -1;
    }
    s->orig_keep = pbw_mul(s->cctx, s->orig, s->o.keep);
    return s->orig_keep ? 0 : -1;
}

static void gc_setup_free(gc_setup *s) {
    pbw_sg2_mask_free(&s->mk);
    pbw_ctx_free(s->cctx);
    free_models(&s->m);
}

/* Directional derivative checks; returns the number out of tolerance. */
static int check_directions(pbw_ctx *ctx, gc_setup *s, const float *w, int ndir, uint32_t seed,
                            const char *what, double eps) {
    const int D = s->m.g->style_dim;
    float *g = malloc((size_t)D * sizeof *g), *wp = malloc((size_t)D * sizeof *wp),
          *wm = malloc((size_t)D * sizeof *wm), *d = malloc((size_t)D * sizeof *d);
    double f0 = gc_total(ctx, s, w, g);
    int bad = isnan(f0);
    pbw_rng rng;
    pbw_rng_seed(&rng, seed);
    for (int k = 0; k < ndir && !bad; k++) {
        double ana = 0;
        for (int i = 0; i < D; i++) {
            d[i] = (float)(2 * pbw_rng_uniform(&rng) - 1);
            wp[i] = (float)(w[i] + eps * d[i]);
            wm[i] = (float)(w[i] - eps * d[i]);
            ana += (double)g[i] * d[i];
        }
        double fp = gc_total(ctx, s, wp, NULL), fm = gc_total(ctx, s, wm, NULL);
        double fd = (fp - fm) / (2 * eps);
        double tol = 5e-3 + 3e-2 * fabs(ana);
        if (!(fabs(fd - ana) <= tol)) bad++;
        fprintf(stderr, "  %s direction %d: loss %.5f, d/dt analytic %.6f, finite diff %.6f%s\n",
                what, k, f0, ana, fd, fabs(fd - ana) <= tol ? "" : "  <-- out of tolerance");
    }
    free(g), free(wp), free(wm), free(d);
    return bad;
}

#define EPS 2e-3
PBW_TEST(paint_whole_loss_gradcheck) {
    gc_setup s;
    float mask[32 * 32];
    if (gc_setup_init(&s, mask)) {
        CHECK(!"fixture setup");
        gc_setup_free(&s);
        return;
    }
    pbw_err err;
    pbw_ctx *ctx = pbw_ctx_new(PBW_DEV_CPU, &err);
    const int D = s.m.g->style_dim;
    float *w = malloc((size_t)D * sizeof *w);
    pbw_rng rng;
    pbw_rng_seed(&rng, 9);
    pbw_crops_draw(&rng, 32, 8, s.crops); /* two sets of 4 for blank+full */
    for (int i = 0; i < D; i++) w[i] = s.w0->data[i] + (float)(0.6 * pbw_rng_normal(&rng));
    /* the default: latent masking, paste_onto_blank, CLIP + L1 */
    CHECK(check_directions(ctx, &s, w, 3, 21, "latent/paste_onto_blank", EPS) == 0);
    static const pbw_loss_mode modes[] = {PBW_LOSS_PASTE_ORIG, PBW_LOSS_ZOOM, PBW_LOSS_BLANK_FULL};
    for (int k = 0; k < 3; k++) {
        s.o.mode = modes[k];
        char what[64];
        snprintf(what, sizeof what, "latent/%s", pbw_loss_mode_name(modes[k]));
        CHECK(check_directions(ctx, &s, w, 1, 30 + k, what, EPS) == 0);
    }
    s.o.mode = PBW_LOSS_PASTE_BLANK;
    s.output_mask = 1;
    CHECK(check_directions(ctx, &s, w, 2, 40, "output/paste_onto_blank", EPS) == 0);
    /* the loss at w0 has no reconstruction part: every pixel is the original's */
    pbw_ctx_reset(ctx);
    s.output_mask = 0;
    pbw_loss_parts parts;
    pbw_tensor *img = gc_render(ctx, &s, s.w0);
    CHECK(pbw_objective_eval(ctx, &s.o, img, s.crops, &parts) == 0);
    CHECK(parts.l1 && parts.l1->data[0] < 1e-5f && parts.lpips == NULL);
    /* values (chunked, forward only) agree with the taped loss: 1e-5 relative (float sums in
     * another order) */
    pbw_ctx_reset(ctx);
    pbw_ctx *scratch = pbw_ctx_new(PBW_DEV_CPU, &err);
    pbw_tensor *wb = pbw_tensor_new(ctx, 2, (int64_t[]){2, D});
    memcpy(wb->data, w, (size_t)D * sizeof *w);
    memcpy(wb->data + D, s.w0->data, (size_t)D * sizeof *w);
    s.o.clip_chunk = 3; /* chunks that split the crop set */
    img = gc_render(ctx, &s, wb);
    pbw_loss_values v[2];
    CHECK(pbw_objective_values(ctx, scratch, &s.o, img, s.crops, v, &err) == 0);
    CHECK(pbw_objective_eval(ctx, &s.o, img, s.crops, &parts) == 0);
    for (int b = 0; b < 2; b++) {
        CHECK_NEAR(v[b].total, parts.total->data[b], 1e-5 * fabs(v[b].total));
        CHECK_NEAR(v[b].clip, parts.clip->data[b], 1e-5 * fabs(v[b].clip));
        CHECK_NEAR(v[b].l1, parts.l1->data[b], 1e-6);
    }
    CHECK(v[0].l1 > 1e-3 && v[1].l1 < 1e-5);
    pbw_ctx_free(scratch);
    pbw_ctx_free(ctx);
    free(w);
    gc_setup_free(&s);
}

PBW_TEST(paint_recon_lpips) {
    models m;
    if (load_models(&m, 1)) {
        CHECK(!"fixture models");
        free_models(&m);
        return;
    }
    pbw_err err;
    pbw_ctx *ctx = pbw_ctx_new(PBW_DEV_CPU, &err);
    pbw_ctx *cctx = pbw_ctx_new(PBW_DEV_CPU, &err);
    const int S = 48;
    pbw_tensor *orig = pbw_tensor_new(cctx, 4, (int64_t[]){1, 3, S, S});
    pbw_rng rng;
    pbw_rng_seed(&rng, 5);
    for (int64_t i = 0; i < orig->numel; i++) orig->data[i] = (float)(0.8 * sin(0.05 * (double)i) + 0.1 * pbw_rng_normal(&rng));
    float *mask = calloc((size_t)S * S, sizeof *mask);
    for (int y = 10; y < 30; y++)
        for (int x = 12; x < 40; x++) mask[y * S + x] = 1;
    pbw_tensor *t = pbw_clip_encode_text(cctx, m.clip, IDS, 1, 5);
    pbw_objective o;
    pbw_objective_init(&o, m.clip, m.lpips, t, S, S);
    o.n_crops = 2;
    CHECK(pbw_objective_set_mask(&o, cctx, mask, orig, &err) == 0);
    pbw_crop crops[2];
    pbw_crops_draw(&rng, S, 2, crops);
    float *x = malloc((size_t)orig->numel * sizeof *x), *g = malloc((size_t)orig->numel * sizeof *g);
    for (int64_t i = 0; i < orig->numel; i++) { /* |x - orig| >= 0.1: no |.| kink within +-eps */
        double r = pbw_rng_normal(&rng);
        x[i] = orig->data[i] + (float)(r < 0 ? 0.2 * r - 0.1 : 0.2 * r + 0.1);
    }
    /* values against the LPIPS module and a direct L1 */
    pbw_tensor *xt = pbw_tensor_wrap(ctx, x, 4, (int64_t[]){1, 3, S, S});
    xt->requires_grad = 1;
    pbw_loss_parts p;
    CHECK(pbw_objective_eval(ctx, &o, xt, crops, &p) == 0 && p.lpips && p.l1);
    if (!p.lpips || !p.l1) goto done;
    double l1 = 0, ks = 0;
    for (int i = 0; i < S * S; i++) {
        ks += 1 - mask[i];
        for (int c = 0; c < 3; c++) l1 += fabs(x[c * S * S + i] - orig->data[c * S * S + i]) * (1 - mask[i]);
    }
    CHECK_NEAR(p.l1->data[0], l1 / ks, 1e-5 * (l1 / ks));
    pbw_tensor *map = pbw_lpips_forward(ctx, m.lpips, xt, orig, 1);
    pbw_tensor *lw = pbw_lpips_weighted(ctx, map, o.keep);
    CHECK(lw && fabs(lw->data[0] - p.lpips->data[0]) <= 1e-5 * fabs(lw->data[0]));
    CHECK_NEAR(p.total->data[0], p.clip->data[0] + 5 * (p.l1->data[0] + 10 * p.lpips->data[0]),
               1e-4);
    /* gradient with respect to the image along random directions */
    {
        pbw_ctx_reset(ctx);
        xt = pbw_tensor_wrap(ctx, x, 4, (int64_t[]){1, 3, S, S});
        xt->requires_grad = 1;
        CHECK(pbw_objective_eval(ctx, &o, xt, crops, &p) == 0);
        CHECK(pbw_backward(ctx, p.total, NULL, &err) == 0 && xt->grad);
        memcpy(g, xt->grad, (size_t)orig->numel * sizeof *g);
        float *d = malloc((size_t)orig->numel * sizeof *d), *xp = malloc((size_t)orig->numel * sizeof *xp);
        for (int k = 0; k < 3; k++) {
            double ana = 0, f[2];
            for (int64_t i = 0; i < orig->numel; i++) {
                d[i] = (float)(2 * pbw_rng_uniform(&rng) - 1);
                ana += (double)g[i] * d[i];
            }
            for (int sgn = 0; sgn < 2; sgn++) {
                for (int64_t i = 0; i < orig->numel; i++) xp[i] = x[i] + (sgn ? -1e-2f : 1e-2f) * d[i];
                pbw_ctx_reset(ctx);
                pbw_tensor *xq = pbw_tensor_wrap(ctx, xp, 4, (int64_t[]){1, 3, S, S});
                CHECK(pbw_objective_eval(ctx, &o, xq, crops, &p) == 0);
                f[sgn] = p.total->data[0];
            }
            double fd = (f[0] - f[1]) / 2e-2;
            fprintf(stderr, "  recon+lpips direction %d: analytic %.6f, finite diff %.6f\n", k, ana, fd);
            CHECK(fabs(fd - ana) <= 5e-3 + 3e-2 * fabs(ana));
        }
        free(d);
        free(xp);
    }
done:
    free(x);
    free(g);
    free(mask);
    pbw_ctx_free(ctx);
    pbw_ctx_free(cctx);
    free_models(&m);
}

/* ---------- painter ---------- */

typedef struct prog {
    int calls, cancel_at, last_step, cma, adam;
    volatile sig_atomic_t *flag;
    double first_clip, last_clip;
} prog;

static void on_prog(const pbw_paint_progress *pr, void *user) {
    prog *p = user;
    p->calls++;
    p->last_step = pr->step;
    p->cma += pr->phase == PBW_PHASE_CMA;
    p->adam += pr->phase == PBW_PHASE_ADAM;
    if (p->calls == 1) p->first_clip = pr->loss.clip;
    p->last_clip = pr->loss.clip;
    if (!pr->image || pr->size != 32) p->calls = -1000;
    if (p->flag && pr->step == p->cancel_at) *p->flag = 1;
}

/* corner mask: rows and columns 0..9 of 32 */
static void corner_mask(float *m) {
    for (int y = 0; y < 32; y++)
        for (int x = 0; x < 32; x++) m[y * 32 + x] = (y < 10 && x < 10) ? 1.0f : 0.0f;
}

static void small_request(pbw_paint_request *rq, const float *mask) {
    pbw_paint_request_default(rq);
    rq->ids = IDS;
    rq->n_ids = 5;
    rq->mask = mask;
    rq->seed = 2;
    rq->allow_no_lpips = 1;
    rq->crops = 8;
}

/* small_request cut to 2 CMA-ES generations of 4, then `steps` Adam steps. */
static void tiny_request(pbw_paint_request *rq, const float *mask, int steps) {
    small_request(rq, mask);
    rq->cma_generations = 2;
    rq->population = 4;
    rq->adam_steps = steps;
}

/* The fixture models (no LPIPS) in a painter; -1 (checked, freed) when they cannot load. */
static int open_painter(models *m, pbw_painter **p) {
    pbw_err err;
    if (load_models(m, 0) || pbw_painter_wrap(p, m->g, m->clip, NULL, NULL, &err)) {
        CHECK(!"fixtures");
        free_models(m);
        return -1;
    }
    return 0;
}

PBW_TEST(paint_edit_adam_fixture) {
    models m;
    pbw_painter *p = NULL;
    pbw_err err;
    if (open_painter(&m, &p)) return;
    float mask[32 * 32];
    corner_mask(mask);
    pbw_paint_request rq;
    small_request(&rq, mask);
    rq.optim = PBW_OPTIM_ADAM;
    rq.adam_steps = 12;
    rq.lr = 0.1;
    prog pr = {0};
    pbw_paint_result res;
    int rc = pbw_painter_edit(p, &rq, on_prog, &pr, NULL, &res, &err);
    CHECK_MSG(rc == 0, "%s", err.msg);
    if (rc == 0) {
        CHECK(pr.calls == 12 && pr.adam == 12 && res.steps_done == 12 && !res.cancelled);
        CHECK(res.var == PBW_VAR_W && res.latent_dim == 32 && res.size == 32);
        fprintf(stderr, "  clip loss before %.4f after %.4f; l1 after %.4f\n", res.before.clip,
                res.after.clip, res.after.l1);
        CHECK(res.after.clip < res.before.clip - 0.3); /* measured 0.53 */
        CHECK(res.before.l1 == 0 && res.after.l1 > 0);
        double far = 0, in = 0;
        int nin = 0;
        for (int y = 0; y < 32; y++)
            for (int x = 0; x < 32; x++)
                for (int c = 0; c < 3; c++) {
                    int i = c * 1024 + y * 32 + x;
                    double d = fabs(res.image[i] - res.original[i]);
                    if (y >= 22 || x >= 22) far = fmax(far, d);
                    if (mask[y * 32 + x] > 0) in += d, nin++;
                }
        fprintf(stderr, "  mean |change| inside the mask %.4f; max |change| 12+ px away %.4f\n",
                in / nin, far);
        CHECK(far <= 0.05);
        CHECK(in / nin > 10 * far);
    }
    pbw_paint_result_free(&res);
    pbw_painter_free(p);
    free_models(&m);
}

/* Which phases' progress reports carried an image. */
typedef struct seen_images {
    int with[2], without[2];
} seen_images;

static void on_images(const pbw_paint_progress *pr, void *user) {
    seen_images *s = user;
    if (pr->image) s->with[pr->phase]++;
    else s->without[pr->phase]++;
}

/* no_progress_images leaves every progress report without an image and changes nothing else:
 * the same result bit for bit. */
PBW_TEST(paint_edit_no_progress_images) {
    models m;
    pbw_painter *p = NULL;
    pbw_err err;
    if (open_painter(&m, &p)) return;
    float mask[32 * 32];
    corner_mask(mask);
    pbw_paint_result res[2];
    seen_images seen[2];
    memset(seen, 0, sizeof seen);
    int rc[2];
    for (int k = 0; k < 2; k++) {
        pbw_paint_request rq;
        tiny_request(&rq, mask, 3);
        rq.no_progress_images = k;
        rc[k] = pbw_painter_edit(p, &rq, on_images, &seen[k], NULL, &res[k], &err);
        CHECK_MSG(rc[k] == 0, "%s", err.msg);
    }
    if (rc[0] == 0 && rc[1] == 0) {
        printf("  images in reports: cma %d/%d, adam %d/%d (default); cma %d/%d, adam %d/%d "
               "(no_progress_images)\n", seen[0].with[0], seen[0].with[0] + seen[0].without[0],
               seen[0].with[1], seen[0].with[1] + seen[0].without[1], seen[1].with[0],
               seen[1].with[0] + seen[1].without[0], seen[1].with[1],
               seen[1].with[1] + seen[1].without[1]);
        CHECK(seen[0].with[0] == 2 && seen[0].with[1] == 3 && !seen[0].without[0] &&
              !seen[0].without[1]);
        CHECK(seen[1].without[0] == 2 && seen[1].without[1] == 3 && !seen[1].with[0] &&
              !seen[1].with[1]);
        CHECK(memcmp(res[0].image, res[1].image, sizeof(float) * 3 * 32 * 32) == 0);
        CHECK(memcmp(res[0].latent, res[1].latent, sizeof(float) * 32) == 0);
        CHECK(res[0].after.total == res[1].after.total);
    }
    for (int k = 0; k < 2; k++)
        if (rc[k] == 0) pbw_paint_result_free(&res[k]);
    pbw_painter_free(p);
    free_models(&m);
}

/* One edit for pbw_test_capture_stderr. */
typedef struct edit_call {
    pbw_painter *p;
    const pbw_paint_request *rq;
    pbw_paint_result res;
    pbw_err err;
} edit_call;

static int run_edit_call(void *arg) {
    edit_call *e = arg;
    return pbw_painter_edit(e->p, e->rq, NULL, NULL, NULL, &e->res, &e->err);
}

/* PBW_TIMELINE=1: the painter's stages on stderr, in order (each generation's and each step's
 * once), at times that never go back. */
PBW_TEST(paint_timeline) {
    models m;
    pbw_painter *p = NULL;
    if (open_painter(&m, &p)) return;
    float mask[32 * 32];
    corner_mask(mask);
    pbw_paint_request rq;
    tiny_request(&rq, mask, 2);
    edit_call e = {.p = p, .rq = &rq};
    char text[16384];
    setenv("PBW_TIMELINE", "1", 1);
    int rc = pbw_test_capture_stderr(run_edit_call, &e, text, sizeof text);
    unsetenv("PBW_TIMELINE");
    CHECK_MSG(rc == 0, "%s", e.err.msg);
    if (rc == 0) pbw_paint_result_free(&e.res);
    const size_t len = strlen(text);
    const char *want[] = {"set-up: text embedded", "set-up: original rendered",
                          "set-up: generator's mask", "set-up: before's evaluation",
                          "cma: asked 1", "cma: settled 1", "cma: evaluated, values read back 1",
                          "cma: told 1", "cma: asked 2", "cma: told 2", "adam: pass queued 1",
                          "adam: read back 1", "adam: updated 1", "adam: updated 2", "result:"};
    const char *at = text;
    int found = 0;
    for (size_t i = 0; i < sizeof want / sizeof *want; i++) {
        const char *q = strstr(at, want[i]);
        if (!q) {
            printf("  timeline: \"%s\" missing or out of order\n", want[i]);
            break;
        }
        at = q + strlen(want[i]);
        found++;
    }
    int lines = 0, back = 0;
    double last = -1;
    for (const char *l = strstr(text, "timeline:"); l; l = strstr(l + 1, "timeline:")) {
        double t = atof(l + strlen("timeline:"));
        back += t < last;
        last = t;
        lines++;
    }
    printf("  %zu bytes, %d marks, %d of %zu expected in order, %d going back in time\n", len,
           lines, found, sizeof want / sizeof *want, back);
    CHECK(found == (int)(sizeof want / sizeof *want) && back == 0);
    CHECK(lines == 7 + 2 * 4 + 2 * 3 + 1); /* set-up, 2 generations, 2 steps, the result */
    pbw_painter_free(p);
    free_models(&m);
}

PBW_TEST(paint_edit_refusals_cancel_repro) {
    models m;
    pbw_painter *p = NULL;
    pbw_err err;
    if (open_painter(&m, &p)) return;
    float mask[32 * 32], empty[32 * 32] = {0};
    corner_mask(mask);
    pbw_paint_request rq;
    pbw_paint_result res;
    /* refusals */
    small_request(&rq, empty);
    CHECK(pbw_painter_edit(p, &rq, NULL, NULL, NULL, &res, &err) != 0 && strstr(err.msg, "empty"));
    small_request(&rq, NULL);
    CHECK(pbw_painter_edit(p, &rq, NULL, NULL, NULL, &res, &err) != 0);
    small_request(&rq, mask);
    rq.allow_no_lpips = 0;
    CHECK(pbw_painter_edit(p, &rq, NULL, NULL, NULL, &res, &err) != 0 && strstr(err.msg, "LPIPS"));
    small_request(&rq, mask);
    rq.ids = NULL;
    rq.text = "a red barn";
    CHECK(pbw_painter_edit(p, &rq, NULL, NULL, NULL, &res, &err) != 0 && strstr(err.msg, "tokenizer"));
    small_request(&rq, mask);
    CHECK(pbw_painter_generate(p, &rq, NULL, NULL, NULL, &res, &err) != 0);

    /* cancel after step 3 of cma+adam (2 generations + 4 steps): best so far, cancelled */
    small_request(&rq, mask);
    rq.cma_generations = 2;
    rq.population = 6;
    rq.adam_steps = 4;
    volatile sig_atomic_t flag = 0;
    prog pr = {.cancel_at = 3, .flag = &flag};
    int rc = pbw_painter_edit(p, &rq, on_prog, &pr, &flag, &res, &err);
    CHECK_MSG(rc == 0, "%s", err.msg);
    if (!rc) {
        CHECK(res.cancelled == 1 && res.steps_done == 3 && res.steps == 6 && pr.calls == 3);
        CHECK(pr.cma == 2 && pr.adam == 1);
        CHECK(res.image && res.latent);
    }
    pbw_paint_result_free(&res);
    /* a flag already set: no step runs, the start image comes back */
    flag = 1;
    pr = (prog){0};
    rc = pbw_painter_edit(p, &rq, on_prog, &pr, &flag, &res, &err);
    CHECK(rc == 0 && res.cancelled && res.steps_done == 0 && pr.calls == 0);
    for (int i = 0; !rc && i < 3 * 1024; i++) CHECK(fabsf(res.image[i] - res.original[i]) < 1e-5f);
    pbw_paint_result_free(&res);

    /* the same request twice: the same bytes */
    pbw_paint_result r1, r2;
    rc = pbw_painter_edit(p, &rq, NULL, NULL, NULL, &r1, &err);
    CHECK(rc == 0);
    rc |= pbw_painter_edit(p, &rq, NULL, NULL, NULL, &r2, &err);
    CHECK(rc == 0);
    if (!rc) {
        CHECK(memcmp(r1.latent, r2.latent, 32 * sizeof(float)) == 0);
        CHECK(memcmp(r1.image, r2.image, 3 * 1024 * sizeof(float)) == 0);
        CHECK(r1.after.total == r2.after.total);
        /* another rng seed: other crops, another result */
        rq.rng_seed = 2;
        pbw_paint_result r3;
        CHECK(pbw_painter_edit(p, &rq, NULL, NULL, NULL, &r3, &err) == 0);
        CHECK(memcmp(r1.latent, r3.latent, 32 * sizeof(float)) != 0);
        pbw_paint_result_free(&r3);
    }
    pbw_paint_result_free(&r1);
    pbw_paint_result_free(&r2);
    pbw_painter_free(p);
    free_models(&m);
}

/* CMA-ES renders a generation's first generator blocks once for the whole population, the
 * rest per batch (pbw_sg2_shared_blocks); with PBW_CMA_HEAD=0 every batch renders whole. On
 * the CPU the two give the same bytes (each sample's values do not depend on its batch), with
 * and without the latent mask. */
PBW_TEST(paint_cma_shared_head) {
    models m;
    pbw_painter *p = NULL;
    pbw_err err;
    if (open_painter(&m, &p)) return;
    const int k = pbw_sg2_shared_blocks(m.g, 6, 2);
    printf("  shared blocks for 6 candidates in batches of 2: %d of %d\n", k, m.g->log_size - 2);
    CHECK(k >= 1 && k < m.g->log_size - 2);
    CHECK(pbw_sg2_shared_blocks(m.g, 2, 2) >= 1 && pbw_sg2_shared_blocks(m.g, 600, 2) == 0);
    float mask[32 * 32];
    corner_mask(mask);
    for (int mode = 0; mode < 2; mode++) {
        pbw_paint_request rq;
        small_request(&rq, mask);
        rq.optim = PBW_OPTIM_CMA;
        rq.cma_generations = 3;
        rq.population = 6;
        rq.cma_batch = 2;
        rq.mask_mode = mode ? PBW_MASK_OUTPUT : PBW_MASK_LATENT;
        pbw_paint_result r1, r2;
        int rc = pbw_painter_edit(p, &rq, NULL, NULL, NULL, &r1, &err);
        CHECK_MSG(rc == 0, "%s", err.msg);
        setenv("PBW_CMA_HEAD", "0", 1);
        int rc2 = pbw_painter_edit(p, &rq, NULL, NULL, NULL, &r2, &err);
        unsetenv("PBW_CMA_HEAD");
        CHECK_MSG(rc2 == 0, "%s", err.msg);
        if (!rc && !rc2) {
            CHECK(memcmp(r1.latent, r2.latent, 32 * sizeof(float)) == 0);
            CHECK(memcmp(r1.image, r2.image, 3 * 1024 * sizeof(float)) == 0);
            CHECK(r1.after.total == r2.after.total);
        }
        if (!rc) pbw_paint_result_free(&r1);
        if (!rc2) pbw_paint_result_free(&r2);
    }
    pbw_painter_free(p);
    free_models(&m);
}

PBW_TEST(paint_generate_fixture) {
    models m;
    pbw_painter *p = NULL;
    pbw_err err;
    if (open_painter(&m, &p)) return;
    pbw_paint_request rq;
    small_request(&rq, NULL);
    rq.cma_generations = 2;
    rq.population = 8;
    rq.adam_steps = 6;
    rq.lr = 0.05;
    prog pr = {0};
    pbw_paint_result res;
    int rc = pbw_painter_generate(p, &rq, on_prog, &pr, NULL, &res, &err);
    CHECK_MSG(rc == 0, "%s", err.msg);
    if (!rc) {
        CHECK(res.var == PBW_VAR_Z && pr.calls == 8 && res.before.l1 == 0 && res.after.l1 == 0);
        fprintf(stderr, "  generate: clip loss %.4f -> %.4f\n", res.before.clip, res.after.clip);
        CHECK(res.after.clip < res.before.clip);
    }
    pbw_paint_result_free(&res);
    pbw_painter_free(p);
    free_models(&m);
}

/* ---------- GIF ---------- */

PBW_TEST(paint_gif_history) {
    char path[] = "/tmp/pbw_test_gif_XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    close(fd);
    const int W = 5, H = 4;
    uint8_t rgb[3][5 * 4 * 3];
    for (int f = 0; f < 3; f++)
        for (int i = 0; i < W * H; i++) {
            rgb[f][3 * i] = (uint8_t)(40 * f + 10 * (i % 3));
            rgb[f][3 * i + 1] = (uint8_t)(200 - 30 * f);
            rgb[f][3 * i + 2] = (uint8_t)(i % 2 ? 255 : 0);
        }
    pbw_gif *g;
    pbw_err err;
    CHECK(pbw_gif_open(&g, path, W, H, 10, &err) == 0);
    for (int f = 0; f < 3; f++) CHECK(pbw_gif_add(g, rgb[f], &err) == 0);
    CHECK(pbw_gif_frames(g) == 3);
    CHECK(pbw_gif_close(g, &err) == 0);
    int e = 0;
    GifFileType *gf = DGifOpenFileName(path, &e);
    CHECK(gf && DGifSlurp(gf) == GIF_OK);
    if (gf) {
        CHECK(gf->SWidth == W && gf->SHeight == H && gf->ImageCount == 3);
        int bad = 0;
        for (int f = 0; f < gf->ImageCount && f < 3; f++) {
            SavedImage *si = &gf->SavedImages[f];
            ColorMapObject *cm = si->ImageDesc.ColorMap ? si->ImageDesc.ColorMap : gf->SColorMap;
            for (int i = 0; i < W * H && cm; i++) {
                GifColorType c = cm->Colors[si->RasterBits[i]];
                bad += abs(c.Red - rgb[f][3 * i]) > 8 || abs(c.Green - rgb[f][3 * i + 1]) > 8 ||
                       abs(c.Blue - rgb[f][3 * i + 2]) > 8;
            }
        }
        CHECK(bad == 0);
        DGifCloseFile(gf, &e);
    }
    /* abort leaves the old file untouched */
    CHECK(pbw_gif_open(&g, path, W, H, 10, &err) == 0);
    CHECK(pbw_gif_add(g, rgb[0], &err) == 0);
    pbw_gif_abort(g);
    gf = DGifOpenFileName(path, &e);
    CHECK(gf && DGifSlurp(gf) == GIF_OK && gf->ImageCount == 3);
    if (gf) DGifCloseFile(gf, &e);
    unlink(path);
}
