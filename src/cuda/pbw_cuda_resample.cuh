// pbw_cuda_resample.cuh: PyTorch's bicubic taps on the device, shared by the resize kernels
// (pbw_cuda_resample.cu) and CLIP's crops (pbw_cuda_paint.cu). Every step is rounded exactly
// where the CPU's resize_axis (src/cpu/pbw_cpu_resample.c) rounds: fmaf where it has fmaf,
// separately rounded products and sums elsewhere (nvcc would otherwise contract them), the
// source coordinate in double, so the taps equal the CPU's bit for bit.
#ifndef PBW_CUDA_RESAMPLE_CUH
#define PBW_CUDA_RESAMPLE_CUH

#include <stdint.h>

// Keys' cubic convolution weights (a = A) for |x| <= 1 and 1 < |x| < 2.
static __device__ __forceinline__ float pbw_dev_cubic1(float x, float A) {
    float t = fmaf(A + 2, x, -(A + 3));
    t = __fmul_rn(t, x);
    return __fadd_rn(__fmul_rn(t, x), 1.0f);
}
static __device__ __forceinline__ float pbw_dev_cubic2(float x, float A) {
    float t = __fadd_rn(__fmul_rn(A, x), -__fmul_rn(5.0f, A));
    t = fmaf(t, x, __fmul_rn(8.0f, A));
    return __fadd_rn(__fmul_rn(t, x), -__fmul_rn(4.0f, A));
}

// The 4 taps (indices clamped to the border, weights) of output o of an axis resized from
// `in` to `out` samples, bicubic with a = -0.75 and align_corners=False.
static __device__ __forceinline__ void pbw_dev_bicubic_taps(int o, int in, int out, int *ix,
                                                            float *w) {
    const float A = -0.75f;
    const float scale = __fdiv_rn((float)in, (float)out);
    double src = __dadd_rn(__dmul_rn((double)scale, __dadd_rn((double)o, 0.5)), -0.5);
    double fl = floor(src);
    int64_t i0 = (int64_t)fl;
    float tt = (float)__dadd_rn(src, -fl);
    w[0] = pbw_dev_cubic2(__fadd_rn(tt, 1.0f), A);
    w[1] = pbw_dev_cubic1(tt, A);
    w[2] = pbw_dev_cubic1(__fadd_rn(1.0f, -tt), A);
    w[3] = pbw_dev_cubic2(__fadd_rn(2.0f, -tt), A);
    for (int j = 0; j < 4; j++) {
        int64_t v = i0 - 1 + j;
        ix[j] = (int)(v < 0 ? 0 : v > in - 1 ? in - 1 : v);
    }
}

#endif
