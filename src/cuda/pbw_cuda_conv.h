/* pbw_cuda_conv.h: CUDA kernels of the convolution (cuDNN), upfirdn2d, resize, separable filters, StyleGAN2's fused ops.
 *
 * Each function mirrors its CPU twin (src/cpu, same name after pbw_cpu_) argument for argument;
 * pointers are device memory; work is enqueued on the backend's stream (pbw_cuda.h). The
 * geometry structs are the CPU's (plain C structs of ints). Where the GPU needs a different
 * contract (scratch sizes, host-side taps, a weight in its natural layout instead of the CPU's
 * packed one) the function says so and the op front-end branches on the device.
 *
 * Determinism: every kernel here gives the same bits run after run, except where cuDNN's
 * algorithm choice takes a nondeterministic algorithm (only when it is over 1.3x faster than
 * every deterministic one, or none exists; never for PBW_PREC_FP32 while a deterministic one
 * exists). The choice is measured once per process, so two processes may choose differently
 * (PBW_CUDNN_HEURISTIC=1 makes it fixed). Reductions are two-pass (per-block partial sums in
 * double, then one thread per output in a fixed order), not atomics.
 */
#ifndef PBW_CUDA_CONV_H
#define PBW_CUDA_CONV_H

#include <stddef.h>
#include <stdint.h>

#include "cpu/pbw_cpu_conv.h"
#include "cpu/pbw_cpu_stylegan.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---------- conv2d (cuDNN legacy API) ----------
 * Descriptors and the algorithm of each direction are cached per geometry and precision; the
 * algorithm is chosen by measuring (cudnnFind*Ex) on the first call of each, which then
 * synchronizes the stream once (PBW_CUDNN_HEURISTIC=1: cuDNN's heuristics instead, no
 * measuring; PBW_CUDNN_LOG=1 prints the choices; details in pbw_cuda_conv.cu).
 * PBW_PREC_FP32 runs FMA-only algorithms (no TF32); PBW_PREC_TF32 allows tensor cores on the
 * float32 tensors. PBW_PREC_BF16 / PBW_PREC_FP16 run the forward and backward-data directions
 * on bf16 / fp16 NHWC staged copies (converted by kernels of this module, in a staging buffer
 * of its own; the output is rounded to that type once) where every group's channel counts
 * are multiples of 8; PBW_CUDNN_NCHW=1 turns that off (as TF32). The cuDNN workspace comes
 * from pbw_cuda_workspace: no scratch. */
size_t pbw_cuda_conv2d_scratch_floats(const pbw_cpu_conv_geom *g); /* 0 */
void pbw_cuda_conv2d_forward(float *out, const float *x, const float *w, const float *b,
                             const pbw_cpu_conv_geom *g, int accumulate, float *scratch);
void pbw_cuda_conv2d_backward_data(float *dx, const float *dout, const float *w,
                                   const pbw_cpu_conv_geom *g, float *scratch);
void pbw_cuda_conv2d_backward_weight(float *dw, const float *dout, const float *x,
                                     const pbw_cpu_conv_geom *g, float *scratch);
void pbw_cuda_conv2d_add_bias(float *out, const float *b, int N, int O, int64_t P);
void pbw_cuda_conv2d_backward_bias(float *db, const float *dout, int N, int O, int64_t P);

/* ---------- upfirdn2d: k is device memory; the kernels need no tables (scratch 0) ---------- */
size_t pbw_cuda_upfirdn2d_scratch_ints(const pbw_cpu_upfirdn_geom *g); /* 0 */
void pbw_cuda_upfirdn2d_forward(float *out, const float *x, const float *k,
                                const pbw_cpu_upfirdn_geom *g, int *scratch);
/* Deterministic: each input element gathers from the outputs it fed (no atomics). */
void pbw_cuda_upfirdn2d_backward(float *dx, const float *dout, const float *k,
                                 const pbw_cpu_upfirdn_geom *g, int *scratch);

/* Drops every plan and the algorithm choices read from disk (the next convolution of each
 * geometry reads the cache file again, or measures): what a new process would start from.
 * Returns how many choices were taken from the file since the last call. For tests. */
long pbw_cuda_conv_forget(void);

