// pbw_cuda_conv.cu: 2-D convolution through cuDNN's legacy API, its bias, and StyleGAN2's
// frozen-weight convolution (pbw_sg_conv) on the GPU. Contracts in pbw_cuda_conv.h.
//
// Plans. A convolution's descriptors (x, y, w, conv) and the algorithm of each direction are
// kept in a small table keyed by the geometry and the precision, so a model's forward pass asks
// cuDNN's heuristics (cudnnGet*_v7, no benchmarking, no synchronization) once per layer shape.
// The table is replaced round-robin when full; not thread-safe, like the rest of the backend
// (one stream, one host thread).
//
// Algorithms. PBW_PREC_FP32 sets CUDNN_FMA_MATH on the descriptor and skips tensor-op
// algorithms, so results are plain fp32 (the parity reference); the other precisions allow
// CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION on float32 tensors. Among the heuristics' candidates
// the first deterministic one that fits the workspace cap wins, else the first that fits.
#include <cuda_runtime.h>
#include <cudnn.h>

#include <cstring>

#include "cuda/pbw_cuda_conv.h"
#include "cuda/pbw_cuda_internal.cuh"

namespace {

// Workspace larger than this is not worth an algorithm (FFT variants can ask for GBs).
const size_t WS_CAP = (size_t)1 << 30;

enum { DIR_FWD = 0, DIR_BWD_DATA = 1, DIR_BWD_FILTER = 2 };

struct conv_key {
    pbw_cpu_conv_geom g;
    int prec;
};

struct conv_plan {
    int used;
    conv_key key;
    cudnnTensorDescriptor_t xd, yd;
    cudnnFilterDescriptor_t wd;
    cudnnConvolutionDescriptor_t cd;
    int have[3];             // algorithm chosen for the direction
    int algo[3];             // cudnnConvolution{Fwd,BwdData,BwdFilter}Algo_t
    cudnnMathType_t math[3]; // math type of that algorithm
    size_t ws[3];            // its workspace bytes
};

const int NPLANS = 64;
conv_plan plans[NPLANS];
int next_victim;

int key_equal(const conv_key &a, const conv_key &b) {
    return std::memcmp(&a.g, &b.g, sizeof a.g) == 0 && a.prec == b.prec;
}

void plan_destroy(conv_plan *p) {
    if (!p->used) return;
    cudnnDestroyTensorDescriptor(p->xd);
    cudnnDestroyTensorDescriptor(p->yd);
    cudnnDestroyFilterDescriptor(p->wd);
    cudnnDestroyConvolutionDescriptor(p->cd);
    p->used = 0;
}

int status_ok(cudnnStatus_t s, const char *what) {
    if (s == CUDNN_STATUS_SUCCESS) return 1;
    pbw_cuda_fail("conv2d: %s: %s", what, cudnnGetErrorString(s));
    return 0;
}

// The plan of a geometry, made on first use; NULL (failure recorded) when cuDNN refuses it.
conv_plan *plan_get(const pbw_cpu_conv_geom *g) {
    conv_key key;
    std::memset(&key, 0, sizeof key); // the key is compared bytewise
    key.g = *g;
    key.prec = (int)pbw_cuda_precision();
    for (int i = 0; i < NPLANS; i++)
        if (plans[i].used && key_equal(plans[i].key, key)) return &plans[i];
    conv_plan *p = &plans[next_victim];
    next_victim = (next_victim + 1) % NPLANS;
    plan_destroy(p);
    std::memset(p, 0, sizeof *p);
    p->key = key;
    if (!status_ok(cudnnCreateTensorDescriptor(&p->xd), "create x") ||
        !status_ok(cudnnCreateTensorDescriptor(&p->yd), "create y") ||
        !status_ok(cudnnCreateFilterDescriptor(&p->wd), "create w") ||
        !status_ok(cudnnCreateConvolutionDescriptor(&p->cd), "create conv"))
        return NULL;
    p->used = 1; // from here plan_destroy frees the descriptors
    int ok =
        status_ok(cudnnSetTensor4dDescriptor(p->xd, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, g->N, g->C,
                                             g->H, g->W), "x descriptor") &&
        status_ok(cudnnSetTensor4dDescriptor(p->yd, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, g->N, g->O,
                                             g->OH, g->OW), "y descriptor") &&
        status_ok(cudnnSetFilter4dDescriptor(p->wd, CUDNN_DATA_FLOAT, CUDNN_TENSOR_NCHW, g->O,
                                             g->C / g->G, g->KH, g->KW), "w descriptor") &&
        status_ok(cudnnSetConvolution2dDescriptor(p->cd, g->ph, g->pw, g->sh, g->sw, g->dh, g->dw,
                                                  CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT),
                  "conv descriptor") &&
        status_ok(cudnnSetConvolutionGroupCount(p->cd, g->G), "groups") &&
        status_ok(cudnnSetConvolutionMathType(p->cd, key.prec == PBW_PREC_FP32
                                                         ? CUDNN_FMA_MATH
                                                         : CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION),
                  "math type");
    if (ok) {
        // cuDNN's output size must be the one the op computed (a transposed convolution's
        // output padding >= stride, allowed when smaller than the dilation, breaks this)
        int n, c, h, w;
        ok = status_ok(cudnnGetConvolution2dForwardOutputDim(p->cd, p->xd, p->wd, &n, &c, &h, &w),
                       "output size");
        if (ok && (n != g->N || c != g->O || h != g->OH || w != g->OW)) {
            pbw_cuda_fail("conv2d: cuDNN computes a %dx%dx%dx%d output for a geometry whose "
                          "output is %dx%dx%dx%d", n, c, h, w, g->N, g->O, g->OH, g->OW);
            ok = 0;
        }
    }
    if (!ok) {
        plan_destroy(p);
        return NULL;
    }
    return p;
}

// Picks among the heuristics' candidates (see the file comment). Returns the index or -1.
template <typename Perf> int pick(const Perf *perf, int n, int prec) {
    int first = -1;
    for (int i = 0; i < n; i++) {
        if (perf[i].status != CUDNN_STATUS_SUCCESS || perf[i].memory > WS_CAP) continue;
        if (prec == PBW_PREC_FP32 && (perf[i].mathType == CUDNN_TENSOR_OP_MATH ||
                                      perf[i].mathType == CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION))
            continue;
        if (perf[i].determinism == CUDNN_DETERMINISTIC) return i;
        if (first < 0) first = i;
    }
    return first;
}

// Chooses the algorithm of direction dir once per plan. 0, or -1 with the failure recorded.
int plan_algo(conv_plan *p, int dir) {
    if (p->have[dir]) return 0;
    cudnnHandle_t h = pbw_cudnn();
    const int prec = p->key.prec;
    int n = 0, i = -1;
    if (dir == DIR_FWD) {
        cudnnConvolutionFwdAlgoPerf_t perf[CUDNN_CONVOLUTION_FWD_ALGO_COUNT];
        if (!status_ok(cudnnGetConvolutionForwardAlgorithm_v7(h, p->xd, p->wd, p->cd, p->yd,
                                                              CUDNN_CONVOLUTION_FWD_ALGO_COUNT, &n,
                                                              perf), "forward heuristics"))
            return -1;
        if ((i = pick(perf, n, prec)) >= 0) {
            p->algo[dir] = (int)perf[i].algo, p->math[dir] = perf[i].mathType;
            p->ws[dir] = perf[i].memory;
        }
    } else if (dir == DIR_BWD_DATA) {
        cudnnConvolutionBwdDataAlgoPerf_t perf[CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT];
        if (!status_ok(cudnnGetConvolutionBackwardDataAlgorithm_v7(
                           h, p->wd, p->yd, p->cd, p->xd, CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT,
                           &n, perf), "backward-data heuristics"))
            return -1;
        if ((i = pick(perf, n, prec)) >= 0) {
            p->algo[dir] = (int)perf[i].algo, p->math[dir] = perf[i].mathType;
            p->ws[dir] = perf[i].memory;
        }
    } else {
        cudnnConvolutionBwdFilterAlgoPerf_t perf[CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT];
        if (!status_ok(cudnnGetConvolutionBackwardFilterAlgorithm_v7(
                           h, p->xd, p->yd, p->cd, p->wd, CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT,
                           &n, perf), "backward-filter heuristics"))
            return -1;
        if ((i = pick(perf, n, prec)) >= 0) {
            p->algo[dir] = (int)perf[i].algo, p->math[dir] = perf[i].mathType;
            p->ws[dir] = perf[i].memory;
        }
    }
    if (i < 0) {
        pbw_cuda_fail("conv2d: cuDNN offers no usable algorithm for N=%d C=%d %dx%d -> O=%d "
                      "%dx%d, kernel %dx%d (direction %d)", p->key.g.N, p->key.g.C, p->key.g.H,
                      p->key.g.W, p->key.g.O, p->key.g.OH, p->key.g.OW, p->key.g.KH,
                      p->key.g.KW, dir);
        return -1;
    }
    // FP32 keeps FMA math whatever the candidate reported; otherwise the candidate's own (the
    // heuristics ran with ALLOW_CONVERSION on the descriptor, so tensor ops were allowed)
    if (prec == PBW_PREC_FP32) p->math[dir] = CUDNN_FMA_MATH;
    p->have[dir] = 1;
    return 0;
}

// The plan with direction dir ready and its workspace; NULL when anything failed.
conv_plan *prepare(const pbw_cpu_conv_geom *g, int dir, void **ws) {
    conv_plan *p = plan_get(g);
    if (!p || plan_algo(p, dir)) return NULL;
    // one descriptor serves three directions that may want different math types
    if (!status_ok(cudnnSetConvolutionMathType(p->cd, p->math[dir]), "math type")) return NULL;
    *ws = NULL;
    if (p->ws[dir]) {
        *ws = pbw_cuda_workspace(p->ws[dir]);
        if (!*ws) return NULL;
    }
    return p;
}

int empty(const pbw_cpu_conv_geom *g) {
    return g->N == 0 || g->O == 0 || g->C == 0 || (int64_t)g->OH * g->OW == 0 ||
           (int64_t)g->H * g->W == 0;
}

void conv_forward(float *out, const float *x, const float *w, const pbw_cpu_conv_geom *g,
                  float beta) {
    void *ws;
    conv_plan *p = prepare(g, DIR_FWD, &ws);
    if (!p) return;
    const float alpha = 1.0f;
    PBW_CUDNN_OK(cudnnConvolutionForward(pbw_cudnn(), &alpha, p->xd, x, p->wd, w, p->cd,
                                         (cudnnConvolutionFwdAlgo_t)p->algo[DIR_FWD], ws,
                                         p->ws[DIR_FWD], &beta, p->yd, out));
}

void conv_backward_data(float *dx, const float *dout, const float *w, const pbw_cpu_conv_geom *g,
                        float beta) {
    void *ws;
    conv_plan *p = prepare(g, DIR_BWD_DATA, &ws);
    if (!p) return;
    const float alpha = 1.0f;
    PBW_CUDNN_OK(cudnnConvolutionBackwardData(pbw_cudnn(), &alpha, p->wd, w, p->yd, dout, p->cd,
                                              (cudnnConvolutionBwdDataAlgo_t)p->algo[DIR_BWD_DATA],
                                              ws, p->ws[DIR_BWD_DATA], &beta, p->xd, dx));
}

// ---------- bias ----------

__global__ void add_bias_kernel(float *out, const float *b, int O, int64_t P, int64_t n) {
    PBW_GRID_STRIDE(i, n) out[i] += b[(i / P) % O];
}

// One block per channel: threads sum strided elements in double, then a tree in shared memory
// (fixed order: deterministic). The CPU sums in double too.
const int BIAS_THREADS = 512;

__global__ void backward_bias_kernel(float *db, const float *dout, int N, int O, int64_t P) {
    __shared__ double part[BIAS_THREADS];
    const int o = blockIdx.x;
    double s = 0;
    for (int n = 0; n < N; n++) {
        const float *d = dout + ((int64_t)n * O + o) * P;
        for (int64_t p = threadIdx.x; p < P; p += blockDim.x) s += d[p];
    }
    part[threadIdx.x] = s;
    __syncthreads();
    for (int h = blockDim.x / 2; h > 0; h >>= 1) {
        if ((int)threadIdx.x < h) part[threadIdx.x] += part[threadIdx.x + h];
        __syncthreads();
    }
    if (threadIdx.x == 0) db[o] += (float)part[0];
}

// (O,C,k,k) -> (C,O,k,k)
__global__ void transpose01_kernel(float *dst, const float *src, int O, int C, int kk) {
    const int64_t n = (int64_t)O * C * kk;
    PBW_GRID_STRIDE(i, n) {
        int64_t t = i % kk, r = i / kk;
        int64_t o = r % O, c = r / O; // i indexes dst: ((c*O + o)*kk + t)
        dst[i] = src[(o * C + c) * kk + t];
    }
}

// The adjoint convolution of sg_conv's transposed case: input (N,O,2H+k-2,..), weight (C,O,k,k)
// (w.transpose(0,1)), stride 2, output (N,C,H,W).
pbw_cpu_conv_geom sg_adjoint_geom(int N, int C, int H, int W, int O, int k) {
    pbw_cpu_conv_geom g;
    std::memset(&g, 0, sizeof g);
    g.N = N, g.C = O, g.H = 2 * (H - 1) + k, g.W = 2 * (W - 1) + k;
    g.O = C, g.KH = k, g.KW = k, g.OH = H, g.OW = W;
    g.sh = g.sw = 2, g.dh = g.dw = 1, g.G = 1;
    return g;
}

pbw_cpu_conv_geom sg_plain_geom(int N, int C, int H, int W, int O, int k) {
    pbw_cpu_conv_geom g;
    std::memset(&g, 0, sizeof g);
    g.N = N, g.C = C, g.H = H, g.W = W, g.O = O, g.KH = k, g.KW = k, g.OH = H, g.OW = W;
    g.sh = g.sw = 1, g.ph = g.pw = k / 2, g.dh = g.dw = 1, g.G = 1;
    return g;
}

} // namespace

