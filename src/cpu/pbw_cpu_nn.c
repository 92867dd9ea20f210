/* pbw_cpu_nn.c: GEMM (OpenBLAS), layer and batch norm, softmax and attention kernels. */
#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <string.h>

#include "pbw_cpu.h"
#include "pbw_cpu_math.h"

void pbw_cpu_gemm_batched(int trans_a, int trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                          const float *A, int64_t lda, int64_t stride_a, const float *B,
                          int64_t ldb, int64_t stride_b, float beta, float *C, int64_t ldc,
                          int64_t stride_c, int64_t batch) {
    /* When every batch item shares B and A's items are consecutive rows, one tall GEMM does it
     * all and lets BLAS pick the blocking. */
    if (batch > 1 && stride_b == 0 && !trans_a && stride_a == M * lda && lda == K &&
        stride_c == M * ldc && ldc == N) {
        M *= batch;
        batch = 1;
    }
    for (int64_t i = 0; i < batch; i++)
        cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
                    trans_b ? CblasTrans : CblasNoTrans, (int)M, (int)N, (int)K, alpha,
                    A + i * stride_a, (int)lda, B + i * stride_b, (int)ldb, beta,
                    C + i * stride_c, (int)ldc);
}

void pbw_cpu_layer_norm_forward(const float *x, const float *w, const float *b, float *y,
                                float *mean, float *rstd, int64_t R, int64_t D, float eps) {
#pragma omp parallel for schedule(static) if (R * D > 16384)
    for (int64_t r = 0; r < R; r++) {
        const float *xr = x + r * D;
        float *yr = y + r * D;
        double s = 0, s2 = 0;
        for (int64_t i = 0; i < D; i++) s += xr[i];
        double m = s / (double)D;
        for (int64_t i = 0; i < D; i++) {
            double d = xr[i] - m;
            s2 += d * d;
        }
        float rs = (float)(1.0 / sqrt(s2 / (double)D + eps));
        float mf = (float)m;
        for (int64_t i = 0; i < D; i++) {
            float v = (xr[i] - mf) * rs;
            yr[i] = v * (w ? w[i] : 1.0f) + (b ? b[i] : 0.0f);
        }
        mean[r] = mf;
        rstd[r] = rs;
    }
}

void pbw_cpu_layer_norm_backward(const float *x, const float *w, const float *mean,
                                 const float *rstd, const float *gy, float *gx, float *gw,
                                 float *gb, int64_t R, int64_t D) {
    if (gx) {
#pragma omp parallel for schedule(static) if (R * D > 16384)
        for (int64_t r = 0; r < R; r++) {
            const float *xr = x + r * D, *gr = gy + r * D;
            float m = mean[r], rs = rstd[r];
            double a = 0, c = 0; /* mean of g*w and of g*w*xhat */
            for (int64_t i = 0; i < D; i++) {
                float gw_ = gr[i] * (w ? w[i] : 1.0f);
                a += gw_;
                c += gw_ * (xr[i] - m) * rs;
            }
            float af = (float)(a / (double)D), cf = (float)(c / (double)D);
            for (int64_t i = 0; i < D; i++) {
                float xh = (xr[i] - m) * rs;
                float gw_ = gr[i] * (w ? w[i] : 1.0f);
                gx[r * D + i] += rs * (gw_ - af - xh * cf);
            }
        }
    }
    if (gw || gb) {
#pragma omp parallel for schedule(static) if (R * D > 16384)
        for (int64_t i = 0; i < D; i++) {
            double sw = 0, sb = 0;
            for (int64_t r = 0; r < R; r++) {
                float g = gy[r * D + i];
                sw += g * (x[r * D + i] - mean[r]) * rstd[r];
                sb += g;
            }
            if (gw) gw[i] += (float)sw;
            if (gb) gb[i] += (float)sb;
        }
    }
}

