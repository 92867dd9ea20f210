/* pbw_shapes_check.h: reads shapes back from pixels with the shapes world's geometry, not with
 * a network: the independent judge of the semantic benchmark.
 *
 *     pbw_blob blobs[16];
 *     int n = pbw_shapes_find(rgb, 64, 64, blobs, 16);         // every shape in the image
 *     // blobs[i].colour == PBW_COLOUR_RED, blobs[i].kind == PBW_SHAPE_STAR, ...
 *     pbw_blob b;
 *     if (pbw_shapes_check_region(rgb, 64, 64, mask, &b) == 0)  // the shape the mask shows
 *         printf("%s %s\n", pbw_colour_names[b.colour], pbw_shape_names[b.kind]);
 *
 * How: the world's backgrounds are gray and its shapes saturated, so a pixel whose chroma
 * (max - min channel) reaches PBW_CHECK_MIN_CHROMA belongs to a shape, and its hue names the
 * colour (nearest palette hue within PBW_CHECK_MAX_HUE_DIST degrees). Pixels of one colour are
 * grouped into 8-connected blobs (those under PBW_CHECK_MIN_AREA_FRAC of the image are
 * dropped). A blob's shape follows from three measures:
 *   hole fraction  background pixels enclosed by the blob over its filled area: a ring has a
 *                  hole (about 30% of its disk), every other shape none;
 *   solidity       filled area over the area of its convex hull: a star is far from convex
 *                  (about 0.6), the others are convex (about 0.9 or more once pixelated);
 *   fill           filled area over its bounding box: a square fills it (1), a circle
 *                  pi/4 = 0.785, a triangle one half.
 * so: ring if the hole fraction > 0.08, else star if solidity < 0.8, else square if fill > 0.9,
 * triangle if fill < 0.64, circle otherwise. The thresholds sit halfway between the values the
 * renderer's shapes take at 64 px (tests/test_shapes.c measures the accuracy on rendered
 * scenes against their ground truth).
 *
 * Images are 8-bit RGB, row-major, top row first. Masks are floats in [0,1] (a pixel is in
 * the mask when its value is > 0.5). Nothing here allocates more than a few buffers the size
 * of the image; functions return -1 only when out of memory or given bad sizes.
 */
#ifndef PBW_SHAPES_CHECK_H
#define PBW_SHAPES_CHECK_H

#include <stdint.h>

#include "pbw_shapes.h"

#ifdef __cplusplus
extern "C" {
#endif

#define PBW_CHECK_MIN_CHROMA 48       /* of 255: shapes have >= 120, backgrounds 0 */
#define PBW_CHECK_MAX_HUE_DIST 28.0f  /* degrees; palette hues are >= 22 degrees apart */
#define PBW_CHECK_MIN_AREA_FRAC 0.004f /* 16 pixels at 64 px; the smallest shape has ~60 */

typedef struct pbw_blob {
    int colour;          /* pbw_colour */
    int kind;            /* pbw_shape_kind */
    int area;            /* pixels of the blob */
    int holes;           /* enclosed background pixels */
    int x0, y0, x1, y1;  /* bounding box [x0, x1) x [y0, y1) */
    float cx, cy;        /* centroid in pixels */
    float fill, solidity, hole_frac;
    int in_mask;         /* pixels of the blob inside the mask (check_region) */
} pbw_blob;

/* Colour class of one pixel: a pbw_colour, or -1 for background / unrecognized colour. */
int pbw_shapes_pixel_colour(const uint8_t *px);

/* Finds every blob of a shape colour, largest first; writes at most max and returns how many
 * were found (which may exceed max), or -1 on bad sizes or no memory. */
int pbw_shapes_find(const uint8_t *rgb, int w, int h, pbw_blob *out, int max);

/* The shape a mask shows: of the blobs with pixels inside the mask, the one with the most;
 * NULL mask means the whole image. Returns 0 and fills *out, 1 when no blob touches the mask,
 * -1 on error. */
int pbw_shapes_check_region(const uint8_t *rgb, int w, int h, const float *mask, pbw_blob *out);

/* How much b differs from a outside a mask, in the units of images in [-1,1]: the mean over
 * channels and over the pixels farther than `margin` pixels (Chebyshev distance) from every
 * mask pixel of |a - b| / 127.5. *count receives the number of pixels averaged (0 when the
 * mask's footprint covers everything; the mean is then 0). */
int pbw_shapes_outside_change(const uint8_t *a, const uint8_t *b, int w, int h, const float *mask,
                              int margin, double *mean, int64_t *count);

/* Scores the checker on a rendered scene against its ground truth: for every shape of sc, the
 * blob nearest its centre (within its size r) must have its colour (*colour_ok) and also its
 * kind (*correct). Returns the number of shapes (sc->n), or -1 on error. */
int pbw_shapes_recognized(const pbw_scene *sc, const uint8_t *rgb, int size, int *correct,
                          int *colour_ok);

/* True when a blob's measures sit well inside its class (away from every threshold of the
 * rule above): the benchmark edits only such shapes, so that "before" is not in doubt. */
int pbw_shapes_blob_confident(const pbw_blob *b);

/* A mask around a blob or a box: the box grown by `grow` pixels on each side, made square
 * (its longer side) and clipped to the image; out: w*h floats, 1 inside, 0 outside. */
void pbw_shapes_box_mask(int x0, int y0, int x1, int y1, int grow, int w, int h, float *out);

#ifdef __cplusplus
}
#endif
#endif
