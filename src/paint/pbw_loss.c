/* pbw_loss.c: crops, CLIP loss, loss modes, reconstruction loss and masks; see pbw_loss.h.
 *
 * Everything differentiable is composed of taped ops (slice, affine, resize, clamp, concat,
 * the CLIP towers, LPIPS), so gradients come from their tested backward kernels; this file
 * has no gradient code of its own. */
#include "paint/pbw_loss.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "cpu/pbw_cpu_conv.h"
#include "cpu/pbw_cpu_threads.h"
#ifdef PBW_HAVE_CUDA
#include "cuda/pbw_cuda.h"
#include "cuda/pbw_cuda_paint.h"
#endif

/* ------------------------------------------------------------------------------------------ */
/* crops                                                                                       */

/* lo + floor(u * (hi - lo)), u uniform in [0,1); lo when hi <= lo. */
static int uniform_int(pbw_rng *rng, int lo, int hi) {
    if (hi <= lo) return lo;
    int v = lo + (int)floor(pbw_rng_uniform(rng) * (double)(hi - lo));
    return v < hi ? v : hi - 1;
}

void pbw_crops_draw(pbw_rng *rng, int S, int n, pbw_crop *out) {
    /* int() of the products as Python truncates them; 0.98 * S is computed in double as the
     * reference does */
    int lo = (int)(0.7 * S), hi = (int)(0.98 * S);
    if (lo < 1) lo = 1;
    for (int k = 0; k < n; k++) {
        int side = uniform_int(rng, lo, hi);
        if (side > S) side = S;
        out[k].side = side;
        out[k].y = uniform_int(rng, 0, S - side);
        out[k].x = uniform_int(rng, 0, S - side);
    }
}

/* ---------- CLIP's input from crops: one fused op ----------
 *
 * The reference's per-crop chain (slice, (x + 1) / 2, bicubic resize, clamp, CLIP's
 * normalization, stacking) as one taped op: the chain as separate ops makes six full-size
 * intermediate tensors of (B*n,3,R,R) (19 MB each for 32 crops at 224) and as many passes over
 * memory forward and backward. The arithmetic is the same, step for step: (x * 0.5 + 0.5) as
 * pbw_affine computes it, the resize by src/cpu's kernel (pbw_resize's, PyTorch-exact), the
 * clamp, (v - mean) / std; tests/test_paint.c compares it with the composed ops. Backward:
 * g / std where the clamp passed (0 <= v <= 1, as pbw_clamp), the resize's transpose, * 0.5,
 * added into the crop's window of dx. Crops of one image overlap, so each thread accumulates
 * into its own dx buffer (a fixed share of the crops) and the buffers are summed in thread
 * order at the end: deterministic for a given thread count. */

typedef struct crops_saved {
    int n, R, P;      /* P: patch side of the output's layout (CUDA), 0 for images */
    pbw_crop *crops;  /* (n) */
    uint8_t *pass;    /* (B*n*3*R*R): 1 where the clamp passed the gradient */
    int *dev_crops;   /* CUDA: the crops as (y, x, side) triples in device memory */
} crops_saved;

/* Floats of per-thread scratch: the crop window, one R x R plane, the resize tables. */
static size_t crop_scratch_floats(int smax, int R) {
    size_t rs = pbw_cpu_resize_scratch_bytes(2, smax, smax, R, R);
    return (size_t)smax * smax + (size_t)R * R + (rs + sizeof(float) - 1) / sizeof(float) + 16;
}

static void crops_fwd(const float *x, int64_t B, int64_t H, int64_t W, const pbw_crop *crops,
                      int n, int R, float *out, uint8_t *pass, float *scratch, size_t per_thread) {
    const int64_t units = B * n, RR = (int64_t)R * R;
#pragma omp parallel for schedule(dynamic, 1) if (units > 1)
    for (int64_t u = 0; u < units; u++) {
        float *win = scratch + (size_t)pbw_cpu_thread_id() * per_thread;
        const pbw_crop *c = &crops[u % n];
        const int64_t b = u / n;
        const int sd = c->side;
        void *rs = win + (size_t)sd * sd + RR;
        for (int ch = 0; ch < 3; ch++) {
            const float *xp = x + (b * 3 + ch) * H * W;
            for (int yy = 0; yy < sd; yy++) {
                const float *row = xp + (int64_t)(c->y + yy) * W + c->x;
                for (int xx = 0; xx < sd; xx++) win[(int64_t)yy * sd + xx] = row[xx] * 0.5f + 0.5f;
            }
            float *op = out + (u * 3 + ch) * RR;
            uint8_t *pp = pass ? pass + (u * 3 + ch) * RR : NULL;
            if (sd == R) memcpy(op, win, (size_t)RR * sizeof *op);
            else pbw_cpu_resize_forward(op, win, 1, sd, sd, R, R, PBW_RESIZE_BICUBIC, rs);
            const float m = pbw_clip_mean[ch], s = pbw_clip_std[ch];
            for (int64_t i = 0; i < RR; i++) {
                float v = op[i];
                if (pp) pp[i] = v >= 0.0f && v <= 1.0f;
                v = v < 0.0f ? 0.0f : (v > 1.0f ? 1.0f : v);
                op[i] = (v - m) / s;
            }
        }
    }
}

