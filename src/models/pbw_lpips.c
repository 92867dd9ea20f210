/* pbw_lpips.c: LPIPS (AlexNet trunk, v0.1 heads) built from pbw ops; see pbw_lpips.h.
 *
 * Everything is composed of taped ops (conv2d, relu, max_pool2d, the elementwise ops, resize),
 * so the backward to the images comes from their tested backward kernels; nothing here has
 * its own gradient code. Weights are plain tensors without requires_grad, so no weight
 * gradient is ever computed.
 */
#include "pbw_lpips.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cpu/pbw_cpu_conv.h"
#include "models/pbw_weights.h"

const int pbw_lpips_channels[PBW_LPIPS_LAYERS] = {64, 192, 384, 256, 256};

/* One conv of the trunk: torchvision's module index in `features`, lpips's slice, shape and
 * geometry. */
typedef struct conv_spec {
    int index;  /* features.<index> */
    int slice;  /* net.slice<slice>.<index> in an LPIPS state dict */
    int out, in, k, stride, pad;
} conv_spec;

static const conv_spec convs[PBW_LPIPS_LAYERS] = {
    {0, 1, 64, 3, 11, 4, 2},
    {3, 2, 192, 64, 5, 1, 2},
    {6, 3, 384, 192, 3, 1, 1},
    {8, 4, 256, 384, 3, 1, 1},
    {10, 5, 256, 256, 3, 1, 1},
};

/* ScalingLayer constants, as lpips's float32 buffers. */
static const float lpips_shift[3] = {-.030f, -.088f, -.188f};
static const float lpips_scale[3] = {.458f, .448f, .450f};

/* Smallest input side: conv1 must give >= 7 so that both 3x3/2 pools have a window. */
#define MIN_SIDE 35

/* ------------------------------------------------------------------------------------------ */
/* loading                                                                                     */

typedef enum { NAMES_TORCHVISION, NAMES_LPIPS } trunk_names;

static void trunk_prefix(trunk_names nm, int k, char *buf, size_t len) {
    if (nm == NAMES_TORCHVISION)
        snprintf(buf, len, "features.%d.", convs[k].index);
    else
        snprintf(buf, len, "net.slice%d.%d.", convs[k].slice, convs[k].index);
}

/* Fills m's tensors; *in_heads tells whether a failure concerned the heads' records. */
static int load_weights(pbw_lpips *m, const pbw_records *trunk, const pbw_records *heads,
                        int *in_heads, pbw_err *err) {
    *in_heads = 0;
    trunk_names nm;
    if (pbw_records_find(trunk, "features.0.weight"))
        nm = NAMES_TORCHVISION;
    else if (pbw_records_find(trunk, "net.slice1.0.weight"))
        nm = NAMES_LPIPS;
    else
        return pbw_err_set(err, "no AlexNet trunk: neither torchvision's 'features.0.weight' "
                                "nor lpips's 'net.slice1.0.weight' is in the checkpoint");
    for (int k = 0; k < PBW_LPIPS_LAYERS; k++) {
        const conv_spec *c = &convs[k];
        char pre[64];
        trunk_prefix(nm, k, pre, sizeof pre);
        m->conv_w[k] = pbw_weight_get(&m->arena, trunk, pre, "weight", 4,
                                      (int64_t[]){c->out, c->in, c->k, c->k}, err);
        if (!m->conv_w[k]) return -1;
        m->conv_b[k] = pbw_weight_get(&m->arena, trunk, pre, "bias", 1, (int64_t[]){c->out},
                                      err);
        if (!m->conv_b[k]) return -1;
    }
    *in_heads = 1;
    for (int k = 0; k < PBW_LPIPS_LAYERS; k++) {
        char name[64];
        snprintf(name, sizeof name, "lin%d.model.1.weight", k);
        m->lin_w[k] = pbw_weight_get(&m->arena, heads, NULL, name, 4,
                                     (int64_t[]){1, pbw_lpips_channels[k], 1, 1}, err);
        if (!m->lin_w[k]) return -1;
    }
    *in_heads = 0;
    m->shift = pbw_tensor_new_in(&m->arena, 4, (int64_t[]){1, 3, 1, 1}, err);
    m->scale = pbw_tensor_new_in(&m->arena, 4, (int64_t[]){1, 3, 1, 1}, err);
    if (!m->shift || !m->scale) return -1;
    memcpy(m->shift->data, lpips_shift, sizeof lpips_shift);
    memcpy(m->scale->data, lpips_scale, sizeof lpips_scale);
    return 0;
}

