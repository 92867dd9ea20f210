// cudnn_swish_gemm.cu: would cuDNN 9's runtime-fusion engine, running the product with the bias
// and QuickGELU fused into its epilogue, beat cuBLASLt's product followed by pbw's QuickGELU pass?
// (The same design question as gelu_gemm.cu, answered with a library instead of a kernel of our
// own: cuBLASLt has no QuickGELU epilogue, but cuDNN's SWISH x * sigmoid(beta x) with beta = 1.702
// is exactly CLIP's QuickGELU, and the graph API can put it after a matmul.) Both sides compute
// y (R,O) = QuickGELU(x W^T + b) in bf16 from bf16 x (R,I), W (O,I) and b (O), fp32 sums:
//   - cuBLASLt: the product with its bias epilogue into bf16 (the heuristic's first pick), then
//     one vectorized pass x * sigmoid(1.702 x) (bench_gemm_ref.cuh);
//   - cuDNN: one operation graph, built with the C backend API (cudnn_graph.h): a matmul of x as
//     [1,R,I] and W^T as [1,I,O] (W's rows read as columns, no copy) into a virtual fp32 [1,R,O],
//     a pointwise ADD of b as [1,1,O] into another virtual fp32 tensor, and a pointwise SWISH_FWD
//     with beta 1.702 into y, bf16. Every engine config the heuristic proposes (mode A; B, then
//     FALLBACK if A gives no working plan) is built into an execution plan where it can be (some
//     refuse: they are counted and their status printed), run, checked and timed; the fastest is
//     set beside cuBLASLt. The host time of each plan's build is printed too: runtime fusion
//     compiles its kernels with NVRTC when a plan is finalized, which a fresh process pays (the
//     first plan it builds also loads cuDNN's engine libraries).
// Each is timed as the median of 20 runs after 3 warm-ups, one call between two events on the
// default stream (so host-side cost of cudnnBackendExecute shows where it exceeds the kernel's
// run time), at CLIP's fc1 shapes: 448 crops x 50 tokens (a CMA batch of 14) and 32 crops x 50
// (an Adam step). The cuDNN output is compared with cuBLASLt's: cuBLASLt rounds the product plus
// bias to bf16 before QuickGELU while the fused graph keeps it in fp32, and the two round the
// result apart, so differences of a couple of bf16 ulps of the output's scale are expected; one
// over 2e-2 of the scale is flagged MISMATCH (printed, not fatal).
// Standalone:
//   nvcc -O3 -arch=sm_90 bench/cudnn_swish_gemm.cu -lcudnn -lcublasLt -o build/cudnn_swish_gemm
//   build/cudnn_swish_gemm
// Where cuDNN refuses the graph or every config, CUDNN_LOGLEVEL_DBG=2 CUDNN_LOGDEST_DBG=stderr
// (or the deprecated CUDNN_LOGERR_DBG=1) makes it say why.
#include "bench_cudnn_graph.cuh"
#include "bench_gemm_ref.cuh"

namespace {

const double SWISH_BETA = 1.702; // QuickGELU's x * sigmoid(1.702 x)

// The graph's tensors; the first four are the ones the variant pack binds.
enum : int64_t { UID_X = 1, UID_W, UID_B, UID_Y, UID_ACC, UID_BIASED };

// The operation graph y = SWISH_1.702(x W^T + b) and every descriptor it refers to, kept alive
// as long as the graph is.
struct SwishGemmGraph {
    Desc x{CUDNN_BACKEND_TENSOR_DESCRIPTOR}, w{CUDNN_BACKEND_TENSOR_DESCRIPTOR},
        b{CUDNN_BACKEND_TENSOR_DESCRIPTOR}, y{CUDNN_BACKEND_TENSOR_DESCRIPTOR},
        acc{CUDNN_BACKEND_TENSOR_DESCRIPTOR}, biased{CUDNN_BACKEND_TENSOR_DESCRIPTOR};
    Desc mm{CUDNN_BACKEND_MATMUL_DESCRIPTOR}, mm_op{CUDNN_BACKEND_OPERATION_MATMUL_DESCRIPTOR};
    Desc add{CUDNN_BACKEND_POINTWISE_DESCRIPTOR},
        add_op{CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR};
    Desc swish{CUDNN_BACKEND_POINTWISE_DESCRIPTOR},
        swish_op{CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR};
    Desc graph{CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR};

