// pbw_cuda_resample.cu: upfirdn2d, F.interpolate-style resizing, the separable (Gaussian)
// filter and StyleGAN2's separable blur on the GPU. Contracts in pbw_cuda_conv.h.
//
// Every forward computes each output element in one thread, every backward each input
// element, gathering from the outputs that read it, so no kernel uses atomics and each is
// deterministic. Sums run in the CPU kernels' order; the only differences from the CPU are
// fused multiply-adds (nvcc contracts a*b+c) and, in the backwards, that a gradient is summed
// in a register before it is added to dx (the CPU adds each term into dx): ~1 ulp per term.
// Resize's backward is the exception to the order: it sums along rows, then along columns
// (separable), where the CPU adds each (row tap * column tap) product; a few ulps of the sum.
// StyleGAN2's blur (K = 4) works on shared-memory tiles; the other kernels run one element
// per thread. Resize's index/weight tables decide which pixel is read, so they are computed
// with explicitly rounded operations to match the CPU's bit for bit.
#include <cuda_runtime.h>

#include <climits>
#include <cmath>
#include <type_traits>

#include "cuda/pbw_cuda_conv.h"
#include "cuda/pbw_cuda_internal.cuh"
#include "cuda/pbw_cuda_resample.cuh"
#include "cuda/pbw_cuda_stylegan.cuh"

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

