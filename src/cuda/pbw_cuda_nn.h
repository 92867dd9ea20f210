/* pbw_cuda_nn.h: CUDA kernels of the matrix products (cuBLAS), layer norm, batch norm, softmax, attention, embedding.
 *
 * Each function mirrors its CPU twin (src/cpu, same name after pbw_cpu_) argument for argument;
 * pointers are device memory; work is enqueued on the backend's stream (pbw_cuda.h). Backward
 * kernels ADD into the gradient buffers they are given (NULL: not needed), as on the CPU.
 *
 * The functions after "no CPU twin" do work that the CPU front-ends do inline on host memory
 * (bias broadcast, 1/sqrt(var+eps), embedding gathers); the front-ends call them under
 * pbw_on_cuda.
 */
#ifndef PBW_CUDA_NN_H
#define PBW_CUDA_NN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

struct pbw_attn_geom; /* src/cpu/pbw_cpu.h */

/* C (M,N) = alpha op(A) op(B) + beta C, row-major, for `batch` matrices at element strides
 * stride_a/b/c (0 shares a matrix). stride_c == 0 with batch > 1 means what it means on the
 * CPU: the items are applied one after the other to the same C (each with beta), which the
 * backward of a shared operand uses to sum over the batch. Math from pbw_cuda_precision(). */
void pbw_cuda_gemm_batched(int trans_a, int trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                           const float *A, int64_t lda, int64_t stride_a, const float *B,
                           int64_t ldb, int64_t stride_b, float beta, float *C, int64_t ldc,
                           int64_t stride_c, int64_t batch);

/* rows (R,D); mean, rstd (R) are device memory written by the forward. */
void pbw_cuda_layer_norm_forward(const float *x, const float *w, const float *b, float *y,
                                 float *mean, float *rstd, int64_t R, int64_t D, float eps);
void pbw_cuda_layer_norm_backward(const float *x, const float *w, const float *mean,
                                  const float *rstd, const float *gy, float *gx, float *gw,
                                  float *gb, int64_t R, int64_t D);
/* The same, gx added to (not NULL), with gxh (R*D bf16) getting the rounding of gx's sums: the
 * gradient's bf16 copy for a product (pbw_tensor.grad_half_copy). 0, or -1 with nothing launched
 * where the row-vector kernel does not take the geometry. */
int pbw_cuda_layer_norm_backward_copy(const float *x, const float *w, const float *mean,
                                      const float *rstd, const float *gy, float *gx, void *gxh,
                                      float *gw, float *gb, int64_t R, int64_t D);
/* Launches of pbw_cuda_layer_norm_backward_copy so far (tests; with gxh, those of
 * pbw_cuda_layer_norm_backward_gyh too). */
long pbw_cuda_layer_norm_backward_copy_calls(void);
/* x's gradient alone (gx added to; gxh, when not NULL, its bf16 copy as above) from the output's
 * gradient in bf16 (gyh, R*D: written so by the product after the layer norm,
 * pbw_tensor.grad_half). 0, or -1 with nothing launched where the precision is not bf16 or the
 * row-vector kernel does not take the geometry (pbw_cuda_layer_norm_backward_gyh_ok: D). */
int pbw_cuda_layer_norm_backward_gyh(const float *x, const float *w, const float *mean,
                                     const float *rstd, const void *gyh, float *gx, void *gxh,
                                     int64_t R, int64_t D);
int pbw_cuda_layer_norm_backward_gyh_ok(int64_t D);
/* Launches of pbw_cuda_layer_norm_backward_gyh so far (tests). */
long pbw_cuda_layer_norm_backward_gyh_calls(void);
/* pbw_cpu_lpips_layer_forward / _backward's contract (device memory); the forward sums each
 * image's positions in blocks of 32 (scratch: pbw_cuda_lpips_layer_scratch_floats) and then
 * the blocks' sums in order: no atomics, the same bits every run. */
