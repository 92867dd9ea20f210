/* pbw_stylegan2.c: rosinality's StyleGAN2 generator built from pbw ops (see pbw_stylegan2.h).
 *
 * Loading folds the equalized-learning-rate scales into the weights once (the reference
 * multiplies them at every call; the float32 products are the same) and precomputes what the
 * forward pass reuses: the transposed weight of upsampling convolutions and the per-(o,c) sums
 * of squared weights that demodulation needs.
 *
 * A styled convolution is  act(conv(x * s, W) * d + noise)  with two fused elementwise ops
 * (pbw_ops_stylegan.h) around pbw_conv2d / pbw_conv_transpose2d.
 */
#include "models/pbw_stylegan2.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/pbw_ops.h"
#include "core/pbw_ops_stylegan.h"
#include "models/pbw_weights.h"

#define SG2_SLOPE 0.2f
#define SG2_EPS 1e-8f
#define SG2_LR_MLP 0.01
#define SG2_MAX_KERNEL 15 /* blur / upsample FIR side accepted from a checkpoint */

/* Python's floor division, for the reference's padding formulas with negative operands. */
static int floordiv(int a, int b) { return a / b - (a % b != 0 && ((a < 0) != (b < 0))); }

/* ---------- loading ---------- */

typedef struct loader {
    pbw_stylegan2 *g;
    const pbw_records *r;
    const char *prefix;
    pbw_err *err;
} loader;

static pbw_tensor *get(loader *L, const char *name, int ndim, const int64_t *shape) {
    return pbw_weight_get(&L->g->arena, L->r, L->prefix, name, ndim, shape, L->err);
}

static int has(loader *L, const char *name) {
    int nd;
    int64_t s[PBW_RECORD_MAX_DIMS];
    return pbw_weight_shape(L->r, L->prefix, name, &nd, s) == 0;
}

static void scale_data(pbw_tensor *t, float s) {
    for (int64_t i = 0; i < t->numel; i++) t->data[i] *= s;
}

/* EqualLinear `name` (out,in): weight * (1/sqrt(in)) * lr_mul, bias * lr_mul. */
static int load_linear(loader *L, const char *name, int out, int in, double lr_mul,
                       pbw_sg2_equal_linear *l) {
    char n[128];
    snprintf(n, sizeof n, "%s.weight", name);
    l->weight = get(L, n, 2, (int64_t[]){out, in});
    snprintf(n, sizeof n, "%s.bias", name);
    l->bias = l->weight ? get(L, n, 1, (int64_t[]){out}) : NULL;
    if (!l->bias) return -1;
    scale_data(l->weight, (float)((1.0 / sqrt((double)in)) * lr_mul));
    scale_data(l->bias, (float)lr_mul);
    return 0;
}

/* make_kernel([1,3,3,1]) * factor^2, or the checkpoint's buffer `name` when it has one. */
static pbw_tensor *load_fir(loader *L, const char *name, float factor2) {
    int nd;
    int64_t s[PBW_RECORD_MAX_DIMS];
    if (pbw_weight_shape(L->r, L->prefix, name, &nd, s) == 0) {
        if (nd != 2 || s[0] != s[1] || s[0] < 1 || s[0] > SG2_MAX_KERNEL) {
            pbw_err_set(L->err, "tensor '%s%s' must be a square FIR kernel of side 1..%d", L->prefix,
                        name, SG2_MAX_KERNEL);
            return NULL;
        }
        return get(L, name, 2, s);
    }
    static const float k1[4] = {1, 3, 3, 1};
    pbw_tensor *k = pbw_tensor_new_in(&L->g->arena, 2, (int64_t[]){4, 4}, L->err);
    if (!k) return NULL;
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 4; j++) k->data[i * 4 + j] = k1[i] * k1[j] / 64.0f * factor2;
    return k;
}

/* ModulatedConv2d `name`: weight (1,O,C,k,k) and modulation (C,S). */
static int load_modconv(loader *L, const char *name, int in, int out, int k, int upsample,
                        int demodulate, pbw_sg2_modulated_conv2d *mc) {
    char n[128];
    pbw_stylegan2 *g = L->g;
    mc->in_channel = in;
    mc->out_channel = out;
    mc->kernel_size = k;
    mc->upsample = upsample;
    mc->demodulate = demodulate;
    snprintf(n, sizeof n, "%s.modulation", name);
    if (load_linear(L, n, in, g->style_dim, 1.0, &mc->modulation)) return -1;
    snprintf(n, sizeof n, "%s.weight", name);
    pbw_tensor *w5 = get(L, n, 5, (int64_t[]){1, out, in, k, k});
    if (!w5) return -1;
    /* drop the leading 1: same data, (O,C,k,k) */
    mc->weight = w5;
    if (pbw_shape_set(mc->weight, 4, (int64_t[]){out, in, k, k})) return pbw_err_set(L->err, "bad shape");
    scale_data(mc->weight, (float)(1.0 / sqrt((double)in * k * k)));
    const float *w = mc->weight->data;
    const int64_t kk = (int64_t)k * k;
    mc->wsq = pbw_tensor_new_in(&g->arena, 2, (int64_t[]){out, in}, L->err);
    if (!mc->wsq) return -1;
    for (int64_t oc = 0; oc < (int64_t)out * in; oc++) {
        float s = 0;
        for (int64_t t = 0; t < kk; t++) s += w[oc * kk + t] * w[oc * kk + t];
        mc->wsq->data[oc] = s;
    }
    if (k > 1) {
        mc->plan = pbw_sg_conv_prepare(&g->arena, mc->weight, upsample, L->err);
        if (!mc->plan) return pbw_err_prefix(L->err, "%s%s.weight: ", L->prefix, name);
    }
    if (upsample) {
        snprintf(n, sizeof n, "%s.blur.kernel", name);
        mc->blur_kernel = load_fir(L, n, 4.0f);
        if (!mc->blur_kernel) return -1;
        /* rosinality: p = (len(blur) - factor) - (kernel_size - 1), pads ((p+1)//2 + 1, p//2 + 1) */
        int p = ((int)mc->blur_kernel->shape[0] - 2) - (k - 1);
        mc->blur_pad0 = floordiv(p + 1, 2) + 1;
        mc->blur_pad1 = floordiv(p, 2) + 1;
        /* make_kernel's kernels are outer products: blur by rows then columns when it is one */
        if (pbw_sg_fir_init(&mc->blur, mc->blur_kernel, mc->blur_pad0, mc->blur_pad1))
            mc->blur.K = 0;
    }
    return 0;
}

static int load_styled_conv(loader *L, const char *name, int in, int out, int k, int upsample,
                            pbw_sg2_styled_conv *sc) {
    char n[64];
    snprintf(n, sizeof n, "%s.conv", name);
    if (load_modconv(L, n, in, out, k, upsample, 1, &sc->conv)) return -1;
    snprintf(n, sizeof n, "%s.noise.weight", name);
    pbw_tensor *nw = get(L, n, 1, (int64_t[]){1});
    if (!nw) return -1;
    sc->noise_weight = nw->data[0];
    snprintf(n, sizeof n, "%s.activate.bias", name);
    sc->activate_bias = get(L, n, 1, (int64_t[]){out});
    return sc->activate_bias ? 0 : -1;
}

