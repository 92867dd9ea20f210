/* pbw_cpu_conv.h: CPU kernels for convolution and resampling, on raw float32 pointers.
 *
 * These are the compute halves of the ops in pbw_ops.h (pbw_conv2d, pbw_conv_transpose2d,
 * pbw_upfirdn2d, pbw_resize, pbw_gaussian_blur). They check nothing: the ops in
 * src/core/pbw_ops_conv.c and pbw_ops_resample.c validate shapes and parameters and hand them
 * here. They allocate nothing either: a kernel that needs temporaries takes a `scratch` pointer
 * of the size its *_scratch_floats function says (the op gets it from pbw_ctx_scratch).
 *
 * Forward kernels overwrite their output unless told to accumulate; backward kernels always
 * ADD into the gradient buffers they are given (several ops may feed one tensor).
 *
 * Convolution is im2col + OpenBLAS sgemm, tiled over output positions so that the column
 * buffer stays bounded whatever the image size. Several small samples are packed into one
 * GEMM when one sample alone would make a skinny one; 1x1 stride-1 convolutions skip im2col.
 * Threads are OpenMP's (omp_get_max_threads()); the conv kernels run OpenBLAS single-threaded
 * inside them and restore OpenBLAS's thread count when they return. Scratch sizes depend on
 * the thread count, so ask for them in the same thread configuration as the call.
 * A transposed convolution is the adjoint of a convolution: its forward is the convolution's
 * backward-data kernel and its backward-data is the convolution's forward (see
 * src/core/pbw_ops_conv.c).
 */
#ifndef PBW_CPU_CONV_H
#define PBW_CPU_CONV_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Geometry of one convolution as F.conv2d sees it: input (N,C,H,W), weight (O,C/G,KH,KW),
 * output (N,O,OH,OW). Strides and dilations are >= 1, pads >= 0, G divides C and O. OH and OW
 * are given, not recomputed, so a transposed convolution can describe itself as the adjoint
 * of a convolution whose output size is its input size. */
typedef struct pbw_cpu_conv_geom {
    int N, C, H, W;
    int O, KH, KW;
    int OH, OW;
    int sh, sw;
    int ph, pw;
    int dh, dw;
    int G;
} pbw_cpu_conv_geom;

/* Tuning for tests and benchmarks: tile_cols forces the number of output positions per
 * im2col tile (0: automatic); min_macs is the size below which a convolution runs on one
 * thread (0: the default, about 4M multiply-adds). Tests lower both to drive every tiling and
 * threading path with small tensors. Not thread-safe; set it before running ops. */
void pbw_cpu_conv_tune(int64_t tile_cols, int64_t min_macs);

/* Floats of scratch the three conv kernels below need for this geometry (0 for 1x1). */
size_t pbw_cpu_conv2d_scratch_floats(const pbw_cpu_conv_geom *g);

/* out = conv(x, w) + b, or out += conv(x, w) + b when accumulate is nonzero. b may be NULL. */
void pbw_cpu_conv2d_forward(float *out,        // (N,O,OH,OW)
                            const float *x,    // (N,C,H,W)
                            const float *w,    // (O,C/G,KH,KW)
                            const float *b,    // (O) or NULL
                            const pbw_cpu_conv_geom *g, int accumulate,
                            float *scratch);   // pbw_cpu_conv2d_scratch_floats(g)

/* dx += conv(., w)^T (dout): the gradient of the input (col2im of W^T dout). */
void pbw_cpu_conv2d_backward_data(float *dx,          // (N,C,H,W), accumulated
                                  const float *dout,  // (N,O,OH,OW)
                                  const float *w,     // (O,C/G,KH,KW)
                                  const pbw_cpu_conv_geom *g,
                                  float *scratch);    // pbw_cpu_conv2d_scratch_floats(g)

/* dw += dout (x)^T per group: the gradient of the weight. */
void pbw_cpu_conv2d_backward_weight(float *dw,          // (O,C/G,KH,KW), accumulated
                                    const float *dout,  // (N,O,OH,OW)
                                    const float *x,     // (N,C,H,W)
                                    const pbw_cpu_conv_geom *g,
                                    float *scratch);    // pbw_cpu_conv2d_scratch_floats(g)

