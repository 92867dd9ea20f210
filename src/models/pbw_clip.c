/* pbw_clip.c: CLIP's encoders built from pbw ops, the checkpoint loaders (Hugging Face and
 * OpenAI / open_clip names) and CLIP's image preprocessing. See pbw_clip.h for the contracts.
 *
 * One internal model serves both namings: q, k and v projections are packed into one (3W, W)
 * weight (OpenAI's in_proj layout; HF's three matrices are stacked on load) so that one GEMM
 * computes them, and the projections are kept as linear weights (E, W) (OpenAI's
 * visual.proj and text_projection are stored (W, E) and are transposed on load).
 */
#include "pbw_clip.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "formats/pbw_file.h"
#include "formats/pbw_json.h"
#include "pbw_weights.h"

const float pbw_clip_mean[3] = {0.48145466f, 0.4578275f, 0.40821073f};
const float pbw_clip_std[3] = {0.26862954f, 0.26130258f, 0.27577711f};

/* Sizes beyond these are not CLIP models; they also keep int arithmetic on shapes safe. */
#define MAX_WIDTH 16384
#define MAX_LAYERS 256
#define MAX_TOKENS 65536

/* ------------------------------------------------------------------------------------------ */
/* configuration                                                                               */

/* transformers' CLIPTextConfig / CLIPVisionConfig defaults (ViT-B/32). */
static pbw_clip_config default_config(void) {
    pbw_clip_config c;
    memset(&c, 0, sizeof c);
    c.vision = (pbw_clip_tower_config){768, 12, 12, 3072, PBW_CLIP_QUICK_GELU, 1e-5f};
    c.text = (pbw_clip_tower_config){512, 12, 8, 2048, PBW_CLIP_QUICK_GELU, 1e-5f};
    c.image_size = 224;
    c.patch_size = 32;
    c.channels = 3;
    c.vocab_size = 49408;
    c.context_length = 77;
    c.eos_token_id = 49407;
    c.pool_argmax = 0;
    c.embed_dim = 512;
    c.logit_scale = 2.6592f;
    return c;
}

static int parse_act(const char *s, const char *where, pbw_clip_act *out, pbw_err *err) {
    if (!strcmp(s, "quick_gelu")) *out = PBW_CLIP_QUICK_GELU;
    else if (!strcmp(s, "gelu")) *out = PBW_CLIP_GELU;
    else
        return pbw_err_set(err, "%s: hidden_act '%s' is not supported (quick_gelu or gelu)",
                           where, s);
    return 0;
}

static int get_int(json_object *o, const char *key, int def, int lo, int hi, int *out,
                   const char *where, pbw_err *err) {
    int64_t v;
    if (pbw_json_get_int(o, key, def, &v, err)) return pbw_err_prefix(err, "%s: ", where);
    if (v < lo || v > hi)
        return pbw_err_set(err, "%s: '%s' = %lld is out of range [%d, %d]", where, key,
                           (long long)v, lo, hi);
    *out = (int)v;
    return 0;
}

static int parse_tower(json_object *o, pbw_clip_tower_config *t, const char *where, pbw_err *err) {
    const char *act;
    double eps;
    if (get_int(o, "hidden_size", t->width, 1, MAX_WIDTH, &t->width, where, err) ||
        get_int(o, "num_hidden_layers", t->layers, 1, MAX_LAYERS, &t->layers, where, err) ||
        get_int(o, "num_attention_heads", t->heads, 1, MAX_WIDTH, &t->heads, where, err) ||
        get_int(o, "intermediate_size", t->mlp, 1, 8 * MAX_WIDTH, &t->mlp, where, err))
        return -1;
    if (pbw_json_get_string(o, "hidden_act", "quick_gelu", &act, err) ||
        pbw_json_get_float(o, "layer_norm_eps", 1e-5, &eps, err))
        return pbw_err_prefix(err, "%s: ", where);
    if (parse_act(act, where, &t->act, err)) return -1;
    if (!(eps > 0 && eps < 1)) return pbw_err_set(err, "%s: layer_norm_eps %g is not in (0,1)", where, eps);
    t->ln_eps = (float)eps;
    if (t->width % t->heads)
        return pbw_err_set(err, "%s: hidden_size %d is not a multiple of num_attention_heads %d",
                           where, t->width, t->heads);
    return 0;
}

/* HF CLIPConfig. The sub-configs may be absent or partial: transformers fills them with its
 * defaults, and so do we. Old files name them text_config_dict / vision_config_dict. */
static int parse_hf_config(json_object *root, pbw_clip_config *c, const char *where,
                           pbw_err *err) {
    json_object *tc = pbw_json_get_object(root, "text_config");
    json_object *vc = pbw_json_get_object(root, "vision_config");
    if (!tc) tc = pbw_json_get_object(root, "text_config_dict");
    if (!vc) vc = pbw_json_get_object(root, "vision_config_dict");
    char wt[300], wv[300];
    snprintf(wt, sizeof wt, "%s text_config", where);
    snprintf(wv, sizeof wv, "%s vision_config", where);
    if (tc) {
        int64_t eos;
        if (parse_tower(tc, &c->text, wt, err) ||
            get_int(tc, "vocab_size", c->vocab_size, 1, 1 << 24, &c->vocab_size, wt, err) ||
            get_int(tc, "max_position_embeddings", c->context_length, 1, MAX_TOKENS,
                    &c->context_length, wt, err))
            return -1;
        if (pbw_json_get_int(tc, "eos_token_id", 49407, &eos, err)) return pbw_err_prefix(err, "%s: ", wt);
        c->eos_token_id = eos;
    }
    if (vc) {
        if (parse_tower(vc, &c->vision, wv, err) ||
            get_int(vc, "image_size", c->image_size, 1, 8192, &c->image_size, wv, err) ||
            get_int(vc, "patch_size", c->patch_size, 1, 8192, &c->patch_size, wv, err) ||
            get_int(vc, "num_channels", c->channels, 1, 64, &c->channels, wv, err))
            return -1;
    }
    /* transformers keeps the argmax rule for configs from before its eos_token_id fix */
    c->pool_argmax = c->eos_token_id == 2;
    double ls;
    if (get_int(root, "projection_dim", c->embed_dim, 1, MAX_WIDTH, &c->embed_dim, where, err))
        return -1;
    if (pbw_json_get_float(root, "logit_scale_init_value", 2.6592, &ls, err))
        return pbw_err_prefix(err, "%s: ", where);
    c->logit_scale = (float)ls;
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* loading                                                                                     */

typedef struct loader {
    pbw_arena *a;   /* the model's arena */
    pbw_arena tmp;  /* for tensors that are rearranged on load */
    const pbw_records *r;
    const char *pre; /* prefix every name carries ("", "module.", ...) */
    pbw_err *err;
    int failed;
} loader;

/* Loads tensor `fmt...` (after the prefix) with the given shape into the model arena (or the
 * temporary arena when tmp). After the first failure it does nothing. */
static pbw_tensor *vget(loader *L, int tmp, int ndim, const int64_t *shape, const char *fmt,
                        va_list ap) {
    if (L->failed) return NULL;
    char name[400];
    vsnprintf(name, sizeof name, fmt, ap);
    pbw_tensor *t = pbw_weight_get(tmp ? &L->tmp : L->a, L->r, L->pre, name, ndim, shape, L->err);
    if (!t) L->failed = 1;
    return t;
}

static pbw_tensor *get(loader *L, int ndim, const int64_t *shape, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 4, 5)))
#endif
    ;