size_t pbw_cuda_lpips_layer_scratch_floats(int64_t N, int64_t S);
void pbw_cuda_lpips_layer_forward(const float *f, const float *ref, const float *w,
                                  const float *k, float *out, int64_t N, int64_t Nr, int64_t C,
                                  int64_t S, float eps, float *scratch);
void pbw_cuda_lpips_layer_backward(const float *f, const float *ref, const float *w,
                                   const float *k, const float *gout, float *gf, int64_t N,
                                   int64_t Nr, int64_t C, int64_t S, float eps);
/* x (N,C,S) */
void pbw_cuda_batch_norm_forward(const float *x, const float *mean, const float *rstd,
                                 const float *w, const float *b, float *y, int64_t N, int64_t C,
                                 int64_t S);
void pbw_cuda_batch_norm_backward(const float *x, const float *mean, const float *rstd,
                                  const float *w, const float *gy, float *gx, float *gw,
                                  float *gb, int64_t N, int64_t C, int64_t S);
/* rows (R,D) */
void pbw_cuda_softmax_forward(const float *x, float *y, int64_t R, int64_t D);
void pbw_cuda_softmax_backward(const float *y, const float *gy, float *gx, int64_t R, int64_t D);

/* a ViT's tokens (as pbw_cpu_class_position_*) */
void pbw_cuda_class_position_forward(const float *x, const float *cls, const float *pos,
                                     float *y, int64_t B, int64_t T, int64_t W);
void pbw_cuda_class_position_backward(const float *gy, float *gx, int64_t B, int64_t T,
                                      int64_t W, int add);
/* cosine of rows (as pbw_cpu_cosine_*) */
void pbw_cuda_cosine_forward(const float *a, const float *b, int64_t b_stride, float *y,
                             float *norms, int64_t N, int64_t E);
void pbw_cuda_cosine_backward(const float *a, const float *b, int64_t b_stride, const float *y,
                              const float *norms, const float *gy, float *ga, float *gb,
                              int64_t N, int64_t E);

/* Attention (geometry as pbw_cpu_attention_*); scratch is device memory of
 * pbw_cuda_attention_scratch_floats(g) floats (the backward's d scores). */
size_t pbw_cuda_attention_scratch_floats(const struct pbw_attn_geom *g);
void pbw_cuda_attention_fwd(const struct pbw_attn_geom *g, const float *q, const float *k,
                            const float *v, float *p, float *o, float *scratch);
/* The forward when no backward follows: the weights are not kept (p serves only as scratch
 * where a path needs one: B*H*T*S floats). half: q, k, v and o in the precision's half type
 * (half activations); 0, or -1 with nothing launched when no kernel takes that geometry (the
 * caller then runs the fp32 forward). Float operands always run (0). */
int pbw_cuda_attention_fwd_nograd(const struct pbw_attn_geom *g, const void *q, const void *k,
                                  const void *v, float *p, void *o, int half);
/* Forwards run on tensor cores so far (half activations, head size 64, S <= 80; tests). */
long pbw_cuda_attention_mma_calls(void);
/* The forward that keeps its weights for a backward (p, as pbw_cuda_attention_fwd) on tensor
 * cores, where the precision multiplies on halves (head size 64, S <= 80): o in fp32 and, when
 * oh is not NULL, o's half copy (laid out as o) for the product that reads it; o NULL: the
 * halves alone. 0 when done, -1 with nothing launched otherwise. */
int pbw_cuda_attention_fwd_keep(const struct pbw_attn_geom *g, const float *q, const float *k,
                                const float *v, float *p, float *o, void *oh);
/* The same from q, k, v held as the precision's halves alone (a product's half output). */
int pbw_cuda_attention_fwd_keep_h(const struct pbw_attn_geom *g, const void *q, const void *k,
                                  const void *v, float *p, float *o, void *oh);
/* Backward launches on tensor cores so far (bf16/fp16 precision, head size 64, T and S up to
 * 64; tests). */
