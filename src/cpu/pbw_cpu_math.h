/* pbw_cpu_math.h: small math kernels written so that the compiler vectorizes loops calling
 * them (-O3 with AVX2/FMA, no -ffast-math): libm's expf is a scalar call that no loop around it
 * can vectorize, and it dominated softmax, sigmoid and QuickGELU.
 *
 * pbw_expf: exp(x) for float x, within 1.1 ulp of exp on [-87.3, 88.7] (Cody-Waite range
 * reduction with a two-part ln 2, then Cephes' degree-6 polynomial). Inputs are clamped to
 * that range (below: about 1e-38 instead of a denormal or 0; above: 3.3e38 instead of inf),
 * because any select after the polynomial stops GCC from vectorizing the loop; NaN stays NaN.
 * The CUDA kernels (sigmoid, QuickGELU) call the same function, so the backends agree.
 */
#ifndef PBW_CPU_MATH_H
#define PBW_CPU_MATH_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#ifdef __CUDACC__
#define PBW_HOST_DEVICE __host__ __device__
#else
#define PBW_HOST_DEVICE
#endif

static inline PBW_HOST_DEVICE float pbw_expf(float x) {
    /* n = round(x / ln 2) by the 1.5 * 2^23 trick (vectorizes, unlike rintf without SSE4.1
     * flags); r = x - n ln 2 in [-ln2/2, ln2/2] */
    float xc = x < -87.3f ? -87.3f : (x > 88.7f ? 88.7f : x);
    /* fmaf, not x*a+b: GCC folds a multiply into the clamp's branches and gives up vectorizing */
    float t = fmaf(xc, 1.44269504088896341f, 12582912.0f);
    float n = t - 12582912.0f;
    float r = fmaf(n, -0.693359375f, xc);
    r = fmaf(n, 2.12194440e-4f, r);
    float p = 1.9875691500e-4f;
    p = fmaf(p, r, 1.3981999507e-3f);
    p = fmaf(p, r, 8.3334519073e-3f);
    p = fmaf(p, r, 4.1665795894e-2f);
    p = fmaf(p, r, 1.6666665459e-1f);
    p = fmaf(p, r, 5.0000001201e-1f);
    p = fmaf(p * r, r, r) + 1.0f;
    /* 2^n as two factors so that n = 128 (x near 88.7) does not overflow the exponent */
    int32_t ni = (int32_t)n, n1 = ni >> 1, n2 = ni - n1;
    int32_t e1 = (n1 + 127) << 23, e2 = (n2 + 127) << 23;
    float s1, s2;
    memcpy(&s1, &e1, sizeof s1);
    memcpy(&s2, &e2, sizeof s2);
    return p * s1 * s2;
}

#endif