static pbw_tensor *get(loader *L, int ndim, const int64_t *shape, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    pbw_tensor *t = vget(L, 0, ndim, shape, fmt, ap);
    va_end(ap);
    return t;
}

static pbw_tensor *get_tmp(loader *L, int ndim, const int64_t *shape, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 4, 5)))
#endif
    ;
static pbw_tensor *get_tmp(loader *L, int ndim, const int64_t *shape, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    pbw_tensor *t = vget(L, 1, ndim, shape, fmt, ap);
    va_end(ap);
    return t;
}

static pbw_tensor *new_weight(loader *L, int ndim, const int64_t *shape) {
    if (L->failed) return NULL;
    pbw_tensor *t = pbw_tensor_new_in(L->a, ndim, shape, L->err);
    if (!t) L->failed = 1;
    return t;
}

/* dst (C, R) = src (R, C)^T: OpenAI's projections are stored for x @ P, we use linear(x, P^T). */
static pbw_tensor *transposed(loader *L, pbw_tensor *src) {
    if (!src) return NULL;
    int64_t R = src->shape[0], C = src->shape[1];
    pbw_tensor *t = new_weight(L, 2, (int64_t[]){C, R});
    if (!t) return NULL;
    for (int64_t i = 0; i < R; i++)
        for (int64_t j = 0; j < C; j++) t->data[j * R + i] = src->data[i * C + j];
    return t;
}

static int count_layers(const pbw_records *r, const char *pre, const char *stem) {
    char full[400];
    int n = snprintf(full, sizeof full, "%s%s", pre, stem);
    if (n < 0 || (size_t)n >= sizeof full) return 0;
    int max = -1;
    for (size_t i = 0; i < r->count; i++) {
        const char *s = r->items[i].name;
        if (strncmp(s, full, (size_t)n) || !isdigit((unsigned char)s[n])) continue;
        long v = strtol(s + n, NULL, 10);
        if (v > max && v < MAX_LAYERS) max = (int)v;
    }
    return max + 1;
}

/* One block in HF names: `base` like "vision_model.encoder.layers.3." */
static void load_block_hf(loader *L, pbw_clip_block *b, const pbw_clip_tower_config *c,
                          const char *base) {
    int64_t W = c->width, M = c->mlp;
    const int64_t vw[1] = {W}, ww[2] = {W, W};
    b->ln1_w = get(L, 1, vw, "%slayer_norm1.weight", base);
    b->ln1_b = get(L, 1, vw, "%slayer_norm1.bias", base);
    b->qkv_w = new_weight(L, 2, (int64_t[]){3 * W, W});
    b->qkv_b = new_weight(L, 1, (int64_t[]){3 * W});
    static const char *qkv[3] = {"q", "k", "v"};
    for (int i = 0; i < 3 && !L->failed; i++) {
        pbw_tensor *w = get_tmp(L, 2, ww, "%sself_attn.%s_proj.weight", base, qkv[i]);
        pbw_tensor *bb = get_tmp(L, 1, vw, "%sself_attn.%s_proj.bias", base, qkv[i]);
        if (!w || !bb) break;
        memcpy(b->qkv_w->data + i * W * W, w->data, (size_t)(W * W) * sizeof(float));
        memcpy(b->qkv_b->data + i * W, bb->data, (size_t)W * sizeof(float));
        pbw_arena_reset(&L->tmp);
    }
    b->out_w = get(L, 2, ww, "%sself_attn.out_proj.weight", base);
    b->out_b = get(L, 1, vw, "%sself_attn.out_proj.bias", base);
    b->ln2_w = get(L, 1, vw, "%slayer_norm2.weight", base);
    b->ln2_b = get(L, 1, vw, "%slayer_norm2.bias", base);
    b->fc1_w = get(L, 2, (int64_t[]){M, W}, "%smlp.fc1.weight", base);
    b->fc1_b = get(L, 1, (int64_t[]){M}, "%smlp.fc1.bias", base);
    b->fc2_w = get(L, 2, (int64_t[]){W, M}, "%smlp.fc2.weight", base);
    b->fc2_b = get(L, 1, vw, "%smlp.fc2.bias", base);
}

/* One block in OpenAI names: `base` like "visual.transformer.resblocks.3." */
static void load_block_openai(loader *L, pbw_clip_block *b, const pbw_clip_tower_config *c,
                              const char *base) {
    int64_t W = c->width, M = c->mlp;
    const int64_t vw[1] = {W}, ww[2] = {W, W};
    b->ln1_w = get(L, 1, vw, "%sln_1.weight", base);
    b->ln1_b = get(L, 1, vw, "%sln_1.bias", base);
    b->qkv_w = get(L, 2, (int64_t[]){3 * W, W}, "%sattn.in_proj_weight", base);
    b->qkv_b = get(L, 1, (int64_t[]){3 * W}, "%sattn.in_proj_bias", base);
    b->out_w = get(L, 2, ww, "%sattn.out_proj.weight", base);
    b->out_b = get(L, 1, vw, "%sattn.out_proj.bias", base);
    b->ln2_w = get(L, 1, vw, "%sln_2.weight", base);
    b->ln2_b = get(L, 1, vw, "%sln_2.bias", base);
    b->fc1_w = get(L, 2, (int64_t[]){M, W}, "%smlp.c_fc.weight", base);
    b->fc1_b = get(L, 1, (int64_t[]){M}, "%smlp.c_fc.bias", base);
    b->fc2_w = get(L, 2, (int64_t[]){W, M}, "%smlp.c_proj.weight", base);
    b->fc2_b = get(L, 1, vw, "%smlp.c_proj.bias", base);
}

