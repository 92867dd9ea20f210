/* test_clip.c: CLIP encoders against transformers' CLIPModel on the small fixture written by
 * tools/reference/clip_parity.py --fixture (tests/fixtures/clip/): image and text embeddings,
 * the pixel gradient of sum_i (1 - cos(image_i, text_i)), loading the same weights under
 * OpenAI's names, CLIPImageProcessor's preprocessing, the end-token rules and error messages.
 *
 * Error measure: max|ours - ref| / max|ref| over a tensor, the one the parity script reports.
 * Tolerances: 1e-4 for embeddings and 1e-3 for the gradient, the acceptance bounds of issue 3;
 * on this 2-layer model we reach ~1e-6 (float32 rounding of differently ordered sums). */
#include <stdlib.h>
#include <string.h>

#include "core/pbw_ops.h"
#include "formats/pbw_npy.h"
#include "models/pbw_clip.h"
#include "pbw_test.h"

#define FIX "tests/fixtures/clip/"

static double rel_err(const float *a, const float *b, int64_t n) {
    double md = 0, mb = 0;
    for (int64_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (d > md || d != d) md = d != d ? INFINITY : d;
        if (fabs(b[i]) > mb) mb = fabs(b[i]);
    }
    return mb > 0 ? md / mb : md;
}

static int load_npy(const char *path, pbw_npy *a) {
    pbw_err err;
    if (pbw_npy_read(path, a, &err)) {
        fprintf(stderr, "  %s\n", err.msg);
        return -1;
    }
    return 0;
}

/* Runs both towers and the gradient on the fixture inputs; outputs are malloc'd copies. */
typedef struct clip_run {
    float *img, *txt, *grad;
    int64_t nimg, ntxt, E, npx;
} clip_run;

static int run_fixture(const pbw_clip *m, clip_run *r) {
    memset(r, 0, sizeof *r);
    pbw_npy px, ids;
    if (load_npy(FIX "pixels.npy", &px)) return -1;
    if (load_npy(FIX "ids.npy", &ids)) {
        pbw_npy_free(&px);
        return -1;
    }
    int64_t B = ids.shape[0], T = ids.shape[1];
    int32_t *iv = malloc((size_t)ids.numel * sizeof(int32_t));
    for (int64_t i = 0; i < ids.numel; i++) iv[i] = (int32_t)ids.data[i];
    pbw_err err;
    pbw_ctx *ctx = pbw_ctx_new(PBW_DEV_CPU, &err);
    pbw_tensor *x = pbw_tensor_wrap(ctx, px.data, 4, px.shape);
    x->requires_grad = 1;
    pbw_tensor *img = pbw_clip_encode_image(ctx, m, x);
    pbw_tensor *txt = pbw_clip_encode_text(ctx, m, iv, B, T);
    pbw_tensor *loss = pbw_sum_all(ctx, pbw_affine(ctx, pbw_cosine(ctx, img, txt), -1, 1));
    int rc = pbw_backward(ctx, loss, NULL, &err);
    CHECK_MSG(rc == 0, "%s", err.msg);
    if (rc == 0) {
        r->nimg = img->shape[0];
        r->ntxt = txt->shape[0];
        r->E = img->shape[1];
        r->npx = x->numel;
        r->img = malloc((size_t)img->numel * sizeof(float));
        r->txt = malloc((size_t)txt->numel * sizeof(float));
        r->grad = malloc((size_t)x->numel * sizeof(float));
        memcpy(r->img, img->data, (size_t)img->numel * sizeof(float));
        memcpy(r->txt, txt->data, (size_t)txt->numel * sizeof(float));
        memcpy(r->grad, x->grad, (size_t)x->numel * sizeof(float));
        /* no weight took a gradient: the tape recorded only ops downstream of the pixels */
        CHECK(m->patch_w->grad == NULL && m->vis_blocks[0].qkv_w->grad == NULL &&
              m->tok_emb->grad == NULL && m->vis_proj->grad == NULL);
    }
    pbw_ctx_free(ctx);
    free(iv);
    pbw_npy_free(&px);
    pbw_npy_free(&ids);
    return rc;
}

