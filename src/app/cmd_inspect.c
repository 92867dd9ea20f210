/* cmd_inspect.c: `pbw inspect CKPT` lists a checkpoint's tensors (name, dtype, shape). */
#include <stdio.h>
#include <string.h>

#include "app/pbw_app.h"
#include "formats/pbw_records.h"

static void help(FILE *f) {
    fprintf(f, "usage: pbw inspect [--values] CKPT...\n\n"
               "Lists the tensors of each checkpoint: safetensors, PyTorch zip (torch.save since\n"
               "1.6) or legacy PyTorch files. Nothing in a pickle is executed; a file naming any\n"
               "other Python object than tensors, dicts, lists and scalars is refused.\n\n"
               "  --values   also print the first values and the mean of each tensor\n");
}

int cmd_inspect(int argc, char **argv) {
    if (app_wants_help(argc, argv)) {
        help(stdout);
        return 0;
    }
    int values = 0, nfiles = 0, status = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--values")) {
            values = 1;
        } else if (argv[i][0] == '-' && argv[i][1]) {
            fprintf(stderr, "pbw inspect: unknown option '%s'\n", argv[i]);
            return 2;
        }
    }
    for (int i = 1; i < argc; i++) {
        if (argv[i][0] == '-' && argv[i][1]) continue;
        nfiles++;
        pbw_records recs;
        pbw_err err;
        if (pbw_load_checkpoint(argv[i], &recs, &err) != 0) {
            fprintf(stderr, "pbw inspect: %s\n", err.msg);
            status = 1;
            continue;
        }
        printf("%s: %zu tensors\n", argv[i], recs.count);
        for (size_t r = 0; r < recs.count; r++) {
            const pbw_record *t = &recs.items[r];
            char shape[128];
            size_t o = (size_t)snprintf(shape, sizeof shape, "(");
            for (int d = 0; d < t->ndim && o < sizeof shape; d++)
                o += (size_t)snprintf(shape + o, sizeof shape - o, d ? ",%lld" : "%lld", (long long)t->shape[d]);
            if (o < sizeof shape) snprintf(shape + o, sizeof shape - o, ")");
            printf("  %-48s %-9s %s", t->name, pbw_dtype_name(t->dtype), shape);
            if (values && t->numel > 0 && t->numel <= (1 << 26)) {
                float v[4];
                float sum = 0;
                int64_t n4 = t->numel < 4 ? t->numel : 4;
                for (int64_t k = 0; k < t->numel; k++) {
                    float x;
                    pbw_convert_to_f32(t->dtype, (const char *)t->data + k * pbw_dtype_size(t->dtype), 1, &x);
                    if (k < n4) v[k] = x;
                    sum += x;
                }
                printf("  [");
                for (int64_t k = 0; k < n4; k++) printf(k ? ", %.6g" : "%.6g", v[k]);
                printf("%s] mean %.6g", t->numel > 4 ? ", ..." : "", sum / (float)t->numel);
            }
            printf("\n");
        }
        for (size_t s = 0; s < recs.nscalars; s++)
            printf("  %-48s scalar    %.10g\n", recs.scalars[s].name, recs.scalars[s].value);
        pbw_records_free(&recs);
    }
    if (!nfiles) {
        help(stderr);
        return 2;
    }
    return status;
}
