// pbw_cuda_elementwise.cu: CUDA twins of src/cpu/pbw_cpu_elementwise.c and
// src/cpu/pbw_cpu_pool.c (see pbw_cuda_elementwise.h): unary ops and their gradients,
// broadcasting binary ops, strided copies and accumulations (the reductions and shape ops of
// pbw_ops_shape.c), max pooling.
//
// The strided kernels work on the 5-D index space of the CPU kernels after a host-side
// simplification: dims of size 1 are dropped and neighbours that every operand walks
// contiguously are merged, so a same-shape op becomes one flat loop with no index arithmetic
// and a bias broadcast becomes two or three dims. Index decomposition runs in 32-bit integers
// when the index space allows (64-bit division costs more than the memory traffic).
//
// Reductions (accumulate with zero output strides, the gradient of a broadcast operand) are
// gathers: each destination element is summed in double by a fixed group of threads in a fixed
// order, and when there are too few destinations to fill the GPU the reduction axis is split
// over blocks that write partial sums to the runtime workspace, summed in order by a second
// kernel. Results are therefore the same bits every run (not the CPU's bits: the summation
// order differs, within fp32 rounding of the CPU's double-accumulated rows).
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>

#include "cpu/pbw_cpu_math.h"
#include "cuda/pbw_cuda.h"
#include "cuda/pbw_cuda_elementwise.h"
#include "cuda/pbw_cuda_internal.cuh"

// ---------------------------------------------------------------------------------------------
// unary ops

__device__ __forceinline__ float dev_sigmoid(float x) { return 1.0f / (1.0f + pbw_expf(-x)); }

template <int OP>
__device__ __forceinline__ float unary_f(float v, float p0, float p1) {
    switch (OP) {
    case PBW_UN_AFFINE: return v * p0 + p1;
    case PBW_UN_RELU: return v > 0 ? v : 0.0f;
    case PBW_UN_LEAKY_RELU: return v > 0 ? v : v * p0;
    case PBW_UN_GELU: return 0.5f * v * (1.0f + erff(v * 0.70710678118654752f)); // exact erf GELU
    case PBW_UN_QUICK_GELU: return v * dev_sigmoid(1.702f * v);
    case PBW_UN_SIGMOID: return dev_sigmoid(v);
    case PBW_UN_TANH: return tanhf(v);
    case PBW_UN_SQRT: return sqrtf(v);
    case PBW_UN_RSQRT: return 1.0f / sqrtf(v); // not rsqrtf: the CPU divides
    case PBW_UN_EXP: return expf(v);
    case PBW_UN_ABS: return fabsf(v);
    case PBW_UN_SQUARE: return v * v;
    case PBW_UN_CLAMP: return v < p0 ? p0 : (v > p1 ? p1 : v);
    }
    return 0.0f;
}

// d y / d x * g from the input v and the output o, with the CPU's conventions at the kinks:
// relu and leaky relu take the x <= 0 branch at 0, abs has gradient 0 at 0, clamp passes the
// gradient on the closed interval [p0, p1].
template <int OP>
__device__ __forceinline__ float unary_g(float v, float o, float g, float p0, float p1) {
    switch (OP) {
    case PBW_UN_AFFINE: return g * p0;
    case PBW_UN_RELU: return v > 0 ? g : 0.0f;
    case PBW_UN_LEAKY_RELU: return v > 0 ? g : g * p0;
    case PBW_UN_GELU:
        return g * (0.5f * (1.0f + erff(v * 0.70710678118654752f)) +
                    v * 0.39894228040143268f * expf(-0.5f * v * v));
    case PBW_UN_QUICK_GELU: {
        float s = dev_sigmoid(1.702f * v);
        return g * (s * (1.0f + 1.702f * v * (1.0f - s)));
    }
    case PBW_UN_SIGMOID: return g * o * (1.0f - o);
    case PBW_UN_TANH: return g * (1.0f - o * o);
    case PBW_UN_SQRT: return g * 0.5f / o;
    case PBW_UN_RSQRT: return g * -0.5f * o * o * o;
    case PBW_UN_EXP: return g * o;
    case PBW_UN_ABS: return v > 0 ? g : (v < 0 ? -g : 0.0f);
    case PBW_UN_SQUARE: return 2.0f * v * g;
    case PBW_UN_CLAMP: return v >= p0 && v <= p1 ? g : 0.0f;
    }
    return 0.0f;
}

// Which of x and y a gradient reads (the other may be any pointer, even NULL, on the CPU side;
// here we skip the load so that an op whose gradient needs only y never touches x).
template <int OP> struct unary_reads {
    static constexpr bool x = OP != PBW_UN_AFFINE && OP != PBW_UN_SIGMOID && OP != PBW_UN_TANH &&
                              OP != PBW_UN_SQRT && OP != PBW_UN_RSQRT && OP != PBW_UN_EXP;
    static constexpr bool y = OP == PBW_UN_SIGMOID || OP == PBW_UN_TANH || OP == PBW_UN_SQRT ||
                              OP == PBW_UN_RSQRT || OP == PBW_UN_EXP;
};

template <int OP>
__global__ void k_unary_fwd(float p0, float p1, const float *__restrict__ x, float *y, int64_t n) {
    pbw_pdl_wait();
    PBW_GRID_STRIDE(i, n) y[i] = unary_f<OP>(x[i], p0, p1);
}

template <int OP>
__global__ void k_unary_bwd(float p0, float p1, const float *__restrict__ x,
                            const float *__restrict__ y, const float *__restrict__ gy, float *gx,
                            int64_t n, int add) {
    pbw_pdl_wait();
    PBW_GRID_STRIDE(i, n) {
        float v = unary_reads<OP>::x ? x[i] : 0.0f;
        float o = unary_reads<OP>::y ? y[i] : 0.0f;
        const float g = unary_g<OP>(v, o, gy[i], p0, p1);
        gx[i] = add ? gx[i] + g : g;
    }
}

