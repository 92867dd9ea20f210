/* pbw_cpu_stylegan.c: CPU kernels for the StyleGAN2 ops (contracts in pbw_cpu_stylegan.h).
 *
 * Every kernel is one pass over (N, C, P) feature maps. Work is split over planes (n, c) when
 * the output is per plane, over channels when it reduces over the batch and pixels (style
 * gradients), and over pixel blocks when it reduces over channels (mask and noise gradients),
 * so no two threads ever write the same element.
 */
#include "cpu/pbw_cpu_stylegan.h"
#include "cpu/pbw_cpu_threads.h"

#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#define OMP_MIN_WORK 32768
#define PIX_BLOCK 1024 /* pixels per task of the reductions over channels */

/* Sums over pixels: 16 float lanes per block of BLK pixels (vectorizable, and short enough
 * that float lanes lose nothing measurable), blocks accumulated in double. */
#define BLK 512

static double sum_f(const float *a, int64_t n) {
    double total = 0;
    for (int64_t p0 = 0; p0 < n; p0 += BLK) {
        int64_t len = n - p0 < BLK ? n - p0 : BLK, p = 0;
        float acc[16] = {0};
        for (; p + 16 <= len; p += 16)
            for (int j = 0; j < 16; j++) acc[j] += a[p0 + p + j];
        for (; p < len; p++) acc[0] += a[p0 + p];
        double b = 0;
        for (int j = 0; j < 16; j++) b += acc[j];
        total += b;
    }
    return total;
}

static double dot_f(const float *a, const float *b, int64_t n) {
    double total = 0;
    for (int64_t p0 = 0; p0 < n; p0 += BLK) {
        int64_t len = n - p0 < BLK ? n - p0 : BLK, p = 0;
        float acc[16] = {0};
        for (; p + 16 <= len; p += 16)
            for (int j = 0; j < 16; j++) acc[j] += a[p0 + p + j] * b[p0 + p + j];
        for (; p < len; p++) acc[0] += a[p0 + p] * b[p0 + p];
        double t = 0;
        for (int j = 0; j < 16; j++) t += acc[j];
        total += t;
    }
    return total;
}

/* ---------- modulate ---------- */

void pbw_cpu_sg_modulate_forward(float *out, const float *x, const float *s, const float *s0,
                                 const float *m, const pbw_cpu_sg_mod_geom *g) {
    const int64_t planes = (int64_t)g->N * g->C, P = g->P;
#pragma omp parallel for schedule(static) if (planes * P > OMP_MIN_WORK)
    for (int64_t i = 0; i < planes; i++) {
        int n = (int)(i / g->C), c = (int)(i % g->C);
        const float *xp = x + i * P;
        float *op = out + i * P;
        const float sv = s[n * g->s_nstride + c];
        if (!m) {
            for (int64_t p = 0; p < P; p++) op[p] = xp[p] * sv;
        } else {
            /* s*m + s0*(1-m), rounded step by step as the reference's expression is */
            const float s0v = s0[n * g->s0_nstride + c];
            const float *mp = m + n * g->m_nstride;
            for (int64_t p = 0; p < P; p++) op[p] = xp[p] * (sv * mp[p] + s0v * (1.0f - mp[p]));
        }
    }
}