extern "C" size_t pbw_cuda_conv2d_scratch_floats(const pbw_cpu_conv_geom *g) {
    (void)g;
    return 0;
}

extern "C" void pbw_cuda_conv2d_forward(float *out, const float *x, const float *w,
                                        const float *b, const pbw_cpu_conv_geom *g,
                                        int accumulate, float *scratch) {
    (void)scratch;
    if (empty(g)) return;
    conv_forward(out, x, w, g, accumulate ? 1.0f : 0.0f);
    if (b) pbw_cuda_conv2d_add_bias(out, b, g->N, g->O, (int64_t)g->OH * g->OW);
}

extern "C" void pbw_cuda_conv2d_backward_data(float *dx, const float *dout, const float *w,
                                              const pbw_cpu_conv_geom *g, float *scratch) {
    (void)scratch;
    if (empty(g)) return;
    conv_backward_data(dx, dout, w, g, 1.0f);
}

extern "C" void pbw_cuda_conv2d_backward_weight(float *dw, const float *dout, const float *x,
                                                const pbw_cpu_conv_geom *g, float *scratch) {
    (void)scratch;
    if (empty(g)) return;
    void *ws;
    conv_plan *p = prepare(g, DIR_BWD_FILTER, &ws);
    if (!p) return;
    const float alpha = 1.0f, beta = 1.0f;
    PBW_CUDNN_OK(cudnnConvolutionBackwardFilter(
        pbw_cudnn(), &alpha, p->xd, x, p->yd, dout, p->cd,
        (cudnnConvolutionBwdFilterAlgo_t)p->algo[DIR_BWD_FILTER], ws, p->ws[DIR_BWD_FILTER], &beta,
        p->wd, dw));
}

