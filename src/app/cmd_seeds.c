/* cmd_seeds.c: `pbw seeds` shows the seed bank: the images of z rows K .. K+N-1 of
 * numpy.random.RandomState(1).standard_normal (the reference's zdataset, so "seed 30" is the
 * picture the paper's notebooks call seed 30). Rendering is shared with `pbw sample`. */
#include <stdio.h>
#include <string.h>

#include "app/pbw_app.h"

static void help(FILE *f) {
    fprintf(f,
            "usage: pbw seeds --gan CKPT --count N --out GRID.png [--first K] [--truncation T]\n"
            "                 [--noise fixed|random] [--seed S] [--cols C] [--save-npy OUT.npy]\n\n"
            "Renders seed images K .. K+N-1 (default K = 0) as a grid, in reading order. Seed k is\n"
            "z = row k of numpy.random.RandomState(1).standard_normal(...) in rows of the\n"
            "checkpoint's style size: the reference implementation's seed numbering.\n\n"
            "  --gan CKPT         rosinality checkpoint (torch .pt zip or legacy, or safetensors)\n"
            "  --count N          number of seeds (1..10000)\n"
            "  --first K          first seed (default 0)\n"
            "  --out GRID.png     the grid (8-bit PNG)\n"
            "  --truncation T     truncation toward latent_avg in [0,1] (default 1: off)\n"
            "  --noise, --seed    as pbw sample (default: the checkpoint's fixed noise)\n"
            "  --cols C           images per grid row (default about sqrt(N))\n"
            "  --save-npy OUT.npy also write the images as float32 (N,3,H,W) in [-1,1]\n");
}

int cmd_seeds(int argc, char **argv) {
    app_sg2_job job;
    app_sg2_job_init(&job, "seeds");
    long count = -1, first = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            help(stdout);
            return 0;
        }
        int r = app_sg2_option(&job, argc, argv, &i);
        if (r < 0) return 2;
        if (r > 0) continue;
        const char *v;
        if (!strcmp(argv[i], "--count")) {
            if (!(v = app_value("seeds", argc, argv, &i)) ||
                app_parse_int("seeds", "--count", v, 1, 10000, &count))
                return 2;
        } else if (!strcmp(argv[i], "--first")) {
            if (!(v = app_value("seeds", argc, argv, &i)) ||
                app_parse_int("seeds", "--first", v, 0, 100000000, &first))
                return 2;
        } else {
            fprintf(stderr, "pbw seeds: unknown argument '%s' (pbw seeds --help)\n", argv[i]);
            return 2;
        }
    }
    if (count < 0) {
        fprintf(stderr, "pbw seeds: --count is required (pbw seeds --help)\n");
        return 2;
    }
    if (app_sg2_finish(&job)) return 2;
    job.bank_first = first;
    int rc = app_sg2_render(&job, NULL, count, 0);
    return rc;
}