static int load_to_rgb(loader *L, const char *name, int in, int upsample, pbw_sg2_to_rgb *tr) {
    char n[64];
    snprintf(n, sizeof n, "%s.conv", name);
    if (load_modconv(L, n, in, 3, 1, 0, 0, &tr->conv)) return -1;
    snprintf(n, sizeof n, "%s.bias", name);
    tr->bias = get(L, n, 4, (int64_t[]){1, 3, 1, 1});
    if (!tr->bias) return -1;
    if (upsample) {
        snprintf(n, sizeof n, "%s.upsample.kernel", name);
        tr->upsample_kernel = load_fir(L, n, 4.0f);
        if (!tr->upsample_kernel) return -1;
        /* rosinality's Upsample: p = len(kernel) - factor, pads ((p+1)//2 + factor-1, p//2) */
        int p = (int)tr->upsample_kernel->shape[0] - 2;
        tr->up_pad0 = floordiv(p + 1, 2) + 1;
        tr->up_pad1 = floordiv(p, 2);
    }
    return 0;
}

/* Counts name_0, name_1, ... present (the format string has one %d). */
static int count_indexed(loader *L, const char *fmt, int max) {
    char n[128];
    int i = 0;
    for (; i <= max; i++) {
        snprintf(n, sizeof n, fmt, i);
        if (!has(L, n)) break;
    }
    return i;
}

static int any_with_prefix(const pbw_records *r, const char *prefix) {
    size_t pl = strlen(prefix);
    for (size_t i = 0; i < r->count; i++)
        if (strncmp(r->items[i].name, prefix, pl) == 0) return 1;
    return 0;
}

static int build(loader *L) {
    pbw_stylegan2 *g = L->g;
    const char *pf = L->prefix;
    int nd;
    int64_t s[PBW_RECORD_MAX_DIMS];
    if (!any_with_prefix(L->r, pf)) {
        if (pbw_records_find(L->r, "conv1.conv.weight"))
            return pbw_err_set(L->err, "no '%s' tensors: this is a bare generator state dict; pbw "
                               "reads rosinality checkpoints, whose generator is under 'g_ema'", pf);
        return pbw_err_set(L->err, "no '%s' tensors: not a rosinality StyleGAN2 checkpoint (it "
                           "needs the generator under 'g_ema')", pf);
    }
    /* mapping: style.1 .. style.n_mlp (style.0 is PixelNorm, which has no parameters) */
    if (pbw_weight_shape(L->r, pf, "style.1.weight", &nd, s) != 0)
        return pbw_err_set(L->err, "tensor '%sstyle.1.weight' is missing from the checkpoint", pf);
    if (nd != 2 || s[0] != s[1] || s[0] < 2 || s[0] > 65536 || s[0] % 2)
        return pbw_err_set(L->err, "tensor '%sstyle.1.weight' must be (S,S) with S even, is %dD",
                           pf, nd);
    g->style_dim = (int)s[0];
    /* style.0 is PixelNorm (no parameters): the linear layers are style.1 .. style.n_mlp */
    g->n_mlp = 0;
    for (int i = 1; i <= PBW_SG2_MAX_MLP + 1; i++) {
        char n[64];
        snprintf(n, sizeof n, "style.%d.weight", i);
        if (!has(L, n)) break;
        g->n_mlp = i;
    }
    if (g->n_mlp > PBW_SG2_MAX_MLP)
        return pbw_err_set(L->err, "more than %d mapping layers under '%sstyle'", PBW_SG2_MAX_MLP, pf);
    for (int i = 0; i < g->n_mlp; i++) {
        char n[64];
        snprintf(n, sizeof n, "style.%d", i + 1);
        if (load_linear(L, n, g->style_dim, g->style_dim, SG2_LR_MLP, &g->style[i])) return -1;
    }
    /* resolution: one ToRGB per doubling above 4 */
    int nrgb = count_indexed(L, "to_rgbs.%d.conv.weight", PBW_SG2_MAX_LOG - 1);
    if (nrgb > PBW_SG2_MAX_LOG - 2)
        return pbw_err_set(L->err, "'%sto_rgbs' has more than %d entries: sizes above %d are not "
                           "supported", pf, PBW_SG2_MAX_LOG - 2, 1 << PBW_SG2_MAX_LOG);
    g->log_size = 2 + nrgb;
    g->size = 1 << g->log_size;
    g->num_layers = (g->log_size - 2) * 2 + 1;
    g->n_latent = g->log_size * 2 - 2;
    /* constant input and the 4x4 block */
    if (pbw_weight_shape(L->r, pf, "input.input", &nd, s) != 0)
        return pbw_err_set(L->err, "tensor '%sinput.input' is missing from the checkpoint", pf);
    if (nd != 4 || s[1] < 1 || s[1] > 65536)
        return pbw_err_set(L->err, "tensor '%sinput.input' must be (1,C,4,4)", pf);
    int c4 = (int)s[1];
    g->channels[2] = c4;
    g->input = get(L, "input.input", 4, (int64_t[]){1, c4, 4, 4});
    if (!g->input) return -1;
    if (pbw_weight_shape(L->r, pf, "conv1.conv.weight", &nd, s) != 0)
        return pbw_err_set(L->err, "tensor '%sconv1.conv.weight' is missing from the checkpoint", pf);
    if (nd != 5 || s[3] != s[4] || s[3] % 2 == 0 || s[3] > 15)
        return pbw_err_set(L->err, "tensor '%sconv1.conv.weight' must be (1,O,C,k,k) with k odd",
                           pf);
    int k = (int)s[3];
    if (load_styled_conv(L, "conv1", c4, c4, k, 0, &g->conv1) ||
        load_to_rgb(L, "to_rgb1", c4, 0, &g->to_rgb1))
        return -1;
    /* the upsampling blocks: out channels from each block's first convolution */
    int in = c4;
    for (int b = 0; b < nrgb; b++) {
        char n[64];
        snprintf(n, sizeof n, "convs.%d.conv.weight", 2 * b);
        if (pbw_weight_shape(L->r, pf, n, &nd, s) != 0)
            return pbw_err_set(L->err, "tensor '%s%s' is missing from the checkpoint", pf, n);
        if (nd != 5 || s[1] < 1 || s[1] > 65536)
            return pbw_err_set(L->err, "tensor '%s%s' must be (1,O,C,k,k)", pf, n);
        int out = (int)s[1];
        g->channels[3 + b] = out;
        char c0[32], c1[32], tr[32];
        snprintf(c0, sizeof c0, "convs.%d", 2 * b);
        snprintf(c1, sizeof c1, "convs.%d", 2 * b + 1);
        snprintf(tr, sizeof tr, "to_rgbs.%d", b);
        if (load_styled_conv(L, c0, in, out, k, 1, &g->convs[2 * b]) ||
            load_styled_conv(L, c1, out, out, k, 0, &g->convs[2 * b + 1]) ||
            load_to_rgb(L, tr, out, 1, &g->to_rgbs[b]))
            return -1;
        in = out;
    }
    for (int i = 0; i < g->num_layers; i++) {
        char n[64];
        int side = 1 << ((i + 5) / 2);
        snprintf(n, sizeof n, "noises.noise_%d", i);
        g->noises[i] = get(L, n, 4, (int64_t[]){1, 1, side, side});
        if (!g->noises[i]) return -1;
    }
    /* latent_avg: top level, (S) or (1,S); optional */
    const pbw_record *la = pbw_records_find(L->r, "latent_avg");
    if (la) {
        if (!((la->ndim == 1 && la->shape[0] == g->style_dim) ||
              (la->ndim == 2 && la->shape[0] == 1 && la->shape[1] == g->style_dim)))
            return pbw_err_set(L->err, "tensor 'latent_avg' must have %d elements (style_dim)",
                               g->style_dim);
        g->latent_avg = pbw_weight_get(&g->arena, L->r, NULL, "latent_avg", la->ndim, la->shape,
                                       L->err);
        if (!g->latent_avg) return -1;
        if (pbw_shape_set(g->latent_avg, 2, (int64_t[]){1, g->style_dim}))
            return pbw_err_set(L->err, "bad latent_avg");
    }
    return 0;
}

