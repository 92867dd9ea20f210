/* cmd_shapes_bench.c: the semantic benchmark's two ends, `pbw shapes plan` and
 * `pbw shapes score` (bench/semantic.sh runs `pbw edit` in between).
 *
 * plan: renders the GAN's seed images, finds their shapes with the geometric checker and, for
 * seeds whose picture is clean (one to three shapes, the largest confidently one of the
 * world's shapes and alone in its mask), writes one edit: the mask is a square around that
 * shape grown by 3 px, and the prompt asks either for another colour of the same shape
 * ("colour" edits: "a yellow circle" for a red circle) or for another shape in the same colour
 * ("shape" edits: "a red star"). Categories alternate, so the set is balanced.
 *
 * score: reads every edit's result, asks the checker what the mask now shows, and measures
 * the change outside the mask's footprint (the mask grown by --margin pixels, default size/8,
 * which covers the blur of the finest masked layer, sigma = size/16, out to two sigma). The shape
 * the mask shows is the blob with the most pixels inside it, if it covers at least 1% of the
 * image (the world's smallest shapes cover about 1.5%). A colour edit succeeds when that shape
 * has the asked colour, a shape edit when it has the asked shape (and, reported apart, both). */
#include <json-c/json.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "app/pbw_app.h"
#include "app/pbw_shapes_app.h"
#include "core/pbw_rng.h"
#include "formats/pbw_file.h"
#include "formats/pbw_image.h"
#include "formats/pbw_json.h"
#include "models/pbw_shapes.h"
#include "models/pbw_shapes_check.h"

static int ensure_dir(const char *p) {
    struct stat st;
    return mkdir(p, 0777) && !(stat(p, &st) == 0 && S_ISDIR(st.st_mode)) ? -1 : 0;
}

static int write_mask(const char *path, const float *m, int S, pbw_err *err) {
    pbw_image im = {.w = S, .h = S, .c = 3};
    im.data = malloc((size_t)S * S * 3);
    if (!im.data) return pbw_err_set(err, "out of memory");
    for (int i = 0; i < S * S; i++) im.data[3 * i] = im.data[3 * i + 1] = im.data[3 * i + 2] = m[i] > 0.5f ? 255 : 0;
    int rc = pbw_image_write_png(path, &im, err);
    free(im.data);
    return rc;
}