long pbw_cuda_attention_bwd_mma_calls(void);
void pbw_cuda_attention_bwd(const struct pbw_attn_geom *g, const float *q, const float *k,
                            const float *v, const float *p, const float *go, float *gq,
                            float *gk, float *gv, float *scratch);
/* The same with gq, gk and gv written, not added to (none may be NULL): every element of the
 * T rows of gq and the S rows of gk and gv. 0, or -1 with nothing launched when the tiled
 * kernel does not take the geometry (the caller then zeroes them and adds). */
int pbw_cuda_attention_bwd_write(const struct pbw_attn_geom *g, const float *q, const float *k,
                                 const float *v, const float *p, const float *go, float *gq,
                                 float *gk, float *gv);
/* pbw_cuda_attention_bwd_write from q, k, v held as the precision's halves alone, on tensor
 * cores only (-1, nothing launched, where they do not take the geometry). */
int pbw_cuda_attention_bwd_write_h(const struct pbw_attn_geom *g, const void *q, const void *k,
                                   const void *v, const float *p, const float *go, float *gq,
                                   float *gk, float *gv);
/* The same adding into gq, gk and gv (pbw_cuda_attention_bwd's sums: the class token's query
 * alone, T < S, whose gradient is not written whole). */
int pbw_cuda_attention_bwd_add_h(const struct pbw_attn_geom *g, const void *q, const void *k,
                                 const void *v, const float *p, const float *go, float *gq,
                                 float *gk, float *gv);
/* Launches of pbw_cuda_attention_bwd_add_h so far (tests). */
long pbw_cuda_attention_bwd_add_h_calls(void);
/* The same with gq, gk and gv written in bf16 alone (bf16 precision: the gradient a product
 * reads in bf16, pbw_tensor.grad_half), each value rounded as a conversion of the fp32 one
 * would be. 0, or -1 with nothing launched. */
int pbw_cuda_attention_bwd_write_hh(const struct pbw_attn_geom *g, const void *q, const void *k,
                                    const void *v, const float *p, const float *go, void *gq,
                                    void *gk, void *gv);
/* Launches of the resident, double-buffered tensor-core forward so far (tests). */
long pbw_cuda_attention_pipe_calls(void);
/* Launches of pbw_cuda_attention_bwd_write_hh so far (tests). */
long pbw_cuda_attention_bwd_half_out_calls(void);

/* ---- no CPU twin ---- */

/* y (R,O) = x (R,I) w (O,I)^T + b (O) + r (R,O) in one cuBLASLt product, the bias (may be
 * NULL) in its epilogue and the residual r (may be NULL) read as its C. xh: NULL, or x's half
 * copy (pbw_tensor.half); with pbw_cuda_half_gemm() and a constant weight (pbw_cuda_is_weight)
 * the product then reads xh and a cached half copy of w (bf16/fp16 operands, fp32
 * accumulation). yh: NULL, or the output in the precision's half type instead of y (half
 * operands only, no fp32 residual r; the bias then from a cached half copy). rh: NULL, or with
 * yh a residual in the half type (it may be yh itself: r += x W^T + b in place). Returns 0 when
 * enqueued, -1 when this case has no such algorithm (nothing was done: the caller computes it
 * another way). */
int pbw_cuda_linear_lt(const float *x, const void *xh, const float *w, const float *b,
                       const float *r, float *y, void *yh, const void *rh, int64_t R, int64_t O,
                       int64_t I);
/* yh (R,O) = QuickGELU(xh (R,I) w (O,I)^T + b (O)) as one fused cuDNN kernel
 * (pbw_cuda_fusion.cu): xh and yh in the precision's half type (bf16 or fp16), w and b constant
 * weights read through their cached half copies, fp32 sums. Returns 0 when enqueued, -1 when
 * not taken (another precision, PBW_CUDA_GELU_FUSION=0, an unaligned operand, or a shape cuDNN
 * has no plan for): nothing was done, the caller runs the product and QuickGELU apart. */
