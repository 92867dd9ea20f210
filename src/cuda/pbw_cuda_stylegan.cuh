// pbw_cuda_stylegan.cuh: StyleGAN2's bias/noise/activation and style-scale arithmetic on the
// GPU, shared by the sg_bias_act kernels (pbw_cuda_stylegan.cu), the convolution's staging and
// copy back when they apply them (pbw_sg_modconv_act, pbw_cuda_conv.cu) and the blur that
// scales for the next convolution (pbw_sg_blur_act_mod, pbw_cuda_resample.cu): one definition,
// so all round alike.
#ifndef PBW_CUDA_STYLEGAN_CUH
#define PBW_CUDA_STYLEGAN_CUH

#include <stdint.h>

#include "cpu/pbw_cpu_stylegan.h"
#include "cuda/pbw_cuda_conv.h"
#include "cuda/pbw_cuda_internal.cuh"

// What the elements of plane (n, o) share: where the plane starts in y (and out, gout, gy and a
// per-pixel d), its per-channel d and bias, and its per-pixel d and noise maps.
struct act_plane {
    int64_t base;
    float dv;              // d (d_mode 1), else 1 (unused)
    float b;               // bias, or 0 without one (added either way, as the CPU does)
    const float *dp, *np;  // d_mode 2: d at the plane; noise at the sample; else NULL
    bool noisy;            // np is set (tested apart so the compiler needs no null check)
};

__device__ __forceinline__ act_plane act_plane_at(const float *d, const float *noise,
                                                  const float *bias,
                                                  const pbw_cpu_sg_act_geom &g, int n, int o) {
    act_plane a;
    a.base = ((int64_t)n * g.O + o) * g.P;
    a.dv = g.d_mode == 1 ? d[n * g.d_nstride + o] : 1.0f;
    a.b = bias ? bias[o] : 0.0f;
    a.dp = g.d_mode == 2 ? d + a.base : NULL;
    a.np = noise ? noise + n * g.noise_nstride : NULL;
    a.noisy = noise != NULL;
    return a;
}

// The pre-activation y d + w noise + bias, rounded as y*d, then an fma with the noise.
__device__ __forceinline__ float pre_act_of(float yv, float dv, bool noisy, float nz, float b,
                                            const pbw_cpu_sg_act_geom &g) {
    float v = g.d_mode ? __fmul_rn(yv, dv) : yv;
    if (noisy) v = __fmaf_rn(g.noise_weight, nz, v);
    return __fadd_rn(v, b);
}
__device__ __forceinline__ float pre_act(float yv, float dv, float nz, const act_plane &a,
                                         const pbw_cpu_sg_act_geom &g) {
    return pre_act_of(yv, dv, a.noisy, nz, a.b, g);
}

// v > 0 ? v : v slope, as v times a selected factor (v 1 is v exactly, NaN and -0 included): a
// select and a product, where the conditional product had the compiler load the slope from
// the constant bank for every value.
__device__ __forceinline__ float act(float v, const pbw_cpu_sg_act_geom &g) {
    return __fmul_rn(__fmul_rn(v, v > 0 ? 1.0f : g.slope), g.gain);
}

// act_plane for V consecutive channels c.. of sample n, kept once: V act_planes cost a kernel
// ~9 registers each, most of them copies of the sample's pointers (an NHWC kernel holding 8
// ran at 25% occupancy for its 128 registers). dv and b per channel; d's plane of channel c + e
// (d_mode 2) at dp + e P; the sample's noise at np.
template <int V> struct act_group {
    float dv[V], b[V];
    const float *dp, *np; // NULL when not d_mode 2 / without noise
};

