/* pbw_cpu_stylegan.c: CPU kernels for the StyleGAN2 ops (contracts in pbw_cpu_stylegan.h).
 *
 * Every kernel is one pass over (N, C, P) feature maps. Work is split over planes (n, c) when
 * the output is per plane, over channels when it reduces over the batch and pixels (style
 * gradients), and over pixel blocks when it reduces over channels (mask and noise gradients),
 * so no two threads ever write the same element.
 */
#include "cpu/pbw_cpu_stylegan.h"

#include <string.h>

#define OMP_MIN_WORK 32768
#define PIX_BLOCK 1024 /* pixels per task of the reductions over channels */

/* ---------- modulate ---------- */

void pbw_cpu_sg_modulate_forward(float *out, const float *x, const float *s, const float *s0,
                                 const float *m, const pbw_cpu_sg_mod_geom *g) {
    const int64_t planes = (int64_t)g->N * g->C, P = g->P;
#pragma omp parallel for schedule(static) if (planes * P > OMP_MIN_WORK)
    for (int64_t i = 0; i < planes; i++) {
        int n = (int)(i / g->C), c = (int)(i % g->C);
        const float *xp = x + i * P;
        float *op = out + i * P;
        float sv = s[n * g->s_nstride + c];
        if (!m) {
            for (int64_t p = 0; p < P; p++) op[p] = xp[p] * sv;
        } else {
            /* s*m + s0*(1-m), rounded step by step as the reference's expression is */
            float s0v = s0[n * g->s0_nstride + c];
            const float *mp = m + n * g->m_nstride;
            for (int64_t p = 0; p < P; p++) {
                float mix = sv * mp[p] + s0v * (1.0f - mp[p]);
                op[p] = xp[p] * mix;
            }
        }
    }
}

void pbw_cpu_sg_modulate_backward(const float *gout, const float *x, const float *s,
                                  const float *s0, const float *m, const pbw_cpu_sg_mod_geom *g,
                                  float *gx, float *gs, float *gs0, float *gm) {
    const int N = g->N, C = g->C;
    const int64_t P = g->P, planes = (int64_t)N * C;
    if (gx) {
#pragma omp parallel for schedule(static) if (planes * P > OMP_MIN_WORK)
        for (int64_t i = 0; i < planes; i++) {
            int n = (int)(i / C), c = (int)(i % C);
            const float *go = gout + i * P;
            float *gxp = gx + i * P;
            float sv = s[n * g->s_nstride + c];
            if (!m) {
                for (int64_t p = 0; p < P; p++) gxp[p] += go[p] * sv;
            } else {
                float s0v = s0[n * g->s0_nstride + c];
                const float *mp = m + n * g->m_nstride;
                for (int64_t p = 0; p < P; p++) gxp[p] += go[p] * (sv * mp[p] + s0v * (1.0f - mp[p]));
            }
        }
    }
    if (gs || gs0) {
        /* one task per channel; a shared style (stride 0) sums over the batch as well */
#pragma omp parallel for schedule(static) if (planes * P > OMP_MIN_WORK)
        for (int c = 0; c < C; c++) {
            for (int n = 0; n < N; n++) {
                const float *go = gout + ((int64_t)n * C + c) * P, *xp = x + ((int64_t)n * C + c) * P;
                double a = 0, b = 0;
                if (!m) {
                    for (int64_t p = 0; p < P; p++) a += (double)(go[p] * xp[p]);
                } else {
                    const float *mp = m + n * g->m_nstride;
                    for (int64_t p = 0; p < P; p++) {
                        float gxv = go[p] * xp[p];
                        a += (double)(gxv * mp[p]);
                        b += (double)(gxv * (1.0f - mp[p]));
                    }
                }
                if (gs) gs[n * g->s_nstride + c] += (float)a;
                if (gs0) gs0[n * g->s0_nstride + c] += (float)b;
            }
        }
    }
    if (gm) {
        /* d out / d m = x * (s - s0), summed over channels (and the batch when m is shared) */
        const int64_t nblk = (P + PIX_BLOCK - 1) / PIX_BLOCK;
        const int mb = g->m_nstride ? N : 1; /* distinct mask rows */
#pragma omp parallel for schedule(static) if (planes * P > OMP_MIN_WORK)
        for (int64_t t = 0; t < mb * nblk; t++) {
            int nm = (int)(t / nblk);
            int64_t p0 = (t % nblk) * PIX_BLOCK, np = P - p0 < PIX_BLOCK ? P - p0 : PIX_BLOCK;
            double acc[PIX_BLOCK];
            memset(acc, 0, sizeof acc);
            int n_lo = g->m_nstride ? nm : 0, n_hi = g->m_nstride ? nm + 1 : N;
            for (int n = n_lo; n < n_hi; n++)
                for (int c = 0; c < C; c++) {
                    float ds = s[n * g->s_nstride + c] - s0[n * g->s0_nstride + c];
                    const float *go = gout + ((int64_t)n * C + c) * P + p0;
                    const float *xp = x + ((int64_t)n * C + c) * P + p0;
                    for (int64_t p = 0; p < np; p++) acc[p] += (double)(go[p] * xp[p] * ds);
                }
            float *gmp = gm + (int64_t)nm * g->m_nstride + p0;
            for (int64_t p = 0; p < np; p++) gmp[p] += (float)acc[p];
        }
    }
}

