/* pbw_shapes.h: the shapes world, a procedural image world small enough to train a StyleGAN2
 * and a CLIP on in minutes, with ground truth for every pixel.
 *
 *     pbw_scene sc;
 *     pbw_scene_random(&sc, 7, 0, NULL);            // dataset seed 7, scene 0: always the same
 *     uint8_t rgb[64 * 64 * 3];
 *     pbw_scene_render(&sc, 64, rgb);                // 8-bit RGB, row-major, top row first
 *     char cap[256];
 *     pbw_scene_caption(&sc, PBW_CAPTION_FULL, cap, sizeof cap);
 *     // "a large red circle at the top left and a small blue star on the right on a dark
 *     //  striped background"
 *
 * A scene is a gray background (plain, shaded top to bottom, or with soft diagonal stripes) and
 * one to three upright shapes (circle, square, triangle, star, ring) in one of six saturated
 * colours, two size classes and any position, never overlapping. Backgrounds are achromatic
 * and shapes are saturated, which is what lets the checker (pbw_shapes_check.h) segment an
 * image by colour alone. Geometry lives in units of the image side, so a scene renders at any
 * size; pixels are 4x4 supersampled (anti-aliased edges).
 *
 * Reproducibility: scene `index` of dataset `seed` depends on nothing else (no global state,
 * no libc random), so a training set, a held-out set (another seed) and a benchmark name their
 * images by (seed, index) alone.
 *
 * Captions come at three levels of detail for each shape ("a red circle", "a large red circle",
 * "a large red circle at the top left") and for the scene (shapes joined with commas and
 * "and", the full one with the background). Every word used is in pbw_shapes_words, which is
 * what the shapes CLIP's vocabulary is trained on.
 *
 * This module depends on libc and libm only, so it can be compiled on its own (e.g. into a
 * shared library for a training script). Nothing here allocates.
 */
#ifndef PBW_SHAPES_H
#define PBW_SHAPES_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum pbw_shape_kind {
    PBW_SHAPE_CIRCLE = 0,
    PBW_SHAPE_SQUARE,
    PBW_SHAPE_TRIANGLE,
    PBW_SHAPE_STAR,
    PBW_SHAPE_RING,
    PBW_SHAPE_COUNT
} pbw_shape_kind;

typedef enum pbw_colour {
    PBW_COLOUR_RED = 0,
    PBW_COLOUR_ORANGE,
    PBW_COLOUR_YELLOW,
    PBW_COLOUR_GREEN,
    PBW_COLOUR_BLUE,
    PBW_COLOUR_PURPLE,
    PBW_COLOUR_COUNT
} pbw_colour;

typedef enum pbw_bg_texture { PBW_BG_PLAIN = 0, PBW_BG_SHADED, PBW_BG_STRIPED, PBW_BG_COUNT } pbw_bg_texture;

#define PBW_SCENE_MAX_SHAPES 3

extern const char *const pbw_shape_names[PBW_SHAPE_COUNT];   /* "circle", ... */
extern const char *const pbw_colour_names[PBW_COLOUR_COUNT]; /* "red", ... */
extern const uint8_t pbw_colour_rgb[PBW_COLOUR_COUNT][3];    /* the palette (before jitter) */
extern const char *const pbw_position_names[9];  /* "top left", "top", ..., "bottom right" */
extern const char *const pbw_position_phrases[9]; /* "at the top left", ..., "in the center" */
/* Every word a caption can hold, NULL-terminated. */
extern const char *const pbw_shapes_words[];

/* Name -> index, -1 when unknown. */
int pbw_shape_from_name(const char *name);
int pbw_colour_from_name(const char *name);

typedef struct pbw_shape {
    int kind;        /* pbw_shape_kind */
    int colour;      /* pbw_colour */
    int large;       /* size class: 0 small, 1 large */
    float cx, cy, r; /* centre and size in units of the image side (y down) */
    uint8_t rgb[3];  /* the palette colour with a small per-shape jitter */
} pbw_shape;

typedef struct pbw_scene {
    uint64_t seed;
    int64_t index;
    int texture;     /* pbw_bg_texture */
    float bg_level;  /* gray level in [0,1] */
    float bg_amp;    /* shading or stripe amplitude */
    int bg_flip;     /* shading direction: 0 darker at the bottom, 1 lighter */
    int n;           /* 1..PBW_SCENE_MAX_SHAPES */
    pbw_shape shapes[PBW_SCENE_MAX_SHAPES];
} pbw_scene;

/* How scenes are drawn; NULL gives the defaults in brackets. */
typedef struct pbw_scene_opts {
    int min_shapes, max_shapes; /* [1, 3]; 1 shape 40%, 2 35%, 3 25% of scenes by default */
    int kind;                   /* only this shape (-1: any) [-1] */
    int colour;                 /* only this colour (-1: any) [-1] */
} pbw_scene_opts;

void pbw_scene_opts_default(pbw_scene_opts *o);
/* Scene `index` of dataset `seed`. */
void pbw_scene_random(pbw_scene *sc, uint64_t seed, int64_t index, const pbw_scene_opts *o);

/* Renders into rgb (size*size*3 bytes, row-major RGB). size in [4, 4096]. */
void pbw_scene_render(const pbw_scene *sc, int size, uint8_t *rgb);
/* Coverage of one shape alone: out (size*size floats) in [0,1]. */
void pbw_shape_coverage(const pbw_shape *sh, int size, float *out);
/* Bounding box of a shape in pixels at `size`: [x0, x1) x [y0, y1), clipped to the image. */
void pbw_shape_bbox(const pbw_shape *sh, int size, int *x0, int *y0, int *x1, int *y1);
/* Index into pbw_position_names of a shape's centre (thirds of the image). */
int pbw_shape_position(const pbw_shape *sh);
/* "dark", "gray" or "light" for a background level. */
const char *pbw_bg_tone(float level);

typedef enum pbw_caption_detail {
    PBW_CAPTION_SHORT = 0, /* "a red circle" / "a red circle and a blue star" */
    PBW_CAPTION_SIZED,     /* "a large red circle" */
    PBW_CAPTION_PLACED,    /* "a large red circle at the top left" */
    PBW_CAPTION_FULL       /* scene: placed shapes + " on a dark striped background" */
} pbw_caption_detail;

/* Caption of one shape (SHORT, SIZED or PLACED; FULL means PLACED). Returns the length written
 * (like snprintf; the text is truncated to n - 1 bytes when n is too small). */
int pbw_shape_caption(const pbw_shape *sh, int detail, char *buf, size_t n);
/* Caption of a whole scene at a level of detail. */
int pbw_scene_caption(const pbw_scene *sc, int detail, char *buf, size_t n);
/* The scene as one line of JSON (no newline): seed, index, background, shapes with their
 * names, geometry and pixel boxes at `size`, and every caption. Returns the length written
 * (like snprintf). */
int pbw_scene_json(const pbw_scene *sc, int size, char *buf, size_t n);

/* Scenes first..first+n-1 of dataset `seed` (default options) rendered into rgb
 * (n*size*size*3 bytes) and, when json is non-NULL, their pbw_scene_json lines at `size` into
 * n rows of json_stride bytes each. For training scripts that load this file as a shared
 * library (tools/train/shapes_world.py), so that they see exactly these pixels. Returns 0, or
 * -1 on bad arguments or when a line did not fit its row (it is truncated then). */
int pbw_shapes_render_batch(uint64_t seed, int64_t first, int64_t n, int size, uint8_t *rgb,
                            char *json, size_t json_stride);

#ifdef __cplusplus
}
#endif
#endif
