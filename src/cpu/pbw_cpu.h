/* pbw_cpu.h: CPU kernels of the elementwise, reduction, shape, linear-algebra, normalization,
 * attention and embedding ops (convolution and resampling kernels: pbw_cpu_conv.h).
 *
 * Kernels are plain functions on raw float pointers; every pointer carries its shape in a
 * comment. They allocate nothing: callers pass outputs and scratch. Backward kernels ADD into
 * the gradient buffers they are given (a NULL gradient buffer means "not needed": skip it).
 * OpenMP parallelizes the outer loops; GEMMs go to OpenBLAS.
 */
#ifndef PBW_CPU_H
#define PBW_CPU_H

#include <stddef.h>
#include <stdint.h>

/* ---------- elementwise ---------- */

typedef enum pbw_unary_op {
    PBW_UN_AFFINE,     /* y = x*p0 + p1 */
    PBW_UN_RELU,
    PBW_UN_LEAKY_RELU, /* slope p0 */
    PBW_UN_GELU,
    PBW_UN_QUICK_GELU,
    PBW_UN_SIGMOID,
    PBW_UN_TANH,
    PBW_UN_SQRT,
    PBW_UN_RSQRT,
    PBW_UN_EXP,
    PBW_UN_ABS,
    PBW_UN_SQUARE,
    PBW_UN_CLAMP, /* to [p0, p1] */
} pbw_unary_op;

void pbw_cpu_unary_forward(pbw_unary_op op, float p0, float p1, const float *x, float *y,
                           int64_t n); /* x, y (n) */
/* gx += dy/dx * gy, using x and/or y (both (n)); add 0: gx = dy/dx * gy (gx not read). */
void pbw_cpu_unary_backward(pbw_unary_op op, float p0, float p1, const float *x, const float *y,
                            const float *gy, float *gx, int64_t n, int add);

typedef enum pbw_binary_op { PBW_BIN_ADD, PBW_BIN_SUB, PBW_BIN_MUL, PBW_BIN_DIV } pbw_binary_op;

/* Strided iteration over a 5-D index space `shape`: element i of y is at sum(i_d * sy[d]).
 * A stride of 0 broadcasts (for inputs) or reduces (for outputs). */
typedef struct pbw_iter5 {
    int64_t shape[5];
} pbw_iter5;

/* y[i] = a[i] op b[i] over shape, with per-operand strides (y dense, strides sy). */
void pbw_cpu_binary_forward(pbw_binary_op op, const int64_t *shape, const float *a,
                            const int64_t *sa, const float *b, const int64_t *sb, float *y,
                            const int64_t *sy);
/* ga[i*sa] += d(a op b)/da * gy[i*sy], gb likewise; ga or gb may be NULL. */
void pbw_cpu_binary_backward(pbw_binary_op op, const int64_t *shape, const float *a,
                             const int64_t *sa, const float *b, const int64_t *sb,
                             const float *gy, const int64_t *sy, float *ga, float *gb);
/* y[i*sy] += s * x[i*sx] over shape: with zero strides in sy this sums (reduction); with zero
 * strides in sx it broadcasts. */
void pbw_cpu_accumulate(const int64_t *shape, const float *x, const int64_t *sx, float *y,
                        const int64_t *sy, float s);
/* y[i*sy] = x[i*sx] over shape (a strided copy; sy must not alias itself). */
void pbw_cpu_copy_strided(const int64_t *shape, const float *x, const int64_t *sx, float *y,
                          const int64_t *sy);

/* ---------- linear algebra ---------- */

/* C (M,N) = alpha * op(A) op(B) + beta * C for `batch` matrices at the given element strides
 * (stride 0 shares a matrix across the batch). op transposes when trans_* is set; lda etc. are
 * the row strides of the stored matrices. */
void pbw_cpu_gemm_batched(int trans_a, int trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                          const float *A, int64_t lda, int64_t stride_a, const float *B,
                          int64_t ldb, int64_t stride_b, float beta, float *C, int64_t ldc,
                          int64_t stride_c, int64_t batch);

/* ---------- normalization, softmax, attention ---------- */

/* rows (R,D): y = (x - mean) * rstd * w + b; stores mean and rstd (R) for backward. */
void pbw_cpu_layer_norm_forward(const float *x, const float *w, const float *b, float *y,
                                float *mean, float *rstd, int64_t R, int64_t D, float eps);
void pbw_cpu_layer_norm_backward(const float *x, const float *w, const float *mean,
                                 const float *rstd, const float *gy, float *gx, float *gw,
                                 float *gb, int64_t R, int64_t D);
