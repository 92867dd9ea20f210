/* pbw_shapes_check.c: the geometric checker of the shapes world (see pbw_shapes_check.h):
 * colour segmentation, 8-connected blobs, holes, convex hull, and the shape rule. Depends on
 * libc, libm and pbw_shapes.c only. */
#include "pbw_shapes_check.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static float hue_of(float r, float g, float b) {
    float mx = fmaxf(r, fmaxf(g, b)), mn = fminf(r, fminf(g, b)), c = mx - mn;
    if (c <= 0) return 0;
    float h;
    if (mx == r) h = 60 * fmodf((g - b) / c + 6, 6);
    else if (mx == g) h = 60 * ((b - r) / c + 2);
    else h = 60 * ((r - g) / c + 4);
    return h;
}

static float hue_dist(float a, float b) {
    float d = fabsf(a - b);
    return d > 180 ? 360 - d : d;
}

int pbw_shapes_pixel_colour(const uint8_t *px) {
    int mx = px[0], mn = px[0];
    for (int k = 1; k < 3; k++) {
        if (px[k] > mx) mx = px[k];
        if (px[k] < mn) mn = px[k];
    }
    if (mx - mn < PBW_CHECK_MIN_CHROMA) return -1;
    float h = hue_of(px[0], px[1], px[2]);
    int best = -1;
    float bd = PBW_CHECK_MAX_HUE_DIST;
    for (int c = 0; c < PBW_COLOUR_COUNT; c++) {
        const uint8_t *p = pbw_colour_rgb[c];
        float d = hue_dist(h, hue_of(p[0], p[1], p[2]));
        if (d <= bd) {
            bd = d;
            best = c;
        }
    }
    return best;
}

/* ---------- convex hull area (Andrew's monotone chain) ---------- */

typedef struct { int x, y; } pt;

static long cross(pt o, pt a, pt b) { return (long)(a.x - o.x) * (b.y - o.y) - (long)(a.y - o.y) * (b.x - o.x); }

static int pt_cmp(const void *pa, const void *pb) {
    const pt *a = pa, *b = pb;
    return a->x != b->x ? (a->x > b->x) - (a->x < b->x) : (a->y > b->y) - (a->y < b->y);
}

/* Area of the convex hull of n points (sorted in place); hull needs room for 2n points. */
static double hull_area(pt *p, int n, pt *hull) {
    if (n < 3) return 0;
    qsort(p, (size_t)n, sizeof *p, pt_cmp);
    int k = 0;
    for (int i = 0; i < n; i++) {
        while (k >= 2 && cross(hull[k - 2], hull[k - 1], p[i]) <= 0) k--;
        hull[k++] = p[i];
    }
    for (int i = n - 2, t = k + 1; i >= 0; i--) {
        while (k >= t && cross(hull[k - 2], hull[k - 1], p[i]) <= 0) k--;
        hull[k++] = p[i];
    }
    double a = 0;
    for (int i = 0; i + 1 < k; i++) a += (double)hull[i].x * hull[i + 1].y - (double)hull[i + 1].x * hull[i].y;
    return fabs(a) / 2;
}

/* ---------- blobs ---------- */

static int classify(const pbw_blob *b) {
    if (b->hole_frac > 0.08f) return PBW_SHAPE_RING;
    if (b->solidity < 0.8f) return PBW_SHAPE_STAR;
    if (b->fill > 0.9f) return PBW_SHAPE_SQUARE;
    if (b->fill < 0.64f) return PBW_SHAPE_TRIANGLE;
    return PBW_SHAPE_CIRCLE;
}

