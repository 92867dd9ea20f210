/* cmd_shapes.c: `pbw shapes`, the shapes world on the command line: render scenes (a grid, or
 * a training set of sprite sheets + JSONL), read shapes back with the geometric checker, and
 * measure the shapes models (checker accuracy, GAN samples, CLIP top-1). The semantic
 * benchmark's plan and scoring live in cmd_shapes_bench.c. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "app/pbw_app.h"
#include "app/pbw_shapes_app.h"
#include "core/pbw_ops.h"
#include "core/pbw_rng.h"
#include "formats/pbw_file.h"
#include "formats/pbw_image.h"
#include "models/pbw_clip.h"
#include "models/pbw_shapes.h"
#include "models/pbw_shapes_check.h"
#include "models/pbw_stylegan2.h"
#include "models/pbw_tokenizer.h"

#define MAX_COUNT 10000000L

static void help(FILE *f) {
    fprintf(f,
        "usage: pbw shapes [render] --count N --out GRID.png|DIR [options]\n"
        "       pbw shapes check IMAGE.png [--mask M.png] [--cell S]\n"
        "       pbw shapes eval [--count N] [--size S] [--seed K]\n"
        "       pbw shapes gan-eval --gan CKPT [--count N] [--first K] [--out GRID.png]\n"
        "       pbw shapes clip-eval --clip DIR [--count N] [--seed K] [--choices C] [--gan CKPT]\n"
        "       pbw shapes overlay --image I.png --mask M.png [--after O.png] --out P.png\n"
        "       pbw shapes plan --gan CKPT --count N --out DIR      (semantic benchmark)\n"
        "       pbw shapes score --plan DIR [--results DIR] [--margin P]\n\n"
        "The shapes world: gray backgrounds (plain, shaded, striped) with one to three circles,\n"
        "squares, triangles, stars or rings in red, orange, yellow, green, blue or purple, and\n"
        "their captions (\"a large red circle at the top left\"). Scene I of seed K is always the\n"
        "same picture.\n\n"
        "render (the default):\n"
        "  --count N          scenes to render\n"
        "  --out GRID.png     one grid of all scenes, in reading order\n"
        "  --out DIR          a training set: DIR/sheet_00000.png ... (sprite sheets of\n"
        "                     --per-sheet scenes each) and DIR/scenes.jsonl (one line per scene:\n"
        "                     its sheet and cell, background, shapes, boxes and captions)\n"
        "  --size S           image side in pixels (default 64)\n"
        "  --seed K           dataset seed (default 0); --first I: first scene index (default 0)\n"
        "  --cols C           scenes per grid or sheet row (default about sqrt)\n"
        "  --per-sheet M      scenes per sprite sheet (default 1024)\n"
        "  --jsonl F          (grid) also write the scenes as JSONL\n"
        "  --shapes A-B       number of shapes per scene (default 1-3)\n"
        "  --shape NAME, --colour NAME   only this shape / colour\n"
        "check: prints the shapes the checker finds (one JSON line per cell of S px, default the\n"
        "  whole image); with --mask, the shape the white part of the mask shows.\n"
        "eval: the checker's accuracy on N rendered scenes against their ground truth\n"
        "  (default 1000 scenes of 64 px, seed 4242).\n"
        "gan-eval: renders seeds K.. of a shapes GAN (fixed noise) and reports what the checker\n"
        "  finds in them; --out writes the grid.\n"
        "overlay: the picture with the mask drawn on it (outside darkened, its edge white) and,\n"
        "  with --after, the result beside it; --scale K enlarges (default 4).\n"
        "plan / score: the semantic benchmark's edits and their scoring (bench/semantic.sh).\n"
        "clip-eval: the CLIP's top-1 choice of a held-out image's caption among C (default 10)\n"
        "  candidates, for whole scenes and for single shapes seen as the painter's default loss\n"
        "  sees a mask (outside it mid-gray), and those shapes among all 30 colour-shape captions;\n"
        "  with --gan, the same 30-way choice on the GAN's seeds where the checker is sure of the\n"
        "  largest shape (agreement of CLIP with the checker).\n");
}

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static int ends_with(const char *s, const char *suf) {
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && !strcmp(s + a - b, suf);
}

/* ---------- render ---------- */

typedef struct {
    long count, size, seed, first, cols, per_sheet;
    const char *out, *jsonl;
    pbw_scene_opts opts;
} render_args;

static int parse_render(int argc, char **argv, int start, render_args *a) {
    memset(a, 0, sizeof *a);
    a->size = 64;
    a->per_sheet = 1024;
    a->count = -1;
    pbw_scene_opts_default(&a->opts);
    for (int i = start; i < argc; i++) {
        const char *o = argv[i], *v;
        if (!(v = app_value("shapes", argc, argv, &i))) return -1;
        if (!strcmp(o, "--count")) {
            if (app_parse_int("shapes", o, v, 1, MAX_COUNT, &a->count)) return -1;
        } else if (!strcmp(o, "--size")) {
            if (app_parse_int("shapes", o, v, 8, 1024, &a->size)) return -1;
        } else if (!strcmp(o, "--seed")) {
            if (app_parse_int("shapes", o, v, 0, 0x7fffffffL, &a->seed)) return -1;
        } else if (!strcmp(o, "--first")) {
            if (app_parse_int("shapes", o, v, 0, 0x7fffffffffffL, &a->first)) return -1;
        } else if (!strcmp(o, "--cols")) {
            if (app_parse_int("shapes", o, v, 1, 4096, &a->cols)) return -1;
        } else if (!strcmp(o, "--per-sheet")) {
            if (app_parse_int("shapes", o, v, 1, 65536, &a->per_sheet)) return -1;
        } else if (!strcmp(o, "--out")) {
            a->out = v;
        } else if (!strcmp(o, "--jsonl")) {
            a->jsonl = v;
        } else if (!strcmp(o, "--shapes")) {
            int lo, hi;
            if (sscanf(v, "%d-%d", &lo, &hi) != 2 || lo < 1 || hi > PBW_SCENE_MAX_SHAPES || lo > hi) {
                fprintf(stderr, "pbw shapes: --shapes '%s' must be A-B with 1 <= A <= B <= 3\n", v);
                return -1;
            }
            a->opts.min_shapes = lo;
            a->opts.max_shapes = hi;
        } else if (!strcmp(o, "--shape")) {
            if ((a->opts.kind = pbw_shape_from_name(v)) < 0) {
                fprintf(stderr, "pbw shapes: --shape '%s' is not one of circle, square, triangle, "
                                "star, ring\n", v);
                return -1;
            }
        } else if (!strcmp(o, "--colour") || !strcmp(o, "--color")) {
            if ((a->opts.colour = pbw_colour_from_name(v)) < 0) {
                fprintf(stderr, "pbw shapes: %s '%s' is not one of red, orange, yellow, green, "
                                "blue, purple\n", o, v);
                return -1;
            }
        } else {
            fprintf(stderr, "pbw shapes: unknown argument '%s' (pbw shapes --help)\n", o);
            return -1;
        }
    }
    if (a->count < 0 || !a->out) {
        fprintf(stderr, "pbw shapes: --count and --out are required (pbw shapes --help)\n");
        return -1;
    }
    return 0;
}