// The same, four elements a thread with 16-byte loads and stores (n a multiple of 4, every
// pointer 16-byte aligned): the scalar loop left a 157 MB QuickGELU at ~2 TB/s on an H200.
template <int OP>
__global__ void k_unary_fwd4(float p0, float p1, const float4 *__restrict__ x, float4 *y,
                             int64_t n4) {
    pbw_pdl_wait();
    PBW_GRID_STRIDE(i, n4) {
        float4 v = x[i];
        y[i] = make_float4(unary_f<OP>(v.x, p0, p1), unary_f<OP>(v.y, p0, p1),
                           unary_f<OP>(v.z, p0, p1), unary_f<OP>(v.w, p0, p1));
    }
}

// r plus the gradient of four elements at index i (x and y read only where the op needs them).
template <int OP>
__device__ __forceinline__ float4 unary_g4_add(float4 r, const float4 *__restrict__ x,
                                               const float4 *__restrict__ y, float4 g, int64_t i,
                                               float p0, float p1) {
    const float4 z = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    const float4 v = unary_reads<OP>::x ? x[i] : z, o = unary_reads<OP>::y ? y[i] : z;
    r.x += unary_g<OP>(v.x, o.x, g.x, p0, p1);
    r.y += unary_g<OP>(v.y, o.y, g.y, p0, p1);
    r.z += unary_g<OP>(v.z, o.z, g.z, p0, p1);
    r.w += unary_g<OP>(v.w, o.w, g.w, p0, p1);
    return r;
}

template <int OP>
__global__ void k_unary_bwd4(float p0, float p1, const float4 *__restrict__ x,
                             const float4 *__restrict__ y, const float4 *__restrict__ gy,
                             float4 *gx, int64_t n4, int add) {
    pbw_pdl_wait();
    PBW_GRID_STRIDE(i, n4) {
        const float4 z = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        // add 0: gx holds no values yet (pbw_grad_out)
        gx[i] = unary_g4_add<OP>(add ? gx[i] : z, x, y, gy[i], i, p0, p1);
    }
}

// k_unary_fwd4 that also stores y in the half type H (a product's operand follows).
template <int OP, typename H>
__global__ void k_unary_fwd4h(float p0, float p1, const float4 *__restrict__ x, float4 *y,
                              H *yh, int64_t n4) {
    pbw_pdl_wait();
    PBW_GRID_STRIDE(i, n4) {
        float4 v = x[i];
        float4 o = make_float4(unary_f<OP>(v.x, p0, p1), unary_f<OP>(v.y, p0, p1),
                               unary_f<OP>(v.z, p0, p1), unary_f<OP>(v.w, p0, p1));
        if (y) y[i] = o;
        reinterpret_cast<uint2 *>(yh)[i] = pbw_pack_half4<H>(o);
    }
}

static bool vec4_ok(int64_t n, const void *a, const void *b, const void *c, const void *d) {
    const uintptr_t m = (uintptr_t)a | (uintptr_t)b | (uintptr_t)c | (uintptr_t)d;
    return n % 4 == 0 && (m & 15) == 0;
}

template <int OP>
static void launch_unary(bool bwd, float p0, float p1, const float *x, const float *y,
                         const float *gy, float *out, int64_t n, int add) {
    if (vec4_ok(n, x, y, gy, out)) { // NULL operands (not read) are aligned
        const int64_t n4 = n / 4;
        if (bwd)
            pbw_launch(k_unary_bwd4<OP>, pbw_grid(n4), 256, 0, p0, p1, (const float4 *)x,
                       (const float4 *)y, (const float4 *)gy, (float4 *)out, n4, add);
        else
            pbw_launch(k_unary_fwd4<OP>, pbw_grid(n4), 256, 0, p0, p1, (const float4 *)x,
                       (float4 *)out, n4);
        PBW_CUDA_LAUNCHED(bwd ? "unary_backward" : "unary_forward");
        return;
    }
    if (bwd) {
        pbw_launch(k_unary_bwd<OP>, pbw_grid(n), 256, 0, p0, p1, x, y, gy, out, n, add);
        PBW_CUDA_LAUNCHED("unary_backward");
    } else {
        pbw_launch(k_unary_fwd<OP>, pbw_grid(n), 256, 0, p0, p1, x, out, n);
        PBW_CUDA_LAUNCHED("unary_forward");
    }
}

static void unary_dispatch(pbw_unary_op op, bool bwd, float p0, float p1, const float *x,
                           const float *y, const float *gy, float *out, int64_t n, int add) {
    if (n <= 0) return;
#define UN_CASE(OP)                                                                             \
    case OP: launch_unary<OP>(bwd, p0, p1, x, y, gy, out, n, add); break;
    switch (op) {
        UN_CASE(PBW_UN_AFFINE)
        UN_CASE(PBW_UN_RELU)
        UN_CASE(PBW_UN_LEAKY_RELU)
        UN_CASE(PBW_UN_GELU)
        UN_CASE(PBW_UN_QUICK_GELU)
        UN_CASE(PBW_UN_SIGMOID)
        UN_CASE(PBW_UN_TANH)
        UN_CASE(PBW_UN_SQRT)
        UN_CASE(PBW_UN_RSQRT)
        UN_CASE(PBW_UN_EXP)
        UN_CASE(PBW_UN_ABS)
        UN_CASE(PBW_UN_SQUARE)
        UN_CASE(PBW_UN_CLAMP)
    default: pbw_cuda_fail("unary op %d: unknown", (int)op);
    }
#undef UN_CASE
}

extern "C" void pbw_cuda_unary_forward(pbw_unary_op op, float p0, float p1, const float *x,
                                       float *y, int64_t n) {
    unary_dispatch(op, false, p0, p1, x, nullptr, nullptr, y, n, 0);
}

