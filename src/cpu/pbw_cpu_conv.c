/* pbw_cpu_conv.c: 2-D convolution on the CPU (im2col + OpenBLAS sgemm, col2im for the input
 * gradient). See pbw_cpu_conv.h for the contracts; shapes are checked by the ops, not here.
 *
 * Work is cut into tiles of output positions so that the column buffer (K rows of
 * K = C/G*KH*KW values each, one column per output position) stays near COL_BUDGET floats:
 * either a run of positions inside one sample, or several whole samples when one sample has
 * fewer positions than a tile (CLIP's 7x7 patch grid, StyleGAN2's 4x4 and 8x8 layers). Packing
 * samples makes one wide GEMM instead of many skinny ones, at the cost of a copy of the output
 * (Og rows of P floats per sample) through a small buffer.
 *
 * Threads: OpenBLAS parallelizes each GEMM itself; im2col, col2im and the copies use OpenMP.
 * We never call BLAS from inside an OpenMP region, so the two thread pools never nest.
 */
#include "cpu/pbw_cpu_conv.h"

#include <cblas.h>
#include <string.h>

/* 1M floats (4 MB): big enough for GEMMs of a few hundred columns on 3x3x512 inputs, small
 * enough to stay in the L3 cache next to the weights. */
#define COL_BUDGET ((int64_t)1 << 20)
/* Narrower GEMMs than this lose much of the BLAS kernel's speed; a tile never goes below it. */
#define MIN_TILE_COLS 128
/* Loops with less work than this run on one thread (an OpenMP fork costs a few microseconds). */
#define OMP_MIN_WORK 32768

typedef struct conv_plan {
    int Cg, Og;
    int64_t K;    /* rows of the column buffer: Cg*KH*KW */
    int64_t P;    /* output positions per sample: OH*OW */
    int64_t cols; /* columns per tile */
    int nb;       /* samples per tile: > 1 only when a tile holds whole samples */
} conv_plan;

static int64_t forced_tile_cols;

void pbw_cpu_conv_set_tile_cols(int64_t cols) { forced_tile_cols = cols > 0 ? cols : 0; }

static conv_plan make_plan(const pbw_cpu_conv_geom *g) {
    conv_plan p;
    p.Cg = g->C / g->G;
    p.Og = g->O / g->G;
    p.K = (int64_t)p.Cg * g->KH * g->KW;
    p.P = (int64_t)g->OH * g->OW;
    int64_t T = COL_BUDGET / (p.K ? p.K : 1);
    if (T < MIN_TILE_COLS) T = MIN_TILE_COLS;
    if (forced_tile_cols) T = forced_tile_cols;
    if (T >= p.P) {
        int64_t nb = p.P ? T / p.P : 1;
        if (nb > g->N) nb = g->N;
        if (nb < 1) nb = 1;
        p.nb = (int)nb;
        p.cols = nb * p.P;
    } else {
        if (T >= g->OW) T = T / g->OW * g->OW; /* whole output rows: cleaner im2col runs */
        p.nb = 1;
        p.cols = T;
    }
    return p;
}

static int is_pointwise(const pbw_cpu_conv_geom *g) {
    return g->KH == 1 && g->KW == 1 && g->sh == 1 && g->sw == 1 && g->ph == 0 && g->pw == 0;
}

size_t pbw_cpu_conv2d_scratch_floats(const pbw_cpu_conv_geom *g) {
    if (is_pointwise(g)) return 0;
    conv_plan p = make_plan(g);
    return (size_t)(p.K * p.cols + (p.nb > 1 ? (int64_t)p.Og * p.cols : 0));
}

static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
static int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

/* One row of the column buffer: for kernel tap (kh,kw) of one input plane (H,W), the input
 * value seen by output positions p0 .. p0+np-1 (0 where the tap falls in the padding). */
