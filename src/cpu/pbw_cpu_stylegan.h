/* pbw_cpu_stylegan.h: CPU kernels of the StyleGAN2 ops (src/core/pbw_ops_stylegan.c).
 *
 * Raw float32 pointers, shapes checked by the ops. Forward kernels overwrite their output;
 * backward kernels ADD into the gradient buffers they are given (NULL: not wanted). Style and
 * mask arrays carry a batch stride that is 0 when one row is shared by the whole batch.
 * Reductions over pixels accumulate in double: a 256x256 map summed in float loses digits
 * that the 1e-3 gradient tolerance against PyTorch would feel after a dozen layers.
 */
#ifndef PBW_CPU_STYLEGAN_H
#define PBW_CPU_STYLEGAN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct pbw_cpu_sg_mod_geom {
    int N, C;
    int64_t P;          /* pixels per plane */
    int64_t s_nstride;  /* C or 0 */
    int64_t s0_nstride; /* C or 0 */
    int64_t m_nstride;  /* P or 0 */
} pbw_cpu_sg_mod_geom;

void pbw_cpu_sg_modulate_forward(float *out,        // (N,C,P)
                                 const float *x,    // (N,C,P)
                                 const float *s,    // (N|1,C)
                                 const float *s0,   // (N|1,C) or NULL
                                 const float *m,    // (N|1,P) or NULL (then s0 is unused)
                                 const pbw_cpu_sg_mod_geom *g);

void pbw_cpu_sg_modulate_backward(const float *gout, // (N,C,P)
                                  const float *x, const float *s, const float *s0,
                                  const float *m, const pbw_cpu_sg_mod_geom *g,
                                  float *gx,           // (N,C,P) or NULL
                                  float *gs,           // (N|1,C) or NULL
                                  float *gs0,          // (N|1,C) or NULL
                                  float *gm,           // (N|1,P) or NULL
                                  int gx_add);         // 0: gx = its gradient (gx not read)

typedef struct pbw_cpu_sg_act_geom {
    int N, O;
    int64_t P;
    int d_mode;             /* 0: none, 1: per channel (N|1,O), 2: per pixel (N,O,P) */
    int64_t d_nstride;      /* per channel: O or 0 */
    int64_t noise_nstride;  /* P or 0; noise NULL means none */
    float noise_weight, slope, gain;
} pbw_cpu_sg_act_geom;

void pbw_cpu_sg_bias_act_forward(float *out,          // (N,O,P)
                                 const float *y,      // (N,O,P)
                                 const float *d,      // see d_mode, or NULL
                                 const float *noise,  // (N|1,P) or NULL
                                 const float *bias,   // (O) or NULL
                                 const pbw_cpu_sg_act_geom *g);

void pbw_cpu_sg_bias_act_backward(const float *gout, const float *y, const float *d,
                                  const float *noise, const float *bias,
                                  const pbw_cpu_sg_act_geom *g,
                                  float *gy,      // (N,O,P) or NULL
                                  float *gd,      // like d, or NULL
                                  float *gnoise,  // (N|1,P) or NULL
                                  float *gbias,   // (O) or NULL
                                  int gy_add);    // 0: gy = its gradient (gy not read)

/* ---------- convolution with frozen, pre-packed weights (pbw_cpu_sgconv.c) ---------- */

/* A correlation of x (N,C,H,W) with a (O,C,KH,KW) weight, stride (sh,sw), top/left padding
 * (ph,pw), computed on the output grid (OH,OW) (bottom/right padding is implied by OH, OW).
 * Output (oy,ox) of channel o of sample n goes to
 *   out[(n*O + o)*out_cstride + (oy*out_step + out_y0)*out_rstride + ox*out_step + out_x0]
 * which for a plain convolution is out_cstride = OH*OW, out_rstride = OW, step 1, offsets 0,
 * and for one phase (a,b) of a stride-2 transposed convolution step 2, offsets (a,b). */
typedef struct pbw_cpu_sgconv_geom {
    int C, H, W;
    int O, KH, KW;
    int OH, OW;
    int sh, sw, ph, pw;
    int64_t out_cstride;
    int out_rstride, out_step, out_y0, out_x0;
} pbw_cpu_sgconv_geom;

/* Floats of a weight (O, K) packed for the kernel, K = C*KH*KW. */
size_t pbw_cpu_sgconv_packed_floats(int O, int64_t K);
void pbw_cpu_sgconv_pack_weight(float *dst,       // pbw_cpu_sgconv_packed_floats(O, K)
                                const float *w,   // (O,K) row-major
                                int O, int64_t K);
/* Threads the forward will use, and the scratch it needs for them (64-byte aligned). */
int pbw_cpu_sgconv_threads(void);
size_t pbw_cpu_sgconv_scratch_floats(const pbw_cpu_sgconv_geom *g, int nthreads);
/* out = (or += with accumulate) conv(x, w) placed as the geometry says. */
void pbw_cpu_sgconv_forward(float *out,          // see the placement above
                            const float *x,      // (N,C,H,W)
                            const float *wpack,  // packed (O, C*KH*KW)
                            const pbw_cpu_sgconv_geom *g, int N, int accumulate,
                            float *scratch,      // pbw_cpu_sgconv_scratch_floats(g, nthreads)
                            int nthreads);

/* Winograd F(2x2,3x3) for 3x3 convolutions with stride 1 and padding 1 (same size out). The
 * weight w (O,C,3,3) is transformed and packed once: 16 matrices of
 * pbw_cpu_sgconv_packed_floats(O, C) floats. */
size_t pbw_cpu_sgconv_wino_packed_floats(int O, int C);
void pbw_cpu_sgconv_wino_pack(float *dst, const float *w, int O, int C);
size_t pbw_cpu_sgconv_wino_scratch_floats(int C, int O, int W, int nthreads);
/* out (N,O,H,W) = (or += with accumulate) conv(x (N,C,H,W), w, padding 1). */
void pbw_cpu_sgconv_wino_forward(float *out, const float *x, const float *upack, int C, int H,
                                 int W, int O, int N, int accumulate, float *scratch,
                                 int nthreads);

/* ---------- separable FIR blur (StyleGAN2's Blur: upfirdn2d with up = down = 1) ---------- */

/* out = upfirdn2d(x, kv (x) kh, pad (p0, p1) on both axes): a true convolution (kernels
 * flipped) of every (H,W) plane, computed as a row pass then a column pass. K <= 16 taps;
 * OH = H + p0 + p1 - K + 1, likewise OW. Scratch: pbw_cpu_sg_blur_scratch_floats floats. */
size_t pbw_cpu_sg_blur_scratch_floats(int H, int W, int OH, int OW, int nthreads);
void pbw_cpu_sg_blur_forward(float *out,       // (planes,OH,OW)
                             const float *x,   // (planes,H,W)
                             int64_t planes, int H, int W, int OH, int OW,
                             const float *kv, const float *kh, int K, int p0,
                             float *scratch, int nthreads);
/* gx += the adjoint of the forward applied to gout. */
void pbw_cpu_sg_blur_backward(float *gx,          // (planes,H,W)
                              const float *gout,  // (planes,OH,OW)
                              int64_t planes, int H, int W, int OH, int OW,
                              const float *kv, const float *kh, int K, int p0,
                              float *scratch, int nthreads);

#ifdef __cplusplus
}
#endif
#endif
