// pbw_cuda_paint.cu: CLIP's crops on the GPU (see pbw_cuda_paint.h). One thread per output
// pixel; the bicubic taps are computed in the thread, bit-equal to the CPU's
// (pbw_cuda_resample.cuh).
#include "cuda/pbw_cuda_internal.cuh"
#include "cuda/pbw_cuda_resample.cuh"
#include "cuda/pbw_cuda_paint.h"

// Where output element i (unit u = b*n + k, channel, pixel oy, ox of R x R) reads: the offset
// of its crop's top-left corner in x (B,3,H,W), the crop's side and the output pixel.
struct crop_site {
    int64_t base;
    int ch, sd, oy, ox;
};

__device__ __forceinline__ crop_site crop_site_of(int64_t i, int64_t H, int64_t W,
                                                  const int *__restrict__ crops, int n, int R) {
    const int64_t RR = (int64_t)R * R, p = i % RR, uc = i / RR;
    const int64_t u = uc / 3, b = u / n;
    const int k = (int)(u % n), ch = (int)(uc % 3);
    const int cy = crops[3 * k], cx = crops[3 * k + 1];
    return {(b * 3 + ch) * H * W + (int64_t)cy * W + cx, ch, crops[3 * k + 2], (int)(p / R),
            (int)(p % R)};
}

__global__ static void crops_fwd_kernel(const float *__restrict__ x, int64_t B, int64_t H,
                                        int64_t W, const int *__restrict__ crops, int n, int R,
                                        pbw_cuda_norm3 norm, float *__restrict__ out,
                                        uint8_t *__restrict__ pass) {
    const int64_t RR = (int64_t)R * R, total = B * n * 3 * RR;
    PBW_GRID_STRIDE(i, total) {
        const crop_site c = crop_site_of(i, H, W, crops, n, R);
        const int ch = c.ch, sd = c.sd, oy = c.oy, ox = c.ox;
        const float *xp = x + c.base;
        float v;
        if (sd == R) {
            v = xp[(int64_t)oy * W + ox] * 0.5f + 0.5f;
        } else {
            int iy[4], ix[4];
            float wy[4], wx[4];
            pbw_dev_bicubic_taps(oy, sd, R, iy, wy);
            pbw_dev_bicubic_taps(ox, sd, R, ix, wx);
            v = 0.0f;
            for (int j = 0; j < 4; j++) {
                const float *row = xp + (int64_t)iy[j] * W;
                float r = 0.0f;
                for (int q = 0; q < 4; q++) r += wx[q] * (row[ix[q]] * 0.5f + 0.5f);
                v += wy[j] * r;
            }
        }
        if (pass) pass[i] = v >= 0.0f && v <= 1.0f;
        v = v < 0.0f ? 0.0f : (v > 1.0f ? 1.0f : v);
        out[i] = (v - norm.mean[ch]) / norm.std[ch];
    }
}

__global__ static void crops_bwd_kernel(const float *__restrict__ gy,
                                        const uint8_t *__restrict__ pass, int64_t B, int64_t H,
                                        int64_t W, const int *__restrict__ crops, int n, int R,
                                        pbw_cuda_norm3 norm, float *__restrict__ gx) {
    const int64_t RR = (int64_t)R * R, total = B * n * 3 * RR;
    PBW_GRID_STRIDE(i, total) {
        if (!pass[i]) continue;
        const crop_site c = crop_site_of(i, H, W, crops, n, R);
        const int sd = c.sd, oy = c.oy, ox = c.ox;
        const float g = gy[i] / norm.std[c.ch] * 0.5f;
        float *gp = gx + c.base;
        if (sd == R) {
            atomicAdd(gp + (int64_t)oy * W + ox, g);
            continue;
        }
        int iy[4], ix[4];
        float wy[4], wx[4];
        pbw_dev_bicubic_taps(oy, sd, R, iy, wy);
        pbw_dev_bicubic_taps(ox, sd, R, ix, wx);
        for (int j = 0; j < 4; j++)
            for (int q = 0; q < 4; q++) atomicAdd(gp + (int64_t)iy[j] * W + ix[q], g * wy[j] * wx[q]);
    }
}

extern "C" void pbw_cuda_clip_crops_forward(const float *x, int64_t B, int64_t H, int64_t W,
                                            const int *crops, int n, int R, pbw_cuda_norm3 norm,
                                            float *out, uint8_t *pass) {
    int64_t total = B * n * 3 * (int64_t)R * R;
    if (total <= 0) return;
    crops_fwd_kernel<<<pbw_grid(total), 256, 0, pbw_stream()>>>(x, B, H, W, crops, n, R, norm,
                                                                 out, pass);
    PBW_CUDA_LAUNCHED("clip_crops forward");
}

extern "C" void pbw_cuda_clip_crops_backward(const float *gy, const uint8_t *pass, int64_t B,
                                             int64_t H, int64_t W, const int *crops, int n,
                                             int R, pbw_cuda_norm3 norm, float *gx) {
    int64_t total = B * n * 3 * (int64_t)R * R;
    if (total <= 0) return;
    crops_bwd_kernel<<<pbw_grid(total), 256, 0, pbw_stream()>>>(gy, pass, B, H, W, crops, n, R,
                                                                 norm, gx);
    PBW_CUDA_LAUNCHED("clip_crops backward");
}
