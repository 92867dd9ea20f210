/* pbw_cpu_nn.c: GEMM (OpenBLAS on the OpenMP team), layer and batch norm, softmax and attention
 * kernels. */
#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <string.h>

#include "pbw_cpu.h"
#include "pbw_cpu_math.h"
#include "pbw_cpu_threads.h"

/* One GEMM on the OpenMP team: each thread runs a single-threaded sgemm on its block of rows
 * (or of columns, when C is wide and short). OpenBLAS's own thread pool stays idle, so the
 * elementwise kernels and the GEMMs share one pool: with two pools, threads of one spin or
 * yield on the cores while the other works, which costs up to half the time on a busy machine.
 * Small products, or calls from inside a parallel region, run on the calling thread. */
static void gemm_team(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int64_t M, int64_t N, int64_t K,
                      float alpha, const float *A, int64_t lda, const float *B, int64_t ldb,
                      float beta, float *C, int64_t ldc) {
    int nt = omp_get_max_threads();
    if (nt <= 1 || omp_in_parallel() || (double)M * (double)N * (double)K < 2e6) {
        cblas_sgemm(CblasRowMajor, ta, tb, (int)M, (int)N, (int)K, alpha, A, (int)lda, B, (int)ldb,
                    beta, C, (int)ldc);
        return;
    }
    int by_rows = M >= 16 * (int64_t)nt || M >= N;
    int64_t L = by_rows ? M : N;
    int saved = openblas_get_num_threads();
    openblas_set_num_threads(1);
#pragma omp parallel num_threads(nt)
    {
        int id = omp_get_thread_num(), n = omp_get_num_threads();
        /* blocks of whole 16-element panels keep each thread's sgemm on full kernel tiles */
        int64_t panels = (L + 15) / 16, p0 = panels * id / n, p1 = panels * (id + 1) / n;
        int64_t l0 = p0 * 16, l1 = p1 * 16 < L ? p1 * 16 : L;
        if (l1 > l0) {
            if (by_rows) /* rows l0..l1 of C: rows of A, or columns when A is transposed */
                cblas_sgemm(CblasRowMajor, ta, tb, (int)(l1 - l0), (int)N, (int)K, alpha,
                            A + (ta == CblasTrans ? l0 : l0 * lda), (int)lda, B, (int)ldb, beta,
                            C + l0 * ldc, (int)ldc);
            else /* columns l0..l1 of C: columns of B, or rows when B is transposed */
                cblas_sgemm(CblasRowMajor, ta, tb, (int)M, (int)(l1 - l0), (int)K, alpha, A,
                            (int)lda, B + (tb == CblasTrans ? l0 * ldb : l0), (int)ldb, beta,
                            C + l0, (int)ldc);
        }
    }
    openblas_set_num_threads(saved);
}

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
        gemm_team(trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans, M, N,
                  K, alpha, A + i * stride_a, lda, B + i * stride_b, ldb, beta, C + i * stride_c,
                  ldc);
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

/* ---- a ViT's class token and position embedding ---- */

void pbw_cpu_class_position_forward(const float *x, const float *cls, const float *pos,
                                    float *y, int64_t B, int64_t T, int64_t W) {
#pragma omp parallel for schedule(static) if (B * T * W > 65536)
    for (int64_t bt = 0; bt < B * T; bt++) {
        const int64_t b = bt / T, t = bt % T;
        const float *src = t ? x + (b * (T - 1) + t - 1) * W : cls, *p = pos + t * W;
        float *yr = y + bt * W;
        for (int64_t i = 0; i < W; i++) yr[i] = src[i] + p[i];
    }
}

void pbw_cpu_class_position_backward(const float *gy, float *gx, int64_t B, int64_t T,
                                     int64_t W, int add) {
#pragma omp parallel for schedule(static) if (B * T * W > 65536)
    for (int64_t r = 0; r < B * (T - 1); r++) {
        const float *g = gy + (r + r / (T - 1) + 1) * W; /* row t = r % (T-1) + 1 of item r/(T-1) */
        float *o = gx + r * W;
        for (int64_t i = 0; i < W; i++) o[i] = add ? o[i] + g[i] : g[i];
    }
}

/* ---- cosine of rows ---- */

void pbw_cpu_cosine_forward(const float *a, const float *b, int64_t b_stride, float *y,
                            float *norms, int64_t N, int64_t E) {
    for (int64_t r = 0; r < N; r++) {
        const float *ar = a + r * E, *br = b + r * b_stride;
        double d = 0, sa = 0, sb = 0;
        for (int64_t i = 0; i < E; i++) {
            d += (double)ar[i] * br[i];
            sa += (double)ar[i] * ar[i];
            sb += (double)br[i] * br[i];
        }
        const double na = 1.0 / sqrt(sa + 1e-30), nb = 1.0 / sqrt(sb + 1e-30);
        y[r] = (float)(d * na * nb);
        norms[2 * r] = (float)na;
        norms[2 * r + 1] = (float)nb;
    }
}

