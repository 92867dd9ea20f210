// pbw_cuda_resample.cu: upfirdn2d, F.interpolate-style resizing, the separable (Gaussian)
// filter and StyleGAN2's separable blur on the GPU. Contracts in pbw_cuda_conv.h.
//
// Every forward runs one thread per output element, every backward one thread per input
// element gathering from the outputs that read it, so no kernel uses atomics and each is
// deterministic. Sums run in the CPU kernels' order; the only differences from the CPU are
// fused multiply-adds (nvcc contracts a*b+c) and, in the backwards, that a gradient is summed
// in a register before it is added to dx (the CPU adds each term into dx): ~1 ulp per term.
// Resize's index/weight tables are the exception: they decide which pixel is read, so they
// are computed with explicitly rounded operations to match the CPU's bit for bit.
#include <cuda_runtime.h>

#include <climits>
#include <cmath>

#include "cuda/pbw_cuda_conv.h"
#include "cuda/pbw_cuda_internal.cuh"
#include "cuda/pbw_cuda_resample.cuh"

namespace {

// ---------- upfirdn2d ----------

// Index arithmetic of one axis fits int: sides <= 2^20, up <= 64, pads <= 2^20 (checked by
// the op), and 32-bit division is far cheaper than 64-bit on the GPU.

// q = a / b and *r = a % b for a >= 0, b > 0, by 32-bit division when both fit (the usual
// case: 64-bit division is a long emulated sequence on the GPU).
__device__ __forceinline__ int64_t divmod(int64_t a, int64_t b, int64_t *r) {
    int64_t q = ((a | b) >> 31) ? a / b : (int64_t)((uint32_t)a / (uint32_t)b);
    *r = a - q * b;
    return q;
}

// floor(a / b) for b > 0 and any sign of a
__device__ __forceinline__ int floordiv(int a, int b) {
    int q = a / b;
    return (a % b != 0 && a < 0) ? q - 1 : q;
}

__global__ void upfirdn_fwd_kernel(float *out, const float *x, const float *k,
                                   pbw_cpu_upfirdn_geom g) {
    const int64_t n = g.planes * g.OH * g.OW;
    PBW_GRID_STRIDE(i, n) {
        int64_t xr_, yr_;
        const int64_t pl = divmod(divmod(i, g.OW, &xr_), g.OH, &yr_);
        const int ox = (int)xr_, oy = (int)yr_;
        const float *xp = x + pl * g.H * g.W;
        float acc = 0.0f;
        for (int ky = 0; ky < g.KH; ky++) {
            const int u = oy * g.down + ky - g.py0;
            if (u < 0 || u % g.up || u / g.up >= g.H) continue;
            const float *xrow = xp + (int64_t)(u / g.up) * g.W;
            // convolution: tap (ky,kx) meets k[KH-1-ky][KW-1-kx] (as the CPU)
            const float *krow = k + (int64_t)(g.KH - 1 - ky) * g.KW;
            float s = 0.0f;
            for (int kx = 0; kx < g.KW; kx++) {
                const int v = ox * g.down + kx - g.px0;
                if (v < 0 || v % g.up || v / g.up >= g.W) continue;
                s += krow[g.KW - 1 - kx] * xrow[v / g.up];
            }
            acc += s;
        }
        out[i] = acc;
    }
}

// Input (iy,ix) sits at position iy*up of the upsampled axis; output oy reads tap
// ky = iy*up + py0 - oy*down of it, so the outputs that read it are those with ky in [0,KH).
__global__ void upfirdn_bwd_kernel(float *dx, const float *dout, const float *k,
                                   pbw_cpu_upfirdn_geom g) {
    const int64_t n = g.planes * g.H * g.W;
    PBW_GRID_STRIDE(i, n) {
        int64_t xr_, yr_;
        const int64_t pl = divmod(divmod(i, g.W, &xr_), g.H, &yr_);
        const int ix = (int)xr_, iy = (int)yr_;
        const float *gp = dout + pl * g.OH * g.OW;
        const int uy = iy * g.up + g.py0, ux = ix * g.up + g.px0;
        int oy0 = floordiv(uy - g.KH + g.down, g.down), oy1 = floordiv(uy, g.down); // ceil, floor
        int ox0 = floordiv(ux - g.KW + g.down, g.down), ox1 = floordiv(ux, g.down);
        if (oy0 < 0) oy0 = 0;
        if (ox0 < 0) ox0 = 0;
        if (oy1 > g.OH - 1) oy1 = g.OH - 1;
        if (ox1 > g.OW - 1) ox1 = g.OW - 1;
        float acc = 0.0f;
        for (int oy = oy0; oy <= oy1; oy++) {
            const int ky = uy - oy * g.down;
            const float *krow = k + (int64_t)(g.KH - 1 - ky) * g.KW;
            const float *grow = gp + (int64_t)oy * g.OW;
            for (int ox = ox0; ox <= ox1; ox++) {
                const int kx = ux - ox * g.down;
                acc += krow[g.KW - 1 - kx] * grow[ox];
            }
        }
        dx[i] += acc;
    }
}

// ---------- resize ----------

const int TAPS = 4; // table row width, as the CPU's

struct resize_tabs {
    int *yi, *xi;
    float *yw, *xw;
    int *ylo, *yhi, *xlo, *xhi; // per input row / column: outputs [lo, hi] that read it
};

resize_tabs tabs_at(void *scratch, int H, int W, int OH, int OW) {
    resize_tabs t;
    t.yi = (int *)scratch;
    t.xi = t.yi + (size_t)OH * TAPS;
    t.yw = (float *)(t.xi + (size_t)OW * TAPS);
    t.xw = t.yw + (size_t)OH * TAPS;
    t.ylo = (int *)(t.xw + (size_t)OW * TAPS);
    t.yhi = t.ylo + H;
    t.xlo = t.yhi + H;
    t.xhi = t.xlo + W;
    return t;
}

// One table row per thread over both axes (o < out_y: rows, else columns); the CPU's
// resize_axis with every double and float step rounded as written there.
__global__ void resize_table_kernel(resize_tabs t, int H, int W, int OH, int OW, int mode) {
    const int64_t n = (int64_t)OH + OW;
    PBW_GRID_STRIDE(i, n) {
        const int row = i < OH;
        const int o = row ? (int)i : (int)(i - OH);
        const int in = row ? H : W, out = row ? OH : OW;
        int *ix = (row ? t.yi : t.xi) + (int64_t)o * TAPS;
        float *w = (row ? t.yw : t.xw) + (int64_t)o * TAPS;
        const float scale = __fdiv_rn((float)in, (float)out);
        for (int j = 0; j < TAPS; j++) ix[j] = 0, w[j] = 0.0f;
        if (mode == 0) {
            int64_t s;
            if (out == in) s = o;
            else if (out == 2 * in) s = o >> 1;
            else s = (int64_t)floorf(__fmul_rn((float)o, scale));
            ix[0] = (int)(s < in - 1 ? s : in - 1);
            w[0] = 1.0f;
        } else if (mode == 1) {
            if (out == in) {
                ix[0] = ix[1] = o;
                w[0] = 1.0f;
                continue;
            }
            double src = __dadd_rn(__dmul_rn((double)scale, __dadd_rn((double)o, 0.5)), -0.5);
            if (src < 0) src = 0;
            int64_t i0 = (int64_t)src;
            int64_t i1 = i0 + (i0 < in - 1 ? 1 : 0);
            float l1 = (float)__dadd_rn(src, -(double)i0);
            ix[0] = (int)i0;
            ix[1] = (int)i1;
            w[0] = __fadd_rn(1.0f, -l1);
            w[1] = l1;
        } else {
            pbw_dev_bicubic_taps(o, in, out, ix, w);
        }
    }
}

__global__ void range_init_kernel(int *lo, int *hi, int n) {
    PBW_GRID_STRIDE(i, n) lo[i] = INT_MAX, hi[i] = -1;
}

// Every (output, tap) widens the range of the input it reads. atomicMin/Max give the same
// result in any order. Taps of weight 0 count too: harmless, they add zeros.
__global__ void range_kernel(resize_tabs t, int OH, int OW, int taps) {
    const int64_t n = ((int64_t)OH + OW) * taps;
    PBW_GRID_STRIDE(i, n) {
        const int64_t r = i / taps;
        const int j = (int)(i % taps);
        if (r < OH) {
            int in = t.yi[r * TAPS + j];
            atomicMin(&t.ylo[in], (int)r);
            atomicMax(&t.yhi[in], (int)r);
        } else {
            int o = (int)(r - OH), in = t.xi[(int64_t)o * TAPS + j];
            atomicMin(&t.xlo[in], o);
            atomicMax(&t.xhi[in], o);
        }
    }
}

__global__ void resize_fwd_kernel(float *out, const float *x, resize_tabs t, int64_t planes,
                                  int H, int W, int OH, int OW, int taps) {
    const int64_t n = planes * OH * OW;
    PBW_GRID_STRIDE(i, n) {
        int64_t xr_, yr_;
        const int64_t pl = divmod(divmod(i, OW, &xr_), OH, &yr_);
        const int ox = (int)xr_, oy = (int)yr_;
        const float *xp = x + pl * H * W;
        const int *yi = t.yi + oy * TAPS, *xi = t.xi + ox * TAPS;
        const float *yw = t.yw + oy * TAPS, *xw = t.xw + ox * TAPS;
        float acc = 0.0f;
        for (int a = 0; a < taps; a++) {
            const float *row = xp + (int64_t)yi[a] * W;
            float s = 0.0f;
            for (int b = 0; b < taps; b++) s += row[xi[b]] * xw[b];
            acc += s * yw[a];
        }
        out[i] = acc;
    }
}

__global__ void resize_bwd_kernel(float *dx, const float *dout, resize_tabs t, int64_t planes,
                                  int H, int W, int OH, int OW, int taps) {
    const int64_t n = planes * H * W;
    PBW_GRID_STRIDE(i, n) {
        int64_t xr_, yr_;
        const int64_t pl = divmod(divmod(i, W, &xr_), H, &yr_);
        const int ix = (int)xr_, iy = (int)yr_;
        const float *gp = dout + pl * OH * OW;
        const int oy1 = t.yhi[iy], ox0 = t.xlo[ix], ox1 = t.xhi[ix];
        float acc = 0.0f;
        for (int oy = t.ylo[iy]; oy <= oy1; oy++)
            for (int a = 0; a < taps; a++) {
                if (t.yi[oy * TAPS + a] != iy) continue;
                const float wy = t.yw[oy * TAPS + a];
                const float *grow = gp + (int64_t)oy * OW;
                for (int ox = ox0; ox <= ox1; ox++)
                    for (int b = 0; b < taps; b++)
                        if (t.xi[ox * TAPS + b] == ix) acc += (grow[ox] * wy) * t.xw[ox * TAPS + b];
            }
        dx[i] += acc;
    }
}

int resize_taps(int mode) { return mode == 0 ? 1 : mode == 1 ? 2 : 4; }

resize_tabs resize_setup(void *scratch, int H, int W, int OH, int OW, int mode, int ranges) {
    resize_tabs t = tabs_at(scratch, H, W, OH, OW);
    resize_table_kernel<<<pbw_grid((int64_t)OH + OW), 256, 0, pbw_stream()>>>(t, H, W, OH, OW,
                                                                             mode);
    PBW_CUDA_LAUNCHED("resize_tables");
    if (ranges) {
        range_init_kernel<<<pbw_grid(2 * ((int64_t)H + W)), 256, 0, pbw_stream()>>>(
            t.ylo, t.ylo + H, H); // ylo, yhi
        PBW_CUDA_LAUNCHED("resize_range_init");
        range_init_kernel<<<pbw_grid(W), 256, 0, pbw_stream()>>>(t.xlo, t.xhi, W);
        PBW_CUDA_LAUNCHED("resize_range_init");
        const int taps = resize_taps(mode);
        range_kernel<<<pbw_grid(((int64_t)OH + OW) * taps), 256, 0, pbw_stream()>>>(t, OH, OW,
                                                                                    taps);
        PBW_CUDA_LAUNCHED("resize_ranges");
    }
    return t;
}

// ---------- separable filter (Gaussian blur) ----------

// tmp[y][x] = sum_j k[j] * in[y][x + j - r], zero outside (j over the valid range, as the CPU)
__global__ void sep_rows_kernel(float *tmp, const float *x, int64_t planes, int H, int W,
                                const float *k, int ksize) {
    const int64_t n = planes * H * W;
    const int r = ksize / 2;
    PBW_GRID_STRIDE(i, n) {
        int64_t xr_;
        divmod(i, W, &xr_);
        const int xx = (int)xr_;
        const float *row = x + (i - xx);
        int j0 = r - xx > 0 ? r - xx : 0;
        int j1 = W - 1 - xx + r < ksize - 1 ? W - 1 - xx + r : ksize - 1;
        float s = 0.0f;
        for (int j = j0; j <= j1; j++) s += k[j] * row[xx + j - r];
        tmp[i] = s;
    }
}

__global__ void sep_cols_kernel(float *out, const float *tmp, int64_t planes, int H, int W,
                                const float *k, int ksize, int accumulate) {
    const int64_t n = planes * H * W;
    const int r = ksize / 2;
    PBW_GRID_STRIDE(i, n) {
        int64_t xr_, yr_;
        divmod(divmod(i, W, &xr_), H, &yr_);
        const int y = (int)yr_;
        const float *col = tmp + (i - (int64_t)y * W); // element (0, x) of the plane
        int j0 = r - y > 0 ? r - y : 0;
        int j1 = H - 1 - y + r < ksize - 1 ? H - 1 - y + r : ksize - 1;
        float acc = accumulate ? out[i] : 0.0f;
        for (int j = j0; j <= j1; j++) acc += k[j] * col[(int64_t)(y + j - r) * W];
        out[i] = acc;
    }
}

// ---------- StyleGAN2 blur ----------

struct fir_taps {
    float v[16], h[16]; // flipped (true convolution), as the CPU's kfv/kfh
};

fir_taps flip_taps(const float *kv, const float *kh, int K) {
    fir_taps f;
    for (int j = 0; j < 16; j++) f.v[j] = f.h[j] = 0.0f;
    for (int j = 0; j < K && j < 16; j++) f.h[j] = kh[K - 1 - j], f.v[j] = kv[K - 1 - j];
    return f;
}

// out[oy][ox] = sum_jv fv[jv] * (sum_jh fh[jh] * x[oy+jv-p0][ox+jh-p0]): the CPU's row pass
// then column pass, fused (each row sum is recomputed by the K outputs below it; K <= 16).
__global__ void sg_blur_fwd_kernel(float *out, const float *x, int64_t planes, int H, int W,
                                   int OH, int OW, fir_taps f, int K, int p0) {
    const int64_t n = planes * OH * OW;
    PBW_GRID_STRIDE(i, n) {
        int64_t xr_, yr_;
        const int64_t pl = divmod(divmod(i, OW, &xr_), OH, &yr_);
        const int ox = (int)xr_, oy = (int)yr_;
        const float *xp = x + pl * H * W;
        const int jh0 = p0 - ox > 0 ? p0 - ox : 0;
        const int jh1 = W + p0 - ox < K ? W + p0 - ox : K; // exclusive
        float acc = 0.0f;
        for (int jv = 0; jv < K; jv++) {
            const int iy = oy + jv - p0;
            if (iy < 0 || iy >= H) continue;
            const float *row = xp + (int64_t)iy * W + (ox - p0);
            float s = 0.0f;
            for (int jh = jh0; jh < jh1; jh++) s += f.h[jh] * row[jh];
            acc += f.v[jv] * s;
        }
        out[i] = acc;
    }
}

// The adjoint, gathered: gx[iy][ix] += sum_jv fv[jv] * sum_jh fh[jh] * gout[iy-jv+p0][ix-jh+p0].
__global__ void sg_blur_bwd_kernel(float *gx, const float *gout, int64_t planes, int H, int W,
                                   int OH, int OW, fir_taps f, int K, int p0) {
    const int64_t n = planes * H * W;
    PBW_GRID_STRIDE(i, n) {
        int64_t xr_, yr_;
        const int64_t pl = divmod(divmod(i, W, &xr_), H, &yr_);
        const int ix = (int)xr_, iy = (int)yr_;
        const float *gp = gout + pl * OH * OW;
        float acc = 0.0f;
        for (int jv = 0; jv < K; jv++) {
            const int oy = iy - jv + p0;
            if (oy < 0 || oy >= OH) continue;
            const float *grow = gp + (int64_t)oy * OW;
            float s = 0.0f;
            for (int jh = 0; jh < K; jh++) {
                const int ox = ix - jh + p0;
                if (ox >= 0 && ox < OW) s += f.h[jh] * grow[ox];
            }
            acc += f.v[jv] * s;
        }
        gx[i] += acc;
    }
}

} // namespace

