/* pbw_clip.h: CLIP's image and text encoders (ViT image tower, causal text transformer), loaded
 * from Hugging Face or OpenAI / open_clip checkpoints into one internal model.
 *
 *     pbw_clip *clip; pbw_err err;
 *     if (pbw_clip_load("clip-vit-base-patch32", &clip, &err)) { puts(err.msg); return 1; }
 *     pbw_ctx *ctx = pbw_ctx_new(PBW_DEV_CPU, &err);
 *     pbw_tensor *px = pbw_tensor_new(ctx, 4, (int64_t[]){B, 3, 224, 224}); // CLIP-normalized
 *     px->requires_grad = 1;                                  // we want d loss / d pixels
 *     pbw_tensor *img = pbw_clip_encode_image(ctx, clip, px);               // (B, E)
 *     pbw_tensor *txt = pbw_clip_encode_text(ctx, clip, ids, 1, 77);         // (1, E)
 *     pbw_tensor *cos = pbw_cosine(ctx, img, txt);                           // (B)
 *     pbw_tensor *loss = pbw_sum_all(ctx, pbw_affine(ctx, cos, -1, 1));      // sum(1 - cos)
 *     if (pbw_backward(ctx, loss, NULL, &err)) ...;           // px->grad: (B,3,224,224)
 *     pbw_ctx_reset(ctx);  pbw_ctx_free(ctx);  pbw_clip_free(clip);
 *
 * What a checkpoint may be (pbw_clip_load's `path`):
 *   - a Hugging Face directory: config.json (CLIPConfig: text_config, vision_config,
 *     projection_dim, logit_scale_init_value) and model.safetensors or pytorch_model.bin with
 *     CLIPModel's names (vision_model.*, text_model.*, visual_projection, text_projection,
 *     logit_scale). Missing config keys take transformers' CLIPTextConfig / CLIPVisionConfig
 *     defaults; every size is checked against the weights' shapes.
 *   - an OpenAI / open_clip state dict (visual.conv1.weight, visual.transformer.resblocks.N.*,
 *     token_embedding.weight, transformer.resblocks.N.*, text_projection, logit_scale, ...),
 *     as a file or a directory holding open_clip_model.safetensors /
 *     open_clip_pytorch_model.bin / model.safetensors / pytorch_model.bin. The architecture is
 *     inferred from shapes as OpenAI's build_model does (heads = width / 64, QuickGELU) unless
 *     an open_clip_config.json beside the weights says otherwise (quick_gelu, heads).
 *   A checkpoint whose names all carry one prefix ("module.", "state_dict.") is accepted too.
 *   OpenAI's TorchScript archives (the .pt files its clip package downloads) load as well:
 *   the checkpoint reader names a scripted module's attributes as its state dict would.
 *
 * Numerics follow transformers' CLIPModel: pre-LN residual blocks, layer norm eps from the
 * config, attention scale 1/sqrt(head_dim), QuickGELU (x * sigmoid(1.702 x)) or exact GELU,
 * post-LN on the class token, projections without bias. The text embedding is taken at the
 * end-token position: the argmax of the ids when the config's eos_token_id is 2 (old HF
 * configs) or the model comes from OpenAI naming, else the first position holding
 * eos_token_id (position 0 when there is none), exactly as transformers does. Because the text
 * attention is causal, tokens after the last end token cannot change the result, so the text
 * tower only runs up to it.
 *
 * Gradients: the weights never ask for gradients, so a backward pass computes gradients of the
 * inputs only (pixels). Embeddings are returned unnormalized.
 *
 * Ownership: pbw_clip_load allocates the model (weights in its own arena); pbw_clip_free
 * releases it. Encoders allocate their outputs in the context's activation arena and return
 * NULL (with the context failed: pbw_ctx_error) on a bad input.
 */
#ifndef PBW_CLIP_H
#define PBW_CLIP_H

#include <stdint.h>

#include "core/pbw_ops.h"
#include "formats/pbw_image.h"
#include "formats/pbw_records.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum pbw_clip_act { PBW_CLIP_QUICK_GELU = 0, PBW_CLIP_GELU = 1 } pbw_clip_act;

/* One transformer tower's shape. */
typedef struct pbw_clip_tower_config {
    int width;   /* hidden_size */
    int layers;  /* num_hidden_layers */
    int heads;   /* num_attention_heads */
    int mlp;     /* intermediate_size */
    pbw_clip_act act;
    float ln_eps;
} pbw_clip_tower_config;

typedef struct pbw_clip_config {
    pbw_clip_tower_config vision, text;
    int image_size, patch_size, channels; /* vision input */
    int vocab_size, context_length;       /* text input */
    int64_t eos_token_id;                 /* used when !pool_argmax */
    int pool_argmax;                      /* end token = argmax of the ids */
    int embed_dim;                        /* projection_dim */
    float logit_scale;                    /* log of the softmax temperature's inverse */
} pbw_clip_config;