int pbw_cuda_linear_quick_gelu(const void *xh, const float *w, const float *b, void *yh,
                               int64_t R, int64_t O, int64_t I);
/* Fused products run so far (tests). */
long pbw_cuda_linear_quick_gelu_calls(void);
/* yh (R,O) = [QuickGELU](LN(xh) w^T + b), LN's gain gamma and shift beta (I), eps, without
 * LN's output (pbw_cuda_fusion.cu): the rows' 1/std (rstd: R floats, 16-byte aligned) from
 * xh, then one fused cuDNN product of xh with w's folded, centred half copy whose epilogue
 * scales each row by rstd and adds the folded bias. xh, yh in the
 * precision's half type; gamma, beta, w, b constant weights. Returns 0 when enqueued, -1 when
 * not taken (PBW_CUDA_LN_FOLD=0, or with QuickGELU PBW_CUDA_GELU_FUSION=0, another precision,
 * an unaligned operand, a width the statistics kernel does not take, or a shape cuDNN has no
 * plan for): yh was not written, the caller runs the ops apart. */
int pbw_cuda_layer_norm_linear(const void *xh, const float *gamma, const float *beta, float eps,
                               const float *w, const float *b, void *yh, float *rstd,
                               int64_t R, int64_t O, int64_t I, int quick_gelu);
/* pbw_cuda_layer_norm_linear's runs so far (tests). */
long pbw_cuda_layer_norm_linear_calls(void);
/* Drops every fused plan (the next product of each shape reads its file again, or builds):
 * what a new process would start from. Returns how many plans were read from files since the
 * last call. For tests. */
long pbw_cuda_linear_quick_gelu_forget(void);
/* Products made on half operands so far (tests). */
long pbw_cuda_linear_half_calls(void);
/* Products whose algorithm was measured so far (tests; see pbw_cuda_nn.cu). */
long pbw_cuda_linear_lt_measured(void);
/* Drops every product plan and the algorithm choices read from disk (the next product of each
 * shape reads the cache file again, or measures): what a new process would start from.
 * Returns how many choices were taken from the file since the last call. For tests. */
long pbw_cuda_linear_lt_forget(void);
/* gx (R,I) = beta_x gx + gy (R,O) w (O,I) (pbw_linear's input gradient; beta_x 0 or 1, gx not
 * read for 0) on bf16 operands with fp32 accumulation, or where gxh is given that product
 * written into gxh alone, rounded to bf16 (gx untouched; pbw_tensor.grad_half for the op that
 * reads x's gradient so), and gr (R,O) = beta_r gr + gy in the
 * same pass over gy when gr is not NULL (linear_add's residual gradient). Taken only under
 * PBW_PREC_BF16 with pbw_cuda_half_gemm(), for R >= 64 rows (fewer make a matrix-vector product
 * bound by reading w), a constant weight (its cached bf16 copy), and unless
 * PBW_CUDA_HALF_BACKWARD is "0"; never in fp16, whose range would flush small gradients to zero
 * without loss scaling, nor in tf32/fp32. Returns 0 when enqueued, -1 when not taken (nothing
 * was done: the caller writes gr and computes gx its own way). */
int pbw_cuda_linear_backward_half(const float *gy, const float *w, float *gx, float beta_x,
                                  void *gxh, float *gr, float beta_r, int64_t R, int64_t O,
                                  int64_t I);
/* 1 when pbw_cuda_linear_backward_half would take this product now (w's cached bf16 copy is
 * made on the way), 0 when not: for an op that decides at its forward whose gradient to write
 * in bf16 alone (pbw_tensor.grad_half). */
int pbw_cuda_linear_backward_half_ok(const float *w, int64_t R, int64_t O, int64_t I);
/* pbw_cuda_linear_backward_half's product from gy already in bf16 (gyh, (R,O)): no conversion
 * pass; into gx, or gxh alone where given. 0 when enqueued, -1 when not taken (as
 * pbw_cuda_linear_backward_half_ok). */