// ---------- upfirdn2d ----------

extern "C" size_t pbw_cuda_upfirdn2d_scratch_ints(const pbw_cpu_upfirdn_geom *g) {
    (void)g;
    return 0;
}

extern "C" void pbw_cuda_upfirdn2d_forward(float *out, const float *x, const float *k,
                                           const pbw_cpu_upfirdn_geom *g, int *scratch) {
    (void)scratch;
    const int64_t n = g->planes * g->OH * g->OW;
    if (n == 0) return;
    upfirdn_fwd_kernel<<<pbw_grid(n), 256, 0, pbw_stream()>>>(out, x, k, *g);
    PBW_CUDA_LAUNCHED("upfirdn2d_forward");
}

extern "C" void pbw_cuda_upfirdn2d_backward(float *dx, const float *dout, const float *k,
                                            const pbw_cpu_upfirdn_geom *g, int *scratch) {
    (void)scratch;
    const int64_t n = g->planes * g->H * g->W;
    if (n == 0) return;
    upfirdn_bwd_kernel<<<pbw_grid(n), 256, 0, pbw_stream()>>>(dx, dout, k, *g);
    PBW_CUDA_LAUNCHED("upfirdn2d_backward");
}

// ---------- resize ----------

extern "C" size_t pbw_cuda_resize_scratch_bytes(int mode, int H, int W, int OH, int OW) {
    (void)mode;
    return ((size_t)OH + (size_t)OW) * TAPS * (sizeof(int) + sizeof(float)) +
           2 * ((size_t)H + (size_t)W) * sizeof(int);
}