static void crops_backward(pbw_ctx *ctx, pbw_node *nd) {
    const crops_saved *sv = nd->saved;
    pbw_tensor *x = nd->in[0], *y = nd->out;
    float *gx = pbw_grad(ctx, x);
    if (!gx) return;
    const int64_t B = x->shape[0], H = x->shape[2], W = x->shape[3], CHW = 3 * H * W;
#ifdef PBW_HAVE_CUDA
    if (pbw_ctx_device(ctx) == PBW_DEV_CUDA) {
        pbw_cuda_norm3 nm;
        memcpy(nm.mean, pbw_clip_mean, sizeof nm.mean);
        memcpy(nm.std, pbw_clip_std, sizeof nm.std);
        /* without the scratch (out of memory, or shapes it does not serve) atomics add */
        const size_t nscr = pbw_cuda_clip_crops_backward_scratch_floats(B, H, W, sv->n, sv->R);
        float *scr = nscr ? pbw_ctx_scratch_opt(ctx, 0, nscr * sizeof(float)) : NULL;
        pbw_cuda_clip_crops_backward(y->grad, sv->pass, B, H, W, sv->dev_crops, sv->n, sv->R,
                                     sv->P, nm, gx, scr);
        return;
    }
#endif
    PBW_ASSERT(sv->P == 0); /* the CPU cuts patches with pbw_clip_patches, taped apart */
    const int n = sv->n, R = sv->R;
    const int64_t units = B * n, RR = (int64_t)R * R;
    int smax = 1;
    for (int k = 0; k < n; k++) smax = sv->crops[k].side > smax ? sv->crops[k].side : smax;
    const int nt = pbw_cpu_max_threads();
    const size_t per = crop_scratch_floats(smax, R) + (size_t)(B * CHW);
    float *scratch = pbw_ctx_scratch(ctx, 0, (size_t)nt * per * sizeof(float));
    if (!scratch) return;
    const float *gy = y->grad;
#pragma omp parallel num_threads(nt)
    {
        const int t = pbw_cpu_thread_id();
        float *acc = scratch + (size_t)t * per;            /* (B,3,H,W) this thread's dx */
        float *win = acc + B * CHW, *gpre = win + (size_t)smax * smax;
        void *rs = gpre + RR;
        memset(acc, 0, (size_t)(B * CHW) * sizeof *acc);
        /* static: which crops a thread sums is fixed by the thread count, so the float sums
         * (and the painting run) are the same from run to run */
#pragma omp for schedule(static)
        for (int64_t u = 0; u < units; u++) {
            const pbw_crop *c = &sv->crops[u % n];
            const int64_t b = u / n;
            const int sd = c->side;
            for (int ch = 0; ch < 3; ch++) {
                const float *g = gy + (u * 3 + ch) * RR;
                const uint8_t *pp = sv->pass + (u * 3 + ch) * RR;
                const float s = pbw_clip_std[ch];
                for (int64_t i = 0; i < RR; i++) gpre[i] = pp[i] ? g[i] / s : 0.0f;
                if (sd == R) {
                    memcpy(win, gpre, (size_t)RR * sizeof *win);
                } else {
                    memset(win, 0, (size_t)sd * sd * sizeof *win);
                    pbw_cpu_resize_backward(win, gpre, 1, sd, sd, R, R, PBW_RESIZE_BICUBIC, rs);
                }
                float *ap = acc + (b * 3 + ch) * H * W;
                for (int yy = 0; yy < sd; yy++) {
                    float *row = ap + (int64_t)(c->y + yy) * W + c->x;
                    const float *wr = win + (int64_t)yy * sd;
                    for (int xx = 0; xx < sd; xx++) row[xx] += wr[xx] * 0.5f;
                }
            }
        }
        /* implicit barrier: every thread's buffer is complete */
#pragma omp for schedule(static)
        for (int64_t i = 0; i < B * CHW; i++) {
            float v = 0.0f;
            for (int k = 0; k < nt; k++) v += scratch[(size_t)k * per + i];
            gx[i] += v;
        }
    }
}