    // Each descriptor finalized after the ones it refers to; a status other than success means
    // cuDNN refused the graph (dnn_last_failure says where).
    cudnnStatus_t build(cudnnHandle_t dnn, int64_t R, int64_t O, int64_t I) {
        make_tensor(x, UID_X, CUDNN_DATA_BFLOAT16, {1, R, I}, {R * I, I, 1}, false);
        // W (O,I) row-major is W^T (I,O) column-major: element (k, n) at n I + k
        make_tensor(w, UID_W, CUDNN_DATA_BFLOAT16, {1, I, O}, {O * I, 1, I}, false);
        make_tensor(b, UID_B, CUDNN_DATA_BFLOAT16, {1, 1, O}, {O, O, 1}, false);
        make_tensor(y, UID_Y, CUDNN_DATA_BFLOAT16, {1, R, O}, {R * O, O, 1}, false);
        // the sums and the biased sums stay in fp32 inside the fused kernel
        make_tensor(acc, UID_ACC, CUDNN_DATA_FLOAT, {1, R, O}, {R * O, O, 1}, true);
        make_tensor(biased, UID_BIASED, CUDNN_DATA_FLOAT, {1, R, O}, {R * O, O, 1}, true);

        DNN_TRY(make_matmul(mm, mm_op, x, w, acc));

        make_pointwise(add, CUDNN_POINTWISE_ADD);
        DNN_TRY(cudnnBackendFinalize(add.d));
        DNN_TRY(make_pointwise_op(add_op, add, acc, &b, biased)); // b broadcast over the rows
        make_pointwise(swish, CUDNN_POINTWISE_SWISH_FWD);
        set(swish, CUDNN_ATTR_POINTWISE_SWISH_BETA, CUDNN_TYPE_DOUBLE, 1, &SWISH_BETA);
        DNN_TRY(cudnnBackendFinalize(swish.d));
        DNN_TRY(make_pointwise_op(swish_op, swish, biased, nullptr, y));

        const cudnnBackendDescriptor_t ops[3] = {mm_op.d, add_op.d, swish_op.d};
        set(graph, CUDNN_ATTR_OPERATIONGRAPH_OPS, CUDNN_TYPE_BACKEND_DESCRIPTOR, 3, ops);
        // the handle attributes (graph and plan) are marked deprecated in recent 9.x releases
        // but still accepted, and earlier ones need them
        set(graph, CUDNN_ATTR_OPERATIONGRAPH_HANDLE, CUDNN_TYPE_HANDLE, 1, &dnn);
        DNN_TRY(cudnnBackendFinalize(graph.d));
        return CUDNN_STATUS_SUCCESS;
    }
};

// One shape, both sides; whether any cuDNN plan worked.
bool run_shape(cudnnHandle_t dnn, cublasLtHandle_t lt, void *ws, size_t ws_bytes, int R, int O,
               int I) {
    GemmCase c(R, O, I);
    LtLinear ref(c, lt, ws, ws_bytes);
    auto us = [](auto run) { return 1e3f * bench_median_ms(run, 3, 20); };
    const float t_product = us([&] { ref.product(); }), t_gelu = us([&] { ref.gelu(); });
    const float t_both = us([&] { ref.product(), ref.gelu(); });
    CK(cudaGetLastError());
    ref.product(), ref.gelu(); // c.y_ref, the reference (timing gelu() alone reapplied it)
    CK(cudaDeviceSynchronize());
    const double flop = c.flop();
    printf("%6d x %4d x %4d: cuBLASLt %.1f us (%.0f TFLOP/s) + QuickGELU %.1f us = %.1f us in "
           "sequence\n",
           R, O, I, t_product, flop / t_product * 1e-6, t_gelu, t_both);

    SwishGemmGraph g;
    if (g.build(dnn, R, O, I) != CUDNN_STATUS_SUCCESS) {
        printf("  cuDNN refused the graph: %s\n  (%s says why)\n", dnn_last_failure.c_str(),
               DNN_LOG_HINT);
        return false;
    }
    __nv_bfloat16 *y;
    CK(cudaMalloc(&y, sizeof(__nv_bfloat16) * R * O));
    ConfigResults res;
    const bool ok = try_configs(
        g.graph, flop,
        [&](const Desc &cfg, PlanRun *r) {
            return run_plan(
                dnn, cfg, {UID_X, UID_W, UID_B, UID_Y}, {c.x, c.w, c.b, y},
                [&] { CK(cudaMemset(y, 0, sizeof(__nv_bfloat16) * R * O)); },
                [&](double *err, double *scale) { c.compare(y, err, scale); }, r);
        },
        &res);
    CK(cudaFree(y));
    if (!ok)
        return false;
    print_best(res, flop, t_both);
    return true;
}

} // namespace

int main() {
    printf("cuDNN %zu (built against %d)\n", cudnnGetVersion(), CUDNN_VERSION);
    cudnnHandle_t dnn;
    DNN_CK(cudnnCreate(&dnn));
    cublasLtHandle_t lt;
    CK(cublasLtCreate(&lt));
    const size_t ws_bytes = (size_t)32 << 20;
    void *ws;
    CK(cudaMalloc(&ws, ws_bytes));
    const bool batch = run_shape(dnn, lt, ws, ws_bytes, 448 * 50, 3072, 768); // a CMA batch's fc1
    const bool adam = run_shape(dnn, lt, ws, ws_bytes, 32 * 50, 3072, 768);   // an Adam step's fc1
    CK(cudaFree(ws));
    CK(cublasLtDestroy(lt));
    DNN_CK(cudnnDestroy(dnn));
    if (!batch && !adam) {
        fprintf(stderr, "cudnn_swish_gemm: no shape had a working cuDNN plan\n");
        return 1;
    }
    return 0;
}
