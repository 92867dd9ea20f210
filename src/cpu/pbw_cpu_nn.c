/* pbw_cpu_nn.c: GEMM (OpenBLAS), layer and batch norm, softmax and attention kernels. */
#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <string.h>

#include "pbw_cpu.h"

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

/* Small per-head matrices (T, S <= a few hundred, D = 64): plain loops over (batch*head) in
 * parallel, each head's products done with single-threaded loops the compiler vectorizes. */
void pbw_cpu_attention_forward(const float *q, const float *k, const float *v, float *p,
                               float *o, int64_t BH, int64_t T, int64_t S, int64_t D,
                               float scale, int causal) {
#pragma omp parallel for schedule(static)
    for (int64_t h = 0; h < BH; h++) {
        const float *qh = q + h * T * D, *kh = k + h * S * D, *vh = v + h * S * D;
        float *ph = p + h * T * S, *oh = o + h * T * D;
        for (int64_t t = 0; t < T; t++) {
            float *pr = ph + t * S;
            for (int64_t s = 0; s < S; s++) {
                if (causal && s > t) {
                    pr[s] = -INFINITY;
                    continue;
                }
                float acc = 0;
                for (int64_t d = 0; d < D; d++) acc += qh[t * D + d] * kh[s * D + d];
                pr[s] = acc * scale;
            }
            softmax_row(pr, pr, S);
            float *orow = oh + t * D;
            memset(orow, 0, (size_t)D * sizeof(float));
            for (int64_t s = 0; s < S; s++) {
                float w = pr[s];
                if (w == 0.0f) continue;
                for (int64_t d = 0; d < D; d++) orow[d] += w * vh[s * D + d];
            }
        }
    }
}

void pbw_cpu_attention_backward(const float *q, const float *k, const float *v, const float *p,
                                const float *go, float *gq, float *gk, float *gv, int64_t BH,
                                int64_t T, int64_t S, int64_t D, float scale, float *scratch) {
#pragma omp parallel for schedule(static)
    for (int64_t h = 0; h < BH; h++) {
        float *gs = scratch + (int64_t)omp_get_thread_num() * T * S; /* d loss / d scores */
        const float *qh = q + h * T * D, *kh = k + h * S * D, *vh = v + h * S * D;
        const float *ph = p + h * T * S, *goh = go + h * T * D;
        for (int64_t t = 0; t < T; t++) {
            const float *pr = ph + t * S, *gor = goh + t * D;
            float *gsr = gs + t * S;
            double dot = 0;
            for (int64_t s = 0; s < S; s++) {
                float acc = 0; /* dP = dO V^T */
                if (pr[s] != 0.0f)
                    for (int64_t d = 0; d < D; d++) acc += gor[d] * vh[s * D + d];
                gsr[s] = acc;
                dot += (double)acc * pr[s];
            }
            for (int64_t s = 0; s < S; s++) gsr[s] = pr[s] * (gsr[s] - (float)dot) * scale;
        }
        if (gv) { /* dV = P^T dO */
            float *gvh = gv + h * S * D;
            for (int64_t t = 0; t < T; t++)
                for (int64_t s = 0; s < S; s++) {
                    float w = ph[t * S + s];
                    if (w == 0.0f) continue;
                    for (int64_t d = 0; d < D; d++) gvh[s * D + d] += w * goh[t * D + d];
                }
        }
        if (gq) { /* dQ = dS K */
            float *gqh = gq + h * T * D;
            for (int64_t t = 0; t < T; t++)
                for (int64_t s = 0; s < S; s++) {
                    float w = gs[t * S + s];
                    if (w == 0.0f) continue;
                    for (int64_t d = 0; d < D; d++) gqh[t * D + d] += w * kh[s * D + d];
                }
        }
        if (gk) { /* dK = dS^T Q */
            float *gkh = gk + h * S * D;
            for (int64_t t = 0; t < T; t++)
                for (int64_t s = 0; s < S; s++) {
                    float w = gs[t * S + s];
                    if (w == 0.0f) continue;
                    for (int64_t d = 0; d < D; d++) gkh[s * D + d] += w * qh[t * D + d];
                }
        }
    }
}
