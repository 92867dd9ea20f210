/* cmd_clip.c: `pbw clip` embeds texts and images with a CLIP model and, given both, prints
 * their cosine similarities and the zero-shot softmax over the texts (CLIP's README example).
 * It is also the command the parity script (tools/reference/clip_parity.py) drives. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "app/pbw_app.h"
#include "core/pbw_ops.h"
#include "formats/pbw_image.h"
#include "formats/pbw_npy.h"
#include "models/pbw_clip.h"
#include "models/pbw_tokenizer.h"

static void help(FILE *f) {
    fprintf(f,
            "usage: pbw clip --model DIR (--text T ... | --ids N,N,... | --image I.png ... |\n"
            "                --pixels X.npy) [--vocab PATH] [--save-npy E.npy]\n"
            "                [--save-text-npy T.npy] [--save-grad G.npy]\n\n"
            "Embeds texts and/or images with CLIP. Given texts and images, prints for each image\n"
            "the cosine similarity to every text and the softmax over texts of\n"
            "exp(logit_scale) * cosine (zero-shot classification).\n\n"
            "  --model DIR         a Hugging Face CLIP directory (config.json, model.safetensors or\n"
            "                      pytorch_model.bin, vocab.json, merges.txt) or an OpenAI/open_clip\n"
            "                      state dict (file or directory)\n"
            "  --text T            a text to embed (repeatable), tokenized as CLIP does (77 tokens)\n"
            "  --vocab PATH        the tokenizer's vocabulary: a directory with vocab.json and\n"
            "                      merges.txt, or bpe_simple_vocab_16e6.txt.gz (default: the model\n"
            "                      directory, or bpe_simple_vocab_16e6.txt.gz inside it)\n"
            "  --ids N,N,...       a text as token ids, start and end tokens included (repeatable)\n"
            "  --image I.png       a PNG or JPEG image (repeatable): shortest side resized to the\n"
            "                      model's size (bicubic, as CLIP's preprocessing), center crop\n"
            "  --pixels X.npy      float32 (N,3,S,S) already normalized with CLIP's mean and std at\n"
            "                      the model's image size S (what the image tower receives)\n"
            "  --save-npy E.npy    write the image embeddings (N,E), or the text embeddings when no\n"
            "                      image is given (unnormalized, float32)\n"
            "  --save-text-npy T.npy  write the text embeddings (N,E)\n"
            "  --save-grad G.npy   write d/d pixels of sum_i (1 - cos(image_i, text_i)) (N,3,S,S);\n"
            "                      with one text every image is compared to it\n");
}

#define MAX_INPUTS 1024

typedef struct clip_args {
    const char *model, *pixels, *save, *save_text, *save_grad, *vocab;
    const char *texts[MAX_INPUTS];
    int ntexts; /* --text and --ids in order; is_ids tells which */
    int is_ids[MAX_INPUTS];
    const char *images[MAX_INPUTS];
    int nimages;
} clip_args;