static int from_records(const pbw_records *trunk, const pbw_records *heads, pbw_lpips **out,
                        int *in_heads, pbw_err *err) {
    *out = NULL;
    *in_heads = 0;
    if (!trunk || !heads) return pbw_err_set(err, "lpips: no records given");
    pbw_lpips *m = calloc(1, sizeof *m);
    if (!m) return pbw_err_set(err, "lpips: out of memory");
    /* 2.47 M trunk parameters + heads: one chunk */
    pbw_arena_init(&m->arena, (size_t)11 << 20);
    m->arena.huge_pages = 1;
    if (load_weights(m, trunk, heads, in_heads, err)) {
        pbw_lpips_free(m);
        return -1;
    }
    *out = m;
    return 0;
}

int pbw_lpips_from_records(const pbw_records *trunk, const pbw_records *heads, pbw_lpips **out,
                           pbw_err *err) {
    int in_heads;
    return from_records(trunk, heads, out, &in_heads, err);
}

int pbw_lpips_load(const char *trunk_path, const char *heads_path, pbw_lpips **out,
                   pbw_err *err) {
    *out = NULL;
    pbw_records trunk, heads;
    memset(&heads, 0, sizeof heads);
    if (pbw_load_checkpoint(trunk_path, &trunk, err)) return -1;
    if (heads_path && pbw_load_checkpoint(heads_path, &heads, err)) {
        pbw_records_free(&trunk);
        return -1;
    }
    int in_heads;
    int rc = from_records(&trunk, heads_path ? &heads : &trunk, out, &in_heads, err);
    if (rc) /* name the file the missing or misshapen tensor was looked for in */
        pbw_err_prefix(err, "%s: ", in_heads && heads_path ? heads_path : trunk_path);
    pbw_records_free(&trunk);
    pbw_records_free(&heads);
    return rc;
}

int pbw_lpips_to_device(pbw_lpips *m, pbw_ctx *ctx, pbw_err *err) {
    return pbw_arena_to_device(&m->arena, ctx, err);
}

void pbw_lpips_free(pbw_lpips *m) {
    if (!m) return;
    pbw_arena_free(&m->arena);
    free(m);
}

/* ------------------------------------------------------------------------------------------ */
/* forward                                                                                     */

/* x / (sqrt(sum_c x^2) + eps), eps = 1e-10 added after the root: lpips's normalize_tensor. */
static pbw_tensor *normalize_channels(pbw_ctx *ctx, pbw_tensor *x) {
    static const int ch = 1;
    pbw_tensor *ss = pbw_sum(ctx, pbw_square(ctx, x), 1, &ch, 1); /* (N,1,h,w) */
    return pbw_div(ctx, x, pbw_add_scalar(ctx, pbw_sqrt(ctx, ss), 1e-10f));
}

static pbw_tensor *conv_relu(pbw_ctx *ctx, const pbw_lpips *m, int k, pbw_tensor *h) {
    pbw_conv_params p = {0};
    p.stride_h = p.stride_w = convs[k].stride;
    p.pad_h = p.pad_w = convs[k].pad;
    return pbw_relu(ctx, pbw_conv2d(ctx, h, m->conv_w[k], m->conv_b[k], p));
}