/* Renders scenes first..first+n-1 into a grid image of cols columns. */
static void render_grid(const render_args *a, int64_t first, int64_t n, int cols, pbw_image *im,
                        uint8_t *cell) {
    int S = (int)a->size;
    memset(im->data, 0, (size_t)im->w * im->h * 3);
    for (int64_t i = 0; i < n; i++) {
        pbw_scene sc;
        pbw_scene_random(&sc, (uint64_t)a->seed, first + i, &a->opts);
        pbw_scene_render(&sc, S, cell);
        int cx = (int)(i % cols) * S, cy = (int)(i / cols) * S;
        for (int y = 0; y < S; y++)
            memcpy(im->data + ((size_t)(cy + y) * im->w + cx) * 3, cell + (size_t)y * S * 3,
                   (size_t)S * 3);
    }
}

/* One JSONL line: where the scene's pixels are, then the scene. */
static int write_scene_line(FILE *f, const render_args *a, int64_t index, const char *sheet,
                            int64_t cell, int cols) {
    pbw_scene sc;
    pbw_scene_random(&sc, (uint64_t)a->seed, index, &a->opts);
    char buf[4096];
    int len = pbw_scene_json(&sc, (int)a->size, buf, sizeof buf);
    if (len <= 0 || (size_t)len >= sizeof buf) return -1;
    if (sheet)
        fprintf(f, "{\"sheet\":\"%s\",\"cell\":%lld,\"x\":%lld,\"y\":%lld,%s\n", sheet,
                (long long)cell, (long long)(cell % cols) * a->size,
                (long long)(cell / cols) * a->size, buf + 1);
    else
        fprintf(f, "{\"cell\":%lld,%s\n", (long long)cell, buf + 1);
    return ferror(f) ? -1 : 0;
}

static int cmd_render(int argc, char **argv, int start) {
    render_args a;
    if (parse_render(argc, argv, start, &a)) return 2;
    pbw_err err = {{0}};
    double t0 = now_s();
    int S = (int)a.size, grid = ends_with(a.out, ".png") || ends_with(a.out, ".PNG");
    int64_t per = grid ? a.count : a.per_sheet;
    int cols = a.cols ? (int)a.cols : (int)ceil(sqrt((double)(per < a.count ? per : a.count)));
    if (cols > per) cols = (int)per;
    int rows_max = (int)((per + cols - 1) / cols);
    if ((int64_t)cols * S > PBW_IMAGE_MAX_SIDE || (int64_t)rows_max * S > PBW_IMAGE_MAX_SIDE) {
        fprintf(stderr, "pbw shapes: a %dx%d grid of %d px images is too large for one PNG; use "
                        "--cols, --per-sheet or a directory --out\n", cols, rows_max, S);
        return 2;
    }
    uint8_t *cell = malloc((size_t)S * S * 3);
    pbw_image im = {.w = cols * S, .h = rows_max * S, .c = 3};
    im.data = malloc((size_t)im.w * im.h * 3);
    int rc = 1;
    pbw_file_tmp jt = {0};
    char *path = NULL;
    if (!cell || !im.data || !(path = malloc(strlen(a.out) + 64))) {
        fprintf(stderr, "pbw shapes: out of memory\n");
        goto out;
    }
    if (grid) {
        im.h = (int)((a.count + cols - 1) / cols) * S;
        render_grid(&a, a.first, a.count, cols, &im, cell);
        if (pbw_image_write_png(a.out, &im, &err)) {
            fprintf(stderr, "pbw shapes: --out: %s\n", err.msg);
            goto out;
        }
        if (a.jsonl) {
            if (pbw_file_tmp_open(&jt, a.jsonl, &err)) {
                fprintf(stderr, "pbw shapes: --jsonl: %s\n", err.msg);
                goto out;
            }
            for (int64_t i = 0; i < a.count; i++)
                if (write_scene_line(jt.fp, &a, a.first + i, NULL, i, cols)) {
                    fprintf(stderr, "pbw shapes: --jsonl %s: write failed\n", a.jsonl);
                    goto out;
                }
            if (pbw_file_tmp_commit(&jt, &err)) {
                fprintf(stderr, "pbw shapes: --jsonl: %s\n", err.msg);
                goto out;
            }
        }
        fprintf(stderr, "pbw shapes: wrote %s (%ld scenes of %d px, %d per row)%s%s in %.1f s\n",
                a.out, a.count, S, cols, a.jsonl ? " and " : "", a.jsonl ? a.jsonl : "",
                now_s() - t0);
        rc = 0;
        goto out;
    }
    struct stat st;
    if (mkdir(a.out, 0777) && !(stat(a.out, &st) == 0 && S_ISDIR(st.st_mode))) {
        fprintf(stderr, "pbw shapes: --out %s: cannot create the directory\n", a.out);
        goto out;
    }
    sprintf(path, "%s/scenes.jsonl", a.out);
    if (pbw_file_tmp_open(&jt, path, &err)) {
        fprintf(stderr, "pbw shapes: %s\n", err.msg);
        goto out;
    }
    int64_t nsheets = (a.count + per - 1) / per;
    for (int64_t s = 0; s < nsheets; s++) {
        int64_t first = s * per, n = a.count - first < per ? a.count - first : per;
        char name[32];
        snprintf(name, sizeof name, "sheet_%05lld.png", (long long)s);
        im.h = (int)((n + cols - 1) / cols) * S;
        render_grid(&a, a.first + first, n, cols, &im, cell);
        sprintf(path, "%s/%s", a.out, name);
        if (pbw_image_write_png(path, &im, &err)) {
            fprintf(stderr, "pbw shapes: %s\n", err.msg);
            goto out;
        }
        for (int64_t i = 0; i < n; i++)
            if (write_scene_line(jt.fp, &a, a.first + first + i, name, i, cols)) {
                fprintf(stderr, "pbw shapes: %s/scenes.jsonl: write failed\n", a.out);
                goto out;
            }
        if (nsheets > 1)
            fprintf(stderr, "pbw shapes: sheet %lld/%lld (%.1f s)\n", (long long)s + 1,
                    (long long)nsheets, now_s() - t0);
    }
    if (pbw_file_tmp_commit(&jt, &err)) {
        fprintf(stderr, "pbw shapes: %s\n", err.msg);
        goto out;
    }
    fprintf(stderr, "pbw shapes: wrote %s: %ld scenes of %d px in %lld sheets of %lld + "
                    "scenes.jsonl in %.1f s\n", a.out, a.count, S, (long long)nsheets,
            (long long)per, now_s() - t0);
    rc = 0;
out:
    pbw_file_tmp_abort(&jt);
    free(path);
    free(cell);
    free(im.data);
    return rc;
}