static int parse_args(int argc, char **argv, clip_args *a) {
    memset(a, 0, sizeof *a);
    for (int i = 1; i < argc; i++) {
        const char *o = argv[i], *v;
        if (!strcmp(o, "--model") || !strcmp(o, "--pixels") || !strcmp(o, "--save-npy") ||
            !strcmp(o, "--save-text-npy") || !strcmp(o, "--save-grad") || !strcmp(o, "--vocab")) {
            if (!(v = app_value("clip", argc, argv, &i))) return -1;
            if (!strcmp(o, "--model")) a->model = v;
            else if (!strcmp(o, "--vocab")) a->vocab = v;
            else if (!strcmp(o, "--pixels")) a->pixels = v;
            else if (!strcmp(o, "--save-npy")) a->save = v;
            else if (!strcmp(o, "--save-text-npy")) a->save_text = v;
            else a->save_grad = v;
        } else if (!strcmp(o, "--text") || !strcmp(o, "--ids")) {
            if (!(v = app_value("clip", argc, argv, &i))) return -1;
            if (a->ntexts == MAX_INPUTS) {
                fprintf(stderr, "pbw clip: more than %d texts\n", MAX_INPUTS);
                return -1;
            }
            a->is_ids[a->ntexts] = !strcmp(o, "--ids");
            a->texts[a->ntexts++] = v;
        } else if (!strcmp(o, "--image")) {
            if (!(v = app_value("clip", argc, argv, &i))) return -1;
            if (a->nimages == MAX_INPUTS) {
                fprintf(stderr, "pbw clip: more than %d images\n", MAX_INPUTS);
                return -1;
            }
            a->images[a->nimages++] = v;
        } else {
            fprintf(stderr, "pbw clip: unknown %s '%s' (see pbw clip --help)\n",
                    o[0] == '-' ? "option" : "argument", o);
            return -1;
        }
    }
    if (!a->model) {
        fprintf(stderr, "pbw clip: --model DIR is required\n");
        return -1;
    }
    if (!a->ntexts && !a->nimages && !a->pixels) {
        fprintf(stderr, "pbw clip: give --text, --ids, --image or --pixels\n");
        return -1;
    }
    if (a->pixels && a->nimages) {
        fprintf(stderr, "pbw clip: --pixels and --image cannot be combined\n");
        return -1;
    }
    if (a->save_text && !a->ntexts) {
        fprintf(stderr, "pbw clip: --save-text-npy needs --text or --ids\n");
        return -1;
    }
    if (a->save_grad && (!a->ntexts || (!a->nimages && !a->pixels))) {
        fprintf(stderr, "pbw clip: --save-grad needs images (--image or --pixels) and texts\n");
        return -1;
    }
    return 0;
}

/* "49406, 320 ,49407" -> ids; fails naming the text. */
static int parse_ids(const char *s, int32_t *ids, int64_t max, int64_t *n) {
    *n = 0;
    const char *p = s;
    while (*p) {
        char *end;
        while (*p == ' ' || *p == ',') p++;
        if (!*p) break;
        long v = strtol(p, &end, 10);
        if (end == p || v < 0 || v > INT32_MAX) {
            fprintf(stderr, "pbw clip: bad token id list '%s' for --ids (non-negative integers "
                            "separated by commas)\n", s);
            return -1;
        }
        if (*n == max) {
            fprintf(stderr, "pbw clip: --ids '%.40s...' has more than %lld ids (the model's context)\n",
                    s, (long long)max);
            return -1;
        }
        ids[(*n)++] = (int32_t)v;
        p = end;
    }
    if (!*n) {
        fprintf(stderr, "pbw clip: --ids '%s' holds no ids\n", s);
        return -1;
    }
    return 0;
}

/* The tokenizer: --vocab, else the model directory (vocab.json + merges.txt), else
 * bpe_simple_vocab_16e6.txt.gz beside the weights. */
static pbw_tokenizer *open_tokenizer(const clip_args *a) {
    pbw_err err, err2;
    if (a->vocab) {
        pbw_tokenizer *t = pbw_tokenizer_load(a->vocab, &err);
        if (!t) fprintf(stderr, "pbw clip: --vocab %s\n", err.msg);
        return t;
    }
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", a->model);
    pbw_tokenizer *t = pbw_tokenizer_load(dir, &err);
    if (t) return t;
    char gz[4200];
    char *slash = strrchr(dir, '/');
    if (slash && slash[1] && strstr(slash, ".")) *slash = 0; /* a weights file: its directory */
    snprintf(gz, sizeof gz, "%s/bpe_simple_vocab_16e6.txt.gz", dir);
    t = pbw_tokenizer_load(gz, &err2);
    if (!t)
        fprintf(stderr, "pbw clip: no tokenizer for --text in %s (%s); give --vocab PATH "
                        "(vocab.json + merges.txt directory or bpe_simple_vocab_16e6.txt.gz), "
                        "or token ids with --ids\n", a->model, err.msg);
    return t;
}

/* All texts as one (N, T) id matrix: --text tokenized to the model's context (padded with
 * zeros, cut with the end token last, as CLIP's tokenize), --ids padded with zeros to the
 * longest row. */