static int check_image(pbw_ctx *ctx, const char *what, const pbw_tensor *x) {
    char s[96];
    if (!x) return -1; /* an earlier op failed; its message stands */
    if (x->ndim != 4 || x->shape[1] != 3 || x->shape[2] < MIN_SIDE || x->shape[3] < MIN_SIDE) {
        pbw_ctx_fail(ctx, "lpips: %s %s must be (N,3,H,W) with H, W >= %d", what,
                     pbw_shape_str(x, s, sizeof s), MIN_SIDE);
        return -1;
    }
    return 0;
}

/* The trunk's five ReLU outputs for x (N,3,H,W): relu[k] (N,C_k,h_k,w_k). 0, or -1 with the
 * context failed. */
static int trunk(pbw_ctx *ctx, const pbw_lpips *m, pbw_tensor *x,
                 pbw_tensor *relu[PBW_LPIPS_LAYERS]) {
    for (int k = 0; k < PBW_LPIPS_LAYERS; k++) relu[k] = NULL;
    if (!m) {
        pbw_ctx_fail(ctx, "lpips: no model");
        return -1;
    }
    if (check_image(ctx, "input", x)) return -1;
    pbw_tensor *h = pbw_div(ctx, pbw_sub(ctx, x, m->shift), m->scale);
    relu[0] = conv_relu(ctx, m, 0, h);
    relu[1] = conv_relu(ctx, m, 1, pbw_max_pool2d(ctx, relu[0], 3, 2, 0));
    relu[2] = conv_relu(ctx, m, 2, pbw_max_pool2d(ctx, relu[1], 3, 2, 0));
    relu[3] = conv_relu(ctx, m, 3, relu[2]);
    relu[4] = conv_relu(ctx, m, 4, relu[3]);
    return pbw_ctx_failed(ctx) ? -1 : 0;
}

int pbw_lpips_features(pbw_ctx *ctx, const pbw_lpips *m, pbw_tensor *x,
                       pbw_tensor *feats[PBW_LPIPS_LAYERS]) {
    pbw_tensor *relu[PBW_LPIPS_LAYERS];
    int rc = trunk(ctx, m, x, relu);
    for (int k = 0; k < PBW_LPIPS_LAYERS; k++) feats[k] = rc ? NULL : normalize_channels(ctx, relu[k]);
    return rc || pbw_ctx_failed(ctx) ? -1 : 0;
}

int pbw_lpips_keep_weights(pbw_ctx *ctx, const float *keep, int H, int W,
                           pbw_tensor *const ref[PBW_LPIPS_LAYERS],
                           pbw_tensor *kw[PBW_LPIPS_LAYERS]) {
    for (int k = 0; k < PBW_LPIPS_LAYERS; k++) kw[k] = NULL;
    for (int k = 0; k < PBW_LPIPS_LAYERS; k++) {
        if (!ref[k] || ref[k]->ndim != 4) {
            pbw_ctx_fail(ctx, "lpips keep weights: reference features of layer %d missing", k);
            return -1;
        }
        const int h = (int)ref[k]->shape[2], w = (int)ref[k]->shape[3];
        /* layers of one size (AlexNet's last three) share one tensor: the same weights */
        for (int j = 0; j < k && !kw[k]; j++)
            if (ref[j]->shape[2] == h && ref[j]->shape[3] == w) kw[k] = kw[j];
        if (kw[k]) continue;
        const size_t sb = pbw_cpu_resize_scratch_bytes(1, h, w, H, W);
        float *kh = calloc((size_t)h * w, sizeof(float));
        void *scratch = malloc(sb + 1);
        if (kh && scratch) /* resize^T keep: sum_p keep(p) resize(r)(p) = sum_q kw(q) r(q) */
            pbw_cpu_resize_backward(kh, keep, 1, h, w, H, W, 1, scratch);
        kw[k] = kh && scratch ? pbw_tensor_from_host(ctx, kh, 2, (int64_t[]){h, w}) : NULL;
        free(kh);
        free(scratch);
        if (!kw[k]) {
            if (!pbw_ctx_failed(ctx)) pbw_ctx_fail(ctx, "lpips keep weights: out of memory");
            return -1;
        }
    }
    return 0;
}