/* ---------- check ---------- */

static void print_blob(const pbw_blob *b) {
    printf("{\"colour\":\"%s\",\"shape\":\"%s\",\"area\":%d,\"bbox\":[%d,%d,%d,%d],"
           "\"centre\":[%.1f,%.1f],\"fill\":%.3f,\"solidity\":%.3f,\"hole\":%.3f",
           pbw_colour_names[b->colour], pbw_shape_names[b->kind], b->area, b->x0, b->y0, b->x1,
           b->y1, b->cx, b->cy, b->fill, b->solidity, b->hole_frac);
    if (b->in_mask) printf(",\"in_mask\":%d", b->in_mask);
    printf("}");
}

/* A mask image as floats (w*h) at the given size: white or opaque = 1 (mean of RGB, or alpha
 * when present, over 255), nearest-neighbour resized. */
int app_shapes_read_mask(const char *path, int w, int h, float **out, pbw_err *err) {
    pbw_image m;
    if (pbw_image_read(path, &m, err)) return -1;
    float *f = malloc((size_t)w * h * sizeof *f);
    if (!f) {
        pbw_image_free(&m);
        return pbw_err_set(err, "%s: out of memory", path);
    }
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            int sx = (int)((int64_t)x * m.w / w), sy = (int)((int64_t)y * m.h / h);
            const uint8_t *p = m.data + ((size_t)sy * m.w + sx) * m.c;
            f[(size_t)y * w + x] = m.c == 4 && p[3] < 255 ? p[3] / 255.0f : (p[0] + p[1] + p[2]) / 765.0f;
        }
    pbw_image_free(&m);
    *out = f;
    return 0;
}

static int cmd_check(int argc, char **argv) {
    const char *img = NULL, *maskp = NULL;
    long cellsz = 0;
    for (int i = 2; i < argc; i++) {
        const char *v;
        if (!strcmp(argv[i], "--mask")) {
            if (!(maskp = app_value("shapes", argc, argv, &i))) return 2;
        } else if (!strcmp(argv[i], "--cell")) {
            if (!(v = app_value("shapes", argc, argv, &i)) ||
                app_parse_int("shapes", "--cell", v, 8, 16384, &cellsz))
                return 2;
        } else if (argv[i][0] == '-' || img) {
            fprintf(stderr, "pbw shapes check: unexpected argument '%s'\n", argv[i]);
            return 2;
        } else {
            img = argv[i];
        }
    }
    if (!img) {
        fprintf(stderr, "pbw shapes check: which image? (pbw shapes --help)\n");
        return 2;
    }
    pbw_err err = {{0}};
    pbw_image im;
    if (pbw_image_read(img, &im, &err)) {
        fprintf(stderr, "pbw shapes check: %s\n", err.msg);
        return 1;
    }
    int cw = cellsz ? (int)cellsz : im.w, ch = cellsz ? (int)cellsz : im.h;
    int nx = im.w / cw, ny = im.h / ch, rc = 1;
    float *mask = NULL;
    uint8_t *rgb = malloc((size_t)cw * ch * 3);
    if (!rgb || nx < 1 || ny < 1) {
        fprintf(stderr, "pbw shapes check: %s: cells of %d px do not fit a %dx%d image\n", img,
                cw, im.w, im.h);
        goto out;
    }
    if (maskp && app_shapes_read_mask(maskp, cw, ch, &mask, &err)) {
        fprintf(stderr, "pbw shapes check: --mask %s\n", err.msg);
        goto out;
    }
    for (int cy = 0; cy < ny; cy++)
        for (int cx = 0; cx < nx; cx++) {
            for (int y = 0; y < ch; y++)
                for (int x = 0; x < cw; x++)
                    for (int k = 0; k < 3; k++)
                        rgb[((size_t)y * cw + x) * 3 + k] =
                            im.data[(((size_t)cy * ch + y) * im.w + (size_t)cx * cw + x) * im.c + k];
            printf("{\"cell\":%d,", cy * nx + cx);
            if (mask) {
                pbw_blob b;
                int r = pbw_shapes_check_region(rgb, cw, ch, mask, &b);
                if (r < 0) goto oom;
                printf("\"region\":");
                if (r == 0) print_blob(&b);
                else printf("null");
            } else {
                pbw_blob b[16];
                int n = pbw_shapes_find(rgb, cw, ch, b, 16);
                if (n < 0) goto oom;
                printf("\"blobs\":[");
                for (int i = 0; i < n && i < 16; i++) {
                    if (i) printf(",");
                    print_blob(&b[i]);
                }
                printf("]");
            }
            printf("}\n");
        }
    rc = 0;
    goto out;
oom:
    fprintf(stderr, "pbw shapes check: out of memory\n");
out:
    free(rgb);
    free(mask);
    pbw_image_free(&im);
    return rc;
}

