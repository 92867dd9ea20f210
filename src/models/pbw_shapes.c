/* pbw_shapes.c: the shapes world: random scenes, the renderer and the captions (see
 * pbw_shapes.h). Not here: the checker that reads shapes back from pixels
 * (pbw_shapes_check.c). Depends on libc and libm only. */
#include "pbw_shapes.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

const char *const pbw_shape_names[PBW_SHAPE_COUNT] = {"circle", "square", "triangle", "star",
                                                      "ring"};
const char *const pbw_colour_names[PBW_COLOUR_COUNT] = {"red",   "orange", "yellow",
                                                        "green", "blue",   "purple"};
/* Hues about 0, 30, 53, 130, 224 and 282 degrees, every one saturated (chroma >= 120 of 255),
 * so that none can be mistaken for the gray backgrounds or for a neighbour. */
const uint8_t pbw_colour_rgb[PBW_COLOUR_COUNT][3] = {
    {215, 45, 45}, {240, 140, 30}, {235, 215, 40}, {50, 170, 70}, {45, 90, 215}, {150, 60, 190}};
const char *const pbw_position_names[9] = {"top left",    "top",    "top right",
                                           "left",        "center", "right",
                                           "bottom left", "bottom", "bottom right"};
const char *const pbw_position_phrases[9] = {
    "at the top left",    "at the top",    "at the top right",
    "on the left",        "in the center", "on the right",
    "at the bottom left", "at the bottom", "at the bottom right"};
const char *const pbw_shapes_words[] = {
    "a",      "an",     "and",    "at",     "the",    "on",     "in",     "background", "small",  "large",
    "top",    "bottom", "left",   "right",  "center", "dark",   "gray",       "light",  "plain",
    "shaded", "striped", "circle", "square", "triangle", "star", "ring",      "red",    "orange",
    "yellow", "green",  "blue",   "purple", NULL};

int pbw_shape_from_name(const char *name) {
    for (int i = 0; i < PBW_SHAPE_COUNT; i++)
        if (name && !strcmp(name, pbw_shape_names[i])) return i;
    return -1;
}

int pbw_colour_from_name(const char *name) {
    for (int i = 0; i < PBW_COLOUR_COUNT; i++)
        if (name && !strcmp(name, pbw_colour_names[i])) return i;
    return -1;
}

/* ---------- random numbers: splitmix64, so a scene depends on (seed, index) alone ---------- */

typedef struct { uint64_t s; } rng64;