void pbw_cpu_batch_norm_forward(const float *x, const float *mean, const float *rstd,
                                const float *w, const float *b, float *y, int64_t N, int64_t C,
                                int64_t S) {
#pragma omp parallel for collapse(2) schedule(static) if (N * C * S > 32768)
    for (int64_t n = 0; n < N; n++)
        for (int64_t c = 0; c < C; c++) {
            float sc = rstd[c] * (w ? w[c] : 1.0f);
            float sh = (b ? b[c] : 0.0f) - mean[c] * sc;
            const float *xp = x + (n * C + c) * S;
            float *yp = y + (n * C + c) * S;
            for (int64_t i = 0; i < S; i++) yp[i] = xp[i] * sc + sh;
        }
}

void pbw_cpu_batch_norm_backward(const float *x, const float *mean, const float *rstd,
                                 const float *w, const float *gy, float *gx, float *gw,
                                 float *gb, int64_t N, int64_t C, int64_t S) {
#pragma omp parallel for schedule(static) if (N * C * S > 32768)
    for (int64_t c = 0; c < C; c++) {
        float sc = rstd[c] * (w ? w[c] : 1.0f);
        double sw = 0, sb = 0;
        for (int64_t n = 0; n < N; n++) {
            const float *xp = x + (n * C + c) * S, *gp = gy + (n * C + c) * S;
            if (gx) {
                float *gxp = gx + (n * C + c) * S;
                for (int64_t i = 0; i < S; i++) gxp[i] += gp[i] * sc;
            }
            if (gw || gb)
                for (int64_t i = 0; i < S; i++) {
                    sw += gp[i] * (xp[i] - mean[c]) * rstd[c];
                    sb += gp[i];
                }
        }
        if (gw) gw[c] += (float)sw;
        if (gb) gb[c] += (float)sb;
    }
}

static void softmax_row(const float *x, float *y, int64_t D) {
    float mx = -INFINITY;
    for (int64_t i = 0; i < D; i++) mx = x[i] > mx ? x[i] : mx;
    if (mx == -INFINITY) { /* every entry masked: define the row as zeros, not NaN */
        memset(y, 0, (size_t)D * sizeof(float));
        return;
    }
    double s = 0;
    for (int64_t i = 0; i < D; i++) {
        y[i] = expf(x[i] - mx);
        s += y[i];
    }
    float inv = (float)(1.0 / s);
    for (int64_t i = 0; i < D; i++) y[i] *= inv;
}

void pbw_cpu_softmax_forward(const float *x, float *y, int64_t R, int64_t D) {
#pragma omp parallel for schedule(static) if (R * D > 16384)
    for (int64_t r = 0; r < R; r++) softmax_row(x + r * D, y + r * D, D);
}

static void softmax_row_backward(const float *y, const float *gy, float *gx, int64_t D) {
    double dot = 0;
    for (int64_t i = 0; i < D; i++) dot += (double)y[i] * gy[i];
    float d = (float)dot;
    for (int64_t i = 0; i < D; i++) gx[i] += y[i] * (gy[i] - d);
}

void pbw_cpu_softmax_backward(const float *y, const float *gy, float *gx, int64_t R, int64_t D) {
#pragma omp parallel for schedule(static) if (R * D > 16384)
    for (int64_t r = 0; r < R; r++) softmax_row_backward(y + r * D, gy + r * D, gx + r * D, D);
}

/* ---- attention ----
 * Per (batch, head): scores = scale * q k^T, softmax (causal: key s > query t excluded), o = p v.
 * Heads are small (T, S up to a few hundred, D = 64 in CLIP), so each (batch, head) is one
 * OpenMP task and its products are loops the compiler vectorizes: dot products four keys at a
 * time (four independent FMA chains) and weighted row sums with the D outputs kept in
 * registers. q, k, v, o and their gradients are addressed through strides, so the same kernel
 * serves (B,H,T,D) tensors and packed (B,T,3W) projections. */

