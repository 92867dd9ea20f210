/* pbw_cpu_conv.c: 2-D convolution on the CPU (im2col + OpenBLAS sgemm, col2im for the input
 * gradient). See pbw_cpu_conv.h for the contracts; shapes are checked by the ops, not here.
 *
 * Columns. For one group, the convolution is the GEMM out (Og x Q) = W (Og x K) @ col (K x Q),
 * with K = C/G*KH*KW and one column per output position of every sample (Q = N*OH*OW). The
 * column buffer is built tile by tile (a range of columns, possibly spanning samples) so that
 * it stays a few MB whatever the image size. A tile inside one sample is written straight into
 * the output; a tile spanning samples (CLIP's 7x7 patch grid, StyleGAN2's 4x4 maps) goes
 * through a small buffer, one wide GEMM instead of many skinny ones.
 *
 * Threads: one pool, OpenMP's. Each thread calls OpenBLAS single-threaded on work no other
 * thread touches, so a kernel synchronizes once at its end instead of at every GEMM and copy.
 * (OpenBLAS's own threads plus OpenMP's made two pools that fought for the cores: on a busy
 * 2-core machine, a 4x4x512 conv took 30-140 ms instead of 6.) The split per kernel:
 *   forward         tiles of columns over threads; or, when there are too few columns to
 *                   share (small maps), rows of W over threads on a shared column buffer;
 *   backward data   samples over threads (col2im of different samples never overlaps); or
 *                   input channels over threads (each thread owns the planes it scatters to);
 *   backward weight input channels over threads (each thread owns its columns of dW); or rows
 *                   of dW, each thread building the whole column buffer itself.
 * OpenBLAS is set to one thread for the kernel's duration and restored afterwards.
 */
#include "cpu/pbw_cpu_conv.h"
#include "cpu/pbw_cpu_threads.h"

#include <cblas.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

/* Tiles of 1024 columns: OpenBLAS packs the whole weight again for every GEMM call (9 MB for a
 * 3x3x512x512 conv), so narrower tiles pay that more often, while wider ones stop gaining
 * (measured on 3x3 convs of 256 and 512 channels: 256 columns 10-20% slower, 2048 no faster).
 * The column buffer of a thread is kept under COL_BUDGET floats (32 MB). */
#define TILE_COLS 1024
#define COL_BUDGET ((int64_t)1 << 23)
/* Narrower GEMMs than this lose much of the BLAS kernel's speed. */
#define MIN_TILE_COLS 128
/* Below this many columns per thread, splitting columns would make every thread pack the whole
 * weight for little work: split the weight's rows instead. */
#define MIN_SPLIT_COLS 256
/* Loops with less work than this run on one thread (an OpenMP fork costs a few microseconds,
 * and far more on a busy machine where a thread may wait for a core). */
#define OMP_MIN_WORK 32768
/* Convolutions with fewer multiply-adds than this (about 0.1 ms of one core) run on one. */
#define CONV_MIN_PARALLEL_MACS ((int64_t)1 << 22)

static int64_t forced_tile_cols, min_parallel_macs = CONV_MIN_PARALLEL_MACS;

void pbw_cpu_conv_tune(int64_t tile_cols, int64_t min_macs) {
    forced_tile_cols = tile_cols > 0 ? tile_cols : 0;
    min_parallel_macs = min_macs > 0 ? min_macs : CONV_MIN_PARALLEL_MACS;
}

static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
static int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }
static int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

/* OpenBLAS runs single-threaded inside our threads; the caller's setting comes back after. */
static int blas_enter(void) {
    int n = openblas_get_num_threads();
    if (n != 1) openblas_set_num_threads(1);
    return n;
}

static void blas_leave(int n) {
    if (n != 1) openblas_set_num_threads(n);
}

typedef struct conv_plan {
    int nt;             /* threads */
    int Cg, Og, KK;     /* channels per group in and out; KK = KH*KW */
    int64_t K;          /* rows of the column buffer: Cg*KK */
    int64_t P;          /* output positions per sample: OH*OW */
    int64_t Q;          /* columns per group: N*P */
    int64_t HW;         /* input positions per sample */
    int64_t T;          /* columns per tile (at most Q) */
    int64_t per_thread; /* scratch floats per thread: column buffer K*T + output buffer Og*T */
    int pointwise;      /* 1x1, stride 1, no padding: the input is its own column buffer */
} conv_plan;