static uint64_t rng_next(rng64 *r) {
    uint64_t z = (r->s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static double rng_unif(rng64 *r) { return (double)(rng_next(r) >> 11) * (1.0 / 9007199254740992.0); }
static double rng_range(rng64 *r, double lo, double hi) { return lo + (hi - lo) * rng_unif(r); }
static int rng_int(rng64 *r, int n) { return (int)(rng_unif(r) * n); }

/* ---------- geometry ---------- */

/* Sizes relative to r (the size a shape is drawn at): chosen so that the five shapes of one
 * size class look about equally big. */
#define SQUARE_HALF 0.82f  /* half side */
#define POLY_RADIUS 1.15f  /* circumradius of the triangle and the star */
#define STAR_INNER 0.45f   /* inner over outer radius of the star */
#define RING_INNER 0.55f   /* hole radius over outer radius */

/* Half extents of a shape's box around (cx, cy), in units of r, and the vertical offset of its
 * polygon (polygons are shifted so that their box is centred on the centre). */
static void shape_extent(int kind, float *hx, float *hy) {
    switch (kind) {
    case PBW_SHAPE_SQUARE: *hx = *hy = SQUARE_HALF; break;
    case PBW_SHAPE_TRIANGLE: *hx = POLY_RADIUS * 0.8660254f; *hy = POLY_RADIUS * 0.75f; break;
    case PBW_SHAPE_STAR: *hx = POLY_RADIUS * 0.95105652f; *hy = POLY_RADIUS * 0.9045085f; break;
    default: *hx = *hy = 1.0f;
    }
}

/* Polygon of a triangle (3 points) or star (10 points) in units of r, centred as above. */
static int shape_polygon(int kind, float *px, float *py) {
    const double pi = 3.14159265358979323846;
    if (kind == PBW_SHAPE_TRIANGLE) {
        for (int k = 0; k < 3; k++) {
            double a = -pi / 2 + k * 2 * pi / 3;
            px[k] = (float)(POLY_RADIUS * cos(a));
            py[k] = (float)(POLY_RADIUS * sin(a) + 0.25 * POLY_RADIUS);
        }
        return 3;
    }
    for (int k = 0; k < 10; k++) {
        double a = -pi / 2 + k * pi / 5, rad = (k & 1) ? POLY_RADIUS * STAR_INNER : POLY_RADIUS;
        px[k] = (float)(rad * cos(a));
        py[k] = (float)(rad * sin(a) + POLY_RADIUS * (1 - 0.80901699) / 2);
    }
    return 10;
}

static int in_polygon(const float *px, const float *py, int n, float x, float y) {
    int in = 0;
    for (int i = 0, j = n - 1; i < n; j = i++)
        if ((py[i] > y) != (py[j] > y) &&
            x < (px[j] - px[i]) * (y - py[i]) / (py[j] - py[i]) + px[i])
            in = !in;
    return in;
}

/* Is (x, y), in units of r relative to the centre, inside the shape? */
static int inside(int kind, const float *px, const float *py, int np, float x, float y) {
    float d2 = x * x + y * y;
    switch (kind) {
    case PBW_SHAPE_CIRCLE: return d2 <= 1.0f;
    case PBW_SHAPE_RING: return d2 <= 1.0f && d2 >= RING_INNER * RING_INNER;
    case PBW_SHAPE_SQUARE: return fabsf(x) <= SQUARE_HALF && fabsf(y) <= SQUARE_HALF;
    default: return in_polygon(px, py, np, x, y);
    }
}

void pbw_shape_bbox(const pbw_shape *sh, int size, int *x0, int *y0, int *x1, int *y1) {
    float hx, hy;
    shape_extent(sh->kind, &hx, &hy);
    int a = (int)floorf((sh->cx - hx * sh->r) * size), b = (int)floorf((sh->cy - hy * sh->r) * size);
    int c = (int)ceilf((sh->cx + hx * sh->r) * size), d = (int)ceilf((sh->cy + hy * sh->r) * size);
    *x0 = a < 0 ? 0 : a;
    *y0 = b < 0 ? 0 : b;
    *x1 = c > size ? size : c;
    *y1 = d > size ? size : d;
}

int pbw_shape_position(const pbw_shape *sh) {
    int col = sh->cx < 1.0f / 3 ? 0 : (sh->cx < 2.0f / 3 ? 1 : 2);
    int row = sh->cy < 1.0f / 3 ? 0 : (sh->cy < 2.0f / 3 ? 1 : 2);
    return row * 3 + col;
}

const char *pbw_bg_tone(float level) { return level < 0.4f ? "dark" : (level > 0.64f ? "light" : "gray"); }

/* ---------- scenes ---------- */

void pbw_scene_opts_default(pbw_scene_opts *o) {
    o->min_shapes = 1;
    o->max_shapes = PBW_SCENE_MAX_SHAPES;
    o->kind = -1;
    o->colour = -1;
}

/* Radius of the smallest circle around the centre that holds a shape, in units of r (for
 * keeping shapes apart). */
static float shape_reach(int kind) {
    if (kind == PBW_SHAPE_SQUARE) return SQUARE_HALF * 1.41421356f;
    if (kind == PBW_SHAPE_TRIANGLE || kind == PBW_SHAPE_STAR) {
        float px[10], py[10], m = 0;
        int np = shape_polygon(kind, px, py);
        for (int i = 0; i < np; i++) m = fmaxf(m, sqrtf(px[i] * px[i] + py[i] * py[i]));
        return m;
    }
    return 1.0f;
}

void pbw_scene_random(pbw_scene *sc, uint64_t seed, int64_t index, const pbw_scene_opts *o) {
    pbw_scene_opts def;
    if (!o) {
        pbw_scene_opts_default(&def);
        o = &def;
    }
    memset(sc, 0, sizeof *sc);
    sc->seed = seed;
    sc->index = index;
    rng64 r = {seed * 0xD1B54A32D192ED03ull ^ ((uint64_t)index * 0x9E3779B97F4A7C15ull + 0x2545F4914F6CDD1Dull)};
    rng_next(&r);
    double t = rng_unif(&r);
    sc->texture = t < 0.5 ? PBW_BG_PLAIN : (t < 0.75 ? PBW_BG_SHADED : PBW_BG_STRIPED);
    sc->bg_level = (float)rng_range(&r, 0.18, 0.86);
    sc->bg_amp = sc->texture == PBW_BG_SHADED ? (float)rng_range(&r, 0.08, 0.14)
                                              : (float)rng_range(&r, 0.04, 0.07);
    sc->bg_flip = rng_int(&r, 2);
    int lo = o->min_shapes < 1 ? 1 : o->min_shapes;
    int hi = o->max_shapes > PBW_SCENE_MAX_SHAPES ? PBW_SCENE_MAX_SHAPES : o->max_shapes;
    if (hi < lo) hi = lo;
    int n;
    if (lo == 1 && hi == 3) {
        double u = rng_unif(&r);
        n = u < 0.40 ? 1 : (u < 0.75 ? 2 : 3);
    } else {
        n = lo + rng_int(&r, hi - lo + 1);
    }
    for (int i = 0; i < n; i++) {
        pbw_shape *sh = &sc->shapes[sc->n];
        sh->kind = o->kind >= 0 ? o->kind : rng_int(&r, PBW_SHAPE_COUNT);
        sh->colour = o->colour >= 0 ? o->colour : rng_int(&r, PBW_COLOUR_COUNT);
        int placed = 0;
        /* Large shapes first try their own size class; a crowded scene falls back to small. */
        int large = rng_int(&r, 2);
        for (int attempt = 0; attempt < 60 && !placed; attempt++) {
            sh->large = attempt < 30 ? large : 0;
            sh->r = sh->large ? (float)rng_range(&r, 0.17, 0.22) : (float)rng_range(&r, 0.10, 0.13);
            float hx, hy, reach = shape_reach(sh->kind) * sh->r, margin = 0.03f;
            shape_extent(sh->kind, &hx, &hy);
            hx = hx * sh->r + margin;
            hy = hy * sh->r + margin;
            sh->cx = (float)rng_range(&r, hx, 1 - hx);
            sh->cy = (float)rng_range(&r, hy, 1 - hy);
            placed = 1;
            for (int j = 0; j < sc->n; j++) {
                const pbw_shape *o2 = &sc->shapes[j];
                float dx = sh->cx - o2->cx, dy = sh->cy - o2->cy;
                float need = reach + shape_reach(o2->kind) * o2->r + 0.04f;
                if (dx * dx + dy * dy < need * need) placed = 0;
            }
        }
        if (!placed) continue; /* no room left: the scene keeps fewer shapes */
        for (int c = 0; c < 3; c++) {
            int v = pbw_colour_rgb[sh->colour][c] + (int)rng_range(&r, -10, 10.999);
            sh->rgb[c] = (uint8_t)(v < 0 ? 0 : (v > 255 ? 255 : v));
        }
        sc->n++;
    }
}

/* ---------- rendering ---------- */

#define SS 4 /* supersampling per axis */

static float background_at(const pbw_scene *sc, float x, float y) {
    float v = sc->bg_level;
    if (sc->texture == PBW_BG_SHADED)
        v += (sc->bg_flip ? 1 : -1) * sc->bg_amp * (2 * y - 1);
    else if (sc->texture == PBW_BG_STRIPED)
        v += sc->bg_amp * sinf((x + y) * 2 * 3.14159265f * 8);
    return v < 0 ? 0 : (v > 1 ? 1 : v);
}

void pbw_shape_coverage(const pbw_shape *sh, int size, float *out) {
    float px[10], py[10];
    int np = sh->kind == PBW_SHAPE_TRIANGLE || sh->kind == PBW_SHAPE_STAR
                 ? shape_polygon(sh->kind, px, py) : 0;
    memset(out, 0, (size_t)size * size * sizeof *out);
    int x0, y0, x1, y1;
    pbw_shape_bbox(sh, size, &x0, &y0, &x1, &y1);
    float inv = 1.0f / (sh->r * size);
    for (int y = y0; y < y1; y++)
        for (int x = x0; x < x1; x++) {
            int hits = 0;
            for (int sy = 0; sy < SS; sy++)
                for (int sx = 0; sx < SS; sx++) {
                    float fx = (x + (sx + 0.5f) / SS - sh->cx * size) * inv;
                    float fy = (y + (sy + 0.5f) / SS - sh->cy * size) * inv;
                    hits += inside(sh->kind, px, py, np, fx, fy);
                }
            out[(size_t)y * size + x] = (float)hits / (SS * SS);
        }
}

void pbw_scene_render(const pbw_scene *sc, int size, uint8_t *rgb) {
    float polyx[PBW_SCENE_MAX_SHAPES][10], polyy[PBW_SCENE_MAX_SHAPES][10];
    int np[PBW_SCENE_MAX_SHAPES], box[PBW_SCENE_MAX_SHAPES][4];
    for (int i = 0; i < sc->n; i++) {
        const pbw_shape *sh = &sc->shapes[i];
        np[i] = sh->kind == PBW_SHAPE_TRIANGLE || sh->kind == PBW_SHAPE_STAR
                    ? shape_polygon(sh->kind, polyx[i], polyy[i]) : 0;
        pbw_shape_bbox(sh, size, &box[i][0], &box[i][1], &box[i][2], &box[i][3]);
    }
    for (int y = 0; y < size; y++)
        for (int x = 0; x < size; x++) {
            float acc[3] = {0, 0, 0};
            int any = 0;
            for (int i = 0; i < sc->n; i++)
                any |= x >= box[i][0] && x < box[i][2] && y >= box[i][1] && y < box[i][3];
            int ns = any ? SS : 1; /* only edges need the supersampling */
            for (int sy = 0; sy < ns; sy++)
                for (int sx = 0; sx < ns; sx++) {
                    float u = (x + (sx + 0.5f) / ns) / size, v = (y + (sy + 0.5f) / ns) / size;
                    float c[3];
                    float g = background_at(sc, u, v) * 255.0f;
                    c[0] = c[1] = c[2] = g;
                    for (int i = 0; i < sc->n; i++) {
                        const pbw_shape *sh = &sc->shapes[i];
                        if (x < box[i][0] || x >= box[i][2] || y < box[i][1] || y >= box[i][3]) continue;
                        if (inside(sh->kind, polyx[i], polyy[i], np[i], (u - sh->cx) / sh->r,
                                   (v - sh->cy) / sh->r))
                            for (int k = 0; k < 3; k++) c[k] = sh->rgb[k];
                    }
                    for (int k = 0; k < 3; k++) acc[k] += c[k];
                }
            for (int k = 0; k < 3; k++) {
                float v = acc[k] / (ns * ns);
                rgb[((size_t)y * size + x) * 3 + k] = (uint8_t)lrintf(v < 0 ? 0 : (v > 255 ? 255 : v));
            }
        }
}

/* ---------- captions ---------- */

/* Appends with snprintf semantics: *len counts what would have been written. */
static void cat(char *buf, size_t n, int *len, const char *s) {
    size_t l = strlen(s);
    if ((size_t)*len < n) {
        size_t room = n - (size_t)*len - 1;
        memcpy(buf + *len, s, l < room ? l : room);
        buf[(size_t)*len + (l < room ? l : room)] = 0;
    }
    *len += (int)l;
}

int pbw_shape_caption(const pbw_shape *sh, int detail, char *buf, size_t n) {
    int len = 0;
    if (n) buf[0] = 0;
    if (detail >= PBW_CAPTION_SIZED) cat(buf, n, &len, sh->large ? "a large " : "a small ");
    else cat(buf, n, &len, sh->colour == PBW_COLOUR_ORANGE ? "an " : "a ");
    cat(buf, n, &len, pbw_colour_names[sh->colour]);
    cat(buf, n, &len, " ");
    cat(buf, n, &len, pbw_shape_names[sh->kind]);
    if (detail >= PBW_CAPTION_PLACED) {
        cat(buf, n, &len, " ");
        cat(buf, n, &len, pbw_position_phrases[pbw_shape_position(sh)]);
    }
    return len;
}

int pbw_scene_caption(const pbw_scene *sc, int detail, char *buf, size_t n) {
    int len = 0;
    if (n) buf[0] = 0;
    for (int i = 0; i < sc->n; i++) {
        char one[128];
        if (i) cat(buf, n, &len, i == sc->n - 1 ? " and " : ", ");
        pbw_shape_caption(&sc->shapes[i], detail >= PBW_CAPTION_FULL ? PBW_CAPTION_PLACED : detail,
                          one, sizeof one);
        cat(buf, n, &len, one);
    }
    if (detail >= PBW_CAPTION_FULL) {
        cat(buf, n, &len, " on a ");
        cat(buf, n, &len, pbw_bg_tone(sc->bg_level));
        cat(buf, n, &len, sc->texture == PBW_BG_SHADED ? " shaded" : (sc->texture == PBW_BG_STRIPED ? " striped" : ""));
        cat(buf, n, &len, " background");
    }
    return len;
}

int pbw_scene_json(const pbw_scene *sc, int size, char *buf, size_t n) {
    static const char *const tex[PBW_BG_COUNT] = {"plain", "shaded", "striped"};
    char tmp[512];
    int len = 0;
    if (n) buf[0] = 0;
    snprintf(tmp, sizeof tmp,
             "{\"seed\":%llu,\"index\":%lld,\"size\":%d,\"background\":{\"tone\":\"%s\","
             "\"texture\":\"%s\",\"level\":%.4f,\"amplitude\":%.4f},\"shapes\":[",
             (unsigned long long)sc->seed, (long long)sc->index, size, pbw_bg_tone(sc->bg_level),
             tex[sc->texture], sc->bg_level, sc->bg_amp);
    cat(buf, n, &len, tmp);
    for (int i = 0; i < sc->n; i++) {
        const pbw_shape *sh = &sc->shapes[i];
        int x0, y0, x1, y1;
        pbw_shape_bbox(sh, size, &x0, &y0, &x1, &y1);
        char c0[96], c1[96], c2[128];
        pbw_shape_caption(sh, PBW_CAPTION_SHORT, c0, sizeof c0);
        pbw_shape_caption(sh, PBW_CAPTION_SIZED, c1, sizeof c1);
        pbw_shape_caption(sh, PBW_CAPTION_PLACED, c2, sizeof c2);
        snprintf(tmp, sizeof tmp,
                 "%s{\"shape\":\"%s\",\"colour\":\"%s\",\"size\":\"%s\",\"position\":\"%s\","
                 "\"cx\":%.4f,\"cy\":%.4f,\"r\":%.4f,\"rgb\":[%d,%d,%d],\"bbox\":[%d,%d,%d,%d],"
                 "\"captions\":[\"%s\",\"%s\",\"%s\"]}",
                 i ? "," : "", pbw_shape_names[sh->kind], pbw_colour_names[sh->colour],
                 sh->large ? "large" : "small", pbw_position_names[pbw_shape_position(sh)], sh->cx,
                 sh->cy, sh->r, sh->rgb[0], sh->rgb[1], sh->rgb[2], x0, y0, x1, y1, c0, c1, c2);
        cat(buf, n, &len, tmp);
    }
    cat(buf, n, &len, "],\"captions\":[");
    for (int d = PBW_CAPTION_SHORT; d <= PBW_CAPTION_FULL; d++) {
        char c[512];
        pbw_scene_caption(sc, d, c, sizeof c);
        cat(buf, n, &len, d ? ",\"" : "\"");
        cat(buf, n, &len, c);
        cat(buf, n, &len, "\"");
    }
    cat(buf, n, &len, "]}");
    return len;
}

int pbw_shapes_render_batch(uint64_t seed, int64_t first, int64_t n, int size, uint8_t *rgb,
                            char *json, size_t json_stride) {
    if (size < 4 || size > 4096 || n < 0) return -1;
    int rc = 0;
    for (int64_t i = 0; i < n; i++) {
        pbw_scene sc;
        pbw_scene_random(&sc, seed, first + i, NULL);
        pbw_scene_render(&sc, size, rgb + (size_t)i * size * size * 3);
        if (json && (size_t)pbw_scene_json(&sc, size, json + (size_t)i * json_stride, json_stride) >= json_stride)
            rc = -1;
    }
    return rc;
}