/* pbw_clip_crops, or with P > 0 pbw_clip_crops_patches */
static pbw_tensor *crops_op(pbw_ctx *ctx, pbw_tensor *x, const pbw_crop *crops, int n, int R,
                            int P) {
    if (!x) return NULL;
    if (pbw_profile_enabled()) pbw_profile_op("clip_crops");
    char sx[64];
    if (x->ndim != 4 || x->shape[1] != 3 || !x->data || x->device != pbw_ctx_device(ctx))
        return pbw_ctx_fail(ctx, "clip crops: image %s must be float (B,3,H,W) on the "
                            "context's device", pbw_shape_str(x, sx, sizeof sx));
    if (n < 0 || n > PBW_MAX_CROPS || (n > 0 && !crops) || R < 1 || R > 4096)
        return pbw_ctx_fail(ctx, "clip crops: bad crop count %d or size %d", n, R);
    if (P < 0 || (P > 0 && R % P))
        return pbw_ctx_fail(ctx, "clip crops: patches of %d do not tile crops of %d", P, R);
    const int64_t B = x->shape[0], H = x->shape[2], W = x->shape[3];
    pbw_crop whole = {0, 0, (int)H};
    if (P > 0 && (pbw_ctx_device(ctx) != PBW_DEV_CUDA || (n == 0 && H != W)))
        return pbw_clip_patches(ctx, crops_op(ctx, x, crops, n, R, 0), P);
    if (n == 0) {
        if (H != W) {
            /* the whole of a non-square image: the composed ops */
            pbw_tensor *v = pbw_clamp(ctx, pbw_resize(ctx, pbw_affine(ctx, x, 0.5f, 0.5f), R, R,
                                                      PBW_RESIZE_BICUBIC), 0.0f, 1.0f);
            pbw_tensor *m = pbw_tensor_from_host(ctx, pbw_clip_mean, 4, (int64_t[]){1, 3, 1, 1});
            pbw_tensor *s = pbw_tensor_from_host(ctx, pbw_clip_std, 4, (int64_t[]){1, 3, 1, 1});
            return pbw_div(ctx, pbw_sub(ctx, v, m), s);
        }
        crops = &whole;
        n = 1;
    }
    int smax = 1;
    for (int k = 0; k < n; k++) {
        const pbw_crop *c = &crops[k];
        if (c->side < 1 || c->y < 0 || c->x < 0 || c->y + c->side > H || c->x + c->side > W)
            return pbw_ctx_fail(ctx, "clip crops: crop %d (y %d, x %d, side %d) outside the %s "
                                "image", k, c->y, c->x, c->side, pbw_shape_str(x, sx, sizeof sx));
        if (c->side > smax) smax = c->side;
    }
    const int64_t g = P ? R / P : 0;
    pbw_tensor *out = P ? pbw_tensor_new(ctx, 3, (int64_t[]){B * n, g * g, 3 * (int64_t)P * P})
                        : pbw_tensor_new(ctx, 4, (int64_t[]){B * n, 3, R, R});
    if (!out) return NULL;
    const int grad = pbw_needs_grad(ctx, &x, 1);
    pbw_node *nd = NULL;
    crops_saved *sv = NULL;
    if (grad) {
        nd = pbw_tape_push(ctx, "clip_crops", crops_backward, out, &x, 1, sizeof *sv);
        if (!nd) return NULL;
        sv = nd->saved;
        sv->n = n;
        sv->R = R;
        sv->P = P;
        sv->crops = pbw_arena_alloc(pbw_ctx_arena(ctx), (size_t)n * sizeof *crops);
        sv->pass = pbw_ctx_alloc(ctx, (size_t)(B * n * 3) * R * R);
        if (!sv->crops || !sv->pass) return pbw_ctx_fail(ctx, "clip crops: out of memory");
        memcpy(sv->crops, crops, (size_t)n * sizeof *crops);
    }
#ifdef PBW_HAVE_CUDA
    if (pbw_ctx_device(ctx) == PBW_DEV_CUDA) {
        int *dc = pbw_ctx_upload(ctx, crops, (size_t)n * sizeof *crops);
        if (!dc) return NULL;
        if (sv) sv->dev_crops = dc;
        pbw_cuda_norm3 nm;
        memcpy(nm.mean, pbw_clip_mean, sizeof nm.mean);
        memcpy(nm.std, pbw_clip_std, sizeof nm.std);
        /* patches feed the patch embedding's product: under half activations' precisions
         * they are written as the half copy it reads, alone; with gradients too, since the
         * product's input gradient reads the weight, not x (PBW_CUDA_HALF_ACTS_GRAD=0: fp32
         * patches there, and a product on them) */
        if (P && (grad ? pbw_cuda_half_acts_grad() : pbw_cuda_half_acts()) &&
            !pbw_tensor_half_alloc(ctx, out, 1))
            return NULL;
        pbw_cuda_clip_crops_forward(x->data, B, H, W, dc, n, R, P, nm,
                                    out->half ? NULL : out->data, out->half,
                                    sv ? sv->pass : NULL);
        return out;
    }
#endif
    const size_t per = crop_scratch_floats(smax, R);
    float *scratch = pbw_ctx_scratch(ctx, 0, (size_t)pbw_cpu_max_threads() * per * sizeof(float));
    if (!scratch) return pbw_ctx_fail(ctx, "clip crops: out of memory");
    crops_fwd(x->data, B, H, W, crops, n, R, out->data, sv ? sv->pass : NULL, scratch, per);
    return out;
}

pbw_tensor *pbw_clip_crops(pbw_ctx *ctx, pbw_tensor *x, const pbw_crop *crops, int n, int R) {
    return crops_op(ctx, x, crops, n, R, 0);
}

pbw_tensor *pbw_clip_crops_patches(pbw_ctx *ctx, pbw_tensor *x, const pbw_crop *crops, int n,
                                   int R, int P) {
    if (P < 1) return pbw_ctx_fail(ctx, "clip crops: patch side %d", P);
    return crops_op(ctx, x, crops, n, R, P);
}

pbw_tensor *pbw_clip_crop_loss(pbw_ctx *ctx, const pbw_clip *clip, pbw_tensor *x,
                               pbw_tensor *target, const pbw_crop *crops, int n) {
    if (!x || !target) return NULL;
    const int64_t B = x->shape[0], per = n > 0 ? n : 1;
    pbw_tensor *px = pbw_clip_crops_patches(ctx, x, crops, n, clip->cfg.image_size,
                                            clip->cfg.patch_size);
    pbw_tensor *cos = pbw_cosine(ctx, pbw_clip_encode_image(ctx, clip, px), target);
    pbw_tensor *l = pbw_affine(ctx, cos, -100.0f, 100.0f);          /* 100 (1 - cos), (B*n) */
    l = pbw_reshape(ctx, l, 2, (int64_t[]){B, per});
    const int ax = 1;
    return pbw_mean(ctx, l, 1, &ax, 0);
}