int pbw_cuda_linear_backward_half_gy(const void *gyh, const float *w, float *gx, float beta_x,
                                     void *gxh, int64_t R, int64_t O, int64_t I);
/* gx (I) = beta gx + gy (O) w (O,I) for one row (pbw_linear's input gradient at R = 1; beta 0
 * or 1, gx not read for 0), in fp32 with a fixed order of sums, under the half precisions
 * (bf16, fp16) unless PBW_CUDA_ROWVEC is "0"; pbw_cuda_linear_lt takes the forward's one row the
 * same way. 0 when enqueued, -1 when not taken. */
int pbw_cuda_rowvec_backward(const float *gy, const float *w, float *gx, float beta, int64_t O,
                             int64_t I);
/* One row x (I) through n maps at once, under the same precisions as pbw_cuda_rowvec_backward:
 * y[k] (O[k]) = x w[k]^T (+ b[k], each may be NULL) in one kernel, each row summed as the
 * one-row forward sums it (the same bits); and the input gradient
 * gx (I) = beta gx + sum_k gy[k] w[k] in two kernels, the maps' sums added in k order (a gy[k]
 * NULL adds nothing), scratch n I floats of device memory. n <= PBW_CUDA_ROWVEC_MULTI. 0 when
 * enqueued, -1 when not taken. */
#define PBW_CUDA_ROWVEC_MULTI 32
int pbw_cuda_rowvec_multi_ok(int n, const int64_t *O, int64_t I); /* 1: they would be taken */
int pbw_cuda_rowvec_multi_forward(int n, const float *x, const float *const *w,
                                  const float *const *b, float *const *y, const int64_t *O,
                                  int64_t I);
int pbw_cuda_rowvec_multi_backward(int n, const float *const *gy, const float *const *w,
                                   const int64_t *O, float *gx, float beta, int64_t I,
                                   float *scratch);
/* One-row products (forward and backward) enqueued so far (tests). */
long pbw_cuda_rowvec_calls(void);
/* Input gradients made on bf16 operands so far (tests). */
long pbw_cuda_linear_half_backward_calls(void);
/* pbw_cuda_layer_norm_forward that also writes yh (R,D), y in the precision's half type; y may
 * be NULL (yh alone). */
void pbw_cuda_layer_norm_forward_half(const float *x, const float *w, const float *b, float *y,
                                      void *yh, float *mean, float *rstd, int64_t R, int64_t D,
                                      float eps);
/* The same from xh (R,D) in the precision's half type (a residual stream kept in it: see
 * pbw_cuda_linear_lt's rh) into yh alone; -1 (nothing done) where only the fp32 path serves
 * (D not 512, 768 or 1024, or misaligned rows). */
int pbw_cuda_layer_norm_forward_hx(const void *xh, const float *w, const float *b, void *yh,
                                   float *mean, float *rstd, int64_t R, int64_t D, float eps);
/* y (R,O) = b (O) on every row (pbw_linear starts from the bias). */
void pbw_cuda_bias_rows_forward(const float *b, float *y, int64_t R, int64_t O);
/* gb (O) += sum over rows of gy (R,O) (deterministic: fixed reduction order). */
void pbw_cuda_bias_rows_backward(const float *gy, float *gb, int64_t R, int64_t O);
/* rstd (C) = 1 / sqrtf(var + eps) (batch norm's inference statistics). */
void pbw_cuda_batch_norm_rstd(const float *var, float *rstd, int64_t C, float eps);
/* y (n,D) = rows ids (n) of table (V,D); ids are device memory, checked by the caller. */
void pbw_cuda_embedding_forward(const float *table, const int32_t *ids, float *y, int64_t n,
                                int64_t D);
/* gt (V,D) += gy (n,D) scattered to rows ids; atomicAdd, so with repeated ids the sum order
 * (and the last bit) may vary between runs. */
void pbw_cuda_embedding_backward(const float *gy, const int32_t *ids, float *gt, int64_t n,
                                 int64_t D);

#ifdef __cplusplus
}
#endif
#endif