void pbw_cpu_cosine_backward(const float *a, const float *b, int64_t b_stride, const float *y,
                             const float *norms, const float *gy, float *ga, float *gb,
                             int64_t N, int64_t E) {
    for (int64_t r = 0; r < N; r++) {
        const float *ar = a + r * E, *br = b + r * b_stride;
        const float na = norms[2 * r], nb = norms[2 * r + 1];
        const float g = gy[r], gab = g * na * nb;
        if (ga) {
            const float s = g * y[r] * na * na;
            for (int64_t i = 0; i < E; i++) ga[r * E + i] += gab * br[i] - s * ar[i];
        }
        if (gb) { /* rows in order where b is one row for all: the same sums every run */
            const float s = g * y[r] * nb * nb;
            for (int64_t i = 0; i < E; i++) gb[r * b_stride + i] += gab * ar[i] - s * br[i];
        }
    }
}

/* ---- attention ----
 * Per (batch, head): scores = scale * q k^T, softmax (causal: key s > query t excluded), o = p v.
 * Heads are small (T, S up to a few hundred, D = 64 in CLIP), so each (batch, head) is one
 * OpenMP task whose products are small GEMMs done here (OpenBLAS is not called inside OpenMP
 * regions, and its per-call cost would dominate such sizes). q, k, v, o and their gradients are
 * addressed through strides, so the same kernels serve (B,H,T,D) tensors and packed (B,T,3W)
 * projections. */

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>

/* Lane masks for the last n < 8 columns of a row. */
static const int32_t tail_mask[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};
static inline __m256i mask_of(int64_t n) { return _mm256_loadu_si256((const __m256i *)(tail_mask + 8 - n)); }

/* C[i][j0..j0+16) for rows i < m (m <= 4): (acc ? C : 0) + sum_k A[i][k] B[k][j]. Always
 * inlined with a constant m (see small_gemm), so the accumulators stay in registers. */
__attribute__((always_inline)) static inline void gemm_4x16(int64_t m, int64_t K, const float *A, int64_t lda, const float *B,
                             int64_t ldb, float *C, int64_t ldc, int acc) {
    __m256 c[4][2];
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 2; j++)
            c[i][j] = acc && i < m ? _mm256_loadu_ps(C + i * ldc + 8 * j) : _mm256_setzero_ps();
    for (int64_t k = 0; k < K; k++) {
        __m256 b0 = _mm256_loadu_ps(B + k * ldb), b1 = _mm256_loadu_ps(B + k * ldb + 8);
        for (int i = 0; i < 4; i++) {
            if (i >= m) break;
            __m256 a = _mm256_broadcast_ss(A + i * lda + k);
            c[i][0] = _mm256_fmadd_ps(a, b0, c[i][0]);
            c[i][1] = _mm256_fmadd_ps(a, b1, c[i][1]);
        }
    }
    for (int i = 0; i < m; i++) {
        _mm256_storeu_ps(C + i * ldc, c[i][0]);
        _mm256_storeu_ps(C + i * ldc + 8, c[i][1]);
    }
}

/* The same for n <= 8 columns (masked loads and stores past column n). */
__attribute__((always_inline)) static inline void gemm_4x8(int64_t m, int64_t n, int64_t K, const float *A, int64_t lda,
                            const float *B, int64_t ldb, float *C, int64_t ldc, int acc) {
    __m256i mk = mask_of(n);
    __m256 c[4];
    for (int i = 0; i < 4; i++)
        c[i] = acc && i < m ? _mm256_maskload_ps(C + i * ldc, mk) : _mm256_setzero_ps();
    for (int64_t k = 0; k < K; k++) {
        __m256 b = _mm256_maskload_ps(B + k * ldb, mk);
        for (int i = 0; i < 4; i++) {
            if (i >= m) break;
            c[i] = _mm256_fmadd_ps(_mm256_broadcast_ss(A + i * lda + k), b, c[i]);
        }
    }
    for (int i = 0; i < m; i++) _mm256_maskstore_ps(C + i * ldc, mk, c[i]);
}

