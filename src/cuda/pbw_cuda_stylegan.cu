// pbw_cuda_stylegan.cu: StyleGAN2's modulation and bias/noise/activation ops on the GPU
// (contracts in pbw_cuda_conv.h and pbw_cpu_stylegan.h).
//
// Elementwise parts (the forwards, gx, gy and the per-pixel gd) are memory-bound: a thread
// takes V consecutive pixels of one (sample, channel) plane, V = 4 with float4 loads and
// stores when P % 4 == 0 and the pointers are 16-byte aligned, else V = 1; the grid's y and z
// give the channel and the sample, so the plane's scalars (s, s0, d, bias) are loaded once and
// no index is divided (a 64-bit divmod per element made them instruction-bound).
// Reductions, all deterministic:
//   over pixels (into s, s0, per-channel d, bias): pass 1 gives every (sample, channel, chunk
//   of CHUNK pixels) a block that writes its partial sums in double to the runtime workspace;
//   pass 2 runs one thread per channel that adds the chunks in order and then adds into the
//   gradient sample by sample, as the CPU does (a style shared by the batch gets one float
//   addition per sample, in sample order);
//   over channels (into m, noise): one thread per pixel loops over samples and channels.
// Like the CPU, pixel sums accumulate in double.
#include <cuda_runtime.h>

#include "cuda/pbw_cuda_conv.h"
#include "cuda/pbw_cuda_internal.cuh"
#include "cuda/pbw_cuda_stylegan.cuh"

namespace {

const int RED_THREADS = 256;
const int CHUNK = 4096; // pixels per block of the pass-1 reductions
const int EW_THREADS = 256; // threads per block of the elementwise kernels

// q = a / b and *r = a % b for a >= 0, b > 0, by 32-bit division when both fit (the usual
// case: 64-bit division is a long emulated sequence on the GPU).
__device__ __forceinline__ int64_t divmod(int64_t a, int64_t b, int64_t *r) {
    int64_t q = ((a | b) >> 31) ? a / b : (int64_t)((uint32_t)a / (uint32_t)b);
    *r = a - q * b;
    return q;
}

int64_t nchunks(int64_t P) { return P > 0 ? (P + CHUNK - 1) / CHUNK : 1; }

// Pass 2: dst[n*nstride + c] += (float)(sum of the chunks of part[(n*C + c)*nch ..]) for every
// n in order; with `total` the sums over n are added first (one float addition: the bias).
__global__ void finish_kernel(float *dst, const double *part, int N, int C, int64_t nch,
                              int64_t nstride, int total) {
    pbw_pdl_wait();
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    double all = 0;
    for (int n = 0; n < N; n++) {
        const double *p = part + ((int64_t)n * C + c) * nch;
        double s = 0;
        for (int64_t k = 0; k < nch; k++) s += p[k];
        if (total) all += s;
        else dst[n * nstride + c] += (float)s;
    }
    if (total) dst[c] += (float)all;
}

void finish(float *dst, const double *part, int N, int C, int64_t nch, int64_t nstride,
            int total) {
    pbw_launch(finish_kernel, (C + 255) / 256, 256, 0, dst, part, N, C, nch, nstride, total);
    PBW_CUDA_LAUNCHED("sg_reduce_finish");
}

// ---------- elementwise shape ----------

// An elementwise kernel over (N, C, P) runs on a grid of (pixel groups, channels, samples): x
// over the P/V groups of V consecutive pixels in a plane, y over channels, z over samples.
// Blocks are (bx, by) threads, bx along the pixels (up to EW_THREADS) and by channels filling
// the rest, so that 4x4 and 8x8 planes still give full blocks; a block's channels are adjacent
// planes, so its warps read consecutive memory. Each dimension is capped at its limit and the
// kernels loop past it (EW_PLANES, EW_PIXELS).
struct ew_shape {
    dim3 grid, block;
};

ew_shape ew_config(int N, int C, int64_t P, int V) {
    const int64_t groups = P / V; // >= 1: P % V == 0 and P > 0
    const int bx = groups < EW_THREADS ? (int)groups : EW_THREADS;
    int by = EW_THREADS / bx;
    if (by > C) by = C;
    int64_t gx = (groups + bx - 1) / bx, gy = (C + by - 1) / by;
    if (gx > 65535LL * 32) gx = 65535LL * 32;
    if (gy > 65535) gy = 65535;
    ew_shape sh;
    sh.grid = dim3((unsigned)gx, (unsigned)gy, (unsigned)(N < 65535 ? N : 65535));
    sh.block = dim3((unsigned)bx, (unsigned)by, 1);
    return sh;
}

// V = 4 needs every plane and map to start on 16 bytes: P % 4 == 0 and aligned base pointers
// (pbw_aligned16, which NULL passes; the arenas give 64-byte alignment, so this is the usual
// case).

// The planes (sample n, channel c) of this thread, then its first pixels p of V in the plane.
#define EW_PLANES(N_, C_)                                                                     \
    for (int n = blockIdx.z; n < (N_); n += gridDim.z)                                        \
        for (int c = blockIdx.y * blockDim.y + threadIdx.y; c < (C_); c += gridDim.y * blockDim.y)
#define EW_PIXELS(p, P_, V_)                                                                  \
    for (int64_t p = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) * (V_); p < (P_);         \
         p += (int64_t)gridDim.x * blockDim.x * (V_))