static int texts_to_ids(const clip_args *a, const pbw_clip *m, int32_t **ids_out, int64_t *T_out) {
    int64_t C = m->cfg.context_length, T = 1;
    int32_t *ids = calloc((size_t)a->ntexts * (size_t)C, sizeof(int32_t));
    int64_t *lens = calloc((size_t)a->ntexts, sizeof(int64_t));
    pbw_tokenizer *tok = NULL;
    if (!ids || !lens) {
        fprintf(stderr, "pbw clip: out of memory\n");
        goto fail;
    }
    for (int i = 0; i < a->ntexts; i++) {
        if (!a->is_ids[i]) {
            pbw_err err;
            size_t n;
            if (!tok && !(tok = open_tokenizer(a))) goto fail;
            if (pbw_tokenize(tok, a->texts[i], strlen(a->texts[i]), ids + (int64_t)i * C,
                             (size_t)C, (int)C, &n, &err)) {
                fprintf(stderr, "pbw clip: --text '%.60s': %s\n", a->texts[i], err.msg);
                goto fail;
            }
            lens[i] = (int64_t)n;
        } else if (parse_ids(a->texts[i], ids + (int64_t)i * C, C, &lens[i])) {
            goto fail;
        }
        if (lens[i] > T) T = lens[i];
    }
    /* compact rows to width T */
    for (int i = 1; i < a->ntexts; i++)
        memmove(ids + (int64_t)i * T, ids + (int64_t)i * C, (size_t)T * sizeof(int32_t));
    free(lens);
    pbw_tokenizer_free(tok);
    *ids_out = ids;
    *T_out = T;
    return 0;
fail:
    free(ids);
    free(lens);
    pbw_tokenizer_free(tok);
    return -1;
}

static int load_pixels(const clip_args *a, const pbw_clip *m, float **px, int64_t *n) {
    int64_t S = m->cfg.image_size, C = m->cfg.channels, per = C * S * S;
    pbw_err err;
    if (a->pixels) {
        pbw_npy arr;
        if (pbw_npy_read(a->pixels, &arr, &err)) {
            fprintf(stderr, "pbw clip: %s\n", err.msg);
            return -1;
        }
        if (arr.ndim != 4 || arr.shape[1] != C || arr.shape[2] != S || arr.shape[3] != S ||
            arr.shape[0] < 1) {
            fprintf(stderr, "pbw clip: %s: pixels must be float (N,%lld,%lld,%lld), normalized "
                            "with CLIP's mean and std\n", a->pixels, (long long)C, (long long)S,
                    (long long)S);
            pbw_npy_free(&arr);
            return -1;
        }
        *n = arr.shape[0];
        *px = arr.data; /* malloc'd by the reader: ours now */
        return 0;
    }
    if (C != 3) {
        fprintf(stderr, "pbw clip: the model takes %lld channels; give --pixels\n", (long long)C);
        return -1;
    }
    float *buf = malloc((size_t)a->nimages * (size_t)per * sizeof(float));
    if (!buf) {
        fprintf(stderr, "pbw clip: out of memory\n");
        return -1;
    }
    for (int i = 0; i < a->nimages; i++) {
        pbw_image im;
        if (pbw_image_read(a->images[i], &im, &err) ||
            pbw_clip_preprocess(&im, (int)S, buf + (int64_t)i * per, &err)) {
            fprintf(stderr, "pbw clip: %s: %s\n", a->images[i], err.msg);
            pbw_image_free(&im);
            free(buf);
            return -1;
        }
        pbw_image_free(&im);
    }
    *n = a->nimages;
    *px = buf;
    return 0;
}

static int save(const char *path, const pbw_tensor *t) {
    pbw_err err;
    if (pbw_npy_write(path, t->data, t->ndim, t->shape, &err)) {
        fprintf(stderr, "pbw clip: %s\n", err.msg);
        return -1;
    }
    return 0;
}

static void print_embeddings(const char *what, int n, const pbw_tensor *e, const char *const *names) {
    int64_t E = e->shape[1];
    for (int i = 0; i < n; i++) {
        const float *r = e->data + (int64_t)i * E;
        double s = 0;
        for (int64_t j = 0; j < E; j++) s += (double)r[j] * r[j];
        printf("%s %d", what, i);
        if (names) printf(" (%s)", names[i]);
        printf(": norm %.5g, [", sqrt(s));
        for (int64_t j = 0; j < E && j < 4; j++) printf(j ? ", %.5g" : "%.5g", r[j]);
        printf("%s]\n", E > 4 ? ", ..." : "");
    }
}

