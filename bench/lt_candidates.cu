// lt_candidates.cu: how much faster than cuBLASLt's first heuristic pick the best of its
// candidates runs CLIP's products at the edit's shapes (a design question: would measuring the
// candidates, as pbw does for cuDNN's convolutions, pay?). pbw's product layouts: the forward
// y (R,O) = x (R,I) W^T + b (+ r) as column-major y^T = W x^T (A = W transposed, bias
// epilogue, bf16 operands, fp32 or bf16 out, r read as C with beta 1); the input gradient
// gx (R,I) = gy (R,O) W as gx^T = W^T gy^T (no transposes). Standalone:
//   nvcc -O3 -arch=sm_90 bench/lt_candidates.cu -lcublasLt -o build/lt_candidates
//   build/lt_candidates
#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>
#include <vector>

#include "bench_cuda_check.cuh"

__global__ void fill(__nv_bfloat16 *x, size_t n, unsigned s) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        unsigned h = (unsigned)(i * 2654435761u) ^ s;
        h ^= h >> 13;
        h *= 0x5bd1e995u;
        x[i] = __float2bfloat16((float)(h & 0xffff) / 65536.0f - 0.5f);
    }
}

struct shape {
    const char *name;
    int R, O, I;
    int grad;  // 1: the input gradient gx (R,I) = gy (R,O) W (O,I)
    int bias;  // forward: a bias epilogue
    int resid; // beta 1 with C = a separate fp32 buffer (forward residual, or gx accumulated)
    int outh;  // output in bf16
};