static conv_plan make_plan(const pbw_cpu_conv_geom *g) {
    conv_plan p;
    p.Cg = g->C / g->G;
    p.Og = g->O / g->G;
    p.KK = g->KH * g->KW;
    p.K = (int64_t)p.Cg * p.KK;
    p.P = (int64_t)g->OH * g->OW;
    p.Q = (int64_t)g->N * p.P;
    p.HW = (int64_t)g->H * g->W;
    p.nt = (int64_t)g->G * p.Og * p.K * p.Q < min_parallel_macs ? 1 : pbw_cpu_max_threads();
    int64_t T = min64(TILE_COLS, COL_BUDGET / (p.K ? p.K : 1));
    if (T < MIN_TILE_COLS) T = MIN_TILE_COLS;
    if (forced_tile_cols) T = forced_tile_cols;
    p.T = max64(1, min64(T, p.Q));
    p.per_thread = (p.K + p.Og) * p.T;
    p.pointwise = g->KH == 1 && g->KW == 1 && g->sh == 1 && g->sw == 1 && g->ph == 0 && g->pw == 0;
    return p;
}

size_t pbw_cpu_conv2d_scratch_floats(const pbw_cpu_conv_geom *g) {
    conv_plan p = make_plan(g);
    return (size_t)(p.nt * p.per_thread);
}

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

/* Rows r0..r1 of the column buffer of group grp for columns q0..q1 (row stride q1-q0).
 * Column q is sample q / P, position q % P. */
static void im2col_rows(float *col, const float *x, const pbw_cpu_conv_geom *g,
                        const conv_plan *pl, int grp, int64_t q0, int64_t q1, int64_t r0,
                        int64_t r1) {
    const int64_t cols = q1 - q0;
    for (int64_t r = r0; r < r1; r++) {
        int c = (int)(r / pl->KK), k = (int)(r % pl->KK);
        float *dst = col + (r - r0) * cols;
        for (int64_t q = q0; q < q1;) {
            int64_t n = q / pl->P, p = q - n * pl->P, np = min64(pl->P - p, q1 - q);
            const float *plane = x + (n * g->C + (int64_t)grp * pl->Cg + c) * pl->HW;
            im2col_row(dst + (q - q0), plane, g, k / g->KW, k % g->KW, p, np);
            q += np;
        }
    }
}

/* Adds the rows of channels c0..c1 (row c0*KK of the group is row 0 of dcol, row stride
 * q1-q0) back into dx. */
static void col2im_channels(float *dx, const float *dcol, const pbw_cpu_conv_geom *g,
                            const conv_plan *pl, int grp, int64_t q0, int64_t q1, int c0,
                            int c1) {
    const int64_t cols = q1 - q0;
    for (int c = c0; c < c1; c++)
        for (int k = 0; k < pl->KK; k++) {
            const float *src = dcol + ((int64_t)(c - c0) * pl->KK + k) * cols;
            for (int64_t q = q0; q < q1;) {
                int64_t n = q / pl->P, p = q - n * pl->P, np = min64(pl->P - p, q1 - q);
                float *plane = dx + (n * g->C + (int64_t)grp * pl->Cg + c) * pl->HW;
                col2im_row(plane, src + (q - q0), g, k / g->KW, k % g->KW, p, np);
                q += np;
            }
        }
}

/* buf (o1-o0, q1-q0) <-> rows grp*Og+o0 .. grp*Og+o1 of a (N,O,P) tensor, columns q0..q1. */
static void copy_rows(float *buf, float *t_nop, const pbw_cpu_conv_geom *g, const conv_plan *pl,
                      int grp, int64_t q0, int64_t q1, int o0, int o1, int dir, int accumulate) {
    const int64_t cols = q1 - q0;
    for (int o = o0; o < o1; o++)
        for (int64_t q = q0; q < q1;) {
            int64_t n = q / pl->P, p = q - n * pl->P, np = min64(pl->P - p, q1 - q);
            float *t = t_nop + (n * g->O + (int64_t)grp * pl->Og + o) * pl->P + p;
            float *b = buf + (int64_t)(o - o0) * cols + (q - q0);
            if (dir == 0) memcpy(b, t, (size_t)np * sizeof(float)); /* gather */
            else if (accumulate)
                for (int64_t i = 0; i < np; i++) t[i] += b[i];
            else memcpy(t, b, (size_t)np * sizeof(float));
            q += np;
        }
}

/* True when columns q0..q1 lie in one sample: the tile then maps onto a (rows, P) matrix. */
static int one_sample(const conv_plan *pl, int64_t q0, int64_t q1) { return q0 / pl->P == (q1 - 1) / pl->P; }

/* ---------- forward ---------- */