int pbw_sg2_from_records(const pbw_records *recs, const char *prefix, pbw_stylegan2 **out,
                         pbw_err *err) {
    *out = NULL;
    pbw_stylegan2 *g = calloc(1, sizeof *g);
    if (!g) return pbw_err_set(err, "out of memory");
    pbw_arena_init(&g->arena, 1 << 20);
    g->arena.huge_pages = 1;
    loader L = {g, recs, prefix ? prefix : "", err};
    if (build(&L)) {
        pbw_sg2_free(g);
        return -1;
    }
    *out = g;
    return 0;
}

int pbw_sg2_load(const char *path, pbw_stylegan2 **out, pbw_err *err) {
    *out = NULL;
    pbw_records recs;
    if (pbw_load_checkpoint(path, &recs, err)) return -1;
    int rc = pbw_sg2_from_records(&recs, "g_ema.", out, err);
    pbw_records_free(&recs);
    if (rc) pbw_err_prefix(err, "%s: ", path);
    return rc;
}

void pbw_sg2_free(pbw_stylegan2 *g) {
    if (!g) return;
    pbw_arena_free(&g->arena);
    free(g);
}

/* ---------- masks ---------- */

/* Adaptive average pooling of one (h,w) plane to (s,s), as torch's adaptive_avg_pool2d. */
static void area_resize(const float *src, int h, int w, int s, double *dst) {
    for (int i = 0; i < s; i++) {
        int y0 = (int)((int64_t)i * h / s), y1 = (int)(((int64_t)(i + 1) * h + s - 1) / s);
        for (int j = 0; j < s; j++) {
            int x0 = (int)((int64_t)j * w / s), x1 = (int)(((int64_t)(j + 1) * w + s - 1) / s);
            double acc = 0;
            for (int y = y0; y < y1; y++)
                for (int x = x0; x < x1; x++) acc += src[(int64_t)y * w + x];
            dst[i * s + j] = acc / ((double)(y1 - y0) * (x1 - x0));
        }
    }
}

/* Separable normalized Gaussian, zero padding, in place (tmp: s*s doubles). Each output sums
 * k[t] times the inputs under the kernel, t ascending, the taps outside the image left out; the
 * loops run t outside and a row's outputs inside, so that a row is one vectorized pass per tap
 * (the same operations in the same order for every output as a loop over t per output: the
 * 256 px mask's sigma-16 blur is 4 M multiply-adds, and every edit waits for it). */
static void gauss_blur(double *restrict m, double *restrict tmp, int s, double sigma, int ks) {
    double k[2 * 64 + 1], sum = 0;
    int r = ks / 2;
    for (int i = 0; i < ks; i++) {
        double x = i - (ks - 1) / 2.0;
        k[i] = exp(-x * x / (2.0 * sigma * sigma));
        sum += k[i];
    }
    for (int i = 0; i < ks; i++) k[i] /= sum;
    for (int y = 0; y < s; y++) { /* along rows: x + t - r inside [0, s) */
        double *o = tmp + (size_t)y * s;
        const double *in = m + (size_t)y * s;
        for (int x = 0; x < s; x++) o[x] = 0;
        for (int t = 0; t < ks; t++) {
            const int lo = t < r ? r - t : 0, hi = t > r ? s + r - t : s, d = t - r;
            const double kt = k[t];
            for (int x = lo; x < hi; x++) o[x] += kt * in[x + d];
        }
    }
    for (int y = 0; y < s; y++) { /* along columns */
        double *o = m + (size_t)y * s;
        for (int x = 0; x < s; x++) o[x] = 0;
        for (int t = 0; t < ks; t++) {
            const int yy = y + t - r;
            if (yy < 0 || yy >= s) continue;
            const double kt = k[t], *in = tmp + (size_t)yy * s;
            for (int x = 0; x < s; x++) o[x] += kt * in[x];
        }
    }
}

int pbw_sg2_mask_init(pbw_sg2_mask *mk, const pbw_stylegan2 *g, const float *mask, int h, int w,
                      pbw_err *err) {
    memset(mk, 0, sizeof *mk);
    if (h < 1 || w < 1 || h > 16384 || w > 16384)
        return pbw_err_set(err, "mask size %dx%d out of range", h, w);
    pbw_arena_init(&mk->arena, 1 << 16);
    mk->log_size = g->log_size;
    double *m = malloc((size_t)g->size * g->size * 2 * sizeof(double));
    if (!m) return pbw_err_set(err, "out of memory");
    for (int i = 2; i <= g->log_size; i++) {
        int s = 1 << i;
        area_resize(mask, h, w, s, m);
        if (s > 16) {
            double sigma = s / 16.0;
            gauss_blur(m, m + (size_t)s * s, s, sigma, 2 * (int)sigma - 1);
        }
        mk->m[i] = pbw_tensor_new_in(&mk->arena, 4, (int64_t[]){1, 1, s, s}, err);
        if (!mk->m[i]) {
            free(m);
            pbw_sg2_mask_free(mk);
            return -1;
        }
        for (int64_t p = 0; p < (int64_t)s * s; p++) mk->m[i]->data[p] = (float)m[p];
    }
    free(m);
    return 0;
}

void pbw_sg2_mask_free(pbw_sg2_mask *mk) {
    pbw_arena_free(&mk->arena);
    memset(mk, 0, sizeof *mk);
}

/* ---------- forward ---------- */

pbw_tensor *pbw_sg2_mapping(pbw_ctx *ctx, const pbw_stylegan2 *g, pbw_tensor *z) {
    if (!z) return NULL;
    char sz[96];
    if (z->ndim != 2 || z->shape[1] != g->style_dim)
        return pbw_ctx_fail(ctx, "stylegan2 mapping: z %s must be (N,%d)",
                            pbw_shape_str(z, sz, sizeof sz), g->style_dim);
    /* PixelNorm: x * rsqrt(mean(x^2, dim=1) + 1e-8) */
    int ax = 1;
    pbw_tensor *x = pbw_mul(ctx, z,
                            pbw_rsqrt(ctx, pbw_add_scalar(ctx, pbw_mean(ctx, pbw_square(ctx, z), 1,
                                                                         &ax, 1),
                                                          SG2_EPS)));
    const int64_t n = z->shape[0];
    for (int i = 0; i < g->n_mlp; i++) {
        /* EqualLinear with fused_lrelu: leaky_relu(x W^T + b) * sqrt(2), bias added after */
        pbw_tensor *y = pbw_linear(ctx, x, g->style[i].weight, NULL);
        y = pbw_reshape(ctx, y, 4, (int64_t[]){n, g->style_dim, 1, 1});
        y = pbw_sg_bias_act(ctx, y, NULL, NULL, g->style[i].bias, 0, SG2_SLOPE, (float)M_SQRT2);
        x = pbw_reshape(ctx, y, 2, (int64_t[]){n, g->style_dim});
    }
    return x;
}