int main() {
    cublasLtHandle_t lt;
    CK(cublasLtCreate(&lt));
    const size_t ws_bytes = (size_t)32 << 20;
    void *ws, *A, *B, *C, *D, *bias;
    const size_t big = (size_t)12800 * 3072;
    CK(cudaMalloc(&ws, ws_bytes));
    CK(cudaMalloc(&A, big * 2));
    CK(cudaMalloc(&B, big * 2));
    CK(cudaMalloc(&C, big * 4));
    CK(cudaMalloc(&D, big * 4));
    CK(cudaMalloc(&bias, 3072 * 4));
    fill<<<1024, 256>>>((__nv_bfloat16 *)A, big, 1);
    fill<<<1024, 256>>>((__nv_bfloat16 *)B, big, 2);
    CK(cudaMemset(C, 0, big * 4));
    CK(cudaMemset(bias, 0, 3072 * 4));
    cudaStream_t st;
    CK(cudaStreamCreate(&st));
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    const shape shapes[] = {
        // the Adam step: 32 crops x 50 tokens
        {"adam qkv", 1600, 2304, 768, 0, 1, 0, 0},
        {"adam out_proj + r", 1600, 768, 768, 0, 1, 1, 0},
        {"adam fc1", 1600, 3072, 768, 0, 1, 0, 0},
        {"adam fc2 + r", 1600, 768, 3072, 0, 1, 1, 0},
        {"adam dx qkv", 1600, 2304, 768, 1, 0, 0, 0},
        {"adam dx out_proj", 1600, 768, 768, 1, 0, 1, 0},
        {"adam dx fc1", 1600, 3072, 768, 1, 0, 1, 0},
        {"adam dx fc2", 1600, 768, 3072, 1, 0, 0, 0},
        // a CMA-ES pass: 256 crops x 50 tokens, half activations
        {"cma qkv (bf16 out)", 12800, 2304, 768, 0, 1, 0, 1},
        {"cma out_proj + r", 12800, 768, 768, 0, 1, 1, 0},
        {"cma fc1 (bf16 out)", 12800, 3072, 768, 0, 1, 0, 1},
        {"cma fc2 + r", 12800, 768, 3072, 0, 1, 1, 0},
    };
    printf("%-22s %5s %5s %5s  %9s %9s %5s %s\n", "product", "R", "O", "I", "first us",
           "best us", "pick", "candidates");
    double tot_first = 0, tot_best = 0;
    for (const shape &s : shapes) {
        cublasLtMatmulDesc_t op;
        CK(cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
        cublasOperation_t ta = s.grad ? CUBLAS_OP_N : CUBLAS_OP_T, tb = CUBLAS_OP_N;
        CK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta));
        CK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb));
        cublasLtEpilogue_t epi = s.bias ? CUBLASLT_EPILOGUE_BIAS : CUBLASLT_EPILOGUE_DEFAULT;
        CK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi));
        if (s.bias)
            CK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias,
                                              sizeof bias));
        // column-major: forward y^T (O,R) = W (O,I) x^T (I,R), W stored (I,O) transposed;
        // gradient gx^T (I,R) = W^T (I,O) gy^T (O,R), W stored (I,O) as it lies
        const int M = s.grad ? s.I : s.O, K = s.grad ? s.O : s.I;
        const cudaDataType_t out = s.outh ? CUDA_R_16BF : CUDA_R_32F;
        cublasLtMatrixLayout_t la, lb, lc, ld;
        // W is stored (O,I) either way: column-major (I,O), transposed by TRANSA in the forward
        CK(cublasLtMatrixLayoutCreate(&la, CUDA_R_16BF, s.I, s.O, s.I));
        CK(cublasLtMatrixLayoutCreate(&lb, CUDA_R_16BF, K, s.R, K));
        CK(cublasLtMatrixLayoutCreate(&lc, s.resid ? CUDA_R_32F : out, M, s.R, M));
        CK(cublasLtMatrixLayoutCreate(&ld, out, M, s.R, M));
        cublasLtMatmulPreference_t pref;
        CK(cublasLtMatmulPreferenceCreate(&pref));
        CK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                &ws_bytes, sizeof ws_bytes));
        cublasLtMatmulHeuristicResult_t res[16];
        int found = 0;
        cublasStatus_t hs = cublasLtMatmulAlgoGetHeuristic(lt, op, la, lb, lc, ld, pref, 16, res,
                                                           &found);
        if (hs != CUBLAS_STATUS_SUCCESS || found < 1) {
            printf("%-22s no algorithm (%d)\n", s.name, (int)hs);
            continue;
        }
        const float one = 1.0f, zero = 0.0f;
        const float *beta = s.resid ? &one : &zero;
        std::vector<double> us(found, -1);
        for (int c = 0; c < found; c++) {
            auto run = [&]() {
                return cublasLtMatmul(lt, op, &one, A, la, B, lb, beta, C, lc, D, ld,
                                      &res[c].algo, ws, ws_bytes, st);
            };
            if (run() != CUBLAS_STATUS_SUCCESS) continue;
            for (int w = 0; w < 3; w++) run();
            const int reps = 30;
            CK(cudaEventRecord(e0, st));
            for (int r = 0; r < reps; r++) run();
            CK(cudaEventRecord(e1, st));
            CK(cudaEventSynchronize(e1));
            float ms = 0;
            CK(cudaEventElapsedTime(&ms, e0, e1));
            us[c] = 1e3 * ms / reps;
        }
        int bi = 0;
        for (int c = 0; c < found; c++)
            if (us[c] > 0 && (us[bi] <= 0 || us[c] < us[bi])) bi = c;
        printf("%-22s %5d %5d %5d  %9.1f %9.1f %5d ", s.name, s.R, s.O, s.I, us[0], us[bi], bi);
        for (int c = 0; c < found; c++) printf(" %.1f", us[c]);
        printf("\n");
        tot_first += us[0];
        tot_best += us[bi];
        cublasLtMatmulPreferenceDestroy(pref);
        cublasLtMatrixLayoutDestroy(la);
        cublasLtMatrixLayoutDestroy(lb);
        cublasLtMatrixLayoutDestroy(lc);
        cublasLtMatrixLayoutDestroy(ld);
        cublasLtMatmulDescDestroy(op);
    }
    printf("sum of one of each: first picks %.1f us, best %.1f us (%.1f%% less)\n", tot_first,
           tot_best, 100.0 * (1 - tot_best / tot_first));
    return 0;
}