static pbw_clip_block *new_blocks(loader *L, int n) {
    if (L->failed) return NULL;
    pbw_clip_block *b = pbw_arena_calloc(L->a, (size_t)n * sizeof *b);
    if (!b) {
        pbw_err_set(L->err, "out of memory for %d blocks", n);
        L->failed = 1;
    }
    return b;
}

static float load_logit_scale(loader *L, float dflt) {
    if (L->failed) return dflt;
    int nd;
    int64_t shape[8];
    if (pbw_weight_shape(L->r, L->pre, "logit_scale", &nd, shape)) return dflt;
    if (nd > 1 || (nd == 1 && shape[0] != 1)) {
        pbw_err_set(L->err, "tensor '%slogit_scale' must hold one value", L->pre);
        L->failed = 1;
        return dflt;
    }
    pbw_tensor *t = get_tmp(L, nd, shape, "logit_scale");
    float v = t ? t->data[0] : dflt;
    pbw_arena_reset(&L->tmp);
    return v;
}

/* Requires a shape from the checkpoint (for OpenAI files, whose sizes all come from shapes). */
static int shape_of(loader *L, const char *name, int want_nd, int64_t *shape) {
    if (L->failed) return -1;
    int nd;
    if (pbw_weight_shape(L->r, L->pre, name, &nd, shape)) {
        pbw_err_set(L->err, "tensor '%s%s' is missing from the checkpoint", L->pre, name);
        L->failed = 1;
        return -1;
    }
    if (nd != want_nd) {
        pbw_err_set(L->err, "tensor '%s%s' has %d dims, expected %d", L->pre, name, nd, want_nd);
        L->failed = 1;
        return -1;
    }
    for (int i = 0; i < nd; i++)
        if (shape[i] < 1 || shape[i] > 8 * MAX_WIDTH * 8) {
            pbw_err_set(L->err, "tensor '%s%s' has an implausible size %lld", L->pre, name,
                        (long long)shape[i]);
            L->failed = 1;
            return -1;
        }
    return 0;
}

static int load_hf(loader *L, pbw_clip *m) {
    pbw_clip_config *c = &m->cfg;
    const pbw_clip_tower_config *v = &c->vision, *t = &c->text;
    int64_t W = v->width, grid = c->image_size / c->patch_size;
    if (grid < 1 || c->image_size % c->patch_size)
        return pbw_err_set(L->err, "vision image_size %d is not a multiple of patch_size %d",
                           c->image_size, c->patch_size);
    m->patch_w = get(L, 4, (int64_t[]){W, c->channels, c->patch_size, c->patch_size},
                     "vision_model.embeddings.patch_embedding.weight");
    m->class_emb = get(L, 1, (int64_t[]){W}, "vision_model.embeddings.class_embedding");
    m->vis_pos = get(L, 2, (int64_t[]){grid * grid + 1, W},
                     "vision_model.embeddings.position_embedding.weight");
    m->ln_pre_w = get(L, 1, (int64_t[]){W}, "vision_model.pre_layrnorm.weight");
    m->ln_pre_b = get(L, 1, (int64_t[]){W}, "vision_model.pre_layrnorm.bias");
    m->vis_blocks = new_blocks(L, v->layers);
    for (int i = 0; i < v->layers && !L->failed; i++) {
        char base[96];
        snprintf(base, sizeof base, "vision_model.encoder.layers.%d.", i);
        load_block_hf(L, &m->vis_blocks[i], v, base);
    }
    m->ln_post_w = get(L, 1, (int64_t[]){W}, "vision_model.post_layernorm.weight");
    m->ln_post_b = get(L, 1, (int64_t[]){W}, "vision_model.post_layernorm.bias");
    m->vis_proj = get(L, 2, (int64_t[]){c->embed_dim, W}, "visual_projection.weight");

    int64_t Wt = t->width;
    m->tok_emb = get(L, 2, (int64_t[]){c->vocab_size, Wt}, "text_model.embeddings.token_embedding.weight");
    m->txt_pos = get(L, 2, (int64_t[]){c->context_length, Wt},
                     "text_model.embeddings.position_embedding.weight");
    m->txt_blocks = new_blocks(L, t->layers);
    for (int i = 0; i < t->layers && !L->failed; i++) {
        char base[96];
        snprintf(base, sizeof base, "text_model.encoder.layers.%d.", i);
        load_block_hf(L, &m->txt_blocks[i], t, base);
    }
    m->ln_final_w = get(L, 1, (int64_t[]){Wt}, "text_model.final_layer_norm.weight");
    m->ln_final_b = get(L, 1, (int64_t[]){Wt}, "text_model.final_layer_norm.bias");
    m->txt_proj = get(L, 2, (int64_t[]){c->embed_dim, Wt}, "text_projection.weight");
    c->logit_scale = load_logit_scale(L, c->logit_scale);
    return L->failed ? -1 : 0;
}

/* HF names without a config.json: sizes from shapes, the rest from transformers' defaults
 * except heads, which follow OpenAI's rule (width / 64). */
