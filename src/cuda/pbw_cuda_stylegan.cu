// pbw_cuda_stylegan.cu: StyleGAN2's modulation and bias/noise/activation ops on the GPU
// (contracts in pbw_cuda_conv.h and pbw_cpu_stylegan.h).
//
// Elementwise parts run one thread per element. Reductions, all deterministic:
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

namespace {

const int RED_THREADS = 256;
const int CHUNK = 4096; // pixels per block of the pass-1 reductions

// q = a / b and *r = a % b for a >= 0, b > 0, by 32-bit division when both fit (the usual
// case: 64-bit division is a long emulated sequence on the GPU).
__device__ __forceinline__ int64_t divmod(int64_t a, int64_t b, int64_t *r) {
    int64_t q = ((a | b) >> 31) ? a / b : (int64_t)((uint32_t)a / (uint32_t)b);
    *r = a - q * b;
    return q;
}

int64_t nchunks(int64_t P) { return P > 0 ? (P + CHUNK - 1) / CHUNK : 1; }

// Block-wide sum of one double per thread (fixed tree: deterministic); valid in thread 0.
__device__ double block_sum(double v, double *sh) {
    sh[threadIdx.x] = v;
    __syncthreads();
    for (int h = RED_THREADS / 2; h > 0; h >>= 1) {
        if ((int)threadIdx.x < h) sh[threadIdx.x] += sh[threadIdx.x + h];
        __syncthreads();
    }
    double r = sh[0];
    __syncthreads(); // sh is reused by the next call
    return r;
}

// Pass 2: dst[n*nstride + c] += (float)(sum of the chunks of part[(n*C + c)*nch ..]) for every
// n in order; with `total` the sums over n are added first (one float addition: the bias).
__global__ void finish_kernel(float *dst, const double *part, int N, int C, int64_t nch,
                              int64_t nstride, int total) {
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
    finish_kernel<<<(C + 255) / 256, 256, 0, pbw_stream()>>>(dst, part, N, C, nch, nstride,
                                                            total);
    PBW_CUDA_LAUNCHED("sg_reduce_finish");
}

// ---------- modulate ----------

__global__ void modulate_fwd_kernel(float *out, const float *x, const float *s, const float *s0,
                                    const float *m, pbw_cpu_sg_mod_geom g) {
    const int64_t n = (int64_t)g.N * g.C * g.P;
    PBW_GRID_STRIDE(i, n) {
        int64_t p, c;
        const int64_t plane = divmod(i, g.P, &p);
        const int nn = (int)divmod(plane, g.C, &c);
        const float sv = s[nn * g.s_nstride + c];
        if (!m) {
            out[i] = x[i] * sv;
        } else {
            const float mv = m[nn * g.m_nstride + p], s0v = s0[nn * g.s0_nstride + c];
            out[i] = x[i] * (sv * mv + s0v * (1.0f - mv));
        }
    }
}

__global__ void modulate_gx_kernel(float *gx, const float *gout, const float *s, const float *s0,
                                   const float *m, pbw_cpu_sg_mod_geom g) {
    const int64_t n = (int64_t)g.N * g.C * g.P;
    PBW_GRID_STRIDE(i, n) {
        int64_t p, c;
        const int64_t plane = divmod(i, g.P, &p);
        const int nn = (int)divmod(plane, g.C, &c);
        const float sv = s[nn * g.s_nstride + c];
        if (!m) {
            gx[i] += gout[i] * sv;
        } else {
            const float mv = m[nn * g.m_nstride + p], s0v = s0[nn * g.s0_nstride + c];
            gx[i] += gout[i] * (sv * mv + s0v * (1.0f - mv));
        }
    }
}

// Pass 1 of d/ds = sum g x (m) and d/ds0 = sum g x (1-m): block (plane, chunk).
__global__ void modulate_gs_kernel(double *pa, double *pb, const float *gout, const float *x,
                                   const float *m, pbw_cpu_sg_mod_geom g, int64_t nch) {
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
    a = block_sum(a, sh);
    if (mp) b = block_sum(b, sh);
    if (threadIdx.x == 0) {
        if (pa) pa[plane * nch + k] = a;
        if (pb) pb[plane * nch + k] = b;
    }
}

// d out / d m = x (s - s0), summed over channels (and the batch when m is shared).
__global__ void modulate_gm_kernel(float *gm, const float *gout, const float *x, const float *s,
                                   const float *s0, pbw_cpu_sg_mod_geom g) {
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

__device__ __forceinline__ float pre_act(const float *y, const float *d, const float *noise,
                                         const float *bias, const pbw_cpu_sg_act_geom &g,
                                         int64_t i) {
    int64_t p, o;
    const int64_t plane = divmod(i, g.P, &p);
    const int nn = (int)divmod(plane, g.O, &o);
    float v = y[i];
    if (g.d_mode == 1) v = v * d[nn * g.d_nstride + o];
    else if (g.d_mode == 2) v = v * d[i];
    if (noise) v = v + g.noise_weight * noise[nn * g.noise_nstride + p];
    return v + (bias ? bias[o] : 0.0f);
}

__global__ void bias_act_fwd_kernel(float *out, const float *y, const float *d,
                                    const float *noise, const float *bias,
                                    pbw_cpu_sg_act_geom g) {
    const int64_t n = (int64_t)g.N * g.O * g.P;
    PBW_GRID_STRIDE(i, n) {
        float v = pre_act(y, d, noise, bias, g, i);
        out[i] = (v > 0 ? v : v * g.slope) * g.gain;
    }
}

// d out / d pre
__device__ __forceinline__ float grad_pre(const float *gout, const float *y, const float *d,
                                          const float *noise, const float *bias,
                                          const pbw_cpu_sg_act_geom &g, int64_t i) {
    float v = pre_act(y, d, noise, bias, g, i);
    return gout[i] * g.gain * (v > 0 ? 1.0f : g.slope);
}

// gy and the per-pixel gd, elementwise.
__global__ void bias_act_gy_kernel(float *gy, float *gd, const float *gout, const float *y,
                                   const float *d, const float *noise, const float *bias,
                                   pbw_cpu_sg_act_geom g) {
    const int64_t n = (int64_t)g.N * g.O * g.P;
    PBW_GRID_STRIDE(i, n) {
        const float gp = grad_pre(gout, y, d, noise, bias, g, i);
        if (gy) {
            if (g.d_mode == 1) {
                int64_t p, o;
                const int64_t nn = divmod(divmod(i, g.P, &p), g.O, &o);
                gy[i] += gp * d[nn * g.d_nstride + o];
            } else if (g.d_mode == 2) {
                gy[i] += gp * d[i];
            } else {
                gy[i] += gp;
            }
        }
        if (gd && g.d_mode == 2) gd[i] += gp * y[i];
    }
}

// Pass 1 of the per-channel gd (sum gp*y) and of gbias (sum gp): block (plane, chunk).
__global__ void bias_act_sums_kernel(double *pd, double *pbias, const float *gout,
                                     const float *y, const float *d, const float *noise,
                                     const float *bias, pbw_cpu_sg_act_geom g, int64_t nch) {
    __shared__ double sh[RED_THREADS];
    const int64_t plane = blockIdx.x, k = blockIdx.y;
    const int64_t p0 = k * CHUNK, p1 = p0 + CHUNK < g.P ? p0 + CHUNK : g.P;
    double a = 0, b = 0;
    for (int64_t p = p0 + threadIdx.x; p < p1; p += RED_THREADS) {
        const int64_t i = plane * g.P + p;
        const float gp = grad_pre(gout, y, d, noise, bias, g, i);
        a += (double)(gp * y[i]);
        b += gp;
    }
    if (pd) a = block_sum(a, sh);
    if (pbias) b = block_sum(b, sh);
    if (threadIdx.x == 0) {
        if (pd) pd[plane * nch + k] = a;
        if (pbias) pbias[plane * nch + k] = b;
    }
}

__global__ void bias_act_gnoise_kernel(float *gnoise, const float *gout, const float *y,
                                       const float *d, const float *noise, const float *bias,
                                       pbw_cpu_sg_act_geom g) {
    const int nb = g.noise_nstride ? g.N : 1;
    const int64_t n = (int64_t)nb * g.P;
    PBW_GRID_STRIDE(i, n) {
        int64_t p;
        const int nn0 = (int)divmod(i, g.P, &p);
        const int n_lo = g.noise_nstride ? nn0 : 0, n_hi = g.noise_nstride ? nn0 + 1 : g.N;
        double acc = 0;
        for (int nn = n_lo; nn < n_hi; nn++)
            for (int o = 0; o < g.O; o++) {
                const int64_t e = ((int64_t)nn * g.O + o) * g.P + p;
                acc += (double)(grad_pre(gout, y, d, noise, bias, g, e) * g.noise_weight);
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
    modulate_fwd_kernel<<<pbw_grid(n), 256, 0, pbw_stream()>>>(out, x, s, s0, m, *g);
    PBW_CUDA_LAUNCHED("sg_modulate_forward");
}

extern "C" void pbw_cuda_sg_modulate_backward(const float *gout, const float *x, const float *s,
                                              const float *s0, const float *m,
                                              const pbw_cpu_sg_mod_geom *g, float *gx, float *gs,
                                              float *gs0, float *gm) {
    const int64_t planes = (int64_t)g->N * g->C, n = planes * g->P;
    if (n == 0) return;
    if (gx) {
        modulate_gx_kernel<<<pbw_grid(n), 256, 0, pbw_stream()>>>(gx, gout, s, s0, m, *g);
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
        modulate_gs_kernel<<<dim3((unsigned)planes, (unsigned)nch), RED_THREADS, 0,
                             pbw_stream()>>>(pa, pb, gout, x, m, *g, nch);
        PBW_CUDA_LAUNCHED("sg_modulate_backward_s");
        if (pa) finish(gs, pa, g->N, g->C, nch, g->s_nstride, 0);
        if (pb) finish(gs0, pb, g->N, g->C, nch, g->s0_nstride, 0);
    }
    if (gm && m) {
        const int64_t nm = (int64_t)(g->m_nstride ? g->N : 1) * g->P;
        modulate_gm_kernel<<<pbw_grid(nm), 256, 0, pbw_stream()>>>(gm, gout, x, s, s0, *g);
        PBW_CUDA_LAUNCHED("sg_modulate_backward_m");
    }
}

extern "C" void pbw_cuda_sg_bias_act_forward(float *out, const float *y, const float *d,
                                             const float *noise, const float *bias,
                                             const pbw_cpu_sg_act_geom *g) {
    const int64_t n = (int64_t)g->N * g->O * g->P;
    if (n == 0) return;
    bias_act_fwd_kernel<<<pbw_grid(n), 256, 0, pbw_stream()>>>(out, y, d, noise, bias, *g);
    PBW_CUDA_LAUNCHED("sg_bias_act_forward");
}

extern "C" void pbw_cuda_sg_bias_act_backward(const float *gout, const float *y, const float *d,
                                              const float *noise, const float *bias,
                                              const pbw_cpu_sg_act_geom *g, float *gy, float *gd,
                                              float *gnoise, float *gbias) {
    const int64_t planes = (int64_t)g->N * g->O, n = planes * g->P;
    if (n == 0) return;
    if (gy || (gd && g->d_mode == 2)) {
        bias_act_gy_kernel<<<pbw_grid(n), 256, 0, pbw_stream()>>>(
            gy, g->d_mode == 2 ? gd : NULL, gout, y, d, noise, bias, *g);
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
        bias_act_sums_kernel<<<dim3((unsigned)planes, (unsigned)nch), RED_THREADS, 0,
                               pbw_stream()>>>(pd, pb, gout, y, d, noise, bias, *g, nch);
        PBW_CUDA_LAUNCHED("sg_bias_act_backward_sums");
        if (pd) finish(gd, pd, g->N, g->O, nch, g->d_nstride, 0);
        if (pb) finish(gbias, pb, g->N, g->O, nch, 0, 1);
    }
    if (gnoise && noise) {
        const int64_t nn = (int64_t)(g->noise_nstride ? g->N : 1) * g->P;
        bias_act_gnoise_kernel<<<pbw_grid(nn), 256, 0, pbw_stream()>>>(gnoise, gout, y, d, noise,
                                                                      bias, *g);
        PBW_CUDA_LAUNCHED("sg_bias_act_backward_noise");
    }
}