/* ---------- eval: the checker on rendered scenes ---------- */

static int cmd_eval(int argc, char **argv) {
    long count = 1000, size = 64, seed = 4242;
    for (int i = 2; i < argc; i++) {
        const char *o = argv[i], *v;
        if (!(v = app_value("shapes", argc, argv, &i))) return 2;
        long *dst = !strcmp(o, "--count") ? &count : !strcmp(o, "--size") ? &size
                  : !strcmp(o, "--seed") ? &seed : NULL;
        if (!dst) {
            fprintf(stderr, "pbw shapes eval: unknown argument '%s'\n", o);
            return 2;
        }
        if (app_parse_int("shapes", o, v, dst == &size ? 16 : 0, dst == &count ? 1000000 : 0x7fffffffL, dst))
            return 2;
        if (dst == &count && count < 1) count = 1;
    }
    uint8_t *rgb = malloc((size_t)size * size * 3);
    if (!rgb) return 1;
    int per_kind[PBW_SHAPE_COUNT][2] = {{0}}, per_col[PBW_COLOUR_COUNT][2] = {{0}};
    long tot = 0, ok = 0, colok = 0;
    for (long i = 0; i < count; i++) {
        pbw_scene sc;
        pbw_scene_random(&sc, (uint64_t)seed, i, NULL);
        pbw_scene_render(&sc, (int)size, rgb);
        for (int s = 0; s < sc.n; s++) { /* one shape at a time, to attribute errors */
            pbw_scene one = sc;
            one.n = 1;
            one.shapes[0] = sc.shapes[s];
            int c, co;
            if (pbw_shapes_recognized(&one, rgb, (int)size, &c, &co) < 0) {
                free(rgb);
                return 1;
            }
            per_kind[sc.shapes[s].kind][0]++;
            per_kind[sc.shapes[s].kind][1] += c;
            per_col[sc.shapes[s].colour][0]++;
            per_col[sc.shapes[s].colour][1] += co;
            tot++;
            ok += c;
            colok += co;
        }
    }
    free(rgb);
    printf("checker on %ld rendered scenes of %ld px (seed %ld): %ld shapes, colour and shape "
           "right %.1f%%, colour right %.1f%%\n", count, size, seed, tot, 100.0 * ok / tot,
           100.0 * colok / tot);
    for (int k = 0; k < PBW_SHAPE_COUNT; k++)
        printf("  %-8s %5d shapes, %.1f%% right\n", pbw_shape_names[k], per_kind[k][0],
               per_kind[k][0] ? 100.0 * per_kind[k][1] / per_kind[k][0] : 0.0);
    for (int k = 0; k < PBW_COLOUR_COUNT; k++)
        printf("  %-8s %5d shapes, colour %.1f%% right\n", pbw_colour_names[k], per_col[k][0],
               per_col[k][0] ? 100.0 * per_col[k][1] / per_col[k][0] : 0.0);
    return 0;
}

/* ---------- GAN samples ---------- */

/* Renders seed-bank rows first..first+n-1 of g (fixed noise) into rgb (n images of S*S*3). */
int app_shapes_gan_images(pbw_stylegan2 *g, int64_t first, int64_t n, float truncation,
                          uint8_t *rgb, pbw_err *err) {
    int S = g->size, D = g->style_dim;
    float *z = malloc((size_t)(n * D) * sizeof *z);
    if (!z) return pbw_err_set(err, "out of memory");
    if (pbw_seedbank_z(first, n, D, z)) {
        free(z);
        return pbw_err_set(err, "no seed bank for style size %d", D);
    }
    pbw_ctx *ctx = pbw_ctx_new(PBW_DEV_CPU, err);
    if (!ctx) {
        free(z);
        return -1;
    }
    pbw_ctx_set_grad(ctx, 0);
    if (truncation < 1 && !g->latent_avg && pbw_sg2_mean_latent(ctx, g, 4096, 0, err)) {
        free(z);
        pbw_ctx_free(ctx);
        return -1;
    }
    int rc = 0;
    for (int64_t i = 0; i < n && !rc; i += 16) {
        int64_t b = n - i < 16 ? n - i : 16;
        pbw_tensor *zt = pbw_tensor_wrap(ctx, z + i * D, 2, (int64_t[]){b, D});
        pbw_tensor *img = pbw_sg2_from_z(ctx, g, zt, truncation, NULL);
        if (!img) {
            rc = pbw_err_set(err, "%s", pbw_ctx_error(ctx));
            break;
        }
        for (int64_t k = 0; k < b; k++)
            for (int y = 0; y < S; y++)
                for (int x = 0; x < S; x++)
                    for (int c = 0; c < 3; c++) {
                        float v = img->data[((k * 3 + c) * S + y) * S + x];
                        v = v < -1 ? -1 : (v > 1 ? 1 : v);
                        if (v != v) v = 0;
                        rgb[(((i + k) * S + y) * S + x) * 3 + c] = (uint8_t)lrintf(v * 127.5f + 127.5f);
                    }
        pbw_ctx_reset(ctx);
    }
    free(z);
    pbw_ctx_free(ctx);
    return rc;
}