/* CLIP's loss of x's crops in chunks on `scratch` (see pbw_clip_crop_loss_values): per image
 * into out (host doubles), or, with dev_out, each chunk's values copied into dev_out (device
 * floats, CUDA) and nothing read back, which needs whole images per chunk (chunk >= crops). */
static int clip_chunks(pbw_ctx *scratch, const pbw_clip *clip, const pbw_tensor *x,
                       pbw_tensor *target, const pbw_crop *crops, int n, int chunk,
                       double *out, float *dev_out, pbw_err *err) {
    if (x->ndim != 4 || x->shape[1] != 3 || !x->data)
        return pbw_err_set(err, "clip loss: image must be a float (B,3,H,W) tensor");
    if (chunk < 1) chunk = 1;
    const int64_t B = x->shape[0], H = x->shape[2], W = x->shape[3], per = n > 0 ? n : 1;
    if (dev_out && chunk < per)
        return pbw_err_set(err, "clip loss: values kept on the device need whole images per "
                           "chunk (%d crops, chunks of %d)", (int)per, chunk);
    int prev = pbw_ctx_set_grad(scratch, 0);
    int rc = 0;
    /* a chunk holds whole images when it can (several images' crops in one CLIP pass, which is
     * what a GPU wants), else parts of one image's crops */
    int64_t imgs = chunk >= per ? chunk / per : 1;
    if (imgs > 64) imgs = 64;
    for (int64_t b = 0; b < B && !rc; b += imgs) {
        const int64_t nb = B - b < imgs ? B - b : imgs;
        double acc[64] = {0};
        for (int64_t k0 = 0; k0 < per && !rc; k0 += chunk) {
            int64_t k1 = k0 + chunk < per ? k0 + chunk : per;
            pbw_tensor *xb = pbw_tensor_wrap(scratch, x->data + b * 3 * H * W, 4,
                                             (int64_t[]){nb, 3, H, W});
            pbw_tensor *l = pbw_clip_crop_loss(scratch, clip, xb, target,
                                               n > 0 ? crops + k0 : NULL, n > 0 ? (int)(k1 - k0) : 0);
            const float *lv = NULL;
            /* checked before the reset, which forgets the launch errors recorded so far */
            if (pbw_ctx_check(scratch, err)) {
                rc = -1;
            } else if (!l) {
                rc = pbw_err_set(err, "clip loss failed");
            } else if (dev_out) {
#ifdef PBW_HAVE_CUDA
                if (pbw_cuda_d2d(dev_out + b, l->data, (size_t)nb * sizeof(float)))
                    rc = pbw_err_set(err, "cuda: %s", pbw_cuda_error());
#endif
            } else if (!(lv = pbw_tensor_host(scratch, l))) {
                rc = pbw_ctx_check(scratch, err) ? -1 : pbw_err_set(err, "clip loss failed");
            } else {
                for (int64_t i = 0; i < nb; i++) acc[i] += (double)lv[i] * (double)(k1 - k0);
            }
            pbw_ctx_reset(scratch);
        }
        for (int64_t i = 0; i < nb && out; i++) out[b + i] = acc[i] / (double)per;
    }
    pbw_ctx_set_grad(scratch, prev);
    return rc;
}

int pbw_clip_crop_loss_values(pbw_ctx *scratch, const pbw_clip *clip, const pbw_tensor *x,
                              pbw_tensor *target, const pbw_crop *crops, int n, int chunk,
                              double *out, pbw_err *err) {
    return clip_chunks(scratch, clip, x, target, crops, n, chunk, out, NULL, err);
}

/* ------------------------------------------------------------------------------------------ */
/* masks                                                                                       */

/* PIL's resampling with the BILINEAR filter on one 8-bit channel (Resample.c): coefficients of a
 * triangle of support max(scale, 1), normalized, converted to fixed point with 22 fraction bits,
 * accumulated from a half and clipped to 0..255 after each pass. */
#define PIL_BITS 22

static double tri(double x) {
    if (x < 0) x = -x;
    return x < 1 ? 1 - x : 0;
}

/* For each output position: first input index, count and `ksize` fixed-point coefficients. */
static int pil_coeffs(int in, int outn, int **bounds_out, int32_t **k_out, int *ksize_out) {
    double scale = (double)in / outn, fs = scale < 1 ? 1 : scale, support = fs;
    int ksize = (int)ceil(support) * 2 + 1;
    int *bounds = malloc((size_t)outn * 2 * sizeof *bounds);
    int32_t *kk = calloc((size_t)outn * ksize, sizeof *kk);
    double *k = malloc((size_t)ksize * sizeof *k);
    if (!bounds || !kk || !k) {
        free(bounds), free(kk), free(k);
        return -1;
    }
    for (int xx = 0; xx < outn; xx++) {
        double center = (xx + 0.5) * scale, ww = 0, ss = 1.0 / fs;
        int xmin = (int)(center - support + 0.5), xmax;
        if (xmin < 0) xmin = 0;
        xmax = (int)(center + support + 0.5);
        if (xmax > in) xmax = in;
        xmax -= xmin;
        if (xmax > ksize) xmax = ksize;
        for (int x = 0; x < xmax; x++) {
            double w = tri((x + xmin - center + 0.5) * ss);
            k[x] = w;
            ww += w;
        }
        for (int x = 0; x < xmax; x++) {
            double v = ww != 0 ? k[x] / ww : k[x];
            kk[(size_t)xx * ksize + x] =
                (int32_t)(v < 0 ? -0.5 + v * (1 << PIL_BITS) : 0.5 + v * (1 << PIL_BITS));
        }
        bounds[2 * xx] = xmin;
        bounds[2 * xx + 1] = xmax;
    }
    free(k);
    *bounds_out = bounds;
    *k_out = kk;
    *ksize_out = ksize;
    return 0;
}

