// bench_gemm_ref.cuh: the side every fused-product benchmark (bench/*_gemm.cu) is measured
// against, as pbw's CLIP MLP runs it: y = QuickGELU(bf16(x W^T + b)) in bf16 from bf16 x (R,I)
// and W (O,I), fp32 sums: cuBLASLt's product with its bias epilogue into bf16 (the heuristic's
// first pick), then pbw's vectorized QuickGELU pass. Also the inputs' fill and the comparison.
#ifndef PBW_BENCH_GEMM_REF_CUH
#define PBW_BENCH_GEMM_REF_CUH

#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "bench_cuda_check.cuh"

__device__ __forceinline__ float quick_gelu(float v) { return v / (1.0f + __expf(-1.702f * v)); }

// pbw's QuickGELU pass over bf16, 8 values a thread.
__global__ void quick_gelu_kernel(uint4 *y, size_t n8) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n8;
         i += (size_t)gridDim.x * blockDim.x) {
        uint4 v = y[i];
        __nv_bfloat162 *h = reinterpret_cast<__nv_bfloat162 *>(&v);
#pragma unroll
        for (int e = 0; e < 4; e++) {
            const float2 f = __bfloat1622float2(h[e]);
            h[e] = __floats2bfloat162_rn(quick_gelu(f.x), quick_gelu(f.y));
        }
        y[i] = v;
    }
}

// Deterministic values uniform in [offset - scale, offset + scale), as T (float or bf16).
// The largest |a - b| and the largest |a| over n bf16 values on the device (synchronizes).
inline void bf16_compare(const __nv_bfloat16 *a, const __nv_bfloat16 *b, size_t n, double *err,
                         double *scale) {
    CK(cudaDeviceSynchronize());
    std::vector<__nv_bfloat16> ha(n), hb(n);
    CK(cudaMemcpy(ha.data(), a, n * 2, cudaMemcpyDeviceToHost));
    CK(cudaMemcpy(hb.data(), b, n * 2, cudaMemcpyDeviceToHost));
    *err = *scale = 0;
    for (size_t i = 0; i < n; i++) {
        const double va = __bfloat162float(ha[i]), vb = __bfloat162float(hb[i]);
        *scale = std::max(*scale, std::fabs(va));
        *err = std::max(*err, std::fabs(va - vb));
    }
}

template <typename T>
__global__ void fill(T *p, size_t n, float scale, unsigned seed, float offset = 0.0f) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        unsigned h = (unsigned)i * 2654435761u ^ seed;
        h ^= h >> 13, h *= 0x5bd1e995u, h ^= h >> 15;
        p[i] = (T)(offset + scale * ((h & 0xffffff) / 8388608.0f - 1.0f));
    }
}

// One fc1-like shape's operands, filled, and the cuBLASLt side's output buffer.
struct GemmCase {
    int R, O, I;
    __nv_bfloat16 *x, *w, *b, *y_ref;
    GemmCase(int r, int o, int i) : R(r), O(o), I(i) {
        CK(cudaMalloc(&x, sizeof(__nv_bfloat16) * R * I));
        CK(cudaMalloc(&w, sizeof(__nv_bfloat16) * O * I));
        CK(cudaMalloc(&b, sizeof(__nv_bfloat16) * O));
        CK(cudaMalloc(&y_ref, sizeof(__nv_bfloat16) * R * O));
        fill<<<1024, 256>>>(x, (size_t)R * I, 2.0f, 1u);
        fill<<<1024, 256>>>(w, (size_t)O * I, 1.0f / sqrtf((float)I), 2u);
        fill<<<64, 256>>>(b, (size_t)O, 0.1f, 3u);
        CK(cudaGetLastError());
    }
    ~GemmCase() {
        CK(cudaFree(x));
        CK(cudaFree(w));
        CK(cudaFree(b));
        CK(cudaFree(y_ref));
    }
    double flop() const { return 2.0 * R * O * I; }
    // The largest |y_ref - y| and the largest |y_ref| (both synchronize the device).
    void compare(const __nv_bfloat16 *y, double *err, double *scale) const {
        bf16_compare(y_ref, y, (size_t)R * O, err, scale);
    }
};

// cuBLASLt as pbw's linear: column-major y^T (O,R) = W (O,I) x^T (I,R), bias epilogue, bf16
// out; product() writes c.y_ref, gelu() applies the pass to it in place.
struct LtLinear {
    const GemmCase &c;
    cublasLtHandle_t lt;
    void *ws;
    size_t ws_bytes;
    cublasLtMatmulDesc_t op;
    cublasLtMatrixLayout_t la, lb, lc;
    cublasLtMatmulHeuristicResult_t res;
    LtLinear(const GemmCase &cs, cublasLtHandle_t h, void *w_, size_t wb)
        : c(cs), lt(h), ws(w_), ws_bytes(wb) {
        CK(cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
        const cublasOperation_t tA = CUBLAS_OP_T, tB = CUBLAS_OP_N;
        const cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_BIAS;
        CK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &tA, sizeof tA));
        CK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &tB, sizeof tB));
        CK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi));
        CK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &c.b,
                                          sizeof c.b));
        const cudaDataType_t bt = CUDA_R_16BF;
        CK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bt,
                                          sizeof bt));
        CK(cublasLtMatrixLayoutCreate(&la, CUDA_R_16BF, c.I, c.O, c.I));
        CK(cublasLtMatrixLayoutCreate(&lb, CUDA_R_16BF, c.I, c.R, c.I));
        CK(cublasLtMatrixLayoutCreate(&lc, CUDA_R_16BF, c.O, c.R, c.O));
        cublasLtMatmulPreference_t pref;
        CK(cublasLtMatmulPreferenceCreate(&pref));
        CK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                &ws_bytes, sizeof ws_bytes));
        int found = 0;
        CK(cublasLtMatmulAlgoGetHeuristic(lt, op, la, lb, lc, lc, pref, 1, &res, &found));
        CK(cublasLtMatmulPreferenceDestroy(pref));
        if (found < 1) {
            fprintf(stderr, "cuBLASLt has no algorithm for %d x %d x %d\n", c.R, c.O, c.I);
            exit(1);
        }
    }
    ~LtLinear() {
        CK(cublasLtMatrixLayoutDestroy(la));
        CK(cublasLtMatrixLayoutDestroy(lb));
        CK(cublasLtMatrixLayoutDestroy(lc));
        CK(cublasLtMatmulDescDestroy(op));
    }
    void product() const {
        const float one = 1.0f, zero = 0.0f;
        CK(cublasLtMatmul(lt, op, &one, c.w, la, c.x, lb, &zero, c.y_ref, lc, c.y_ref, lc,
                          &res.algo, ws, ws_bytes, 0));
    }
    void gelu() const {
        quick_gelu_kernel<<<1056, 256>>>(reinterpret_cast<uint4 *>(c.y_ref),
                                         (size_t)c.R * c.O / 8);
    }
};

#endif
