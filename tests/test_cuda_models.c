/* test_cuda_models.c: the models and a whole edit on CUDA against the CPU, with the shapes-world
 * models shipped in models/shapes (a StyleGAN2 and a CLIP of the real architectures).
 *
 * Tolerances: in fp32 (no TF32) every op sums in another order than the CPU, so deep networks
 * drift by a few 1e-6 relative per layer: 1e-4 relative for embeddings and images. Reduced
 * precision (bf16 products, fp32 accumulation) is judged by cosine similarity to the fp32
 * result, as the issue asks (>= 0.999). The edit after 5 Adam steps: 1e-3 max abs on the image
 * in [-1,1] (the acceptance criterion). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/pbw_ops.h"
#include "core/pbw_rng.h"
#include "cuda_parity.h"
#include "gradcheck.h"
#include "models/pbw_clip.h"
#include "models/pbw_stylegan2.h"
#include "models/pbw_tokenizer.h"
#include "paint/pbw_loss.h"
#include "paint/pbw_painter.h"
#include "pbw_test.h"
#ifdef PBW_HAVE_CUDA
#include "cuda/pbw_cuda.h"
#endif

#define SHAPES_GAN "models/shapes/gan.safetensors"
#define SHAPES_CLIP "models/shapes/clip"

/* The models under test: the shapes-world ones, or full-size files named by PBW_TEST_CLIP (a
 * CLIP directory with its vocabulary, e.g. a random ViT-B/32 written by transformers) and
 * PBW_TEST_GAN (a rosinality checkpoint, e.g. 256 px); bench/run_cuda.sh writes both. */
static const char *clip_path(void) {
    const char *e = getenv("PBW_TEST_CLIP");
    return e && *e ? e : SHAPES_CLIP;
}
static const char *gan_path(void) {
    const char *e = getenv("PBW_TEST_GAN");
    return e && *e ? e : SHAPES_GAN;
}

/* Image and text embeddings of the shapes CLIP on `dev` into img (2,E) and txt (2,E). */
static int clip_embed(pbw_device dev, float *img, float *txt, int64_t *E) {
    pbw_err err = {0};
    pbw_clip *m = NULL;
    pbw_tokenizer *tok = NULL;
    pbw_ctx *ctx = pbw_ctx_new(dev, &err);
    int rc = -1;
    const char *vocab = getenv("PBW_TEST_VOCAB");
    if (!ctx || pbw_clip_load(clip_path(), &m, &err) || pbw_clip_to_device(m, ctx, &err) ||
        !(tok = pbw_tokenizer_load(vocab && *vocab ? vocab : clip_path(), &err))) {
        fprintf(stderr, "  %s\n", err.msg);
        goto out;
    }
    const int S = m->cfg.image_size, C = m->cfg.context_length;
    float *px = malloc((size_t)2 * 3 * S * S * sizeof(float));
    pbw_rng rng;
    pbw_rng_seed(&rng, 7);
    for (int64_t i = 0; i < (int64_t)2 * 3 * S * S; i++) px[i] = (float)(2 * pbw_rng_uniform(&rng) - 1);
    pbw_tensor *pt = pbw_tensor_from_host(ctx, px, 4, (int64_t[]){2, 3, S, S});
    free(px);
    pbw_tensor *ie = pbw_clip_encode_image(ctx, m, pt);
    int32_t ids[2 * 77] = {0};
    const char *texts[2] = {"a red circle", "a small blue star at the top left"};
    for (int b = 0; b < 2; b++) {
        size_t n;
        if (pbw_tokenize(tok, texts[b], strlen(texts[b]), ids + b * C, (size_t)C, C, &n, &err)) goto out;
    }
    pbw_tensor *te = pbw_clip_encode_text(ctx, m, ids, 2, C);
    if (!ie || !te || pbw_tensor_read(ctx, ie, img) || pbw_tensor_read(ctx, te, txt)) {
        fprintf(stderr, "  %s\n", pbw_ctx_error(ctx));
        goto out;
    }
    *E = ie->shape[1];
    rc = 0;
out:
    pbw_tokenizer_free(tok);
    pbw_clip_free(m);
    pbw_ctx_free(ctx);
    return rc;
}