static int cmd_gan_eval(int argc, char **argv) {
    const char *gan = NULL, *out = NULL;
    long count = 256, first = 0;
    double trunc = 1.0;
    for (int i = 2; i < argc; i++) {
        const char *o = argv[i], *v;
        if (!(v = app_value("shapes", argc, argv, &i))) return 2;
        if (!strcmp(o, "--gan")) gan = v;
        else if (!strcmp(o, "--out")) out = v;
        else if (!strcmp(o, "--count")) {
            if (app_parse_int("shapes", o, v, 1, 100000, &count)) return 2;
        } else if (!strcmp(o, "--first")) {
            if (app_parse_int("shapes", o, v, 0, 100000000, &first)) return 2;
        } else if (!strcmp(o, "--truncation")) {
            if (app_parse_float("shapes", o, v, &trunc)) return 2;
        } else {
            fprintf(stderr, "pbw shapes gan-eval: unknown argument '%s'\n", o);
            return 2;
        }
    }
    if (!gan) {
        fprintf(stderr, "pbw shapes gan-eval: --gan is required\n");
        return 2;
    }
    pbw_err err = {{0}};
    pbw_stylegan2 *g;
    if (pbw_sg2_load(gan, &g, &err)) {
        fprintf(stderr, "pbw shapes gan-eval: --gan %s\n", err.msg);
        return 1;
    }
    int S = g->size, rc = 1;
    uint8_t *rgb = malloc((size_t)count * S * S * 3);
    if (!rgb || app_shapes_gan_images(g, first, count, (float)trunc, rgb, &err)) {
        fprintf(stderr, "pbw shapes gan-eval: %s\n", rgb ? err.msg : "out of memory");
        goto out;
    }
    long nblobs = 0, clean = 0, hist[5] = {0}, kinds[PBW_SHAPE_COUNT] = {0}, cols[PBW_COLOUR_COUNT] = {0};
    double explained = 0;
    for (long i = 0; i < count; i++) {
        const uint8_t *im = rgb + (size_t)i * S * S * 3;
        pbw_blob b[16];
        int n = pbw_shapes_find(im, S, S, b, 16);
        if (n < 0) goto out;
        long chroma = 0, inblobs = 0;
        for (int p = 0; p < S * S; p++) chroma += pbw_shapes_pixel_colour(im + 3 * p) >= 0;
        for (int k = 0; k < n && k < 16; k++) {
            inblobs += b[k].area;
            kinds[b[k].kind]++;
            cols[b[k].colour]++;
        }
        nblobs += n;
        hist[n < 4 ? n : 4]++;
        double e = chroma ? (double)inblobs / chroma : 1.0;
        explained += e;
        /* a clean sample: one to three shapes that hold nearly all its coloured pixels */
        clean += n >= 1 && n <= 3 && e >= 0.9;
    }
    printf("gan-eval %s: %ld seeds from %ld (truncation %.2f): %.2f shapes per image; images "
           "with 0/1/2/3/4+ shapes: %ld/%ld/%ld/%ld/%ld; clean (1-3 shapes holding >= 90%% of "
           "the coloured pixels): %.1f%%; coloured pixels in shapes: %.1f%%\n",
           gan, count, first, trunc, (double)nblobs / count, hist[0], hist[1], hist[2], hist[3],
           hist[4], 100.0 * clean / count, 100.0 * explained / count);
    printf("  shapes found:");
    for (int k = 0; k < PBW_SHAPE_COUNT; k++) printf(" %s %ld", pbw_shape_names[k], kinds[k]);
    printf("\n  colours found:");
    for (int k = 0; k < PBW_COLOUR_COUNT; k++) printf(" %s %ld", pbw_colour_names[k], cols[k]);
    printf("\n");
    if (out) {
        int gc = (int)ceil(sqrt((double)count)), gr = (int)((count + gc - 1) / gc);
        pbw_image im = {.w = gc * S, .h = gr * S, .c = 3};
        im.data = calloc((size_t)im.w * im.h, 3);
        if (!im.data) goto out;
        for (long i = 0; i < count; i++)
            for (int y = 0; y < S; y++)
                memcpy(im.data + (((size_t)(i / gc) * S + y) * im.w + (size_t)(i % gc) * S) * 3,
                       rgb + ((size_t)i * S * S + (size_t)y * S) * 3, (size_t)S * 3);
        int w = pbw_image_write_png(out, &im, &err);
        free(im.data);
        if (w) {
            fprintf(stderr, "pbw shapes gan-eval: --out %s\n", err.msg);
            goto out;
        }
        fprintf(stderr, "pbw shapes gan-eval: wrote %s\n", out);
    }
    rc = 0;
out:
    free(rgb);
    pbw_sg2_free(g);
    return rc;
}

/* ---------- CLIP top-1 ---------- */

/* Embeds n images (n x S*S*3 bytes) with CLIP's preprocessing; out: n x E floats. */
static int embed_images(pbw_ctx *ctx, const pbw_clip *m, const uint8_t *rgb, int n, int S,
                        float *out, pbw_err *err) {
    int64_t P = m->cfg.image_size, per = 3 * P * P, E = m->cfg.embed_dim;
    float *px = malloc((size_t)(16 * per) * sizeof *px);
    if (!px) return pbw_err_set(err, "out of memory");
    for (int i = 0; i < n; i += 16) {
        int b = n - i < 16 ? n - i : 16;
        for (int k = 0; k < b; k++) {
            pbw_image im = {.w = S, .h = S, .c = 3, .data = (uint8_t *)rgb + (size_t)(i + k) * S * S * 3};
            if (pbw_clip_preprocess(&im, (int)P, px + k * per, err)) {
                free(px);
                return -1;
            }
        }
        pbw_tensor *t = pbw_tensor_wrap(ctx, px, 4, (int64_t[]){b, 3, P, P});
        pbw_tensor *e = pbw_clip_encode_image(ctx, m, t);
        if (!e) {
            free(px);
            return pbw_err_set(err, "%s", pbw_ctx_error(ctx));
        }
        memcpy(out + (size_t)i * E, e->data, (size_t)(b * E) * sizeof(float));
        pbw_ctx_reset(ctx);
    }
    free(px);
    return 0;
}

