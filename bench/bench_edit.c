/* bench_edit.c: issue 6's painting benchmark on pbw's side, through the painter API (what
 * `pbw edit` runs): the time of one Adam step, of one CMA-ES generation and of the whole default
 * masked edit, on the CPU or the GPU. tools/reference/paint_edit_gpu.py times the same loop in
 * PyTorch; bench/run_cuda.sh runs both on a GPU machine and prints the table.
 *
 *   build/bench_edit --gan G.pt --clip DIR --lpips-trunk ALEX.pth --lpips-heads alex.pth
 *       [--vocab bpe.txt.gz] [--device cpu|cuda|auto] [--precision bf16|fp16|tf32|fp32]
 *       [--mask M.png | --box SIDE] [--text "a rustic bed" | --ids 49406,...,49407] [--seed 30]
 *       [--steps 20] [--generations 5] [--population 50] [--crops 32] [--cma-batch 0]
 *       [--clip-chunk 0]   (crops per CLIP pass of CMA's generations; 0: the painter's default)
 *       [--edit-generations 20] [--edit-population 50] [--edit-steps 100] [--edit-runs 2]
 *       [--only adam,cma,edit] [--max-edit-seconds 0]
 *
 * What is measured (each a separate pbw_painter_edit on one loaded painter):
 *   adam  optim adam, --steps steps; the median of the progress reports' step_seconds with the
 *         first 2 steps left out (warm-up: arena growth, library autotuning);
 *   cma   optim cma, --generations generations of --population with --crops crops; the median
 *         of step_seconds with the first 2 generations left out (warm-up: on a GPU the first
 *         runs directly, the second records the generation's CUDA graph, ~175 ms on an H200),
 *         and their mean (cma_gen_mean_s: every other generation's tell decomposes the
 *         covariance, which a median of few generations may leave out or take half of);
 *   edit  pbw_paint_request_default (cma+adam: 20 generations of 50, 32 crops, then 100 Adam
 *         steps), wall time of the whole call (start image, text, CMA, Adam and the final
 *         before/after evaluation), --edit-runs times (a run is skipped when the time so far
 *         passes --max-edit-seconds, if set); on CUDA builds the peak device memory of the
 *         first edit (pbw_cuda_mem_peak after pbw_cuda_mem_reset_peak: the bytes pbw's
 *         allocator holds, weights and the libraries' workspaces included; what cuBLAS and
 *         cuDNN allocate inside their handles is not counted).
 * Every mode reports progress as `pbw edit` does without --history: each step's losses, the
 * images left on the device (no_progress_images).
 * Mask: --mask PNG, else a centered square of side --box (default 3/8 of the image side: 96 of
 * 256). Words: --text (needs a vocabulary: --vocab, or the CLIP directory's), or --ids.
 *
 * Prints one JSON line on stdout (seconds; null for what was not measured); progress on stderr.
 * With PBW_PROFILE=1 or =gpu (see `pbw edit --help`), the time per op of the adam and cma
 * phases' steps after their first, a table each on stderr.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench_util.h"
#include "core/pbw_tensor.h"
#include "paint/pbw_painter.h"
#ifdef PBW_HAVE_CUDA
#include "cuda/pbw_cuda.h"
#endif

/* Median of v[skip..n); -1 when nothing is left. Sorts that part of v. */
static double median_after(double *v, int n, int skip) {
    if (n - skip < 1) return -1;
    qsort(v + skip, (size_t)(n - skip), sizeof *v, bench_cmp_double);
    int m = n - skip;
    return m % 2 ? v[skip + m / 2] : 0.5 * (v[skip + m / 2 - 1] + v[skip + m / 2]);
}

/* Step times of one run, by phase, collected by the progress callback. */
typedef struct steps {
    double *t[2];
    int n[2], cap;
    double last_loss[2];
    int verbose;
    int prof_steps; /* steps in the PBW_PROFILE table */
    double t0;      /* when the run began (bench_now), for --verbose */
} steps;