/* C (M,N) = A (M,K) B (K,N) (+ C when acc); row strides lda, ldb, ldc. */
static void small_gemm(int64_t M, int64_t N, int64_t K, const float *A, int64_t lda,
                       const float *B, int64_t ldb, float *C, int64_t ldc, int acc) {
    for (int64_t i = 0; i < M; i += 4) {
        int64_t m = M - i < 4 ? M - i : 4, j = 0;
        const float *a = A + i * lda;
        float *c = C + i * ldc;
        for (; j + 16 <= N; j += 16) switch (m) {
            case 4: gemm_4x16(4, K, a, lda, B + j, ldb, c + j, ldc, acc); break;
            case 3: gemm_4x16(3, K, a, lda, B + j, ldb, c + j, ldc, acc); break;
            case 2: gemm_4x16(2, K, a, lda, B + j, ldb, c + j, ldc, acc); break;
            default: gemm_4x16(1, K, a, lda, B + j, ldb, c + j, ldc, acc); break;
            }
        for (; j < N; j += 8) {
            int64_t n = N - j < 8 ? N - j : 8;
            switch (m) {
            case 4: gemm_4x8(4, n, K, a, lda, B + j, ldb, c + j, ldc, acc); break;
            case 3: gemm_4x8(3, n, K, a, lda, B + j, ldb, c + j, ldc, acc); break;
            case 2: gemm_4x8(2, n, K, a, lda, B + j, ldb, c + j, ldc, acc); break;
            default: gemm_4x8(1, n, K, a, lda, B + j, ldb, c + j, ldc, acc); break;
            }
        }
    }
}
#else
static void small_gemm(int64_t M, int64_t N, int64_t K, const float *A, int64_t lda,
                       const float *B, int64_t ldb, float *C, int64_t ldc, int acc) {
    for (int64_t i = 0; i < M; i++) {
        float *c = C + i * ldc;
        if (!acc) memset(c, 0, (size_t)N * sizeof(float));
        for (int64_t k = 0; k < K; k++) {
            float a = A[i * lda + k];
            const float *b = B + k * ldb;
            for (int64_t j = 0; j < N; j++) c[j] = fmaf(a, b[j], c[j]);
        }
    }
}
#endif

/* dst (C,R) = src (R,C)^T, src rows at stride ls. */
static void transpose(float *dst, const float *src, int64_t R, int64_t C, int64_t ls) {
    for (int64_t r = 0; r < R; r++)
        for (int64_t c = 0; c < C; c++) dst[c * R + r] = src[r * ls + c];
}

size_t pbw_cpu_attention_scratch_floats(const pbw_attn_geom *g) {
    size_t per = (size_t)(g->D * g->S + 3 * g->T * g->S + 16);
    return per * (size_t)pbw_cpu_max_threads();
}

void pbw_cpu_attention_fwd(const pbw_attn_geom *g, const float *q, const float *k,
                           const float *v, float *p, float *o, float *scratch) {
    const int64_t B = g->B, H = g->H, T = g->T, S = g->S, D = g->D;
    const size_t per = pbw_cpu_attention_scratch_floats(g) / (size_t)pbw_cpu_max_threads();
#pragma omp parallel for schedule(static)
    for (int64_t bh = 0; bh < B * H; bh++) {
        float *kt = scratch + per * (size_t)pbw_cpu_thread_id(); /* (D,S) */
        int64_t b = bh / H, h = bh % H;
        const float *qh = q + b * g->q[0] + h * g->q[1], *kh = k + b * g->k[0] + h * g->k[1];
        const float *vh = v + b * g->v[0] + h * g->v[1];
        float *oh = o + b * g->o[0] + h * g->o[1], *ph = p + bh * T * S;
        transpose(kt, kh, S, D, g->k[2]);
        small_gemm(T, S, D, qh, g->q[2], kt, S, ph, S, 0); /* q k^T */
        for (int64_t t = 0; t < T; t++) {
            int64_t n = g->causal ? (t + 1 < S ? t + 1 : S) : S;
            float *pr = ph + t * S, mx = -INFINITY, sum = 0;
            for (int64_t s = 0; s < n; s++) {
                pr[s] *= g->scale;
                mx = pr[s] > mx ? pr[s] : mx;
            }
            for (int64_t s = 0; s < n; s++) pr[s] = pbw_expf(pr[s] - mx);
            for (int64_t s = 0; s < n; s++) sum += pr[s];
            float inv = 1.0f / sum;
            for (int64_t s = 0; s < n; s++) pr[s] *= inv;
            for (int64_t s = n; s < S; s++) pr[s] = 0.0f;
        }
        small_gemm(T, D, S, ph, S, vh, g->v[2], oh, g->o[2], 0); /* p v */
    }
}