/* Four dot products of a with b0..b3 (n elements each). */
static inline void dot4(const float *a, const float *b0, const float *b1, const float *b2,
                        const float *b3, int64_t n, float *out) {
    float s0[8] = {0}, s1[8] = {0}, s2[8] = {0}, s3[8] = {0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++) {
            s0[j] = fmaf(a[i + j], b0[i + j], s0[j]);
            s1[j] = fmaf(a[i + j], b1[i + j], s1[j]);
            s2[j] = fmaf(a[i + j], b2[i + j], s2[j]);
            s3[j] = fmaf(a[i + j], b3[i + j], s3[j]);
        }
    float r[4] = {0, 0, 0, 0};
    for (int j = 0; j < 8; j++) {
        r[0] += s0[j];
        r[1] += s1[j];
        r[2] += s2[j];
        r[3] += s3[j];
    }
    for (; i < n; i++) {
        r[0] = fmaf(a[i], b0[i], r[0]);
        r[1] = fmaf(a[i], b1[i], r[1]);
        r[2] = fmaf(a[i], b2[i], r[2]);
        r[3] = fmaf(a[i], b3[i], r[3]);
    }
    memcpy(out, r, sizeof r);
}

/* out[s] = a . rows[s] for s < n; rows at stride rs. */
static void dots(const float *a, const float *rows, int64_t rs, int64_t n, int64_t D, float *out) {
    int64_t s = 0;
    for (; s + 4 <= n; s += 4)
        dot4(a, rows + s * rs, rows + (s + 1) * rs, rows + (s + 2) * rs, rows + (s + 3) * rs, D,
             out + s);
    for (; s < n; s++) {
        float r4[4];
        dot4(a, rows + s * rs, rows + s * rs, rows + s * rs, rows + s * rs, D, r4);
        out[s] = r4[0];
    }
}

/* out[0:D] (+)= sum_{s<n} w[s] * rows[s][0:D]; with D = 64 the sums stay in registers. */
static void wsum(float *out, const float *w, const float *rows, int64_t rs, int64_t n, int64_t D,
                 int accumulate) {
    if (D == 64) {
        float acc[64];
        for (int j = 0; j < 64; j++) acc[j] = accumulate ? out[j] : 0.0f;
        for (int64_t s = 0; s < n; s++) {
            const float *r = rows + s * rs;
            float ws = w[s];
            for (int j = 0; j < 64; j++) acc[j] = fmaf(ws, r[j], acc[j]);
        }
        memcpy(out, acc, sizeof acc);
        return;
    }
    if (!accumulate) memset(out, 0, (size_t)D * sizeof(float));
    for (int64_t s = 0; s < n; s++) {
        const float *r = rows + s * rs;
        float ws = w[s];
        for (int64_t j = 0; j < D; j++) out[j] = fmaf(ws, r[j], out[j]);
    }
}

/* y[0:D] += a * x[0:D] */
static inline void axpy(float *y, float a, const float *x, int64_t D) {
    for (int64_t j = 0; j < D; j++) y[j] = fmaf(a, x[j], y[j]);
}

void pbw_cpu_attention_fwd(const pbw_attn_geom *g, const float *q, const float *k,
                           const float *v, float *p, float *o) {
    const int64_t B = g->B, H = g->H, T = g->T, S = g->S, D = g->D;
#pragma omp parallel for schedule(static)
    for (int64_t bh = 0; bh < B * H; bh++) {
        int64_t b = bh / H, h = bh % H;
        const float *qh = q + b * g->q[0] + h * g->q[1], *kh = k + b * g->k[0] + h * g->k[1];
        const float *vh = v + b * g->v[0] + h * g->v[1];
        float *oh = o + b * g->o[0] + h * g->o[1];
        for (int64_t t = 0; t < T; t++) {
            int64_t n = g->causal ? (t + 1 < S ? t + 1 : S) : S;
            float *pr = p + (bh * T + t) * S;
            dots(qh + t * g->q[2], kh, g->k[2], n, D, pr);
            float mx = -INFINITY, sum = 0;
            for (int64_t s = 0; s < n; s++) {
                pr[s] *= g->scale;
                mx = pr[s] > mx ? pr[s] : mx;
            }
            for (int64_t s = 0; s < n; s++) pr[s] = pbw_expf(pr[s] - mx);
            for (int64_t s = 0; s < n; s++) sum += pr[s];
            float inv = 1.0f / sum;
            for (int64_t s = 0; s < n; s++) pr[s] *= inv;
            for (int64_t s = n; s < S; s++) pr[s] = 0.0f;
            wsum(oh + t * g->o[2], pr, vh, g->v[2], n, D, 0);
        }
    }
}