/* Staged forward convolutions run as im2col and one cuBLAS product (pbw_cuda_conv.cu: a
 * candidate measured beside cuDNN's for small outputs; PBW_CONV_GEMM=1 forces it wherever
 * eligible, =0 never), counted since the process began. For tests. */
long pbw_cuda_conv_gemm_calls(void);

/* Staged convolutions (forward or backward-data) run as a plan of cuDNN's backend API, an
 * engine config measured beside the legacy algorithms (pbw_cuda_conv.cu; PBW_CUDNN_BACKEND=1
 * forces the first that builds wherever one does, =0 never), counted since the process began.
 * For tests. */
long pbw_cuda_conv_backend_calls(void);

/* ---------- resize ----------
 * The index and weight tables are computed on the device with the CPU's formulas, rounded
 * step by step (no fused multiply-adds where the CPU has none), so they are bit-identical.
 * The scratch (device) holds them plus, per input row and column, the list of (output, weight)
 * pairs that read it, in the CPU's order, which lets the backward gather instead of scatter
 * (deterministic): a pass over output rows into a per-block sum, then one over each column's
 * list. */
size_t pbw_cuda_resize_scratch_bytes(int mode, int H, int W, int OH, int OW);
void pbw_cuda_resize_forward(float *out, const float *x, int64_t planes, int H, int W, int OH,
                             int OW, int mode, void *scratch);
void pbw_cuda_resize_backward(float *dx, const float *dout, int64_t planes, int H, int W,
                              int OH, int OW, int mode, void *scratch);

/* ---------- separable filter ----------
 * Unlike the CPU (one (H,W) buffer per thread) the row pass of every plane is kept: the
 * scratch is planes*H*W floats, hence the different size function. k is device memory. */
size_t pbw_cuda_sep_filter2d_scratch_floats_planes(int64_t planes, int H, int W);
void pbw_cuda_sep_filter2d(float *out, const float *x, int64_t planes, int H, int W,
                           const float *k, int ksize, int accumulate, float *scratch);

/* ---------- StyleGAN2 fused ops (same contracts as pbw_cpu_stylegan.h) ----------
 * The reductions into s, s0, d and bias write per-block partial sums in double to the
 * runtime's workspace, then one thread per output adds them in a fixed order; those into m and
 * noise run one thread per pixel over channels. All deterministic. */
void pbw_cuda_sg_modulate_forward(float *out, const float *x, const float *s, const float *s0,
                                  const float *m, const pbw_cpu_sg_mod_geom *g);
void pbw_cuda_sg_modulate_backward(const float *gout, const float *x, const float *s,
                                   const float *s0, const float *m,
                                   const pbw_cpu_sg_mod_geom *g, float *gx, float *gs,
                                   float *gs0, float *gm, int gx_add);
void pbw_cuda_sg_bias_act_forward(float *out, const float *y, const float *d,
                                  const float *noise, const float *bias,
                                  const pbw_cpu_sg_act_geom *g);
void pbw_cuda_sg_bias_act_backward(const float *gout, const float *y, const float *d,
                                   const float *noise, const float *bias,
                                   const pbw_cpu_sg_act_geom *g, float *gy, float *gd,
                                   float *gnoise, float *gbias, int gy_add);

/* StyleGAN2's blur: kv and kh (K <= 16 taps) are HOST arrays, copied into the kernels'
 * parameters; no scratch (one fused pass), nthreads unused. */
void pbw_cuda_sg_blur_forward(float *out, const float *x, int64_t planes, int H, int W, int OH,
                              int OW, const float *kv, const float *kh, int K, int p0,
                              float *scratch, int nthreads);
/* Deterministic gather: gx += the adjoint (add 0: gx = it, gx not read). */
void pbw_cuda_sg_blur_backward(float *gx, const float *gout, int64_t planes, int H, int W,
                               int OH, int OW, const float *kv, const float *kh, int K, int p0,
                               float *scratch, int nthreads, int add);

