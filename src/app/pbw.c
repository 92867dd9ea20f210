/* pbw.c: the pbw program's entry point: picks the command and runs it. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "app/pbw_app.h"
#ifdef PBW_HAVE_CUDA
#include "cuda/pbw_cuda.h"
#endif

typedef struct {
    const char *name;
    int (*fn)(int, char **);
    const char *summary;
} command;

static const command commands[] = {
    {"clip", cmd_clip, "embed texts and images with CLIP; zero-shot scores of texts for images"},
    {"edit", cmd_edit, "paint a masked region of a StyleGAN2 image toward words (Paint by Word)"},
    {"generate", cmd_generate, "make a whole StyleGAN2 image match words"},
    {"inspect", cmd_inspect, "list the tensors of a checkpoint (safetensors, torch zip or legacy)"},
    {"sample", cmd_sample, "render StyleGAN2 images from latents z (.npy) into a PNG grid"},
    {"seeds", cmd_seeds, "render the seed bank (the reference's numbered z) of a StyleGAN2"},
    {"shapes", cmd_shapes, "the shapes world: render scenes and datasets, check shapes, evaluate models"},
    {"smoke", cmd_smoke, "a small end-to-end optimization that exercises ops, tape and PNG output"},
    {"tokenize", cmd_tokenize, "print the CLIP token ids of texts (JSON arrays), as OpenAI's tokenizer"},
    {"version", cmd_version, "print the version, the BLAS and the CUDA devices found"},
};

static void usage(FILE *f) {
    fprintf(f, "usage: pbw COMMAND [OPTIONS]   (pbw COMMAND --help for a command's options)\n\n"
               "Paint by Word: edit a painted region of a GAN image so that CLIP judges it to "
               "match your words.\n\ncommands:\n");
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fprintf(f, "  %-10s %s\n", commands[i].name, commands[i].summary);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help") || !strcmp(argv[1], "help")) {
        usage(stdout);
        return 0;
    }
    if (!strcmp(argv[1], "--version")) return cmd_version(argc - 1, argv + 1);
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (!strcmp(argv[1], commands[i].name)) return commands[i].fn(argc - 1, argv + 1);
    fprintf(stderr, "pbw: unknown command '%s'\n\n", argv[1]);
    usage(stderr);
    return 2;
}

int app_wants_help(int argc, char **argv) {
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) return 1;
    return 0;
}

int app_parse_int(const char *cmd, const char *opt, const char *s, long lo, long hi, long *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) {
        fprintf(stderr, "pbw %s: bad value '%s' for %s (an integer in [%ld, %ld])\n", cmd, s, opt,
                lo, hi);
        return -1;
    }
    *out = v;
    return 0;
}

int app_parse_float(const char *cmd, const char *opt, const char *s, double *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !isfinite(v)) {
        fprintf(stderr, "pbw %s: bad value '%s' for %s (a number)\n", cmd, s, opt);
        return -1;
    }
    *out = v;
    return 0;
}

const char *app_value(const char *cmd, int argc, char **argv, int *i) {
    if (*i + 1 >= argc) {
        fprintf(stderr, "pbw %s: %s needs a value\n", cmd, argv[*i]);
        return NULL;
    }
    return argv[++*i];
}

int app_device(const char *cmd, const char *device, const char *precision, int quiet,
               pbw_device *dev) {
    pbw_err err = {0};
    char why[256];
    int index = 0;
    if (pbw_device_parse(device ? device : "cpu", dev, &index, why, sizeof why, &err)) {
        fprintf(stderr, "pbw %s: %s\n", cmd, err.msg);
        return -1;
    }
    if (pbw_device_init(*dev, index, &err)) {
        fprintf(stderr, "pbw %s: --device %s: %s\n", cmd, device, err.msg);
        return -1;
    }
#ifdef PBW_HAVE_CUDA
    if (*dev == PBW_DEV_CUDA) {
        pbw_precision p;
        if (pbw_precision_parse(precision ? precision : "bf16", &p)) {
            fprintf(stderr, "pbw %s: --precision '%s': expected fp32, tf32, bf16 or fp16\n", cmd,
                    precision);
            return -1;
        }
        pbw_cuda_set_precision(p);
    }
#endif
    if (*dev == PBW_DEV_CPU && precision && strcmp(precision, "fp32") && !quiet)
        fprintf(stderr, "pbw %s: --precision %s applies to the GPU; the CPU computes in fp32\n",
                cmd, precision);
    if (!quiet && device && strcmp(device, "cpu"))
        fprintf(stderr, "pbw %s: device %s%s%s\n", cmd, why,
#ifdef PBW_HAVE_CUDA
                *dev == PBW_DEV_CUDA ? ", precision " : "",
                *dev == PBW_DEV_CUDA ? pbw_precision_name(pbw_cuda_precision()) : ""
#else
                "", ""
#endif
        );
    return 0;
}