static uint8_t clip8(int64_t v) {
    v >>= PIL_BITS;
    return (uint8_t)(v < 0 ? 0 : (v > 255 ? 255 : v));
}

/* src (h, w) bytes -> dst (h, ow) (horizontal) */
static int pil_resize_h(const uint8_t *src, int h, int w, int ow, uint8_t *dst) {
    int *b;
    int32_t *k;
    int ks;
    if (pil_coeffs(w, ow, &b, &k, &ks)) return -1;
    for (int y = 0; y < h; y++)
        for (int x = 0; x < ow; x++) {
            int64_t ss = (int64_t)1 << (PIL_BITS - 1);
            const int32_t *kx = k + (size_t)x * ks;
            for (int i = 0; i < b[2 * x + 1]; i++)
                ss += (int64_t)src[(size_t)y * w + b[2 * x] + i] * kx[i];
            dst[(size_t)y * ow + x] = clip8(ss);
        }
    free(b);
    free(k);
    return 0;
}

/* src (h, w) -> dst (oh, w) (vertical) */
static int pil_resize_v(const uint8_t *src, int h, int w, int oh, uint8_t *dst) {
    int *b;
    int32_t *k;
    int ks;
    if (pil_coeffs(h, oh, &b, &k, &ks)) return -1;
    for (int y = 0; y < oh; y++) {
        const int32_t *ky = k + (size_t)y * ks;
        for (int x = 0; x < w; x++) {
            int64_t ss = (int64_t)1 << (PIL_BITS - 1);
            for (int i = 0; i < b[2 * y + 1]; i++)
                ss += (int64_t)src[(size_t)(b[2 * y] + i) * w + x] * ky[i];
            dst[(size_t)y * w + x] = clip8(ss);
        }
    }
    free(b);
    free(k);
    return 0;
}

int pbw_mask_from_image(const pbw_image *im, int H, int W, float *out, pbw_err *err) {
    if (!im || !im->data || im->w < 1 || im->h < 1 || (im->c != 3 && im->c != 4))
        return pbw_err_set(err, "mask: not an RGB or RGBA image");
    if (H < 1 || W < 1 || H > PBW_IMAGE_MAX_SIDE || W > PBW_IMAGE_MAX_SIDE)
        return pbw_err_set(err, "mask: bad target size %dx%d", W, H);
    const size_t n = (size_t)im->w * im->h;
    int use_alpha = 0;
    if (im->c == 4)
        for (size_t i = 0; i < n && !use_alpha; i++) use_alpha = im->data[i * 4 + 3] != 255;
    uint8_t *g = malloc(n), *t = malloc((size_t)im->h * W), *o = malloc((size_t)H * W);
    if (!g || !t || !o) {
        free(g), free(t), free(o);
        return pbw_err_set(err, "mask: out of memory");
    }
    for (size_t i = 0; i < n; i++) {
        const uint8_t *p = im->data + i * (size_t)im->c;
        /* PIL's RGB -> L (Convert.c): R * 299/1000 + G * 587/1000 + B * 114/1000 in 16-bit
         * fixed point, rounded */
        g[i] = use_alpha ? p[3]
                         : (uint8_t)((p[0] * 19595u + p[1] * 38470u + p[2] * 7471u + 0x8000u) >> 16);
    }
    int rc = 0;
    const uint8_t *cur = g;
    if (W != im->w) {
        if (pil_resize_h(g, im->h, im->w, W, t)) rc = -1;
        cur = t;
    }
    if (!rc && H != im->h) {
        if (pil_resize_v(cur, im->h, W, H, o)) rc = -1;
        cur = o;
    }
    if (rc) {
        free(g), free(t), free(o);
        return pbw_err_set(err, "mask: out of memory");
    }
    for (size_t i = 0; i < (size_t)H * W; i++) out[i] = (float)cur[i] / 255.0f;
    free(g), free(t), free(o);
    return 0;
}

int pbw_mask_load(const char *path, int H, int W, float *out, pbw_err *err) {
    pbw_image im;
    if (pbw_image_read(path, &im, err)) return -1;
    int rc = pbw_mask_from_image(&im, H, W, out, err);
    pbw_image_free(&im);
    if (rc) return pbw_err_prefix(err, "%s: ", path);
    return 0;
}

int64_t pbw_mask_count(const float *mask, int64_t n) {
    int64_t c = 0;
    for (int64_t i = 0; i < n; i++) c += mask[i] > 0;
    return c;
}

/* The reference's expand_range: low moved so the range has `size`, clipped to [minlim, maxlim]
 * (Python's floor division on a nonnegative excess). */