/* One residual block; q, k and v projections are packed as OpenAI stores them. */
typedef struct pbw_clip_block {
    pbw_tensor *ln1_w, *ln1_b;  /* (W) */
    pbw_tensor *qkv_w, *qkv_b;  /* (3W, W), (3W): rows q then k then v */
    pbw_tensor *out_w, *out_b;  /* (W, W), (W) */
    pbw_tensor *ln2_w, *ln2_b;  /* (W) */
    pbw_tensor *fc1_w, *fc1_b;  /* (M, W), (M) */
    pbw_tensor *fc2_w, *fc2_b;  /* (W, M), (W) */
} pbw_clip_block;

typedef struct pbw_clip {
    pbw_clip_config cfg;
    char format[16]; /* "hf" or "openai" */
    /* vision tower */
    pbw_tensor *patch_w;             /* (W, C, P, P) */
    pbw_tensor *class_emb;           /* (W) */
    pbw_tensor *vis_pos;             /* (grid*grid + 1, W) */
    pbw_tensor *ln_pre_w, *ln_pre_b; /* (W) */
    pbw_clip_block *vis_blocks;      /* vision.layers */
    pbw_tensor *ln_post_w, *ln_post_b;
    pbw_tensor *vis_proj;            /* (E, W), as a linear weight */
    /* text tower */
    pbw_tensor *tok_emb;             /* (V, Wt) */
    pbw_tensor *txt_pos;             /* (context, Wt) */
    pbw_clip_block *txt_blocks;      /* text.layers */
    pbw_tensor *ln_final_w, *ln_final_b;
    pbw_tensor *txt_proj;            /* (E, Wt) */
    pbw_arena arena;                 /* owns every tensor above */
} pbw_clip;

/* CLIP's image normalization (applied by pbw_clip_preprocess; the painting loop applies it
 * itself). */
extern const float pbw_clip_mean[3], pbw_clip_std[3];

/* Loads a model from a directory or a weights file (see the top of this file). */
int pbw_clip_load(const char *path, pbw_clip **out, pbw_err *err);
/* Builds a model from records already loaded; config_json (may be NULL) is the text of an HF
 * config.json or an open_clip_config.json; `where` names the source in messages. */
int pbw_clip_from_records(const pbw_records *recs, const char *config_json, const char *where,
                          pbw_clip **out, pbw_err *err);
void pbw_clip_free(pbw_clip *m);
/* Moves the weights to the context's device (module.to(device)); no-op on the CPU. */
int pbw_clip_to_device(pbw_clip *m, pbw_ctx *ctx, pbw_err *err);

/* Image tower: pixels (B, C, S, S) already normalized with pbw_clip_mean / pbw_clip_std at the
 * model's image_size, or those pixels already cut into patches (pbw_clip_patches' output, as
 * pbw_clip_crops_patches writes it) -> image embeddings (B, E). */
pbw_tensor *pbw_clip_encode_image(pbw_ctx *ctx, const pbw_clip *m, pbw_tensor *pixels);
/* Images (B, C, S, S') cut into P x P patches for the patch embedding: (B, (S/P)(S'/P), C*P*P),
 * patches row-major, each vector channel-major then row, column (the convolution weight's
 * order). Taped (two permutes). */
pbw_tensor *pbw_clip_patches(pbw_ctx *ctx, pbw_tensor *x, int P);
/* Text tower: ids (B, T) row-major (T <= context_length, start and end tokens included, padded
 * with anything after the end token) -> text embeddings (B, E). */
pbw_tensor *pbw_clip_encode_text(pbw_ctx *ctx, const pbw_clip *m, const int32_t *ids, int64_t B,
                                 int64_t T);
/* Index of the end token of one row of ids, by the model's rule (see above). */
int64_t pbw_clip_eot_position(const pbw_clip *m, const int32_t *ids, int64_t T);

/* Cosine similarity of two float vectors of n elements (0 when either is zero). */
float pbw_cosine_f32(const float *a, const float *b, int64_t n);

/* An image file's pixels as CLIP sees them: the shortest side resized to `size` with PIL's
 * antialiased bicubic filter (what CLIP's and transformers' preprocessing use, rounded to 8
 * bits after each pass as PIL does), the center size x size crop, scaled to [0,1] and
 * normalized. out: (3, size, size) floats. Alpha is ignored. */
int pbw_clip_preprocess(const pbw_image *im, int size, float *out, pbw_err *err);

#ifdef __cplusplus
}
#endif
#endif