static void on_progress(const pbw_paint_progress *pr, void *user) {
    steps *s = user;
    int ph = pr->phase == PBW_PHASE_ADAM;
    if (s->n[ph] < s->cap) s->t[ph][s->n[ph]++] = pr->step_seconds;
    s->last_loss[ph] = pr->loss.total;
    if (s->verbose)
        fprintf(stderr, "bench_edit: %s %d/%d  %.1f ms  loss %.4f  at %.3f s\n",
                ph ? "adam" : "cma", pr->phase_step, pr->phase_steps, 1e3 * pr->step_seconds,
                pr->loss.total, bench_now() - s->t0);
    if (pbw_profile_enabled()) { /* the table counts the steps after the phase's first */
        if (pr->phase_step <= 1) {
            pbw_profile_clear();
            s->prof_steps = 0;
        } else {
            s->prof_steps++;
        }
    }
}

/* PBW_PROFILE set: the per-op table of the measured phase's steps after its first. */
static void profile_report(const steps *s, const char *phase) {
    if (!pbw_profile_enabled() || s->prof_steps < 1) return;
    fprintf(stderr, "bench_edit: %s: time per op and step (PBW_PROFILE), over %d steps:\n", phase,
            s->prof_steps);
    pbw_profile_report(stderr, 1.0 / s->prof_steps);
}

static int steps_init(steps *s, int cap, int verbose) {
    memset(s, 0, sizeof *s);
    s->cap = cap;
    s->verbose = verbose;
    s->t0 = bench_now();
    s->t[0] = malloc((size_t)cap * sizeof(double));
    s->t[1] = malloc((size_t)cap * sizeof(double));
    return s->t[0] && s->t[1] ? 0 : -1;
}

static void steps_free(steps *s) {
    free(s->t[0]);
    free(s->t[1]);
}

/* "1,2,3" -> malloc'd int32 array; -1 on a bad list. */
static int parse_ids(const char *s, int32_t **out, int *n) {
    int cap = 1;
    for (const char *c = s; *c; c++) cap += *c == ',';
    int32_t *v = malloc((size_t)cap * sizeof *v);
    if (!v) return -1;
    int k = 0;
    const char *c = s;
    while (*c) {
        char *end;
        long x = strtol(c, &end, 10);
        if (end == c || x < 0 || x > 1 << 24) {
            free(v);
            return -1;
        }
        v[k++] = (int32_t)x;
        c = *end == ',' ? end + 1 : end;
        if (*end && *end != ',') {
            free(v);
            return -1;
        }
    }
    *out = v;
    *n = k;
    return k > 0 ? 0 : -1;
}

static void json_num(const char *key, double v, int comma) {
    if (v < 0) printf("\"%s\": null%s", key, comma ? ", " : "");
    else printf("\"%s\": %.6g%s", key, v, comma ? ", " : "");
}

/* What is measured so far (one JSON line; partial: before the edit runs). */
typedef struct results {
    const char *device, *precision;
    int S, crops, steps_n, pop, gens, cma_batch, e_gens, e_pop, e_steps, n_edit;
    double t_load, adam_s, adam_first, cma_s, cma_mean, cma_first, edit_s[16], edit_cma_med,
        edit_adam_med, before_total, after_total, used_before, peak;
} results;

static void emit(const results *r, int final) {
    printf("{\"impl\": \"pbw\", \"device\": \"%s\", \"precision\": \"%s\", \"size\": %d, "
           "\"crops\": %d, \"adam_steps\": %d, \"cma_pop\": %d, \"cma_gens\": %d, "
           "\"cma_batch\": %d, \"partial\": %s, ",
           r->device, r->precision, r->S, r->crops, r->steps_n, r->pop, r->gens, r->cma_batch,
           final ? "false" : "true");
    json_num("load_s", r->t_load, 1);
    json_num("adam_step_s", r->adam_s, 1);
    json_num("adam_first_step_s", r->adam_first, 1);
    json_num("cma_gen_s", r->cma_s, 1);
    json_num("cma_gen_mean_s", r->cma_mean, 1);
    json_num("cma_first_gen_s", r->cma_first, 1);
    printf("\"edit_generations\": %d, \"edit_population\": %d, \"edit_adam_steps\": %d, "
           "\"edit_s\": [",
           r->e_gens, r->e_pop, r->e_steps);
    for (int i = 0; i < r->n_edit; i++) printf("%s%.6g", i ? ", " : "", r->edit_s[i]);
    printf("], ");
    json_num("edit_cma_gen_median_s", r->edit_cma_med, 1);
    json_num("edit_adam_step_median_s", r->edit_adam_med, 1);
    json_num("edit_before_loss", r->before_total, 1);
    json_num("edit_after_loss", r->after_total, 1);
    json_num("mem_before_edit_bytes", r->used_before, 1);
    json_num("edit_peak_bytes", r->peak, 0);
    printf("}\n");
    fflush(stdout);
}