extern "C" int pbw_cuda_unary_forward_half(pbw_unary_op op, float p0, float p1, const float *x,
                                           float *y, void *yh, int64_t n) {
    if (op != PBW_UN_QUICK_GELU || n <= 0 || !vec4_ok(n, x, y, yh, yh) || ((uintptr_t)yh & 7)) {
        if (y) pbw_cuda_unary_forward(op, p0, p1, x, y, n);
        return -1;
    }
    const int64_t n4 = n / 4;
    pbw_half_type((int)pbw_cuda_precision(), [&](auto t) {
        using H = decltype(t);
        pbw_launch(k_unary_fwd4h<PBW_UN_QUICK_GELU, H>, pbw_grid(n4), 256, 0, p0, p1,
                   (const float4 *)x, (float4 *)y, (H *)yh, n4);
    });
    PBW_CUDA_LAUNCHED("unary_forward");
    return 0;
}

// QuickGELU of a value bound for a half type: v / (1 + exp(-1.702 v)) with the hardware's
// approximate exponential and division (a few ulps of float32, far below the half type's
// rounding, which alone the result keeps). pbw_expf and an IEEE division, as unary_f has them
// for float32 results, cost as much time as the memory traffic: CUPTI on an H100, 52.5 us a
// (10000, 3072) bf16 tensor of a CMA generation.
__device__ __forceinline__ float quick_gelu_to_half(float v) {
    return __fdividef(v, 1.0f + __expf(-1.702f * v));
}

// Eight half values a thread: one 16-byte load and store.
template <int OP, typename H>
__global__ void k_unary_half8(float p0, float p1, const uint4 *__restrict__ x, uint4 *y,
                              int64_t n8) {
    pbw_pdl_wait();
    PBW_GRID_STRIDE(i, n8) {
        float f[8];
        pbw_unpack_half<H, 8>(x[i], f);
#pragma unroll
        for (int j = 0; j < 8; j++)
            f[j] = OP == PBW_UN_QUICK_GELU ? quick_gelu_to_half(f[j]) : unary_f<OP>(f[j], p0, p1);
        y[i] = pbw_pack_half<H, 8, uint4>(f);
    }
}

template <int OP>
static void launch_unary_half(float p0, float p1, const void *xh, void *yh, int64_t n8) {
    pbw_half_type((int)pbw_cuda_precision(), [&](auto t) {
        pbw_launch(k_unary_half8<OP, decltype(t)>, pbw_grid(n8), 256, 0, p0, p1, (const uint4 *)xh,
                   (uint4 *)yh, n8);
    });
    PBW_CUDA_LAUNCHED("unary_half");
}

extern "C" int pbw_cuda_unary_half(pbw_unary_op op, float p0, float p1, const void *xh, void *yh,
                                   int64_t n) {
    if (n <= 0 || n % 8 || (((uintptr_t)xh | (uintptr_t)yh) & 15)) return -1;
    if (op == PBW_UN_QUICK_GELU) launch_unary_half<PBW_UN_QUICK_GELU>(p0, p1, xh, yh, n / 8);
    else if (op == PBW_UN_GELU) launch_unary_half<PBW_UN_GELU>(p0, p1, xh, yh, n / 8);
    else return -1;
    return 0;
}

template <typename H> __global__ void k_half_to_f32(const H *__restrict__ h, float *y, int64_t n) {
    pbw_pdl_wait();
    PBW_GRID_STRIDE(i, n) y[i] = pbw_from_half<H>(h[i]);
}

extern "C" void pbw_cuda_half_to_f32(const void *h, float *y, int64_t n) {
    if (n <= 0) return;
    pbw_half_type((int)pbw_cuda_precision(), [&](auto t) {
        using H = decltype(t);
        pbw_launch(k_half_to_f32<H>, pbw_grid(n), 256, 0, (const H *)h, y, n);
    });
    PBW_CUDA_LAUNCHED("half_to_f32");
}

// k_unary_bwd4 for a gradient written whole (no add), stored in the half type H alone.
template <int OP, typename H>
__global__ void k_unary_bwd4h(float p0, float p1, const float4 *__restrict__ x,
                              const float4 *__restrict__ y, const float4 *__restrict__ gy,
                              H *gxh, int64_t n4) {
    pbw_pdl_wait();
    PBW_GRID_STRIDE(i, n4) {
        const float4 z = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        // 0 + g: the bits of k_unary_bwd4's written gradient
        const float4 r = unary_g4_add<OP>(z, x, y, gy[i], i, p0, p1);
        reinterpret_cast<uint2 *>(gxh)[i] = pbw_pack_half4<H>(r);
    }
}

static long g_unary_bwd_half_calls;
extern "C" long pbw_cuda_unary_backward_half_calls(void) { return g_unary_bwd_half_calls; }

extern "C" int pbw_cuda_unary_backward_half(pbw_unary_op op, float p0, float p1, const float *x,
                                            const float *y, const float *gy, void *gxh,
                                            int64_t n) {
    if (op != PBW_UN_QUICK_GELU || n <= 0 || !vec4_ok(n, x, y, gy, gy) || ((uintptr_t)gxh & 7))
        return -1;
    const int64_t n4 = n / 4;
    pbw_half_type((int)pbw_cuda_precision(), [&](auto t) {
        using H = decltype(t);
        pbw_launch(k_unary_bwd4h<PBW_UN_QUICK_GELU, H>, pbw_grid(n4), 256, 0, p0, p1,
                   (const float4 *)x, (const float4 *)y, (const float4 *)gy, (H *)gxh, n4);
    });
    PBW_CUDA_LAUNCHED("unary_backward (half)");
    g_unary_bwd_half_calls++;
    return 0;
}