int cmd_clip(int argc, char **argv) {
    if (app_wants_help(argc, argv)) {
        help(stdout);
        return 0;
    }
    clip_args a;
    if (parse_args(argc, argv, &a)) return 2;
    pbw_err err;
    pbw_clip *m = NULL;
    if (pbw_clip_load(a.model, &m, &err)) {
        fprintf(stderr, "pbw clip: --model %s\n", err.msg);
        return 1;
    }
    int status = 1;
    int32_t *ids = NULL;
    float *px = NULL;
    int64_t T = 0, nimg = 0;
    pbw_ctx *ctx = NULL;
    if (a.ntexts && texts_to_ids(&a, m, &ids, &T)) goto done;
    if ((a.nimages || a.pixels) && load_pixels(&a, m, &px, &nimg)) goto done;
    if (a.save_grad && a.ntexts != 1 && a.ntexts != nimg) {
        fprintf(stderr, "pbw clip: --save-grad needs one text, or as many texts as images "
                        "(%d texts, %lld images)\n", a.ntexts, (long long)nimg);
        goto done;
    }
    if (!(ctx = pbw_ctx_new(PBW_DEV_CPU, &err))) {
        fprintf(stderr, "pbw clip: %s\n", err.msg);
        goto done;
    }
    pbw_tensor *txt = NULL, *img = NULL, *pixels = NULL;
    if (a.ntexts) {
        int old = pbw_ctx_set_grad(ctx, 0);
        txt = pbw_clip_encode_text(ctx, m, ids, a.ntexts, T);
        pbw_ctx_set_grad(ctx, old);
    }
    if (px) {
        int64_t S = m->cfg.image_size;
        pixels = pbw_tensor_wrap(ctx, px, 4, (int64_t[]){nimg, m->cfg.channels, S, S});
        if (pixels) pixels->requires_grad = a.save_grad != NULL;
        img = pbw_clip_encode_image(ctx, m, pixels);
    }
    if (pbw_ctx_check(ctx, &err)) {
        fprintf(stderr, "pbw clip: %s\n", err.msg);
        goto done;
    }
    if (a.save_grad) {
        pbw_tensor *loss = pbw_sum_all(ctx, pbw_affine(ctx, pbw_cosine(ctx, img, txt), -1, 1));
        if (pbw_backward(ctx, loss, NULL, &err)) {
            fprintf(stderr, "pbw clip: gradient: %s\n", err.msg);
            goto done;
        }
        pbw_tensor g = *pixels;
        g.data = pixels->grad;
        if (save(a.save_grad, &g)) goto done;
    }
    const char *const *img_names = a.nimages ? a.images : NULL;
    if (img && !txt) print_embeddings("image", (int)nimg, img, img_names);
    if (txt && !img) print_embeddings("text", a.ntexts, txt, a.texts);
    if (img && txt) {
        int64_t E = img->shape[1];
        float scale = expf(m->cfg.logit_scale);
        float *logits = malloc((size_t)a.ntexts * sizeof(float));
        if (!logits) goto done;
        printf("logit scale %.4g; per image: cosine and softmax over texts\n", scale);
        for (int64_t i = 0; i < nimg; i++) {
            float mx = -INFINITY;
            double sum = 0;
            for (int t = 0; t < a.ntexts; t++) {
                logits[t] = scale * pbw_cosine_f32(img->data + i * E, txt->data + t * E, E);
                if (logits[t] > mx) mx = logits[t];
            }
            for (int t = 0; t < a.ntexts; t++) sum += exp((double)(logits[t] - mx));
            printf("image %lld", (long long)i);
            if (img_names) printf(" (%s)", img_names[i]);
            printf(":\n");
            for (int t = 0; t < a.ntexts; t++)
                printf("  cos %+.4f  prob %.4f  %s\n", logits[t] / scale,
                       exp((double)(logits[t] - mx)) / sum, a.texts[t]);
        }
        free(logits);
    }
    if (a.save && save(a.save, img ? img : txt)) goto done;
    if (a.save_text && save(a.save_text, txt)) goto done;
    status = 0;
done:
    pbw_ctx_free(ctx);
    free(ids);
    free(px);
    pbw_clip_free(m);
    return status;
}