// V floats at p (16-byte aligned when V == 4).
template <int V> __device__ __forceinline__ void ld(float (&r)[V], const float *p) {
    if constexpr (V == 4) {
        const float4 t = *reinterpret_cast<const float4 *>(p);
        r[0] = t.x, r[1] = t.y, r[2] = t.z, r[3] = t.w;
    } else {
#pragma unroll
        for (int k = 0; k < V; k++) r[k] = p[k];
    }
}
template <int V> __device__ __forceinline__ void st(float *p, const float (&r)[V]) {
    if constexpr (V == 4) {
        *reinterpret_cast<float4 *>(p) = make_float4(r[0], r[1], r[2], r[3]);
    } else {
#pragma unroll
        for (int k = 0; k < V; k++) p[k] = r[k];
    }
}

// The arithmetic below is written with explicit roundings (__fmul_rn, __fmaf_rn, ...) that
// are the ones nvcc's contraction gave the earlier one-thread-per-element kernels, so the
// results stay bit-identical to them whatever the compiler now sees fit to fuse.

// ---------- modulate ----------

// out = x * scale (forward, ACC false: x the input) or out += x * scale (the input gradient,
// ACC true: x the output gradient, one fused multiply-add), the per-pixel scale
// pbw_sg_mod_scale's.
template <int V, bool ACC>
__global__ void modulate_kernel(float *out, const float *x, const float *s, const float *s0,
                                const float *m, pbw_cpu_sg_mod_geom g) {
    pbw_pdl_wait();
    EW_PLANES(g.N, g.C) {
        const int64_t base = ((int64_t)n * g.C + c) * g.P;
        const float sv = s[n * g.s_nstride + c];
        const float s0v = m ? s0[n * g.s0_nstride + c] : 0.0f;
        const float *mp = m ? m + n * g.m_nstride : NULL;
        EW_PIXELS(p, g.P, V) {
            float v[V], acc[V], w[V];
            ld<V>(v, x + base + p);
            if (ACC) ld<V>(acc, out + base + p);
            if (m) {
                ld<V>(w, mp + p);
#pragma unroll
                for (int k = 0; k < V; k++) w[k] = pbw_sg_mod_scale(sv, s0v, w[k]);
            } else {
#pragma unroll
                for (int k = 0; k < V; k++) w[k] = sv;
            }
#pragma unroll
            for (int k = 0; k < V; k++)
                v[k] = ACC ? __fmaf_rn(v[k], w[k], acc[k]) : __fmul_rn(v[k], w[k]);
            st<V>(out + base + p, v);
        }
    }
}