static void free_run(clip_run *r) {
    free(r->img);
    free(r->txt);
    free(r->grad);
}

static void check_against_reference(const clip_run *r) {
    pbw_npy ei, et, eg;
    if (load_npy(FIX "image_embeds.npy", &ei) || load_npy(FIX "text_embeds.npy", &et) ||
        load_npy(FIX "pixel_grad.npy", &eg)) {
        CHECK(0);
        return;
    }
    CHECK(ei.numel == r->nimg * r->E && et.numel == r->ntxt * r->E && eg.numel == r->npx);
    if (ei.numel == r->nimg * r->E && et.numel == r->ntxt * r->E && eg.numel == r->npx) {
        double e1 = rel_err(r->img, ei.data, ei.numel), e2 = rel_err(r->txt, et.data, et.numel);
        double e3 = rel_err(r->grad, eg.data, eg.numel);
        printf("    image %.2e, text %.2e, pixel gradient %.2e (max|diff|/max|ref|)\n", e1, e2, e3);
        CHECK_NEAR(e1, 0, 1e-4);
        CHECK_NEAR(e2, 0, 1e-4);
        CHECK_NEAR(e3, 0, 1e-3);
    }
    pbw_npy_free(&ei);
    pbw_npy_free(&et);
    pbw_npy_free(&eg);
}

PBW_TEST(clip_hf_parity) {
    pbw_clip *m;
    pbw_err err;
    int rc = pbw_clip_load(FIX "hf", &m, &err);
    CHECK_MSG(rc == 0, "%s", err.msg);
    if (rc) return;
    CHECK(!strcmp(m->format, "hf"));
    CHECK(m->cfg.vision.act == PBW_CLIP_GELU && m->cfg.text.act == PBW_CLIP_GELU);
    CHECK(m->cfg.image_size == 64 && m->cfg.patch_size == 16 && m->cfg.vision.heads == 2);
    CHECK(m->cfg.context_length == 77 && m->cfg.eos_token_id == 255 && !m->cfg.pool_argmax);
    clip_run r;
    if (run_fixture(m, &r) == 0) check_against_reference(&r);
    free_run(&r);
    pbw_clip_free(m);
}

/* The same weights under OpenAI's names (packed in_proj, transposed projections), fp16 in a
 * torch.save zip; the open_clip config beside it says GELU. The embeddings must equal those
 * of the HF copy exactly: the internal model is the same. */
PBW_TEST(clip_openai_names) {
    pbw_clip *hf, *oa;
    pbw_err err;
    int rc = pbw_clip_load(FIX "hf", &hf, &err);
    CHECK_MSG(rc == 0, "%s", err.msg);
    if (rc) return;
    rc = pbw_clip_load(FIX "openai_state.pt", &oa, &err);
    CHECK_MSG(rc == 0, "%s", err.msg);
    if (rc) {
        pbw_clip_free(hf);
        return;
    }
    CHECK(!strcmp(oa->format, "openai"));
    CHECK(oa->cfg.vision.width == 128 && oa->cfg.vision.layers == 2 && oa->cfg.vision.heads == 2);
    CHECK(oa->cfg.text.width == 128 && oa->cfg.text.layers == 2 && oa->cfg.text.heads == 2);
    CHECK(oa->cfg.embed_dim == 64 && oa->cfg.vocab_size == 256 && oa->cfg.pool_argmax);
    CHECK(oa->cfg.vision.act == PBW_CLIP_GELU && oa->cfg.text.act == PBW_CLIP_GELU);
    CHECK_NEAR(oa->cfg.logit_scale, hf->cfg.logit_scale, 0);
    clip_run a, b;
    memset(&b, 0, sizeof b);
    if (run_fixture(hf, &a) == 0 && run_fixture(oa, &b) == 0) {
        CHECK_NEAR(rel_err(b.img, a.img, a.nimg * a.E), 0, 0);
        CHECK_NEAR(rel_err(b.txt, a.txt, a.ntxt * a.E), 0, 0);
        CHECK_NEAR(rel_err(b.grad, a.grad, a.npx), 0, 0);
        check_against_reference(&b);
    }
    free_run(&a);
    free_run(&b);
    pbw_clip_free(hf);
    pbw_clip_free(oa);
}