extern "C" void pbw_cuda_resize_forward(float *out, const float *x, int64_t planes, int H, int W,
                                        int OH, int OW, int mode, void *scratch) {
    const int64_t n = planes * OH * OW;
    if (n == 0) return;
    resize_tabs t = resize_setup(scratch, H, W, OH, OW, mode, 0);
    resize_fwd_kernel<<<pbw_grid(n), 256, 0, pbw_stream()>>>(out, x, t, planes, H, W, OH, OW,
                                                            resize_taps(mode));
    PBW_CUDA_LAUNCHED("resize_forward");
}

extern "C" void pbw_cuda_resize_backward(float *dx, const float *dout, int64_t planes, int H,
                                         int W, int OH, int OW, int mode, void *scratch) {
    const int64_t n = planes * H * W;
    if (n == 0) return;
    resize_tabs t = resize_setup(scratch, H, W, OH, OW, mode, 1);
    resize_bwd_kernel<<<pbw_grid(n), 256, 0, pbw_stream()>>>(dx, dout, t, planes, H, W, OH, OW,
                                                            resize_taps(mode));
    PBW_CUDA_LAUNCHED("resize_backward");
}

// ---------- separable filter ----------

extern "C" size_t pbw_cuda_sep_filter2d_scratch_floats_planes(int64_t planes, int H, int W) {
    return (size_t)planes * (size_t)H * (size_t)W;
}

