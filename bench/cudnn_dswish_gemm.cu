// cudnn_dswish_gemm.cu: in an Adam step's backward, CLIP's fc2 input gradient (a product) is
// followed by QuickGELU's backward (a pass reading that product's fp32 output and fc1's bf16
// output, writing bf16). Would cuDNN's runtime fusion, with SWISH_BWD in the product's
// epilogue, run the two faster than cuBLAS's product and pbw's pass in sequence?
//   dh (R,O) = dg * QuickGELU'(h), dg = dy (R,I) W2 (I,O)
// with dy, W2 (fc2's weight as it is stored, (768, 3072) row-major) and h (fc1's output) in
// bf16, dg's sums in fp32, dh in bf16:
//   - unfused: cublasGemmEx into fp32 dg (column-major dg^T (O,R) = W2^T dy^T, both stored
//     row-major, so no transpose), then one vectorized pass (4 values a thread) as pbw's;
//   - cuDNN: one operation graph (cudnn_graph.h): a matmul of dy as [1,R,I] and W2 as [1,I,O]
//     into a virtual fp32 [1,R,O], then a pointwise SWISH_BWD with beta 1.702, x = h and dy =
//     that product, into dh (bf16). Every engine config the heuristic proposes is built, run,
//     checked against the unfused result and timed (bench_cudnn_graph.cuh).
// The two round the same fp32 sums (up to their order) through different sigmoid arithmetic,
// so their outputs may differ by a bf16 ulp of the output's scale; over 2e-2 of it is flagged.
// Shapes: an Adam step's 32 crops x 50 tokens, and a CMA batch's 448 x 50 for comparison.
// Standalone:
//   nvcc -O3 -arch=sm_90 bench/cudnn_dswish_gemm.cu -lcudnn -lcublas -lcublasLt \
//        -o build/cudnn_dswish_gemm && build/cudnn_dswish_gemm
#include <cublas_v2.h>

#include "bench_cudnn_graph.cuh"
#include "bench_gemm_ref.cuh"

namespace {

const double SWISH_BETA = 1.702;

enum : int64_t { UID_DY = 1, UID_W, UID_H, UID_DH, UID_ACC };

// QuickGELU's derivative at v, as pbw's backward forms it: s + 1.702 v s (1 - s).
__device__ __forceinline__ float quick_gelu_grad(float v) {
    const float s = 1.0f / (1.0f + __expf(-1.702f * v));
    return s + 1.702f * v * s * (1.0f - s);
}

// dh = bf16(dg * QuickGELU'(h)), four values a thread.
__global__ void dgelu_pass(const float4 *dg, const uint2 *h, uint2 *dh, size_t n4) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n4;
         i += (size_t)gridDim.x * blockDim.x) {
        const float4 g = dg[i];
        const uint2 hv = h[i];
        const __nv_bfloat162 *hh = reinterpret_cast<const __nv_bfloat162 *>(&hv);
        const float2 a = __bfloat1622float2(hh[0]), b = __bfloat1622float2(hh[1]);
        uint2 o;
        __nv_bfloat162 *oh = reinterpret_cast<__nv_bfloat162 *>(&o);
        oh[0] = __floats2bfloat162_rn(g.x * quick_gelu_grad(a.x), g.y * quick_gelu_grad(a.y));
        oh[1] = __floats2bfloat162_rn(g.z * quick_gelu_grad(b.x), g.w * quick_gelu_grad(b.y));
        dh[i] = o;
    }
}

struct DswishGraph {
    Desc dy{CUDNN_BACKEND_TENSOR_DESCRIPTOR}, w{CUDNN_BACKEND_TENSOR_DESCRIPTOR},
        h{CUDNN_BACKEND_TENSOR_DESCRIPTOR}, dh{CUDNN_BACKEND_TENSOR_DESCRIPTOR},
        acc{CUDNN_BACKEND_TENSOR_DESCRIPTOR};
    Desc mm{CUDNN_BACKEND_MATMUL_DESCRIPTOR}, mm_op{CUDNN_BACKEND_OPERATION_MATMUL_DESCRIPTOR};
    Desc sw{CUDNN_BACKEND_POINTWISE_DESCRIPTOR},
        sw_op{CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR};
    Desc graph{CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR};

    cudnnStatus_t build(cudnnHandle_t dnn, int64_t R, int64_t O, int64_t I) {
        make_tensor(dy, UID_DY, CUDNN_DATA_BFLOAT16, {1, R, I}, {R * I, I, 1}, false);
        make_tensor(w, UID_W, CUDNN_DATA_BFLOAT16, {1, I, O}, {I * O, O, 1}, false);
        make_tensor(h, UID_H, CUDNN_DATA_BFLOAT16, {1, R, O}, {R * O, O, 1}, false);
        make_tensor(dh, UID_DH, CUDNN_DATA_BFLOAT16, {1, R, O}, {R * O, O, 1}, false);
        make_tensor(acc, UID_ACC, CUDNN_DATA_FLOAT, {1, R, O}, {R * O, O, 1}, true);
        DNN_TRY(make_matmul(mm, mm_op, dy, w, acc));
        make_pointwise(sw, CUDNN_POINTWISE_SWISH_BWD);
        set(sw, CUDNN_ATTR_POINTWISE_SWISH_BETA, CUDNN_TYPE_DOUBLE, 1, &SWISH_BETA);
        DNN_TRY(cudnnBackendFinalize(sw.d));
        set_desc(sw_op, CUDNN_ATTR_OPERATION_POINTWISE_PW_DESCRIPTOR, sw);
        set_desc(sw_op, CUDNN_ATTR_OPERATION_POINTWISE_XDESC, h);
        set_desc(sw_op, CUDNN_ATTR_OPERATION_POINTWISE_DYDESC, acc);
        set_desc(sw_op, CUDNN_ATTR_OPERATION_POINTWISE_DXDESC, dh);
        DNN_TRY(cudnnBackendFinalize(sw_op.d));
        const cudnnBackendDescriptor_t ops[2] = {mm_op.d, sw_op.d};
        set(graph, CUDNN_ATTR_OPERATIONGRAPH_OPS, CUDNN_TYPE_BACKEND_DESCRIPTOR, 2, ops);
        set(graph, CUDNN_ATTR_OPERATIONGRAPH_HANDLE, CUDNN_TYPE_HANDLE, 1, &dnn);
        DNN_TRY(cudnnBackendFinalize(graph.d));
        return CUDNN_STATUS_SUCCESS;
    }
};