static int infer_hf_config(loader *L, pbw_clip_config *c) {
    int64_t s[8];
    if (shape_of(L, "vision_model.embeddings.patch_embedding.weight", 4, s)) return -1;
    c->vision.width = (int)s[0];
    c->channels = (int)s[1];
    c->patch_size = (int)s[3];
    if (shape_of(L, "vision_model.embeddings.position_embedding.weight", 2, s)) return -1;
    int64_t grid = (int64_t)llround(sqrt((double)(s[0] - 1)));
    c->image_size = (int)(grid * c->patch_size);
    if (shape_of(L, "vision_model.encoder.layers.0.mlp.fc1.weight", 2, s)) return -1;
    c->vision.mlp = (int)s[0];
    c->vision.layers = count_layers(L->r, L->pre, "vision_model.encoder.layers.");
    if (shape_of(L, "text_model.embeddings.token_embedding.weight", 2, s)) return -1;
    c->vocab_size = (int)s[0];
    c->text.width = (int)s[1];
    if (shape_of(L, "text_model.embeddings.position_embedding.weight", 2, s)) return -1;
    c->context_length = (int)s[0];
    if (shape_of(L, "text_model.encoder.layers.0.mlp.fc1.weight", 2, s)) return -1;
    c->text.mlp = (int)s[0];
    c->text.layers = count_layers(L->r, L->pre, "text_model.encoder.layers.");
    if (shape_of(L, "visual_projection.weight", 2, s)) return -1;
    c->embed_dim = (int)s[0];
    c->vision.heads = c->vision.width / 64 > 0 ? c->vision.width / 64 : 1;
    c->text.heads = c->text.width / 64 > 0 ? c->text.width / 64 : 1;
    return 0;
}

/* OpenAI / open_clip names: every size from shapes, as OpenAI's build_model does. An
 * open_clip_config.json (model_cfg) may set the activation and the text heads. */
static int infer_openai_config(loader *L, pbw_clip_config *c, json_object *oc, const char *where) {
    int64_t s[8];
    if (shape_of(L, "visual.conv1.weight", 4, s)) return -1;
    c->vision.width = (int)s[0];
    c->channels = (int)s[1];
    c->patch_size = (int)s[3];
    if (s[2] != s[3]) return pbw_err_set(L->err, "visual.conv1.weight: the patch is not square");
    if (shape_of(L, "visual.positional_embedding", 2, s)) return -1;
    int64_t grid = (int64_t)llround(sqrt((double)(s[0] - 1)));
    if (grid * grid + 1 != s[0])
        return pbw_err_set(L->err, "visual.positional_embedding: %lld positions is not a square grid plus one",
                           (long long)s[0]);
    c->image_size = (int)(grid * c->patch_size);
    c->vision.layers = count_layers(L->r, L->pre, "visual.transformer.resblocks.");
    if (shape_of(L, "visual.transformer.resblocks.0.mlp.c_fc.weight", 2, s)) return -1;
    c->vision.mlp = (int)s[0];
    if (shape_of(L, "text_projection", 2, s)) return -1;
    c->embed_dim = (int)s[1];
    if (shape_of(L, "positional_embedding", 2, s)) return -1;
    c->context_length = (int)s[0];
    if (shape_of(L, "token_embedding.weight", 2, s)) return -1;
    c->vocab_size = (int)s[0];
    if (shape_of(L, "ln_final.weight", 1, s)) return -1;
    c->text.width = (int)s[0];
    c->text.layers = count_layers(L->r, L->pre, "transformer.resblocks.");
    if (shape_of(L, "transformer.resblocks.0.mlp.c_fc.weight", 2, s)) return -1;
    c->text.mlp = (int)s[0];
    c->vision.heads = c->vision.width / 64 > 0 ? c->vision.width / 64 : 1;
    c->text.heads = c->text.width / 64 > 0 ? c->text.width / 64 : 1;
    c->vision.act = c->text.act = PBW_CLIP_QUICK_GELU;
    c->vision.ln_eps = c->text.ln_eps = 1e-5f;
    c->pool_argmax = 1;
    c->logit_scale = logf(1.0f / 0.07f);
    json_object *mc = oc ? pbw_json_get_object(oc, "model_cfg") : NULL;
    if (mc) { /* open_clip: quick_gelu defaults to false, heads to 8, head_width to 64 */
        int qg, hw = 64;
        json_object *vc = pbw_json_get_object(mc, "vision_cfg");
        json_object *tc = pbw_json_get_object(mc, "text_cfg");
        if (pbw_json_get_bool(mc, "quick_gelu", 0, &qg, L->err)) return pbw_err_prefix(L->err, "%s: ", where);
        c->vision.act = c->text.act = qg ? PBW_CLIP_QUICK_GELU : PBW_CLIP_GELU;
        if (vc && get_int(vc, "head_width", 64, 1, MAX_WIDTH, &hw, where, L->err)) return -1;
        c->vision.heads = c->vision.width / hw > 0 ? c->vision.width / hw : 1;
        if (tc && get_int(tc, "heads", 8, 1, MAX_WIDTH, &c->text.heads, where, L->err)) return -1;
        if (!tc) c->text.heads = 8;
    }
    if (c->vision.layers < 1 || c->text.layers < 1)
        return pbw_err_set(L->err, "no transformer blocks found (visual.transformer.resblocks.N / transformer.resblocks.N)");
    return 0;
}

static int load_openai(loader *L, pbw_clip *m) {
    pbw_clip_config *c = &m->cfg;
    const pbw_clip_tower_config *v = &c->vision, *t = &c->text;
    int64_t W = v->width, grid = c->image_size / c->patch_size, E = c->embed_dim;
    m->patch_w = get(L, 4, (int64_t[]){W, c->channels, c->patch_size, c->patch_size}, "visual.conv1.weight");
    m->class_emb = get(L, 1, (int64_t[]){W}, "visual.class_embedding");
    m->vis_pos = get(L, 2, (int64_t[]){grid * grid + 1, W}, "visual.positional_embedding");
    m->ln_pre_w = get(L, 1, (int64_t[]){W}, "visual.ln_pre.weight");
    m->ln_pre_b = get(L, 1, (int64_t[]){W}, "visual.ln_pre.bias");
    m->vis_blocks = new_blocks(L, v->layers);
    for (int i = 0; i < v->layers && !L->failed; i++) {
        char base[96];
        snprintf(base, sizeof base, "visual.transformer.resblocks.%d.", i);
        load_block_openai(L, &m->vis_blocks[i], v, base);
    }
    m->ln_post_w = get(L, 1, (int64_t[]){W}, "visual.ln_post.weight");
    m->ln_post_b = get(L, 1, (int64_t[]){W}, "visual.ln_post.bias");
    m->vis_proj = transposed(L, get_tmp(L, 2, (int64_t[]){W, E}, "visual.proj"));
    pbw_arena_reset(&L->tmp);

    int64_t Wt = t->width;
    m->tok_emb = get(L, 2, (int64_t[]){c->vocab_size, Wt}, "token_embedding.weight");
    m->txt_pos = get(L, 2, (int64_t[]){c->context_length, Wt}, "positional_embedding");
    m->txt_blocks = new_blocks(L, t->layers);
    for (int i = 0; i < t->layers && !L->failed; i++) {
        char base[96];
        snprintf(base, sizeof base, "transformer.resblocks.%d.", i);
        load_block_openai(L, &m->txt_blocks[i], t, base);
    }
    m->ln_final_w = get(L, 1, (int64_t[]){Wt}, "ln_final.weight");
    m->ln_final_b = get(L, 1, (int64_t[]){Wt}, "ln_final.bias");
    m->txt_proj = transposed(L, get_tmp(L, 2, (int64_t[]){Wt, E}, "text_projection"));
    pbw_arena_reset(&L->tmp);
    c->logit_scale = load_logit_scale(L, c->logit_scale);
    return L->failed ? -1 : 0;
}