// Pass 1 of d/ds = sum g x (m) and d/ds0 = sum g x (1-m): block (plane, chunk).
__global__ void modulate_gs_kernel(double *pa, double *pb, const float *gout, const float *x,
                                   const float *m, pbw_cpu_sg_mod_geom g, int64_t nch) {
    pbw_pdl_wait();
    __shared__ double sh[RED_THREADS];
    const int64_t plane = blockIdx.x, k = blockIdx.y;
    const int nn = (int)(plane / g.C);
    const int64_t p0 = k * CHUNK, p1 = p0 + CHUNK < g.P ? p0 + CHUNK : g.P;
    const float *go = gout + plane * g.P, *xp = x + plane * g.P;
    const float *mp = m ? m + nn * g.m_nstride : NULL;
    double a = 0, b = 0;
    for (int64_t p = p0 + threadIdx.x; p < p1; p += RED_THREADS) {
        float t = go[p] * xp[p];
        if (!mp) {
            a += t;
        } else {
            a += (double)(t * mp[p]);
            b += (double)(t * (1.0f - mp[p]));
        }
    }
    a = pbw_block_sum<RED_THREADS>(a, sh);
    if (mp) b = pbw_block_sum<RED_THREADS>(b, sh);
    if (threadIdx.x == 0) {
        if (pa) pa[plane * nch + k] = a;
        if (pb) pb[plane * nch + k] = b;
    }
}

// d out / d m = x (s - s0), summed over channels (and the batch when m is shared).
__global__ void modulate_gm_kernel(float *gm, const float *gout, const float *x, const float *s,
                                   const float *s0, pbw_cpu_sg_mod_geom g) {
    pbw_pdl_wait();
    const int mb = g.m_nstride ? g.N : 1;
    const int64_t n = (int64_t)mb * g.P;
    PBW_GRID_STRIDE(i, n) {
        int64_t p;
        const int nm = (int)divmod(i, g.P, &p);
        const int n_lo = g.m_nstride ? nm : 0, n_hi = g.m_nstride ? nm + 1 : g.N;
        double acc = 0;
        for (int nn = n_lo; nn < n_hi; nn++)
            for (int c = 0; c < g.C; c++) {
                const float ds = s[nn * g.s_nstride + c] - s0[nn * g.s0_nstride + c];
                const int64_t e = ((int64_t)nn * g.C + c) * g.P + p;
                acc += (double)(gout[e] * x[e] * ds);
            }
        gm[(int64_t)nm * g.m_nstride + p] += (float)acc;
    }
}

// ---------- bias + activation ----------

// d out / d pre, given d out and the pre-activation
__device__ __forceinline__ float act_grad(float go, float v, const pbw_cpu_sg_act_geom &g) {
    return __fmul_rn(__fmul_rn(go, g.gain), v > 0 ? 1.0f : g.slope);
}

// d out / d pre at pixel p of the plane, with scalar loads (the reductions).
__device__ __forceinline__ float grad_at(const act_plane &a, const pbw_cpu_sg_act_geom &g,
                                         float go, float yv, int64_t p) {
    const float dv = g.d_mode == 2 ? a.dp[p] : a.dv, nz = a.noisy ? a.np[p] : 0.0f;
    return act_grad(go, pre_act(yv, dv, nz, a, g), g);
}

// The d and noise of pixels p .. p+V-1 of the plane.
template <int V>
__device__ __forceinline__ void act_inputs(float (&dv)[V], float (&nz)[V], const act_plane &a,
                                           const pbw_cpu_sg_act_geom &g, int64_t p) {
    if (g.d_mode == 2) {
        ld<V>(dv, a.dp + p);
    } else {
#pragma unroll
        for (int k = 0; k < V; k++) dv[k] = a.dv;
    }
    if (a.noisy) {
        ld<V>(nz, a.np + p);
    } else {
#pragma unroll
        for (int k = 0; k < V; k++) nz[k] = 0.0f;
    }
}

