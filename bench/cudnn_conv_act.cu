// cudnn_conv_act.cu: would cuDNN's runtime fusion, running StyleGAN2's 3x3 convolution with its
// demodulation, noise, bias and leaky ReLU in the epilogue, beat what pbw runs now: cuDNN's
// measured convolution into bf16, then the copy back with the activation (a pass that reads and
// writes the whole output once more; `nhwc_map_rows<NhwcPostact>`, 1.3 ms of a CMA generation,
// docs/cuda.md)? Both sides compute, from x (N,H,W,C) and w (K,3,3,C) in bf16 (the input already
// scaled by the style, as pbw stages it), padding 1:
//     y = lrelu(conv(x, w) d[n,k] + noise[n,h,w] + b[k], 0.2)     (N,H,W,K) bf16
// (StyleGAN2's gain sqrt(2) taken into d, noise and b: lrelu(v) g = lrelu(g v) for g > 0)
//   - pbw's path: cudnnConvolutionForward (NHWC bf16, fp32 sums, tensor cores; the fastest
//     algorithm cudnnFindConvolutionForwardAlgorithmEx measures) into a bf16 buffer, then one
//     vectorized pass (8 channels a thread) applying the rest into y;
//   - fused: one operation graph (backend API): the convolution into a virtual fp32 tensor, then
//     pointwise MUL by d (N,K,1,1), ADD noise (N,1,H,W), ADD b (1,K,1,1) and RELU_FWD with lower
//     slope 0.2, into y; every engine config the heuristic proposes is built, run, checked and
//     timed (bench_cudnn_graph.cuh).
// The fused graph keeps the sums in fp32 where pbw rounds them to bf16 first: a bf16 ulp or two
// of the output's scale apart is expected (MISMATCH past 2e-2 of it). Times: the median of 20
// runs after 3 warm-ups, at the generator's 3x3 convolutions without upsampling for a CMA batch of
// 14 at 256 px (channel multiplier 2): 32, 64, 128 and 256 px.
//
// Measured with cuDNN 9.14. pbw's path on an H100 80GB HBM3: 32 px 152-199 us + the pass 24 us;
// 64 px 455 + 74 us; 128 px 389 + 137 us; 256 px 428 + 188 us (the pass 14-44% of the
// convolution: what the fusion could save). The whole epilogue cannot be fused: at 64 px on an
// H200, every engine config of `full` and of `nonoise` either faults with a misaligned address
// (CUDA error 716: configs 0-4, 8 and 9, engine 4, runtime-compiled) or runs and is wrong (5-7,
// engine 7: max abs diff 2.4 of 2.5); with d's strides those of a packed tensor (`dpacked`) none
// faults and every one is wrong (up to 1e36). What the three have in common is d, a per-sample,
// per-channel (N,K,1,1) operand: `nod`, the same graph without it (the noise's per-pixel
// operand kept), is right with all 10 configs, the best 363 us against 510 us for the
// convolution and the pass, and `plain` (bias and activation alone) is right everywhere (H100:
// 103.5 / 358 / 370 / 427 us at 32 / 64 / 128 / 256 px). StyleGAN2's demodulation is per sample
// and output channel, so it cannot move into the weight of a batched convolution, and without it
// the epilogue is not StyleGAN2's. `conv`, the convolution alone through the backend API
// (engine 62, no runtime compilation), ran 108 / 348 / 350 / 363 us on the H200, 1.79 / 1.44 /
// 1.59 / 1.63 times faster than the legacy algorithm's convolution and pass. pbw now measures the
// backend API's engine configs beside the legacy algorithms (pbw_cuda_conv.cu); at its own large
// layers the legacy pick measured as fast as the best config, at the batch-1 ones several times
// slower (docs/cuda.md).
// Standalone:
//   nvcc -O3 -arch=sm_90 bench/cudnn_conv_act.cu -lcudnn -o build/cudnn_conv_act
//   build/cudnn_conv_act [K [full|dpacked|nonoise|nod|plain|conv]]  (shape K alone, 0-3; the
//                      graph's epilogue, Mode below; PBW_BENCH_CONFIG=I: engine config I alone)
#include <cmath>
#include <cstring>

#include "bench_cudnn_graph.cuh"
#include "bench_gemm_ref.cuh"