/* pbw_sg_conv on the GPU (the CPU packs its weights in CPU-only layouts, so this reads the
 * plan's weight tensor instead). w (O,C,k,k) device memory.
 *   transposed = 0: out (N,O,H,W) = F.conv2d(x (N,C,H,W), w, padding k/2)
 *   transposed = 1: out (N,O,2H+k-2,2W+k-2) = F.conv_transpose2d(x, w.transpose(0,1), stride 2)
 * wt: for transposed = 1, w.transpose(0,1) (C,O,k,k), cuDNN's filter layout of the adjoint
 * convolution, made once by pbw_cuda_sg_conv_transpose_weight and kept by the caller (the op
 * front-end caches it with the plan); read by the forward and the backward; NULL otherwise.
 * wh: NULL, or while pbw_cuda_conv_staged() the half-precision KRSC copy of cuDNN's filter
 * (of w, or of wt when transposed) in the CURRENT precision's type (bf16 or fp16), made by
 * pbw_cuda_sg_conv_half_weight into pbw_cuda_sg_conv_half_weight_bytes of device memory and
 * kept by the caller (the front-end caches it with the plan, keyed by w's pointer and the
 * precision). With NULL a staged call converts w itself (one small kernel per call).
 * The backward ADDS the gradient of x into gx. */
void pbw_cuda_sg_conv_transpose_weight(float *wt, const float *w, int O, int C, int k);
/* 1 when the current precision runs convolutions on half NHWC staged copies (PBW_PREC_BF16 or
 * PBW_PREC_FP16, and PBW_CUDNN_NCHW unset). */
int pbw_cuda_conv_staged(void);
size_t pbw_cuda_sg_conv_half_weight_bytes(int O, int C, int k);
/* Enqueues wh = the KRSC copy of w (transposed = 0) or of w.transpose(0,1) (transposed = 1)
 * in the current precision's half type; nothing unless pbw_cuda_conv_staged(). */
void pbw_cuda_sg_conv_half_weight(void *wh, const float *w, int O, int C, int k,
                                  int transposed);
void pbw_cuda_sg_conv_forward(float *out, const float *x, const float *w, const float *wt,
                              const void *wh, int N, int C, int H, int W, int O, int k,
                              int transposed);
/* pbw_sg_modconv's input scale, applied as the input is staged: x * s[n,c], or with a mask
 * x * (s[n,c] m[n,p] + s0[n,c] (1 - m[n,p])), exactly as pbw_sg_modulate's forward (strides
 * as pbw_cpu_sg_mod_geom: 0 for a style or mask shared by the batch). */
typedef struct pbw_cuda_premod {
    const float *s, *s0, *m; /* s0 and m NULL unless masked */
    int64_t s_nstride, s0_nstride, m_nstride;
} pbw_cuda_premod;
/* StyleGAN2's bias, noise and activation applied to a convolution's output as it is copied
 * back (pbw_sg_modconv_act): out = pbw_cpu_sg_bias_act_forward's value of that output, with its
 * arithmetic. d, noise, bias and g as pbw_cpu_sg_bias_act_forward takes them. */
typedef struct pbw_cuda_postact {
    const float *d, *noise, *bias;
    pbw_cpu_sg_act_geom g;
} pbw_cuda_postact;
/* pbw_cuda_sg_conv_forward of the modulated input, then pa (may be NULL) on its output: 0 when
 * enqueued (or failed, recorded); -1, nothing written, when the convolution does not run on
 * staged half copies (the caller then modulates, convolves and activates apart). xh: NULL, or
 * x as NHWC halves of the precision's type (pbw_tensor.half_nhwc; x is then not read); outh:
 * NULL, or where the output stays as NHWC halves instead of out (pa, if any, applied there
 * before they are rounded once more). Both need even channel counts. */
int pbw_cuda_sg_conv_forward_mod(float *out, const float *x, const pbw_cuda_premod *pm,
                                 const pbw_cuda_postact *pa, const float *w, const float *wt,
                                 const void *wh, int N, int C, int H, int W, int O, int k,
                                 int transposed, const void *xh, void *outh);
/* Convolutions whose copy back applied a pbw_cuda_postact so far (tests). */
long pbw_cuda_sg_postact_calls(void);
/* pbw_cuda_sg_blur_forward, then pa (may be NULL) on its output (pbw_sg_blur_act); the planes
 * are pa's (N, O) in order. */
void pbw_cuda_sg_blur_act_forward(float *out, const float *x, int64_t planes, int H, int W,
                                  int OH, int OW, const float *kv, const float *kh, int K, int p0,
                                  const pbw_cuda_postact *pa);