extern "C" void pbw_cuda_conv2d_add_bias(float *out, const float *b, int N, int O, int64_t P) {
    const int64_t n = (int64_t)N * O * P;
    if (n == 0) return;
    add_bias_kernel<<<pbw_grid(n), 256, 0, pbw_stream()>>>(out, b, O, P, n);
    PBW_CUDA_LAUNCHED("conv2d_add_bias");
}

extern "C" void pbw_cuda_conv2d_backward_bias(float *db, const float *dout, int N, int O,
                                              int64_t P) {
    if (O == 0) return;
    backward_bias_kernel<<<O, BIAS_THREADS, 0, pbw_stream()>>>(db, dout, N, O, P);
    PBW_CUDA_LAUNCHED("conv2d_backward_bias");
}

extern "C" void pbw_cuda_sg_conv_forward(float *out, const float *x, const float *w, float *wt,
                                         int N, int C, int H, int W, int O, int k,
                                         int transposed) {
    if (N == 0) return;
    if (!transposed) {
        pbw_cpu_conv_geom g = sg_plain_geom(N, C, H, W, O, k);
        conv_forward(out, x, w, &g, 0.0f);
        return;
    }
    const int64_t n = (int64_t)O * C * k * k;
    transpose01_kernel<<<pbw_grid(n), 256, 0, pbw_stream()>>>(wt, w, O, C, k * k);
    PBW_CUDA_LAUNCHED("sg_conv_transpose_weight");
    pbw_cpu_conv_geom g = sg_adjoint_geom(N, C, H, W, O, k);
    conv_backward_data(out, x, wt, &g, 0.0f);
}

extern "C" void pbw_cuda_sg_conv_backward(float *gx, const float *gout, const float *w,
                                          const float *wt, int N, int C, int H, int W, int O,
                                          int k, int transposed) {
    if (N == 0) return;
    if (!transposed) {
        pbw_cpu_conv_geom g = sg_plain_geom(N, C, H, W, O, k);
        conv_backward_data(gx, gout, w, &g, 1.0f);
        return;
    }
    pbw_cpu_conv_geom g = sg_adjoint_geom(N, C, H, W, O, k);
    conv_forward(gx, gout, wt, &g, 1.0f);
}