template <int V>
__global__ void bias_act_fwd_kernel(float *out, const float *y, const float *d,
                                    const float *noise, const float *bias,
                                    pbw_cpu_sg_act_geom g) {
    pbw_pdl_wait();
    EW_PLANES(g.N, g.O) {
        const act_plane a = act_plane_at(d, noise, bias, g, n, c);
        EW_PIXELS(p, g.P, V) {
            float v[V], dv[V], nz[V];
            ld<V>(v, y + a.base + p);
            act_inputs<V>(dv, nz, a, g, p);
#pragma unroll
            for (int k = 0; k < V; k++) v[k] = act(pre_act(v[k], dv[k], nz[k], a, g), g);
            st<V>(out + a.base + p, v);
        }
    }
}

// gy and the per-pixel gd (gd is NULL unless d_mode is 2), elementwise.
template <int V>
__global__ void bias_act_gy_kernel(float *gy, float *gd, const float *gout, const float *y,
                                   const float *d, const float *noise, const float *bias,
                                   pbw_cpu_sg_act_geom g, int gy_add) {
    pbw_pdl_wait();
    EW_PLANES(g.N, g.O) {
        const act_plane a = act_plane_at(d, noise, bias, g, n, c);
        EW_PIXELS(p, g.P, V) {
            const int64_t i = a.base + p;
            float yv[V], gp[V], dv[V], nz[V];
            ld<V>(yv, y + i);
            ld<V>(gp, gout + i);
            act_inputs<V>(dv, nz, a, g, p);
#pragma unroll
            for (int k = 0; k < V; k++)
                gp[k] = act_grad(gp[k], pre_act(yv[k], dv[k], nz[k], a, g), g);
            if (gy) {
                float t[V] = {};
                if (gy_add) ld<V>(t, gy + i);
#pragma unroll
                for (int k = 0; k < V; k++)
                    t[k] = g.d_mode ? __fmaf_rn(gp[k], dv[k], t[k]) : __fadd_rn(t[k], gp[k]);
                st<V>(gy + i, t);
            }
            if (gd && g.d_mode == 2) {
                float t[V];
                ld<V>(t, gd + i);
#pragma unroll
                for (int k = 0; k < V; k++) t[k] = __fmaf_rn(gp[k], yv[k], t[k]);
                st<V>(gd + i, t);
            }
        }
    }
}

// Pass 1 of the per-channel gd (sum gp*y) and of gbias (sum gp): block (plane, chunk).
__global__ void bias_act_sums_kernel(double *pd, double *pbias, const float *gout,
                                     const float *y, const float *d, const float *noise,
                                     const float *bias, pbw_cpu_sg_act_geom g, int64_t nch) {
    pbw_pdl_wait();
    __shared__ double sh[RED_THREADS];
    const int64_t plane = blockIdx.x, k = blockIdx.y;
    const act_plane pl = act_plane_at(d, noise, bias, g, (int)(plane / g.O), (int)(plane % g.O));
    const int64_t p0 = k * CHUNK, p1 = p0 + CHUNK < g.P ? p0 + CHUNK : g.P;
    double a = 0, b = 0;
    for (int64_t p = p0 + threadIdx.x; p < p1; p += RED_THREADS) {
        const int64_t i = pl.base + p;
        const float gp = grad_at(pl, g, gout[i], y[i], p);
        a += (double)(gp * y[i]);
        b += gp;
    }
    if (pd) a = pbw_block_sum<RED_THREADS>(a, sh);
    if (pbias) b = pbw_block_sum<RED_THREADS>(b, sh);
    if (threadIdx.x == 0) {
        if (pd) pd[plane * nch + k] = a;
        if (pbias) pbias[plane * nch + k] = b;
    }
}