static void expand_range(int *low, int *high, int size, int minlim, int maxlim) {
    int excess = size - *high + *low;
    int l = *low - excess / 2;
    if (l < minlim) l = minlim;
    if (l > maxlim - size) l = maxlim - size;
    *low = l;
    *high = l + size;
}

void pbw_mask_square_box(const float *mask, int H, int W, int min_size, int box[4]) {
    int y0 = H, y1 = -1, x0 = W, x1 = -1;
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++)
            if (mask[(size_t)y * W + x] > 0) {
                if (y < y0) y0 = y;
                if (y > y1) y1 = y;
                if (x < x0) x0 = x;
                if (x > x1) x1 = x;
            }
    if (y1 < 0) {
        y0 = 0, y1 = H, x0 = 0, x1 = W;
    } else {
        y1++, x1++;
    }
    int target = y1 - y0;
    if (x1 - x0 > target) target = x1 - x0;
    if (min_size > target) target = min_size;
    /* the reference slices with Python semantics, which clip a box larger than the image to
     * it; clipping the side first gives the same pixels */
    int ty = target < H ? target : H, tx = target < W ? target : W;
    expand_range(&y0, &y1, ty, 0, H);
    expand_range(&x0, &x1, tx, 0, W);
    box[0] = y0, box[1] = y1, box[2] = x0, box[3] = x1;
}

/* ------------------------------------------------------------------------------------------ */
/* objective                                                                                   */

static const char *const mode_names[] = {"paste_onto_blank", "paste_onto_orig", "zoom",
                                         "blank+full"};

int pbw_loss_mode_parse(const char *s, pbw_loss_mode *out) {
    for (int i = 0; i < 4; i++)
        if (!strcmp(s, mode_names[i])) {
            *out = (pbw_loss_mode)i;
            return 0;
        }
    if (!strcmp(s, "paste_onto_blank_full_orig")) {
        *out = PBW_LOSS_BLANK_FULL;
        return 0;
    }
    return -1;
}

const char *pbw_loss_mode_name(pbw_loss_mode m) {
    return (unsigned)m < 4 ? mode_names[m] : "?";
}

void pbw_objective_init(pbw_objective *o, const pbw_clip *clip, const pbw_lpips *lpips,
                        pbw_tensor *target, int H, int W) {
    memset(o, 0, sizeof *o);
    o->clip = clip;
    o->lpips = lpips;
    o->target = target;
    o->H = H;
    o->W = W;
    o->R = clip ? clip->cfg.image_size : 224;
    o->mode = PBW_LOSS_PASTE_BLANK;
    o->n_crops = 32;
    o->clip_chunk = 32;
    o->recon_weight = 5.0f;
    o->lpips_weight = 10.0f;
    o->box[1] = H;
    o->box[3] = W;
}

int pbw_objective_set_mask(pbw_objective *o, pbw_ctx *cctx, const float *mask,
                           const pbw_tensor *orig, pbw_err *err) {
    const int64_t H = o->H, W = o->W;
    if (!orig || orig->ndim != 4 || orig->shape[0] != 1 || orig->shape[1] != 3 ||
        orig->shape[2] != H || orig->shape[3] != W)
        return pbw_err_set(err, "objective: the original image must be (1,3,%lld,%lld)",
                           (long long)H, (long long)W);
    float *mh = malloc((size_t)(2 * H * W) * sizeof(float));
    if (!mh) return pbw_err_set(err, "out of memory");
    float *kh = mh + H * W;
    double ks = 0;
    for (int64_t i = 0; i < H * W; i++) {
        float m = mask[i] < 0 ? 0 : (mask[i] > 1 ? 1 : mask[i]);
        mh[i] = m;
        kh[i] = 1.0f - m;
        ks += 1.0 - (double)m;
    }
    o->keep_sum = ks;
    pbw_mask_square_box(mh, (int)H, (int)W, 128, o->box);
    o->mask = pbw_tensor_from_host(cctx, mh, 4, (int64_t[]){1, 1, H, W});
    o->keep = pbw_tensor_from_host(cctx, kh, 4, (int64_t[]){1, 1, H, W});
    o->orig = pbw_tensor_copy(cctx, orig);
    int rc = !o->mask || !o->keep || !o->orig ? -1 : 0;
    if (!rc && o->lpips) {
        int prev = pbw_ctx_set_grad(cctx, 0);
        rc = pbw_lpips_features(cctx, o->lpips, o->orig, o->orig_feats);
        pbw_ctx_set_grad(cctx, prev);
        /* the masked mean of the spatial map in one pass a layer (pbw_lpips_keep) */
        if (!rc) rc = pbw_lpips_keep_weights(cctx, kh, (int)H, (int)W, o->orig_feats, o->lpips_kw);
    }
    free(mh);
    if (rc) return pbw_ctx_check(cctx, err) ? -1 : pbw_err_set(err, "lpips features failed");
    return 0;
}

int pbw_objective_crop_sets(const pbw_objective *o) {
    return o->mask && o->mode == PBW_LOSS_BLANK_FULL ? 2 : 1;
}

int pbw_objective_view_side(const pbw_objective *o) {
    return o->mask && o->mode == PBW_LOSS_ZOOM ? o->R : o->H;
}