namespace {

const float SLOPE = 0.2f; // StyleGAN2's leaky ReLU
// Which epilogue the graph has: all of it (DPACKED: with d's strides those of a packed NCHW
// tensor), no noise term (zero noise on both sides), no demodulation (d = 1 on both sides), the
// bias and the activation alone (d = 1 and zero noise: cuDNN's common ConvBiasAct), or none (the
// convolution alone, checked against the legacy API's).
enum Mode { FULL, DPACKED, NONOISE, NOD, PLAIN, CONV };
const char *const MODE_NAMES[] = {"full", "dpacked", "nonoise", "nod", "plain", "conv"};
Mode g_mode = FULL;
bool has_d() { return g_mode == FULL || g_mode == DPACKED || g_mode == NONOISE; }
bool has_noise() { return g_mode == FULL || g_mode == DPACKED || g_mode == NOD; }

// The graph's tensors; the first six are the ones the variant pack binds.
enum : int64_t {
    UID_X = 1,
    UID_W,
    UID_D,
    UID_NOISE,
    UID_B,
    UID_Y,
    UID_CONV,
    UID_T1,
    UID_T2,
    UID_T3
};

// pbw's pass: y = lrelu(c d + noise + b) from the convolution's bf16 output c, 8 channels
// a thread.
__global__ void postact_kernel(uint4 *y, const uint4 *c, const float *d, const float *noise,
                               const float *b, int K, int64_t HW, int64_t n8) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n8;
         i += (int64_t)gridDim.x * blockDim.x) {
        const int64_t k0 = i % (K / 8) * 8, pix = i / (K / 8), n = pix / HW;
        uint4 v = c[i];
        __nv_bfloat162 *h = reinterpret_cast<__nv_bfloat162 *>(&v);
        const float nz = noise[pix];
#pragma unroll
        for (int e = 0; e < 4; e++) {
            float2 f = __bfloat1622float2(h[e]);
            const int64_t k = k0 + 2 * e;
            float a = f.x * d[n * K + k] + nz + b[k], bb = f.y * d[n * K + k + 1] + nz + b[k + 1];
            a = a < 0 ? a * SLOPE : a;
            bb = bb < 0 ? bb * SLOPE : bb;
            h[e] = __floats2bfloat162_rn(a, bb);
        }
        y[i] = v;
    }
}

// The operation graph and every descriptor it refers to.
struct ConvActGraph {
    Desc x{CUDNN_BACKEND_TENSOR_DESCRIPTOR}, w{CUDNN_BACKEND_TENSOR_DESCRIPTOR},
        d{CUDNN_BACKEND_TENSOR_DESCRIPTOR}, noise{CUDNN_BACKEND_TENSOR_DESCRIPTOR},
        b{CUDNN_BACKEND_TENSOR_DESCRIPTOR}, y{CUDNN_BACKEND_TENSOR_DESCRIPTOR},
        conv{CUDNN_BACKEND_TENSOR_DESCRIPTOR}, t1{CUDNN_BACKEND_TENSOR_DESCRIPTOR},
        t2{CUDNN_BACKEND_TENSOR_DESCRIPTOR}, t3{CUDNN_BACKEND_TENSOR_DESCRIPTOR};
    Desc cd{CUDNN_BACKEND_CONVOLUTION_DESCRIPTOR},
        conv_op{CUDNN_BACKEND_OPERATION_CONVOLUTION_FORWARD_DESCRIPTOR};
    Desc mul{CUDNN_BACKEND_POINTWISE_DESCRIPTOR}, add{CUDNN_BACKEND_POINTWISE_DESCRIPTOR},
        relu{CUDNN_BACKEND_POINTWISE_DESCRIPTOR};
    Desc op_d{CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR},
        op_noise{CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR},
        op_b{CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR},
        op_relu{CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR};
    Desc graph{CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR};