// UP, DOWN: g.up and g.down known at compile time (StyleGAN2's skip: 2 and 1), so that the
// taps' tests are a bit's, not a division's; 0: read from g. The same terms in the same order.
template <int UP, int DOWN>
__global__ void upfirdn_fwd_kernel(float *out, const float *x, const float *k,
                                   pbw_cpu_upfirdn_geom g) {
    pbw_pdl_wait();
    if (UP) g.up = UP;
    if (DOWN) g.down = DOWN;
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
    pbw_pdl_wait();
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

// The forward's tables (yi..xw: per output row / column its taps) and the backward's inverse
// lists: per input row iy, the pairs (output row, weight) that read it are yo[k], yw2[k] for k
// in [yoff[iy], yoff[iy+1]), ascending in output then tap (the order the CPU adds them in);
// the same for columns. Every (output, tap) is one pair, so each list array holds out*taps.
struct resize_tabs {
    int *yi, *xi;    // (OH,TAPS), (OW,TAPS)
    float *yw, *xw;  // (OH,TAPS), (OW,TAPS)
    int *yo, *xo;    // (OH*TAPS), (OW*TAPS)
    float *yw2, *xw2;
    int *yoff, *xoff; // (H+1), (W+1)
};

resize_tabs tabs_at(void *scratch, int H, int W, int OH, int OW) {
    (void)W;
    resize_tabs t;
    t.yi = (int *)scratch;
    t.xi = t.yi + (size_t)OH * TAPS;
    t.yw = (float *)(t.xi + (size_t)OW * TAPS);
    t.xw = t.yw + (size_t)OH * TAPS;
    t.yo = (int *)(t.xw + (size_t)OW * TAPS);
    t.xo = t.yo + (size_t)OH * TAPS;
    t.yw2 = (float *)(t.xo + (size_t)OW * TAPS);
    t.xw2 = t.yw2 + (size_t)OH * TAPS;
    t.yoff = (int *)(t.xw2 + (size_t)OW * TAPS);
    t.xoff = t.yoff + (size_t)H + 1;
    return t;
}

// One table row per thread over both axes (o < out_y: rows, else columns); the CPU's
// resize_axis with every double and float step rounded as written there.
__global__ void resize_table_kernel(resize_tabs t, int H, int W, int OH, int OW, int mode) {
    pbw_pdl_wait();
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

// The inverse lists, one input row or column per thread (i < H: rows, else columns).
// Each tap column of the tables is nondecreasing in o (nearest: floor(o * scale) and o >> 1,
// clamped; bilinear: i0 = (int)src and min(i0 + 1, in - 1); bicubic: floor(src) - 1 + j,
// clamped; src is monotone under rounding), so the outputs whose tap a reads input v are
// exactly [below_a(v), below_a(v + 1)), below_a(v) = #{o: idx[o][a] < v}, and v's list starts
// after every pair reading a smaller input: at sum over taps of below_a(v). The 2 * taps
// binary searches share one sequence of interval lengths, so they run in one loop whose loads
// are independent (a search alone would wait on each load in turn).
__global__ void resize_list_kernel(resize_tabs t, int H, int W, int OH, int OW, int taps) {
    pbw_pdl_wait();
    const int64_t n = (int64_t)H + W;
    PBW_GRID_STRIDE(i, n) {
        const int row = i < H;
        const int v = row ? (int)i : (int)(i - H);
        const int in = row ? H : W, out = row ? OH : OW;
        const int *idx = row ? t.yi : t.xi;
        const float *wt = row ? t.yw : t.xw;
        int *lo = row ? t.yo : t.xo, *off = row ? t.yoff : t.xoff;
        float *lw = row ? t.yw2 : t.xw2;
        // search s: tap s / 2, key v + s % 2; the answer stays in [c[s], c[s] + len]
        int c[2 * TAPS];
#pragma unroll
        for (int q = 0; q < 2 * TAPS; q++) c[q] = 0;
        int len = out;
        while (len > 1) {
            const int half = len >> 1;
#pragma unroll
            for (int q = 0; q < 2 * TAPS; q++)
                if (q / 2 < taps && idx[(int64_t)(c[q] + half - 1) * TAPS + q / 2] < v + (q & 1))
                    c[q] += half;
            len -= half;
        }
        int b[TAPS], e[TAPS], start = 0, o0 = INT_MAX, o1 = 0;
#pragma unroll
        for (int a = 0; a < TAPS; a++) {
            b[a] = e[a] = 0;
            if (a >= taps || out < 1) continue;
            b[a] = c[2 * a] + (idx[(int64_t)c[2 * a] * TAPS + a] < v);
            e[a] = c[2 * a + 1] + (idx[(int64_t)c[2 * a + 1] * TAPS + a] < v + 1);
            start += b[a];
            if (b[a] < e[a]) o0 = min(o0, b[a]), o1 = max(o1, e[a]);
        }
        off[v] = start;
        if (v == in - 1) off[in] = out * taps;
        int k = start;
        for (int o = o0; o < o1; o++)
#pragma unroll
            for (int a = 0; a < TAPS; a++)
                if (o >= b[a] && o < e[a]) lo[k] = o, lw[k] = wt[(int64_t)o * TAPS + a], k++;
    }
}

__global__ void resize_fwd_kernel(float *out, const float *x, resize_tabs t, int64_t planes,
                                  int H, int W, int OH, int OW, int taps) {
    pbw_pdl_wait();
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

__device__ __forceinline__ int warp_min(int v) {
    for (int o = 16; o > 0; o >>= 1) v = min(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
__device__ __forceinline__ int warp_max(int v) {
    for (int o = 16; o > 0; o >>= 1) v = max(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

const int RB_THREADS = 256; // input columns per block of the backward
const int RB_CHUNK = 2048;  // output columns of u[] in shared memory at a time

// The adjoint, separable and gathered. A block takes one input row iy and RB_THREADS input
// columns of a plane: first u[ox] = sum over iy's row pairs (oy, wy) of wy * dout[oy][ox]
// (one output column per thread, the rows' pairs read uniformly), then each thread's column
// ix gathers dx = sum over its column pairs (ox, wx) of wx * u[ox]. Output columns go through
// shared memory in chunks, in ascending order, so each sum keeps its pairs' order. The old
// one-thread-per-input loop scanned every (oy, tap, ox, tap) in the input's ranges: with few
// inputs (LPIPS's 15x15 maps upsampled to 256) it ran 5000 serial steps on 225 threads.
__global__ void __launch_bounds__(RB_THREADS)
    resize_bwd_kernel(float *dx, const float *dout, resize_tabs t, int64_t planes, int H, int W,
                      int OH, int OW) {
    pbw_pdl_wait();
    __shared__ float u[RB_CHUNK];
    __shared__ int red[2][RB_THREADS / 32];
    const int tid = threadIdx.x;
    const int ix = blockIdx.x * RB_THREADS + tid;
    // the output columns any of this block's input columns reads: [oxa, oxb]
    int k0 = 0, k1 = 0, lo = INT_MAX, hi = -1;
    if (ix < W) {
        k0 = t.xoff[ix];
        k1 = t.xoff[ix + 1];
        if (k0 < k1) lo = t.xo[k0], hi = t.xo[k1 - 1];
    }
    lo = warp_min(lo);
    hi = warp_max(hi);
    if ((tid & 31) == 0) red[0][tid >> 5] = lo, red[1][tid >> 5] = hi;
    __syncthreads();
    int oxa = INT_MAX, oxb = -1;
    for (int j = 0; j < RB_THREADS / 32; j++) oxa = min(oxa, red[0][j]), oxb = max(oxb, red[1][j]);
    for (int64_t pl = blockIdx.z; pl < planes; pl += gridDim.z) {
        const float *gp = dout + pl * OH * OW;
        for (int iy = blockIdx.y; iy < H; iy += gridDim.y) {
            const int ky0 = t.yoff[iy], ky1 = t.yoff[iy + 1];
            if (ky0 == ky1) continue; // no output reads this row (uniform over the block)
            float acc = 0.0f;
            int k = k0;
            for (int c0 = oxa; c0 <= oxb; c0 += RB_CHUNK) {
                const int c1 = min(c0 + RB_CHUNK, oxb + 1);
                for (int ox = c0 + tid; ox < c1; ox += RB_THREADS) {
                    float s = 0.0f;
                    for (int q = ky0; q < ky1; q++) s += t.yw2[q] * gp[(int64_t)t.yo[q] * OW + ox];
                    u[ox - c0] = s;
                }
                __syncthreads();
                for (; k < k1 && t.xo[k] < c1; k++) acc += t.xw2[k] * u[t.xo[k] - c0];
                __syncthreads();
            }
            if (ix < W) dx[pl * H * W + (int64_t)iy * W + ix] += acc;
        }
    }
}

int resize_taps(int mode) { return mode == 0 ? 1 : mode == 1 ? 2 : 4; }

resize_tabs resize_setup(void *scratch, int H, int W, int OH, int OW, int mode, int lists) {
    resize_tabs t = tabs_at(scratch, H, W, OH, OW);
    pbw_launch(resize_table_kernel, pbw_grid((int64_t)OH + OW), 256, 0, t, H, W, OH, OW, mode);
    PBW_CUDA_LAUNCHED("resize_tables");
    if (lists) {
        pbw_launch(resize_list_kernel, pbw_grid((int64_t)H + W), 256, 0, t, H, W, OH, OW,
                   resize_taps(mode));
        PBW_CUDA_LAUNCHED("resize_lists");
    }
    return t;
}

// ---------- separable filter (Gaussian blur) ----------

// tmp[y][x] = sum_j k[j] * in[y][x + j - r], zero outside (j over the valid range, as the CPU)
__global__ void sep_rows_kernel(float *tmp, const float *x, int64_t planes, int H, int W,
                                const float *k, int ksize) {
    pbw_pdl_wait();
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
    pbw_pdl_wait();
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

// The tiled blur, forward and backward, for a K known at compile time. A block covers a
// TW x (TY*RY) tile of one plane's result: it loads the source tile with its K-1 halo (zeros
// outside the source, which add nothing: fma(k, 0, s) == s) into shared memory once, then each
// thread forms the row sums of its RY+K-1 tile rows in registers and the column sums of its RY
// results. The taps sit in the kernel's parameters and the loops unroll, so they are constant
// operands. The sums run in the same order as the generic kernels below (and the CPU's), with
// the same products, so the results are the same bits.
//   forward:  out[oy][ox] = sum_jv fv[jv] * sum_jh fh[jh] * x[oy+jv-p0][ox+jh-p0]
//   backward: gx[iy][ix] += sum_jv fv[jv] * sum_jh fh[jh] * gout[iy-jv+p0][ix-jh+p0]
// src is (SH,SW) per plane, dst (DH,DW); planes run on grid z (looped past 65535). Forward, pa
// (pa.g.N non-zero) activates each result; backward, it makes gout the gradient of an
// activated output, aout (pbw_sg_blur_act's backward): each gout value becomes the
// pre-activation's gradient as it is loaded (act_grad_from_out).

// A tile row stride (>= tc) that puts the two half-warps of a 16-wide tile (rows RY apart) on
// different banks; 32-wide tiles keep tc.
__host__ __device__ constexpr int blur_stride(int tc, int ry, int tw) {
    int s = tc;
    if (tw < 32)
        while ((ry * s) % 32 != 16) s++;
    return s;
}

template <int K, int TW, int TY, int RY, bool BWD>
__global__ void __launch_bounds__(TW *TY)
    sg_blur_tile_kernel(float *__restrict__ dst, const float *__restrict__ src, int64_t planes,
                        int SH, int SW, int DH, int DW, fir_taps f, int p0,
                        pbw_cuda_postact pa, int add, const float *__restrict__ aout) {
    pbw_pdl_wait();
    static_assert(TW * TY % 32 == 0 && RY <= 16, "blur tile shape");
    constexpr int TH = TY * RY, TR = TH + K - 1, TC = TW + K - 1;
    constexpr int TS = blur_stride(TC, RY, TW), NT = TW * TY;
    __shared__ float tile[TR * TS];
    const int tx = threadIdx.x, ty = threadIdx.y, tid = ty * TW + tx;
    const int dx0 = blockIdx.x * TW, dy0 = blockIdx.y * TH;
    // tile row r, column c is source (sy0 + r, sx0 + c)
    const int off = BWD ? p0 - (K - 1) : -p0;
    const int sy0 = dy0 + off, sx0 = dx0 + off;
    const int ox = dx0 + tx, oyt = dy0 + ty * RY;
    const bool act_bwd = BWD && pa.g.N;
    for (int64_t pl = blockIdx.z; pl < planes; pl += gridDim.z) {
        const float *sp = src + pl * SH * SW;
        const int an = act_bwd ? (int)(pl / pa.g.O) : 0, ac = act_bwd ? (int)(pl % pa.g.O) : 0;
        for (int e = tid; e < TR * TC; e += NT) {
            const int r = e / TC, c = e - r * TC;
            const int sy = sy0 + r, sx = sx0 + c;
            float v = 0.0f;
            if (sy >= 0 && sy < SH && sx >= 0 && sx < SW) {
                const int64_t i = (int64_t)sy * SW + sx;
                v = act_bwd ? act_grad_from_out(sp[i], aout[pl * SH * SW + i], pa, an, ac,
                                                pl * SH * SW + i)
                            : sp[i];
            }
            tile[r * TS + c] = v;
        }
        __syncthreads();
        float rs[RY + K - 1]; // row sums of tile rows ty*RY + t
#pragma unroll
        for (int t = 0; t < RY + K - 1; t++) {
            const float *row = tile + (ty * RY + t) * TS + tx;
            float s = 0.0f;
#pragma unroll
            for (int jh = 0; jh < K; jh++) s += f.h[jh] * row[BWD ? K - 1 - jh : jh];
            rs[t] = s;
        }
        float *dp = dst + pl * DH * DW;
        const bool activate = !BWD && pa.g.N;
        const act_plane a = activate ? postact_plane(pa, pl) : act_plane{};
#pragma unroll
        for (int r = 0; r < RY; r++) {
            float acc = 0.0f;
#pragma unroll
            for (int jv = 0; jv < K; jv++) acc += f.v[jv] * rs[BWD ? r + K - 1 - jv : r + jv];
            const int oy = oyt + r;
            if (oy < DH && ox < DW) {
                float *d = dp + (int64_t)oy * DW + ox;
                if (BWD) *d = add ? *d + acc : acc; // add 0: dst holds no values yet
                else *d = activate ? act_at(acc, a, pa.g, (int64_t)oy * DW + ox) : acc;
            }
        }
        __syncthreads(); // the tile is read before the next plane's overwrites it
    }
}

// Launches the tiled blur for K == 4 (StyleGAN2's [1,3,3,1]); 0 for other K (the generic
// kernels take those). Tiles of 32x64 results (8 per thread: fewer halo loads and more loads
// in flight per thread), 32x32 where the result is under 64 high, 16x16 where it is at most
// 16 wide.
template <bool BWD>
int sg_blur_tiled(float *dst, const float *src, int64_t planes, int SH, int SW, int DH, int DW,
                  const fir_taps &f, int K, int p0, const pbw_cuda_postact &pa, int add = 1,
                  const float *aout = nullptr) {
    if (K != 4) return 0;
    const unsigned gz = (unsigned)(planes < 65535 ? planes : 65535);
    if (DW <= 16) {
        const dim3 grid((unsigned)((DW + 15) / 16), (unsigned)((DH + 15) / 16), gz);
        pbw_launch(sg_blur_tile_kernel<4, 16, 8, 2, BWD>, grid, dim3(16, 8), 0, dst, src, planes,
                   SH, SW, DH, DW, f, p0, pa, add, aout);
    } else if (DH >= 64) {
        const dim3 grid((unsigned)((DW + 31) / 32), (unsigned)((DH + 63) / 64), gz);
        pbw_launch(sg_blur_tile_kernel<4, 32, 8, 8, BWD>, grid, dim3(32, 8), 0, dst, src, planes,
                   SH, SW, DH, DW, f, p0, pa, add, aout);
    } else {
        const dim3 grid((unsigned)((DW + 31) / 32), (unsigned)((DH + 31) / 32), gz);
        pbw_launch(sg_blur_tile_kernel<4, 32, 8, 4, BWD>, grid, dim3(32, 8), 0, dst, src, planes,
                   SH, SW, DH, DW, f, p0, pa, add, aout);
    }
    return 1;
}

// The generic kernels (any K <= 16), one thread per result.
// out[oy][ox] = sum_jv fv[jv] * (sum_jh fh[jh] * x[oy+jv-p0][ox+jh-p0]): the CPU's row pass
// then column pass, fused (each row sum is recomputed by the K outputs below it; K <= 16).
__global__ void sg_blur_fwd_kernel(float *out, const float *x, int64_t planes, int H, int W,
                                   int OH, int OW, fir_taps f, int K, int p0,
                                   pbw_cuda_postact pa) {
    pbw_pdl_wait();
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
        out[i] = pa.g.N ? act_at(acc, postact_plane(pa, pl), pa.g, (int64_t)oy * OW + ox) : acc;
    }
}

// sg_blur_fwd_kernel's sums on (N,H,W,C) half values (pbw_tensor.half_nhwc), out (N,OH,OW,C) in
// the same type, activated by pa when pa.g.N, for K taps known at compile time. A thread makes V
// channels (one word Wd: 8 in 16 bytes, or 2 in 4) of a column of R results: it slides down the
// R + K - 1 source rows, forming each row's K-tap sums in registers and each result from the
// last K of them; the K loads of a row overlap the neighbouring columns' (same warp), which the
// L1 cache serves. A grid row is a sample; its threads run channel groups fastest, then
// columns, then strips of R rows: a warp reads whole pixels, contiguous. The sample's
// per-channel factors (style, original style, demodulation, bias) wait in shared memory, read
// as each result needs them (read from global memory, they took 16 scalar loads a pixel; held
// in registers, 109 registers a thread; now 78). H200, CUPTI: a CMA generation's blurs 3.35 ->
// 3.13 ms; with 16 rows a thread, a CMA generation 48.6 against 48.0 ms (alternating in one
// call).
// Sources outside the input read as zeros, which add nothing (the sums are those of
// sg_blur_fwd_kernel, in its order). Measured on an H100, a CMA generation's blurs: 2.73 ms
// with V = 8, R = 8; 3.71 ms with 8x8 tiles staged in shared memory; 3.0 ms with V = 4,
// 3.8 ms with V = 2 and R = 16, 3.3 ms with registers capped for 3 blocks an SM (spills).
// With the activation and the next style (12 candidates a batch): 3.45 ms. Nsight Compute at
// 256 px: 25% occupancy (128 registers), DRAM at 28% of its peak, warps waiting on L1; the
// channels' activation kept once (act_group: 103 registers) took it to 3.40 ms, and a cap at
// 80 registers for 3 blocks an SM measured the same: occupancy is not what holds it back.
// What did (Nsight Compute on an H200 at 972b858: L1/TEX throughput 96%, DRAM 15%) was the
// factors' shared-memory reads: 32 scalar loads a result row, four lanes of a warp on one bank
// (channels 8 apart). Each thread's eight now sit as two 16-byte words that a warp's lanes read
// consecutively (slot() below): the same bits; CUPTI, a CMA generation's blurs 2.94 -> 2.35 ms;
// alternating in one call (4 rounds of 8 generations), 41.70 -> 40.94 ms a generation.
// Nsight Compute then put it at 70% of the SMs' issue rate, and its SASS was mostly address
// arithmetic: every tap's index formed from (sy, sx) in 64 bits, and the eight d planes'
// addresses (d_mode 2, a runtime test) computed under a false predicate for every result row
// of d_mode 1 too. Now the row offset steps from one source row to the next, columns whose
// taps all lie inside load without per-tap tests, DPIX is a template argument and bf16 unpacks
// in one instruction a value (pbw_unpack_half): the same bits; a 128 px batch's blur 213.7 ->
// 162.2 million instructions, 223.8 -> 189.7 us a launch (H200, ncu). Its 84 registers had
// first cost a block an SM (occupancy 36 -> 24%, 241.6 us): hence the bound of 3 blocks (80).
template <typename T, int V, typename Wd, int K, int R, bool MOD, bool DPIX>
__global__ void __launch_bounds__(256, 3)
    sg_blur_nhwc_strip_kernel(T *out, const T *x, int N, int C, int H, int W, int OH, int OW,
                              fir_taps f, int p0, pbw_cuda_postact pa, pbw_cuda_premod pm) {
    pbw_pdl_wait();
    // the sample's per-channel factors: style, original style, demodulation, bias
    extern __shared__ float4 blur_smem[];
    float *sh_s = reinterpret_cast<float *>(blur_smem), *sh_s0 = sh_s + C, *sh_d = sh_s0 + C,
          *sh_b = sh_d + C;
    const int n = blockIdx.y;
    const bool activate = pa.g.N != 0, masked = MOD && pm.m;
    const int cv = C / V, strips = (OH + R - 1) / R;
    // Channel j's place in each array: with 8 channels a thread (j = 8 g + 4 h + q), group g's
    // h-th four at float4 h cv + g, so that a warp's lanes (g fastest) read consecutive 16-byte
    // words; scalar reads of channels 8 apart put four lanes on one bank, and those conflicted
    // reads, R per thread, were most of the kernel's L1 traffic.
    auto slot = [&](int j) { return V == 8 ? ((j % 8 / 4) * cv + j / 8) * 4 + j % 4 : j; };
    for (int j = threadIdx.x; j < C; j += blockDim.x) {
        const int k = slot(j);
        if (MOD) {
            sh_s[k] = pm.s[n * pm.s_nstride + j];
            sh_s0[k] = masked ? pm.s0[n * pm.s0_nstride + j] : 0.0f;
        }
        if (activate) {
            sh_d[k] = pa.g.d_mode == 1 ? pa.d[n * pa.g.d_nstride + j] : 1.0f;
            sh_b[k] = pa.bias ? pa.bias[j] : 0.0f;
        }
    }
    __syncthreads();
    const int64_t total = (int64_t)strips * OW * cv; // a sample's threads
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= total) return;
    const int g = (int)(i % cv);
    const int64_t q = i / cv;
    const int ox = (int)(q % OW);
    const int oy0 = (int)(q / OW) * R, c = V * g;
    const Wd *xs = reinterpret_cast<const Wd *>(x) + (int64_t)n * H * W * cv + g;
    const int sx0 = ox - p0, sy0 = oy0 - p0;
    // Which of this thread's K source columns lie inside, and where its source row sy0 + j
    // starts: xrow + j rstride (in words), tap jh at + jh cv. Kept from one row to the next, a
    // row's loads cost a few additions; indexing each tap from (sy, sx) in 64 bits took about
    // half of the kernel's instructions (SASS).
    bool okx[K];
#pragma unroll
    for (int jh = 0; jh < K; jh++) okx[jh] = sx0 + jh >= 0 && sx0 + jh < W;
    const bool inner = sx0 >= 0 && sx0 + K - 1 < W; // every tap inside: no per-tap tests
    const int64_t rstride = (int64_t)W * cv;
    int64_t xrow = (int64_t)sy0 * rstride + (int64_t)sx0 * cv;
    float rs[K][V]; // the row sums of source rows sy .. sy + K - 1
    auto row_sums = [&](float (&s)[V], int sy) { // then moves xrow to the next row
#pragma unroll
        for (int e = 0; e < V; e++) s[e] = 0.0f;
        if (sy >= 0 && sy < H) { // else zeros: the sums of a zero row
            const Wd *rp = xs + xrow;
            Wd w[K];
            if (inner) { // a warp's lanes share a column where C >= 256: uniform there
#pragma unroll
                for (int jh = 0; jh < K; jh++) w[jh] = rp[jh * cv];
            } else {
#pragma unroll
                for (int jh = 0; jh < K; jh++) {
                    w[jh] = Wd{};
                    if (okx[jh]) w[jh] = rp[jh * cv];
                }
            }
#pragma unroll
            for (int jh = 0; jh < K; jh++) {
                float v[V];
                pbw_unpack_half<T, V>(w[jh], v);
#pragma unroll
                for (int e = 0; e < V; e++) s[e] += f.h[jh] * v[e];
            }
        }
        xrow += rstride;
    };
#pragma unroll
    for (int j = 0; j < K - 1; j++) row_sums(rs[j], sy0 + j);
    // d_mode 2 (DPIX): channel c + e's demodulation plane at dp + e P; the sample's noise at
    // np. DPIX is a template argument: as a runtime test, the compiler predicated the eight
    // planes' address arithmetic and issued it for every result row of d_mode 1 too.
    const float *dp = DPIX ? pa.d + ((int64_t)n * pa.g.O + c) * pa.g.P : nullptr;
    const float *np = activate && pa.noise ? pa.noise + n * pa.g.noise_nstride : nullptr;
    Wd *os = reinterpret_cast<Wd *>(out) + (int64_t)n * OH * OW * cv + g;
#pragma unroll
    for (int r = 0; r < R; r++) {
        row_sums(rs[K - 1], sy0 + r + K - 1);
        const int oy = oy0 + r;
        if (oy < OH) {
            float acc[V];
#pragma unroll
            for (int e = 0; e < V; e++) {
                acc[e] = 0.0f;
#pragma unroll
                for (int jv = 0; jv < K; jv++) acc[e] += f.v[jv] * rs[jv][e];
            }
            const int64_t p = (int64_t)oy * OW + ox;
            // this thread's channels' factors from shared memory (slot's layout): two 16-byte
            // words each with 8 channels a thread
            auto fac = [&](const float *a, float (&o)[V]) {
                if constexpr (V == 8) {
#pragma unroll
                    for (int h = 0; h < 2; h++) {
                        const float4 q = reinterpret_cast<const float4 *>(a)[h * cv + g];
                        o[4 * h] = q.x, o[4 * h + 1] = q.y, o[4 * h + 2] = q.z, o[4 * h + 3] = q.w;
                    }
                } else {
#pragma unroll
                    for (int e = 0; e < V; e++) o[e] = a[c + e];
                }
            };
            if (activate) {
                float dv[V], bv[V];
                fac(sh_d, dv), fac(sh_b, bv);
#pragma unroll
                for (int e = 0; e < V; e++)
                    acc[e] = act_value(acc[e], DPIX ? dp[e * pa.g.P + p] : dv[e], np, p, bv[e],
                                       pa.g);
            }
            if (MOD) { // the next convolution's style: on the rounded value, as its staging
                const float mv = masked ? pm.m[n * pm.m_nstride + p] : 0.0f;
                float sv[V], s0v[V], rv[V];
                fac(sh_s, sv), fac(sh_s0, s0v);
                pbw_unpack_half<T, V>(pbw_pack_half<T, V, Wd>(acc), rv); // rounded, pairwise
#pragma unroll
                for (int e = 0; e < V; e++)
                    acc[e] = __fmul_rn(rv[e], masked_scale(masked, sv[e], s0v[e], mv));
            }
            os[p * cv] = pbw_pack_half<T, V, Wd>(acc);
        }
#pragma unroll
        for (int j = 0; j < K - 1; j++)
#pragma unroll
            for (int e = 0; e < V; e++) rs[j][e] = rs[j + 1][e];
    }
}

// The adjoint, gathered: gx[iy][ix] += sum_jv fv[jv] * sum_jh fh[jh] * gout[iy-jv+p0][ix-jh+p0].
__global__ void sg_blur_bwd_kernel(float *gx, const float *gout, int64_t planes, int H, int W,
                                   int OH, int OW, fir_taps f, int K, int p0, int add) {
    pbw_pdl_wait();
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
        gx[i] = add ? gx[i] + acc : acc;
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
    if (g->up == 2 && g->down == 1)
        pbw_launch(upfirdn_fwd_kernel<2, 1>, pbw_grid(n), 256, 0, out, x, k, *g);
    else
        pbw_launch(upfirdn_fwd_kernel<0, 0>, pbw_grid(n), 256, 0, out, x, k, *g);
    PBW_CUDA_LAUNCHED("upfirdn2d_forward");
}

extern "C" void pbw_cuda_upfirdn2d_backward(float *dx, const float *dout, const float *k,
                                            const pbw_cpu_upfirdn_geom *g, int *scratch) {
    (void)scratch;
    const int64_t n = g->planes * g->H * g->W;
    if (n == 0) return;
    pbw_launch(upfirdn_bwd_kernel, pbw_grid(n), 256, 0, dx, dout, k, *g);
    PBW_CUDA_LAUNCHED("upfirdn2d_backward");
}

// ---------- resize ----------

extern "C" size_t pbw_cuda_resize_scratch_bytes(int mode, int H, int W, int OH, int OW) {
    (void)mode;
    // the forward's tables, the backward's lists (the same size again) and their offsets
    return 2 * ((size_t)OH + (size_t)OW) * TAPS * (sizeof(int) + sizeof(float)) +
           ((size_t)H + (size_t)W + 2) * sizeof(int);
}

extern "C" void pbw_cuda_resize_forward(float *out, const float *x, int64_t planes, int H, int W,
                                        int OH, int OW, int mode, void *scratch) {
    const int64_t n = planes * OH * OW;
    if (n == 0) return;
    resize_tabs t = resize_setup(scratch, H, W, OH, OW, mode, 0);
    pbw_launch(resize_fwd_kernel, pbw_grid(n), 256, 0, out, x, t, planes, H, W, OH, OW,
               resize_taps(mode));
    PBW_CUDA_LAUNCHED("resize_forward");
}

extern "C" void pbw_cuda_resize_backward(float *dx, const float *dout, int64_t planes, int H,
                                         int W, int OH, int OW, int mode, void *scratch) {
    const int64_t n = planes * H * W;
    if (n == 0) return;
    resize_tabs t = resize_setup(scratch, H, W, OH, OW, mode, 1);
    const dim3 grid((unsigned)((W + RB_THREADS - 1) / RB_THREADS),
                    (unsigned)(H < 65535 ? H : 65535),
                    (unsigned)(planes < 65535 ? planes : 65535));
    pbw_launch(resize_bwd_kernel, grid, RB_THREADS, 0, dx, dout, t, planes, H, W, OH, OW);
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
    pbw_launch(sep_rows_kernel, pbw_grid(n), 256, 0, scratch, x, planes, H, W, k, ksize);
    PBW_CUDA_LAUNCHED("sep_filter2d_rows");
    pbw_launch(sep_cols_kernel, pbw_grid(n), 256, 0, out, scratch, planes, H, W, k, ksize,
               accumulate);
    PBW_CUDA_LAUNCHED("sep_filter2d_cols");
}

// ---------- StyleGAN2 blur ----------

extern "C" void pbw_cuda_sg_blur_forward(float *out, const float *x, int64_t planes, int H,
                                         int W, int OH, int OW, const float *kv, const float *kh,
                                         int K, int p0, float *scratch, int nthreads) {
    (void)scratch;
    (void)nthreads;
    pbw_cuda_sg_blur_act_forward(out, x, planes, H, W, OH, OW, kv, kh, K, p0, nullptr);
}

static long g_blur_postact_calls;
extern "C" long pbw_cuda_sg_blur_postact_calls(void) { return g_blur_postact_calls; }

extern "C" void pbw_cuda_sg_blur_act_forward(float *out, const float *x, int64_t planes, int H,
                                             int W, int OH, int OW, const float *kv,
                                             const float *kh, int K, int p0,
                                             const pbw_cuda_postact *pa) {
    const int64_t n = planes * OH * OW;
    if (n == 0) return;
    if (K < 1 || K > 16) {
        pbw_cuda_fail("sg_blur: %d taps (1..16)", K);
        return;
    }
    const pbw_cuda_postact none = {}, &a = pa ? *pa : none;
    g_blur_postact_calls += pa != nullptr;
    const fir_taps f = flip_taps(kv, kh, K);
    if (!sg_blur_tiled<false>(out, x, planes, H, W, OH, OW, f, K, p0, a))
        pbw_launch(sg_blur_fwd_kernel, pbw_grid(n), 256, 0, out, x, planes, H, W, OH, OW, f, K, p0,
                   a);
    PBW_CUDA_LAUNCHED("sg_blur_forward");
}

static long g_blur_nhwc_calls;
extern "C" long pbw_cuda_sg_blur_nhwc_calls(void) { return g_blur_nhwc_calls; }

extern "C" int pbw_cuda_sg_blur_act_nhwc(void *out, const void *x, int N, int C, int H, int W,
                                         int OH, int OW, const float *kv, const float *kh, int K,
                                         int p0, const pbw_cuda_postact *pa,
                                         const pbw_cuda_premod *pm) {
    // four taps alone (StyleGAN2's [1,3,3,1]); other kernels take the fp32 path
    if (C % 2 || K != 4) return -1;
    if ((int64_t)N * OH * OW * C == 0) return 0;
    const pbw_cuda_postact none = {}, &a = pa ? *pa : none;
    const pbw_cuda_premod nomod = {}, &mo = pm ? *pm : nomod;
    const fir_taps f = flip_taps(kv, kh, K);
    const bool wide = C % 8 == 0 && ((uintptr_t)out | (uintptr_t)x) % 16 == 0;
    constexpr int R = 8; // rows a thread: (R + 3) / R source rows read per result row
    // a grid row a sample, its per-channel factors in shared memory
    const int64_t threads = (int64_t)((OH + R - 1) / R) * OW * (C / (wide ? 8 : 2));
    const size_t smem = 4 * (size_t)C * sizeof(float);
    if ((threads + 255) / 256 > 0x7fffffff || N > 65535 || smem > 48 * 1024) return -1;
    const dim3 blocks((unsigned)((threads + 255) / 256), (unsigned)N);
    pbw_half_type((int)pbw_cuda_precision(), [&](auto t) {
        using H_ = decltype(t);
        auto launch = [&](auto mod, auto dpix) {
            constexpr bool M = decltype(mod)::value, D = decltype(dpix)::value;
            if (wide)
                pbw_launch(sg_blur_nhwc_strip_kernel<H_, 8, uint4, 4, R, M, D>, blocks, 256, smem,
                           (H_ *)out, (const H_ *)x, N, C, H, W, OH, OW, f, p0, a, mo);
            else
                pbw_launch(sg_blur_nhwc_strip_kernel<H_, 2, uint32_t, 4, R, M, D>, blocks, 256,
                           smem, (H_ *)out, (const H_ *)x, N, C, H, W, OH, OW, f, p0, a, mo);
        };
        const bool dpix = a.g.N && a.g.d_mode == 2; // a demodulation per pixel
        if (mo.s && dpix) launch(std::true_type{}, std::true_type{});
        else if (mo.s) launch(std::true_type{}, std::false_type{});
        else if (dpix) launch(std::false_type{}, std::true_type{});
        else launch(std::false_type{}, std::false_type{});
    });
    PBW_CUDA_LAUNCHED("sg_blur_act_nhwc");
    g_blur_nhwc_calls++;
    g_blur_postact_calls += pa != nullptr;
    return 0;
}

static long g_blur_act_bwd_calls;
extern "C" long pbw_cuda_sg_blur_act_backward_calls(void) { return g_blur_act_bwd_calls; }

extern "C" int pbw_cuda_sg_blur_act_backward(float *gx, const float *gout, const float *out,
                                             int64_t planes, int H, int W, int OH, int OW,
                                             const float *kv, const float *kh, int K, int p0,
                                             const pbw_cuda_postact *pa, int add) {
    if (planes * H * W == 0) return 0;
    if (K != 4 || !pa || !pa->g.N) return -1; // the tiled kernel alone takes the activation
    const fir_taps f = flip_taps(kv, kh, K);
    sg_blur_tiled<true>(gx, gout, planes, OH, OW, H, W, f, K, p0, *pa, add, out);
    PBW_CUDA_LAUNCHED("sg_blur_act_backward");
    g_blur_act_bwd_calls++;
    return 0;
}

extern "C" void pbw_cuda_sg_blur_backward(float *gx, const float *gout, int64_t planes, int H,
                                          int W, int OH, int OW, const float *kv,
                                          const float *kh, int K, int p0, float *scratch,
                                          int nthreads, int add) {
    (void)scratch;
    (void)nthreads;
    const int64_t n = planes * H * W;
    if (n == 0) return;
    if (K < 1 || K > 16) {
        pbw_cuda_fail("sg_blur: %d taps (1..16)", K);
        return;
    }
    const fir_taps f = flip_taps(kv, kh, K);
    const pbw_cuda_postact none = {};
    if (!sg_blur_tiled<true>(gx, gout, planes, OH, OW, H, W, f, K, p0, none, add))
        pbw_launch(sg_blur_bwd_kernel, pbw_grid(n), 256, 0, gx, gout, planes, H, W, OH, OW, f, K,
                   p0, add);
    PBW_CUDA_LAUNCHED("sg_blur_backward");
}