template <int V>
__device__ __forceinline__ act_group<V> act_group_at(const float *d, const float *noise,
                                                     const float *bias,
                                                     const pbw_cpu_sg_act_geom &g, int n, int c) {
    act_group<V> a;
#pragma unroll
    for (int e = 0; e < V; e++) {
        a.dv[e] = g.d_mode == 1 ? d[n * g.d_nstride + c + e] : 1.0f;
        a.b[e] = bias ? bias[c + e] : 0.0f;
    }
    a.dp = g.d_mode == 2 ? d + ((int64_t)n * g.O + c) * g.P : NULL;
    a.np = noise ? noise + n * g.noise_nstride : NULL;
    return a;
}

// The activated value of yv at pixel p from its channel's d value dv and bias b and the
// sample's noise map np (NULL: none): act_at's arithmetic.
__device__ __forceinline__ float act_value(float yv, float dv, const float *np, int64_t p, float b,
                                           const pbw_cpu_sg_act_geom &g) {
    return act(pre_act_of(yv, dv, np != NULL, np ? np[p] : 0.0f, b, g), g);
}

// act_at of channel c + e at pixel p: the same arithmetic.
template <int V>
__device__ __forceinline__ float act_group_apply(float yv, const act_group<V> &a, int e,
                                                 const pbw_cpu_sg_act_geom &g, int64_t p) {
    return act_value(yv, g.d_mode == 2 ? a.dp[e * g.P + p] : a.dv[e], a.np, p, a.b[e], g);
}

// What plane pl (sample pl / O, channel pl % O) of a pbw_cuda_postact's output shares.
__device__ __forceinline__ act_plane postact_plane(const pbw_cuda_postact &pa, int64_t pl) {
    return act_plane_at(pa.d, pa.noise, pa.bias, pa.g, (int)(pl / pa.g.O), (int)(pl % pa.g.O));
}

// The scale of a channel of style s (s0 the original's) at a pixel whose mask value is mv:
// pbw_sg_modulate's s unmasked, s m + s0 (1 - m) masked.
__device__ __forceinline__ float masked_scale(bool masked, float s, float s0, float mv) {
    return masked ? pbw_sg_mod_scale(s, s0, mv) : s;
}

// The scale pm gives channel c of sample n at a pixel whose mask value is mv (0 unless masked):
// the convolution's staging (pbw_cuda_conv.cu) and the blur that scales for the next
// convolution (pbw_cuda_resample.cu) alike.
__device__ __forceinline__ float premod_scale(const pbw_cuda_premod &pm, int n, int c, float mv) {
    return masked_scale(pm.m, pm.s[n * pm.s_nstride + c], pm.m ? pm.s0[n * pm.s0_nstride + c] : 0.0f,
                        mv);
}

// The gradient of y d + noise + bias (sample n, channel c; element i of the (N,O,P) output) from
// go, the gradient of out = act(y d + noise + bias) there, and ov, out's value: sg_bias_act's
// backward (its bias_act_gy_kernel, gy written), with the pre-activation's sign read from
// out's (the leaky ReLU's slope and gain are positive, so out > 0 exactly where the
// pre-activation is). Shared by the convolution's staging (pbw_cuda_conv.cu) and the blur's
// backward (pbw_cuda_resample.cu).
__device__ __forceinline__ float act_grad_from_out(float go, float ov, const pbw_cuda_postact &pa,
                                                   int n, int c, int64_t i) {
    const pbw_cpu_sg_act_geom &g = pa.g;
    const float gp = __fmul_rn(__fmul_rn(go, g.gain), ov > 0 ? 1.0f : g.slope);
    if (!g.d_mode) return __fadd_rn(0.0f, gp);
    return __fmaf_rn(gp, g.d_mode == 2 ? pa.d[i] : pa.d[n * g.d_nstride + c], 0.0f);
}

// The output for y at pixel p of the plane, with scalar loads.
__device__ __forceinline__ float act_at(float yv, const act_plane &a, const pbw_cpu_sg_act_geom &g,
                                        int64_t p) {
    const float dv = g.d_mode == 2 ? a.dp[p] : a.dv, nz = a.noisy ? a.np[p] : 0.0f;
    return act(pre_act(yv, dv, nz, a, g), g);
}

#endif
