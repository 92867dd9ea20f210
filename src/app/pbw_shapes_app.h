/* pbw_shapes_app.h: helpers shared by the `pbw shapes` subcommands (cmd_shapes.c and
 * cmd_shapes_bench.c). Not part of the library. */
#ifndef PBW_SHAPES_APP_H
#define PBW_SHAPES_APP_H

#include <stdint.h>

#include "core/pbw_common.h"
#include "models/pbw_stylegan2.h"

/* `pbw shapes plan` and `pbw shapes score` (the semantic benchmark, cmd_shapes_bench.c). */
int app_shapes_plan(int argc, char **argv);
int app_shapes_score(int argc, char **argv);

/* A mask image as w*h floats in [0,1] (white or opaque = 1), nearest-neighbour resized. */
int app_shapes_read_mask(const char *path, int w, int h, float **out, pbw_err *err);
/* Seed-bank images first..first+n-1 of g (fixed noise) as 8-bit RGB, n*S*S*3 bytes. */
int app_shapes_gan_images(pbw_stylegan2 *g, int64_t first, int64_t n, float truncation,
                          uint8_t *rgb, pbw_err *err);

#endif
