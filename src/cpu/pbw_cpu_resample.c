/* pbw_cpu_resample.c: CPU kernels for upfirdn2d, F.interpolate-style resizing and separable
 * filtering (Gaussian blur). See pbw_cpu_conv.h for the contracts.
 *
 * All three work on independent (H,W) planes, so each kernel runs one plane per OpenMP
 * iteration and never needs atomics: a plane's backward scatters only into its own plane. A
 * single plane runs on the calling thread: a parallel region of one iteration only wakes the
 * team (LPIPS's keep weights of a GPU edit, one plane a layer, took 20-36 ms instead of ~1 ms
 * on a 2-core host when its threads were slow to wake).
 * Every kernel is driven by small per-axis tables (source index and weight of each tap of each
 * output row/column) computed once per call, so the inner loops carry no bounds logic.
 */
#include "cpu/pbw_cpu_conv.h"
#include "cpu/pbw_cpu_threads.h"

#include <math.h>
#include <string.h>

#define OMP_MIN_WORK 32768

/* ---------- upfirdn2d ---------- */

size_t pbw_cpu_upfirdn2d_scratch_ints(const pbw_cpu_upfirdn_geom *g) {
    return (size_t)g->OH * g->KH + (size_t)g->OW * g->KW;
}

/* For output o and tap j of one axis: the input index it reads, or -1 where it reads a zero
 * (an inserted zero of the upsampling or the padding). Index i of the padded upsampled signal
 * is input (i - pad0)/up when that divides evenly and lands inside the input. */
static void upfirdn_axis(int *tab, int out, int ktaps, int in, int up, int down, int pad0) {
    for (int o = 0; o < out; o++)
        for (int j = 0; j < ktaps; j++) {
            int64_t u = (int64_t)o * down + j - pad0;
            int idx = -1;
            if (u >= 0 && u % up == 0 && u / up < in) idx = (int)(u / up);
            tab[(int64_t)o * ktaps + j] = idx;
        }
}

void pbw_cpu_upfirdn2d_forward(float *out, const float *x, const float *k,
                               const pbw_cpu_upfirdn_geom *g, int *scratch) {
    int *ytab = scratch, *xtab = scratch + (size_t)g->OH * g->KH;
    upfirdn_axis(ytab, g->OH, g->KH, g->H, g->up, g->down, g->py0);
    upfirdn_axis(xtab, g->OW, g->KW, g->W, g->up, g->down, g->px0);
    const int64_t HW = (int64_t)g->H * g->W, OHW = (int64_t)g->OH * g->OW;
    const int KH = g->KH, KW = g->KW;
#pragma omp parallel for schedule(static) \
    if (g->planes > 1 && g->planes * OHW * KH * KW > OMP_MIN_WORK)
    for (int64_t pl = 0; pl < g->planes; pl++) {
        const float *xp = x + pl * HW;
        float *op = out + pl * OHW;
        for (int oy = 0; oy < g->OH; oy++) {
            float *orow = op + (int64_t)oy * g->OW;
            for (int ox = 0; ox < g->OW; ox++) orow[ox] = 0.0f;
            for (int ky = 0; ky < KH; ky++) {
                int iy = ytab[oy * KH + ky];
                if (iy < 0) continue;
                const float *xrow = xp + (int64_t)iy * g->W;
                /* convolution, not correlation: tap (ky,kx) of the window meets the flipped
                 * kernel entry k[KH-1-ky][KW-1-kx] */
                const float *krow = k + (int64_t)(KH - 1 - ky) * KW;
                for (int ox = 0; ox < g->OW; ox++) {
                    const int *xt = xtab + (int64_t)ox * KW;
                    float s = 0.0f;
                    for (int kx = 0; kx < KW; kx++)
                        if (xt[kx] >= 0) s += krow[KW - 1 - kx] * xrow[xt[kx]];
                    orow[ox] += s;
                }
            }
        }
    }
}

void pbw_cpu_upfirdn2d_backward(float *dx, const float *dout, const float *k,
                                const pbw_cpu_upfirdn_geom *g, int *scratch) {
    int *ytab = scratch, *xtab = scratch + (size_t)g->OH * g->KH;
    upfirdn_axis(ytab, g->OH, g->KH, g->H, g->up, g->down, g->py0);
    upfirdn_axis(xtab, g->OW, g->KW, g->W, g->up, g->down, g->px0);
    const int64_t HW = (int64_t)g->H * g->W, OHW = (int64_t)g->OH * g->OW;
    const int KH = g->KH, KW = g->KW;
#pragma omp parallel for schedule(static) \
    if (g->planes > 1 && g->planes * OHW * KH * KW > OMP_MIN_WORK)
    for (int64_t pl = 0; pl < g->planes; pl++) {
        float *xp = dx + pl * HW;
        const float *op = dout + pl * OHW;
        for (int oy = 0; oy < g->OH; oy++) {
            const float *orow = op + (int64_t)oy * g->OW;
            for (int ky = 0; ky < KH; ky++) {
                int iy = ytab[oy * KH + ky];
                if (iy < 0) continue;
                float *xrow = xp + (int64_t)iy * g->W;
                const float *krow = k + (int64_t)(KH - 1 - ky) * KW;
                for (int ox = 0; ox < g->OW; ox++) {
                    const int *xt = xtab + (int64_t)ox * KW;
                    float go = orow[ox];
                    for (int kx = 0; kx < KW; kx++)
                        if (xt[kx] >= 0) xrow[xt[kx]] += krow[KW - 1 - kx] * go;
                }
            }
        }
    }
}