int app_shapes_plan(int argc, char **argv) {
    const char *gan = NULL, *out = NULL;
    long count = 120, first = 0, grow = 3, scan = 2000;
    for (int i = 2; i < argc; i++) {
        const char *o = argv[i], *v;
        if (!(v = app_value("shapes", argc, argv, &i))) return 2;
        if (!strcmp(o, "--gan")) gan = v;
        else if (!strcmp(o, "--out")) out = v;
        else if (!strcmp(o, "--count")) {
            if (app_parse_int("shapes", o, v, 2, 10000, &count)) return 2;
        } else if (!strcmp(o, "--first")) {
            if (app_parse_int("shapes", o, v, 0, 100000000, &first)) return 2;
        } else if (!strcmp(o, "--grow")) {
            if (app_parse_int("shapes", o, v, 0, 64, &grow)) return 2;
        } else if (!strcmp(o, "--scan")) {
            if (app_parse_int("shapes", o, v, 1, 100000, &scan)) return 2;
        } else {
            fprintf(stderr, "pbw shapes plan: unknown argument '%s'\n", o);
            return 2;
        }
    }
    if (!gan || !out) {
        fprintf(stderr, "pbw shapes plan: --gan and --out are required\n");
        return 2;
    }
    pbw_err err = {{0}};
    pbw_stylegan2 *g;
    if (pbw_sg2_load(gan, &g, &err)) {
        fprintf(stderr, "pbw shapes plan: --gan %s\n", err.msg);
        return 1;
    }
    int S = g->size, rc = 1;
    size_t plen = strlen(out) + 64;
    char *path = malloc(plen);
    uint8_t *rgb = malloc((size_t)S * S * 3 * 64);
    float *mask = malloc((size_t)S * S * sizeof *mask);
    pbw_file_tmp jt = {0}, tt = {0};
    if (!path || !rgb || !mask) {
        fprintf(stderr, "pbw shapes plan: out of memory\n");
        goto out;
    }
    snprintf(path, plen, "%s/masks", out);
    if (ensure_dir(out) || ensure_dir(path)) {
        fprintf(stderr, "pbw shapes plan: cannot create %s\n", path);
        goto out;
    }
    snprintf(path, plen, "%s/before", out);
    if (ensure_dir(path)) {
        fprintf(stderr, "pbw shapes plan: cannot create %s\n", path);
        goto out;
    }
    snprintf(path, plen, "%s/plan.jsonl", out);
    if (pbw_file_tmp_open(&jt, path, &err)) {
        fprintf(stderr, "pbw shapes plan: %s\n", err.msg);
        goto out;
    }
    snprintf(path, plen, "%s/plan.tsv", out); /* the same for shell loops: id seed category mask prompt */
    if (pbw_file_tmp_open(&tt, path, &err)) {
        fprintf(stderr, "pbw shapes plan: %s\n", err.msg);
        goto out;
    }
    pbw_rng r;
    pbw_rng_seed(&r, 20210319u);
    long made = 0, seen = 0;
    for (long base = first; made < count && seen < scan; base += 64) {
        if (app_shapes_gan_images(g, base, 64, 1.0f, rgb, &err)) {
            fprintf(stderr, "pbw shapes plan: %s\n", err.msg);
            goto out;
        }
        for (int k = 0; k < 64 && made < count && seen < scan; k++, seen++) {
            const uint8_t *im = rgb + (size_t)k * S * S * 3;
            pbw_blob b[16];
            int n = pbw_shapes_find(im, S, S, b, 16);
            if (n < 1 || n > 3 || !pbw_shapes_blob_confident(&b[0])) continue;
            pbw_shapes_box_mask(b[0].x0, b[0].y0, b[0].x1, b[0].y1, (int)grow, S, S, mask);
            /* the target must be alone in its mask */
            int alone = 1;
            for (int j = 1; j < n; j++) {
                int bx0 = b[j].x0, by0 = b[j].y0, bx1 = b[j].x1, by1 = b[j].y1;
                for (int y = by0; y < by1 && alone; y++)
                    for (int x = bx0; x < bx1 && alone; x++) alone = mask[y * S + x] < 0.5f;
            }
            if (!alone) continue;
            int cat = (int)(made & 1); /* 0 colour, 1 shape */
            int tc = b[0].colour, tk = b[0].kind;
            if (cat == 0) {
                tc = (b[0].colour + 1 + (int)(pbw_rng_uniform(&r) * (PBW_COLOUR_COUNT - 1))) % PBW_COLOUR_COUNT;
            } else {
                tk = (b[0].kind + 1 + (int)(pbw_rng_uniform(&r) * (PBW_SHAPE_COUNT - 1))) % PBW_SHAPE_COUNT;
            }
            long seed = base + k;
            pbw_shape want = {.kind = tk, .colour = tc};
            char prompt[64];
            pbw_shape_caption(&want, PBW_CAPTION_SHORT, prompt, sizeof prompt); /* "an orange star" */
            snprintf(path, plen, "%s/masks/mask_%03ld.png", out, made);
            if (write_mask(path, mask, S, &err)) {
                fprintf(stderr, "pbw shapes plan: %s\n", err.msg);
                goto out;
            }
            pbw_image bi = {.w = S, .h = S, .c = 3, .data = (uint8_t *)im};
            snprintf(path, plen, "%s/before/seed_%ld.png", out, seed);
            if (pbw_image_write_png(path, &bi, &err)) {
                fprintf(stderr, "pbw shapes plan: %s\n", err.msg);
                goto out;
            }
            fprintf(jt.fp,
                    "{\"id\":%ld,\"seed\":%ld,\"category\":\"%s\",\"prompt\":\"%s\","
                    "\"mask\":\"masks/mask_%03ld.png\",\"before\":\"before/seed_%ld.png\","
                    "\"from\":{\"colour\":\"%s\",\"shape\":\"%s\"},\"to\":{\"colour\":\"%s\","
                    "\"shape\":\"%s\"},\"bbox\":[%d,%d,%d,%d]}\n",
                    made, seed, cat ? "shape" : "colour", prompt, made, seed, pbw_colour_names[b[0].colour], pbw_shape_names[b[0].kind],
                    pbw_colour_names[tc], pbw_shape_names[tk], b[0].x0, b[0].y0, b[0].x1, b[0].y1);
            fprintf(tt.fp, "%ld\t%ld\t%s\tmasks/mask_%03ld.png\t%s\n", made, seed,
                    cat ? "shape" : "colour", made, prompt);
            made++;
        }
    }
    if (pbw_file_tmp_commit(&jt, &err) || pbw_file_tmp_commit(&tt, &err)) {
        fprintf(stderr, "pbw shapes plan: %s\n", err.msg);
        goto out;
    }
    fprintf(stderr, "pbw shapes plan: %ld edits from %ld seeds (from %ld) in %s/plan.jsonl\n", made,
            seen, first, out);
    if (made < count) {
        fprintf(stderr, "pbw shapes plan: only %ld clean seeds among %ld (--scan)\n", made, seen);
        goto out;
    }
    rc = 0;
out:
    pbw_file_tmp_abort(&jt);
    pbw_file_tmp_abort(&tt);
    free(path);
    free(rgb);
    free(mask);
    pbw_sg2_free(g);
    return rc;
}