/* The prefix every name carries, found from the one tensor each naming must have. */
static int find_naming(const pbw_records *r, char *pre, size_t len, int *openai) {
    static const char *keys[2] = {"vision_model.embeddings.patch_embedding.weight",
                                  "visual.conv1.weight"};
    for (int k = 0; k < 2; k++) {
        size_t kl = strlen(keys[k]);
        for (size_t i = 0; i < r->count; i++) {
            const char *s = r->items[i].name;
            size_t sl = strlen(s);
            if (sl < kl || strcmp(s + sl - kl, keys[k])) continue;
            size_t pl = sl - kl;
            if (pl && s[pl - 1] != '.') continue;
            if (pl >= len) continue;
            memcpy(pre, s, pl);
            pre[pl] = 0;
            *openai = k == 1;
            return 0;
        }
    }
    return -1;
}

static int check_config(const pbw_clip_config *c, pbw_err *err) {
    const pbw_clip_tower_config *t[2] = {&c->vision, &c->text};
    static const char *names[2] = {"vision", "text"};
    for (int i = 0; i < 2; i++) {
        if (t[i]->width < 1 || t[i]->width > MAX_WIDTH || t[i]->layers < 1 ||
            t[i]->layers > MAX_LAYERS || t[i]->heads < 1 || t[i]->width % t[i]->heads ||
            t[i]->mlp < 1 || t[i]->mlp > 8 * MAX_WIDTH)
            return pbw_err_set(err, "%s tower: width %d, %d layers, %d heads, mlp %d do not form a transformer",
                               names[i], t[i]->width, t[i]->layers, t[i]->heads, t[i]->mlp);
    }
    if (c->patch_size < 1 || c->image_size < c->patch_size || c->image_size % c->patch_size ||
        c->image_size > 8192 || c->channels < 1 || c->channels > 64)
        return pbw_err_set(err, "vision input: image_size %d, patch_size %d, %d channels are inconsistent",
                           c->image_size, c->patch_size, c->channels);
    if (c->context_length < 1 || c->context_length > MAX_TOKENS || c->vocab_size < 1 ||
        c->embed_dim < 1 || c->embed_dim > MAX_WIDTH)
        return pbw_err_set(err, "text input: context %d, vocab %d, embed_dim %d are inconsistent",
                           c->context_length, c->vocab_size, c->embed_dim);
    return 0;
}

int pbw_clip_from_records(const pbw_records *recs, const char *config_json, const char *where,
                          pbw_clip **out, pbw_err *err) {
    *out = NULL;
    char pre[256];
    int openai = 0;
    if (find_naming(recs, pre, sizeof pre, &openai))
        return pbw_err_set(err, "%s: no CLIP vision tower found (expected "
                                "'vision_model.embeddings.patch_embedding.weight' or "
                                "'visual.conv1.weight')", where);
    json_object *cfg = NULL;
    if (config_json) {
        cfg = pbw_json_parse(config_json, strlen(config_json), where, err);
        if (!cfg) return -1;
    }
    pbw_clip *m = calloc(1, sizeof *m);
    if (!m) {
        if (cfg) json_object_put(cfg);
        return pbw_err_set(err, "out of memory");
    }
    pbw_arena_init(&m->arena, (size_t)64 << 20);
    m->arena.huge_pages = 1;
    m->cfg = default_config();
    loader L;
    memset(&L, 0, sizeof L);
    L.a = &m->arena;
    L.r = recs;
    L.pre = pre;
    L.err = err;
    pbw_arena_init(&L.tmp, (size_t)4 << 20);
    int rc;
    if (openai) {
        snprintf(m->format, sizeof m->format, "openai");
        rc = infer_openai_config(&L, &m->cfg, cfg, where);
        if (!rc) rc = check_config(&m->cfg, err);
        if (!rc) rc = load_openai(&L, m);
    } else {
        snprintf(m->format, sizeof m->format, "hf");
        if (cfg && !pbw_json_get_object(cfg, "model_cfg"))
            rc = parse_hf_config(cfg, &m->cfg, where, err);
        else
            rc = infer_hf_config(&L, &m->cfg);
        if (!rc) rc = check_config(&m->cfg, err);
        if (!rc) rc = load_hf(&L, m);
    }
    pbw_arena_free(&L.tmp);
    if (cfg) json_object_put(cfg);
    if (rc) {
        pbw_err_prefix(err, "%s: ", where);
        pbw_clip_free(m);
        return -1;
    }
    *out = m;
    return 0;
}

static int is_dir(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}
static int is_file(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISREG(st.st_mode);
}

/* Reads dir/name into a malloc'd string when the file exists; -1 only on a read error. */
static int read_config(const char *dir, const char *name, char **text, pbw_err *err) {
    char p[4096];
    if (snprintf(p, sizeof p, "%s/%s", dir, name) >= (int)sizeof p) return 0;
    if (!is_file(p)) return 0;
    void *buf;
    size_t len;
    if (pbw_file_read(p, PBW_JSON_MAX_FILE, &buf, &len, err)) return -1;
    *text = buf;
    return 0;
}