pbw_tensor *pbw_sg2_truncate(pbw_ctx *ctx, const pbw_stylegan2 *g, pbw_tensor *w, float psi) {
    if (!w || psi >= 1.0f) return w;
    if (!g->latent_avg)
        return pbw_ctx_fail(ctx, "stylegan2: truncation %g needs latent_avg, which this "
                            "checkpoint lacks (estimate it with pbw_sg2_mean_latent)", psi);
    pbw_tensor *avg = g->latent_avg; /* (1,S) broadcasts over (N,S) and (N,L,S) */
    return pbw_add(ctx, avg, pbw_scale(ctx, pbw_sub(ctx, w, avg), psi));
}

/* Per-layer context of the masked-style path. */
typedef struct layer_in {
    pbw_tensor *lat, *lat0; /* (N,S), (N|1,S) */
    pbw_tensor *m_in, *m_out;
    int mixed;
    pbw_tensor *s0, *d0; /* lat0's style and demodulation when made already (pbw_sg2_fixed) */
    pbw_tensor *s;       /* lat's style when made already (styles_ahead) */
} layer_in;

/* Demodulation coefficients from style s (N,C): rsqrt(s^2 Wsq^T + 1e-8) -> (N,O). */
static pbw_tensor *demod_coefs(pbw_ctx *ctx, const pbw_sg2_modulated_conv2d *mc, pbw_tensor *s) {
    return pbw_rsqrt(ctx, pbw_add_scalar(ctx, pbw_matmul(ctx, pbw_square(ctx, s), mc->wsq, 0, 1),
                                         SG2_EPS));
}

/* Per-pixel demodulation from the mixed style at the output resolution -> (N,O,H,W). */
static pbw_tensor *demod_mixed(pbw_ctx *ctx, const pbw_sg2_modulated_conv2d *mc, pbw_tensor *s,
                               pbw_tensor *s0, pbw_tensor *m) {
    if (!s || !s0) return NULL;
    const int64_t n = s->shape[0], side = m->shape[2];
    pbw_tensor *ones = pbw_add_scalar(
        ctx, pbw_tensor_zeros(ctx, 4, (int64_t[]){n, mc->in_channel, side, side}), 1.0f);
    if (!ones) return NULL;
    pbw_tensor *smix = pbw_sg_modulate(ctx, ones, s, s0, m);
    pbw_tensor *wsq4 = pbw_reshape(ctx, mc->wsq, 4,
                                   (int64_t[]){mc->out_channel, mc->in_channel, 1, 1});
    pbw_tensor *d2 = pbw_conv2d(ctx, pbw_square(ctx, smix), wsq4, NULL, (pbw_conv_params){0});
    return pbw_rsqrt(ctx, pbw_add_scalar(ctx, d2, SG2_EPS));
}

/* The style of latent lat (N,S) for a modulated convolution: its affine map -> (N,C). */
static pbw_tensor *style_of(pbw_ctx *ctx, const pbw_sg2_modulated_conv2d *mc, pbw_tensor *lat) {
    return pbw_linear(ctx, lat, mc->modulation.weight, mc->modulation.bias);
}

/* The layer's style s, and s0 (the original latent's) when masked. */
static void styles(pbw_ctx *ctx, const pbw_sg2_modulated_conv2d *mc, const layer_in *li,
                   pbw_tensor **s, pbw_tensor **s0) {
    *s = li->s ? li->s : style_of(ctx, mc, li->lat);
    *s0 = !li->m_in ? NULL : li->s0 ? li->s0 : style_of(ctx, mc, li->lat0);
}

/* rgb_conv's per-sample weights for N samples: (N,O,C), or (N,2O,C) with the original style's
 * rows after the edit's when masked. */
static pbw_tensor *rgb_weights(pbw_ctx *ctx, const pbw_sg2_modulated_conv2d *mc, int64_t N,
                               const layer_in *li, pbw_tensor *s, pbw_tensor *s0) {
    if (!s || (li->m_in && !s0)) return NULL;
    const int64_t C = mc->weight->shape[1], O = mc->weight->shape[0];
    pbw_tensor *w = pbw_reshape(ctx, mc->weight, 3, (int64_t[]){1, O, C});
    pbw_tensor *ws = pbw_mul(ctx, w, pbw_reshape(ctx, s, 3, (int64_t[]){N, 1, C})); /* (N,O,C) */
    if (!li->m_in) return ws;
    if (s0->shape[0] != N) /* shared by the batch: one row per sample (adding 0 is exact) */
        s0 = pbw_add(ctx, s0, pbw_tensor_zeros(ctx, 2, (int64_t[]){N, C}));
    pbw_tensor *parts[2] = {ws, pbw_mul(ctx, w, pbw_reshape(ctx, s0, 3, (int64_t[]){N, 1, C}))};
    return pbw_concat(ctx, 2, parts, 1);
}

/* A 1x1 modulated convolution (ToRGB, O = 3 outputs) as one product per sample whose weight
 * the style scales: y_n = (W diag s_n) x_n, so x is read once and no modulated copy of it is
 * made. Masked, the per-pixel style s m + s0 (1 - m) is linear in m: y = y0 + m (y1 - y0) with
 * y1 from s and y0 from s0, both rows of one product. bias (may be NULL) is added last, all in
 * one op (pbw_sg_pointwise_blend). */
static pbw_tensor *rgb_conv(pbw_ctx *ctx, const pbw_sg2_modulated_conv2d *mc, pbw_tensor *x,
                            const layer_in *li, pbw_tensor *s, pbw_tensor *s0, pbw_tensor *bias) {
    if (!x) return NULL;
    return pbw_sg_pointwise_blend(ctx, x, rgb_weights(ctx, mc, x->shape[0], li, s, s0), li->m_in,
                                  bias);
}

/* ModulatedConv2d without its demodulation: conv(x * s, W) (+ blur when upsampling). Sets *s_out
 * (and *s0_out when masked) to the styles for the caller's demodulation. */
static pbw_tensor *modconv_core(pbw_ctx *ctx, const pbw_sg2_modulated_conv2d *mc, pbw_tensor *x,
                                const layer_in *li, pbw_tensor **s_out, pbw_tensor **s0_out) {
    pbw_tensor *s, *s0;
    styles(ctx, mc, li, &s, &s0);
    *s_out = s;
    *s0_out = s0;
    if (!mc->plan) return rgb_conv(ctx, mc, x, li, s, s0, NULL); /* 1x1: a product a sample */
    pbw_tensor *y = pbw_sg_modconv(ctx, x, s, s0, li->m_in, mc->plan);
    if (!mc->upsample) return y;
    if (mc->blur.K) return pbw_sg_blur(ctx, y, &mc->blur);
    return pbw_upfirdn2d(ctx, y, mc->blur_kernel, 1, 1, mc->blur_pad0, mc->blur_pad1,
                         mc->blur_pad0, mc->blur_pad1);
}

/* The demodulation coefficients of the layer's styles. */
static pbw_tensor *demod(pbw_ctx *ctx, const pbw_sg2_styled_conv *sc, const layer_in *li,
                         pbw_tensor *s, pbw_tensor *s0) {
    if (!li->m_in) return demod_coefs(ctx, &sc->conv, s);
    if (!li->mixed) return li->d0 ? li->d0 : demod_coefs(ctx, &sc->conv, s0);
    return demod_mixed(ctx, &sc->conv, s, s0, li->m_out);
}