/* out rows o0..o1 of group grp, columns q0..q1 = W rows @ B (K x cols, row stride ldb). */
static void fwd_gemm(float *out, const float *B, int64_t ldb, const float *w,
                     const pbw_cpu_conv_geom *g, const conv_plan *pl, int grp, int64_t q0,
                     int64_t q1, int o0, int o1, float *tmp, int accumulate) {
    const int64_t cols = q1 - q0;
    if (o1 <= o0) return;
    const float *A = w + ((int64_t)grp * pl->Og + o0) * pl->K;
    if (one_sample(pl, q0, q1)) {
        int64_t n = q0 / pl->P;
        float *C = out + (n * g->O + (int64_t)grp * pl->Og + o0) * pl->P + (q0 - n * pl->P);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, o1 - o0, (int)cols, (int)pl->K,
                    1.0f, A, (int)pl->K, B, (int)ldb, accumulate ? 1.0f : 0.0f, C, (int)pl->P);
    } else {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, o1 - o0, (int)cols, (int)pl->K,
                    1.0f, A, (int)pl->K, B, (int)ldb, 0.0f, tmp, (int)cols);
        copy_rows(tmp, out, g, pl, grp, q0, q1, o0, o1, 1, accumulate);
    }
}

/* The column block of a tile: the input itself for a pointwise conv inside one sample. */
static const float *tile_columns(const float *x, const pbw_cpu_conv_geom *g, const conv_plan *pl,
                                 int grp, int64_t q0, int64_t q1, float *col, int64_t *ld) {
    if (pl->pointwise && one_sample(pl, q0, q1)) {
        int64_t n = q0 / pl->P;
        *ld = pl->P;
        return x + (n * g->C + (int64_t)grp * pl->Cg) * pl->HW + (q0 - n * pl->P);
    }
    im2col_rows(col, x, g, pl, grp, q0, q1, 0, pl->K);
    *ld = q1 - q0;
    return col;
}

void pbw_cpu_conv2d_forward(float *out, const float *x, const float *w, const float *b,
                            const pbw_cpu_conv_geom *g, int accumulate, float *scratch) {
    conv_plan pl = make_plan(g);
    if (g->N == 0 || g->O == 0 || pl.P == 0) return;
    int64_t T = pl.T, ntiles = cdiv(pl.Q, T);
    int split_rows = 0;
    if (pl.nt > 1 && !forced_tile_cols) {
        if (g->G * ntiles < pl.nt) { /* one group, one tile: share columns or rows */
            if (pl.Q / pl.nt >= 2 * MIN_SPLIT_COLS) T = cdiv(pl.Q, pl.nt);
            else split_rows = 1;
        } else if (g->G * ntiles < 4 * pl.nt && (g->G * ntiles) % pl.nt) {
            /* few tiles that do not divide evenly: narrow them if they stay wide */
            int64_t want = ntiles;
            while ((g->G * want) % pl.nt) want++;
            if (cdiv(pl.Q, want) >= MIN_SPLIT_COLS) T = cdiv(pl.Q, want);
        }
        ntiles = cdiv(pl.Q, T);
    }
    const int64_t items = (int64_t)g->G * ntiles;
    const int blas = blas_enter();
    if (!split_rows) {
#pragma omp parallel num_threads(pl.nt)
        {
            float *col = scratch + pbw_cpu_thread_id() * pl.per_thread, *tmp = col + pl.K * pl.T;
#pragma omp for schedule(dynamic, 1)
            for (int64_t it = 0; it < items; it++) {
                int grp = (int)(it / ntiles);
                int64_t q0 = (it % ntiles) * T, q1 = min64(q0 + T, pl.Q), ld;
                const float *B = tile_columns(x, g, &pl, grp, q0, q1, col, &ld);
                fwd_gemm(out, B, ld, w, g, &pl, grp, q0, q1, 0, pl.Og, tmp, accumulate);
            }
        }
    } else {
        /* few columns: every thread takes a slice of W's rows against one shared buffer */
        float *col = scratch, *tmp = scratch + pl.K * pl.T;
#pragma omp parallel num_threads(pl.nt)
        {
            int t = pbw_cpu_thread_id(), nt = 1;
#ifdef _OPENMP
            nt = omp_get_num_threads(); /* the team may be smaller than asked for */
#endif
            int o0 = (int)((int64_t)pl.Og * t / nt), o1 = (int)((int64_t)pl.Og * (t + 1) / nt);
            for (int64_t it = 0; it < items; it++) {
                int grp = (int)(it / ntiles);
                int64_t q0 = (it % ntiles) * T, q1 = min64(q0 + T, pl.Q), ld = q1 - q0;
                const float *B = col;
                if (pl.pointwise && one_sample(&pl, q0, q1)) {
                    B = tile_columns(x, g, &pl, grp, q0, q1, col, &ld);
                } else {
#pragma omp for schedule(static)
                    for (int64_t r = 0; r < pl.K; r++)
                        im2col_rows(col + r * ld, x, g, &pl, grp, q0, q1, r, r + 1);
                }
                fwd_gemm(out, B, ld, w, g, &pl, grp, q0, q1, o0, o1, tmp + (int64_t)o0 * ld,
                         accumulate);
#pragma omp barrier
            }
        }
    }
    blas_leave(blas);
    if (b) pbw_cpu_conv2d_add_bias(out, b, g->N, g->O, pl.P);
}