void pbw_cpu_attention_bwd(const pbw_attn_geom *g, const float *q, const float *k,
                           const float *v, const float *p, const float *go, float *gq,
                           float *gk, float *gv, float *scratch) {
    const int64_t B = g->B, H = g->H, T = g->T, S = g->S, D = g->D;
    const size_t per = pbw_cpu_attention_scratch_floats(g) / (size_t)pbw_cpu_max_threads();
#pragma omp parallel for schedule(static)
    for (int64_t bh = 0; bh < B * H; bh++) {
        float *vt = scratch + per * (size_t)pbw_cpu_thread_id(); /* (D,S) */
        float *ds = vt + D * S;                                   /* (T,S) d loss / d scores */
        float *tr = ds + T * S;                                   /* (S,T) transposes */
        int64_t b = bh / H, h = bh % H;
        const float *qh = q + b * g->q[0] + h * g->q[1], *kh = k + b * g->k[0] + h * g->k[1];
        const float *vh = v + b * g->v[0] + h * g->v[1];
        const float *goh = go + b * g->o[0] + h * g->o[1], *ph = p + bh * T * S;
        if (gv) { /* dV += P^T dO */
            transpose(tr, ph, T, S, S);
            small_gemm(S, D, T, tr, T, goh, g->o[2], gv + b * g->v[0] + h * g->v[1], g->v[2], 1);
        }
        if (!gq && !gk) continue;
        transpose(vt, vh, S, D, g->v[2]);
        small_gemm(T, S, D, goh, g->o[2], vt, S, ds, S, 0); /* dP = dO V^T */
        for (int64_t t = 0; t < T; t++) { /* dS = P (dP - rowsum(P dP)) * scale */
            const float *pr = ph + t * S;
            float *dr = ds + t * S, dot = 0;
            for (int64_t s = 0; s < S; s++) dot = fmaf(pr[s], dr[s], dot);
            for (int64_t s = 0; s < S; s++) dr[s] = pr[s] * (dr[s] - dot) * g->scale;
        }
        if (gq) /* dQ += dS K */
            small_gemm(T, D, S, ds, S, kh, g->k[2], gq + b * g->q[0] + h * g->q[1], g->q[2], 1);
        if (gk) { /* dK += dS^T Q */
            transpose(tr, ds, T, S, S);
            small_gemm(S, D, T, tr, T, qh, g->q[2], gk + b * g->k[0] + h * g->k[1], g->k[2], 1);
        }
    }
}

/* ---------- LPIPS's weighted layer term ---------- */

size_t pbw_cpu_lpips_layer_scratch_floats(int64_t N, int64_t S) {
    (void)N, (void)S;
    return 0;
}

/* One position (channels C apart at stride S): nrm = |f|, den = |f| + eps, returns the sum over
 * channels of w (f / den - ref)^2; with dot, also the sum of 2 w (f / den - ref) f. */
static float lpips_site(const float *fp, const float *rp, const float *w, int64_t C, int64_t S,
                        float eps, float *nrm, float *den, float *dot) {
    float ss = 0.0f;
    for (int64_t c = 0; c < C; c++) ss += fp[c * S] * fp[c * S];
    *nrm = sqrtf(ss);
    *den = *nrm + eps;
    float r = 0.0f, a = 0.0f;
    for (int64_t c = 0; c < C; c++) {
        const float d = fp[c * S] / *den - rp[c * S];
        r += w[c] * (d * d);
        if (dot) a += 2.0f * w[c] * d * fp[c * S];
    }
    if (dot) *dot = a;
    return r;
}

void pbw_cpu_lpips_layer_forward(const float *f, const float *ref, const float *w,
                                 const float *k, float *out, int64_t N, int64_t Nr, int64_t C,
                                 int64_t S, float eps, float *scratch) {
    (void)scratch;
#pragma omp parallel for schedule(static) if (N * C * S > 16384)
    for (int64_t n = 0; n < N; n++) {
        double acc = 0;
        for (int64_t s = 0; s < S; s++) {
            float nrm, den;
            const float r = lpips_site(f + n * C * S + s, ref + (n % Nr) * C * S + s, w, C, S,
                                       eps, &nrm, &den, NULL);
            acc += (double)k[s] * r;
        }
        out[n] = (float)acc;
    }
}

void pbw_cpu_lpips_layer_backward(const float *f, const float *ref, const float *w,
                                  const float *k, const float *gout, float *gf, int64_t N,
                                  int64_t Nr, int64_t C, int64_t S, float eps) {
#pragma omp parallel for schedule(static) if (N * C * S > 16384)
    for (int64_t n = 0; n < N; n++)
        for (int64_t s = 0; s < S; s++) {
            const float *fp = f + n * C * S + s, *rp = ref + (n % Nr) * C * S + s;
            float nrm, den, dot;
            lpips_site(fp, rp, w, C, S, eps, &nrm, &den, &dot);
            /* d/df_j of sum_c w_c (f_c / den - r_c)^2 with den = |f| + eps:
             * a_j / den - f_j dot / (|f| den^2), a_c = 2 w_c (f_c / den - r_c), dot = a . f */
            const float g = gout[n] * k[s];
            const float t = nrm > 0.0f ? dot / (nrm * den * den) : 0.0f;
            for (int64_t c = 0; c < C; c++) {
                const float a = 2.0f * w[c] * (fp[c * S] / den - rp[c * S]);
                gf[n * C * S + c * S + s] += g * (a / den - fp[c * S] * t);
            }
        }
}