// QuickGELU's gradient g s (1 + 1.702 v (1 - s)), s = sigmoid(1.702 v), bound for a half type,
// with the hardware's approximate exponential and division as quick_gelu_to_half has them:
// the exact ones (unary_g) left the backward below bound by its arithmetic (CUPTI on an H200,
// 11.6 us a (1600, 3072) bf16 gradient of an Adam step, the same with its gradient read as
// halves as with floats).
__device__ __forceinline__ float quick_gelu_grad_to_half(float v, float g) {
    const float s = __fdividef(1.0f, 1.0f + __expf(-1.702f * v));
    return g * (s * (1.0f + 1.702f * v * (1.0f - s)));
}

// k_unary_bwd4h from x held as halves alone (the forward read them so), y's gradient G as
// floats or as halves of H (the product after QuickGELU wrote it so): four a thread. FAST: with
// quick_gelu_grad_to_half, else unary_g's bits (those of the fp32 chain, rounded).
template <int OP, typename H, typename G, bool FAST>
__global__ void k_unary_bwd4h_hx(float p0, float p1, const uint2 *__restrict__ xh,
                                 const G *__restrict__ gy, H *gxh, int64_t n4) {
    pbw_pdl_wait();
    PBW_GRID_STRIDE(i, n4) {
        float v[4], r[4];
        pbw_unpack_half<H, 4>(xh[i], v);
        const float4 g4 = pbw_load_four(gy, i);
        const float g[4] = {g4.x, g4.y, g4.z, g4.w};
#pragma unroll
        for (int j = 0; j < 4; j++)
            r[j] = FAST && OP == PBW_UN_QUICK_GELU ? quick_gelu_grad_to_half(v[j], g[j])
                                                   : unary_g<OP>(v[j], 0.0f, g[j], p0, p1);
        reinterpret_cast<uint2 *>(gxh)[i] = pbw_pack_half4<H>(make_float4(r[0], r[1], r[2], r[3]));
    }
}

extern "C" int pbw_cuda_unary_backward_half_hx(pbw_unary_op op, float p0, float p1,
                                               const void *xh, const float *gy, void *gxh,
                                               int64_t n) {
    if (op != PBW_UN_QUICK_GELU || n <= 0 || n % 4 || ((uintptr_t)xh & 7) ||
        ((uintptr_t)gy & 15) || ((uintptr_t)gxh & 7))
        return -1;
    const int64_t n4 = n / 4;
    const bool fast = pbw_cuda_half_gx();
    pbw_half_type((int)pbw_cuda_precision(), [&](auto t) {
        using H = decltype(t);
        if (fast)
            pbw_launch(k_unary_bwd4h_hx<PBW_UN_QUICK_GELU, H, float, true>, pbw_grid(n4), 256, 0,
                       p0, p1, (const uint2 *)xh, gy, (H *)gxh, n4);
        else
            pbw_launch(k_unary_bwd4h_hx<PBW_UN_QUICK_GELU, H, float, false>, pbw_grid(n4), 256,
                       0, p0, p1, (const uint2 *)xh, gy, (H *)gxh, n4);
    });
    PBW_CUDA_LAUNCHED("unary_backward (half in, half out)");
    g_unary_bwd_half_calls++;
    return 0;
}

static long g_unary_bwd_hh_calls;
extern "C" long pbw_cuda_unary_backward_half_hh_calls(void) { return g_unary_bwd_hh_calls; }

extern "C" int pbw_cuda_unary_backward_half_hh(pbw_unary_op op, float p0, float p1,
                                               const void *xh, const void *gyh, void *gxh,
                                               int64_t n) {
    if (op != PBW_UN_QUICK_GELU || n <= 0 || n % 4 ||
        (((uintptr_t)xh | (uintptr_t)gyh | (uintptr_t)gxh) & 7))
        return -1;
    const int64_t n4 = n / 4;
    pbw_half_type((int)pbw_cuda_precision(), [&](auto t) {
        using H = decltype(t);
        pbw_launch(k_unary_bwd4h_hx<PBW_UN_QUICK_GELU, H, H, true>, pbw_grid(n4), 256, 0, p0, p1,
                   (const uint2 *)xh, (const H *)gyh, (H *)gxh, n4);
    });
    PBW_CUDA_LAUNCHED("unary_backward (half in, half gradients)");
    g_unary_bwd_hh_calls++;
    return 0;
}

extern "C" void pbw_cuda_unary_backward(pbw_unary_op op, float p0, float p1, const float *x,
                                        const float *y, const float *gy, float *gx, int64_t n,
                                        int add) {
    unary_dispatch(op, true, p0, p1, x, y, gy, gx, n, add);
}

// ---------------------------------------------------------------------------------------------
// strided index spaces

// A simplified index space: nd dims (outermost first) and, for each, the element stride of up
// to four operands: st[0] is the destination, st[1..3] the sources. Passed to kernels by value.
struct Geo {
    int nd;
    int64_t size[5];
    int64_t st[4][5];
};

// Drops size-1 dims and merges a dim into its outer neighbour when every operand steps over
// the pair as over one dim (outer stride = inner stride * inner size). A NULL stride array is
// all zeros. Returns the element count.
static int64_t make_geo(const int64_t *shape, const int64_t *const st[4], Geo *g) {
    g->nd = 0;
    int64_t n = 1;
    for (int d = 0; d < 5; d++) {
        n *= shape[d];
        if (shape[d] == 1) continue;
        int64_t s[4];
        for (int k = 0; k < 4; k++) s[k] = st[k] ? st[k][d] : 0;
        if (g->nd > 0) {
            int j = g->nd - 1, merge = 1;
            for (int k = 0; k < 4; k++)
                if (g->st[k][j] != s[k] * shape[d]) merge = 0;
            if (merge) {
                g->size[j] *= shape[d];
                for (int k = 0; k < 4; k++) g->st[k][j] = s[k];
                continue;
            }
        }
        int j = g->nd++;
        g->size[j] = shape[d];
        for (int k = 0; k < 4; k++) g->st[k][j] = s[k];
    }
    return n;
}