PBW_TEST(cuda_clip_model) {
#ifdef PBW_HAVE_CUDA
    float ia[2 * 1024], ta[2 * 1024], ib[2 * 1024], tb[2 * 1024];
    int64_t E = 0, E2 = 0;
    printf("  clip %s\n", clip_path());
    CHECK(clip_embed(PBW_DEV_CPU, ia, ta, &E) == 0);
    pbw_cuda_set_precision(PBW_PREC_FP32);
    CHECK(clip_embed(PBW_DEV_CUDA, ib, tb, &E2) == 0 && E == E2 && E <= 1024);
    double si, st;
    double di = gc_max_diff(ib, ia, 2 * E, &si), dt = gc_max_diff(tb, ta, 2 * E, &st);
    printf("  clip fp32: image max rel %.2e, text max rel %.2e\n", di / si, dt / st);
    CHECK(di <= 1e-4 * si && dt <= 1e-4 * st);
    for (int p = PBW_PREC_TF32; p <= PBW_PREC_FP16; p++) {
        pbw_cuda_set_precision((pbw_precision)p);
        CHECK(clip_embed(PBW_DEV_CUDA, ib, tb, &E2) == 0);
        double c = 1;
        for (int b = 0; b < 2; b++) {
            c = fmin(c, pbw_cosine_f32(ia + b * E, ib + b * E, E));
            c = fmin(c, pbw_cosine_f32(ta + b * E, tb + b * E, E));
        }
        printf("  clip %s: min cosine to the CPU fp32 embeddings %.6f\n",
               pbw_precision_name((pbw_precision)p), c);
        CHECK(c >= 0.999);
    }
    pbw_cuda_set_precision(PBW_PREC_FP32);
#endif
}

/* Images of seeds 0..3 of the shapes GAN, plain and with a masked style, on `dev`. */
static int gan_images(pbw_device dev, float *out, int64_t *n) {
    pbw_err err = {0};
    pbw_stylegan2 *g = NULL;
    pbw_ctx *ctx = pbw_ctx_new(dev, &err);
    int rc = -1;
    if (!ctx || pbw_sg2_load(gan_path(), &g, &err) || pbw_sg2_to_device(g, ctx, &err)) {
        fprintf(stderr, "  %s\n", err.msg);
        goto out;
    }
    const int D = g->style_dim, S = g->size;
    float *z = malloc((size_t)4 * D * sizeof(float));
    pbw_seedbank_z(0, 4, D, z);
    pbw_tensor *zt = pbw_tensor_from_host(ctx, z, 2, (int64_t[]){4, D});
    free(z);
    pbw_tensor *img = pbw_sg2_from_z(ctx, g, zt, 1.0f, NULL);
    if (!img || pbw_tensor_read(ctx, img, out)) {
        fprintf(stderr, "  %s\n", pbw_ctx_error(ctx));
        goto out;
    }
    *n = img->numel;
    (void)S;
    rc = 0;
out:
    pbw_sg2_free(g);
    pbw_ctx_free(ctx);
    return rc;
}

PBW_TEST(cuda_stylegan2_model) {
#ifdef PBW_HAVE_CUDA
    static float a[4 * 3 * 1024 * 1024], b[4 * 3 * 1024 * 1024];
    int64_t na = 0, nb = 0;
    printf("  generator %s\n", gan_path());
    CHECK(gan_images(PBW_DEV_CPU, a, &na) == 0);
    pbw_cuda_set_precision(PBW_PREC_FP32);
    CHECK(gan_images(PBW_DEV_CUDA, b, &nb) == 0 && na == nb);
    double s, d = gc_max_diff(b, a, na, &s);
    printf("  stylegan2 fp32: images max abs diff %.2e (scale %.2f)\n", d, s);
    CHECK(d <= 1e-4 * s);
    pbw_cuda_set_precision(PBW_PREC_BF16);
    CHECK(gan_images(PBW_DEV_CUDA, b, &nb) == 0);
    d = gc_max_diff(b, a, na, &s);
    printf("  stylegan2 bf16: images max abs diff %.2e, cosine %.6f\n", d, pbw_cosine_f32(a, b, na));
    CHECK(pbw_cosine_f32(a, b, na) >= 0.999);
    pbw_cuda_set_precision(PBW_PREC_FP32);
#endif
}