/* ---------- backward data ---------- */

/* dx (channels c0..c1 of group grp) += col2im(W[:, rows of c0..c1]^T @ dout) for columns
 * q0..q1. B is dout's block (Og x cols, row stride ldb). */
static void bwd_data_tile(float *dx, const float *B, int64_t ldb, const float *w,
                          const pbw_cpu_conv_geom *g, const conv_plan *pl, int grp, int64_t q0,
                          int64_t q1, int c0, int c1, float *col) {
    const int64_t cols = q1 - q0, r0 = (int64_t)c0 * pl->KK, r1 = (int64_t)c1 * pl->KK;
    const float *A = w + (int64_t)grp * pl->Og * pl->K + r0;
    if (pl->pointwise && one_sample(pl, q0, q1)) { /* the GEMM adds straight into dx */
        int64_t n = q0 / pl->P;
        float *C = dx + (n * g->C + (int64_t)grp * pl->Cg + c0) * pl->HW + (q0 - n * pl->P);
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)(r1 - r0), (int)cols, pl->Og,
                    1.0f, A, (int)pl->K, B, (int)ldb, 1.0f, C, (int)pl->P);
        return;
    }
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)(r1 - r0), (int)cols, pl->Og, 1.0f,
                A, (int)pl->K, B, (int)ldb, 0.0f, col, (int)cols);
    col2im_channels(dx, col, g, pl, grp, q0, q1, c0, c1);
}

/* dout's block for rows 0..Og of group grp, columns q0..q1: in place inside one sample,
 * else gathered into buf. */
static const float *dout_block(const float *dout, const pbw_cpu_conv_geom *g, const conv_plan *pl,
                               int grp, int64_t q0, int64_t q1, int o0, int o1, float *buf,
                               int64_t *ld) {
    if (one_sample(pl, q0, q1)) {
        int64_t n = q0 / pl->P;
        *ld = pl->P;
        return dout + (n * g->O + (int64_t)grp * pl->Og + o0) * pl->P + (q0 - n * pl->P);
    }
    copy_rows(buf, (float *)dout, g, pl, grp, q0, q1, o0, o1, 0, 0);
    *ld = q1 - q0;
    return buf;
}

void pbw_cpu_conv2d_backward_data(float *dx, const float *dout, const float *w,
                                  const pbw_cpu_conv_geom *g, float *scratch) {
    conv_plan pl = make_plan(g);
    if (g->N == 0 || g->O == 0 || pl.P == 0) return;
    const int blas = blas_enter();
    /* col2im of different samples never overlaps: share samples when they divide evenly */
    int by_sample = pl.nt == 1 || (g->N >= pl.nt && (g->N % pl.nt == 0 || g->N >= 3 * pl.nt));
    if (by_sample) {
        const int64_t T = min64(pl.T, pl.P), items = (int64_t)g->G * g->N;
#pragma omp parallel num_threads(pl.nt)
        {
            float *col = scratch + pbw_cpu_thread_id() * pl.per_thread;
#pragma omp for schedule(dynamic, 1)
            for (int64_t it = 0; it < items; it++) {
                int grp = (int)(it / g->N);
                int64_t n = it % g->N;
                for (int64_t q0 = n * pl.P; q0 < (n + 1) * pl.P; q0 += T) {
                    int64_t q1 = min64(q0 + T, (n + 1) * pl.P), ld;
                    const float *B = dout_block(dout, g, &pl, grp, q0, q1, 0, pl.Og, NULL, &ld);
                    bwd_data_tile(dx, B, ld, w, g, &pl, grp, q0, q1, 0, pl.Cg, col);
                }
            }
        }
    } else {
        /* each thread owns a range of input channels (the planes its col2im writes) */
        int chunks = g->G >= pl.nt ? 1 : (int)cdiv(pl.nt, g->G);
        if (chunks > pl.Cg) chunks = pl.Cg;
        const int64_t T = pl.T, ntiles = cdiv(pl.Q, T), items = (int64_t)g->G * chunks;
#pragma omp parallel num_threads(pl.nt)
        {
            float *col = scratch + pbw_cpu_thread_id() * pl.per_thread, *tmp = col + pl.K * pl.T;
#pragma omp for schedule(dynamic, 1)
            for (int64_t it = 0; it < items; it++) {
                int grp = (int)(it / chunks), ch = (int)(it % chunks);
                int c0 = (int)((int64_t)pl.Cg * ch / chunks), c1 = (int)((int64_t)pl.Cg * (ch + 1) / chunks);
                for (int64_t ti = 0; ti < ntiles; ti++) {
                    int64_t q0 = ti * T, q1 = min64(q0 + T, pl.Q), ld;
                    const float *B = dout_block(dout, g, &pl, grp, q0, q1, 0, pl.Og, tmp, &ld);
                    bwd_data_tile(dx, B, ld, w, g, &pl, grp, q0, q1, c0, c1, col);
                }
            }
        }
    }
    blas_leave(blas);
}