// Offsets of linear index idx (row-major over g's dims) for the first K operands.
template <typename I, int K>
__host__ __device__ __forceinline__ void geo_off(const Geo &g, I idx, int64_t *off) {
#pragma unroll
    for (int k = 0; k < K; k++) off[k] = 0;
#pragma unroll
    for (int d = 4; d >= 1; d--) {
        if (d < g.nd) {
            I sz = (I)g.size[d], q = idx / sz, r = idx - q * sz;
#pragma unroll
            for (int k = 0; k < K; k++) off[k] += (int64_t)r * g.st[k][d];
            idx = q;
        }
    }
    if (g.nd > 0) {
#pragma unroll
        for (int k = 0; k < K; k++) off[k] += (int64_t)idx * g.st[k][0];
    }
}

// One thread per element of the index space: f(offsets).
template <typename I, typename F>
__global__ void k_map(Geo g, I n, F f) {
    pbw_pdl_wait();
    for (I i = (I)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (I)blockDim.x * gridDim.x) {
        int64_t off[4];
        geo_off<I, F::K>(g, i, off);
        f(off);
    }
}

template <typename F>
static void launch_map(const Geo &g, int64_t n, F f, const char *name) {
    if (n <= 0) return;
    if (n < INT32_MAX)
        pbw_launch(k_map<uint32_t, F>, pbw_grid(n), 256, 0, g, (uint32_t)n, f);
    else
        pbw_launch(k_map<uint64_t, F>, pbw_grid(n), 256, 0, g, (uint64_t)n, f);
    PBW_CUDA_LAUNCHED(name);
}

// ---- operand functors (K = how many stride sets they use, destination first) ----

__host__ __device__ __forceinline__ float bin_apply(int op, float a, float b) {
    switch (op) {
    case PBW_BIN_ADD: return a + b;
    case PBW_BIN_SUB: return a - b;
    case PBW_BIN_MUL: return a * b;
    case PBW_BIN_DIV: return a / b;
    }
    return 0.0f;
}

template <int OP> struct FBin { // y = a op b
    static constexpr int K = 3;
    const float *a, *b;
    float *y;
    __host__ __device__ void operator()(const int64_t *o) const { y[o[0]] = bin_apply(OP, a[o[1]], b[o[2]]); }
};

template <typename T> struct FCopy { // y = x (T: float, or float4 four floats at a time)
    static constexpr int K = 2;
    const T *x;
    T *y;
    __host__ __device__ void operator()(const int64_t *o) const { y[o[0]] = x[o[1]]; }
};

template <typename H> struct FCopyHalf { // y = x, x values of the half type H
    static constexpr int K = 2;
    const H *x;
    float *y;
    __host__ __device__ void operator()(const int64_t *o) const { y[o[0]] = pbw_from_half<H>(x[o[1]]); }
};

// Loaders: the value summed into the destination, from the source offsets o[1..K-1].
struct LX { // x
    static constexpr int K = 2;
    const float *x;
    __host__ __device__ float operator()(const int64_t *o) const { return x[o[1]]; }
};

// d(a op b)/da * gy (WHICH 0) or d/db (WHICH 1) for MUL and DIV, written as on the CPU.
template <int OP, int WHICH> struct LBinGrad {
    static constexpr int K = 4;
    const float *a, *b, *gy;
    __host__ __device__ float operator()(const int64_t *o) const {
        float av = a[o[1]], bv = b[o[2]], gv = gy[o[3]];
        if (OP == PBW_BIN_MUL) return WHICH == 0 ? gv * bv : gv * av;
        return WHICH == 0 ? gv / bv : -gv * av / (bv * bv);
    }
};

template <typename L> struct FAccum { // y += s * load
    static constexpr int K = L::K;
    L l;
    float *y;
    float s;
    __host__ __device__ void operator()(const int64_t *o) const { y[o[0]] += s * l(o); }
};

// ---- reductions ----

// Splits g into the dims the destination walks (kept, M elements) and those it does not
// (destination stride 0: reduced, R elements), each in g's order.
static void split_geo(const Geo &g, Geo *kept, Geo *red, int64_t *M, int64_t *R) {
    kept->nd = red->nd = 0;
    *M = *R = 1;
    for (int d = 0; d < g.nd; d++) {
        bool r = g.st[0][d] == 0;
        Geo *t = r ? red : kept;
        int j = t->nd++;
        t->size[j] = g.size[d];
        for (int k = 0; k < 4; k++) t->st[k][j] = g.st[k][d];
        *(r ? R : M) *= g.size[d];
    }
}

// A block of 256 threads sums DM destinations with DL = 256/DM lanes each. INNER (the
// innermost dim is reduced, usually the sources' contiguous one): a warp per destination, its
// 32 lanes on consecutive reduced elements. Otherwise 32 consecutive destinations per warp
// (coalesced along the kept inner dim) and 8 lanes walking the reduced dims. Lanes of a
// destination start at blockIdx.y * DL and step by gridDim.y * DL; the lane sums are combined
// by a fixed tree in shared memory. With part != NULL each (destination, blockIdx.y) writes its
// partial sum there (k_reduce_finish adds them), else the block adds s * sum to y.
template <typename I, bool INNER, typename L>
__global__ void __launch_bounds__(256)
    k_reduce(Geo kept, Geo red, I M, I R, L l, float *y, float s, double *part) {
    pbw_pdl_wait();
    constexpr int DM = INNER ? 8 : 32, DL = 256 / DM, LS = INNER ? 1 : 32;
    const int tid = threadIdx.x;
    const int dm = INNER ? tid / 32 : tid % 32, dl = INNER ? tid % 32 : tid / 32;
    const I m = (I)blockIdx.x * DM + dm;
    __shared__ double sh[256];
    double acc = 0;
    int64_t ko[4] = {0, 0, 0, 0};
    if (m < M) {
        geo_off<I, L::K>(kept, m, ko);
        for (I r = (I)blockIdx.y * DL + dl; r < R; r += (I)gridDim.y * DL) {
            int64_t ro[4], o[4];
            geo_off<I, L::K>(red, r, ro);
#pragma unroll
            for (int k = 0; k < L::K; k++) o[k] = ko[k] + ro[k];
            acc += (double)l(o);
        }
    }
    sh[tid] = acc;
    __syncthreads();
#pragma unroll
    for (int w = DL / 2; w > 0; w >>= 1) {
        if (dl < w) sh[tid] += sh[tid + w * LS];
        __syncthreads();
    }
    if (dl == 0 && m < M) {
        if (part)
            part[(size_t)m * gridDim.y + blockIdx.y] = sh[tid];
        else
            y[ko[0]] += (float)((double)s * sh[tid]);
    }
}