static pbw_tensor *styled_conv(pbw_ctx *ctx, const pbw_sg2_styled_conv *sc, pbw_tensor *x,
                               const layer_in *li, pbw_tensor *noise) {
    const pbw_sg2_modulated_conv2d *mc = &sc->conv;
    const float nw = noise ? sc->noise_weight : 0;
    pbw_tensor *s, *s0;
    if (mc->plan && (!mc->upsample || mc->blur.K)) {
        /* the activation applied by the op that writes the layer's output: the convolution's
         * copy back, or the separable blur after an upsampling one */
        styles(ctx, mc, li, &s, &s0);
        pbw_tensor *d = demod(ctx, sc, li, s, s0);
        if (!mc->upsample)
            return pbw_sg_modconv_act(ctx, x, s, s0, li->m_in, mc->plan, d, noise,
                                      sc->activate_bias, nw, SG2_SLOPE, (float)M_SQRT2);
        return pbw_sg_blur_act(ctx, pbw_sg_modconv(ctx, x, s, s0, li->m_in, mc->plan), &mc->blur,
                               d, noise, sc->activate_bias, nw, SG2_SLOPE, (float)M_SQRT2);
    }
    pbw_tensor *y = modconv_core(ctx, mc, x, li, &s, &s0);
    return pbw_sg_bias_act(ctx, y, demod(ctx, sc, li, s, s0), noise, sc->activate_bias, nw,
                           SG2_SLOPE, (float)M_SQRT2);
}

/* A block's two styled convolutions: the upsampling one, whose blur writes its activated
 * output already scaled by the second's style (pbw_sg_blur_act_mod: nothing else reads that
 * output), then the second without a modulation of its own, together with the block's ToRGB
 * (tr, of layer lr: pbw_sg_conv_act_rgb), whose output goes to *rgb. The same ops as
 * styled_conv twice and rgb_conv (the modulation moves from the second's op into the first's),
 * where the layers are of the kind this applies to and nothing takes a gradient; otherwise
 * styled_conv twice, and *rgb is NULL (the caller's to_rgb runs). */
static pbw_tensor *block_convs(pbw_ctx *ctx, const pbw_sg2_styled_conv *sc0,
                               const pbw_sg2_styled_conv *sc1, pbw_tensor *x, const layer_in *li0,
                               const layer_in *li1, pbw_tensor *noise0, pbw_tensor *noise1,
                               const pbw_sg2_to_rgb *tr, const layer_in *lr, pbw_tensor **rgb) {
    const pbw_sg2_modulated_conv2d *mc0 = &sc0->conv, *mc1 = &sc1->conv;
    pbw_tensor *in[4] = {x, li0->lat, li1->lat, lr->lat};
    *rgb = NULL;
    /* with gradients the blur's op cannot scale (pbw_sg_blur_act_mod runs the three ops apart
     * then), and the second convolution scales its own input as one op where it can
     * (pbw_sg_modconv_act) */
    if (!mc0->plan || !mc0->upsample || !mc0->blur.K || !mc1->plan || mc1->upsample ||
        pbw_needs_grad(ctx, in, 4))
        return styled_conv(ctx, sc1, styled_conv(ctx, sc0, x, li0, noise0), li1, noise1);
    pbw_tensor *s, *s0, *t, *t0;
    styles(ctx, mc0, li0, &s, &s0);
    pbw_tensor *d0 = demod(ctx, sc0, li0, s, s0);
    styles(ctx, mc1, li1, &t, &t0);
    pbw_tensor *d1 = demod(ctx, sc1, li1, t, t0);
    pbw_tensor *xm = pbw_sg_blur_act_mod(ctx, pbw_sg_modconv(ctx, x, s, s0, li0->m_in, mc0->plan),
                                         &mc0->blur, d0, noise0, sc0->activate_bias,
                                         noise0 ? sc0->noise_weight : 0, SG2_SLOPE,
                                         (float)M_SQRT2, t, t0, li1->m_in);
    /* the block's ToRGB reads the second convolution's output as it is activated
     * (pbw_sg_conv_act_rgb) */
    pbw_tensor *r, *r0;
    styles(ctx, &tr->conv, lr, &r, &r0);
    return pbw_sg_conv_act_rgb(ctx, xm, mc1->plan, d1, noise1, sc1->activate_bias,
                               noise1 ? sc1->noise_weight : 0, SG2_SLOPE, (float)M_SQRT2,
                               rgb_weights(ctx, &tr->conv, x->shape[0], lr, r, r0), lr->m_in,
                               tr->bias, rgb);
}

/* The skip of the block before, upsampled to this block's side. */
static pbw_tensor *skip_upsampled(pbw_ctx *ctx, const pbw_sg2_to_rgb *tr, pbw_tensor *skip) {
    return pbw_upfirdn2d(ctx, skip, tr->upsample_kernel, 2, 1, tr->up_pad0, tr->up_pad1,
                         tr->up_pad0, tr->up_pad1);
}

/* ToRGB's output rgb plus the upsampled skip (none for the first). */
static pbw_tensor *rgb_skip(pbw_ctx *ctx, const pbw_sg2_to_rgb *tr, pbw_tensor *rgb,
                            pbw_tensor *skip) {
    return skip ? pbw_add(ctx, rgb, skip_upsampled(ctx, tr, skip)) : rgb;
}

static pbw_tensor *to_rgb(pbw_ctx *ctx, const pbw_sg2_to_rgb *tr, pbw_tensor *x,
                          const layer_in *li, pbw_tensor *skip) {
    pbw_tensor *s, *s0;
    styles(ctx, &tr->conv, li, &s, &s0);
    return rgb_skip(ctx, tr, rgb_conv(ctx, &tr->conv, x, li, s, s0, tr->bias), skip);
}

/* The noise of layer i: the fixed buffer, fresh Gaussian noise, or none. */
static pbw_tensor *layer_noise(pbw_ctx *ctx, const pbw_stylegan2 *g, const pbw_sg2_opts *o, int i,
                               int64_t n) {
    pbw_sg2_noise mode = o ? o->noise : PBW_SG2_NOISE_FIXED;
    if (mode == PBW_SG2_NOISE_NONE) return NULL;
    if (mode == PBW_SG2_NOISE_FIXED) return g->noises[i];
    if (!o->rng) return pbw_ctx_fail(ctx, "stylegan2: random noise needs opts->rng");
    int64_t side = g->noises[i]->shape[2];
    float *h = pbw_arena_alloc(pbw_ctx_arena(ctx), (size_t)(n * side * side) * sizeof(float) + 1);
    if (!h) return pbw_ctx_fail(ctx, "stylegan2: out of memory for noise");
    pbw_rng_normal_f32(o->rng, h, n * side * side);
    return pbw_tensor_from_host(ctx, h, 4, (int64_t[]){n, 1, side, side});
}