static void im2col_row(float *dst, const float *plane, const pbw_cpu_conv_geom *g, int kh,
                       int kw, int64_t p0, int64_t np) {
    const int64_t off = (int64_t)kw * g->dw - g->pw; /* iw = ow*sw + off */
    int64_t p = p0, end = p0 + np;
    while (p < end) {
        int64_t oh = p / g->OW, ow0 = p - oh * g->OW, ow1 = min64(g->OW, ow0 + (end - p));
        int64_t len = ow1 - ow0;
        int64_t ih = oh * g->sh - g->ph + (int64_t)kh * g->dh;
        if (ih < 0 || ih >= g->H) {
            memset(dst, 0, (size_t)len * sizeof(float));
        } else {
            const float *src = plane + ih * g->W;
            if (g->sw == 1) {
                int64_t lo = min64(max64(-off, ow0), ow1);
                int64_t hi = min64(max64(g->W - off, lo), ow1);
                memset(dst, 0, (size_t)(lo - ow0) * sizeof(float));
                memcpy(dst + (lo - ow0), src + lo + off, (size_t)(hi - lo) * sizeof(float));
                memset(dst + (hi - ow0), 0, (size_t)(ow1 - hi) * sizeof(float));
            } else {
                for (int64_t ow = ow0; ow < ow1; ow++) {
                    int64_t iw = ow * g->sw + off;
                    dst[ow - ow0] = (iw >= 0 && iw < g->W) ? src[iw] : 0.0f;
                }
            }
        }
        dst += len;
        p += len;
    }
}

/* The adjoint of im2col_row: adds the row back into the plane. */
static void col2im_row(float *plane, const float *src, const pbw_cpu_conv_geom *g, int kh,
                       int kw, int64_t p0, int64_t np) {
    const int64_t off = (int64_t)kw * g->dw - g->pw;
    int64_t p = p0, end = p0 + np;
    while (p < end) {
        int64_t oh = p / g->OW, ow0 = p - oh * g->OW, ow1 = min64(g->OW, ow0 + (end - p));
        int64_t len = ow1 - ow0;
        int64_t ih = oh * g->sh - g->ph + (int64_t)kh * g->dh;
        if (ih >= 0 && ih < g->H) {
            float *dst = plane + ih * g->W;
            if (g->sw == 1) {
                int64_t lo = min64(max64(-off, ow0), ow1);
                int64_t hi = min64(max64(g->W - off, lo), ow1);
                float *d = dst + off;
                const float *s = src - ow0;
                for (int64_t ow = lo; ow < hi; ow++) d[ow] += s[ow];
            } else {
                for (int64_t ow = ow0; ow < ow1; ow++) {
                    int64_t iw = ow * g->sw + off;
                    if (iw >= 0 && iw < g->W) dst[iw] += src[ow - ow0];
                }
            }
        }
        src += len;
        p += len;
    }
}

/* A tile: samples n0 .. n0+nb-1, positions p0 .. p0+np-1 of each (np = P when nb > 1).
 * Column j of the tile is sample n0 + j/np, position p0 + j%np. */
typedef struct conv_tile {
    int n0, nb;
    int64_t p0, np;
} conv_tile;

static conv_tile first_tile(const conv_plan *pl) {
    conv_tile t = {0, pl->nb, 0, pl->nb > 1 ? pl->P : min64(pl->cols, pl->P)};
    return t;
}

/* Advances to the next tile; t->n0 reaches N after the last one. */
static void next_tile(conv_tile *t, const pbw_cpu_conv_geom *g, const conv_plan *pl) {
    if (pl->nb > 1) {
        t->n0 += t->nb;
        t->nb = (int)min64(pl->nb, g->N - t->n0);
        return;
    }
    t->p0 += t->np;
    if (t->p0 >= pl->P) {
        t->p0 = 0;
        t->n0++;
    }
    t->np = min64(pl->cols, pl->P - t->p0);
}

static void im2col_tile(float *col, const float *x, const pbw_cpu_conv_geom *g,
                        const conv_plan *pl, int grp, conv_tile t) {
    const int64_t HW = (int64_t)g->H * g->W, cols = t.nb * t.np;
    const int KK = g->KH * g->KW;
#pragma omp parallel for schedule(static) if (pl->K * cols > OMP_MIN_WORK)
    for (int64_t r = 0; r < pl->K; r++) {
        int c = (int)(r / KK), kh = (int)(r % KK) / g->KW, kw = (int)(r % KK) % g->KW;
        for (int s = 0; s < t.nb; s++) {
            const float *plane = x + ((int64_t)(t.n0 + s) * g->C + (int64_t)grp * pl->Cg + c) * HW;
            im2col_row(col + r * cols + s * t.np, plane, g, kh, kw, t.p0, t.np);
        }
    }
}