// A warp a destination: lane l adds partial sums l, l + 32, ... in order, then the lanes' sums
// meet in a fixed shuffle tree, so the result does not depend on the launch. A thread a
// destination, walking its up to 2048 partials alone, took 24.7 us a launch on an H100 (0.43 ms
// of a CMA generation's GPU time: the reconstruction terms' per-image sums); now it is not
// among a generation's 40 costliest kernels. Those sums run on the side lane beside CLIP's pass,
// so the generation's time did not move (50.30/50.07/50.22 ms against 49.90/50.63/50.15).
template <typename I>
__global__ void k_reduce_finish(Geo kept, I M, unsigned parts, const double *__restrict__ part,
                                float *y, float s) {
    pbw_pdl_wait();
    const unsigned lane = threadIdx.x % 32;
    const I warps = (I)(blockDim.x / 32) * gridDim.x;
    for (I m = (I)((blockIdx.x * blockDim.x + threadIdx.x) / 32); m < M; m += warps) {
        double acc = 0;
        for (unsigned j = lane; j < parts; j += 32) acc += part[(size_t)m * parts + j];
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
        if (lane == 0) {
            int64_t ko[1];
            geo_off<I, 1>(kept, m, ko);
            y[ko[0]] += (float)((double)s * acc);
        }
    }
}

// Grid of k_reduce for M destinations of R elements: DM destinations a block along x; along y
// enough blocks to fill the GPU (about 2048 in all), each lane summing at least 8 elements.
static void reduce_grid(bool inner, int64_t M, int64_t R, int64_t *gx, int64_t *gy) {
    const int DM = inner ? 8 : 32, DL = 256 / DM;
    *gx = (M + DM - 1) / DM;
    *gy = (R + DL * 8 - 1) / (DL * 8);
    int64_t want = 2048 / *gx;
    if (want < 1) want = 1;
    if (*gy > want) *gy = want;
    if (*gy > 65535) *gy = 65535;
}

template <typename I, bool INNER, typename L>
static void launch_reduce(const Geo &kept, const Geo &red, int64_t M, int64_t R, L l, float *y,
                          float s, const char *name) {
    int64_t gx, gy;
    reduce_grid(INNER, M, R, &gx, &gy);
    double *part = nullptr;
    if (gy > 1) {
        part = (double *)pbw_cuda_workspace((size_t)M * (size_t)gy * sizeof(double));
        if (!part) gy = 1; // failure recorded; fall back to one block row (still correct)
    }
    if (gx > INT32_MAX) {
        pbw_cuda_fail("%s: %lld destinations are too many for one grid", name, (long long)M);
        return;
    }
    dim3 grid((unsigned)gx, (unsigned)gy);
    pbw_launch(k_reduce<I, INNER, L>, grid, 256, 0, kept, red, (I)M, (I)R, l, y, s,
               gy > 1 ? part : nullptr);
    PBW_CUDA_LAUNCHED(name);
    if (gy > 1) {
        pbw_launch(k_reduce_finish<I>, pbw_grid(M * 32), 256, 0, kept, (I)M, (unsigned)gy, part,
                   y, s);
        PBW_CUDA_LAUNCHED(name);
    }
}

// y[i*sy] += s * l(i) over shape, where l reads sources with strides s1..s3 (NULL: unused).
// Elementwise where sy has no zero stride on a dim of size > 1, else a gather reduction.
template <typename L>
static void accumulate_into(const int64_t *shape, const int64_t *sy, const int64_t *s1,
                            const int64_t *s2, const int64_t *s3, L l, float *y, float s,
                            const char *name) {
    const int64_t *st[4] = {sy, s1, s2, s3};
    Geo g, kept, red;
    int64_t n = make_geo(shape, st, &g);
    if (n <= 0) return;
    int64_t M, R;
    split_geo(g, &kept, &red, &M, &R);
    if (R == 1) {
        launch_map(g, n, FAccum<L>{l, y, s}, name);
        return;
    }
    bool inner = g.st[0][g.nd - 1] == 0;
    bool small = M < INT32_MAX && R < INT32_MAX;
    if (inner && small) launch_reduce<uint32_t, true>(kept, red, M, R, l, y, s, name);
    else if (inner) launch_reduce<uint64_t, true>(kept, red, M, R, l, y, s, name);
    else if (small) launch_reduce<uint32_t, false>(kept, red, M, R, l, y, s, name);
    else launch_reduce<uint64_t, false>(kept, red, M, R, l, y, s, name);
}

// ---------------------------------------------------------------------------------------------
// binary ops, accumulate, copy

extern "C" void pbw_cuda_binary_forward(pbw_binary_op op, const int64_t *shape, const float *a,
                                        const int64_t *sa, const float *b, const int64_t *sb,
                                        float *y, const int64_t *sy) {
    const int64_t *st[4] = {sy, sa, sb, nullptr};
    Geo g;
    int64_t n = make_geo(shape, st, &g);
    switch (op) {
    case PBW_BIN_ADD: launch_map(g, n, FBin<PBW_BIN_ADD>{a, b, y}, "binary_forward"); break;
    case PBW_BIN_SUB: launch_map(g, n, FBin<PBW_BIN_SUB>{a, b, y}, "binary_forward"); break;
    case PBW_BIN_MUL: launch_map(g, n, FBin<PBW_BIN_MUL>{a, b, y}, "binary_forward"); break;
    case PBW_BIN_DIV: launch_map(g, n, FBin<PBW_BIN_DIV>{a, b, y}, "binary_forward"); break;
    default: pbw_cuda_fail("binary op %d: unknown", (int)op);
    }
}