/* ---------- resize ---------- */

#define RESIZE_TAPS 4 /* every table row has 4 slots; unused ones have weight 0, index 0 */

static int resize_taps(int mode) { return mode == 0 ? 1 : mode == 1 ? 2 : 4; }

size_t pbw_cpu_resize_scratch_bytes(int mode, int H, int W, int OH, int OW) {
    (void)mode;
    (void)H;
    (void)W;
    return ((size_t)OH + (size_t)OW) * RESIZE_TAPS * (sizeof(int) + sizeof(float));
}

static int64_t clamp64(int64_t v, int64_t lo, int64_t hi) { return v < lo ? lo : v > hi ? hi : v; }

/* Keys' cubic convolution weights for |x| <= 1 and 1 < |x| < 2. The fmaf calls mirror where the
 * Debian build of PyTorch 1.13 fuses a multiply-add in these two polynomials (found by
 * comparing every weight bit for bit); elsewhere it rounds each step, as we do. */
static float cubic1(float x, float A) {
    float t = fmaf(A + 2, x, -(A + 3));
    t = t * x;
    return t * x + 1;
}
static float cubic2(float x, float A) {
    float t = A * x - 5 * A;
    t = fmaf(t, x, 8 * A);
    return t * x - 4 * A;
}

/* One axis of PyTorch's interpolation with align_corners=False and an explicit output size,
 * reproducing the numerics of PyTorch 1.13's CPU kernels (UpSample.h, UpSampleKernel.cpp):
 * the scale is the float in/out; the source coordinate scale * (o + 0.5) - 0.5 is computed and
 * kept in double, and only the fraction is rounded to float. Keeping the coordinate in double
 * matters: rounding it to float first moves outputs by up to ~1e-5 on 224-pixel axes. Nearest
 * is the legacy floor(o * scale) in float. */
static void resize_axis(int *idx, float *wt, int in, int out, int mode) {
    const float scale = (float)in / (float)out;
    for (int o = 0; o < out; o++) {
        int *ix = idx + (int64_t)o * RESIZE_TAPS;
        float *w = wt + (int64_t)o * RESIZE_TAPS;
        for (int j = 0; j < RESIZE_TAPS; j++) {
            ix[j] = 0;
            w[j] = 0.0f;
        }
        if (mode == 0) { /* legacy 'nearest': floor(dst * scale) */
            int64_t s;
            if (out == in) s = o;
            else if (out == 2 * in) s = o >> 1;
            else s = (int64_t)floorf((float)o * scale);
            ix[0] = (int)(s < in - 1 ? s : in - 1);
            w[0] = 1.0f;
        } else if (mode == 1) { /* bilinear */
            if (out == in) {
                ix[0] = ix[1] = o;
                w[0] = 1.0f;
                continue;
            }
            double src = (double)scale * ((double)o + 0.5) - 0.5;
            if (src < 0) src = 0;
            int64_t i0 = (int64_t)src;
            int64_t i1 = i0 + (i0 < in - 1 ? 1 : 0);
            float l1 = (float)(src - (double)i0);
            ix[0] = (int)i0;
            ix[1] = (int)i1;
            w[0] = 1.0f - l1;
            w[1] = l1;
        } else { /* bicubic, a = -0.75, taps clamped to the border */
            const float A = -0.75f;
            double src = (double)scale * ((double)o + 0.5) - 0.5;
            double fl = floor(src);
            int64_t i0 = (int64_t)fl;
            float t = (float)(src - fl);
            w[0] = cubic2(t + 1.0f, A);
            w[1] = cubic1(t, A);
            w[2] = cubic1(1.0f - t, A);
            w[3] = cubic2(2.0f - t, A);
            for (int j = 0; j < 4; j++) ix[j] = (int)clamp64(i0 - 1 + j, 0, in - 1);
        }
    }
}

typedef struct resize_tables {
    int *yi, *xi;
    float *yw, *xw;
    int ty, tx; /* taps in use per axis */
} resize_tables;

static resize_tables resize_setup(void *scratch, int H, int W, int OH, int OW, int mode) {
    resize_tables t;
    t.yi = scratch;
    t.xi = t.yi + (size_t)OH * RESIZE_TAPS;
    t.yw = (float *)(t.xi + (size_t)OW * RESIZE_TAPS);
    t.xw = t.yw + (size_t)OH * RESIZE_TAPS;
    resize_axis(t.yi, t.yw, H, OH, mode);
    resize_axis(t.xi, t.xw, W, OW, mode);
    t.ty = t.tx = resize_taps(mode);
    return t;
}