int pbw_clip_load(const char *path, pbw_clip **out, pbw_err *err) {
    *out = NULL;
    char dir[4096], weights[4096];
    if (is_dir(path)) {
        static const char *names[] = {"model.safetensors", "pytorch_model.bin",
                                      "open_clip_model.safetensors",
                                      "open_clip_pytorch_model.bin"};
        snprintf(dir, sizeof dir, "%s", path);
        weights[0] = 0;
        for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
            snprintf(weights, sizeof weights, "%s/%s", path, names[i]);
            if (is_file(weights)) break;
            weights[0] = 0;
        }
        if (!weights[0])
            return pbw_err_set(err, "%s: no weights found (model.safetensors, pytorch_model.bin, "
                                    "open_clip_model.safetensors or open_clip_pytorch_model.bin)",
                               path);
    } else if (is_file(path)) {
        snprintf(weights, sizeof weights, "%s", path);
        snprintf(dir, sizeof dir, "%s", path);
        char *slash = strrchr(dir, '/');
        if (slash) *slash = 0;
        else snprintf(dir, sizeof dir, ".");
    } else {
        return pbw_err_set(err, "%s: %s", path, errno ? strerror(errno) : "not found");
    }
    char *cfg = NULL;
    if (read_config(dir, "config.json", &cfg, err)) return -1;
    if (!cfg && read_config(dir, "open_clip_config.json", &cfg, err)) return -1;
    pbw_records recs;
    if (pbw_load_checkpoint(weights, &recs, err)) {
        free(cfg);
        return -1;
    }
    int rc = pbw_clip_from_records(&recs, cfg, weights, out, err);
    pbw_records_free(&recs);
    free(cfg);
    return rc;
}

int pbw_clip_to_device(pbw_clip *m, pbw_ctx *ctx, pbw_err *err) {
    return pbw_arena_to_device(&m->arena, ctx, err);
}

void pbw_clip_free(pbw_clip *m) {
    if (!m) return;
    pbw_arena_free(&m->arena);
    free(m);
}

/* ------------------------------------------------------------------------------------------ */
/* forward                                                                                     */

/* x (B,T,W) -> (B,Tq,W): x + attn(ln1(x)), then + mlp(ln2(.)), for the first Tq positions
 * (all of them but in the image tower's last block, whose only used output is the class
 * token: every token still serves as key and value there). */
static pbw_tensor *block_forward(pbw_ctx *ctx, const pbw_clip_block *b,
                                 const pbw_clip_tower_config *c, pbw_tensor *x, int causal,
                                 int64_t Tq) {
    if (!x) return NULL;
    int64_t T = x->shape[1];
    /* each layer norm and the product after it as one op (fused on a GPU in half precision) */
    pbw_tensor *qkv = pbw_layer_norm_linear(ctx, x, b->ln1_w, b->ln1_b, c->ln_eps, b->qkv_w,
                                            b->qkv_b, 0);                 /* (B,T,3W) */
    pbw_tensor *a = pbw_attention_qkv(ctx, qkv, c->heads, Tq, causal, 0); /* (B,Tq,W) */
    if (Tq < T) x = pbw_slice(ctx, x, 1, 0, Tq, 1);
    x = pbw_linear_add_into(ctx, a, b->out_w, b->out_b, x); /* x itself without gradients */
    const int quick = c->act != PBW_CLIP_GELU;
    pbw_tensor *h = pbw_layer_norm_linear(ctx, x, b->ln2_w, b->ln2_b, c->ln_eps, b->fc1_w,
                                          b->fc1_b, quick);
    if (!quick) h = pbw_gelu(ctx, h); /* (B,Tq,M) */
    return pbw_linear_add_into(ctx, h, b->fc2_w, b->fc2_b, x);
}

/* The blocks of a tower, each one's temporaries freed as it ends when no gradient is recorded.
 * Inside them every product runs on half operands on a GPU in bf16/fp16, so the activations
 * between products stay in that half type (pbw_ctx_set_half_activations). Without gradients
 * the residual adds write over the residual stream (pbw_linear_add_into: x, the tower's own
 * activation, is consumed), which then stays in the half type too, as CLIP's own fp16 forward
 * keeps it; with gradients it stays fp32. n_last: the positions the last block computes. */
static pbw_tensor *blocks_forward(pbw_ctx *ctx, const pbw_clip_block *blocks,
                                  const pbw_clip_tower_config *c, pbw_tensor *x, int causal,
                                  int64_t n_last) {
    int half = pbw_ctx_set_half_activations(ctx, 1);
    for (int i = 0; i < c->layers && x; i++) {
        pbw_ctx_mark mk = pbw_ctx_mark_get(ctx);
        pbw_tensor *in = x;
        x = block_forward(ctx, &blocks[i], c, x, causal, i + 1 < c->layers ? x->shape[1] : n_last);
        /* the residual adds wrote over the input (no gradients): x predates the mark */
        if (pbw_ctx_release(ctx, mk, x == in ? 0 : 1, &x)) x = NULL;
    }
    pbw_ctx_set_half_activations(ctx, half);
    return x;
}

pbw_tensor *pbw_clip_patches(pbw_ctx *ctx, pbw_tensor *x, int P) {
    if (!x) return NULL;
    char s[64];
    if (x->ndim != 4 || P < 1 || x->shape[2] % P || x->shape[3] % P)
        return pbw_ctx_fail(ctx, "clip patches: images %s are not (B,C,S,S') with S and S' "
                            "multiples of %d", pbw_shape_str(x, s, sizeof s), P);
    const int64_t B = x->shape[0], C = x->shape[1], gy = x->shape[2] / P, gx = x->shape[3] / P;
    x = pbw_reshape(ctx, x, 4, (int64_t[]){B * C * gy, P, gx, P});
    x = pbw_permute(ctx, x, (int[]){0, 2, 1, 3});                        /* (B*C*gy,gx,P,P) */
    x = pbw_reshape(ctx, x, 4, (int64_t[]){B, C, gy * gx, (int64_t)P * P});
    x = pbw_permute(ctx, x, (int[]){0, 2, 1, 3});                        /* (B,gy*gx,C,P*P) */
    return pbw_reshape(ctx, x, 3, (int64_t[]){B, gy * gx, C * P * P});
}