/* The backward of pbw_cuda_sg_blur_act_forward (pa given, its d, noise and bias constants):
 * gx (planes,H,W) written (add 0) or added to (1) from gout, the gradient of its output out
 * (planes,OH,OW): pbw_cuda_sg_blur_backward of the pre-activation's gradient, which each gout
 * value becomes as the blur loads it (the pre-activation's sign read from out's; slope and
 * gain > 0). 0 when enqueued; -1, nothing done, for K other than 4 (the caller then forms the
 * pre-activation's gradient, pbw_cuda_sg_act_grad_from_out, and blurs it back). */
int pbw_cuda_sg_blur_act_backward(float *gx, const float *gout, const float *out, int64_t planes,
                                  int H, int W, int OH, int OW, const float *kv, const float *kh,
                                  int K, int p0, const pbw_cuda_postact *pa, int add);
/* Backward passes run by pbw_cuda_sg_blur_act_backward so far (tests). */
long pbw_cuda_sg_blur_act_backward_calls(void);
/* Blurs that applied a pbw_cuda_postact so far (tests). */
long pbw_cuda_sg_blur_postact_calls(void);
/* pbw_cuda_sg_blur_act_forward on half values in NHWC layout (pbw_tensor.half_nhwc): x
 * (N,H,W,C) and out (N,OH,OW,C) in the precision's half type, pa (may be NULL) on the fp32 sums
 * before out is rounded; pm (may be NULL; the premod of out's shape) then scales the rounded
 * value, rounded again (pbw_sg_blur_act_mod). 0 when enqueued; -1, nothing done, for an odd C
 * or K other than 4 (the caller then blurs fp32 values). */
int pbw_cuda_sg_blur_act_nhwc(void *out, const void *x, int N, int C, int H, int W, int OH,
                              int OW, const float *kv, const float *kh, int K, int p0,
                              const pbw_cuda_postact *pa, const pbw_cuda_premod *pm);
/* NHWC blurs so far (tests). */
long pbw_cuda_sg_blur_nhwc_calls(void);
/* y (N,O,P) = w_n (O,C) x_n for each sample n: a 1x1 convolution with a weight per sample
 * (pbw_sg_pointwise, StyleGAN2's ToRGB) of x held as NHWC halves of the precision's type
 * (pbw_tensor.half_nhwc), w (N,O,C) float, sums in fp32. With m (mask values of sample n at
 * m + n m_nstride, P of them; O even), y has O/2 outputs, y0 + m (y1 - y0) from outputs
 * O/2.. (y0) and ..O/2 (y1) (pbw_sg_pointwise_blend); with bias (O or O/2 floats) it is added
 * last; the roundings are those of the separate ops. 0 when enqueued; -1, nothing done,
 * unless C is a multiple of 8 up to 1024, O at most 8 and x 16-byte aligned. In bf16 with C a
 * multiple of 32 the products run on tensor cores with the weights split into three bf16
 * terms (fp32's precision; the sums' order differs from the other kernel's), unless
 * PBW_CUDA_TORGB_MMA=0. */
int pbw_cuda_sg_pointwise_nhwc(float *y, const void *xh, const float *w, int N, int C, int64_t P,
                               int O, const float *m, int64_t m_nstride, const float *bias);
/* pbw_cuda_sg_pointwise_nhwc calls that ran on tensor cores so far (tests). */
long pbw_cuda_sg_pointwise_mma_calls(void);
/* pbw_cuda_sg_pointwise_nhwc on xh holding a convolution's output before pa (its bias, noise and
 * activation; d one value a channel or none): the tensor-core kernel activates each value as it
 * loads it, rounded as pbw_cuda_sg_conv_forward_mod's copy back rounds it, writes it back into
 * xh and sums the activated values; y as pbw_cuda_sg_pointwise_nhwc's. -1, nothing done, unless
 * pbw_cuda_sg_pointwise_act_ok (the tensor-core kernel's shapes: bf16, C a multiple of 32). */
int pbw_cuda_sg_pointwise_act_ok(int N, int C, int64_t P, int O, const void *xh, const float *m,
                                 const pbw_cuda_postact *pa);