/* Measures the blob whose pixels have label id in lab (w*h ints); fills holes, hull, fill. */
static int measure(const int *lab, int id, int w, pbw_blob *b, int *work, pt *pts, pt *hull) {
    int bw = b->x1 - b->x0 + 2, bh = b->y1 - b->y0 + 2; /* box grown by 1 on every side */
    /* flood the outside of the blob from the grown box's border; what stays unreached and is
     * not blob is a hole */
    int *seen = work, *stack = work + (size_t)bw * bh;
    memset(seen, 0, (size_t)bw * bh * sizeof *seen);
    int sp = 0;
#define IS_BLOB(X, Y)                                                                          \
    ((X) >= b->x0 && (X) < b->x1 && (Y) >= b->y0 && (Y) < b->y1 && lab[(size_t)(Y) * w + (X)] == id)
    for (int y = 0; y < bh; y++)
        for (int x = 0; x < bw; x++)
            if (x == 0 || y == 0 || x == bw - 1 || y == bh - 1) {
                seen[y * bw + x] = 1;
                stack[sp++] = y * bw + x;
            }
    while (sp) {
        int q = stack[--sp], qx = q % bw, qy = q / bw;
        static const int dx[4] = {1, -1, 0, 0}, dy[4] = {0, 0, 1, -1};
        for (int k = 0; k < 4; k++) { /* 4-connected background, dual to 8-connected blobs */
            int nx = qx + dx[k], ny = qy + dy[k];
            if (nx < 0 || ny < 0 || nx >= bw || ny >= bh || seen[ny * bw + nx]) continue;
            if (IS_BLOB(b->x0 - 1 + nx, b->y0 - 1 + ny)) continue;
            seen[ny * bw + nx] = 1;
            stack[sp++] = ny * bw + nx;
        }
    }
    int holes = 0, np = 0;
    for (int y = 1; y < bh - 1; y++) {
        int xl = -1, xr = -1;
        for (int x = 1; x < bw - 1; x++) {
            int blob = IS_BLOB(b->x0 - 1 + x, b->y0 - 1 + y);
            if (!blob && !seen[y * bw + x]) holes++;
            if (blob || !seen[y * bw + x]) {
                if (xl < 0) xl = x;
                xr = x;
            }
        }
        if (xl >= 0) { /* the row's extreme pixel corners */
            int gy = b->y0 - 1 + y, gl = b->x0 - 1 + xl, gr = b->x0 - 1 + xr + 1;
            pts[np++] = (pt){gl, gy};
            pts[np++] = (pt){gl, gy + 1};
            pts[np++] = (pt){gr, gy};
            pts[np++] = (pt){gr, gy + 1};
        }
    }
#undef IS_BLOB
    double filled = (double)b->area + holes;
    double ha = hull_area(pts, np, hull);
    b->holes = holes;
    b->hole_frac = (float)(holes / filled);
    b->solidity = ha > 0 ? (float)(filled / ha) : 1.0f;
    b->fill = (float)(filled / ((double)(b->x1 - b->x0) * (b->y1 - b->y0)));
    b->kind = classify(b);
    return 0;
}

static int blob_cmp(const void *pa, const void *pb) {
    const pbw_blob *a = pa, *b = pb;
    return (b->area > a->area) - (b->area < a->area);
}

/* Labels 8-connected components of equal colour class; returns the blobs (malloc'd, *nb of
 * them, areas under the minimum dropped) and the label image in lab. */