__global__ void bias_act_gnoise_kernel(float *gnoise, const float *gout, const float *y,
                                       const float *d, const float *noise, const float *bias,
                                       pbw_cpu_sg_act_geom g) {
    pbw_pdl_wait();
    const int nb = g.noise_nstride ? g.N : 1;
    const int64_t n = (int64_t)nb * g.P;
    PBW_GRID_STRIDE(i, n) {
        int64_t p;
        const int nn0 = (int)divmod(i, g.P, &p);
        const int n_lo = g.noise_nstride ? nn0 : 0, n_hi = g.noise_nstride ? nn0 + 1 : g.N;
        double acc = 0;
        for (int nn = n_lo; nn < n_hi; nn++)
            for (int o = 0; o < g.O; o++) {
                const act_plane pl = act_plane_at(d, noise, bias, g, nn, o);
                const int64_t e = pl.base + p;
                acc += (double)(grad_at(pl, g, gout[e], y[e], p) * g.noise_weight);
            }
        gnoise[(int64_t)nn0 * g.noise_nstride + p] += (float)acc;
    }
}

// Two arrays of `each` doubles from the workspace; NULL (failure recorded) when out of memory.
double *partials(int64_t each, int count) {
    return (double *)pbw_cuda_workspace((size_t)each * count * sizeof(double));
}

} // namespace

extern "C" void pbw_cuda_sg_modulate_forward(float *out, const float *x, const float *s,
                                             const float *s0, const float *m,
                                             const pbw_cpu_sg_mod_geom *g) {
    const int64_t n = (int64_t)g->N * g->C * g->P;
    if (n == 0) return;
    const int v4 = g->P % 4 == 0 && pbw_aligned16(out) && pbw_aligned16(x) && pbw_aligned16(m);
    const ew_shape sh = ew_config(g->N, g->C, g->P, v4 ? 4 : 1);
    if (v4)
        pbw_launch(modulate_kernel<4, false>, sh.grid, sh.block, 0, out, x, s, s0, m, *g);
    else
        pbw_launch(modulate_kernel<1, false>, sh.grid, sh.block, 0, out, x, s, s0, m, *g);
    PBW_CUDA_LAUNCHED("sg_modulate_forward");
}

extern "C" void pbw_cuda_sg_modulate_backward(const float *gout, const float *x, const float *s,
                                              const float *s0, const float *m,
                                              const pbw_cpu_sg_mod_geom *g, float *gx, float *gs,
                                              float *gs0, float *gm, int gx_add) {
    const int64_t planes = (int64_t)g->N * g->C, n = planes * g->P;
    if (n == 0) return;
    if (gx) {
        const int v4 =
            g->P % 4 == 0 && pbw_aligned16(gx) && pbw_aligned16(gout) && pbw_aligned16(m);
        const ew_shape sh = ew_config(g->N, g->C, g->P, v4 ? 4 : 1);
        // gx_add 0: the forward's product (fma with a zero addend rounds alike)
        if (v4 && gx_add)
            pbw_launch(modulate_kernel<4, true>, sh.grid, sh.block, 0, gx, gout, s, s0, m, *g);
        else if (v4)
            pbw_launch(modulate_kernel<4, false>, sh.grid, sh.block, 0, gx, gout, s, s0, m, *g);
        else if (gx_add)
            pbw_launch(modulate_kernel<1, true>, sh.grid, sh.block, 0, gx, gout, s, s0, m, *g);
        else
            pbw_launch(modulate_kernel<1, false>, sh.grid, sh.block, 0, gx, gout, s, s0, m, *g);
        PBW_CUDA_LAUNCHED("sg_modulate_backward_x");
    }
    if (gs || (gs0 && m)) {
        const int64_t nch = nchunks(g->P), each = planes * nch;
        if (nch > 65535) {
            pbw_cuda_fail("sg_modulate backward: %lld pixels per plane is too many", (long long)g->P);
            return;
        }
        double *part = partials(each, 2);
        if (!part) return;
        double *pa = gs ? part : NULL, *pb = (gs0 && m) ? part + each : NULL;
        pbw_launch(modulate_gs_kernel, dim3((unsigned)planes, (unsigned)nch), RED_THREADS, 0, pa,
                   pb, gout, x, m, *g, nch);
        PBW_CUDA_LAUNCHED("sg_modulate_backward_s");
        if (pa) finish(gs, pa, g->N, g->C, nch, g->s_nstride, 0);
        if (pb) finish(gs0, pb, g->N, g->C, nch, g->s0_nstride, 0);
    }
    if (gm && m) {
        const int64_t nm = (int64_t)(g->m_nstride ? g->N : 1) * g->P;
        pbw_launch(modulate_gm_kernel, pbw_grid(nm), 256, 0, gm, gout, x, s, s0, *g);
        PBW_CUDA_LAUNCHED("sg_modulate_backward_m");
    }
}