void pbw_cpu_sg_modulate_backward(const float *gout, const float *x, const float *s,
                                  const float *s0, const float *m, const pbw_cpu_sg_mod_geom *g,
                                  float *gx, float *gs, float *gs0, float *gm, int gx_add) {
    const int N = g->N, C = g->C;
    const int64_t P = g->P, planes = (int64_t)N * C;
    if (gx) {
#pragma omp parallel for schedule(static) if (planes * P > OMP_MIN_WORK)
        for (int64_t i = 0; i < planes; i++) {
            int n = (int)(i / C), c = (int)(i % C);
            const float *go = gout + i * P;
            float *gxp = gx + i * P;
            const float sv = s[n * g->s_nstride + c];
            if (!gx_add) memset(gxp, 0, (size_t)P * sizeof *gxp);
            if (!m) {
                for (int64_t p = 0; p < P; p++) gxp[p] += go[p] * sv;
            } else {
                const float s0v = s0[n * g->s0_nstride + c];
                const float *mp = m + n * g->m_nstride;
                for (int64_t p = 0; p < P; p++) gxp[p] += go[p] * (sv * mp[p] + s0v * (1.0f - mp[p]));
            }
        }
    }
    if (gs || gs0) {
        /* one task per channel; a shared style (stride 0) sums over the batch as well */
#pragma omp parallel for schedule(static) if (planes * P > OMP_MIN_WORK)
        for (int c = 0; c < C; c++) {
            float t[BLK], u[BLK];
            for (int n = 0; n < N; n++) {
                const float *go = gout + ((int64_t)n * C + c) * P, *xp = x + ((int64_t)n * C + c) * P;
                double a = 0, b = 0;
                if (!m) {
                    a = dot_f(go, xp, P);
                } else {
                    /* d/ds = sum g x m, d/ds0 = sum g x (1-m), blockwise through t = g x */
                    const float *mp = m + n * g->m_nstride;
                    for (int64_t p0 = 0; p0 < P; p0 += BLK) {
                        int64_t len = P - p0 < BLK ? P - p0 : BLK;
                        for (int64_t p = 0; p < len; p++) {
                            t[p] = go[p0 + p] * xp[p0 + p];
                            u[p] = 1.0f - mp[p0 + p];
                        }
                        a += dot_f(t, mp + p0, len);
                        b += dot_f(t, u, len);
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

/* 1 where x > 0, else slope: the leaky ReLU's derivative, as a bit select so that the loops
 * using it vectorize (a conditional multiply does not under GCC's default -ftrapping-math). */
static inline float lrelu_slope(float x, float slope) {
    uint32_t one, sl, m = -(uint32_t)(x > 0), fb;
    const float onef = 1.0f;
    memcpy(&one, &onef, 4);
    memcpy(&sl, &slope, 4);
    fb = (m & one) | (~m & sl);
    float f;
    memcpy(&f, &fb, 4);
    return f;
}

/* pre[0..len) of one plane, in the reference's order: y*d, + noise_weight*noise, + bias. One
 * loop per case so that each vectorizes. */
static void pre_block(float *pre, const float *yp, const float *dp, float dv, const float *nz,
                      float nw, float bo, int d_mode, int64_t len) {
    if (d_mode == 1)
        for (int64_t p = 0; p < len; p++) pre[p] = yp[p] * dv;
    else if (d_mode == 2)
        for (int64_t p = 0; p < len; p++) pre[p] = yp[p] * dp[p];
    else
        for (int64_t p = 0; p < len; p++) pre[p] = yp[p];
    if (nz)
        for (int64_t p = 0; p < len; p++) pre[p] = pre[p] + nw * nz[p];
    for (int64_t p = 0; p < len; p++) pre[p] = pre[p] + bo;
}

void pbw_cpu_sg_bias_act_forward(float *out, const float *y, const float *d, const float *noise,
                                 const float *bias, const pbw_cpu_sg_act_geom *g) {
    const int64_t planes = (int64_t)g->N * g->O, P = g->P;
#pragma omp parallel for schedule(static) if (planes * P > OMP_MIN_WORK)
    for (int64_t i = 0; i < planes; i++) {
        int n = (int)(i / g->O), o = (int)(i % g->O);
        const float *yp = y + i * P;
        const float *dp = g->d_mode == 2 ? d + i * P : NULL;
        const float dv = g->d_mode == 1 ? d[n * g->d_nstride + o] : 1.0f;
        const float *nz = noise ? noise + n * g->noise_nstride : NULL;
        const float bo = bias ? bias[o] : 0.0f, slope = g->slope, gain = g->gain;
        float *op = out + i * P;
        pre_block(op, yp, dp, dv, nz, g->noise_weight, bo, g->d_mode, P);
        for (int64_t p = 0; p < P; p++) op[p] = (op[p] > 0 ? op[p] : op[p] * slope) * gain;
    }
}

void pbw_cpu_sg_bias_act_backward(const float *gout, const float *y, const float *d,
                                  const float *noise, const float *bias,
                                  const pbw_cpu_sg_act_geom *g, float *gy, float *gd,
                                  float *gnoise, float *gbias, int gy_add) {
    const int N = g->N, O = g->O;
    const int64_t P = g->P, planes = (int64_t)N * O;
    /* one task per output channel: it owns that channel's planes of gy and gd and the
     * channel's bias gradient, so per-channel sums need no atomics even when d is shared */
    if (gy || gd || gbias) {
#pragma omp parallel for schedule(static) if (planes * P > OMP_MIN_WORK)
        for (int o = 0; o < O; o++) {
            float gp[BLK];
            double bsum = 0;
            for (int n = 0; n < N; n++) {
                int64_t i = (int64_t)n * O + o;
                const float *yp = y + i * P, *go = gout + i * P;
                const float *dp = g->d_mode == 2 ? d + i * P : NULL;
                const float dv = g->d_mode == 1 ? d[n * g->d_nstride + o] : 1.0f;
                const float *nz = noise ? noise + n * g->noise_nstride : NULL;
                const float bo = bias ? bias[o] : 0.0f, slope = g->slope, gain = g->gain;
                float *gyp = gy ? gy + i * P : NULL;
                if (gyp && !gy_add) memset(gyp, 0, (size_t)P * sizeof *gyp);
                float *gdp = gd && g->d_mode == 2 ? gd + i * P : NULL;
                double dsum = 0;
                for (int64_t p0 = 0; p0 < P; p0 += BLK) {
                    int64_t len = P - p0 < BLK ? P - p0 : BLK;
                    /* gp = d out / d pre */
                    pre_block(gp, yp + p0, dp ? dp + p0 : NULL, dv, nz ? nz + p0 : NULL,
                              g->noise_weight, bo, g->d_mode, len);
                    for (int64_t p = 0; p < len; p++)
                        gp[p] = go[p0 + p] * gain * lrelu_slope(gp[p], slope);
                    if (gyp) {
                        if (g->d_mode == 1)
                            for (int64_t p = 0; p < len; p++) gyp[p0 + p] += gp[p] * dv;
                        else if (g->d_mode == 2)
                            for (int64_t p = 0; p < len; p++) gyp[p0 + p] += gp[p] * dp[p0 + p];
                        else
                            for (int64_t p = 0; p < len; p++) gyp[p0 + p] += gp[p];
                    }
                    if (gdp)
                        for (int64_t p = 0; p < len; p++) gdp[p0 + p] += gp[p] * yp[p0 + p];
                    if (gd && g->d_mode == 1) dsum += dot_f(gp, yp + p0, len);
                    if (gbias) bsum += sum_f(gp, len);
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

/* ---------- separable FIR blur ---------- */

/* Lengths below are small (a 4-tap kernel on rows of a few hundred); each loop runs over a
 * clipped range of outputs for one tap, so the inner loops are plain vectorizable axpys. */

size_t pbw_cpu_sg_blur_scratch_floats(int H, int W, int OH, int OW, int nthreads) {
    (void)W;
    (void)OH;
    size_t per = ((size_t)H * OW + 15) / 16 * 16;
    return per * (size_t)(nthreads > 0 ? nthreads : 1);
}

static int imax(int a, int b) { return a > b ? a : b; }
static int imin(int a, int b) { return a < b ? a : b; }

void pbw_cpu_sg_blur_forward(float *out, const float *x, int64_t planes, int H, int W, int OH,
                             int OW, const float *kv, const float *kh, int K, int p0,
                             float *scratch, int nthreads) {
    const size_t per = pbw_cpu_sg_blur_scratch_floats(H, W, OH, OW, 1);
    float kfh[16], kfv[16]; /* flipped: true convolution */
    for (int j = 0; j < K; j++) kfh[j] = kh[K - 1 - j], kfv[j] = kv[K - 1 - j];
#pragma omp parallel for schedule(static) num_threads(nthreads) if (planes * OH * OW > OMP_MIN_WORK)
    for (int64_t pl = 0; pl < planes; pl++) {
        int tid = pbw_cpu_thread_id();
        float *t = scratch + per * (size_t)tid; /* (H, OW): rows filtered */
        const float *xp = x + pl * H * W;
        float *op = out + pl * OH * OW;
        for (int y = 0; y < H; y++) {
            const float *row = xp + (int64_t)y * W;
            float *tr = t + (int64_t)y * OW;
            memset(tr, 0, (size_t)OW * sizeof(float));
            for (int j = 0; j < K; j++) {
                /* tr[o] += kf[j] * row[o + j - p0] for o + j - p0 in [0, W) */
                int lo = imax(0, p0 - j), hi = imin(OW, W + p0 - j);
                const float *src = row + j - p0;
                const float kj = kfh[j];
                for (int o = lo; o < hi; o++) tr[o] += kj * src[o];
            }
        }
        for (int oy = 0; oy < OH; oy++) {
            float *orow = op + (int64_t)oy * OW;
            memset(orow, 0, (size_t)OW * sizeof(float));
            for (int j = 0; j < K; j++) {
                int iy = oy + j - p0;
                if (iy < 0 || iy >= H) continue;
                const float *tr = t + (int64_t)iy * OW;
                const float kj = kfv[j];
                for (int o = 0; o < OW; o++) orow[o] += kj * tr[o];
            }
        }
    }
}

void pbw_cpu_sg_blur_backward(float *gx, const float *gout, int64_t planes, int H, int W, int OH,
                              int OW, const float *kv, const float *kh, int K, int p0,
                              float *scratch, int nthreads) {
    const size_t per = pbw_cpu_sg_blur_scratch_floats(H, W, OH, OW, 1);
    float kfh[16], kfv[16];
    for (int j = 0; j < K; j++) kfh[j] = kh[K - 1 - j], kfv[j] = kv[K - 1 - j];
#pragma omp parallel for schedule(static) num_threads(nthreads) if (planes * OH * OW > OMP_MIN_WORK)
    for (int64_t pl = 0; pl < planes; pl++) {
        int tid = pbw_cpu_thread_id();
        float *t = scratch + per * (size_t)tid; /* (H, OW): gradient of the row-filtered map */
        const float *gp = gout + pl * OH * OW;
        float *gxp = gx + pl * H * W;
        memset(t, 0, (size_t)H * OW * sizeof(float));
        for (int oy = 0; oy < OH; oy++) {
            const float *grow = gp + (int64_t)oy * OW;
            for (int j = 0; j < K; j++) {
                int iy = oy + j - p0;
                if (iy < 0 || iy >= H) continue;
                float *tr = t + (int64_t)iy * OW;
                const float kj = kfv[j];
                for (int o = 0; o < OW; o++) tr[o] += kj * grow[o];
            }
        }
        for (int y = 0; y < H; y++) {
            const float *tr = t + (int64_t)y * OW;
            float *row = gxp + (int64_t)y * W;
            for (int j = 0; j < K; j++) {
                int lo = imax(0, p0 - j), hi = imin(OW, W + p0 - j);
                float *dst = row + j - p0;
                const float kj = kfh[j];
                for (int o = lo; o < hi; o++) dst[o] += kj * tr[o];
            }
        }
    }
}