static pbw_blob *find_all(const uint8_t *rgb, int w, int h, int *lab, int *nb) {
    size_t n = (size_t)w * h;
    int *cls = malloc(n * sizeof *cls), *stack = malloc(n * sizeof *stack);
    int *work = malloc((n + 4 * (size_t)(w + h) + 16) * 2 * sizeof *work);
    pt *pts = malloc((4 * (size_t)h + 16) * sizeof *pts), *hull = malloc((8 * (size_t)h + 32) * sizeof *hull);
    pbw_blob *blobs = NULL;
    int cap = 0, count = 0;
    if (!cls || !stack || !work || !pts || !hull) goto fail;
    for (size_t i = 0; i < n; i++) {
        cls[i] = pbw_shapes_pixel_colour(rgb + 3 * i);
        lab[i] = -1;
    }
    int min_area = (int)ceilf(PBW_CHECK_MIN_AREA_FRAC * (float)n);
    int next = 0;
    for (size_t s = 0; s < n; s++) {
        if (cls[s] < 0 || lab[s] >= 0) continue;
        int id = next++, sp = 0;
        pbw_blob b;
        memset(&b, 0, sizeof b);
        b.colour = cls[s];
        b.x0 = w;
        b.y0 = h;
        double sx = 0, sy = 0;
        lab[s] = id;
        stack[sp++] = (int)s;
        while (sp) {
            int q = stack[--sp], qx = q % w, qy = q / w;
            b.area++;
            sx += qx;
            sy += qy;
            if (qx < b.x0) b.x0 = qx;
            if (qy < b.y0) b.y0 = qy;
            if (qx + 1 > b.x1) b.x1 = qx + 1;
            if (qy + 1 > b.y1) b.y1 = qy + 1;
            for (int dy = -1; dy <= 1; dy++)
                for (int dx = -1; dx <= 1; dx++) {
                    int nx = qx + dx, ny = qy + dy;
                    if (nx < 0 || ny < 0 || nx >= w || ny >= h) continue;
                    size_t k = (size_t)ny * w + nx;
                    if (lab[k] >= 0 || cls[k] != b.colour) continue;
                    lab[k] = id;
                    stack[sp++] = (int)k;
                }
        }
        if (b.area < min_area) continue;
        b.cx = (float)(sx / b.area);
        b.cy = (float)(sy / b.area);
        b.in_mask = id; /* the label, until check_region overwrites it */
        measure(lab, id, w, &b, work, pts, hull);
        if (count == cap) {
            cap = cap ? 2 * cap : 16;
            pbw_blob *nbp = realloc(blobs, (size_t)cap * sizeof *nbp);
            if (!nbp) goto fail;
            blobs = nbp;
        }
        blobs[count++] = b;
    }
    free(cls);
    free(stack);
    free(work);
    free(pts);
    free(hull);
    *nb = count;
    if (!blobs) blobs = malloc(sizeof *blobs); /* an empty, freeable result */
    return blobs;
fail:
    free(cls);
    free(stack);
    free(work);
    free(pts);
    free(hull);
    free(blobs);
    return NULL;
}

int pbw_shapes_find(const uint8_t *rgb, int w, int h, pbw_blob *out, int max) {
    if (w <= 0 || h <= 0 || w > 16384 || h > 16384) return -1;
    int *lab = malloc((size_t)w * h * sizeof *lab), nb = 0;
    pbw_blob *b = lab ? find_all(rgb, w, h, lab, &nb) : NULL;
    free(lab);
    if (!b) return -1;
    qsort(b, (size_t)nb, sizeof *b, blob_cmp);
    for (int i = 0; i < nb && i < max; i++) {
        out[i] = b[i];
        out[i].in_mask = 0;
    }
    free(b);
    return nb;
}

int pbw_shapes_check_region(const uint8_t *rgb, int w, int h, const float *mask, pbw_blob *out) {
    if (w <= 0 || h <= 0 || w > 16384 || h > 16384) return -1;
    int *lab = malloc((size_t)w * h * sizeof *lab), nb = 0;
    pbw_blob *b = lab ? find_all(rgb, w, h, lab, &nb) : NULL;
    if (!b) {
        free(lab);
        return -1;
    }
    int best = -1, best_in = 0;
    for (int i = 0; i < nb; i++) {
        int id = b[i].in_mask, in = 0;
        for (int y = b[i].y0; y < b[i].y1; y++)
            for (int x = b[i].x0; x < b[i].x1; x++)
                in += lab[(size_t)y * w + x] == id && (!mask || mask[(size_t)y * w + x] > 0.5f);
        b[i].in_mask = in;
        if (in > best_in) {
            best_in = in;
            best = i;
        }
    }
    if (best >= 0) *out = b[best];
    free(lab);
    free(b);
    return best >= 0 ? 0 : 1;
}