extern "C" void pbw_cuda_sep_filter2d(float *out, const float *x, int64_t planes, int H, int W,
                                      const float *k, int ksize, int accumulate, float *scratch) {
    const int64_t n = planes * H * W;
    if (n == 0) return;
    sep_rows_kernel<<<pbw_grid(n), 256, 0, pbw_stream()>>>(scratch, x, planes, H, W, k, ksize);
    PBW_CUDA_LAUNCHED("sep_filter2d_rows");
    sep_cols_kernel<<<pbw_grid(n), 256, 0, pbw_stream()>>>(out, scratch, planes, H, W, k, ksize,
                                                          accumulate);
    PBW_CUDA_LAUNCHED("sep_filter2d_cols");
}

// ---------- StyleGAN2 blur ----------

extern "C" void pbw_cuda_sg_blur_forward(float *out, const float *x, int64_t planes, int H,
                                         int W, int OH, int OW, const float *kv, const float *kh,
                                         int K, int p0, float *scratch, int nthreads) {
    (void)scratch;
    (void)nthreads;
    const int64_t n = planes * OH * OW;
    if (n == 0) return;
    if (K < 1 || K > 16) {
        pbw_cuda_fail("sg_blur: %d taps (1..16)", K);
        return;
    }
    sg_blur_fwd_kernel<<<pbw_grid(n), 256, 0, pbw_stream()>>>(out, x, planes, H, W, OH, OW,
                                                             flip_taps(kv, kh, K), K, p0);
    PBW_CUDA_LAUNCHED("sg_blur_forward");
}

extern "C" void pbw_cuda_sg_blur_backward(float *gx, const float *gout, int64_t planes, int H,
                                          int W, int OH, int OW, const float *kv,
                                          const float *kh, int K, int p0, float *scratch,
                                          int nthreads) {
    (void)scratch;
    (void)nthreads;
    const int64_t n = planes * H * W;
    if (n == 0) return;
    if (K < 1 || K > 16) {
        pbw_cuda_fail("sg_blur: %d taps (1..16)", K);
        return;
    }
    sg_blur_bwd_kernel<<<pbw_grid(n), 256, 0, pbw_stream()>>>(gx, gout, planes, H, W, OH, OW,
                                                             flip_taps(kv, kh, K), K, p0);
    PBW_CUDA_LAUNCHED("sg_blur_backward");
}