void pbw_cpu_resize_forward(float *out, const float *x, int64_t planes, int H, int W, int OH,
                            int OW, int mode, void *scratch) {
    resize_tables t = resize_setup(scratch, H, W, OH, OW, mode);
    const int64_t HW = (int64_t)H * W, OHW = (int64_t)OH * OW;
#pragma omp parallel for schedule(static) \
    if (planes > 1 && planes * OHW * t.ty * t.tx > OMP_MIN_WORK)
    for (int64_t pl = 0; pl < planes; pl++) {
        const float *xp = x + pl * HW;
        float *op = out + pl * OHW;
        for (int oy = 0; oy < OH; oy++) {
            const int *yi = t.yi + oy * RESIZE_TAPS;
            const float *yw = t.yw + oy * RESIZE_TAPS;
            for (int ox = 0; ox < OW; ox++) {
                const int *xi = t.xi + ox * RESIZE_TAPS;
                const float *xw = t.xw + ox * RESIZE_TAPS;
                float acc = 0.0f;
                for (int i = 0; i < t.ty; i++) {
                    const float *row = xp + (int64_t)yi[i] * W;
                    float s = 0.0f;
                    for (int j = 0; j < t.tx; j++) s += row[xi[j]] * xw[j];
                    acc += s * yw[i];
                }
                op[(int64_t)oy * OW + ox] = acc;
            }
        }
    }
}

void pbw_cpu_resize_backward(float *dx, const float *dout, int64_t planes, int H, int W, int OH,
                             int OW, int mode, void *scratch) {
    resize_tables t = resize_setup(scratch, H, W, OH, OW, mode);
    const int64_t HW = (int64_t)H * W, OHW = (int64_t)OH * OW;
#pragma omp parallel for schedule(static) \
    if (planes > 1 && planes * OHW * t.ty * t.tx > OMP_MIN_WORK)
    for (int64_t pl = 0; pl < planes; pl++) {
        float *xp = dx + pl * HW;
        const float *op = dout + pl * OHW;
        for (int oy = 0; oy < OH; oy++) {
            const int *yi = t.yi + oy * RESIZE_TAPS;
            const float *yw = t.yw + oy * RESIZE_TAPS;
            for (int ox = 0; ox < OW; ox++) {
                const int *xi = t.xi + ox * RESIZE_TAPS;
                const float *xw = t.xw + ox * RESIZE_TAPS;
                float go = op[(int64_t)oy * OW + ox];
                for (int i = 0; i < t.ty; i++) {
                    float *row = xp + (int64_t)yi[i] * W;
                    float gy = go * yw[i];
                    for (int j = 0; j < t.tx; j++) row[xi[j]] += gy * xw[j];
                }
            }
        }
    }
}

/* ---------- separable filter ---------- */

size_t pbw_cpu_sep_filter2d_scratch_floats(int H, int W) {
    return (size_t)H * W * (size_t)pbw_cpu_max_threads();
}

void pbw_cpu_sep_filter2d(float *out, const float *x, int64_t planes, int H, int W,
                          const float *k, int ksize, int accumulate, float *scratch) {
    const int r = ksize / 2;
    const int64_t HW = (int64_t)H * W;
#pragma omp parallel for schedule(static) if (planes > 1 && planes * HW * ksize > OMP_MIN_WORK)
    for (int64_t pl = 0; pl < planes; pl++) {
        float *tmp = scratch + (int64_t)pbw_cpu_thread_id() * HW;
        const float *xp = x + pl * HW;
        float *op = out + pl * HW;
        /* along rows: tmp[y][x] = sum_j k[j] * in[y][x + j - r], zero outside */
        for (int y = 0; y < H; y++) {
            const float *xr = xp + (int64_t)y * W;
            float *tr = tmp + (int64_t)y * W;
            for (int xx = 0; xx < W; xx++) {
                int j0 = r - xx > 0 ? r - xx : 0;
                int j1 = W - 1 - xx + r < ksize - 1 ? W - 1 - xx + r : ksize - 1;
                float s = 0.0f;
                for (int j = j0; j <= j1; j++) s += k[j] * xr[xx + j - r];
                tr[xx] = s;
            }
        }
        /* along columns, row by row so the inner loop runs over contiguous x */
        for (int y = 0; y < H; y++) {
            float *orow = op + (int64_t)y * W;
            if (!accumulate)
                for (int xx = 0; xx < W; xx++) orow[xx] = 0.0f;
            int j0 = r - y > 0 ? r - y : 0;
            int j1 = H - 1 - y + r < ksize - 1 ? H - 1 - y + r : ksize - 1;
            for (int j = j0; j <= j1; j++) {
                const float *tr = tmp + (int64_t)(y + j - r) * W;
                float kj = k[j];
                for (int xx = 0; xx < W; xx++) orow[xx] += kj * tr[xx];
            }
        }
    }
}