pbw_tensor *pbw_clip_encode_image(pbw_ctx *ctx, const pbw_clip *m, pbw_tensor *px) {
    if (pbw_ctx_failed(ctx)) return NULL;
    if (!px) return pbw_ctx_fail(ctx, "clip image: pixels are NULL");
    const pbw_clip_config *c = &m->cfg;
    int64_t S = c->image_size, P = c->patch_size, W = c->vision.width, g = S / P;
    int64_t C = c->channels;
    char s[64];
    const int patches = px->ndim == 3 && px->shape[1] == g * g && px->shape[2] == C * P * P;
    if (!patches && (px->ndim != 4 || px->shape[1] != C || px->shape[2] != S ||
                     px->shape[3] != S))
        return pbw_ctx_fail(ctx, "clip image: pixels %s must be (B,%d,%lld,%lld) or cut into "
                            "patches (B,%lld,%lld)", pbw_shape_str(px, s, sizeof s), c->channels,
                            (long long)S, (long long)S, (long long)(g * g), (long long)(C * P * P));
    if (px->shape[0] < 1)
        return pbw_ctx_fail(ctx, "clip image: no pixels (%s)", pbw_shape_str(px, s, sizeof s));
    int64_t B = px->shape[0];
    /* The patch embedding is a convolution whose stride is its size: cut the image into
     * patches and multiply by the kernel as a (W, C*P*P) matrix, one GEMM. */
    pbw_tensor *x = patches ? px : pbw_clip_patches(ctx, px, (int)P);
    pbw_tensor *wp = pbw_reshape(ctx, m->patch_w, 2, (int64_t[]){W, C * P * P});
    x = pbw_linear(ctx, x, wp, NULL);                                    /* (B,g*g,W) */
    x = pbw_class_position(ctx, x, m->class_emb, m->vis_pos);            /* (B,T,W) */
    x = pbw_layer_norm(ctx, x, m->ln_pre_w, m->ln_pre_b, c->vision.ln_eps);
    x = blocks_forward(ctx, m->vis_blocks, &c->vision, x, 0, 1);
    if (!x) return NULL;
    x = pbw_reshape(ctx, x, 2, (int64_t[]){B, W});                       /* class token */
    x = pbw_layer_norm(ctx, x, m->ln_post_w, m->ln_post_b, c->vision.ln_eps);
    return pbw_linear(ctx, x, m->vis_proj, NULL);                        /* (B,E) */
}

int64_t pbw_clip_eot_position(const pbw_clip *m, const int32_t *ids, int64_t T) {
    int64_t best = 0;
    if (m->cfg.pool_argmax) { /* first occurrence of the largest id, as torch.argmax */
        for (int64_t t = 1; t < T; t++)
            if (ids[t] > ids[best]) best = t;
        return best;
    }
    for (int64_t t = 0; t < T; t++)
        if (ids[t] == m->cfg.eos_token_id) return t;
    return 0;
}

pbw_tensor *pbw_clip_encode_text(pbw_ctx *ctx, const pbw_clip *m, const int32_t *ids, int64_t B,
                                 int64_t T) {
    if (pbw_ctx_failed(ctx)) return NULL;
    const pbw_clip_config *c = &m->cfg;
    if (!ids || B < 1 || T < 1 || T > c->context_length)
        return pbw_ctx_fail(ctx, "clip text: %lld x %lld ids (need at least one row of 1 to %d ids)",
                            (long long)B, (long long)T, c->context_length);
    for (int64_t i = 0; i < B * T; i++)
        if (ids[i] < 0 || ids[i] >= c->vocab_size)
            return pbw_ctx_fail(ctx, "clip text: token id %d (text %lld, position %lld) is outside the vocabulary [0,%d)",
                                (int)ids[i], (long long)(i / T), (long long)(i % T), c->vocab_size);
    pbw_arena *ar = pbw_ctx_arena(ctx);
    int64_t *pos = pbw_arena_alloc(ar, (size_t)B * sizeof(int64_t));
    if (!pos) return pbw_ctx_fail(ctx, "clip text: out of memory");
    int64_t Te = 1;
    for (int64_t b = 0; b < B; b++) {
        pos[b] = pbw_clip_eot_position(m, ids + b * T, T);
        if (pos[b] + 1 > Te) Te = pos[b] + 1;
    }
    /* causal attention: positions after the last end token cannot reach it */
    int32_t *cut = pbw_arena_alloc(ar, (size_t)(B * Te) * sizeof(int32_t));
    pbw_tensor **rows = pbw_arena_alloc(ar, (size_t)B * sizeof *rows);
    if (!cut || !rows) return pbw_ctx_fail(ctx, "clip text: out of memory");
    for (int64_t b = 0; b < B; b++) memcpy(cut + b * Te, ids + b * T, (size_t)Te * sizeof(int32_t));
    int64_t W = c->text.width;
    pbw_tensor *x = pbw_embedding(ctx, m->tok_emb, cut, 2, (int64_t[]){B, Te}); /* (B,Te,W) */
    x = pbw_add(ctx, x, pbw_slice(ctx, m->txt_pos, 0, 0, Te, 1));
    x = blocks_forward(ctx, m->txt_blocks, &c->text, x, 1, Te);
    if (!x) return NULL;
    for (int64_t b = 0; b < B; b++)
        rows[b] = pbw_slice(ctx, pbw_slice(ctx, x, 0, b, b + 1, 1), 1, pos[b], pos[b] + 1, 1);
    x = B == 1 ? rows[0] : pbw_concat(ctx, (int)B, rows, 0);             /* (B,1,W) */
    x = pbw_reshape(ctx, x, 2, (int64_t[]){B, W});
    x = pbw_layer_norm(ctx, x, m->ln_final_w, m->ln_final_b, c->text.ln_eps);
    return pbw_linear(ctx, x, m->txt_proj, NULL);                         /* (B,E) */
}

float pbw_cosine_f32(const float *a, const float *b, int64_t n) {
    double d = 0, na = 0, nb = 0;
    for (int64_t i = 0; i < n; i++) {
        d += (double)a[i] * b[i];
        na += (double)a[i] * a[i];
        nb += (double)b[i] * b[i];
    }
    return na > 0 && nb > 0 ? (float)(d / sqrt(na * nb)) : 0.0f;
}

/* ------------------------------------------------------------------------------------------ */
/* preprocessing: PIL's antialiased bicubic resampling on 8-bit images                         */

/* PIL's bicubic kernel (a = -0.5). */
static double pil_bicubic(double x) {
    const double a = -0.5;
    if (x < 0) x = -x;
    if (x < 1) return ((a + 2) * x - (a + 3)) * x * x + 1;
    if (x < 2) return (((x - 5) * x + 8) * x - 4) * a;
    return 0;
}