static void usage(void) {
    fprintf(stderr,
            "usage: bench_edit --gan G.pt --clip DIR --lpips-trunk ALEX.pth --lpips-heads alex.pth\n"
            "  [--vocab V] [--device cpu|cuda|auto] [--precision bf16|fp16|tf32|fp32]\n"
            "  [--mask M.png | --box SIDE] [--text T | --ids N,N,...] [--seed 30]\n"
            "  [--steps 20] [--generations 5] [--population 50] [--crops 32] [--cma-batch 0]\n"
            "  [--clip-chunk 0]\n"
            "  [--edit-generations 20] [--edit-population 50] [--edit-steps 100] [--edit-runs 2]\n"
            "  [--only adam,cma,edit] [--max-edit-seconds S] [--verbose]\n");
}

int main(int argc, char **argv) {
    pbw_painter_config cfg = {0};
    const char *device = "cpu", *precision = NULL, *mask_path = NULL, *text = NULL,
               *ids_s = NULL, *only = "adam,cma,edit";
    int box = 0, seed = 30, steps_n = 20, gens = 5, pop = 50, crops = 32, cma_batch = 0;
    int clip_chunk = 0;
    int e_gens = 20, e_pop = 50, e_steps = 100, e_runs = 2, verbose = 0;
    double max_edit_s = 0;
    for (int i = 1; i < argc; i++) {
        const char *o = argv[i];
        if (!strcmp(o, "--verbose")) {
            verbose = 1;
            continue;
        }
        if (!strcmp(o, "--help") || !strcmp(o, "-h")) {
            usage();
            return 0;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "bench_edit: %s needs a value\n", o);
            usage();
            return 2;
        }
        const char *v = argv[++i];
        if (!strcmp(o, "--gan")) cfg.gan = v;
        else if (!strcmp(o, "--clip")) cfg.clip = v;
        else if (!strcmp(o, "--vocab")) cfg.vocab = v;
        else if (!strcmp(o, "--lpips-trunk") || !strcmp(o, "--lpips-backbone")) cfg.lpips_backbone = v;
        else if (!strcmp(o, "--lpips-heads")) cfg.lpips_heads = v;
        else if (!strcmp(o, "--device")) device = v;
        else if (!strcmp(o, "--precision")) precision = v;
        else if (!strcmp(o, "--mask")) mask_path = v;
        else if (!strcmp(o, "--box")) box = atoi(v);
        else if (!strcmp(o, "--text")) text = v;
        else if (!strcmp(o, "--ids")) ids_s = v;
        else if (!strcmp(o, "--seed")) seed = atoi(v);
        else if (!strcmp(o, "--steps")) steps_n = atoi(v);
        else if (!strcmp(o, "--generations")) gens = atoi(v);
        else if (!strcmp(o, "--population")) pop = atoi(v);
        else if (!strcmp(o, "--crops")) crops = atoi(v);
        else if (!strcmp(o, "--cma-batch")) cma_batch = atoi(v);
        else if (!strcmp(o, "--clip-chunk")) clip_chunk = atoi(v);
        else if (!strcmp(o, "--edit-generations")) e_gens = atoi(v);
        else if (!strcmp(o, "--edit-population")) e_pop = atoi(v);
        else if (!strcmp(o, "--edit-steps")) e_steps = atoi(v);
        else if (!strcmp(o, "--edit-runs")) e_runs = atoi(v);
        else if (!strcmp(o, "--only")) only = v;
        else if (!strcmp(o, "--max-edit-seconds")) max_edit_s = atof(v);
        else {
            fprintf(stderr, "bench_edit: unknown option %s\n", o);
            usage();
            return 2;
        }
    }
    if (!cfg.gan || !cfg.clip || !cfg.lpips_backbone) {
        fprintf(stderr, "bench_edit: --gan, --clip and --lpips-trunk are required\n");
        usage();
        return 2;
    }
    if (!text && !ids_s) text = "a rustic bed";
    if (steps_n < 1 || gens < 1 || pop < 2 || crops < 0 || e_gens < 0 || e_pop < 2 ||
        e_steps < 0 || e_runs < 0) {
        fprintf(stderr, "bench_edit: steps and generations >= 1, populations >= 2\n");
        return 2;
    }
    const int do_adam = strstr(only, "adam") != NULL, do_cma = strstr(only, "cma") != NULL,
              do_edit = strstr(only, "edit") != NULL;

    pbw_err err = {0};
    char why[256] = "";
    int index = 0;
    pbw_device dev;
    if (pbw_device_parse(device, &dev, &index, why, sizeof why, &err) ||
        pbw_device_init(dev, index, &err)) {
        fprintf(stderr, "bench_edit: --device %s: %s\n", device, err.msg);
        return 1;
    }
    const char *prec_name = "fp32";