typedef struct {
    long n, ok, both;
    double change, change_all;
} tally;

int app_shapes_score(int argc, char **argv) {
    const char *plan = NULL, *results = NULL, *label = "", *json_out = NULL;
    long margin = -1;
    for (int i = 2; i < argc; i++) {
        const char *o = argv[i], *v;
        if (!(v = app_value("shapes", argc, argv, &i))) return 2;
        if (!strcmp(o, "--plan")) plan = v;
        else if (!strcmp(o, "--results")) results = v;
        else if (!strcmp(o, "--label")) label = v;
        else if (!strcmp(o, "--json")) json_out = v;
        else if (!strcmp(o, "--margin")) {
            if (app_parse_int("shapes", o, v, 0, 1024, &margin)) return 2;
        } else {
            fprintf(stderr, "pbw shapes score: unknown argument '%s'\n", o);
            return 2;
        }
    }
    if (!plan) {
        fprintf(stderr, "pbw shapes score: --plan DIR is required\n");
        return 2;
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/plan.jsonl", plan);
    pbw_err err = {{0}};
    void *buf;
    size_t len;
    if (pbw_file_read(path, 64u << 20, &buf, &len, &err)) {
        fprintf(stderr, "pbw shapes score: %s\n", err.msg);
        return 1;
    }
    tally t[2] = {{0}};
    long missing = 0;
    FILE *jf = NULL;
    if (json_out && !(jf = fopen(json_out, "w"))) {
        fprintf(stderr, "pbw shapes score: --json %s: cannot write\n", json_out);
        free(buf);
        return 1;
    }
    char *s = buf, *end = s + len;
    int rc = 0;
    while (s < end) {
        char *nl = memchr(s, '\n', (size_t)(end - s));
        size_t l = nl ? (size_t)(nl - s) : (size_t)(end - s);
        json_object *e = l ? pbw_json_parse(s, l, path, &err) : NULL;
        s += l + 1;
        if (!l) continue;
        if (!e) {
            fprintf(stderr, "pbw shapes score: %s\n", err.msg);
            rc = 1;
            break;
        }
        int64_t id;
        const char *cat, *maskp, *beforep;
        json_object *to = pbw_json_get_object(e, "to");
        const char *tcs = NULL, *tks = NULL;
        if (pbw_json_get_int(e, "id", -1, &id, &err) || pbw_json_get_string(e, "category", "", &cat, &err) ||
            pbw_json_get_string(e, "mask", "", &maskp, &err) ||
            pbw_json_get_string(e, "before", "", &beforep, &err) || !to ||
            pbw_json_get_string(to, "colour", "", &tcs, &err) ||
            pbw_json_get_string(to, "shape", "", &tks, &err)) {
            fprintf(stderr, "pbw shapes score: %s: bad entry\n", path);
            json_object_put(e);
            rc = 1;
            break;
        }
        char p1[4096], p2[4096], p3[4096];
        snprintf(p1, sizeof p1, "%s/%s", plan, beforep);
        snprintf(p2, sizeof p2, "%s/%s", plan, maskp);
        snprintf(p3, sizeof p3, "%s/edit_%03lld.png", results ? results : plan, (long long)id);
        pbw_image before = {0}, after = {0};
        float *mask = NULL;
        if (pbw_image_read(p3, &after, &err)) {
            missing++;
            json_object_put(e);
            continue;
        }
        if (pbw_image_read(p1, &before, &err) || before.w != after.w || before.h != after.h ||
            app_shapes_read_mask(p2, before.w, before.h, &mask, &err)) {
            fprintf(stderr, "pbw shapes score: %s / %s: %s\n", p1, p3,
                    before.data && before.w != after.w ? "sizes differ" : err.msg);
            pbw_image_free(&before);
            pbw_image_free(&after);
            json_object_put(e);
            rc = 1;
            break;
        }
        int S = before.w;
        int m = margin >= 0 ? (int)margin : S / 8;
        uint8_t *a3 = malloc((size_t)S * S * 3), *b3 = malloc((size_t)S * S * 3);
        if (!a3 || !b3) {
            free(a3);
            free(b3);
            rc = 1;
            break;
        }
        for (size_t p = 0; p < (size_t)S * S; p++)
            for (int k = 0; k < 3; k++) {
                a3[3 * p + k] = before.data[p * before.c + k];
                b3[3 * p + k] = after.data[p * after.c + k];
            }
        pbw_blob bl;
        /* a shape must be big enough to be one: the world's smallest cover ~1.5% of the image;
         * a speck of a few pixels is read as whatever its blob happens to measure */
        int found = pbw_shapes_check_region(b3, S, S, mask, &bl) == 0 && bl.area >= S * S / 100;
        int is_shape = !strcmp(cat, "shape");
        int colour_ok = found && bl.colour == pbw_colour_from_name(tcs);
        int kind_ok = found && bl.kind == pbw_shape_from_name(tks);
        double ch, ch0;
        int64_t cnt, cnt0;
        pbw_shapes_outside_change(a3, b3, S, S, mask, m, &ch, &cnt);
        pbw_shapes_outside_change(a3, b3, S, S, mask, 0, &ch0, &cnt0);
        tally *tt = &t[is_shape];
        tt->n++;
        tt->ok += is_shape ? kind_ok : colour_ok;
        tt->both += colour_ok && kind_ok;
        tt->change += ch;
        tt->change_all += ch0;
        if (jf)
            fprintf(jf, "{\"id\":%lld,\"category\":\"%s\",\"found\":%s,\"colour\":\"%s\","
                        "\"shape\":\"%s\",\"success\":%s,\"outside_change\":%.5f,"
                        "\"outside_change_no_margin\":%.5f}\n",
                    (long long)id, cat, found ? "true" : "false",
                    found ? pbw_colour_names[bl.colour] : "", found ? pbw_shape_names[bl.kind] : "",
                    (is_shape ? kind_ok : colour_ok) ? "true" : "false", ch, ch0);
        free(a3);
        free(b3);
        free(mask);
        pbw_image_free(&before);
        pbw_image_free(&after);
        json_object_put(e);
    }
    free(buf);
    if (jf) fclose(jf);
    if (rc) return rc;
    long n = t[0].n + t[1].n;
    if (!n) {
        fprintf(stderr, "pbw shapes score: no results found (%ld missing)\n", missing);
        return 1;
    }
    /* one markdown table row per category, then the total */
    const char *names[2] = {"colour", "shape"};
    for (int c = 0; c < 2; c++)
        if (t[c].n)
            printf("| %s | %s | %ld | %.1f%% | %.1f%% | %.4f | %.4f |\n", label, names[c], t[c].n,
                   100.0 * t[c].ok / t[c].n, 100.0 * t[c].both / t[c].n, t[c].change / t[c].n,
                   t[c].change_all / t[c].n);
    printf("| %s | all | %ld | %.1f%% | %.1f%% | %.4f | %.4f |\n", label, n,
           100.0 * (t[0].ok + t[1].ok) / n, 100.0 * (t[0].both + t[1].both) / n,
           (t[0].change + t[1].change) / n, (t[0].change_all + t[1].change_all) / n);
    if (missing) fprintf(stderr, "pbw shapes score: %ld edits had no result\n", missing);
    return 0;
}