static int app_shapes_embed_texts(pbw_ctx *ctx, const pbw_clip *m, pbw_tokenizer *tok,
                                  const char *const *texts, int n, float *out, pbw_err *err) {
    int64_t C = m->cfg.context_length, E = m->cfg.embed_dim;
    int32_t *ids = malloc((size_t)(n * C) * sizeof *ids);
    if (!ids) return pbw_err_set(err, "out of memory");
    for (int i = 0; i < n; i++) {
        size_t got;
        if (pbw_tokenize(tok, texts[i], strlen(texts[i]), ids + i * C, (size_t)C, (int)C, &got, err)) {
            free(ids);
            return -1;
        }
    }
    for (int i = 0; i < n; i += 64) {
        int b = n - i < 64 ? n - i : 64;
        pbw_tensor *e = pbw_clip_encode_text(ctx, m, ids + i * C, b, C);
        if (!e) {
            free(ids);
            return pbw_err_set(err, "%s", pbw_ctx_error(ctx));
        }
        memcpy(out + (size_t)i * E, e->data, (size_t)(b * E) * sizeof(float));
        pbw_ctx_reset(ctx);
    }
    free(ids);
    return 0;
}

/* A deterministic choice of `k` distinct caption indices other than `self`, whose caption
 * text differs from the true one. */
static void pick_distractors(char (*caps)[256], int n, int self, int k, uint32_t seed, int *out) {
    pbw_rng r;
    pbw_rng_seed(&r, seed * 7919u + (uint32_t)self);
    int got = 0, tries = 0;
    while (got < k && tries < 100000) {
        tries++;
        int j = (int)(pbw_rng_uniform(&r) * n);
        if (j == self || !strcmp(caps[j], caps[self])) continue;
        int dup = 0;
        for (int q = 0; q < got; q++) dup |= !strcmp(caps[out[q]], caps[j]);
        if (!dup) out[got++] = j;
    }
    for (; got < k; got++) out[got] = self == 0 ? 1 : 0; /* tiny sets only */
}

static double top1(const float *img, const float *txt, int n, int E, char (*caps)[256], int choices,
                   uint32_t seed) {
    int *cand = malloc((size_t)choices * sizeof *cand), right = 0;
    if (!cand) return -1;
    for (int i = 0; i < n; i++) {
        pick_distractors(caps, n, i, choices - 1, seed, cand);
        float best = pbw_cosine_f32(img + (size_t)i * E, txt + (size_t)i * E, E);
        int win = 1;
        for (int k = 0; k < choices - 1; k++)
            if (pbw_cosine_f32(img + (size_t)i * E, txt + (size_t)cand[k] * E, E) >= best) win = 0;
        right += win;
    }
    free(cand);
    return (double)right / n;
}

/* Top-1 over all colour x shape captions ("a red circle", ...): v (n x E) image embeddings,
 * truth[i] = colour * PBW_SHAPE_COUNT + kind. Counts colour-right and both-right. */
static void top1_all(const float *v, const int *truth, int n, const float *t30, int E, int *both,
                     int *colour) {
    *both = *colour = 0;
    for (int i = 0; i < n; i++) {
        int best = 0;
        float bs = -2;
        for (int j = 0; j < PBW_COLOUR_COUNT * PBW_SHAPE_COUNT; j++) {
            float c = pbw_cosine_f32(v + (size_t)i * E, t30 + (size_t)j * E, E);
            if (c > bs) {
                bs = c;
                best = j;
            }
        }
        *both += best == truth[i];
        *colour += best / PBW_SHAPE_COUNT == truth[i] / PBW_SHAPE_COUNT;
    }
}

/* The masked view of a region: mask * x in [-1,1], back to bytes (outside becomes 127.5). */
static void masked_view(const uint8_t *im, const float *mask, int S, uint8_t *out) {
    for (int p = 0; p < S * S; p++)
        for (int k = 0; k < 3; k++) {
            float x = im[3 * p + k] / 127.5f - 1;
            out[3 * p + k] = (uint8_t)lrintf((mask[p] * x) * 127.5f + 127.5f);
        }
}