void pbw_objective_draw_crops(const pbw_objective *o, pbw_rng *rng, pbw_crop *crops) {
    int sets = pbw_objective_crop_sets(o);
    /* the full image of blank+full has the image's side too, so one side serves both sets */
    for (int s = 0; s < sets; s++)
        pbw_crops_draw(rng, pbw_objective_view_side(o), o->n_crops, crops + s * o->n_crops);
}

pbw_tensor *pbw_objective_view(pbw_ctx *ctx, const pbw_objective *o, pbw_tensor *img,
                               int which) {
    if (!img) return NULL;
    if (!o->mask || which == 1) return img;
    switch (o->mode) {
    case PBW_LOSS_PASTE_BLANK:
    case PBW_LOSS_BLANK_FULL:
        return pbw_mul(ctx, img, o->mask);
    case PBW_LOSS_PASTE_ORIG:
        return pbw_add(ctx, pbw_mul(ctx, o->orig, o->keep), pbw_mul(ctx, img, o->mask));
    case PBW_LOSS_ZOOM: {
        pbw_tensor *t = pbw_slice(ctx, img, 2, o->box[0], o->box[1], 1);
        t = pbw_slice(ctx, t, 3, o->box[2], o->box[3], 1);
        return pbw_resize(ctx, t, o->R, o->R, PBW_RESIZE_BILINEAR);
    }
    }
    return pbw_ctx_fail(ctx, "objective: unknown loss mode %d", (int)o->mode);
}

static int has_recon(const pbw_objective *o) {
    return o->mask && o->orig && o->keep_sum > 0 && o->recon_weight != 0;
}

/* sum_{c,y,x} |img - orig| keep / sum keep -> (B) */
static pbw_tensor *l1_term(pbw_ctx *ctx, const pbw_objective *o, pbw_tensor *img) {
    static const int chw[3] = {1, 2, 3};
    pbw_tensor *d = pbw_mul(ctx, pbw_abs(ctx, pbw_sub(ctx, img, o->orig)), o->keep);
    return pbw_scale(ctx, pbw_sum(ctx, d, 3, chw, 0), (float)(1.0 / o->keep_sum));
}

/* sum_p keep(p) lpips_map(img, orig)(p) / sum keep -> (B): the reference's
 * PerceptualLoss(spatial) weighted by 1 - mask, summed without the map (pbw_lpips_keep) */
static pbw_tensor *lpips_term(pbw_ctx *ctx, const pbw_objective *o, pbw_tensor *img) {
    return pbw_lpips_keep(ctx, o->lpips, img, o->orig_feats, o->lpips_kw, o->keep_sum);
}

static int check_img(pbw_ctx *ctx, const pbw_objective *o, pbw_tensor *img) {
    char s[64];
    if (!img) return -1;
    if (img->ndim != 4 || img->shape[1] != 3 || img->shape[2] != o->H || img->shape[3] != o->W) {
        pbw_ctx_fail(ctx, "objective: image %s must be (B,3,%d,%d)",
                     pbw_shape_str(img, s, sizeof s), o->H, o->W);
        return -1;
    }
    return 0;
}

/* The reconstruction terms of img queued on ctx: L1 into *l1 and (with LPIPS) *lp, each (B);
 * both NULL without a reconstruction term. On a GPU they go to a side lane (pbw_lane_fork),
 * which stays current: the caller queues what else reads them there, switches back
 * (pbw_lane_main), queues CLIP's pass, which then runs beside them, and calls pbw_lane_join
 * before anything else reads the terms (on error too). */
static int recon_terms(pbw_ctx *ctx, const pbw_objective *o, pbw_tensor *img, pbw_tensor **l1,
                       pbw_tensor **lp, pbw_err *err) {
    *l1 = *lp = NULL;
    if (!has_recon(o)) return 0;
    if (pbw_lane_fork(ctx, 1, &img) >= 0) {
        *l1 = l1_term(ctx, o, img);
        *lp = o->lpips ? lpips_term(ctx, o, img) : NULL;
    }
    if (!*l1 || (o->lpips && !*lp) || pbw_ctx_failed(ctx))
        return pbw_ctx_check(ctx, err) ? -1 : pbw_err_set(err, "reconstruction loss failed");
    return 0;
}

int pbw_objective_eval(pbw_ctx *ctx, const pbw_objective *o, pbw_tensor *img,
                       const pbw_crop *crops, pbw_loss_parts *out) {
    memset(out, 0, sizeof *out);
    if (check_img(ctx, o, img)) return -1;
    pbw_err err = {0};
    if (recon_terms(ctx, o, img, &out->l1, &out->lpips, &err)) {
        pbw_lane_join(ctx);
        return -1;
    }
    pbw_lane_main(ctx);
    pbw_tensor *clip = pbw_clip_crop_loss(ctx, o->clip, pbw_objective_view(ctx, o, img, 0),
                                          o->target, crops, o->n_crops);
    if (pbw_objective_crop_sets(o) == 2) {
        pbw_tensor *full = pbw_clip_crop_loss(ctx, o->clip, img, o->target,
                                              crops + o->n_crops, o->n_crops);
        clip = pbw_scale(ctx, pbw_add(ctx, clip, full), 0.5f);
    }
    pbw_lane_join(ctx);
    out->clip = clip;
    pbw_tensor *total = clip;
    if (out->l1) {
        pbw_tensor *rec = out->l1;
        if (out->lpips) rec = pbw_add(ctx, rec, pbw_scale(ctx, out->lpips, o->lpips_weight));
        total = pbw_add(ctx, clip, pbw_scale(ctx, rec, o->recon_weight));
    }
    out->total = total;
    return total && !pbw_ctx_failed(ctx) ? 0 : -1;
}