static void col2im_tile(float *dx, const float *col, const pbw_cpu_conv_geom *g,
                        const conv_plan *pl, int grp, conv_tile t) {
    const int64_t HW = (int64_t)g->H * g->W, cols = t.nb * t.np;
    const int KK = g->KH * g->KW;
    const int64_t planes = (int64_t)t.nb * pl->Cg;
    /* one thread per input plane: the taps of one channel all add into the same plane */
#pragma omp parallel for schedule(static) if (pl->K * cols > OMP_MIN_WORK)
    for (int64_t i = 0; i < planes; i++) {
        int s = (int)(i / pl->Cg), c = (int)(i % pl->Cg);
        float *plane = dx + ((int64_t)(t.n0 + s) * g->C + (int64_t)grp * pl->Cg + c) * HW;
        for (int k = 0; k < KK; k++) {
            int64_t r = (int64_t)c * KK + k;
            col2im_row(plane, col + r * cols + s * t.np, g, k / g->KW, k % g->KW, t.p0, t.np);
        }
    }
}

/* buf (Og, nb*P) <-> rows grp*Og .. of samples n0.. of a (N,O,P) tensor. */
static void gather_rows(float *buf, const float *t_nop, const pbw_cpu_conv_geom *g,
                        const conv_plan *pl, int grp, conv_tile t) {
    const int64_t cols = t.nb * pl->P;
#pragma omp parallel for schedule(static) if (pl->Og * cols > OMP_MIN_WORK)
    for (int64_t i = 0; i < (int64_t)pl->Og * t.nb; i++) {
        int64_t o = i / t.nb, s = i % t.nb;
        memcpy(buf + o * cols + s * pl->P,
               t_nop + ((t.n0 + s) * g->O + (int64_t)grp * pl->Og + o) * pl->P,
               (size_t)pl->P * sizeof(float));
    }
}

static void scatter_rows(float *t_nop, const float *buf, const pbw_cpu_conv_geom *g,
                         const conv_plan *pl, int grp, conv_tile t, int accumulate) {
    const int64_t cols = t.nb * pl->P;
#pragma omp parallel for schedule(static) if (pl->Og * cols > OMP_MIN_WORK)
    for (int64_t i = 0; i < (int64_t)pl->Og * t.nb; i++) {
        int64_t o = i / t.nb, s = i % t.nb;
        float *d = t_nop + ((t.n0 + s) * g->O + (int64_t)grp * pl->Og + o) * pl->P;
        const float *src = buf + o * cols + s * pl->P;
        if (accumulate)
            for (int64_t p = 0; p < pl->P; p++) d[p] += src[p];
        else
            memcpy(d, src, (size_t)pl->P * sizeof(float));
    }
}

void pbw_cpu_conv2d_forward(float *out, const float *x, const float *w, const float *b,
                            const pbw_cpu_conv_geom *g, int accumulate, float *scratch) {
    conv_plan pl = make_plan(g);
    const int64_t HW = (int64_t)g->H * g->W;
    if (g->N == 0 || g->O == 0 || pl.P == 0) return;
    const float beta = accumulate ? 1.0f : 0.0f;
    if (is_pointwise(g)) {
        for (int n = 0; n < g->N; n++)
            for (int grp = 0; grp < g->G; grp++)
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, pl.Og, (int)pl.P, pl.Cg,
                            1.0f, w + (int64_t)grp * pl.Og * pl.Cg, pl.Cg,
                            x + ((int64_t)n * g->C + (int64_t)grp * pl.Cg) * HW, (int)pl.P, beta,
                            out + ((int64_t)n * g->O + (int64_t)grp * pl.Og) * pl.P, (int)pl.P);
    } else {
        float *col = scratch, *tmp = scratch + pl.K * pl.cols;
        for (int grp = 0; grp < g->G; grp++) {
            const float *wg = w + (int64_t)grp * pl.Og * pl.K;
            for (conv_tile t = first_tile(&pl); t.n0 < g->N; next_tile(&t, g, &pl)) {
                const int64_t cols = t.nb * t.np;
                im2col_tile(col, x, g, &pl, grp, t);
                if (t.nb == 1) {
                    float *dst = out + ((int64_t)t.n0 * g->O + (int64_t)grp * pl.Og) * pl.P + t.p0;
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, pl.Og, (int)cols,
                                (int)pl.K, 1.0f, wg, (int)pl.K, col, (int)cols, beta, dst,
                                (int)pl.P);
                } else {
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, pl.Og, (int)cols,
                                (int)pl.K, 1.0f, wg, (int)pl.K, col, (int)cols, 0.0f, tmp,
                                (int)cols);
                    scatter_rows(out, tmp, g, &pl, grp, t, accumulate);
                }
            }
        }
    }
    if (b) pbw_cpu_conv2d_add_bias(out, b, g->N, g->O, pl.P);
}