static int cmd_clip_eval(int argc, char **argv) {
    const char *dir = NULL, *gan = NULL;
    long count = 200, seed = 777001, choices = 10;
    for (int i = 2; i < argc; i++) {
        const char *o = argv[i], *v;
        if (!(v = app_value("shapes", argc, argv, &i))) return 2;
        if (!strcmp(o, "--clip")) dir = v;
        else if (!strcmp(o, "--gan")) gan = v;
        else if (!strcmp(o, "--count")) {
            if (app_parse_int("shapes", o, v, 10, 100000, &count)) return 2;
        } else if (!strcmp(o, "--seed")) {
            if (app_parse_int("shapes", o, v, 0, 0x7fffffffL, &seed)) return 2;
        } else if (!strcmp(o, "--choices")) {
            if (app_parse_int("shapes", o, v, 2, 100, &choices)) return 2;
        } else {
            fprintf(stderr, "pbw shapes clip-eval: unknown argument '%s'\n", o);
            return 2;
        }
    }
    if (!dir) {
        fprintf(stderr, "pbw shapes clip-eval: --clip DIR is required\n");
        return 2;
    }
    double t0 = now_s();
    pbw_err err = {{0}};
    pbw_clip *m = NULL;
    pbw_tokenizer *tok = NULL;
    pbw_ctx *ctx = NULL;
    int rc = 1, n = (int)count, S = 64;
    if (pbw_clip_load(dir, &m, &err) || !(tok = pbw_tokenizer_load(dir, &err)) ||
        !(ctx = pbw_ctx_new(PBW_DEV_CPU, &err))) {
        fprintf(stderr, "pbw shapes clip-eval: --clip %s\n", err.msg);
        pbw_clip_free(m);
        pbw_tokenizer_free(tok);
        return 1;
    }
    pbw_ctx_set_grad(ctx, 0);
    int E = m->cfg.embed_dim;
    uint8_t *rgb = malloc((size_t)n * S * S * 3), *view = malloc((size_t)n * S * S * 3);
    char(*caps)[256] = malloc((size_t)n * sizeof *caps);
    char(*scaps)[256] = malloc((size_t)n * sizeof *scaps);
    const char **ptr = calloc((size_t)n, sizeof *ptr);
    float *ie = malloc((size_t)n * E * sizeof *ie), *te = malloc((size_t)n * E * sizeof *te);
    float *ve = malloc((size_t)n * E * sizeof *ve), *se = malloc((size_t)n * E * sizeof *se);
    float *cov = malloc((size_t)S * S * sizeof *cov), *mask = malloc((size_t)S * S * sizeof *mask);
    float *t30 = malloc((size_t)PBW_COLOUR_COUNT * PBW_SHAPE_COUNT * E * sizeof *t30);
    int *truth = malloc((size_t)n * sizeof *truth);
    char(*c30)[64] = malloc((size_t)PBW_COLOUR_COUNT * PBW_SHAPE_COUNT * sizeof *c30);
    const char *p30[PBW_COLOUR_COUNT * PBW_SHAPE_COUNT];
    pbw_stylegan2 *g = NULL;
    if (!rgb || !view || !caps || !scaps || !ptr || !ie || !te || !ve || !se || !cov || !mask ||
        !t30 || !truth || !c30) {
        fprintf(stderr, "pbw shapes clip-eval: out of memory\n");
        goto out;
    }
    for (int i = 0; i < n; i++) {
        pbw_scene sc;
        pbw_scene_random(&sc, (uint64_t)seed, i, NULL);
        uint8_t *im = rgb + (size_t)i * S * S * 3, *vw = view + (size_t)i * S * S * 3;
        pbw_scene_render(&sc, S, im);
        pbw_scene_caption(&sc, PBW_CAPTION_SHORT, caps[i], sizeof caps[i]);
        /* the single-shape view: the first shape's box grown by 4 px, mid-gray elsewhere,
         * as the painter's paste_onto_blank loss shows a masked region */
        const pbw_shape *sh = &sc.shapes[0];
        int x0, y0, x1, y1;
        pbw_shape_bbox(sh, S, &x0, &y0, &x1, &y1);
        pbw_shapes_box_mask(x0, y0, x1, y1, 4, S, S, mask);
        masked_view(im, mask, S, vw);
        pbw_shape_caption(sh, PBW_CAPTION_SHORT, scaps[i], sizeof scaps[i]);
        truth[i] = sh->colour * PBW_SHAPE_COUNT + sh->kind;
    }
    if (embed_images(ctx, m, rgb, n, S, ie, &err) || embed_images(ctx, m, view, n, S, ve, &err)) {
        fprintf(stderr, "pbw shapes clip-eval: %s\n", err.msg);
        goto out;
    }
    for (int i = 0; i < n; i++) ptr[i] = caps[i];
    if (app_shapes_embed_texts(ctx, m, tok, ptr, n, te, &err)) goto fail_text;
    for (int i = 0; i < n; i++) ptr[i] = scaps[i];
    if (app_shapes_embed_texts(ctx, m, tok, ptr, n, se, &err)) goto fail_text;
    double a = top1(ie, te, n, E, caps, (int)choices, (uint32_t)seed);
    double b = top1(ve, se, n, E, scaps, (int)choices, (uint32_t)seed + 1);
    for (int c = 0; c < PBW_COLOUR_COUNT; c++)
        for (int k = 0; k < PBW_SHAPE_COUNT; k++) {
            pbw_shape sh = {.kind = k, .colour = c};
            pbw_shape_caption(&sh, PBW_CAPTION_SHORT, c30[c * PBW_SHAPE_COUNT + k], sizeof c30[0]);
            p30[c * PBW_SHAPE_COUNT + k] = c30[c * PBW_SHAPE_COUNT + k];
        }
    if (app_shapes_embed_texts(ctx, m, tok, p30, PBW_COLOUR_COUNT * PBW_SHAPE_COUNT, t30, &err))
        goto fail_text;
    int both, colour;
    top1_all(ve, truth, n, t30, E, &both, &colour);
    printf("clip-eval %s: %d held-out scenes (seed %ld), top-1 among %ld captions: whole scene "
           "(\"%s\" ...) %.1f%%; one shape in a mask, gray outside (\"%s\" ...) %.1f%%\n",
           dir, n, seed, choices, caps[0], 100 * a, scaps[0], 100 * b);
    printf("  the same masked shapes against all %d colour-shape captions: %.1f%% right (colour "
           "right %.1f%%)\n", PBW_COLOUR_COUNT * PBW_SHAPE_COUNT, 100.0 * both / n, 100.0 * colour / n);
    if (gan) {
        /* GAN pictures: the checker's confident reading of a shape is the truth */
        if (pbw_sg2_load(gan, &g, &err) || g->size != S) {
            fprintf(stderr, "pbw shapes clip-eval: --gan %s\n", g ? "must be a 64 px generator" : err.msg);
            goto out;
        }
        if (app_shapes_gan_images(g, 0, n, 1.0f, rgb, &err)) {
            fprintf(stderr, "pbw shapes clip-eval: %s\n", err.msg);
            goto out;
        }
        int nv = 0;
        for (int i = 0; i < n; i++) {
            pbw_blob bl[8];
            int nb = pbw_shapes_find(rgb + (size_t)i * S * S * 3, S, S, bl, 8);
            if (nb < 1 || nb > 3 || !pbw_shapes_blob_confident(&bl[0])) continue;
            pbw_shapes_box_mask(bl[0].x0, bl[0].y0, bl[0].x1, bl[0].y1, 4, S, S, mask);
            masked_view(rgb + (size_t)i * S * S * 3, mask, S, view + (size_t)nv * S * S * 3);
            truth[nv++] = bl[0].colour * PBW_SHAPE_COUNT + bl[0].kind;
        }
        if (nv && embed_images(ctx, m, view, nv, S, ve, &err)) {
            fprintf(stderr, "pbw shapes clip-eval: %s\n", err.msg);
            goto out;
        }
        top1_all(ve, truth, nv, t30, E, &both, &colour);
        printf("  GAN seeds 0..%d, the largest shape in a mask where the checker is sure of it (%d "
               "shapes): CLIP's top-1 of %d captions agrees with the checker %.1f%% (colour %.1f%%)\n",
               n - 1, nv, PBW_COLOUR_COUNT * PBW_SHAPE_COUNT, nv ? 100.0 * both / nv : 0.0,
               nv ? 100.0 * colour / nv : 0.0);
    }
    printf("  (%.1f s)\n", now_s() - t0);
    rc = 0;
    goto out;
fail_text:
    fprintf(stderr, "pbw shapes clip-eval: %s\n", err.msg);
out:
    free(rgb);
    free(view);
    free(caps);
    free(scaps);
    free(ptr);
    free(ie);
    free(te);
    free(ve);
    free(se);
    free(cov);
    free(mask);
    free(t30);
    free(truth);
    free(c30);
    pbw_sg2_free(g);
    pbw_ctx_free(ctx);
    pbw_clip_free(m);
    pbw_tokenizer_free(tok);
    return rc;
}