bool run_shape(cudnnHandle_t dnn, cublasHandle_t blas, int R, int O, int I) {
    __nv_bfloat16 *dy, *w, *h, *ref, *dh;
    float *dg;
    CK(cudaMalloc(&dy, 2ull * R * I));
    CK(cudaMalloc(&w, 2ull * I * O));
    CK(cudaMalloc(&h, 2ull * R * O));
    CK(cudaMalloc(&ref, 2ull * R * O));
    CK(cudaMalloc(&dh, 2ull * R * O));
    CK(cudaMalloc(&dg, 4ull * R * O));
    fill<<<1024, 256>>>(dy, (size_t)R * I, 1e-3f, 11u);
    fill<<<1024, 256>>>(w, (size_t)I * O, 1.0f / sqrtf((float)O), 12u);
    fill<<<1024, 256>>>(h, (size_t)R * O, 3.0f, 13u);
    CK(cudaGetLastError());
    const float one = 1.0f, zero = 0.0f;
    const size_t n4 = (size_t)R * O / 4;
    auto product = [&] {
        if (cublasGemmEx(blas, CUBLAS_OP_N, CUBLAS_OP_N, O, R, I, &one, w, CUDA_R_16BF, O, dy,
                         CUDA_R_16BF, I, &zero, dg, CUDA_R_32F, O, CUBLAS_COMPUTE_32F,
                         CUBLAS_GEMM_DEFAULT) != CUBLAS_STATUS_SUCCESS) {
            fprintf(stderr, "cublasGemmEx failed\n");
            exit(1);
        }
    };
    auto pass = [&] {
        dgelu_pass<<<(unsigned)std::min<size_t>((n4 + 255) / 256, 65535), 256>>>(
            (const float4 *)dg, (const uint2 *)h, (uint2 *)ref, n4);
    };
    auto us = [](auto run) { return 1e3f * bench_median_ms(run, 3, 20); };
    const float t_product = us(product), t_pass = us(pass);
    const float t_both = us([&] { product(), pass(); });
    CK(cudaDeviceSynchronize());
    const double flop = 2.0 * R * O * I;
    printf("%6d x %4d x %4d: cuBLAS %.1f us (%.0f TFLOP/s) + QuickGELU backward %.1f us = %.1f "
           "us in sequence\n",
           R, O, I, t_product, flop / t_product * 1e-6, t_pass, t_both);
    DswishGraph g;
    bool ok = false;
    if (g.build(dnn, R, O, I) != CUDNN_STATUS_SUCCESS) {
        printf("  cuDNN refused the graph: %s\n  (%s says why)\n", dnn_last_failure.c_str(),
               DNN_LOG_HINT);
    } else {
        ConfigResults res;
        auto compare = [&](double *err, double *scale) {
            bf16_compare(ref, dh, (size_t)R * O, err, scale);
        };
        ok = try_configs(
            g.graph, flop,
            [&](const Desc &cfg, PlanRun *r) {
                return run_plan(
                    dnn, cfg, {UID_DY, UID_W, UID_H, UID_DH}, {dy, w, h, dh},
                    [&] { CK(cudaMemset(dh, 0, 2ull * R * O)); }, compare, r);
            },
            &res);
        if (ok)
            print_best(res, flop, t_both);
    }
    CK(cudaFree(dy));
    CK(cudaFree(w));
    CK(cudaFree(h));
    CK(cudaFree(ref));
    CK(cudaFree(dh));
    CK(cudaFree(dg));
    return ok;
}

} // namespace

int main() {
    printf("cuDNN %zu (built against %d)\n", cudnnGetVersion(), CUDNN_VERSION);
    cudnnHandle_t dnn;
    DNN_CK(cudnnCreate(&dnn));
    cublasHandle_t blas;
    if (cublasCreate(&blas) != CUBLAS_STATUS_SUCCESS)
        return 1;
    const bool adam = run_shape(dnn, blas, 32 * 50, 3072, 768);
    const bool batch = run_shape(dnn, blas, 448 * 50, 3072, 768);
    cublasDestroy(blas);
    DNN_CK(cudnnDestroy(dnn));
    if (!adam && !batch) {
        fprintf(stderr, "cudnn_dswish_gemm: no shape had a working cuDNN plan\n");
        return 1;
    }
    return 0;
}