int pbw_shapes_outside_change(const uint8_t *a, const uint8_t *b, int w, int h, const float *mask,
                              int margin, double *mean, int64_t *count) {
    if (w <= 0 || h <= 0) return -1;
    /* distance to the mask along rows, then the maximum over a (2 margin + 1) window of
     * columns: a pixel is in the footprint when a mask pixel lies within margin in x and y */
    uint8_t *row = malloc((size_t)w * h), *fp = malloc((size_t)w * h);
    if (!row || !fp) {
        free(row);
        free(fp);
        return -1;
    }
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            int any = 0;
            for (int d = -margin; d <= margin && !any; d++) {
                int xx = x + d;
                any = xx >= 0 && xx < w && mask[(size_t)y * w + xx] > 0;
            }
            row[(size_t)y * w + x] = (uint8_t)any;
        }
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            int any = 0;
            for (int d = -margin; d <= margin && !any; d++) {
                int yy = y + d;
                any = yy >= 0 && yy < h && row[(size_t)yy * w + x];
            }
            fp[(size_t)y * w + x] = (uint8_t)any;
        }
    double s = 0;
    int64_t n = 0;
    for (size_t i = 0; i < (size_t)w * h; i++) {
        if (fp[i]) continue;
        for (int k = 0; k < 3; k++) s += abs((int)a[3 * i + k] - (int)b[3 * i + k]);
        n++;
    }
    free(row);
    free(fp);
    *count = n;
    *mean = n ? s / (3.0 * n * 127.5) : 0;
    return 0;
}

void pbw_shapes_box_mask(int x0, int y0, int x1, int y1, int grow, int w, int h, float *out) {
    int bw = x1 - x0, bh = y1 - y0, side = (bw > bh ? bw : bh) + 2 * grow;
    int cx2 = x0 + x1, cy2 = y0 + y1; /* twice the centre */
    int ax = (cx2 - side) / 2, ay = (cy2 - side) / 2;
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++)
            out[(size_t)y * w + x] = x >= ax && x < ax + side && y >= ay && y < ay + side ? 1.0f : 0.0f;
}

int pbw_shapes_recognized(const pbw_scene *sc, const uint8_t *rgb, int size, int *correct,
                          int *colour_ok) {
    pbw_blob b[32];
    int nb = pbw_shapes_find(rgb, size, size, b, 32);
    if (nb < 0) return -1;
    if (nb > 32) nb = 32;
    *correct = *colour_ok = 0;
    for (int s = 0; s < sc->n; s++) {
        const pbw_shape *sh = &sc->shapes[s];
        float lim = sh->r * size, bd = lim * lim;
        int best = -1;
        for (int k = 0; k < nb; k++) {
            /* blob centroids are pixel indices; pixel x covers [x, x + 1) */
            float dx = b[k].cx + 0.5f - sh->cx * size, dy = b[k].cy + 0.5f - sh->cy * size;
            if (dx * dx + dy * dy <= bd) {
                bd = dx * dx + dy * dy;
                best = k;
            }
        }
        if (best < 0 || b[best].colour != sh->colour) continue;
        (*colour_ok)++;
        *correct += b[best].kind == sh->kind;
    }
    return sc->n;
}

int pbw_shapes_blob_confident(const pbw_blob *b) {
    switch (b->kind) {
    case PBW_SHAPE_RING: return b->hole_frac > 0.12f;
    case PBW_SHAPE_STAR: return b->hole_frac < 0.03f && b->solidity < 0.75f;
    case PBW_SHAPE_SQUARE: return b->hole_frac < 0.03f && b->solidity > 0.88f && b->fill > 0.93f;
    case PBW_SHAPE_TRIANGLE: return b->hole_frac < 0.03f && b->solidity > 0.84f && b->fill < 0.6f;
    default: return b->hole_frac < 0.03f && b->solidity > 0.88f && b->fill > 0.7f && b->fill < 0.86f;
    }
}