/* ---------- overlay: the mask on the picture, and the result beside it ---------- */

static int cmd_overlay(int argc, char **argv) {
    const char *img = NULL, *maskp = NULL, *after = NULL, *out = NULL;
    long scale = 4;
    for (int i = 2; i < argc; i++) {
        const char *o = argv[i], *v;
        if (!(v = app_value("shapes", argc, argv, &i))) return 2;
        if (!strcmp(o, "--image")) img = v;
        else if (!strcmp(o, "--mask")) maskp = v;
        else if (!strcmp(o, "--after")) after = v;
        else if (!strcmp(o, "--out")) out = v;
        else if (!strcmp(o, "--scale")) {
            if (app_parse_int("shapes", o, v, 1, 32, &scale)) return 2;
        } else {
            fprintf(stderr, "pbw shapes overlay: unknown argument '%s'\n", o);
            return 2;
        }
    }
    if (!img || !maskp || !out) {
        fprintf(stderr, "pbw shapes overlay: --image, --mask and --out are required\n");
        return 2;
    }
    pbw_err err = {{0}};
    pbw_image a = {0}, b = {0}, o = {0};
    float *m = NULL;
    int rc = 1;
    if (pbw_image_read(img, &a, &err) || (after && pbw_image_read(after, &b, &err)) ||
        app_shapes_read_mask(maskp, a.w, a.h, &m, &err)) {
        fprintf(stderr, "pbw shapes overlay: %s\n", err.msg);
        goto out;
    }
    if (after && (b.w != a.w || b.h != a.h)) {
        fprintf(stderr, "pbw shapes overlay: %s and %s differ in size\n", img, after);
        goto out;
    }
    int panels = after ? 2 : 1, gap = after ? 2 : 0, W = a.w, H = a.h, K = (int)scale;
    o.w = panels * W * K + gap * (panels - 1);
    o.h = H * K;
    o.c = 3;
    o.data = calloc((size_t)o.w * o.h, 3);
    if (!o.data) goto out;
    memset(o.data, 255, (size_t)o.w * o.h * 3);
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++) {
            int in = m[y * W + x] > 0.5f, edge = 0;
            if (in) /* a mask pixel next to a non-mask pixel (or the border) */
                edge = x == 0 || y == 0 || x == W - 1 || y == H - 1 || m[y * W + x - 1] <= 0.5f ||
                       m[y * W + x + 1] <= 0.5f || m[(y - 1) * W + x] <= 0.5f || m[(y + 1) * W + x] <= 0.5f;
            for (int p = 0; p < panels; p++) {
                const pbw_image *src = p ? &b : &a;
                const uint8_t *px = src->data + ((size_t)y * W + x) * src->c;
                uint8_t c[3];
                for (int k = 0; k < 3; k++)
                    c[k] = p ? px[k] : (edge ? 255 : (in ? px[k] : (uint8_t)(px[k] / 2)));
                for (int dy = 0; dy < K; dy++)
                    for (int dx = 0; dx < K; dx++)
                        memcpy(o.data + (((size_t)y * K + dy) * o.w + (size_t)p * (W * K + gap) + (size_t)x * K + dx) * 3, c, 3);
            }
        }
    if (pbw_image_write_png(out, &o, &err)) {
        fprintf(stderr, "pbw shapes overlay: --out %s\n", err.msg);
        goto out;
    }
    rc = 0;
out:
    pbw_image_free(&a);
    pbw_image_free(&b);
    free(o.data);
    free(m);
    return rc;
}

int cmd_shapes(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "-h") || !strcmp(argv[1], "--help") ||
        (argc > 2 && app_wants_help(argc, argv))) {
        help(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    const char *sub = argv[1];
    if (sub[0] == '-') return cmd_render(argc, argv, 1);
    if (!strcmp(sub, "render")) return cmd_render(argc, argv, 2);
    if (!strcmp(sub, "check")) return cmd_check(argc, argv);
    if (!strcmp(sub, "eval")) return cmd_eval(argc, argv);
    if (!strcmp(sub, "gan-eval")) return cmd_gan_eval(argc, argv);
    if (!strcmp(sub, "clip-eval")) return cmd_clip_eval(argc, argv);
    if (!strcmp(sub, "overlay")) return cmd_overlay(argc, argv);
    if (!strcmp(sub, "plan")) return app_shapes_plan(argc, argv);
    if (!strcmp(sub, "score")) return app_shapes_score(argc, argv);
    fprintf(stderr, "pbw shapes: unknown subcommand '%s' (pbw shapes --help)\n", sub);
    return 2;
}
