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
                                  float *gm);          // (N|1,P) or NULL

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
                                  float *gbias);  // (O) or NULL

#ifdef __cplusplus
}
#endif
#endif