    // Tensors in cuDNN's (N,C,H,W) order with NHWC strides; a status other than success means
    // cuDNN refused the graph (dnn_last_failure says where).
    cudnnStatus_t build(cudnnHandle_t dnn, int64_t N, int64_t C, int64_t K, int64_t H, int64_t W) {
        const cudnnDataType_t bf = CUDNN_DATA_BFLOAT16, f32 = CUDNN_DATA_FLOAT;
        make_tensor(x, UID_X, bf, {N, C, H, W}, {H * W * C, 1, W * C, C}, false);
        make_tensor(w, UID_W, bf, {K, C, 3, 3}, {9 * C, 1, 3 * C, C}, false);
        make_tensor(d, UID_D, f32, {N, K, 1, 1},
                    g_mode == DPACKED ? std::vector<int64_t>{K, 1, 1, 1}
                                      : std::vector<int64_t>{K, 1, K, K},
                    false);
        make_tensor(noise, UID_NOISE, f32, {N, 1, H, W}, {H * W, 1, W, 1}, false);
        make_tensor(b, UID_B, f32, {1, K, 1, 1}, {K, 1, K, K}, false);
        const std::vector<int64_t> dims = {N, K, H, W}, nhwc = {H * W * K, 1, W * K, K};
        make_tensor(y, UID_Y, bf, dims, nhwc, false);
        make_tensor(conv, UID_CONV, f32, dims, nhwc, true);
        make_tensor(t1, UID_T1, f32, dims, nhwc, true);
        make_tensor(t2, UID_T2, f32, dims, nhwc, true);
        make_tensor(t3, UID_T3, f32, dims, nhwc, true);

        const cudnnConvolutionMode_t mode = CUDNN_CROSS_CORRELATION;
        const int64_t dims2 = 2, ones[2] = {1, 1};
        set(cd, CUDNN_ATTR_CONVOLUTION_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &f32);
        set(cd, CUDNN_ATTR_CONVOLUTION_CONV_MODE, CUDNN_TYPE_CONVOLUTION_MODE, 1, &mode);
        set(cd, CUDNN_ATTR_CONVOLUTION_SPATIAL_DIMS, CUDNN_TYPE_INT64, 1, &dims2);
        set(cd, CUDNN_ATTR_CONVOLUTION_DILATIONS, CUDNN_TYPE_INT64, 2, ones);
        set(cd, CUDNN_ATTR_CONVOLUTION_FILTER_STRIDES, CUDNN_TYPE_INT64, 2, ones);
        set(cd, CUDNN_ATTR_CONVOLUTION_PRE_PADDINGS, CUDNN_TYPE_INT64, 2, ones);
        set(cd, CUDNN_ATTR_CONVOLUTION_POST_PADDINGS, CUDNN_TYPE_INT64, 2, ones);
        DNN_TRY(cudnnBackendFinalize(cd.d));
        const float one = 1.0f, zero = 0.0f;
        set_desc(conv_op, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_X, x);
        set_desc(conv_op, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_W, w);
        set_desc(conv_op, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_Y, g_mode == CONV ? y : conv);
        set_desc(conv_op, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_CONV_DESC, cd);
        set(conv_op, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_ALPHA, CUDNN_TYPE_FLOAT, 1, &one);
        set(conv_op, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_BETA, CUDNN_TYPE_FLOAT, 1, &zero);
        DNN_TRY(cudnnBackendFinalize(conv_op.d));

        make_pointwise(mul, CUDNN_POINTWISE_MUL);
        DNN_TRY(cudnnBackendFinalize(mul.d));
        make_pointwise(add, CUDNN_POINTWISE_ADD);
        DNN_TRY(cudnnBackendFinalize(add.d));
        make_pointwise(relu, CUDNN_POINTWISE_RELU_FWD);
        const double slope = SLOPE;
        set(relu, CUDNN_ATTR_POINTWISE_RELU_LOWER_CLIP_SLOPE, CUDNN_TYPE_DOUBLE, 1, &slope);
        DNN_TRY(cudnnBackendFinalize(relu.d));
        std::vector<cudnnBackendDescriptor_t> ops = {conv_op.d};
        const Desc *last = &conv;
        if (has_d()) {
            DNN_TRY(make_pointwise_op(op_d, mul, *last, &d, t1));
            ops.push_back(op_d.d), last = &t1;
        }
        if (has_noise()) {
            DNN_TRY(make_pointwise_op(op_noise, add, *last, &noise, t2));
            ops.push_back(op_noise.d), last = &t2;
        }
        if (g_mode != CONV) {
            DNN_TRY(make_pointwise_op(op_b, add, *last, &b, t3));
            DNN_TRY(make_pointwise_op(op_relu, relu, t3, nullptr, y));
            ops.push_back(op_b.d), ops.push_back(op_relu.d);
        }
        set(graph, CUDNN_ATTR_OPERATIONGRAPH_OPS, CUDNN_TYPE_BACKEND_DESCRIPTOR,
            (int64_t)ops.size(), ops.data());
        set(graph, CUDNN_ATTR_OPERATIONGRAPH_HANDLE, CUDNN_TYPE_HANDLE, 1, &dnn);
        DNN_TRY(cudnnBackendFinalize(graph.d));
        return CUDNN_STATUS_SUCCESS;
    }
};