/* The latents and the original latents of a masked synthesis, checked. 0, or -1 (ctx failed). */
static int check_latents(pbw_ctx *ctx, const pbw_stylegan2 *g, pbw_tensor *const *lat,
                         const pbw_sg2_opts *opts) {
    if (pbw_ctx_failed(ctx)) return -1;
    char sb[96];
    for (int i = 0; i < g->n_latent; i++) {
        if (!lat[i]) return pbw_ctx_fail(ctx, "stylegan2 synthesis: latent %d is NULL", i), -1;
        if (lat[i]->ndim != 2 || lat[i]->shape[1] != g->style_dim ||
            lat[i]->shape[0] != lat[0]->shape[0]) {
            pbw_ctx_fail(ctx, "stylegan2 synthesis: latent %d %s must be (N,%d) like latent 0", i,
                         pbw_shape_str(lat[i], sb, sizeof sb), g->style_dim);
            return -1;
        }
    }
    const pbw_sg2_mask *mk = opts ? opts->mask : NULL;
    if (mk) {
        if (mk->log_size != g->log_size || !opts->lat0) {
            pbw_ctx_fail(ctx, "stylegan2 synthesis: the mask was made for another generator "
                              "size, or opts->lat0 is missing");
            return -1;
        }
        for (int i = 0; i < g->n_latent; i++)
            if (!opts->lat0[i] || opts->lat0[i]->ndim != 2 ||
                opts->lat0[i]->shape[1] != g->style_dim ||
                (opts->lat0[i]->shape[0] != 1 && opts->lat0[i]->shape[0] != lat[0]->shape[0])) {
                pbw_ctx_fail(ctx, "stylegan2 synthesis: original latent %d must be (N,%d) or "
                                  "(1,%d)", i, g->style_dim, g->style_dim);
                return -1;
            }
    }
    return 0;
}

/* ToRGB of x into skip. Where gradients flow (the Adam step) on a GPU, on a side lane
 * (pbw_lane_fork; the caller joins after the last block): the skip path (ToRGB, the skip's
 * upsampling and sum) reads the block's features and the latent but feeds nothing back into the
 * features, so it runs beside the next block's convolutions, and its backward beside theirs.
 * Without gradients it stays on the main lane: the release between blocks moves the skip. */
static pbw_tensor *to_rgb_lane(pbw_ctx *ctx, const pbw_sg2_to_rgb *tr, pbw_tensor *x,
                               const layer_in *li, pbw_tensor *skip) {
    pbw_tensor *in[2] = {x, li->lat};
    if (!pbw_needs_grad(ctx, in, 2)) return to_rgb(ctx, tr, x, li, skip);
    layer_in ls = *li;
    if (pbw_lane_fork(ctx, 2, in) < 0) return NULL;
    ls.lat = in[1];
    pbw_tensor *out = to_rgb(ctx, tr, in[0], &ls, skip);
    pbw_lane_main(ctx);
    return out;
}

/* A block's skip path split around its convolutions, where gradients flow on a GPU with lanes:
 * before them, the side lane makes what does not read the block's features (ToRGB's style and
 * per-sample weights, the upsampled skip: rgb_early), beside the convolutions; after them, ToRGB's
 * product and the skip's sum (rgb_late). Those parts' backward then runs beside the block's
 * convolutions' too, instead of between the last block's and everything before it. */
typedef struct rgb_pre {
    int forked;              /* rgb_early ran on the side lane: rgb_late takes over */
    pbw_tensor *w, *skip_up; /* ToRGB's weights (rgb_weights), the upsampled skip (or NULL) */
} rgb_pre;

/* 0 (p->forked 0: to_rgb_lane's way, after the convolutions; also with PBW_SG2_RGB_EARLY=0), or
 * -1 with ctx failed. */
static int rgb_early(pbw_ctx *ctx, const pbw_sg2_to_rgb *tr, const layer_in *li,
                     pbw_tensor *skip, int64_t n, rgb_pre *p) {
    memset(p, 0, sizeof *p);
    pbw_tensor *in[1] = {li->lat};
    if (!pbw_needs_grad(ctx, in, 1) || pbw_env_zero("PBW_SG2_RGB_EARLY")) return 0;
    const int f = pbw_lane_fork(ctx, 1, in);
    if (f <= 0) return f; /* no lanes: everything after the convolutions, as before */
    layer_in ls = *li;
    ls.lat = in[0];
    pbw_tensor *s, *s0;
    styles(ctx, &tr->conv, &ls, &s, &s0);
    p->w = rgb_weights(ctx, &tr->conv, n, &ls, s, s0);
    p->skip_up = skip ? skip_upsampled(ctx, tr, skip) : NULL;
    p->forked = 1;
    pbw_lane_main(ctx);
    return pbw_ctx_failed(ctx) ? -1 : 0;
}

/* The rest of rgb_early's skip path once x is made: the new skip (the caller joins after the
 * last block). The same ops on the same operands as to_rgb. */
static pbw_tensor *rgb_late(pbw_ctx *ctx, const pbw_sg2_to_rgb *tr, pbw_tensor *x,
                            const layer_in *li, const rgb_pre *p) {
    pbw_tensor *in[1] = {x};
    if (!x || pbw_lane_fork(ctx, 1, in) < 0) return NULL;
    pbw_tensor *rgb = pbw_sg_pointwise_blend(ctx, in[0], p->w, li->m_in, tr->bias);
    pbw_tensor *out = p->skip_up ? pbw_add(ctx, rgb, p->skip_up) : rgb;
    pbw_lane_main(ctx);
    return out;
}

/* The masked-style context of the layer with latent index idx (a ToRGB layer when rgb), a
 * convolution's with its style from pre[idx] where made ahead (pre may be NULL; a ToRGB layer
 * shares its latent index with the next block's first convolution). */
static layer_in layer_of(pbw_tensor *const *lat, pbw_tensor *const *pre,
                         const pbw_sg2_opts *opts, int idx, int side_in, int side_out, int rgb) {
    const pbw_sg2_mask *mk = opts ? opts->mask : NULL;
    layer_in li = {lat[idx], NULL, NULL, NULL, 0, NULL, NULL, pre && !rgb ? pre[idx] : NULL};
    if (!mk) return li;
    li.lat0 = opts->lat0[idx];
    li.m_in = rgb && opts->unmasked_torgb ? NULL : mk->m[side_in];
    li.m_out = mk->m[side_out];
    li.mixed = opts->demod_mixed;
    if (opts->fixed) {
        li.s0 = rgb ? opts->fixed->rgb_s0[idx] : opts->fixed->conv_s0[idx];
        li.d0 = rgb ? NULL : opts->fixed->conv_d0[idx];
    }
    return li;
}

int pbw_sg2_fixed_make(pbw_ctx *ctx, const pbw_stylegan2 *g, const pbw_sg2_opts *opts,
                       pbw_sg2_fixed *out) {
    memset(out, 0, sizeof *out);
    if (!opts || !opts->mask || !opts->lat0) {
        pbw_ctx_fail(ctx, "stylegan2: constants of a masked synthesis need a mask and lat0");
        return -1;
    }
    const int grad = pbw_ctx_set_grad(ctx, 0);
    const pbw_sg2_modulated_conv2d *mc;
    for (int k = 0; k < 2 * (g->log_size - 2) + 1; k++) { /* conv1 (latent 0), convs[k-1] (k) */
        mc = k ? &g->convs[k - 1].conv : &g->conv1.conv;
        out->conv_s0[k] = style_of(ctx, mc, opts->lat0[k]);
        out->conv_d0[k] = demod_coefs(ctx, mc, out->conv_s0[k]);
    }
    for (int b = -1; b < g->log_size - 2; b++) { /* to_rgb1 (latent 1), to_rgbs[b] (3 + 2b) */
        mc = b < 0 ? &g->to_rgb1.conv : &g->to_rgbs[b].conv;
        const int idx = 3 + 2 * b;
        out->rgb_s0[idx] = style_of(ctx, mc, opts->lat0[idx]);
    }
    pbw_ctx_set_grad(ctx, grad);
    return pbw_ctx_failed(ctx) ? -1 : 0;
}