pbw_tensor *pbw_lpips_keep(pbw_ctx *ctx, const pbw_lpips *m, pbw_tensor *x,
                           pbw_tensor *const ref[PBW_LPIPS_LAYERS],
                           pbw_tensor *const kw[PBW_LPIPS_LAYERS], double keep_sum) {
    if (!(keep_sum > 0)) return pbw_ctx_fail(ctx, "lpips keep: the weights sum to %g", keep_sum);
    pbw_tensor *relu[PBW_LPIPS_LAYERS];
    if (trunk(ctx, m, x, relu)) return NULL;
    pbw_tensor *val = NULL;
    for (int k = 0; k < PBW_LPIPS_LAYERS; k++) {
        pbw_tensor *t = pbw_lpips_layer(ctx, relu[k], ref[k], m->lin_w[k], kw[k], 1e-10f);
        val = val ? pbw_add(ctx, val, t) : t;
    }
    return pbw_scale(ctx, val, (float)(1.0 / keep_sum));
}

pbw_tensor *pbw_lpips_compare(pbw_ctx *ctx, const pbw_lpips *m,
                              pbw_tensor *const f0[PBW_LPIPS_LAYERS],
                              pbw_tensor *const f1[PBW_LPIPS_LAYERS], int spatial, int64_t H,
                              int64_t W) {
    if (!m) return pbw_ctx_fail(ctx, "lpips: no model");
    if (spatial && (H < 1 || W < 1 || H > (1 << 20) || W > (1 << 20)))
        return pbw_ctx_fail(ctx, "lpips: map size %lldx%lld out of range", (long long)H,
                            (long long)W);
    pbw_tensor *val = NULL;
    for (int k = 0; k < PBW_LPIPS_LAYERS; k++) {
        if (!f0[k] || !f1[k]) return NULL;
        if (f0[k]->ndim != 4 || f1[k]->ndim != 4 || f0[k]->shape[1] != pbw_lpips_channels[k] ||
            f1[k]->shape[1] != pbw_lpips_channels[k] || f0[k]->shape[2] != f1[k]->shape[2] ||
            f0[k]->shape[3] != f1[k]->shape[3] ||
            (f1[k]->shape[0] != f0[k]->shape[0] && f1[k]->shape[0] != 1)) {
            char a[96], b[96];
            return pbw_ctx_fail(ctx, "lpips: layer %d features %s and %s do not match (need "
                                "(N,%d,h,w) and (N or 1,%d,h,w))", k,
                                pbw_shape_str(f0[k], a, sizeof a),
                                pbw_shape_str(f1[k], b, sizeof b), pbw_lpips_channels[k],
                                pbw_lpips_channels[k]);
        }
        pbw_tensor *d = pbw_square(ctx, pbw_sub(ctx, f0[k], f1[k]));
        pbw_tensor *r = pbw_conv2d(ctx, d, m->lin_w[k], NULL, (pbw_conv_params){0}); /* (N,1,h,w) */
        if (spatial) {
            r = pbw_resize(ctx, r, (int)H, (int)W, PBW_RESIZE_BILINEAR);
        } else {
            static const int hw[2] = {2, 3};
            r = pbw_mean(ctx, r, 2, hw, 1);
        }
        val = val ? pbw_add(ctx, val, r) : r;
    }
    return val;
}

pbw_tensor *pbw_lpips_forward(pbw_ctx *ctx, const pbw_lpips *m, pbw_tensor *x0, pbw_tensor *x1,
                              int spatial) {
    if (check_image(ctx, "x0", x0) || check_image(ctx, "x1", x1)) return NULL;
    if (x0->shape[2] != x1->shape[2] || x0->shape[3] != x1->shape[3] ||
        (x1->shape[0] != x0->shape[0] && x1->shape[0] != 1)) {
        char a[96], b[96];
        return pbw_ctx_fail(ctx, "lpips: x0 %s and x1 %s differ in size (x1 may have batch 1)",
                            pbw_shape_str(x0, a, sizeof a), pbw_shape_str(x1, b, sizeof b));
    }
    pbw_tensor *f0[PBW_LPIPS_LAYERS], *f1[PBW_LPIPS_LAYERS];
    if (pbw_lpips_features(ctx, m, x0, f0) || pbw_lpips_features(ctx, m, x1, f1)) return NULL;
    return pbw_lpips_compare(ctx, m, f0, f1, spatial, x0->shape[2], x0->shape[3]);
}

