// gemm_modes.cu: how fast cuBLAS runs CLIP's matrix products in each of pbw's precision modes,
// and what converting fp32 activations to bf16 first would buy (a design question for the
// CUDA backend, which keeps fp32 activations). Standalone:
//   nvcc -O3 -arch=sm_90 bench/gemm_modes.cu -lcublas -o build/gemm_modes && build/gemm_modes
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>
#include <vector>

#include "bench_cuda_check.cuh"

__global__ void to_bf16(const float *x, __nv_bfloat16 *y, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        y[i] = __float2bfloat16(x[i]);
}

__global__ void fill(float *x, size_t n, unsigned s) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        unsigned h = (unsigned)(i * 2654435761u) ^ s;
        h ^= h >> 13;
        h *= 0x5bd1e995u;
        x[i] = (float)(h & 0xffff) / 65536.0f - 0.5f;
    }
}

int main() {
    cublasHandle_t h;
    CK(cublasCreate(&h));
    size_t ws_bytes = 64 << 20;
    void *ws;
    CK(cudaMalloc(&ws, ws_bytes));
    CK(cublasSetWorkspace(h, ws, ws_bytes));
    // (rows M, in K, out N): CLIP ViT-B/32 linears for 512 crops (M = 512*50) and 32 crops
    struct S { long M, K, N; const char *what; } shapes[] = {
        {25600, 768, 2304, "qkv 512 crops"}, {25600, 768, 3072, "fc1 512 crops"},
        {25600, 3072, 768, "fc2 512 crops"}, {1600, 768, 2304, "qkv 32 crops"},
        {1600, 3072, 768, "fc2 32 crops"}};
    cudaEvent_t a, b;
    CK(cudaEventCreate(&a));
    CK(cudaEventCreate(&b));
    printf("%-16s %-26s %9s %9s\n", "shape", "mode", "us", "TFLOP/s");
    for (auto &s : shapes) {
        size_t nA = s.M * s.K, nB = s.K * s.N, nC = s.M * s.N;
        float *A, *B, *C;
        __nv_bfloat16 *Ah, *Bh;
        CK(cudaMalloc(&A, nA * 4));
        CK(cudaMalloc(&B, nB * 4));
        CK(cudaMalloc(&C, nC * 4));
        CK(cudaMalloc(&Ah, nA * 2));
        CK(cudaMalloc(&Bh, nB * 2));
        fill<<<1024, 256>>>(A, nA, 1);
        fill<<<1024, 256>>>(B, nB, 2);
        to_bf16<<<1024, 256>>>(B, Bh, nB);
        const float one = 1, zero = 0;
        double flop = 2.0 * s.M * s.N * s.K;
        // row-major C (M,N) = A (M,K) * B^T with B (N,K): column-major C^T = B * A^T
        auto run = [&](int mode) {
            if (mode <= 3) {
                cublasComputeType_t ct[] = {CUBLAS_COMPUTE_32F_PEDANTIC, CUBLAS_COMPUTE_32F_FAST_TF32,
                                            CUBLAS_COMPUTE_32F_FAST_16BF, CUBLAS_COMPUTE_32F_FAST_16F};
                CK(cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, (int)s.N, (int)s.M, (int)s.K, &one, B,
                                CUDA_R_32F, (int)s.K, A, CUDA_R_32F, (int)s.K, &zero, C, CUDA_R_32F,
                                (int)s.N, ct[mode], CUBLAS_GEMM_DEFAULT));
            } else {
                if (mode == 5) to_bf16<<<2048, 256>>>(A, Ah, nA);
                CK(cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, (int)s.N, (int)s.M, (int)s.K, &one, Bh,
                                CUDA_R_16BF, (int)s.K, Ah, CUDA_R_16BF, (int)s.K, &zero, C,
                                CUDA_R_32F, (int)s.N, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
            }
        };
        const char *names[] = {"fp32 pedantic", "fp32 in, TF32", "fp32 in, FAST_16BF",
                               "fp32 in, FAST_16F", "bf16 in (already)", "convert A + bf16 in"};
        for (int mode = 0; mode < 6; mode++) {
            for (int i = 0; i < 3; i++) run(mode);
            CK(cudaDeviceSynchronize());
            const int reps = 20;
            CK(cudaEventRecord(a));
            for (int i = 0; i < reps; i++) run(mode);
            CK(cudaEventRecord(b));
            CK(cudaEventSynchronize(b));
            float ms;
            CK(cudaEventElapsedTime(&ms, a, b));
            double us = 1e3 * ms / reps;
            printf("%-16s %-26s %9.1f %9.1f\n", s.what, names[mode], us, flop / us * 1e-6);
        }
        cudaFree(A); cudaFree(B); cudaFree(C); cudaFree(Ah); cudaFree(Bh);
    }
    return 0;
}