/* The styles of the convolutions of blocks b0..b1-1 (and conv1's, the first layer, with
 * first), made ahead into pre[latent index] by one op where one latent row feeds every one of
 * them and the op runs them as one kernel forward and two backward (pbw_linear_multi_fused: on
 * a GPU under the half precisions, as in an edit's Adam step), where each layer's one-row
 * product was a kernel of its own both ways. Elsewhere pre[] is left NULL and each layer makes
 * its own style as it comes, so that the parity reference (the CPU, fp32) keeps its order of
 * sums. The ToRGB layers' styles stay with them (on the skip path's lane). */
static int styles_ahead(pbw_ctx *ctx, const pbw_stylegan2 *g, pbw_tensor *const *lat,
                        int first, int b0, int b1, pbw_tensor **pre) {
    for (int i = 0; i < g->n_latent; i++) pre[i] = NULL;
    const pbw_sg2_modulated_conv2d *mc[PBW_SG2_MAX_LATENT];
    int idx[PBW_SG2_MAX_LATENT], n = 0;
    if (first) mc[n] = &g->conv1.conv, idx[n++] = 0;
    for (int b = b0; b < b1; b++)
        for (int j = 0; j < 2; j++) mc[n] = &g->convs[2 * b + j].conv, idx[n++] = 1 + 2 * b + j;
    if (n < 2 || lat[idx[0]]->shape[0] != 1) return 0;
    for (int k = 1; k < n; k++)
        if (lat[idx[k]] != lat[idx[0]]) return 0;
    pbw_tensor *w[PBW_SG2_MAX_LATENT], *b[PBW_SG2_MAX_LATENT], *y[PBW_SG2_MAX_LATENT];
    for (int k = 0; k < n; k++) w[k] = mc[k]->modulation.weight, b[k] = mc[k]->modulation.bias;
    if (!pbw_linear_multi_fused(ctx, lat[idx[0]], n, w, b)) return 0;
    if (pbw_linear_multi(ctx, lat[idx[0]], n, w, b, y)) return -1;
    for (int k = 0; k < n; k++) pre[idx[k]] = y[k];
    return 0;
}

/* Upsampling blocks b0..b1-1 from p's features and skip (p->next_block == b0), into p; pre:
 * their styles made ahead, where styles_ahead made them. */
static int run_blocks(pbw_ctx *ctx, const pbw_stylegan2 *g, pbw_tensor *const *lat,
                      pbw_tensor *const *pre, const pbw_sg2_opts *opts, int b1,
                      pbw_sg2_partial *p) {
    const int64_t n = lat[0]->shape[0];
    pbw_tensor *x = p->x, *skip = p->skip;
#define LAYER(idx, side_in, side_out) layer_of(lat, pre, opts, idx, side_in, side_out, 0)
#define RGB_LAYER(idx, side) layer_of(lat, pre, opts, idx, side, side, 1)
    pbw_ctx_mark mark;
    int held = 0; /* the block before the last held its mark over (below) */
    for (int b = p->next_block; b < b1; b++) {
        /* without gradients, a block's temporaries are freed as it ends */
        if (!held) mark = pbw_ctx_mark_get(ctx);
        held = 0;
        int l = 1 + 2 * b, ls = 2 + b; /* ls: log2 of the input side of this block */
        layer_in li = LAYER(l, ls, ls + 1);
        const layer_in li1 = LAYER(l + 1, ls + 1, ls + 1);
        pbw_tensor *noise0 = layer_noise(ctx, g, opts, l, n); /* drawn in the layers' order */
        pbw_tensor *noise1 = layer_noise(ctx, g, opts, l + 1, n);
        const layer_in lr = RGB_LAYER(l + 2, ls + 1);
        pbw_tensor *rgb; /* the block's ToRGB, when its convolutions made it */
        rgb_pre rp;
        if (rgb_early(ctx, &g->to_rgbs[b], &lr, skip, n, &rp)) return -1;
        x = block_convs(ctx, &g->convs[2 * b], &g->convs[2 * b + 1], x, &li, &li1, noise0, noise1,
                        &g->to_rgbs[b], &lr, &rgb);
        skip = rgb        ? rgb_skip(ctx, &g->to_rgbs[b], rgb, skip)
               : rp.forked ? rgb_late(ctx, &g->to_rgbs[b], x, &lr, &rp)
                          : to_rgb_lane(ctx, &g->to_rgbs[b], x, &lr, skip);
        /* the last block's features are not read again: only the image moves. The block
         * before it leaves its features where they are, and the last block's release frees
         * both blocks' temporaries: one copy fewer of the largest features a release would
         * move (a 256 px generator's 128 px ones, 117 MB a batch of 14 in bf16), for the room
         * of this block's temporaries while the last block runs. */
        const int last = b + 1 == g->log_size - 2;
        if (b + 2 == g->log_size - 2 && b + 1 < b1) {
            held = 1;
        } else {
            pbw_tensor *keep[2] = {skip, x};
            if (pbw_ctx_release(ctx, mark, last ? 1 : 2, keep)) return -1;
            skip = keep[0];
            x = last ? NULL : keep[1];
        }
        p->x = x;
        p->skip = skip;
        p->next_block = b + 1;
    }
    pbw_lane_join(ctx); /* the skip path's side lane, if any */
    if (!p->skip) return -1;
    return 0;
}

int pbw_sg2_synthesis_begin(pbw_ctx *ctx, const pbw_stylegan2 *g, pbw_tensor *const *lat,
                            const pbw_sg2_opts *opts, int blocks, pbw_sg2_partial *p) {
    memset(p, 0, sizeof *p);
    if (check_latents(ctx, g, lat, opts)) return -1;
    if (blocks < 0 || blocks > g->log_size - 2) {
        pbw_ctx_fail(ctx, "stylegan2 synthesis: %d blocks of %d", blocks, g->log_size - 2);
        return -1;
    }
    const int64_t n = lat[0]->shape[0];
    pbw_tensor *pre[PBW_SG2_MAX_LATENT];
    if (styles_ahead(ctx, g, lat, 1, 0, blocks, pre)) return -1;
    /* ConstantInput: the learned 4x4 map repeated over the batch (a weight: no gradient) */
    pbw_tensor *x = g->input;
    if (n != 1) /* broadcast over the batch (a copy, on any device) */
        x = pbw_add(ctx, g->input, pbw_tensor_zeros(ctx, 4, (int64_t[]){n, g->channels[2], 4, 4}));
    layer_in li = LAYER(0, 2, 2);
    x = styled_conv(ctx, &g->conv1, x, &li, layer_noise(ctx, g, opts, 0, n));
    li = RGB_LAYER(1, 2);
    p->skip = to_rgb_lane(ctx, &g->to_rgb1, x, &li, NULL);
    p->x = x;
    if (!p->skip || !p->x) {
        pbw_lane_join(ctx);
        return -1;
    }
    return run_blocks(ctx, g, lat, pre, opts, blocks, p);
}
#undef LAYER
#undef RGB_LAYER

pbw_tensor *pbw_sg2_synthesis_finish(pbw_ctx *ctx, const pbw_stylegan2 *g,
                                     pbw_tensor *const *lat, const pbw_sg2_opts *opts,
                                     const pbw_sg2_partial *p) {
    if (check_latents(ctx, g, lat, opts)) return NULL;
    pbw_sg2_partial q = *p;
    if (!q.skip || q.next_block < 0 || q.next_block > g->log_size - 2 ||
        (q.next_block < g->log_size - 2 && !q.x))
        return pbw_ctx_fail(ctx, "stylegan2 synthesis: not a partial synthesis of this generator");
    if (q.skip->shape[0] != lat[0]->shape[0])
        return pbw_ctx_fail(ctx, "stylegan2 synthesis: %lld latents for a partial synthesis of "
                            "%lld", (long long)lat[0]->shape[0], (long long)q.skip->shape[0]);
    pbw_tensor *pre[PBW_SG2_MAX_LATENT];
    if (styles_ahead(ctx, g, lat, 0, q.next_block, g->log_size - 2, pre) ||
        run_blocks(ctx, g, lat, pre, opts, g->log_size - 2, &q))
        return NULL;
    return q.skip;
}

