// pbw_cuda_internal.cuh: what the kernel files of the CUDA backend share (not a public header).
//
//   #include "cuda/pbw_cuda_internal.cuh"
//   __global__ void my_kernel(float *y, int64_t n) {
//       pbw_pdl_wait(); // first, in every kernel (see pbw_launch)
//       ...
//   }
//   pbw_launch(my_kernel, pbw_grid(n), 256, 0, y, n); // grid, block, dynamic shared bytes, args
//   PBW_CUDA_LAUNCHED("my_kernel");        // records a launch failure (sticky, see pbw_cuda.h)
//
// Every launch goes on pbw_stream(); nothing here synchronizes.
#ifndef PBW_CUDA_INTERNAL_CUH
#define PBW_CUDA_INTERNAL_CUH

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <cudnn.h>
#include <stdint.h>

#include <cstdio>
#include <type_traits>
#include <utility>

#include "core/pbw_cache.h"
#include "cuda/pbw_cuda.h"

cudaStream_t pbw_stream(void);
cublasHandle_t pbw_cublas(void);  // bound to pbw_stream(), math mode set from the precision
cudnnHandle_t pbw_cudnn(void);    // bound to pbw_stream()
// The cached half copy (the precision's type) of a constant weight of n floats (see
// pbw_cuda_half_gemm), made on first use; NULL when w is not such a weight or out of memory.
const void *pbw_cuda_half_weight(const float *w, size_t n);
// Multiprocessors of the current device (132 on an H100 SXM); 1 before pbw_cuda_init.
int pbw_cuda_sm_count(void);
// Device scratch owned by the runtime, for library workspaces (cuBLAS, cuDNN): at least
// `bytes`, valid until the next call. NULL while a graph is recorded (recording refused) or
// when out of memory (failure recorded).
void *pbw_cuda_workspace(size_t bytes);
// Waits for the work queued on every GPU lane (nothing while a graph is recorded).
void pbw_cuda_wait_lanes(void);

// Programmatic dependent launch (Hopper and later): pbw_launch lets a kernel start while the
// kernel before it on the stream finishes, so that its blocks are resident and its launch paid
// when its predecessor's last block exits (in a graph or not). Correct only because every kernel
// of pbw calls pbw_pdl_wait() before it reads or writes global memory: the wait returns when the
// grids it depends on have completed and their writes are visible. A kernel launched without
// the attribute (a library's, or any kernel when PDL is off) passes the wait at once.
// tests/test_sources.c checks that every __global__ function of src/cuda begins with it.
__device__ __forceinline__ void pbw_pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    cudaGridDependencySynchronize();
    cudaTriggerProgrammaticLaunchCompletion();
#endif
}

// Whether pbw_launch asks for programmatic dependent launch: a device of compute capability 9.0
// or later, and PBW_CUDA_PDL not 0 (read once).
bool pbw_cuda_pdl(void);

// kernel<<<grid, block, smem, pbw_stream()>>>(args...), with programmatic dependent launch
// where pbw_cuda_pdl() allows it. A failure to launch is left for PBW_CUDA_LAUNCHED.
template <typename... P, typename... A>
inline void pbw_launch(void (*kernel)(P...), dim3 grid, dim3 block, size_t smem, A &&...args) {
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid;
    cfg.blockDim = block;
    cfg.dynamicSmemBytes = smem;
    cfg.stream = pbw_stream();
    cudaLaunchAttribute at[1];
    at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    at[0].val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = at;
    cfg.numAttrs = pbw_cuda_pdl() ? 1 : 0;
    (void)cudaLaunchKernelEx(&cfg, kernel, std::forward<A>(args)...); // error: cudaGetLastError
}

// Blocks for a grid-stride loop over n elements with 256 threads a block.
static inline unsigned pbw_grid(int64_t n) {
    int64_t b = (n + 255) / 256;
    if (b < 1) b = 1;
    if (b > 65535LL * 32) b = 65535LL * 32;
    return (unsigned)b;
}

// Sum / max of v over the 32 lanes of a warp (every lane gets the result).
__device__ __forceinline__ float pbw_warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float pbw_warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Block-wide sum of one double per thread over a block of THREADS (a power of two), sh that
// many doubles of shared memory: a fixed tree (deterministic), the sum returned to every
// thread; sh may be reused by the next call.
template <int THREADS>
__device__ double pbw_block_sum(double v, double *sh) {
    sh[threadIdx.x] = v;
    __syncthreads();
    for (int h = THREADS / 2; h > 0; h >>= 1) {
        if ((int)threadIdx.x < h) sh[threadIdx.x] += sh[threadIdx.x + h];
        __syncthreads();
    }
    double r = sh[0];
    __syncthreads();
    return r;
}

// A pointer 16-byte aligned (vector loads, cuDNN's and cuBLASLt's half operands).
static inline bool pbw_aligned16(const void *p) { return ((uintptr_t)p & 15) == 0; }