extern "C" void pbw_cuda_sg_bias_act_forward(float *out, const float *y, const float *d,
                                             const float *noise, const float *bias,
                                             const pbw_cpu_sg_act_geom *g) {
    const int64_t n = (int64_t)g->N * g->O * g->P;
    if (n == 0) return;
    const int v4 = g->P % 4 == 0 && pbw_aligned16(out) && pbw_aligned16(y) &&
                   pbw_aligned16(noise) && (g->d_mode != 2 || pbw_aligned16(d));
    const ew_shape sh = ew_config(g->N, g->O, g->P, v4 ? 4 : 1);
    if (v4)
        pbw_launch(bias_act_fwd_kernel<4>, sh.grid, sh.block, 0, out, y, d, noise, bias, *g);
    else
        pbw_launch(bias_act_fwd_kernel<1>, sh.grid, sh.block, 0, out, y, d, noise, bias, *g);
    PBW_CUDA_LAUNCHED("sg_bias_act_forward");
}

extern "C" void pbw_cuda_sg_bias_act_backward(const float *gout, const float *y, const float *d,
                                              const float *noise, const float *bias,
                                              const pbw_cpu_sg_act_geom *g, float *gy, float *gd,
                                              float *gnoise, float *gbias, int gy_add) {
    const int64_t planes = (int64_t)g->N * g->O, n = planes * g->P;
    if (n == 0) return;
    if (gy || (gd && g->d_mode == 2)) {
        float *gdp = g->d_mode == 2 ? gd : NULL; // per pixel: elementwise here
        const int v4 = g->P % 4 == 0 && pbw_aligned16(gy) && pbw_aligned16(gdp) &&
                       pbw_aligned16(gout) && pbw_aligned16(y) && pbw_aligned16(noise) &&
                       (g->d_mode != 2 || pbw_aligned16(d));
        const ew_shape sh = ew_config(g->N, g->O, g->P, v4 ? 4 : 1);
        if (v4)
            pbw_launch(bias_act_gy_kernel<4>, sh.grid, sh.block, 0, gy, gdp, gout, y, d, noise,
                       bias, *g, gy_add);
        else
            pbw_launch(bias_act_gy_kernel<1>, sh.grid, sh.block, 0, gy, gdp, gout, y, d, noise,
                       bias, *g, gy_add);
        PBW_CUDA_LAUNCHED("sg_bias_act_backward_y");
    }
    const int want_d = gd && g->d_mode == 1;
    if (want_d || gbias) {
        const int64_t nch = nchunks(g->P), each = planes * nch;
        if (nch > 65535) {
            pbw_cuda_fail("sg_bias_act backward: %lld pixels per plane is too many", (long long)g->P);
            return;
        }
        double *part = partials(each, 2);
        if (!part) return;
        double *pd = want_d ? part : NULL, *pb = gbias ? part + each : NULL;
        pbw_launch(bias_act_sums_kernel, dim3((unsigned)planes, (unsigned)nch), RED_THREADS, 0, pd,
                   pb, gout, y, d, noise, bias, *g, nch);
        PBW_CUDA_LAUNCHED("sg_bias_act_backward_sums");
        if (pd) finish(gd, pd, g->N, g->O, nch, g->d_nstride, 0);
        if (pb) finish(gbias, pb, g->N, g->O, nch, 0, 1);
    }
    if (gnoise && noise) {
        const int64_t nn = (int64_t)(g->noise_nstride ? g->N : 1) * g->P;
        pbw_launch(bias_act_gnoise_kernel, pbw_grid(nn), 256, 0, gnoise, gout, y, d, noise, bias,
                   *g);
        PBW_CUDA_LAUNCHED("sg_bias_act_backward_noise");
    }
}