/* ---------- demodulation + noise + bias + leaky ReLU ---------- */

/* The pre-activation of element p of plane (n, o). */
static inline float pre_act(const float *y, const float *d, const float *nz, float bo,
                            const pbw_cpu_sg_act_geom *g, float dv, int64_t p) {
    float v = y[p];
    if (g->d_mode == 1) v = v * dv;
    else if (g->d_mode == 2) v = v * d[p];
    if (nz) v = v + g->noise_weight * nz[p];
    return v + bo;
}

void pbw_cpu_sg_bias_act_forward(float *out, const float *y, const float *d, const float *noise,
                                 const float *bias, const pbw_cpu_sg_act_geom *g) {
    const int64_t planes = (int64_t)g->N * g->O, P = g->P;
#pragma omp parallel for schedule(static) if (planes * P > OMP_MIN_WORK)
    for (int64_t i = 0; i < planes; i++) {
        int n = (int)(i / g->O), o = (int)(i % g->O);
        const float *yp = y + i * P;
        const float *dp = g->d_mode == 2 ? d + i * P : NULL;
        float dv = g->d_mode == 1 ? d[n * g->d_nstride + o] : 1.0f;
        const float *nz = noise ? noise + n * g->noise_nstride : NULL;
        float bo = bias ? bias[o] : 0.0f, slope = g->slope, gain = g->gain;
        float *op = out + i * P;
        for (int64_t p = 0; p < P; p++) {
            float v = pre_act(yp, dp, nz, bo, g, dv, p);
            op[p] = (v > 0 ? v : v * slope) * gain;
        }
    }
}

void pbw_cpu_sg_bias_act_backward(const float *gout, const float *y, const float *d,
                                  const float *noise, const float *bias,
                                  const pbw_cpu_sg_act_geom *g, float *gy, float *gd,
                                  float *gnoise, float *gbias) {
    const int N = g->N, O = g->O;
    const int64_t P = g->P, planes = (int64_t)N * O;
    /* one task per output channel: it owns that channel's planes of gy and gd and the
     * channel's bias gradient, so per-channel sums need no atomics even when d is shared */
    if (gy || gd || gbias) {
#pragma omp parallel for schedule(static) if (planes * P > OMP_MIN_WORK)
        for (int o = 0; o < O; o++) {
            double bsum = 0;
            for (int n = 0; n < N; n++) {
                int64_t i = (int64_t)n * O + o;
                const float *yp = y + i * P, *go = gout + i * P;
                const float *dp = g->d_mode == 2 ? d + i * P : NULL;
                float dv = g->d_mode == 1 ? d[n * g->d_nstride + o] : 1.0f;
                const float *nz = noise ? noise + n * g->noise_nstride : NULL;
                float bo = bias ? bias[o] : 0.0f, slope = g->slope, gain = g->gain;
                float *gyp = gy ? gy + i * P : NULL;
                float *gdp = gd && g->d_mode == 2 ? gd + i * P : NULL;
                double dsum = 0;
                for (int64_t p = 0; p < P; p++) {
                    float v = pre_act(yp, dp, nz, bo, g, dv, p);
                    float gp = go[p] * gain * (v > 0 ? 1.0f : slope);
                    if (gyp) gyp[p] += gp * (g->d_mode == 1 ? dv : dp ? dp[p] : 1.0f);
                    if (gdp) gdp[p] += gp * yp[p];
                    if (g->d_mode == 1) dsum += (double)(gp * yp[p]);
                    bsum += (double)gp;
                }
                if (gd && g->d_mode == 1) gd[n * g->d_nstride + o] += (float)dsum;
            }
            if (gbias) gbias[o] += (float)bsum;
        }
    }
    if (gnoise) {
        const int64_t nblk = (P + PIX_BLOCK - 1) / PIX_BLOCK;
        const int nb = g->noise_nstride ? N : 1;
#pragma omp parallel for schedule(static) if (planes * P > OMP_MIN_WORK)
        for (int64_t t = 0; t < nb * nblk; t++) {
            int nn = (int)(t / nblk);
            int64_t p0 = (t % nblk) * PIX_BLOCK, np = P - p0 < PIX_BLOCK ? P - p0 : PIX_BLOCK;
            double acc[PIX_BLOCK];
            memset(acc, 0, sizeof acc);
            int n_lo = g->noise_nstride ? nn : 0, n_hi = g->noise_nstride ? nn + 1 : N;
            for (int n = n_lo; n < n_hi; n++)
                for (int o = 0; o < O; o++) {
                    int64_t i = (int64_t)n * O + o;
                    const float *yp = y + i * P, *go = gout + i * P;
                    const float *dp = g->d_mode == 2 ? d + i * P : NULL;
                    float dv = g->d_mode == 1 ? d[n * g->d_nstride + o] : 1.0f;
                    const float *nz = noise + n * g->noise_nstride;
                    float bo = bias ? bias[o] : 0.0f;
                    for (int64_t p = p0; p < p0 + np; p++) {
                        float v = pre_act(yp, dp, nz, bo, g, dv, p);
                        float gp = go[p] * g->gain * (v > 0 ? 1.0f : g->slope);
                        acc[p - p0] += (double)(gp * g->noise_weight);
                    }
                }
            float *gnp = gnoise + (int64_t)nn * g->noise_nstride + p0;
            for (int64_t p = 0; p < np; p++) gnp[p] += (float)acc[p];
        }
    }
}