int pbw_cuda_sg_pointwise_nhwc_act(float *y, void *xh, const pbw_cuda_postact *pa, const float *w,
                                   int N, int C, int64_t P, int O, const float *m,
                                   int64_t m_nstride, const float *bias);
/* pbw_cuda_sg_pointwise_nhwc_act calls so far (tests). */
long pbw_cuda_sg_pointwise_act_calls(void);
/* (N,P,C) half values of the precision's type (pbw_tensor.half_nhwc) -> (N,C,P) float. */
void pbw_cuda_nhwc_half_to_f32(const void *h, float *y, int N, int C, int64_t P);
/* gx = beta gx + the input gradient (beta 0 or 1; gx not read for 0). */
void pbw_cuda_sg_conv_backward(float *gx, const float *gout, const float *w, const float *wt,
                               const void *wh, int N, int C, int H, int W, int O, int k,
                               int transposed, float beta);
/* The backward of pbw_cuda_sg_conv_forward_mod run with gradients on fp32 NCHW tensors (x in,
 * out out, no half copies): from gout, the gradient of out (N,O,OH,OW), y's through pa's
 * activation (pa NULL: none; its d, noise and bias are constants) is staged as halves, the
 * convolution's adjoint runs on them, and its half output is copied back as pbw_sg_modulate's
 * backward takes it (pm NULL: no style): gx (N,C,H,W) written (gx_beta 0) or added (1), gs and
 * gs0 (pm's shapes) added to, each NULL when not wanted (gs0 only with a mask). x is the
 * forward's input, read for the style gradients. Every rounding is the separate ops' (
 * sg_bias_act's, the staging's, sg_modulate's), the style sums in double in another order. 0
 * when enqueued (or failed, recorded); -1, nothing written, when the convolution does not run
 * on staged half copies (the caller then runs the separate ops' backwards). */
typedef struct pbw_cuda_modconv_bwd_args {
    const float *gout, *out, *x;
    const float *gout_add; /* NULL, or a second share of out's gradient, added to gout as it is
                            * read (pa set) */
    const pbw_cuda_premod *pm;
    const pbw_cuda_postact *pa;
    float *gx, *gs, *gs0;
    float gx_beta;
    /* where not NULL (and gs0 is), the style's partial sums are left here
     * (pbw_cuda_sg_modconv_parts doubles) for a later pbw_cuda_style_parts_finish, instead of
     * being added into gs by a kernel of their own now */
    double *gs_parts;
} pbw_cuda_modconv_bwd_args;
/* The doubles of pbw_cuda_modconv_bwd_args.gs_parts for N samples of C channels of H x W. */
int64_t pbw_cuda_sg_modconv_parts(int N, int C, int H, int W);
/* Partial sums left by a backward (gs_parts): dst[n nstride + c] += their sum over the
 * nparts partials of (n, c), each sample in order, as that backward would have added them. */
typedef struct pbw_cuda_style_parts {
    float *dst;
    const double *part;
    int N, C, nparts;
    int64_t nstride;
} pbw_cuda_style_parts;
#define PBW_CUDA_STYLE_PARTS_MAX 32
/* n (<= PBW_CUDA_STYLE_PARTS_MAX) of them in one kernel, enqueued. */
void pbw_cuda_style_parts_finish(int n, const pbw_cuda_style_parts *p);
/* Launches of pbw_cuda_style_parts_finish so far (tests). */
long pbw_cuda_style_parts_calls(void);
int pbw_cuda_sg_modconv_backward(const pbw_cuda_modconv_bwd_args *a, const float *w,
                                 const float *wt, const void *wh, int N, int C, int H, int W,
                                 int O, int k, int transposed);
/* gy (pa's (N,O,P)) = the gradient of y d + noise + bias, from gout, the gradient of
 * out = pa's activation of it, and out: pbw_cuda_sg_modconv_backward's first step on fp32 values
 * (its fallback). */
void pbw_cuda_sg_act_grad_from_out(float *gy, const float *gout, const float *out,
                                   const pbw_cuda_postact *pa);
/* Backward passes run by pbw_cuda_sg_modconv_backward so far (tests). */
long pbw_cuda_sg_modconv_backward_calls(void);

#ifdef __cplusplus
}
#endif
#endif