extern "C" void pbw_cuda_accumulate(const int64_t *shape, const float *x, const int64_t *sx,
                                    float *y, const int64_t *sy, float s) {
    accumulate_into(shape, sy, sx, nullptr, nullptr, LX{x}, y, s, "accumulate");
}

// y[i] = (((y[i] + x[0][i]) + x[1][i]) + ...), the n sources in order: what n accumulates of
// one source each give, in one pass.
struct accum_srcs {
    const float *x[PBW_CUDA_ACCUM_MAX];
};

__global__ static void accumulate_many_kernel(float *y, accum_srcs s, int n, int64_t count) {
    pbw_pdl_wait();
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < count; i += stride) {
        float v = y[i];
        for (int k = 0; k < n; k++) v = __fadd_rn(v, s.x[k][i]);
        y[i] = v;
    }
}

extern "C" void pbw_cuda_accumulate_many(float *y, const float *const *x, int n, int64_t count) {
    if (n < 1 || count <= 0) return;
    if (n > PBW_CUDA_ACCUM_MAX) {
        pbw_cuda_fail("accumulate: %d sources at once (at most %d)", n, PBW_CUDA_ACCUM_MAX);
        return;
    }
    accum_srcs s = {};
    for (int k = 0; k < n; k++) s.x[k] = x[k];
    pbw_launch(accumulate_many_kernel, pbw_grid(count), 256, 0, y, s, n, count);
    PBW_CUDA_LAUNCHED("accumulate_many");
}

// g in units of float4 when both operands walk its inner dim contiguously, with 16-byte
// aligned starts, inner sizes and outer strides (permutes and concats of rows whose length is
// a multiple of 4: CLIP's patches, tokens, heads): a quarter of the index arithmetic and
// 16-byte accesses. false: g does not allow it.
static bool geo_vec4(const Geo &g, const void *x, const void *y, Geo *g4) {
    const int j = g.nd - 1;
    if (g.nd == 0 || g.st[0][j] != 1 || g.st[1][j] != 1 || g.size[j] % 4 ||
        (((uintptr_t)x | (uintptr_t)y) & 15))
        return false;
    for (int d = 0; d < j; d++)
        if (g.st[0][d] % 4 || g.st[1][d] % 4) return false;
    *g4 = g;
    g4->size[j] /= 4;
    for (int d = 0; d < j; d++)
        for (int k = 0; k < 2; k++) g4->st[k][d] /= 4;
    return true;
}

extern "C" void pbw_cuda_copy_strided(const int64_t *shape, const float *x, const int64_t *sx,
                                      float *y, const int64_t *sy) {
    const int64_t *st[4] = {sy, sx, nullptr, nullptr};
    Geo g, g4;
    int64_t n = make_geo(shape, st, &g);
    if (geo_vec4(g, x, y, &g4))
        launch_map(g4, n / 4, FCopy<float4>{(const float4 *)x, (float4 *)y}, "copy_strided");
    else
        launch_map(g, n, FCopy<float>{x, y}, "copy_strided");
}

extern "C" void pbw_cuda_copy_strided_half(const int64_t *shape, const void *xh,
                                           const int64_t *sx, float *y, const int64_t *sy) {
    const int64_t *st[4] = {sy, sx, nullptr, nullptr};
    Geo g;
    int64_t n = make_geo(shape, st, &g);
    pbw_half_type((int)pbw_cuda_precision(), [&](auto t) {
        using H = decltype(t);
        launch_map(g, n, FCopyHalf<H>{(const H *)xh, y}, "copy_strided (half)");
    });
}

// As on the CPU: ADD and SUB gradients are (signed) accumulations of gy; MUL and DIV gradients
// read a, b and gy and are summed over the axes where the operand was broadcast.
extern "C" void pbw_cuda_binary_backward(pbw_binary_op op, const int64_t *shape, const float *a,
                                         const int64_t *sa, const float *b, const int64_t *sb,
                                         const float *gy, const int64_t *sy, float *ga,
                                         float *gb) {
    for (int which = 0; which < 2; which++) {
        float *g = which == 0 ? ga : gb;
        const int64_t *sg = which == 0 ? sa : sb;
        if (!g) continue;
        if (op == PBW_BIN_ADD || (op == PBW_BIN_SUB && which == 0)) {
            pbw_cuda_accumulate(shape, gy, sy, g, sg, 1.0f);
            continue;
        }
        if (op == PBW_BIN_SUB) {
            pbw_cuda_accumulate(shape, gy, sy, g, sg, -1.0f);
            continue;
        }
        const char *name = "binary_backward";
        if (op == PBW_BIN_MUL && which == 0)
            accumulate_into(shape, sg, sa, sb, sy, LBinGrad<PBW_BIN_MUL, 0>{a, b, gy}, g, 1.0f, name);
        else if (op == PBW_BIN_MUL)
            accumulate_into(shape, sg, sa, sb, sy, LBinGrad<PBW_BIN_MUL, 1>{a, b, gy}, g, 1.0f, name);
        else if (op == PBW_BIN_DIV && which == 0)
            accumulate_into(shape, sg, sa, sb, sy, LBinGrad<PBW_BIN_DIV, 0>{a, b, gy}, g, 1.0f, name);
        else if (op == PBW_BIN_DIV)
            accumulate_into(shape, sg, sa, sb, sy, LBinGrad<PBW_BIN_DIV, 1>{a, b, gy}, g, 1.0f, name);
        else
            pbw_cuda_fail("binary op %d: unknown", (int)op);
    }
}