/* out[n,o,:] += b[o]: the bias of a convolution or transposed convolution. */
void pbw_cpu_conv2d_add_bias(float *out,       // (N,O,P)
                             const float *b,   // (O)
                             int N, int O, int64_t P);

/* db[o] += sum over n, y, x of dout[n,o,y,x]. */
void pbw_cpu_conv2d_backward_bias(float *db,          // (O), accumulated
                                  const float *dout,  // (N,O,P)
                                  int N, int O, int64_t P);

/* ---------- upfirdn2d (StyleGAN2) ---------- */

/* Geometry of upfirdn2d on `planes` = N*C independent (H,W) planes with a (KH,KW) FIR kernel;
 * OH = (H*up + py0 + py1 - KH)/down + 1, likewise OW. Pads may be negative (crop). */
typedef struct pbw_cpu_upfirdn_geom {
    int64_t planes;
    int H, W, KH, KW, OH, OW;
    int up, down;
    int px0, px1, py0, py1;
} pbw_cpu_upfirdn_geom;

/* Ints of scratch for the index tables (both kernels). */
size_t pbw_cpu_upfirdn2d_scratch_ints(const pbw_cpu_upfirdn_geom *g);

/* out = downsample(convolve(pad(upsample(x)), k)): true convolution, the kernel flipped
 * against correlation, as StyleGAN2's upfirdn2d. */
void pbw_cpu_upfirdn2d_forward(float *out,       // (planes,OH,OW)
                               const float *x,   // (planes,H,W)
                               const float *k,   // (KH,KW)
                               const pbw_cpu_upfirdn_geom *g,
                               int *scratch);    // pbw_cpu_upfirdn2d_scratch_ints(g)

/* dx += the adjoint of the forward applied to dout. */
void pbw_cpu_upfirdn2d_backward(float *dx,          // (planes,H,W), accumulated
                                const float *dout,  // (planes,OH,OW)
                                const float *k,     // (KH,KW)
                                const pbw_cpu_upfirdn_geom *g,
                                int *scratch);      // pbw_cpu_upfirdn2d_scratch_ints(g)

/* ---------- resize (F.interpolate) ---------- */

/* mode: 0 nearest, 1 bilinear, 2 bicubic (the values of pbw_resize_mode). Index and weight
 * tables are computed in float as PyTorch 1.13's CPU kernels do, and each output is summed in
 * the same order (rows of the 2-D tap window outer, columns inner). Scratch holds the tables. */
size_t pbw_cpu_resize_scratch_bytes(int mode, int H, int W, int OH, int OW);

void pbw_cpu_resize_forward(float *out,       // (planes,OH,OW)
                            const float *x,   // (planes,H,W)
                            int64_t planes, int H, int W, int OH, int OW, int mode,
                            void *scratch);   // pbw_cpu_resize_scratch_bytes(...)

void pbw_cpu_resize_backward(float *dx,          // (planes,H,W), accumulated
                             const float *dout,  // (planes,OH,OW)
                             int64_t planes, int H, int W, int OH, int OW, int mode,
                             void *scratch);     // pbw_cpu_resize_scratch_bytes(...)

/* ---------- separable filter (Gaussian blur) ---------- */

size_t pbw_cpu_sep_filter2d_scratch_floats(int H, int W);

/* out (=, or += when accumulate) the correlation of every plane with k (ksize, odd) along
 * rows and then along columns, zero padding, same size. With a symmetric k this map is its own
 * adjoint, so the blur's backward is the same call with accumulate = 1. */
void pbw_cpu_sep_filter2d(float *out,        // (planes,H,W)
                          const float *x,    // (planes,H,W)
                          int64_t planes, int H, int W,
                          const float *k,    // (ksize)
                          int ksize, int accumulate,
                          float *scratch);   // pbw_cpu_sep_filter2d_scratch_floats(H,W)
#ifdef __cplusplus
}
#endif
#endif