// One shape, both sides; whether any cuDNN plan worked.
bool run_shape(cudnnHandle_t dnn, int N, int C, int K, int H, int W) {
    const size_t nx = (size_t)N * H * W * C, nw = (size_t)K * 9 * C, ny = (size_t)N * H * W * K;
    __nv_bfloat16 *x, *w, *c, *y_ref, *y;
    float *d, *noise, *b;
    CK(cudaMalloc(&x, nx * 2));
    CK(cudaMalloc(&w, nw * 2));
    CK(cudaMalloc(&c, ny * 2));
    CK(cudaMalloc(&y_ref, ny * 2));
    CK(cudaMalloc(&y, ny * 2));
    CK(cudaMalloc(&d, sizeof(float) * N * K));
    CK(cudaMalloc(&noise, sizeof(float) * N * H * W));
    CK(cudaMalloc(&b, sizeof(float) * K));
    fill<<<1024, 256>>>(x, nx, 1.0f, 1u);
    fill<<<1024, 256>>>(w, nw, 1.0f / sqrtf(9.0f * C), 2u);
    fill<<<64, 256>>>(d, (size_t)N * K, has_d() ? 0.5f : 0.0f, 3u, 1.0f);
    fill<<<1024, 256>>>(noise, (size_t)N * H * W, has_noise() ? 0.1f : 0.0f, 4u);
    fill<<<64, 256>>>(b, (size_t)K, 0.1f, 5u);
    CK(cudaGetLastError());

    // pbw's path: the legacy API's measured algorithm, then the pass
    cudnnTensorDescriptor_t xd, yd;
    cudnnFilterDescriptor_t wd;
    cudnnConvolutionDescriptor_t cvd;
    DNN_CK(cudnnCreateTensorDescriptor(&xd));
    DNN_CK(cudnnCreateTensorDescriptor(&yd));
    DNN_CK(cudnnCreateFilterDescriptor(&wd));
    DNN_CK(cudnnCreateConvolutionDescriptor(&cvd));
    DNN_CK(cudnnSetTensor4dDescriptor(xd, CUDNN_TENSOR_NHWC, CUDNN_DATA_BFLOAT16, N, C, H, W));
    DNN_CK(cudnnSetTensor4dDescriptor(yd, CUDNN_TENSOR_NHWC, CUDNN_DATA_BFLOAT16, N, K, H, W));
    DNN_CK(cudnnSetFilter4dDescriptor(wd, CUDNN_DATA_BFLOAT16, CUDNN_TENSOR_NHWC, K, C, 3, 3));
    DNN_CK(cudnnSetConvolution2dDescriptor(cvd, 1, 1, 1, 1, 1, 1, CUDNN_CROSS_CORRELATION,
                                           CUDNN_DATA_FLOAT));
    DNN_CK(cudnnSetConvolutionMathType(cvd, CUDNN_TENSOR_OP_MATH));
    const size_t ws_max = (size_t)1 << 30;
    DevBuf ws_find(ws_max);
    cudnnConvolutionFwdAlgoPerf_t perf[8];
    int found = 0;
    DNN_CK(cudnnFindConvolutionForwardAlgorithmEx(dnn, xd, x, wd, w, cvd, yd, c, 8, &found, perf,
                                                  ws_find.p, ws_max));
    int pick = -1;
    for (int i = 0; i < found && pick < 0; i++)
        if (perf[i].status == CUDNN_STATUS_SUCCESS)
            pick = i;
    if (pick < 0) {
        fprintf(stderr, "cuDNN has no forward algorithm for this convolution\n");
        exit(1);
    }
    const cudnnConvolutionFwdAlgo_t algo = perf[pick].algo;
    DevBuf ws(perf[pick].memory);
    const float one = 1.0f, zero = 0.0f;
    const int64_t n8 = (int64_t)ny / 8;
    auto conv = [&] {
        DNN_CK(cudnnConvolutionForward(dnn, &one, xd, x, wd, w, cvd, algo, ws.p, perf[pick].memory,
                                       &zero, yd, c));
    };
    auto pass = [&] {
        postact_kernel<<<1056, 256>>>(reinterpret_cast<uint4 *>(y_ref),
                                      reinterpret_cast<const uint4 *>(c), d, noise, b, K,
                                      (int64_t)H * W, n8);
    };
    auto us = [](auto run) { return 1e3f * bench_median_ms(run, 3, 20); };
    const float t_conv = us(conv), t_pass = us(pass), t_both = us([&] { conv(), pass(); });
    CK(cudaGetLastError());
    conv(), pass();
    CK(cudaDeviceSynchronize());
    const double flop = 2.0 * N * H * W * K * C * 9;
    printf("N %d, %d -> %d channels, %dx%d: cuDNN's algorithm %d %.1f us (%.0f TFLOP/s) + pass "
           "%.1f us = %.1f us in sequence\n",
           N, C, K, H, W, (int)algo, t_conv, flop / t_conv * 1e-6, t_pass, t_both);

    ConvActGraph g;
    bool ok = false;
    if (g.build(dnn, N, C, K, H, W) != CUDNN_STATUS_SUCCESS) {
        printf("  cuDNN refused the graph: %s\n  (%s says why)\n", dnn_last_failure.c_str(),
               DNN_LOG_HINT);
    } else {
        std::vector<int64_t> uids = {UID_X, UID_W};
        std::vector<void *> ptrs = {x, w};
        if (has_d())
            uids.push_back(UID_D), ptrs.push_back(d);
        if (has_noise())
            uids.push_back(UID_NOISE), ptrs.push_back(noise);
        if (g_mode != CONV)
            uids.push_back(UID_B), ptrs.push_back(b);
        uids.push_back(UID_Y), ptrs.push_back(y);
        ConfigResults res;
        ok = try_configs(
            g.graph, flop,
            [&](const Desc &cfg, PlanRun *r) {
                return run_plan(
                    dnn, cfg, uids, ptrs, [&] { CK(cudaMemset(y, 0, ny * 2)); },
                    [&](double *err, double *scale) {
                        bf16_compare(g_mode == CONV ? c : y_ref, y, ny, err, scale);
                    },
                    r);
            },
            &res);
        if (ok)
            print_best(res, flop, t_both);
    }
    DNN_CK(cudnnDestroyConvolutionDescriptor(cvd));
    DNN_CK(cudnnDestroyFilterDescriptor(wd));
    DNN_CK(cudnnDestroyTensorDescriptor(yd));
    DNN_CK(cudnnDestroyTensorDescriptor(xd));
    for (void *p : {(void *)x, (void *)w, (void *)c, (void *)y_ref, (void *)y, (void *)d,
                    (void *)noise, (void *)b})
        CK(cudaFree(p));
    return ok;
}

} // namespace