int pbw_sg2_partial_rows(pbw_ctx *ctx, const pbw_sg2_partial *p, int64_t i, int64_t n,
                         pbw_sg2_partial *out) {
    *out = *p;
    if (!p->skip || i < 0 || n < 1 || i + n > p->skip->shape[0]) {
        pbw_ctx_fail(ctx, "stylegan2 synthesis: rows %lld..%lld of a partial synthesis",
                     (long long)i, (long long)(i + n));
        return -1;
    }
    out->skip = pbw_slice(ctx, p->skip, 0, i, i + n, 1);
    out->x = p->x ? pbw_slice(ctx, p->x, 0, i, i + n, 1) : NULL;
    return !out->skip || (p->x && !out->x) ? -1 : 0;
}

int pbw_sg2_shared_blocks(const pbw_stylegan2 *g, int64_t n_all, int64_t n_batch) {
    const double cap = (double)n_batch * g->size * g->size * g->channels[g->log_size];
    int k = 0;
    for (int b = 0; b + 1 < g->log_size - 2; b++) { /* the last block always runs per batch */
        const double side = (double)(8 << b);    /* output side of block b */
        if ((double)n_all * side * side * g->channels[3 + b] > cap) break;
        k = b + 1;
    }
    return k;
}

pbw_tensor *pbw_sg2_synthesis(pbw_ctx *ctx, const pbw_stylegan2 *g, pbw_tensor *const *lat,
                              const pbw_sg2_opts *opts) {
    pbw_sg2_partial p;
    if (pbw_sg2_synthesis_begin(ctx, g, lat, opts, g->log_size - 2, &p)) return NULL;
    return p.skip;
}

int pbw_sg2_split_wplus(pbw_ctx *ctx, const pbw_stylegan2 *g, pbw_tensor *wplus,
                        pbw_tensor **lat) {
    if (!wplus) return -1;
    char s[96];
    if (wplus->ndim != 3 || wplus->shape[1] != g->n_latent || wplus->shape[2] != g->style_dim) {
        pbw_ctx_fail(ctx, "stylegan2: W+ %s must be (N,%d,%d)", pbw_shape_str(wplus, s, sizeof s),
                     g->n_latent, g->style_dim);
        return -1;
    }
    for (int i = 0; i < g->n_latent; i++)
        lat[i] = pbw_reshape(ctx, pbw_slice(ctx, wplus, 1, i, i + 1, 1), 2,
                             (int64_t[]){wplus->shape[0], g->style_dim});
    return pbw_ctx_failed(ctx) ? -1 : 0;
}

pbw_tensor *pbw_sg2_from_w(pbw_ctx *ctx, const pbw_stylegan2 *g, pbw_tensor *w,
                           const pbw_sg2_opts *opts) {
    pbw_tensor *lat[PBW_SG2_MAX_LATENT];
    for (int i = 0; i < g->n_latent; i++) lat[i] = w;
    return pbw_sg2_synthesis(ctx, g, lat, opts);
}

pbw_tensor *pbw_sg2_from_wplus(pbw_ctx *ctx, const pbw_stylegan2 *g, pbw_tensor *wplus,
                               const pbw_sg2_opts *opts) {
    pbw_tensor *lat[PBW_SG2_MAX_LATENT];
    if (pbw_sg2_split_wplus(ctx, g, wplus, lat)) return NULL;
    return pbw_sg2_synthesis(ctx, g, lat, opts);
}

pbw_tensor *pbw_sg2_from_z(pbw_ctx *ctx, const pbw_stylegan2 *g, pbw_tensor *z, float psi,
                           const pbw_sg2_opts *opts) {
    pbw_tensor *w = pbw_sg2_truncate(ctx, g, pbw_sg2_mapping(ctx, g, z), psi);
    if (!w) return NULL;
    return pbw_sg2_from_w(ctx, g, w, opts);
}

int pbw_sg2_mean_latent(pbw_ctx *ctx, pbw_stylegan2 *g, int n, uint32_t seed, pbw_err *err) {
    if (n < 1) return pbw_err_set(err, "mean latent: n = %d", n);
    pbw_rng rng;
    pbw_rng_seed(&rng, seed);
    double *acc = calloc((size_t)g->style_dim, sizeof(double));
    if (!acc) return pbw_err_set(err, "out of memory");
    int prev = pbw_ctx_set_grad(ctx, 0);
    const int chunk = 256;
    for (int done = 0; done < n; done += chunk) {
        int b = n - done < chunk ? n - done : chunk;
        float *zh = pbw_arena_alloc(pbw_ctx_arena(ctx), (size_t)b * g->style_dim * sizeof(float));
        if (zh) pbw_rng_normal_f32(&rng, zh, (int64_t)b * g->style_dim);
        pbw_tensor *z = zh ? pbw_tensor_from_host(ctx, zh, 2, (int64_t[]){b, g->style_dim}) : NULL;
        pbw_tensor *w = pbw_sg2_mapping(ctx, g, z);
        const float *wh = w ? pbw_tensor_host(ctx, w) : NULL;
        if (!wh) {
            pbw_ctx_check(ctx, err);
            pbw_ctx_reset(ctx);
            pbw_ctx_set_grad(ctx, prev);
            free(acc);
            return -1;
        }
        for (int64_t i = 0; i < w->numel; i++) acc[i % g->style_dim] += wh[i];
        pbw_ctx_reset(ctx);
    }
    pbw_ctx_set_grad(ctx, prev);
    if (!g->latent_avg) {
        g->latent_avg = pbw_tensor_new_in(&g->arena, 2, (int64_t[]){1, g->style_dim}, err);
        if (!g->latent_avg) {
            free(acc);
            return -1;
        }
    }
    float *avg = malloc((size_t)g->style_dim * sizeof(float));
    if (!avg) {
        free(acc);
        return pbw_err_set(err, "out of memory");
    }
    for (int i = 0; i < g->style_dim; i++) avg[i] = (float)(acc[i] / n);
    free(acc);
    int rc = 0;
    if (g->latent_avg->device == PBW_DEV_CPU) {
        memcpy(g->latent_avg->data, avg, (size_t)g->style_dim * sizeof(float));
        if (pbw_ctx_device(ctx) != PBW_DEV_CPU) rc = pbw_arena_to_device(&g->arena, ctx, err);
    } else if (pbw_tensor_write(ctx, g->latent_avg, avg)) {
        rc = pbw_ctx_check(ctx, err);
    }
    pbw_ctx_reset(ctx);
    free(avg);
    return rc;
}

int pbw_sg2_to_device(pbw_stylegan2 *g, pbw_ctx *ctx, pbw_err *err) {
    return pbw_arena_to_device(&g->arena, ctx, err);
}

int pbw_sg2_mask_to_device(pbw_sg2_mask *mk, pbw_ctx *ctx, pbw_err *err) {
    return pbw_arena_to_device(&mk->arena, ctx, err);
}