#define PIL_PRECISION_BITS (32 - 8 - 2)

/* Fixed-point coefficients of one axis, as PIL's precompute_coeffs + normalize_coeffs_8bpc:
 * the filter is stretched by the downscale factor (antialiasing), normalized per output
 * sample and rounded to PIL_PRECISION_BITS fraction bits. bounds: (first input, count) per
 * output sample; kk: ksize coefficients per output sample. */
static int pil_coeffs(int in_size, int out_size, int *ksize_out, int **bounds_out,
                      int32_t **kk_out) {
    double scale = (double)in_size / out_size;
    double fscale = scale < 1 ? 1 : scale;
    double support = 2.0 * fscale;
    int ksize = (int)ceil(support) * 2 + 1;
    int *bounds = malloc((size_t)out_size * 2 * sizeof(int));
    int32_t *kk = malloc((size_t)out_size * (size_t)ksize * sizeof(int32_t));
    double *k = malloc((size_t)ksize * sizeof(double));
    if (!bounds || !kk || !k) {
        free(bounds);
        free(kk);
        free(k);
        return -1;
    }
    for (int xx = 0; xx < out_size; xx++) {
        double center = (xx + 0.5) * scale, ww = 0, ss = 1.0 / fscale;
        int xmin = (int)(center - support + 0.5), xmax = (int)(center + support + 0.5);
        if (xmin < 0) xmin = 0;
        if (xmax > in_size) xmax = in_size;
        xmax -= xmin;
        for (int x = 0; x < xmax; x++) {
            k[x] = pil_bicubic((x + xmin - center + 0.5) * ss);
            ww += k[x];
        }
        for (int x = 0; x < ksize; x++) {
            double v = x < xmax ? (ww != 0 ? k[x] / ww : k[x]) : 0;
            kk[xx * ksize + x] = (int32_t)(v < 0 ? -0.5 + v * (1 << PIL_PRECISION_BITS)
                                                 : 0.5 + v * (1 << PIL_PRECISION_BITS));
        }
        bounds[2 * xx] = xmin;
        bounds[2 * xx + 1] = xmax;
    }
    free(k);
    *ksize_out = ksize;
    *bounds_out = bounds;
    *kk_out = kk;
    return 0;
}

static uint8_t pil_clip8(int64_t v) {
    if (v >= ((int64_t)1 << PIL_PRECISION_BITS << 8)) return 255;
    if (v <= 0) return 0;
    return (uint8_t)(v >> PIL_PRECISION_BITS);
}

/* Resamples one axis of an interleaved 8-bit image (h, w, c): horizontal when `horiz`. */
static int pil_pass(const uint8_t *in, int w, int h, int c, int out_len, int horiz,
                    uint8_t **out) {
    int in_len = horiz ? w : h, ksize, *bounds;
    int32_t *kk;
    if (pil_coeffs(in_len, out_len, &ksize, &bounds, &kk)) return -1;
    int ow = horiz ? out_len : w, oh = horiz ? h : out_len;
    uint8_t *o = malloc((size_t)ow * (size_t)oh * (size_t)c);
    if (!o) {
        free(bounds);
        free(kk);
        return -1;
    }
    for (int y = 0; y < oh; y++)
        for (int x = 0; x < ow; x++) {
            int i = horiz ? x : y;
            int lo = bounds[2 * i], n = bounds[2 * i + 1];
            const int32_t *k = kk + (size_t)i * ksize;
            for (int ch = 0; ch < c; ch++) {
                int64_t acc = (int64_t)1 << (PIL_PRECISION_BITS - 1);
                for (int j = 0; j < n; j++) {
                    int sx = horiz ? lo + j : x, sy = horiz ? y : lo + j;
                    acc += (int64_t)in[((size_t)sy * w + sx) * c + ch] * k[j];
                }
                o[((size_t)y * ow + x) * c + ch] = pil_clip8(acc);
            }
        }
    free(bounds);
    free(kk);
    *out = o;
    return 0;
}

int pbw_clip_preprocess(const pbw_image *im, int size, float *out, pbw_err *err) {
    if (!im || !im->data || im->w < 1 || im->h < 1 || (im->c != 3 && im->c != 4))
        return pbw_err_set(err, "preprocess: not an RGB or RGBA image");
    if (size < 1 || size > 8192) return pbw_err_set(err, "preprocess: bad size %d", size);
    /* shortest side to `size`, the other int(size * long / short), as transformers */
    int w = im->w, h = im->h, nw, nh;
    if (w <= h) {
        nw = size;
        nh = (int)((double)size * h / w);
    } else {
        nh = size;
        nw = (int)((double)size * w / h);
    }
    if (nh < size) nh = size;
    if (nw < size) nw = size;
    /* drop alpha first: PIL's convert("RGB") ignores it */
    uint8_t *rgb = malloc((size_t)w * (size_t)h * 3);
    if (!rgb) return pbw_err_set(err, "preprocess: out of memory");
    for (size_t i = 0; i < (size_t)w * (size_t)h; i++)
        for (int ch = 0; ch < 3; ch++) rgb[i * 3 + ch] = im->data[i * (size_t)im->c + ch];
    uint8_t *cur = rgb, *next = NULL;
    int cw = w, chh = h;
    if (nw != cw) { /* PIL resamples horizontally first */
        if (pil_pass(cur, cw, chh, 3, nw, 1, &next)) goto oom;
        free(cur);
        cur = next;
        cw = nw;
    }
    if (nh != chh) {
        if (pil_pass(cur, cw, chh, 3, nh, 0, &next)) goto oom;
        free(cur);
        cur = next;
        chh = nh;
    }
    int top = (chh - size) / 2, left = (cw - size) / 2;
    for (int ch = 0; ch < 3; ch++)
        for (int y = 0; y < size; y++)
            for (int x = 0; x < size; x++) {
                float v = (float)(cur[((size_t)(y + top) * cw + (x + left)) * 3 + ch] / 255.0);
                out[((size_t)ch * size + y) * size + x] = (v - pbw_clip_mean[ch]) / pbw_clip_std[ch];
            }
    free(cur);
    return 0;
oom:
    free(cur);
    return pbw_err_set(err, "preprocess: out of memory resizing a %dx%d image", w, h);
}