#ifdef PBW_HAVE_CUDA
    if (dev == PBW_DEV_CUDA) {
        pbw_precision p;
        if (pbw_precision_parse(precision ? precision : "bf16", &p)) {
            fprintf(stderr, "bench_edit: --precision '%s': expected fp32, tf32, bf16 or fp16\n",
                    precision);
            return 2;
        }
        pbw_cuda_set_precision(p);
        prec_name = pbw_precision_name(pbw_cuda_precision());
    }
#endif
    if (dev == PBW_DEV_CPU && precision && strcmp(precision, "fp32"))
        fprintf(stderr, "bench_edit: --precision %s applies to the GPU; the CPU computes in fp32\n",
                precision);
    cfg.device = dev;
    if (why[0]) fprintf(stderr, "bench_edit: device %s\n", why);

    results R = {.device = pbw_device_name(dev), .precision = prec_name, .crops = crops,
                 .steps_n = steps_n, .pop = pop, .gens = gens, .cma_batch = cma_batch,
                 .e_gens = e_gens, .e_pop = e_pop, .e_steps = e_steps, .adam_s = -1,
                 .adam_first = -1, .cma_s = -1, .cma_mean = -1, .cma_first = -1,
                 .edit_cma_med = -1, .edit_adam_med = -1, .before_total = -1, .after_total = -1,
                 .used_before = -1, .peak = -1};
    double t_load = bench_now();
    pbw_painter *p;
    if (pbw_painter_new(&p, &cfg, &err)) {
        fprintf(stderr, "bench_edit: %s\n", err.msg);
        return 1;
    }
    R.t_load = bench_now() - t_load;
    const int S = pbw_painter_image_size(p);
    R.S = S;
    float *mask = calloc((size_t)S * S, sizeof *mask);
    int32_t *ids = NULL;
    int n_ids = 0;
    if (!mask) return 1;
    if (mask_path) {
        if (pbw_mask_load(mask_path, S, S, mask, &err)) {
            fprintf(stderr, "bench_edit: %s\n", err.msg);
            return 1;
        }
    } else {
        int b = box > 0 ? box : S * 3 / 8;
        if (b > S) b = S;
        int o = (S - b) / 2;
        for (int y = o; y < o + b; y++)
            for (int x = o; x < o + b; x++) mask[(size_t)y * S + x] = 1.0f;
    }
    if (ids_s && parse_ids(ids_s, &ids, &n_ids)) {
        fprintf(stderr, "bench_edit: --ids '%s': expected comma-separated token ids\n", ids_s);
        return 2;
    }
    if (!ids && !pbw_painter_has_tokenizer(p)) {
        fprintf(stderr, "bench_edit: --text needs a vocabulary (--vocab) or use --ids\n");
        return 2;
    }

    pbw_paint_request base;
    pbw_paint_request_default(&base);
    base.no_progress_images = 1; /* as pbw edit without --history (and the PyTorch loop) */
    base.seed = seed;
    base.mask = mask;
    if (ids) {
        base.ids = ids;
        base.n_ids = n_ids;
    } else {
        base.text = text;
    }

    int cap = steps_n + gens + e_gens + e_steps + 16;
    steps st;
    if (steps_init(&st, cap, verbose)) return 1;
    pbw_paint_result res;
    int rc = 0;

    if (do_adam) { /* Adam steps */
        pbw_paint_request rq = base;
        rq.optim = PBW_OPTIM_ADAM;
        rq.adam_steps = steps_n;
        rq.crops = crops;
        steps_free(&st);
        steps_init(&st, cap, verbose);
        if (pbw_painter_edit(p, &rq, on_progress, &st, NULL, &res, &err)) {
            fprintf(stderr, "bench_edit: adam: %s\n", err.msg);
            rc = 1;
            goto done;
        }
        pbw_paint_result_free(&res);
        R.adam_first = st.n[1] ? st.t[1][0] : -1;
        R.adam_s = median_after(st.t[1], st.n[1], st.n[1] > 2 ? 2 : 0);
        fprintf(stderr, "bench_edit: adam step %.2f ms (median of %d)\n", 1e3 * R.adam_s,
                st.n[1] > 2 ? st.n[1] - 2 : st.n[1]);
        profile_report(&st, "adam");
    }
    if (do_cma) { /* CMA generations */
        pbw_paint_request rq = base;
        rq.optim = PBW_OPTIM_CMA;
        rq.cma_generations = gens;
        rq.population = pop;
        rq.crops = crops;
        rq.cma_batch = cma_batch;
        rq.clip_chunk = clip_chunk;
        steps_free(&st);
        steps_init(&st, cap, verbose);
        if (pbw_painter_edit(p, &rq, on_progress, &st, NULL, &res, &err)) {
            fprintf(stderr, "bench_edit: cma: %s\n", err.msg);
            rc = 1;
            goto done;
        }
        pbw_paint_result_free(&res);
        R.cma_first = st.n[0] ? st.t[0][0] : -1;
        /* as the Adam steps: the first two left out where more are left */
        const int cskip = st.n[0] > 2 ? 2 : 0;
        double csum = 0;
        for (int i = cskip; i < st.n[0]; i++) csum += st.t[0][i];
        R.cma_mean = st.n[0] > cskip ? csum / (st.n[0] - cskip) : -1;
        R.cma_s = median_after(st.t[0], st.n[0], cskip);
        fprintf(stderr, "bench_edit: cma generation %.2f ms (median of %d; mean %.2f)\n",
                1e3 * R.cma_s, st.n[0] - cskip, 1e3 * R.cma_mean);
        profile_report(&st, "cma");
    }

    emit(&R, 0); /* what is measured so far, in case the edit runs out of time */
    if (do_edit) { /* the whole default edit */
        if (e_runs > 16) e_runs = 16;
        double t_all = 0;
        for (int r = 0; r < e_runs; r++) {
            if (r > 0 && max_edit_s > 0 && t_all > max_edit_s) {
                fprintf(stderr, "bench_edit: run %d of the edit skipped (%.1f s so far)\n", r + 1,
                        t_all);
                break;
            }
            pbw_paint_request rq = base;
            rq.cma_generations = e_gens;
            rq.population = e_pop;
            rq.adam_steps = e_steps;
            rq.crops = crops;
            rq.cma_batch = cma_batch;
            rq.clip_chunk = clip_chunk;
            if (e_gens == 0) rq.optim = PBW_OPTIM_ADAM;
            steps_free(&st);
            steps_init(&st, cap, verbose);
#ifdef PBW_HAVE_CUDA
            if (dev == PBW_DEV_CUDA && r == 0) {
                pbw_cuda_sync(NULL);
                R.used_before = (double)pbw_cuda_mem_used();
                pbw_cuda_mem_reset_peak();
            }
#endif
            double t0 = bench_now();
            if (pbw_painter_edit(p, &rq, on_progress, &st, NULL, &res, &err)) {
                fprintf(stderr, "bench_edit: edit: %s\n", err.msg);
                rc = 1;
                goto done;
            }
            double t = bench_now() - t0;
#ifdef PBW_HAVE_CUDA
            if (dev == PBW_DEV_CUDA && r == 0) R.peak = (double)pbw_cuda_mem_peak();
#endif
            R.edit_s[R.n_edit++] = t;
            t_all += t;
            R.before_total = res.before.total;
            R.after_total = res.after.total;
            pbw_paint_result_free(&res);
            R.edit_cma_med = median_after(st.t[0], st.n[0], 0);
            R.edit_adam_med = median_after(st.t[1], st.n[1], 0);
            fprintf(stderr, "bench_edit: default edit run %d: %.3f s\n", r + 1, t);
        }
    }

    emit(&R, 1);
done:
    if (rc) emit(&R, 0); /* what was measured before the failure */
    steps_free(&st);
    free(mask);
    free(ids);
    pbw_painter_free(p);
    return rc;
}
