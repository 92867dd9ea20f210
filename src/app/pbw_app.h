/* pbw_app.h: the pbw program's commands and their shared argument helpers. Each command is a
 * function `int cmd_NAME(int argc, char **argv)` in src/app/cmd_NAME.c that prints its own
 * --help, reports errors naming the bad argument or file, and returns the exit status. */
#ifndef PBW_APP_H
#define PBW_APP_H

#include <stdint.h>

#include "core/pbw_tensor.h"

int cmd_clip(int argc, char **argv);
int cmd_edit(int argc, char **argv);
int cmd_generate(int argc, char **argv);
int cmd_inspect(int argc, char **argv);
int cmd_shapes(int argc, char **argv);
int cmd_smoke(int argc, char **argv);
int cmd_tokenize(int argc, char **argv);
int cmd_sample(int argc, char **argv);
int cmd_seeds(int argc, char **argv);
int cmd_version(int argc, char **argv);

/* True when argv holds -h or --help. */
int app_wants_help(int argc, char **argv);
/* Parses a whole decimal integer in [lo, hi]; prints "pbw CMD: bad value for OPT" and
 * returns -1 otherwise. */
int app_parse_int(const char *cmd, const char *opt, const char *s, long lo, long hi, long *out);
int app_parse_float(const char *cmd, const char *opt, const char *s, double *out);
/* Value of option argv[*i] (advancing *i), or NULL after printing that it is missing. */
const char *app_value(const char *cmd, int argc, char **argv, int *i);

/* --device auto|cpu|cuda[:N] and --precision fp32|tf32|bf16|fp16: parses, makes the device
 * the process's, applies the precision (CUDA only) and, unless quiet, prints which device runs
 * and why to stderr. Returns -1 after printing the error. */
int app_device(const char *cmd, const char *device, const char *precision, int quiet,
               pbw_device *dev);

/* StyleGAN2 rendering shared by `pbw sample` and `pbw seeds` (src/app/cmd_sample.c). */
typedef struct app_sg2_job {
    const char *cmd, *gan, *out, *npy;
    float truncation;     /* 1: off */
    int noise_random;     /* 0: the checkpoint's fixed noise */
    uint32_t seed;        /* of the random noise */
    int seed_given, cols; /* cols 0: about sqrt(N) */
    int64_t bank_first;   /* first seed bank row when rendering the bank */
} app_sg2_job;
void app_sg2_job_init(app_sg2_job *job, const char *cmd);
/* Parses an option both commands share at argv[*i]: 1 taken, 0 not ours, -1 bad (printed). */
int app_sg2_option(app_sg2_job *job, int argc, char **argv, int *i);
/* Checks required options, picks a noise seed; -1 (printed) when something is missing. */
int app_sg2_finish(app_sg2_job *job);
/* Renders n images from z (n rows of zdim) or, with z NULL, seed bank rows bank_first..; writes
 * the PNG grid and the optional npy. Returns the exit status. */
int app_sg2_render(const app_sg2_job *job, const float *z, int64_t n, int zdim);

/* `pbw edit` (edit = 1) and `pbw generate` (edit = 0): options, progress, history and log in
 * src/app/cmd_edit.c over the library painter. Returns the exit status. */
int app_paint_main(int argc, char **argv, int edit);

#endif