static int weighted_check(pbw_ctx *ctx, pbw_tensor *map, pbw_tensor *weight) {
    char a[96], b[96];
    pbw_shape_str(map, a, sizeof a);
    pbw_shape_str(weight, b, sizeof b);
    if (map->ndim != 4 || map->shape[1] != 1 || weight->ndim != 4 || weight->shape[1] != 1 ||
        weight->shape[2] != map->shape[2] || weight->shape[3] != map->shape[3] ||
        (weight->shape[0] != map->shape[0] && weight->shape[0] != 1)) {
        pbw_ctx_fail(ctx, "lpips_weighted: map %s and weight %s must be (N,1,H,W) and "
                     "(N or 1,1,H,W)", a, b);
        return -1;
    }
    if (weight->requires_grad || !weight->data) {
        pbw_ctx_fail(ctx, "lpips_weighted: weight %s must be a float32 constant", b);
        return -1;
    }
    return 0;
}

pbw_tensor *pbw_lpips_weighted_sums(pbw_ctx *ctx, pbw_tensor *map, pbw_tensor *weight,
                                    const double *sums) {
    if (!map || !weight || weighted_check(ctx, map, weight)) return NULL;
    int64_t N = map->shape[0], Nw = weight->shape[0], zero = 0;
    for (int64_t n = 0; n < Nw; n++) zero += sums[n] == 0;
    if (zero == Nw) return pbw_tensor_zeros(ctx, 1, (int64_t[]){N}); /* nothing to keep */
    if (zero) {
        char b[96];
        return pbw_ctx_fail(ctx, "lpips_weighted: weight %s is zero for some images and not "
                            "others", pbw_shape_str(weight, b, sizeof b));
    }
    static const int chw[3] = {1, 2, 3};
    pbw_tensor *num = pbw_sum(ctx, pbw_mul(ctx, map, weight), 3, chw, 0);
    if (Nw == 1) /* one weight for every image: a scale, nothing to upload */
        return pbw_scale(ctx, num, (float)(1.0 / sums[0]));
    float *dh = pbw_arena_alloc(pbw_ctx_arena(ctx), (size_t)Nw * sizeof(float));
    if (!dh) return pbw_ctx_fail(ctx, "lpips_weighted: out of memory");
    for (int64_t n = 0; n < Nw; n++) dh[n] = (float)sums[n];
    return pbw_div(ctx, num, pbw_tensor_from_host(ctx, dh, 1, (int64_t[]){Nw}));
}

pbw_tensor *pbw_lpips_weighted(pbw_ctx *ctx, pbw_tensor *map, pbw_tensor *weight) {
    if (!map || !weight || weighted_check(ctx, map, weight)) return NULL;
    /* the weight's sums, taken here on the host (a read-back: callers that know them pass
     * them to pbw_lpips_weighted_sums instead) */
    int64_t Nw = weight->shape[0], P = weight->numel / (Nw ? Nw : 1);
    const float *wh = pbw_tensor_host(ctx, weight);
    double *sums = pbw_arena_alloc(pbw_ctx_arena(ctx), (size_t)Nw * sizeof(double) + 1);
    if (!wh || !sums) return pbw_ctx_fail(ctx, "lpips_weighted: out of memory");
    for (int64_t n = 0; n < Nw; n++) {
        double s = 0;
        for (int64_t i = 0; i < P; i++) s += wh[n * P + i];
        sums[n] = s;
    }
    return pbw_lpips_weighted_sums(ctx, map, weight, sums);
}