#define PBW_CUDA_LAUNCHED(name)                                                                 \
    do {                                                                                        \
        cudaError_t e_ = cudaGetLastError();                                                    \
        if (e_ != cudaSuccess) pbw_cuda_fail("%s: %s", (name), cudaGetErrorString(e_));         \
    } while (0)

#define PBW_CUBLAS_OK(call)                                                                     \
    do {                                                                                        \
        cublasStatus_t s_ = (call);                                                             \
        if (s_ != CUBLAS_STATUS_SUCCESS) pbw_cuda_fail("%s: cuBLAS status %d", #call, (int)s_); \
    } while (0)

#define PBW_CUDNN_OK(call)                                                                      \
    do {                                                                                        \
        cudnnStatus_t s_ = (call);                                                              \
        if (s_ != CUDNN_STATUS_SUCCESS)                                                         \
            pbw_cuda_fail("%s: %s", #call, cudnnGetErrorString(s_));                           \
    } while (0)

// The half types of the reduced precisions: __nv_bfloat16 (bf16) and __half (fp16).
// pbw_half_type calls f with a value of the one precision prec multiplies in (__half for
// PBW_PREC_FP16, __nv_bfloat16 otherwise), so that a launch over either is written once:
//     pbw_half_type(prec, [&](auto h) { using H = decltype(h); pbw_launch(k<H>, ...); });
template <class F> static inline void pbw_half_type(int prec, F &&f) {
    if (prec == PBW_PREC_FP16) f(__half());
    else f(__nv_bfloat16());
}

// float to the half type H, rounded to nearest.
template <typename H> __device__ __forceinline__ H pbw_to_half(float v);
template <> __device__ __forceinline__ __nv_bfloat16 pbw_to_half<__nv_bfloat16>(float v) {
    return __float2bfloat16_rn(v);
}
template <> __device__ __forceinline__ __half pbw_to_half<__half>(float v) {
    return __float2half_rn(v);
}

// The inverse: H to float (exact).
template <typename H> __device__ __forceinline__ float pbw_from_half(H v);
template <> __device__ __forceinline__ float pbw_from_half<__nv_bfloat16>(__nv_bfloat16 v) {
    return __bfloat162float(v);
}
template <> __device__ __forceinline__ float pbw_from_half<__half>(__half v) {
    return __half2float(v);
}

// StyleGAN2's masked style (pbw_sg_modulate): s m + s0 (1 - m), rounded as on the CPU.
__device__ __forceinline__ float pbw_sg_mod_scale(float sv, float s0v, float mv) {
    return __fmaf_rn(sv, mv, __fmul_rn(s0v, __fsub_rn(1.0f, mv)));
}

// N (4 or 8) values of the half type H in one 8- or 16-byte word (W = uint2 or uint4), to and
// from floats: one vector load or store for N values.
// bf16 is a float's high half: a pair's low value is its word shifted up, its high value the
// word with the low half cleared (one instruction each; extracting each half first took two
// for the high one). The same bits as pbw_from_half.
template <typename H, int N, typename W>
__device__ __forceinline__ void pbw_unpack_half(const W &w, float (&f)[N]) {
    static_assert(sizeof(W) == N * sizeof(H), "word size");
    if constexpr (std::is_same<H, __nv_bfloat16>::value && N % 2 == 0) {
        const uint32_t *u = reinterpret_cast<const uint32_t *>(&w);
#pragma unroll
        for (int i = 0; i < N / 2; i++) {
            f[2 * i] = __uint_as_float(u[i] << 16);
            f[2 * i + 1] = __uint_as_float(u[i] & 0xffff0000u);
        }
    } else {
        const H *h = reinterpret_cast<const H *>(&w);
#pragma unroll
        for (int i = 0; i < N; i++) f[i] = pbw_from_half<H>(h[i]);
    }
}
template <typename H, int N, typename W>
__device__ __forceinline__ W pbw_pack_half(const float (&f)[N]) {
    static_assert(sizeof(W) == N * sizeof(H), "word size");
    W w;
    H *h = reinterpret_cast<H *>(&w);
#pragma unroll
    for (int i = 0; i < N; i++) h[i] = pbw_to_half<H>(f[i]);
    return w;
}

// Two values of H in one 32-bit fragment register, the first in the low half (the PTX order).
template <typename H> __device__ __forceinline__ uint32_t mma_pack(float lo, float hi) {
    const float f[2] = {lo, hi};
    return pbw_pack_half<H, 2, uint32_t>(f);
}

// c += a b, a 16 x 16 (row), b 16 x 8 (col), c 16 x 8 fp32 (mma.sync, sm_80+); T the PTX name
// of H. Fragment layouts: PTX ISA, "Matrix Fragments for mma.m16n8k16".
template <typename H>
__device__ __forceinline__ void mma_16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                          uint32_t b1);
#define PBW_MMA_16816(H, T)                                                                     \
    template <>                                                                                 \
    __device__ __forceinline__ void mma_16816<H>(float (&c)[4], const uint32_t (&a)[4],         \
                                                 uint32_t b0, uint32_t b1) {                    \
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32." T "." T ".f32 "                   \
                     "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"                  \
                     : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])                           \
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));           \
    }
PBW_MMA_16816(__nv_bfloat16, "bf16")
PBW_MMA_16816(__half, "f16")
#undef PBW_MMA_16816

// A float4 as four values of H in one 8-byte word.
template <typename H> __device__ __forceinline__ uint2 pbw_pack_half4(const float4 &v) {
    const float f[4] = {v.x, v.y, v.z, v.w};
    return pbw_pack_half<H, 4, uint2>(f);
}

// The i-th four consecutive values of an array of floats, or of halves of H (one 8-byte word),
// as a float4: kernels whose input comes in either type.
__device__ __forceinline__ float4 pbw_load_four(const float *p, int64_t i) {
    return reinterpret_cast<const float4 *>(p)[i];
}
template <typename H> __device__ __forceinline__ float4 pbw_load_four(const H *p, int64_t i) {
    float f[4];
    pbw_unpack_half<H, 4>(reinterpret_cast<const uint2 *>(p)[i], f);
    return make_float4(f[0], f[1], f[2], f[3]);
}

// The libraries' choice file `kind` for this GPU and library `version` (core/pbw_cache.h):
// its path in path (n bytes) and, unless f is NULL, *f opened for reading, or NULL when it does
// not exist yet. -1 when it has no place (no cache folder, or the device's name is unknown).
int pbw_cuda_cache_file(const char *kind, size_t version, char *path, size_t n, FILE **f);

// Reads that file: on_line(v) for each line tagged `tag` with exactly NF numbers
// (pbw_cache_parse_line; other lines are passed over). 1 with path set (the file may not exist
// yet: appends create it), or -1 when the switch off_env is 0 or the file has no place.
template <int NF, class F>
int pbw_cuda_cache_read(const char *kind, size_t version, const char *off_env, const char *tag,
                        char *path, size_t n, F on_line) {
    FILE *f;
    if (pbw_env_zero(off_env) || pbw_cuda_cache_file(kind, version, path, n, &f)) return -1;
    if (!f) return 1;
    char line[512];
    while (std::fgets(line, sizeof line, f)) {
        uint64_t v[NF];
        if (pbw_cache_parse_line(line, tag, v, NF) == 0) on_line(v);
    }
    std::fclose(f);
    return 1;
}

// The best of three timed runs of run() on the stream (after one untimed run), in ms; -1 when
// a run returns false or the events fail (the error is cleared). For choosing between
// candidate kernels on the operands of a first call.
template <class Run> float pbw_cuda_best_of_three(Run run) {
    pbw_cuda_wait_lanes(); // times of this lane alone, not shared with another's work
    cudaEvent_t ev[4];
    int nev = 0;
    while (nev < 4 && cudaEventCreate(&ev[nev]) == cudaSuccess) nev++;
    cudaStream_t st = pbw_stream();
    bool ok = nev == 4 && run();
    for (int r = 0; r < 3 && ok; r++) ok = cudaEventRecord(ev[r], st) == cudaSuccess && run();
    ok = ok && cudaEventRecord(ev[3], st) == cudaSuccess &&
         cudaEventSynchronize(ev[3]) == cudaSuccess;
    float best = -1;
    for (int r = 0; r < 3 && ok; r++) {
        float ms = 0;
        if (cudaEventElapsedTime(&ms, ev[r], ev[r + 1]) != cudaSuccess) ok = false;
        else if (best < 0 || ms < best) best = ms;
    }
    for (int i = 0; i < nev; i++) cudaEventDestroy(ev[i]);
    cudaGetLastError();
    return ok ? best : -1;
}

// Libraries opened at run time (cuSOLVER, CUPTI: pbw needs them only where they are used).
// pbw_dlopen_first: the first of names[0..n) that loads, or nullptr; pbw_dlsym: f = the symbol,
// true when found.
#include <dlfcn.h>
static inline void *pbw_dlopen_first(const char *const *names, int n) {
    for (int i = 0; i < n; i++)
        if (void *h = dlopen(names[i], RTLD_NOW | RTLD_LOCAL)) return h;
    return nullptr;
}
template <class F> static inline bool pbw_dlsym(void *h, const char *name, F &f) {
    f = (F)dlsym(h, name);
    return f != nullptr;
}

#define PBW_GRID_STRIDE(i, n)                                                                   \
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n);                  \
         i += (int64_t)blockDim.x * gridDim.x)

#endif