/* ---------- backward weight ---------- */

void pbw_cpu_conv2d_backward_weight(float *dw, const float *dout, const float *x,
                                    const pbw_cpu_conv_geom *g, float *scratch) {
    conv_plan pl = make_plan(g);
    if (g->N == 0 || g->O == 0 || pl.P == 0) return;
    const int blas = blas_enter();
    const int64_t T = pl.T, ntiles = cdiv(pl.Q, T);
    /* Split dW by columns (input channels: each thread builds only its rows of the column
     * buffer) when there are channels enough to share; else by rows (output channels: each
     * thread builds the whole column buffer, cheap next to the GEMM when channels are few). */
    int per_group = g->G >= pl.nt ? 1 : (int)cdiv(pl.nt, g->G);
    int by_rows = per_group > 1 && pl.Cg < 2 * per_group && pl.Og >= 16 * per_group;
    int chunks = by_rows ? (per_group > pl.Og ? pl.Og : per_group) : (per_group > pl.Cg ? pl.Cg : per_group);
    const int64_t items = (int64_t)g->G * chunks;
#pragma omp parallel num_threads(pl.nt)
    {
        float *col = scratch + pbw_cpu_thread_id() * pl.per_thread, *tmp = col + pl.K * pl.T;
#pragma omp for schedule(dynamic, 1)
        for (int64_t it = 0; it < items; it++) {
            int grp = (int)(it / chunks), ch = (int)(it % chunks);
            int o0 = 0, o1 = pl.Og, c0 = 0, c1 = pl.Cg;
            if (by_rows) {
                o0 = (int)((int64_t)pl.Og * ch / chunks), o1 = (int)((int64_t)pl.Og * (ch + 1) / chunks);
            } else {
                c0 = (int)((int64_t)pl.Cg * ch / chunks), c1 = (int)((int64_t)pl.Cg * (ch + 1) / chunks);
            }
            const int64_t r0 = (int64_t)c0 * pl.KK, r1 = (int64_t)c1 * pl.KK;
            float *C = dw + ((int64_t)grp * pl.Og + o0) * pl.K + r0;
            for (int64_t ti = 0; ti < ntiles; ti++) {
                int64_t q0 = ti * T, q1 = min64(q0 + T, pl.Q), lda, ldb;
                const float *A = dout_block(dout, g, &pl, grp, q0, q1, o0, o1, tmp, &lda);
                const float *B;
                if (pl.pointwise && one_sample(&pl, q0, q1)) {
                    int64_t n = q0 / pl.P;
                    B = x + (n * g->C + (int64_t)grp * pl.Cg + c0) * pl.HW + (q0 - n * pl.P);
                    ldb = pl.P;
                } else {
                    im2col_rows(col, x, g, &pl, grp, q0, q1, r0, r1);
                    B = col;
                    ldb = q1 - q0;
                }
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, o1 - o0, (int)(r1 - r0),
                            (int)(q1 - q0), 1.0f, A, (int)lda, B, (int)ldb, 1.0f, C, (int)pl.K);
            }
        }
    }
    blas_leave(blas);
}

void pbw_cpu_conv2d_add_bias(float *out, const float *b, int N, int O, int64_t P) {
#pragma omp parallel for schedule(static) if ((int64_t)N * O * P > OMP_MIN_WORK)
    for (int64_t i = 0; i < (int64_t)N * O; i++) {
        float bo = b[i % O], *d = out + i * P;
        for (int64_t p = 0; p < P; p++) d[p] += bo;
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