void pbw_cpu_conv2d_add_bias(float *out, const float *b, int N, int O, int64_t P) {
#pragma omp parallel for schedule(static) if ((int64_t)N * O * P > OMP_MIN_WORK)
    for (int64_t i = 0; i < (int64_t)N * O; i++) {
        float bo = b[i % O], *d = out + i * P;
        for (int64_t p = 0; p < P; p++) d[p] += bo;
    }
}

void pbw_cpu_conv2d_backward_data(float *dx, const float *dout, const float *w,
                                  const pbw_cpu_conv_geom *g, float *scratch) {
    conv_plan pl = make_plan(g);
    const int64_t HW = (int64_t)g->H * g->W;
    if (g->N == 0 || g->O == 0 || pl.P == 0) return;
    if (is_pointwise(g)) {
        for (int n = 0; n < g->N; n++)
            for (int grp = 0; grp < g->G; grp++)
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, pl.Cg, (int)pl.P, pl.Og,
                            1.0f, w + (int64_t)grp * pl.Og * pl.Cg, pl.Cg,
                            dout + ((int64_t)n * g->O + (int64_t)grp * pl.Og) * pl.P, (int)pl.P,
                            1.0f, dx + ((int64_t)n * g->C + (int64_t)grp * pl.Cg) * HW,
                            (int)pl.P);
        return;
    }
    float *col = scratch, *tmp = scratch + pl.K * pl.cols;
    for (int grp = 0; grp < g->G; grp++) {
        const float *wg = w + (int64_t)grp * pl.Og * pl.K;
        for (conv_tile t = first_tile(&pl); t.n0 < g->N; next_tile(&t, g, &pl)) {
            const int64_t cols = t.nb * t.np;
            const float *src;
            int64_t ld;
            if (t.nb == 1) {
                src = dout + ((int64_t)t.n0 * g->O + (int64_t)grp * pl.Og) * pl.P + t.p0;
                ld = pl.P;
            } else {
                gather_rows(tmp, dout, g, &pl, grp, t);
                src = tmp;
                ld = cols;
            }
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)pl.K, (int)cols, pl.Og,
                        1.0f, wg, (int)pl.K, src, (int)ld, 0.0f, col, (int)cols);
            col2im_tile(dx, col, g, &pl, grp, t);
        }
    }
}

void pbw_cpu_conv2d_backward_weight(float *dw, const float *dout, const float *x,
                                    const pbw_cpu_conv_geom *g, float *scratch) {
    conv_plan pl = make_plan(g);
    const int64_t HW = (int64_t)g->H * g->W;
    if (g->N == 0 || g->O == 0 || pl.P == 0) return;
    if (is_pointwise(g)) {
        for (int n = 0; n < g->N; n++)
            for (int grp = 0; grp < g->G; grp++)
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, pl.Og, pl.Cg, (int)pl.P,
                            1.0f, dout + ((int64_t)n * g->O + (int64_t)grp * pl.Og) * pl.P,
                            (int)pl.P, x + ((int64_t)n * g->C + (int64_t)grp * pl.Cg) * HW,
                            (int)pl.P, 1.0f, dw + (int64_t)grp * pl.Og * pl.Cg, pl.Cg);
        return;
    }
    float *col = scratch, *tmp = scratch + pl.K * pl.cols;
    for (int grp = 0; grp < g->G; grp++) {
        float *dwg = dw + (int64_t)grp * pl.Og * pl.K;
        for (conv_tile t = first_tile(&pl); t.n0 < g->N; next_tile(&t, g, &pl)) {
            const int64_t cols = t.nb * t.np;
            const float *src;
            int64_t ld;
            if (t.nb == 1) {
                src = dout + ((int64_t)t.n0 * g->O + (int64_t)grp * pl.Og) * pl.P + t.p0;
                ld = pl.P;
            } else {
                gather_rows(tmp, dout, g, &pl, grp, t);
                src = tmp;
                ld = cols;
            }
            im2col_tile(col, x, g, &pl, grp, t);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, pl.Og, (int)pl.K, (int)cols,
                        1.0f, src, (int)ld, col, (int)cols, 1.0f, dwg, (int)pl.K);
        }
    }
}

void pbw_cpu_conv2d_backward_bias(float *db, const float *dout, int N, int O, int64_t P) {
#pragma omp parallel for schedule(static) if ((int64_t)N * O * P > OMP_MIN_WORK)
    for (int o = 0; o < O; o++) {
        double s = 0; /* a 256x256 map summed in float would lose ~4 digits */
        for (int n = 0; n < N; n++) {
            const float *d = dout + ((int64_t)n * O + o) * P;
            for (int64_t p = 0; p < P; p++) s += d[p];
        }
        db[o] += (float)s;
    }
}