void pbw_cpu_attention_bwd(const pbw_attn_geom *g, const float *q, const float *k,
                           const float *v, const float *p, const float *go, float *gq,
                           float *gk, float *gv, float *scratch) {
    const int64_t B = g->B, H = g->H, T = g->T, S = g->S, D = g->D;
#pragma omp parallel for schedule(static)
    for (int64_t bh = 0; bh < B * H; bh++) {
        float *ds = scratch + (int64_t)omp_get_thread_num() * S; /* d loss / d scores, one row */
        int64_t b = bh / H, h = bh % H;
        const float *qh = q + b * g->q[0] + h * g->q[1], *kh = k + b * g->k[0] + h * g->k[1];
        const float *vh = v + b * g->v[0] + h * g->v[1];
        const float *goh = go + b * g->o[0] + h * g->o[1];
        float *gqh = gq ? gq + b * g->q[0] + h * g->q[1] : NULL;
        float *gkh = gk ? gk + b * g->k[0] + h * g->k[1] : NULL;
        float *gvh = gv ? gv + b * g->v[0] + h * g->v[1] : NULL;
        for (int64_t t = 0; t < T; t++) {
            int64_t n = g->causal ? (t + 1 < S ? t + 1 : S) : S;
            const float *pr = p + (bh * T + t) * S, *gor = goh + t * g->o[2];
            if (gvh) /* dV += P^T dO */
                for (int64_t s = 0; s < n; s++) axpy(gvh + s * g->v[2], pr[s], gor, D);
            if (!gqh && !gkh) continue;
            dots(gor, vh, g->v[2], n, D, ds); /* dP = dO V^T */
            float dot = 0;
            for (int64_t s = 0; s < n; s++) dot = fmaf(pr[s], ds[s], dot);
            for (int64_t s = 0; s < n; s++) ds[s] = pr[s] * (ds[s] - dot) * g->scale;
            if (gqh) wsum(gqh + t * g->q[2], ds, kh, g->k[2], n, D, 1); /* dQ += dS K */
            if (gkh) /* dK += dS^T Q */
                for (int64_t s = 0; s < n; s++) axpy(gkh + s * g->k[2], ds[s], qh + t * g->q[2], D);
        }
    }
}

void pbw_cpu_attention_forward(const float *q, const float *k, const float *v, float *p,
                               float *o, int64_t BH, int64_t T, int64_t S, int64_t D,
                               float scale, int causal) {
    pbw_attn_geom g = {BH, 1, T, S, D, {T * D, 0, D}, {S * D, 0, D}, {S * D, 0, D},
                       {T * D, 0, D}, scale, causal};
    pbw_cpu_attention_fwd(&g, q, k, v, p, o);
}

void pbw_cpu_attention_backward(const float *q, const float *k, const float *v, const float *p,
                                const float *go, float *gq, float *gk, float *gv, int64_t BH,
                                int64_t T, int64_t S, int64_t D, float scale, float *scratch) {
    /* the old contract: scratch holds T*S floats per thread, at least the S used here; the
     * causal flag is implied by p (excluded keys have weight 0) */
    pbw_attn_geom g = {BH, 1, T, S, D, {T * D, 0, D}, {S * D, 0, D}, {S * D, 0, D},
                       {T * D, 0, D}, scale, 0};
    pbw_cpu_attention_bwd(&g, q, k, v, p, go, gq, gk, gv, scratch);
}