// ---------------------------------------------------------------------------------------------
// max pooling

// Output i: the window scan, the NaN rule and the tie rule are the CPU's.
__host__ __device__ __forceinline__ void max_pool_fwd_one(float *out, int32_t *idx,
                                                          const float *__restrict__ x,
                                                          const pbw_cpu_pool_geom &g, int64_t i) {
    const int64_t hw = (int64_t)g.H * g.W, ohw = (int64_t)g.OH * g.OW;
    int64_t p = i / ohw;
    int rem = (int)(i - p * ohw), oy = rem / g.OW, ox = rem - oy * g.OW;
    const float *xp = x + p * hw;
    int y0 = oy * g.sh - g.ph, y1 = y0 + g.KH;
    int x0 = ox * g.sw - g.pw, x1 = x0 + g.KW;
    if (y0 < 0) y0 = 0;
    if (y1 > g.H) y1 = g.H;
    if (x0 < 0) x0 = 0;
    if (x1 > g.W) x1 = g.W;
    int best = y0 * g.W + x0;
    float m = -INFINITY;
    for (int yy = y0; yy < y1; yy++) {
        const float *row = xp + (int64_t)yy * g.W;
        for (int xx = x0; xx < x1; xx++) {
            float v = row[xx];
            if (v > m || isnan(v)) {
                m = v;
                best = yy * g.W + xx;
            }
        }
    }
    out[i] = m;
    if (idx) idx[i] = best;
}

__global__ void k_max_pool_fwd(float *out, int32_t *idx, const float *__restrict__ x,
                               pbw_cpu_pool_geom g, int64_t n) {
    pbw_pdl_wait();
    PBW_GRID_STRIDE(i, n) max_pool_fwd_one(out, idx, x, g, i);
}

// Input element i visits the windows that contain it in the CPU's output order and adds the
// gradients of those it won, starting from dx's value, so the sum is bit-identical to the
// CPU's scatter and needs no atomics.
__host__ __device__ __forceinline__ void max_pool_bwd_one(float *dx,
                                                          const float *__restrict__ dout,
                                                          const int32_t *__restrict__ idx,
                                                          const pbw_cpu_pool_geom &g, int64_t i) {
    const int64_t hw = (int64_t)g.H * g.W, ohw = (int64_t)g.OH * g.OW;
    int64_t p = i / hw;
    int e = (int)(i - p * hw), iy = e / g.W, ix = e - iy * g.W;
    // windows oy with oy*sh - ph <= iy < oy*sh - ph + KH
    int lo = iy + g.ph - g.KH + 1, oy0 = lo <= 0 ? 0 : (lo + g.sh - 1) / g.sh;
    int oy1 = (iy + g.ph) / g.sh;
    if (oy1 > g.OH - 1) oy1 = g.OH - 1;
    lo = ix + g.pw - g.KW + 1;
    int ox0 = lo <= 0 ? 0 : (lo + g.sw - 1) / g.sw;
    int ox1 = (ix + g.pw) / g.sw;
    if (ox1 > g.OW - 1) ox1 = g.OW - 1;
    const int32_t *ip = idx + p * ohw;
    const float *gp = dout + p * ohw;
    float acc = 0.0f;
    bool hit = false;
    for (int oy = oy0; oy <= oy1; oy++)
        for (int ox = ox0; ox <= ox1; ox++) {
            int64_t o = (int64_t)oy * g.OW + ox;
            if (ip[o] == e) {
                acc = hit ? acc + gp[o] : dx[i] + gp[o];
                hit = true;
            }
        }
    if (hit) dx[i] = acc;
}

__global__ void k_max_pool_bwd_gather(float *dx, const float *__restrict__ dout,
                                      const int32_t *__restrict__ idx, pbw_cpu_pool_geom g,
                                      int64_t n) {
    pbw_pdl_wait();
    PBW_GRID_STRIDE(i, n) max_pool_bwd_one(dx, dout, idx, g, i);
}

// For windows that overlap a lot (many windows per input element) the gather would rescan too
// much: scatter with atomics instead (the order of the adds, hence the last bits, may vary).
__global__ void k_max_pool_bwd_scatter(float *dx, const float *__restrict__ dout,
                                       const int32_t *__restrict__ idx, pbw_cpu_pool_geom g,
                                       int64_t n) {
    pbw_pdl_wait();
    const int64_t hw = (int64_t)g.H * g.W, ohw = (int64_t)g.OH * g.OW;
    PBW_GRID_STRIDE(i, n) {
        int64_t p = i / ohw;
        atomicAdd(dx + p * hw + idx[i], dout[i]);
    }
}

extern "C" void pbw_cuda_max_pool2d_forward(float *out, int32_t *idx, const float *x,
                                            const pbw_cpu_pool_geom *g) {
    int64_t n = g->planes * g->OH * g->OW;
    if (n <= 0) return;
    pbw_launch(k_max_pool_fwd, pbw_grid(n), 256, 0, out, idx, x, *g, n);
    PBW_CUDA_LAUNCHED("max_pool2d_forward");
}

extern "C" void pbw_cuda_max_pool2d_backward(float *dx, const float *dout, const int32_t *idx,
                                             const pbw_cpu_pool_geom *g) {
    int64_t windows = (int64_t)((g->KH + g->sh - 1) / g->sh) * ((g->KW + g->sw - 1) / g->sw);
    if (windows <= 16) {
        int64_t n = g->planes * g->H * g->W;
        if (n <= 0) return;
        pbw_launch(k_max_pool_bwd_gather, pbw_grid(n), 256, 0, dx, dout, idx, *g, n);
    } else {
        int64_t n = g->planes * g->OH * g->OW;
        if (n <= 0) return;
        pbw_launch(k_max_pool_bwd_scatter, pbw_grid(n), 256, 0, dx, dout, idx, *g, n);
    }
    PBW_CUDA_LAUNCHED("max_pool2d_backward");
}