/* A fixed-seed edit with 5 Adam steps (no CMA) on `dev`: the result image. */
static int edit5(pbw_device dev, float *out, int64_t *n, double *clip_after, float *lat) {
    pbw_err err = {0};
    pbw_painter *p = NULL;
    pbw_painter_config cfg = {0};
    cfg.gan = SHAPES_GAN;
    cfg.clip = SHAPES_CLIP;
    cfg.device = dev;
    if (pbw_painter_new(&p, &cfg, &err)) {
        fprintf(stderr, "  %s\n", err.msg);
        return -1;
    }
    int S = pbw_painter_image_size(p);
    float *mask = calloc((size_t)S * S, sizeof(float));
    for (int y = S / 4; y < S / 2; y++)
        for (int x = S / 4; x < S / 2; x++) mask[y * S + x] = 1;
    pbw_paint_request rq;
    pbw_paint_request_default(&rq);
    rq.seed = 0;
    rq.text = "a yellow star";
    rq.mask = mask;
    rq.optim = PBW_OPTIM_ADAM;
    rq.adam_steps = 5; /* the method's defaults otherwise: lr 0.01 one-cycle, 32 crops */
    rq.allow_no_lpips = 1;
    pbw_paint_result res;
    int rc = pbw_painter_edit(p, &rq, NULL, NULL, NULL, &res, &err);
    if (rc) fprintf(stderr, "  %s\n", err.msg);
    if (!rc) {
        *n = (int64_t)3 * S * S;
        memcpy(out, res.image, (size_t)*n * sizeof(float));
        *clip_after = res.after.clip;
        memcpy(lat, res.latent, (size_t)res.latent_dim * sizeof(float));
        pbw_paint_result_free(&res);
    }
    free(mask);
    pbw_painter_free(p);
    return rc;
}

PBW_TEST(cuda_edit_adam5_fp32) {
#ifdef PBW_HAVE_CUDA
    static float a[3 * 256 * 256], b[3 * 256 * 256];
    int64_t na = 0, nb = 0;
    static float la[1024], lb[1024];
    double ca = 0, cb = 0;
    CHECK(edit5(PBW_DEV_CPU, a, &na, &ca, la) == 0);
    pbw_cuda_set_precision(PBW_PREC_FP32);
    CHECK(edit5(PBW_DEV_CUDA, b, &nb, &cb, lb) == 0 && na == nb);
    double ls = 0, d = gc_max_diff(b, a, na, NULL), dl = gc_max_diff(lb, la, 128, &ls);
    printf("  edit, 5 Adam steps, fp32: image max abs diff %.2e (latent max abs diff %.2e of "
           "%.2f); clip loss after %.5f (cpu) %.5f (cuda)\n", d, dl, ls, ca, cb);
    CHECK(d <= 1e-3);
#endif
}

PBW_TEST(cuda_device_parse) {
    pbw_device dev;
    int idx;
    pbw_err err = {0};
    char why[128];
    CHECK(pbw_device_parse("cpu", &dev, &idx, why, sizeof why, &err) == 0 && dev == PBW_DEV_CPU);
    CHECK(pbw_device_parse("cuda:0", &dev, &idx, why, sizeof why, &err) == 0 &&
          dev == PBW_DEV_CUDA && idx == 0);
    CHECK(pbw_device_parse("auto", &dev, &idx, why, sizeof why, &err) == 0 && dev == PBW_DEV_CUDA);
    printf("  auto: %s\n", why);
    CHECK(pbw_device_parse("cuda:99", &dev, &idx, why, sizeof why, &err) != 0);
    CHECK(pbw_device_parse("gpu", &dev, &idx, why, sizeof why, &err) != 0);
}