/* LPIPS's term of one layer weighted over positions (pbw_lpips_layer): f (N,C,S), ref (Nr,C,S)
 * with Nr 1 or N, w (C), k (S) -> out (N) =
 *   sum_s k[s] sum_c w[c] (f[n,c,s] / (sqrt(sum_c' f[n,c',s]^2) + eps) - ref[n % Nr,c,s])^2.
 * scratch: pbw_cpu/cuda_lpips_layer_scratch_floats(N, S) floats. Backward adds gout[n]'s
 * gradient to gf (N,C,S) (where a position's vector is all zero, its normalization's own
 * term, 0/0, is left out). */
size_t pbw_cpu_lpips_layer_scratch_floats(int64_t N, int64_t S);
void pbw_cpu_lpips_layer_forward(const float *f, const float *ref, const float *w,
                                 const float *k, float *out, int64_t N, int64_t Nr, int64_t C,
                                 int64_t S, float eps, float *scratch);
void pbw_cpu_lpips_layer_backward(const float *f, const float *ref, const float *w,
                                  const float *k, const float *gout, float *gf, int64_t N,
                                  int64_t Nr, int64_t C, int64_t S, float eps);
/* x (N,C,S): y = (x - mean[c]) * rstd[c] * w[c] + b[c]; w, b may be NULL. */
void pbw_cpu_batch_norm_forward(const float *x, const float *mean, const float *rstd,
                                const float *w, const float *b, float *y, int64_t N, int64_t C,
                                int64_t S);
void pbw_cpu_batch_norm_backward(const float *x, const float *mean, const float *rstd,
                                 const float *w, const float *gy, float *gx, float *gw,
                                 float *gb, int64_t N, int64_t C, int64_t S);
/* rows (R,D) */
void pbw_cpu_softmax_forward(const float *x, float *y, int64_t R, int64_t D);
void pbw_cpu_softmax_backward(const float *y, const float *gy, float *gx, int64_t R, int64_t D);
/* A ViT's tokens (pbw_class_position): y (B,T,W) rows t = 0: cls + pos[0], t >= 1:
 * x[b, t-1] + pos[t], from x (B,T-1,W), cls (W), pos (T,W). The backward writes (add 0) or adds
 * (1) y's rows t >= 1 into gx (B,T-1,W). */
void pbw_cpu_class_position_forward(const float *x, const float *cls, const float *pos,
                                    float *y, int64_t B, int64_t T, int64_t W);
void pbw_cpu_class_position_backward(const float *gy, float *gx, int64_t B, int64_t T,
                                     int64_t W, int add);
/* Cosine of rows (pbw_cosine): a (N,E), row r of b at b + r * b_stride (b_stride E, or 0 for one
 * row for all) -> y (N), with norms (N,2) the 1/|a_r| and 1/|b_r| the backward reads. The
 * backward adds gy's gradient to ga (N,E) and gb (as b), either NULL when not wanted. */
void pbw_cpu_cosine_forward(const float *a, const float *b, int64_t b_stride, float *y,
                            float *norms, int64_t N, int64_t E);
void pbw_cpu_cosine_backward(const float *a, const float *b, int64_t b_stride, const float *y,
                             const float *norms, const float *gy, float *ga, float *gb,
                             int64_t N, int64_t E);
/* Attention of B*H heads addressed by strides: element d of row t of head h of batch b of q is
 * q[b*q[0] + h*q[1] + t*q[2] + d] (k, v, o likewise; rows contiguous over d). The gradients of
 * q, k, v, o use the same strides as their tensors. q and o have T rows, k and v S rows;
 * causal excludes key s > query t. */
typedef struct pbw_attn_geom {
    int64_t B, H, T, S, D;
    int64_t q[3], k[3], v[3], o[3];
    float scale;
    int causal;
} pbw_attn_geom;
/* Scratch floats the two kernels need (for every thread of the OpenMP team). */
size_t pbw_cpu_attention_scratch_floats(const pbw_attn_geom *g);
/* p (B*H,T,S) receives the attention weights (0 for excluded keys). */
void pbw_cpu_attention_fwd(const pbw_attn_geom *g, const float *q, const float *k,
                           const float *v, float *p, float *o, float *scratch);
/* gq, gk, gv (may be NULL) += ... */
void pbw_cpu_attention_bwd(const pbw_attn_geom *g, const float *q, const float *k,
                           const float *v, const float *p, const float *go, float *gq,
                           float *gk, float *gv, float *scratch);

#endif