// cudnn_conv_act [K [MODE]]: every shape, or shape K (0-3) alone (an engine that faults takes its
// process with it: one process a shape keeps the others' results); MODE one of MODE_NAMES
// (Mode says which graph each is). PBW_BENCH_CONFIG=I runs engine config I alone.
int main(int argc, char **argv) {
    const int shapes[4][4] = {{512, 32}, {512, 64}, {256, 128}, {128, 256}};
    const int only = argc > 1 ? atoi(argv[1]) : -1;
    for (int m = 0; argc > 2 && m <= CONV; m++)
        if (!strcmp(argv[2], MODE_NAMES[m]))
            g_mode = (Mode)m;
    printf("graph: %s\n", MODE_NAMES[g_mode]);
    printf("cuDNN %zu (built against %d)\n", cudnnGetVersion(), CUDNN_VERSION);
    cudnnHandle_t dnn;
    DNN_CK(cudnnCreate(&dnn));
    int worked = 0;
    for (int i = 0; i < 4; i++)
        if (only < 0 || only == i)
            worked += run_shape(dnn, 14, shapes[i][0], shapes[i][0], shapes[i][1], shapes[i][1]);
    DNN_CK(cudnnDestroy(dnn));
    if (!worked) {
        fprintf(stderr, "cudnn_conv_act: no shape had a working cuDNN plan\n");
        return 1;
    }
    return 0;
}