int pbw_objective_values(pbw_ctx *ctx, pbw_ctx *scratch, const pbw_objective *o,
                         pbw_tensor *img, const pbw_crop *crops, pbw_loss_values *out,
                         pbw_err *err) {
    if (check_img(ctx, o, img)) {
        pbw_ctx_check(ctx, err);
        return -1;
    }
    const int64_t B = img->shape[0];
    double *a = calloc((size_t)B * 2, sizeof *a);
    if (!a) return pbw_err_set(err, "out of memory");
    int rc = 0;
    /* the reconstruction terms are queued first and read last: on a GPU they then run while
     * the host queues CLIP's pass, and the CLIP values' read-back waits for them too */
    pbw_tensor *l1, *lp;
    if (recon_terms(ctx, o, img, &l1, &lp, err)) {
        rc = -1;
        goto out;
    }
    pbw_lane_main(ctx);
    pbw_tensor *view = pbw_objective_view(ctx, o, img, 0);
    if (!view || pbw_ctx_failed(ctx)) {
        rc = pbw_ctx_check(ctx, err) ? -1 : pbw_err_set(err, "loss view failed");
        goto out;
    }
    if (pbw_clip_crop_loss_values(scratch, o->clip, view, o->target, crops, o->n_crops,
                                  o->clip_chunk, a, err)) {
        rc = -1;
        goto out;
    }
    if (pbw_objective_crop_sets(o) == 2) {
        if (pbw_clip_crop_loss_values(scratch, o->clip, img, o->target, crops + o->n_crops,
                                      o->n_crops, o->clip_chunk, a + B, err)) {
            rc = -1;
            goto out;
        }
        for (int64_t b = 0; b < B; b++) a[b] = (a[b] + a[B + b]) / 2;
    }
    pbw_lane_join(ctx);
    const float *l1h = l1 ? pbw_tensor_host(ctx, l1) : NULL;
    const float *lph = lp ? pbw_tensor_host(ctx, lp) : NULL;
    if ((l1 && !l1h) || (lp && !lph)) {
        rc = pbw_ctx_check(ctx, err);
        goto out;
    }
    for (int64_t b = 0; b < B; b++)
        pbw_objective_combine(o, a[b], l1h ? l1h[b] : 0, lph ? lph[b] : 0, &out[b]);
out:
    pbw_lane_join(ctx); /* no-op when joined */
    free(a);
    return rc;
}

void pbw_objective_combine(const pbw_objective *o, double clip, double l1, double lpips,
                           pbw_loss_values *v) {
    v->clip = clip;
    v->l1 = v->lpips = 0;
    v->total = clip;
    if (has_recon(o)) {
        v->l1 = l1;
        v->lpips = lpips;
        v->total = clip + (double)o->recon_weight * (l1 + (double)o->lpips_weight * lpips);
    }
}

int pbw_objective_can_queue(const pbw_objective *o, pbw_device dev) {
    const int64_t per = o->n_crops > 0 ? o->n_crops : 1;
    return dev == PBW_DEV_CUDA && pbw_objective_crop_sets(o) == 1 && o->clip_chunk >= per;
}

int pbw_objective_values_queue(pbw_ctx *ctx, pbw_ctx *scratch, const pbw_objective *o,
                               pbw_tensor *img, const pbw_crop *crops, float *clip, float *l1,
                               float *lpips, pbw_err *err) {
#ifdef PBW_HAVE_CUDA
    if (!pbw_objective_can_queue(o, pbw_ctx_device(ctx))) return 1;
    if (check_img(ctx, o, img)) {
        pbw_ctx_check(ctx, err);
        return -1;
    }
    const int64_t B = img->shape[0];
    /* the terms' values go to the caller's device memory, each copy queued after its pass */
    pbw_tensor *tl1, *tlp;
    int rc = recon_terms(ctx, o, img, &tl1, &tlp, err);
    /* the copies on the terms' lane, CLIP's pass beside them */
    if (!rc && ((tl1 && pbw_cuda_d2d(l1, tl1->data, (size_t)B * sizeof(float))) ||
                (tlp && pbw_cuda_d2d(lpips, tlp->data, (size_t)B * sizeof(float)))))
        rc = pbw_err_set(err, "cuda: %s", pbw_cuda_error());
    pbw_lane_main(ctx);
    pbw_tensor *view = rc ? NULL : pbw_objective_view(ctx, o, img, 0);
    if (!rc && (!view || pbw_ctx_failed(ctx)))
        rc = pbw_ctx_check(ctx, err) ? -1 : pbw_err_set(err, "loss view failed");
    if (!rc)
        rc = clip_chunks(scratch, o->clip, view, o->target, crops, o->n_crops, o->clip_chunk,
                         NULL, clip, err);
    pbw_lane_join(ctx);
    return rc;
#else
    (void)ctx, (void)scratch, (void)o, (void)img, (void)crops, (void)clip, (void)l1, (void)lpips,
        (void)err;
    return 1;
#endif
}