/* Without an open_clip config, OpenAI names follow OpenAI's build_model: heads = width / 64,
 * QuickGELU, argmax pooling. */
PBW_TEST(clip_openai_inferred_config) {
    pbw_records recs;
    pbw_err err;
    int rc = pbw_load_checkpoint(FIX "openai_state.pt", &recs, &err);
    CHECK_MSG(rc == 0, "%s", err.msg);
    if (rc) return;
    pbw_clip *m;
    rc = pbw_clip_from_records(&recs, NULL, "openai_state.pt", &m, &err);
    CHECK_MSG(rc == 0, "%s", err.msg);
    if (rc == 0) {
        CHECK(m->cfg.vision.act == PBW_CLIP_QUICK_GELU && m->cfg.text.act == PBW_CLIP_QUICK_GELU);
        CHECK(m->cfg.vision.heads == 2 && m->cfg.text.heads == 2 && m->cfg.context_length == 77);
        CHECK(m->cfg.image_size == 64 && m->cfg.patch_size == 16 && m->cfg.vision.mlp == 256);
        pbw_clip_free(m);
    }
    pbw_records_free(&recs);
}

PBW_TEST(clip_preprocess_matches_hf) {
    pbw_image im;
    pbw_err err;
    pbw_npy ref;
    int rc = pbw_image_read(FIX "photo.png", &im, &err);
    CHECK_MSG(rc == 0, "%s", err.msg);
    if (rc || load_npy(FIX "photo_pixels.npy", &ref)) return;
    float *out = malloc(3 * 64 * 64 * sizeof(float));
    rc = pbw_clip_preprocess(&im, 64, out, &err);
    CHECK_MSG(rc == 0, "%s", err.msg);
    /* PIL's integer arithmetic reproduced exactly: equal up to float rounding of the
     * normalization */
    if (rc == 0 && ref.numel == 3 * 64 * 64) {
        double md = 0;
        for (int64_t i = 0; i < ref.numel; i++) md = fmax(md, fabs(out[i] - ref.data[i]));
        CHECK_NEAR(md, 0, 1e-6);
    }
    free(out);
    pbw_npy_free(&ref);
    pbw_image_free(&im);
}

PBW_TEST(clip_eot_rules) {
    pbw_clip m;
    memset(&m, 0, sizeof m);
    int32_t ids[6] = {49406, 320, 49407, 7, 49407, 0};
    m.cfg.pool_argmax = 1;
    CHECK(pbw_clip_eot_position(&m, ids, 6) == 2);
    int32_t big[4] = {49406, 49500, 49407, 0}; /* an added token above the end token */
    CHECK(pbw_clip_eot_position(&m, big, 4) == 1);
    m.cfg.pool_argmax = 0;
    m.cfg.eos_token_id = 49407;
    CHECK(pbw_clip_eot_position(&m, big, 4) == 2);
    int32_t none[3] = {5, 6, 7};
    CHECK(pbw_clip_eot_position(&m, none, 3) == 0);
}

/* Padding after the end token must not change a text's embedding (causal attention). */
PBW_TEST(clip_text_padding_invariance) {
    pbw_clip *m;
    pbw_err err;
    if (pbw_clip_load(FIX "hf", &m, &err)) {
        CHECK_MSG(0, "%s", err.msg);
        return;
    }
    int32_t a[5] = {254, 10, 20, 255, 0}, b[77] = {254, 10, 20, 255};
    for (int i = 4; i < 77; i++) b[i] = 1 + i % 200;
    pbw_ctx *ctx = pbw_ctx_new(PBW_DEV_CPU, &err);
    pbw_tensor *ea = pbw_clip_encode_text(ctx, m, a, 1, 5);
    pbw_tensor *eb = pbw_clip_encode_text(ctx, m, b, 1, 77);
    CHECK(ea && eb);
    if (ea && eb) CHECK_NEAR(rel_err(ea->data, eb->data, ea->numel), 0, 1e-6);
    pbw_ctx_free(ctx);
    pbw_clip_free(m);
}

PBW_TEST(clip_errors) {
    pbw_clip *m;
    pbw_err err;
    CHECK(pbw_clip_load("tests/fixtures/clip/nonexistent", &m, &err) != 0);
    CHECK(strstr(err.msg, "nonexistent") != NULL);
    /* a checkpoint without one tensor: the message names it */
    pbw_records recs;
    if (pbw_load_checkpoint(FIX "hf/model.safetensors", &recs, &err)) {
        CHECK_MSG(0, "%s", err.msg);
        return;
    }
    for (size_t i = 0; i < recs.count; i++)
        if (!strcmp(recs.items[i].name, "text_model.encoder.layers.1.mlp.fc2.bias"))
            recs.items[i].name[0] = 'X';
    CHECK(pbw_clip_from_records(&recs, NULL, "cut.safetensors", &m, &err) != 0);
    CHECK_MSG(strstr(err.msg, "text_model.encoder.layers.1.mlp.fc2.bias") != NULL, "%s", err.msg);
    /* a config that disagrees with the weights */
    const char *cfg = "{\"vision_config\": {\"hidden_size\": 96, \"num_attention_heads\": 2, "
                      "\"image_size\": 64, \"patch_size\": 16, \"num_hidden_layers\": 2}}";
    CHECK(pbw_clip_from_records(&recs, cfg, "config.json", &m, &err) != 0);
    CHECK_MSG(strstr(err.msg, "patch_embedding") != NULL, "%s", err.msg);
    const char *act = "{\"text_config\": {\"hidden_act\": \"swish\"}}";
    CHECK(pbw_clip_from_records(&recs, act, "config.json", &m, &err) != 0);
    CHECK_MSG(strstr(err.msg, "swish") != NULL, "%s", err.msg);
    pbw_records_free(&recs);

    if (pbw_clip_load(FIX "hf", &m, &err)) return;
    pbw_ctx *ctx = pbw_ctx_new(PBW_DEV_CPU, &err);
    pbw_tensor *bad = pbw_tensor_zeros(ctx, 4, (int64_t[]){1, 3, 32, 32});
    CHECK(pbw_clip_encode_image(ctx, m, bad) == NULL);
    CHECK_MSG(strstr(pbw_ctx_error(ctx), "(1,3,32,32)") != NULL, "%s", pbw_ctx_error(ctx));
    pbw_ctx_reset(ctx);
    int32_t ids[3] = {254, 300, 255};
    CHECK(pbw_clip_encode_text(ctx, m, ids, 1, 3) == NULL);
    CHECK_MSG(strstr(pbw_ctx_error(ctx), "300") != NULL, "%s", pbw_ctx_error(ctx));
    pbw_ctx_reset(ctx);
    int32_t many[78] = {0};
    CHECK(pbw_clip_encode_text(ctx, m, many, 1, 78) == NULL);
    pbw_ctx_free(ctx);
    pbw_clip_free(m);
}

/* The same inputs give the same bytes, whatever the thread count does: every parallel loop in
 * the encoders (GEMM blocks, attention heads, rows) writes disjoint outputs with a fixed split. */
PBW_TEST(clip_deterministic) {
    pbw_clip *m;
    pbw_err err;
    if (pbw_clip_load(FIX "hf", &m, &err)) {
        CHECK_MSG(0, "%s", err.msg);
        return;
    }
    clip_run a, b;
    memset(&b, 0, sizeof b);
    if (run_fixture(m, &a) == 0 && run_fixture(m, &b) == 0) {
        CHECK(memcmp(a.img, b.img, (size_t)(a.nimg * a.E) * sizeof(float)) == 0);
        CHECK(memcmp(a.txt, b.txt, (size_t)(a.ntxt * a.E) * sizeof(float)) == 0);
        CHECK(memcmp(a.grad, b.grad, (size_t)a.npx * sizeof(float)) == 0);
    }
    free_run(&a);
    free_run(&b);
    pbw_clip_free(m);
}
