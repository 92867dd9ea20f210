// pbw_cuda_conv.cu: 2-D convolution through cuDNN (its legacy API, and engine configs of its
// backend API where they measure faster), its bias, and StyleGAN2's frozen-weight convolution
// (pbw_sg_conv) on the GPU. Contracts in pbw_cuda_conv.h.
//
// Plans. A convolution's descriptors (x, y, w, conv) and the algorithm of each direction are
// kept in a table keyed by the geometry and the precision, so the algorithm of a layer shape is
// chosen once. The table is replaced round-robin when full (a replaced geometry is measured
// again when it comes back); not thread-safe, like the rest of the backend (one stream, one
// host thread).
//
// Algorithms are chosen by measuring: the first call of a direction for a geometry runs
// cudnnFind*Ex on the call's real inputs, writing into a TEMPORARY output (so `accumulate`
// and the caller's result are never disturbed), with a temporary workspace of at most
// FIND_WS_CAP. Find synchronizes the stream and takes milliseconds to tens of milliseconds:
// once per geometry, direction and precision. 512 MiB admits every implicit-GEMM, Winograd
// and tensor-core variant at the model's shapes (their workspaces are at most tens of MiB)
// and leaves out only FFT variants on the largest maps, whose workspace grows with N*C*H*W;
// it is also the most the runtime's workspace (pbw_cuda_workspace) can grow to for a chosen
// algorithm. The cap halves while the GPU lacks the memory (never above half the free memory);
// the temporaries are freed at once and count in pbw_cuda_mem_peak.
// The fastest deterministic candidate wins; a nondeterministic one only where none is
// deterministic. (A nondeterministic one 1.3x faster used to win: LPIPS's first convolution's
// backward-data then took algorithm 0, 0.044 against 0.079 ms on an H100, and two identical
// bf16 edits could end 1.7e-2 apart in the image; 0.035 ms of a 6.7 ms Adam step buys edits
// that repeat.) Staged directions also measure the im2col product and the backend API's engine
// configs (their sections below). Should measuring fail, the heuristics choose.
// In fp32, and in every precision with PBW_CUDNN_HEURISTIC=1, cuDNN's heuristics choose
// instead (cudnnGet*_v7, no measuring: the first deterministic candidate under a 1 GiB
// workspace, else the first): fp32 is the parity reference, whose results should repeat from
// one process to the next (use_heuristics; PBW_CUDNN_HEURISTIC=0 measures fp32 too);
// Small staged forwards have one more candidate, im2col and a cuBLAS product (ALGO_GEMM, below).
// PBW_CUDNN_LOG=1 prints each choice and its candidates (algo, t = tensor op, nd =
// nondeterministic, time, workspace; * marks the pick) on stderr.
//
// Measured choices are kept on disk, one file per GPU model and cuDNN version
// ($PBW_CACHE_DIR, else $XDG_CACHE_HOME/pbw, else ~/.cache/pbw: cudnn-<GPU>-<version>.txt,
// a line per geometry, precision, staging and direction), and read back by later processes:
// the first CMA-ES generation of a fresh process measured every generator, CLIP and LPIPS
// shape (2.4 s on an H100 against 0.27 s for the next). A cached algorithm is checked with
// cuDNN's workspace query before use and measured afresh when that fails. PBW_CUDNN_CACHE=0
// neither reads nor writes the file.
//
// Precision. PBW_PREC_FP32 sets CUDNN_FMA_MATH on the descriptor and rejects tensor-op
// results, so results are plain fp32 (the parity reference), and always takes a deterministic
// algorithm when there is one. PBW_PREC_TF32 (and the backward-filter direction of every
// precision, and any geometry or direction that is not staged, below) searches with
// CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION on the float32 NCHW tensors, and each direction then
// runs with the math type its chosen result reports: cuDNN converts on the fly inside its
// tensor-op kernels.
//
// Staging (PBW_PREC_BF16 and PBW_PREC_FP16). cuDNN's tensor-core kernels are several times
// faster on NHWC half-precision tensors than on float32 NCHW ones converted on the fly (an H100
// ran StyleGAN2's 3x3 convs at ~130 TFLOP/s the old way). So the forward and backward-data
// directions run on staged copies: one tile-transposing kernel converts the input from fp32
// NCHW to bf16 (fp16) NHWC, the weight is a bf16 (fp16) KRSC copy (the caller's cached one, as
// sg_conv's plan keeps; else converted per call, since pbw_conv2d's weight may be any tensor,
// whose values can change at the same address), cuDNN runs with NHWC descriptors of that type,
// float32 compute and CUDNN_TENSOR_OP_MATH into a half NHWC staging output, and one kernel
// converts that back to fp32 NCHW, writing or adding (beta 0 or 1, as the unstaged call). The
// output is thus rounded to bf16 (fp16) once more than before: a relative error of at most
// 2^-9 (2^-12) per element on top of the operands' rounding the tensor cores did anyway.
// Staged only where every group has a multiple of 8 input and output channels (tensor cores
// want that; RGB stems and depthwise convs keep the float32 path), and a direction for which
// cuDNN offers no NHWC algorithm falls back to the float32 path for its plan.
// The staging buffers are one grow-only device buffer owned by this module (pbw_cuda_malloc;
// not the runtime's pbw_cuda_workspace, which holds the cuDNN workspace of the same call). All
// work is on one stream, so reusing it in stream order is safe while an earlier kernel may
// still read it; it is only freed (to grow) after synchronizing the stream. It is as large as
// the largest staged convolution's input plus output in half precision (268 MB for StyleGAN2's
// 128-channel 256x256 convs at batch 8).
// PBW_CUDNN_NCHW=1 turns staging off (every direction as under PBW_PREC_TF32), for comparison.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <cudnn.h>

#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "core/pbw_cache.h"
#include "cuda/pbw_cuda_conv.h"
#include "cuda/pbw_cuda_dnn.cuh"
#include "cuda/pbw_cuda_internal.cuh"
#include "cuda/pbw_cuda_stylegan.cuh"

namespace {

// Heuristic selection: workspace larger than this is not worth an algorithm (FFT variants
// can ask for GBs).
const size_t WS_CAP = (size_t)1 << 30;
// Measured selection: the workspace offered to cudnnFind*Ex (see the file comment).
const size_t FIND_WS_CAP = (size_t)512 << 20;

enum { DIR_FWD = 0, DIR_BWD_DATA = 1, DIR_BWD_FILTER = 2 }; // the two first index conv_plan's bk

struct conv_key {
    pbw_cpu_conv_geom g;
    int prec;
};

struct backend_conv;

struct conv_plan {
    int used;
    conv_key key;
    cudnnTensorDescriptor_t xd, yd;
    cudnnFilterDescriptor_t wd;
    cudnnConvolutionDescriptor_t cd;
    // staging (see the file comment): half NHWC descriptors (NULL when not staged) and, per
    // direction, whether it runs staged (FWD and BWD_DATA only; cleared when cuDNN offers no
    // NHWC algorithm). The algorithm fields below are those of the way the direction runs.
    cudnnTensorDescriptor_t hxd, hyd;
    cudnnFilterDescriptor_t hwd;
    int stage[3];
    int have[3];             // algorithm chosen for the direction
    int algo[3];             // cudnnConvolution{Fwd,BwdData,BwdFilter}Algo_t
    cudnnMathType_t math[3]; // math type of that algorithm
    size_t ws[3];            // its workspace bytes
    // Indexed by direction, FWD and BWD_DATA only: ALGO_BACKEND's execution plan (NULL until
    // chosen) and, for a staged call whose operands are not 16-byte aligned, the legacy
    // algorithm cuDNN's heuristics give
    backend_conv *bk[2];
    int bk_code[2]; // the plan's config: engine * 256 + its place in the heuristic's list
    int fb_have[2], fb_algo[2];
    size_t fb_ws[2];
};

const int NPLANS = 256; // a generator, LPIPS and CLIP at two batch sizes fit
conv_plan plans[NPLANS];
int next_victim;

int key_equal(const conv_key &a, const conv_key &b) {
    return std::memcmp(&a.g, &b.g, sizeof a.g) == 0 && a.prec == b.prec;
}

void backend_free(backend_conv *b);

void plan_destroy(conv_plan *p) {
    if (!p->used) return;
    for (int dir = DIR_FWD; dir <= DIR_BWD_DATA; dir++) backend_free(p->bk[dir]);
    p->bk[0] = p->bk[1] = NULL;
    cudnnDestroyTensorDescriptor(p->xd);
    cudnnDestroyTensorDescriptor(p->yd);
    cudnnDestroyFilterDescriptor(p->wd);
    cudnnDestroyConvolutionDescriptor(p->cd);
    if (p->hxd) cudnnDestroyTensorDescriptor(p->hxd);
    if (p->hyd) cudnnDestroyTensorDescriptor(p->hyd);
    if (p->hwd) cudnnDestroyFilterDescriptor(p->hwd);
    p->hxd = p->hyd = NULL;
    p->hwd = NULL;
    p->used = 0;
}

// PBW_CUDNN_NCHW=1: no staging (the float32 NCHW path for every precision).
int nchw_only() {
    static int v = -1;
    if (v < 0) v = pbw_env_set("PBW_CUDNN_NCHW");
    return v;
}

// Whether precision prec runs forward and backward-data on half NHWC staged copies.
int prec_staged(int prec) {
    return (prec == PBW_PREC_BF16 || prec == PBW_PREC_FP16) && !nchw_only();
}

cudnnDataType_t half_type(int prec) {
    return prec == PBW_PREC_BF16 ? CUDNN_DATA_BFLOAT16 : CUDNN_DATA_HALF;
}

// The half NHWC descriptors of a staged plan; 0, or -1 when cuDNN refuses them (the plan then
// stays unstaged; nothing recorded).
int plan_stage_init(conv_plan *p) {
    const pbw_cpu_conv_geom *g = &p->key.g;
    const cudnnDataType_t t = half_type(p->key.prec);
    if (cudnnCreateTensorDescriptor(&p->hxd) != CUDNN_STATUS_SUCCESS) p->hxd = NULL;
    if (cudnnCreateTensorDescriptor(&p->hyd) != CUDNN_STATUS_SUCCESS) p->hyd = NULL;
    if (cudnnCreateFilterDescriptor(&p->hwd) != CUDNN_STATUS_SUCCESS) p->hwd = NULL;
    if (!p->hxd || !p->hyd || !p->hwd) return -1;
    if (cudnnSetTensor4dDescriptor(p->hxd, CUDNN_TENSOR_NHWC, t, g->N, g->C, g->H, g->W) !=
            CUDNN_STATUS_SUCCESS ||
        cudnnSetTensor4dDescriptor(p->hyd, CUDNN_TENSOR_NHWC, t, g->N, g->O, g->OH, g->OW) !=
            CUDNN_STATUS_SUCCESS ||
        cudnnSetFilter4dDescriptor(p->hwd, t, CUDNN_TENSOR_NHWC, g->O, g->C / g->G, g->KH,
                                   g->KW) != CUDNN_STATUS_SUCCESS)
        return -1;
    return 0;
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
    // staged when the precision asks for it and every group's channels suit tensor cores
    if (prec_staged(key.prec) && (g->C / g->G) % 8 == 0 && (g->O / g->G) % 8 == 0) {
        if (plan_stage_init(p) == 0) {
            p->stage[DIR_FWD] = p->stage[DIR_BWD_DATA] = 1;
        } else {
            if (p->hxd) cudnnDestroyTensorDescriptor(p->hxd);
            if (p->hyd) cudnnDestroyTensorDescriptor(p->hyd);
            if (p->hwd) cudnnDestroyFilterDescriptor(p->hwd);
            p->hxd = p->hyd = NULL;
            p->hwd = NULL;
        }
    }
    return p;
}

// Whether precision prec's algorithms come from cuDNN's heuristics (cudnnGet*_v7, no
// benchmarking) instead of measuring: in fp32, the parity reference, so that every process
// takes the same algorithms and its sums repeat (measured picks change with timing noise, and
// with them an fp32 edit's result: cuda_edit_adam5_fp32's seed 0 came out 8.9e-5, 4.0e-4 and
// 3.7e-4 from the CPU's in separate processes on one H100, 4.3e-4 each time by the heuristics).
// PBW_CUDNN_HEURISTIC=1 takes the heuristics in every precision, =0 measures fp32 too (read
// at each plan, so tests can switch it).
int use_heuristics(int prec) {
    if (pbw_env_set("PBW_CUDNN_HEURISTIC")) return 1;
    if (pbw_env_zero("PBW_CUDNN_HEURISTIC")) return 0;
    return prec == PBW_PREC_FP32;
}

// PBW_CUDNN_LOG=1: one line on stderr per choice (geometry, precision, candidates, pick).
int log_choices() {
    static int v = -1;
    if (v < 0) v = pbw_env_set("PBW_CUDNN_LOG");
    return v;
}

int is_tensor_op(cudnnMathType_t m) {
    return m == CUDNN_TENSOR_OP_MATH || m == CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION;
}

// The math type the descriptor carries while algorithms are looked for (staged: the tensors
// are already half precision, so plain tensor-op math).
cudnnMathType_t base_math(int prec, int staged) {
    if (staged) return CUDNN_TENSOR_OP_MATH;
    return prec == PBW_PREC_FP32 ? CUDNN_FMA_MATH : CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION;
}

template <typename Perf> int usable(const Perf &r, int prec, size_t cap) {
    if (r.status != CUDNN_STATUS_SUCCESS || r.memory > cap) return 0;
    // FP32 is the parity reference: no TF32 / reduced-precision tensor-core results
    return !(prec == PBW_PREC_FP32 && is_tensor_op(r.mathType));
}

// Heuristics (PBW_CUDNN_HEURISTIC=1): the first deterministic candidate that fits the cap,
// else the first that fits. Returns the index or -1.
template <typename Perf> int pick_heuristic(const Perf *perf, int n, int prec) {
    int first = -1;
    for (int i = 0; i < n; i++) {
        if (!usable(perf[i], prec, WS_CAP)) continue;
        if (perf[i].determinism == CUDNN_DETERMINISTIC) return i;
        if (first < 0) first = i;
    }
    return first;
}

// Measured (cudnnFind*Ex): the fastest deterministic candidate, or the fastest of all where
// none is deterministic. Returns the index or -1.
template <typename Perf> int pick_measured(const Perf *perf, int n, int prec, size_t cap) {
    int best = -1, det = -1;
    for (int i = 0; i < n; i++) {
        if (!usable(perf[i], prec, cap) || !(perf[i].time >= 0)) continue;
        if (best < 0 || perf[i].time < perf[best].time) best = i;
        if (perf[i].determinism != CUDNN_DETERMINISTIC) continue;
        if (det < 0 || perf[i].time < perf[det].time) det = i;
    }
    return det >= 0 ? det : best;
}

const char *dir_name(int dir) {
    return dir == DIR_FWD ? "forward" : dir == DIR_BWD_DATA ? "backward-data" : "backward-filter";
}

template <typename Perf>
void log_choice(const conv_plan *p, int dir, const char *how, const Perf *perf, int n, int pick) {
    if (!log_choices()) return;
    const pbw_cpu_conv_geom &g = p->key.g;
    std::fprintf(stderr,
                 "pbw cudnn %s %s: N=%d C=%d %dx%d -> O=%d %dx%d k=%dx%d s=%d,%d p=%d,%d G=%d %s%s:",
                 how, dir_name(dir), g.N, g.C, g.H, g.W, g.O, g.OH, g.OW, g.KH, g.KW, g.sh, g.sw,
                 g.ph, g.pw, g.G, pbw_precision_name((pbw_precision)p->key.prec),
                 p->stage[dir] ? " nhwc" : "");
    for (int i = 0; i < n; i++) {
        if (perf[i].status != CUDNN_STATUS_SUCCESS) continue;
        std::fprintf(stderr, " %s%d%s%s(%.3fms,%zuMiB)", i == pick ? "*" : "", (int)perf[i].algo,
                     is_tensor_op(perf[i].mathType) ? "t" : "",
                     perf[i].determinism == CUDNN_DETERMINISTIC ? "" : "nd", (double)perf[i].time,
                     perf[i].memory >> 20);
    }
    std::fprintf(stderr, "\n");
}

// Temporary device memory for cudnnFind*Ex: the output it may scribble on (never the
// caller's: `accumulate` and the real result stay untouched) and a workspace of at most
// FIND_WS_CAP, halved while the allocation fails or would take over half the free memory.
struct find_scratch {
    void *out = nullptr, *ws = nullptr;
    size_t ws_bytes = 0;
    int init(size_t out_bytes) {
        // the inputs may still be being written by queued kernels; time on an idle stream
        cudaError_t e = cudaStreamSynchronize(pbw_stream());
        if (e != cudaSuccess) {
            pbw_cuda_fail("conv2d: %s", cudaGetErrorString(e));
            return -1;
        }
        out = pbw_cuda_malloc(out_bytes);
        if (!out) return -1;
        size_t cap = FIND_WS_CAP, free_b = 0, total_b = 0;
        if (cudaMemGetInfo(&free_b, &total_b) != cudaSuccess)
            cudaGetLastError(); // keep the cap
        else if (free_b / 2 < cap)
            cap = free_b / 2;
        for (; cap >= ((size_t)1 << 20); cap /= 2)
            if ((ws = pbw_cuda_malloc(cap))) break;
        ws_bytes = ws ? cap : 0;
        return 0;
    }
    ~find_scratch() {
        pbw_cuda_free(ws);
        pbw_cuda_free(out);
    }
};

size_t tensor_bytes(int64_t a, int64_t b, int64_t c, int64_t d, size_t elem) {
    return (size_t)(a * b * c * d) * elem;
}

// ---- small outputs: im2col and one cuBLAS product (a candidate beside cuDNN's) ----
// cuDNN's kernels tile the output's pixels; where a staged forward has few of them and a long
// reduction (StyleGAN2's 4x4 layer: N x 16 pixels, 512 x 9 inputs each) they run on a few
// blocks: CUPTI on an H100 saw 184 us for that layer at N = 1 (an Adam step) and 375 us at
// N = 50 (a CMA generation). Laid out as rows of its taps (im2col, NHWC: a row per output
// pixel, (tap, channel) along it, matching the KRSC weight), the convolution is one product
// that cuBLAS splits along the reduction. It is measured beside cuDNN's candidates when the
// output has at most GEMM_MAX_ROWS pixels and the rows fit GEMM_MAX_BYTES, and kept as the
// pseudo-algorithm ALGO_GEMM (cached on disk like cuDNN's numbers) when faster.
const int ALGO_GEMM = 1000;
const int64_t GEMM_MAX_ROWS = 4096;
const size_t GEMM_MAX_BYTES = (size_t)64 << 20;

size_t gemm_col_bytes(const conv_plan *p) {
    const pbw_cpu_conv_geom &g = p->key.g;
    return (size_t)g.N * g.OH * g.OW * g.KH * g.KW * g.C * 2;
}

bool gemm_eligible(const conv_plan *p, int dir) {
    const pbw_cpu_conv_geom &g = p->key.g;
    return dir == DIR_FWD && p->stage[dir] && g.G == 1 && g.C % 8 == 0 &&
           (int64_t)g.N * g.OH * g.OW <= GEMM_MAX_ROWS && gemm_col_bytes(p) <= GEMM_MAX_BYTES;
}

// Makes the product the plan's algorithm for dir, its rows the workspace.
void use_gemm(conv_plan *p, int dir) {
    p->algo[dir] = ALGO_GEMM;
    p->math[dir] = CUDNN_DEFAULT_MATH;
    p->ws[dir] = gemm_col_bytes(p);
}

// PBW_CONV_GEMM=1: the product wherever eligible, unmeasured; =0: never (tests, comparisons).
int gemm_forced() {
    return pbw_env_set("PBW_CONV_GEMM") ? 1 : pbw_env_zero("PBW_CONV_GEMM") ? 0 : -1;
}

long g_gemm_calls;

// col (N OH OW, KH KW C) from x (N, H, W, C) halves, 8 channels (16 bytes) a thread; taps
// outside the input are zeros.
__global__ void im2col_nhwc_kernel(uint4 *col, const uint4 *x, pbw_cpu_conv_geom g) {
    pbw_pdl_wait();
    const int c8 = g.C / 8;
    const int64_t n = (int64_t)g.N * g.OH * g.OW * g.KH * g.KW * c8;
    PBW_GRID_STRIDE(i, n) {
        int64_t t = i / c8;
        const int c = (int)(i % c8), s = (int)(t % g.KW);
        t /= g.KW;
        const int r = (int)(t % g.KH);
        t /= g.KH;
        const int ox = (int)(t % g.OW);
        t /= g.OW;
        const int oy = (int)(t % g.OH), b = (int)(t / g.OH);
        const int iy = oy * g.sh - g.ph + r * g.dh, ix = ox * g.sw - g.pw + s * g.dw;
        col[i] = iy >= 0 && iy < g.H && ix >= 0 && ix < g.W
                     ? x[(((int64_t)b * g.H + iy) * g.W + ix) * c8 + c]
                     : make_uint4(0, 0, 0, 0);
    }
}

// y (N OH OW, O) halves = col (N OH OW, K) wh (O, K)^T, K = KH KW C; col: gemm_col_bytes of
// device memory. In cuBLAS's column-major terms y^T (O, P) = wh^T (O, K) col^T (K, P).
bool gemm_conv(const conv_plan *p, const void *xh, const void *wh, void *yh, void *col) {
    const pbw_cpu_conv_geom &g = p->key.g;
    const int64_t P = (int64_t)g.N * g.OH * g.OW, K = (int64_t)g.KH * g.KW * g.C;
    const int64_t n = P * g.KH * g.KW * (g.C / 8);
    pbw_launch(im2col_nhwc_kernel, pbw_grid(n), 256, 0, (uint4 *)col, (const uint4 *)xh, g);
    PBW_CUDA_LAUNCHED("conv2d im2col");
    const cudaDataType_t t = p->key.prec == PBW_PREC_FP16 ? CUDA_R_16F : CUDA_R_16BF;
    const float one = 1.0f, zero = 0.0f;
    g_gemm_calls++;
    return cublasGemmEx(pbw_cublas(), CUBLAS_OP_T, CUBLAS_OP_N, g.O, (int)P, (int)K, &one, wh, t,
                        (int)K, col, t, (int)K, &zero, yh, t, g.O, CUBLAS_COMPUTE_32F,
                        CUBLAS_GEMM_DEFAULT) == CUBLAS_STATUS_SUCCESS;
}

// gemm_conv's time on the measurement's operands, its output to out; -1 when it cannot run.
float gemm_conv_time(const conv_plan *p, const void *xh, const void *wh, void *out) {
    void *col = pbw_cuda_malloc(gemm_col_bytes(p));
    const float t =
        col ? pbw_cuda_best_of_three([&] { return gemm_conv(p, xh, wh, out, col); }) : -1;
    pbw_cuda_free(col);
    return t;
}

// ---- cuDNN's backend API: engine configs, a candidate beside the legacy algorithms ----
// cudnnFind*Ex chooses among the legacy API's eight algorithms; the backend API's heuristic lists a
// few dozen engine configs of the same convolution (engine 62's tile shapes and splits, ...). Where
// the output is small the legacy pick runs on a few blocks and some configs are several times
// faster (the Adam step's batch-1 layers: 0.01-0.03 against 0.04-0.11 ms, each timed alone on an
// H100); at the CMA generation's large layers the legacy pick is the same kernel as the best config
// (docs/cuda.md). So a staged forward or backward-data (one group) also measures the engine configs
// heuristic mode A lists (at most BACKEND_MAX_CONFIGS; none that compiles its kernel at run time,
// 0.3-1 s a plan, and none cuDNN notes as nondeterministic) and keeps the fastest, as the
// pseudo-algorithm ALGO_BACKEND, where it beats the legacy pick (and the im2col product). The cache
// file's choice line names the config by its place in the heuristic's list and its engine (bk_code;
// the file is per GPU model and cuDNN version, for which the list is the same), and a later process
// makes the plan from the same config without measuring (a config that is no longer there, or is
// another engine's, is measured afresh). A staged call whose operands are not 16-byte aligned (the
// plan's promise) runs the legacy algorithm cuDNN's heuristics give instead. PBW_CUDNN_BACKEND=0:
// never, and no choice read or written; =1: the first plan that builds, wherever one does,
// unmeasured, and written to the file as a measured pick would be (tests).
const int ALGO_BACKEND = 1001;
const int BACKEND_MAX_CONFIGS = 40;
enum : int64_t { BK_X = 1, BK_W, BK_Y };

struct backend_conv {
    pbw_dnn_graph graph; // the descriptors of a plan made from a config (empty from a file)
    pbw_dnn_plan plan;
};

void backend_free(backend_conv *b) { delete b; }

long g_backend_calls;

int backend_forced() {
    return pbw_env_set("PBW_CUDNN_BACKEND") ? 1 : pbw_env_zero("PBW_CUDNN_BACKEND") ? 0 : -1;
}

bool backend_eligible(const conv_plan *p, int dir) {
    return (dir == DIR_FWD || dir == DIR_BWD_DATA) && p->stage[dir] && p->key.g.G == 1 &&
           backend_forced() != 0;
}

// The operation graph of direction dir of p: x (N,C,H,W), w (O,C,KH,KW) and y (N,O,OH,OW) as
// the staged NHWC / KRSC halves, fp32 sums; NULL when cuDNN refuses it.
cudnnBackendDescriptor_t backend_graph(pbw_dnn_graph &gr, const conv_plan *p, int dir) {
    const pbw_cpu_conv_geom &g = p->key.g;
    const cudnnDataType_t h = half_type(p->key.prec), f32 = CUDNN_DATA_FLOAT;
    const int64_t xd[4] = {g.N, g.C, g.H, g.W}, wd[4] = {g.O, g.C, g.KH, g.KW},
                  yd[4] = {g.N, g.O, g.OH, g.OW};
    const int64_t xs[4] = {(int64_t)g.H * g.W * g.C, 1, (int64_t)g.W * g.C, g.C},
                  ws[4] = {(int64_t)g.KH * g.KW * g.C, 1, (int64_t)g.KW * g.C, g.C},
                  ys[4] = {(int64_t)g.OH * g.OW * g.O, 1, (int64_t)g.OW * g.O, g.O};
    cudnnBackendDescriptor_t x = gr.tensor(BK_X, h, 4, xd, xs, false);
    cudnnBackendDescriptor_t w = gr.tensor(BK_W, h, 4, wd, ws, false);
    cudnnBackendDescriptor_t y = gr.tensor(BK_Y, h, 4, yd, ys, false);
    cudnnBackendDescriptor_t cd = gr.make(CUDNN_BACKEND_CONVOLUTION_DESCRIPTOR);
    const cudnnConvolutionMode_t mode = CUDNN_CROSS_CORRELATION;
    const int64_t dims = 2, dil[2] = {g.dh, g.dw}, str[2] = {g.sh, g.sw}, pad[2] = {g.ph, g.pw};
    gr.set(cd, CUDNN_ATTR_CONVOLUTION_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &f32);
    gr.set(cd, CUDNN_ATTR_CONVOLUTION_CONV_MODE, CUDNN_TYPE_CONVOLUTION_MODE, 1, &mode);
    gr.set(cd, CUDNN_ATTR_CONVOLUTION_SPATIAL_DIMS, CUDNN_TYPE_INT64, 1, &dims);
    gr.set(cd, CUDNN_ATTR_CONVOLUTION_DILATIONS, CUDNN_TYPE_INT64, 2, dil);
    gr.set(cd, CUDNN_ATTR_CONVOLUTION_FILTER_STRIDES, CUDNN_TYPE_INT64, 2, str);
    gr.set(cd, CUDNN_ATTR_CONVOLUTION_PRE_PADDINGS, CUDNN_TYPE_INT64, 2, pad);
    gr.set(cd, CUDNN_ATTR_CONVOLUTION_POST_PADDINGS, CUDNN_TYPE_INT64, 2, pad);
    gr.finalize(cd);
    // the operation's attributes: x, w, y, the convolution, alpha, beta (backward-data: dx, dy)
    typedef cudnnBackendAttributeName_t attr;
    static const attr FWD[6] = {CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_X,
                                CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_W,
                                CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_Y,
                                CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_CONV_DESC,
                                CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_ALPHA,
                                CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_BETA};
    static const attr BWD[6] = {CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_DX,
                                CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_W,
                                CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_DY,
                                CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_CONV_DESC,
                                CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_ALPHA,
                                CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_BETA};
    const attr *a = dir == DIR_FWD ? FWD : BWD;
    const float one = 1.0f, zero = 0.0f;
    cudnnBackendDescriptor_t op =
        gr.make(dir == DIR_FWD ? CUDNN_BACKEND_OPERATION_CONVOLUTION_FORWARD_DESCRIPTOR
                               : CUDNN_BACKEND_OPERATION_CONVOLUTION_BACKWARD_DATA_DESCRIPTOR);
    gr.set_desc(op, a[0], x);
    gr.set_desc(op, a[1], w);
    gr.set_desc(op, a[2], y);
    gr.set_desc(op, a[3], cd);
    gr.set(op, a[4], CUDNN_TYPE_FLOAT, 1, &one);
    gr.set(op, a[5], CUDNN_TYPE_FLOAT, 1, &zero);
    gr.finalize(op);
    cudnnBackendDescriptor_t graph = gr.graph(&op, 1);
    return gr.st == CUDNN_STATUS_SUCCESS ? graph : NULL;
}

// Runs plan pl of direction dir: its input `in` (x forward, dy backward-data), the KRSC weight
// wh, its output `out`.
cudnnStatus_t backend_run(const pbw_dnn_plan &pl, int dir, const void *in, const void *wh,
                          void *out) {
    const int64_t uids[3] = {BK_X, BK_W, BK_Y};
    void *x = dir == DIR_FWD ? const_cast<void *>(in) : out;
    void *y = dir == DIR_FWD ? out : const_cast<void *>(in);
    void *const ptrs[3] = {x, const_cast<void *>(wh), y};
    return pl.execute(3, uids, ptrs);
}

// Whether an engine config may be measured and kept: none that compiles its kernel when its
// plan is made (0.3-1 s a plan) and none whose results cuDNN notes as nondeterministic.
bool backend_config_ok(const pbw_dnn_notes &nt) {
    return !nt.runtime_compiled && !nt.nondeterministic && nt.engine >= 0 && nt.engine < (1 << 22);
}

// Makes b, made from config `code`, direction dir's backend plan of p (in place of any before).
void backend_keep(conv_plan *p, int dir, backend_conv *b, int code) {
    backend_free(p->bk[dir]);
    p->bk[dir] = b;
    p->bk_code[dir] = code;
}

// Direction dir's plan of p from the config bk_code names (a choice read from the file) into
// p->bk[dir]; false when the heuristic no longer lists that engine there or cuDNN refuses it.
bool backend_load(conv_plan *p, int dir, int code) {
    const int index = code % 256;
    const int64_t engine = code / 256;
    backend_conv *b = new backend_conv;
    cudnnBackendDescriptor_t graph = backend_graph(b->graph, p, dir);
    bool ok = false;
    if (graph && index < BACKEND_MAX_CONFIGS) {
        std::vector<cudnnBackendDescriptor_t> cfgs = b->graph.configs(graph, index + 1);
        if ((int)cfgs.size() > index) {
            const pbw_dnn_notes nt = pbw_dnn_config_notes(cfgs[(size_t)index]);
            ok = backend_config_ok(nt) && nt.engine == engine &&
                 b->plan.from_config(cfgs[(size_t)index]) &&
                 b->plan.ws_bytes <= (int64_t)FIND_WS_CAP;
        }
    }
    pbw_dnn_forget_error();
    if (!ok) {
        delete b;
        return false;
    }
    backend_keep(p, dir, b, code);
    return true;
}

// Measures direction dir's engine configs on the staged operands (in and wh; out a scratch
// output) and keeps the fastest plan in p->bk[dir] (forced: the first that builds, untimed);
// its time in ms, -1 when none ran (nothing kept).
float backend_measure(conv_plan *p, int dir, const void *in, const void *wh, void *out,
                      bool forced) {
    backend_conv *b = new backend_conv;
    cudnnBackendDescriptor_t graph = backend_graph(b->graph, p, dir);
    float best = -1;
    int tried = 0, code = 0;
    if (graph) {
        pbw_dnn_plan cand;
        std::vector<cudnnBackendDescriptor_t> cfgs = b->graph.configs(graph, BACKEND_MAX_CONFIGS);
        for (size_t i = 0; i < cfgs.size(); i++) {
            const pbw_dnn_notes nt = pbw_dnn_config_notes(cfgs[i]);
            if (!backend_config_ok(nt) || !cand.from_config(cfgs[i]) ||
                cand.ws_bytes > (int64_t)FIND_WS_CAP)
                continue;
            tried++;
            const float t = forced ? 0.0f : pbw_cuda_best_of_three([&] {
                return backend_run(cand, dir, in, wh, out) == CUDNN_STATUS_SUCCESS;
            });
            if (t < 0 || (best >= 0 && t >= best)) continue;
            best = t;
            code = (int)(nt.engine * 256 + (int64_t)i);
            b->plan.swap(cand);
            if (forced) break;
        }
    }
    pbw_dnn_forget_error(); // refused configs are no failure of ours
    cudaGetLastError();
    if (log_choices()) {
        const pbw_cpu_conv_geom &g = p->key.g;
        std::fprintf(stderr, "pbw cudnn backend %s: N=%d C=%d %dx%d -> O=%d %dx%d: %d engine "
                     "configs ran, fastest engine %d %.3f ms\n", dir_name(dir), g.N, g.C, g.H,
                     g.W, g.O, g.OH, g.OW, tried, best >= 0 ? code / 256 : -1, (double)best);
    }
    if (best < 0) {
        delete b;
        return -1;
    }
    backend_keep(p, dir, b, code);
    return best;
}

// Makes the backend plan in p->bk[dir] the plan's algorithm for dir.
void use_backend(conv_plan *p, int dir) {
    p->algo[dir] = ALGO_BACKEND;
    p->math[dir] = CUDNN_DEFAULT_MATH;
    p->ws[dir] = 0; // the plan asks for its own (pbw_dnn_plan::execute)
}

// ---- measured choices on disk (see the file comment) ----
struct cached_choice {
    conv_key key;
    int dir, staged, algo, math, extra; // extra: ALGO_BACKEND's bk_code, else 0
};
std::vector<cached_choice> g_cache;
long g_cache_hits;
int g_cache_state; // 0: not read yet, 1: read (path set), -1: off or no place for it
char g_cache_path[4096];

void cache_open() {
    if (g_cache_state) return;
    // v1: picks of the 1.3x rule; v2: made before ALGO_GEMM was a candidate; v3: before the
    // backend API's engine configs were
    g_cache_state = pbw_cuda_cache_read<22>(
        "cudnn", (size_t)cudnnGetVersion(), "PBW_CUDNN_CACHE", "v4", g_cache_path,
        sizeof g_cache_path, [](const uint64_t *v) {
            bool fits = v[0] < 3;
            for (int i = 1; i < 22; i++) fits = fits && v[i] <= INT_MAX;
            if (!fits) return;
            cached_choice c;
            std::memset(&c, 0, sizeof c);
            pbw_cpu_conv_geom &g = c.key.g;
            int *dst[21] = {&c.dir, &c.key.prec, &c.staged, &g.N, &g.C, &g.H, &g.W,
                            &g.O,   &g.KH,       &g.KW,     &g.OH, &g.OW, &g.sh, &g.sw,
                            &g.ph,  &g.pw,       &g.dh,     &g.dw, &g.G, &c.algo, &c.math};
            for (int i = 0; i < 21; i++) *dst[i] = (int)v[i];
            c.extra = (int)v[21];
            g_cache.push_back(c);
        });
}

bool cache_find(const conv_plan *p, int dir, int *algo, cudnnMathType_t *math, int *extra) {
    cache_open();
    for (size_t i = g_cache.size(); i-- > 0;) { // the newest line wins
        const cached_choice &c = g_cache[i];
        if (c.dir == dir && c.staged == p->stage[dir] && key_equal(c.key, p->key)) {
            *algo = c.algo;
            *math = (cudnnMathType_t)c.math;
            *extra = c.extra;
            return true;
        }
    }
    return false;
}

void cache_add(const conv_plan *p, int dir) {
    cache_open();
    if (g_cache_state != 1) return;
    const int extra = p->algo[dir] == ALGO_BACKEND ? p->bk_code[dir] : 0;
    cached_choice c{p->key, dir, p->stage[dir], p->algo[dir], (int)p->math[dir], extra};
    g_cache.push_back(c);
    const pbw_cpu_conv_geom &g = p->key.g;
    const int f[22] = {dir,  p->key.prec, p->stage[dir], g.N,  g.C,  g.H,  g.W,  g.O,
                       g.KH, g.KW,        g.OH,          g.OW, g.sh, g.sw, g.ph, g.pw,
                       g.dh, g.dw,        g.G,           p->algo[dir], (int)p->math[dir], extra};
    uint64_t v[22];
    for (int i = 0; i < 22; i++) v[i] = (uint64_t)f[i]; // every field is >= 0
    char line[512];
    if (pbw_cache_format_line(line, sizeof line, "v4", v, 22, 22) == 0)
        pbw_cache_append(g_cache_path, line); // a cache not written is only slower next time
}

// Whether a choice read from the cache file can run: the legacy algorithm's workspace query
// passes under its math type, the im2col product is eligible, or the backend config `extra`
// names makes a plan (backend_load). Sets *ws.
template <typename WsFn>
bool cached_usable(conv_plan *p, int dir, int algo, cudnnMathType_t math, int extra, WsFn wsize,
                   size_t *ws) {
    *ws = 0;
    if (algo == ALGO_GEMM) {
        if (!gemm_eligible(p, dir)) return false;
        *ws = gemm_col_bytes(p);
        return true;
    }
    if (algo == ALGO_BACKEND) return backend_eligible(p, dir) && backend_load(p, dir, extra);
    return cudnnSetConvolutionMathType(p->cd, math) == CUDNN_STATUS_SUCCESS &&
           wsize(algo, ws) == CUDNN_STATUS_SUCCESS;
}

// Looks the candidates of one direction up (measured, or the heuristics when asked or when
// measuring fails) and records the pick in p. in0/in1: the direction's two inputs (forward x,
// w; backward-data w, dy; backward-filter x, dy). Measured, the legacy pick is timed again
// (legacy_time: cuDNN's times are of single runs) beside the im2col product (gemm_time) and
// the backend API's engine configs (backend_time), where those apply; the fastest wins.
// 0, or -1 with no candidate found.
template <typename Perf, typename FindFn, typename HeurFn, typename WsFn, typename LegacyFn,
          typename AltFn, typename BkFn>
int choose(conv_plan *p, int dir, size_t out_bytes, FindFn find, HeurFn heur, WsFn wsize,
           LegacyFn legacy_time, AltFn gemm_time, BkFn backend_time) {
    const int prec = p->key.prec;
    Perf perf[16];
    int n = 0, i = -1, measured = 0;
    const int forced = gemm_forced(), bk_forced = backend_forced();
    if (forced == 1 && gemm_eligible(p, dir)) {
        use_gemm(p, dir);
        return 0;
    }
    if (!use_heuristics(prec)) {
        int algo, extra;
        cudnnMathType_t math;
        size_t ws = 0;
        if (forced < 0 && bk_forced < 0 && cache_find(p, dir, &algo, &math, &extra) &&
            cached_usable(p, dir, algo, math, extra, wsize, &ws)) {
            p->algo[dir] = algo;
            p->math[dir] = algo == ALGO_BACKEND ? CUDNN_DEFAULT_MATH : math;
            p->ws[dir] = ws;
            g_cache_hits++;
            if (log_choices())
                std::fprintf(stderr, "pbw cudnn cached %s: algo %d math %d (%s)\n", dir_name(dir),
                             algo, (int)math, g_cache_path);
            return 0;
        }
        // the search runs under the precision's math type (plan_algo set it)
        cudnnSetConvolutionMathType(p->cd, base_math(prec, p->stage[dir]));
        pbw_cuda_wait_lanes(); // cuDNN's times of this lane alone
        find_scratch fs;
        if (fs.init(out_bytes) == 0) {
            if (bk_forced == 1 && backend_eligible(p, dir) && backend_time(fs.out, true) >= 0) {
                use_backend(p, dir);
                cache_add(p, dir); // as a measured pick would be (tests read it back)
                return 0;
            }
            cudnnStatus_t s = find(fs.out, perf, &n, fs.ws, fs.ws_bytes);
            // a candidate's failed launch is reported in perf; don't let it reach the next
            // kernel's launch check
            cudaGetLastError();
            if (s == CUDNN_STATUS_SUCCESS) {
                i = pick_measured(perf, n, prec, fs.ws_bytes);
                measured = i >= 0;
                log_choice(p, dir, "measured", perf, n, i);
                const bool gemm = forced < 0 && gemm_eligible(p, dir),
                           bk = bk_forced < 0 && backend_eligible(p, dir);
                float tc = -1, tg = -1, tb = -1;
                if (measured && (gemm || bk) &&
                    cudnnSetConvolutionMathType(p->cd, perf[i].mathType) == CUDNN_STATUS_SUCCESS)
                    tc = legacy_time(fs.out, (int)perf[i].algo, fs.ws, fs.ws_bytes);
                if (tc >= 0 && gemm) tg = gemm_time(fs.out);
                if (tc >= 0 && bk) tb = backend_time(fs.out, false);
                if (log_choices() && tc >= 0)
                    std::fprintf(stderr, "pbw cudnn: algorithm %d %.3f ms, im2col + cuBLAS "
                                 "%.3f ms, backend %.3f ms\n", (int)perf[i].algo, (double)tc,
                                 (double)tg, (double)tb);
                if (tb >= 0 && tb < tc && (tg < 0 || tb <= tg)) {
                    use_backend(p, dir);
                    cache_add(p, dir);
                    return 0;
                }
                if (tg >= 0 && tg < tc) {
                    use_gemm(p, dir);
                    if (bk_forced < 0) cache_add(p, dir);
                    return 0;
                }
            } else if (log_choices()) {
                std::fprintf(stderr, "pbw cudnn: %s search failed (%s); using the heuristics\n",
                             dir_name(dir), cudnnGetErrorString(s));
            }
        } else if (log_choices()) {
            std::fprintf(stderr, "pbw cudnn: no GPU memory to measure; using the heuristics\n");
        }
    }
    if (i < 0) {
        n = 0;
        cudnnStatus_t s = heur(perf, &n);
        // staged: a refusal only sends the direction back to the float32 path
        if (p->stage[dir] ? s != CUDNN_STATUS_SUCCESS : !status_ok(s, "heuristics")) return -1;
        i = pick_heuristic(perf, n, prec);
        log_choice(p, dir, "heuristic", perf, n, i);
    }
    if (i < 0) return -1;
    p->algo[dir] = (int)perf[i].algo;
    p->math[dir] = perf[i].mathType;
    p->ws[dir] = perf[i].memory;
    if (measured && forced < 0 && bk_forced < 0)
        cache_add(p, dir); // the file holds the default rule's picks
    return 0;
}

// cuDNN's heuristic candidates for the forward or the backward-data of p's staged (half NHWC)
// or float32 descriptors.
cudnnStatus_t heuristics(const conv_plan *p, bool staged, cudnnConvolutionFwdAlgoPerf_t *perf,
                         int *n) {
    return cudnnGetConvolutionForwardAlgorithm_v7(
        pbw_cudnn(), staged ? p->hxd : p->xd, staged ? p->hwd : p->wd, p->cd,
        staged ? p->hyd : p->yd, CUDNN_CONVOLUTION_FWD_ALGO_COUNT, n, perf);
}
cudnnStatus_t heuristics(const conv_plan *p, bool staged,
                         cudnnConvolutionBwdDataAlgoPerf_t *perf, int *n) {
    return cudnnGetConvolutionBackwardDataAlgorithm_v7(
        pbw_cudnn(), staged ? p->hwd : p->wd, staged ? p->hyd : p->yd, p->cd,
        staged ? p->hxd : p->xd, CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT, n, perf);
}

// Chooses the algorithm of direction dir once per plan (see the file comment). in0, in1: the
// direction's inputs, read by the measurement (for a staged direction the staged copies).
// 0; -1 with the failure recorded; 1 when a staged direction found no NHWC algorithm (it is
// then unstaged for the plan: the caller runs the float32 path, which chooses afresh).
int plan_algo(conv_plan *p, int dir, const void *in0, const void *in1) {
    if (p->have[dir]) return 0;
    cudnnHandle_t h = pbw_cudnn();
    const int prec = p->key.prec, staged = p->stage[dir];
    const pbw_cpu_conv_geom &g = p->key.g;
    // the staged direction's descriptors, else the float32 ones
    cudnnTensorDescriptor_t xd = staged ? p->hxd : p->xd, yd = staged ? p->hyd : p->yd;
    cudnnFilterDescriptor_t wd = staged ? p->hwd : p->wd;
    const size_t elem = staged ? 2 : sizeof(float);
    // the descriptor may carry another direction's math type: search under the precision's
    if (!status_ok(cudnnSetConvolutionMathType(p->cd, base_math(prec, staged)), "math type"))
        return -1;
    int rc;
    if (dir == DIR_FWD) {
        rc = choose<cudnnConvolutionFwdAlgoPerf_t>(
            p, dir, tensor_bytes(g.N, g.O, g.OH, g.OW, elem),
            [&](void *out, cudnnConvolutionFwdAlgoPerf_t *perf, int *n, void *ws, size_t wsb) {
                return cudnnFindConvolutionForwardAlgorithmEx(
                    h, xd, in0, wd, in1, p->cd, yd, out,
                    CUDNN_CONVOLUTION_FWD_ALGO_COUNT, n, perf, ws, wsb);
            },
            [&](cudnnConvolutionFwdAlgoPerf_t *perf, int *n) {
                return heuristics(p, staged, perf, n);
            },
            [&](int algo, size_t *ws) {
                return cudnnGetConvolutionForwardWorkspaceSize(
                    h, xd, wd, p->cd, yd, (cudnnConvolutionFwdAlgo_t)algo, ws);
            },
            [&](void *out, int algo, void *ws, size_t wsb) {
                const float one = 1.0f, zero = 0.0f;
                return pbw_cuda_best_of_three([&] {
                    return cudnnConvolutionForward(h, &one, xd, in0, wd, in1, p->cd,
                                                   (cudnnConvolutionFwdAlgo_t)algo, ws, wsb,
                                                   &zero, yd, out) == CUDNN_STATUS_SUCCESS;
                });
            },
            [&](void *out) { return gemm_conv_time(p, in0, in1, out); },
            [&](void *out, bool forced) { return backend_measure(p, dir, in0, in1, out, forced); });
    } else if (dir == DIR_BWD_DATA) {
        rc = choose<cudnnConvolutionBwdDataAlgoPerf_t>(
            p, dir, tensor_bytes(g.N, g.C, g.H, g.W, elem),
            [&](void *out, cudnnConvolutionBwdDataAlgoPerf_t *perf, int *n, void *ws,
                size_t wsb) {
                return cudnnFindConvolutionBackwardDataAlgorithmEx(
                    h, wd, in0, yd, in1, p->cd, xd, out,
                    CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT, n, perf, ws, wsb);
            },
            [&](cudnnConvolutionBwdDataAlgoPerf_t *perf, int *n) {
                return heuristics(p, staged, perf, n);
            },
            [&](int algo, size_t *ws) {
                return cudnnGetConvolutionBackwardDataWorkspaceSize(
                    h, wd, yd, p->cd, xd, (cudnnConvolutionBwdDataAlgo_t)algo, ws);
            },
            [&](void *out, int algo, void *ws, size_t wsb) {
                const float one = 1.0f, zero = 0.0f;
                return pbw_cuda_best_of_three([&] {
                    return cudnnConvolutionBackwardData(h, &one, wd, in0, yd, in1, p->cd,
                                                        (cudnnConvolutionBwdDataAlgo_t)algo, ws,
                                                        wsb, &zero, xd, out) ==
                           CUDNN_STATUS_SUCCESS;
                });
            },
            [](void *) { return -1.0f; },
            [&](void *out, bool forced) { return backend_measure(p, dir, in1, in0, out, forced); });
    } else {
        rc = choose<cudnnConvolutionBwdFilterAlgoPerf_t>(
            p, dir, tensor_bytes(g.O, g.C / g.G, g.KH, g.KW, sizeof(float)),
            [&](void *out, cudnnConvolutionBwdFilterAlgoPerf_t *perf, int *n, void *ws,
                size_t wsb) {
                return cudnnFindConvolutionBackwardFilterAlgorithmEx(
                    h, p->xd, in0, p->yd, in1, p->cd, p->wd, out,
                    CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT, n, perf, ws, wsb);
            },
            [&](cudnnConvolutionBwdFilterAlgoPerf_t *perf, int *n) {
                return cudnnGetConvolutionBackwardFilterAlgorithm_v7(
                    h, p->xd, p->yd, p->cd, p->wd, CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT, n,
                    perf);
            },
            [&](int algo, size_t *ws) {
                return cudnnGetConvolutionBackwardFilterWorkspaceSize(
                    h, p->xd, p->yd, p->cd, p->wd, (cudnnConvolutionBwdFilterAlgo_t)algo, ws);
            },
            [](void *, int, void *, size_t) { return -1.0f; }, [](void *) { return -1.0f; },
            [](void *, bool) { return -1.0f; });
    }
    if (rc < 0 && staged && !pbw_cuda_error()) {
        if (log_choices())
            std::fprintf(stderr, "pbw cudnn: no NHWC %s algorithm for N=%d C=%d %dx%d -> O=%d; "
                         "float32 NCHW instead\n", dir_name(dir), g.N, g.C, g.H, g.W, g.O);
        p->stage[dir] = 0;
        return 1;
    }
    if (rc < 0) {
        if (!pbw_cuda_error())
            pbw_cuda_fail("conv2d: cuDNN offers no usable algorithm for N=%d C=%d %dx%d -> O=%d "
                          "%dx%d, kernel %dx%d (%s)", g.N, g.C, g.H, g.W, g.O, g.OH, g.OW, g.KH,
                          g.KW, dir_name(dir));
        return -1;
    }
    // FP32 keeps FMA math whatever the candidate reported; otherwise the candidate's own (the
    // search ran with ALLOW_CONVERSION on the descriptor, so tensor ops were allowed)
    if (prec == PBW_PREC_FP32) p->math[dir] = CUDNN_FMA_MATH;
    p->have[dir] = 1;
    return 0;
}

// Direction dir of plan p ready (algorithm chosen, math type set) and its workspace in *ws.
// 0; -1 when anything failed (recorded); 1 when a staged direction fell back (plan_algo).
int prepare(conv_plan *p, int dir, const void *in0, const void *in1, void **ws) {
    int rc = plan_algo(p, dir, in0, in1);
    if (rc) return rc;
    // one descriptor serves three directions that may want different math types
    if (!status_ok(cudnnSetConvolutionMathType(p->cd, p->math[dir]), "math type")) return -1;
    *ws = NULL;
    if (p->ws[dir]) {
        *ws = pbw_cuda_workspace(p->ws[dir]);
        if (!*ws) return -1;
    }
    return 0;
}

// fallback_algo's pick among N candidates of type Perf: its index, or -1.
template <typename Perf, int N> int fallback_pick(conv_plan *p, int dir) {
    Perf perf[N];
    int n = 0, i = -1;
    if (heuristics(p, true, perf, &n) == CUDNN_STATUS_SUCCESS &&
        (i = pick_heuristic(perf, n, p->key.prec)) >= 0)
        p->fb_algo[dir] = (int)perf[i].algo, p->fb_ws[dir] = perf[i].memory;
    return i;
}

// The legacy algorithm cuDNN's heuristics give direction dir of a staged plan (for calls whose
// operands its backend plan cannot take), chosen once; the descriptor's math type set for it.
// False (recorded) when there is none.
bool fallback_algo(conv_plan *p, int dir) {
    if (!p->fb_have[dir]) {
        const int i =
            dir == DIR_FWD
                ? fallback_pick<cudnnConvolutionFwdAlgoPerf_t, CUDNN_CONVOLUTION_FWD_ALGO_COUNT>(
                      p, dir)
                : fallback_pick<cudnnConvolutionBwdDataAlgoPerf_t,
                                CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT>(p, dir);
        if (i < 0) {
            pbw_cuda_fail("conv2d: cuDNN offers no %s algorithm for unaligned operands",
                          dir_name(dir));
            return false;
        }
        p->fb_have[dir] = 1;
    }
    return status_ok(cudnnSetConvolutionMathType(p->cd, CUDNN_TENSOR_OP_MATH), "math type");
}

// ---------- staging (see the file comment) ----------

// The module's staging buffer, one a GPU lane: at least `bytes`, reused in stream order. NULL
// (failure recorded, or the recording of a graph refused) where it cannot grow.
pbw_lane_buffer g_stage;

void *stage_get(size_t bytes) {
    return pbw_cuda_lane_buffer(&g_stage, bytes, 0, "half-precision staging");
}

size_t align256(size_t b) { return (b + 255) & ~(size_t)255; }

// The staging transposes move (C,P) planes of each sample through shared tiles of TC channels
// by TP pixels: the float side is read or written along P (a warp covers 32 pixels, 128
// bytes), the half side along C two channels a thread (a warp covers 64 channels, 128 bytes,
// as half2 words when C is even; one value at a time otherwise).
const int TP = 32, TC = 64, TROWS = 8; // 64x32 tiles, 32x8 threads
constexpr int KJ_MODGRAD = TC / TROWS; // nhwc_modgrad_kernel's channels a thread

// Calls tile(n, c0, p0) for the tiles of (N, C, P) this block covers: the grid spans (P tiles,
// C tiles, N) and strides over what does not fit.
template <class F> __device__ __forceinline__ void for_tiles(int N, int C, int64_t P, F &&tile) {
    const int64_t ptiles = (P + TP - 1) / TP;
    const int ctiles = (C + TC - 1) / TC;
    for (int n = blockIdx.z; n < N; n += gridDim.z)
        for (int ct = blockIdx.y; ct < ctiles; ct += gridDim.y)
            for (int64_t pt = blockIdx.x; pt < ptiles; pt += gridDim.x) tile(n, ct * TC, pt * TP);
}

// What the staging (nchw_to_nhwc_kernel) does to each value v of sample n, channel c, pixel p
// (element i of the float tensor) before rounding it: scale it by pm when pm.s is set
// (pbw_sg_modconv), with pbw_sg_modulate's arithmetic.
struct StagePremod {
    pbw_cuda_premod pm;
    __device__ __forceinline__ float operator()(float v, int n, int c, int64_t p, int64_t) const {
        if (!pm.s) return v;
        return __fmul_rn(v, premod_scale(pm, n, c, pm.m ? pm.m[n * pm.m_nstride + p] : 0.0f));
    }
};

// The staging of an activated output's gradient (pbw_sg_modconv_act's backward): v, the
// gradient of out = act(y d + noise + bias), becomes y's (act_grad_from_out).
// Where add is set, v + add[i] (a second share of that gradient, one fp32 addition as the add
// apart would make) stands for v.
struct StageActGrad {
    const float *out;
    pbw_cuda_postact pa;
    const float *add;
    __device__ __forceinline__ float operator()(float v, int n, int c, int64_t, int64_t i) const {
        return act_grad_from_out(add ? __fadd_rn(v, add[i]) : v, out[i], pa, n, c, i);
    }
};

// dst (N,P,C) half = f(src (N,C,P) float), f one of the Stage* maps above.
template <typename T, class F>
__global__ void nchw_to_nhwc_kernel(T *dst, const float *src, int N, int C, int64_t P, F f) {
    pbw_pdl_wait();
    __shared__ float tile[TC][TP + 1];
    const int tx = threadIdx.x, ty = threadIdx.y;
    const bool pairs = C % 2 == 0;
    for_tiles(N, C, P, [&](int n, int c0, int64_t p0) {
        const int64_t p = p0 + tx;
        const float *sp = src + (int64_t)n * C * P;
        T *d = dst + (int64_t)n * C * P;
        for (int j = ty; j < TC; j += TROWS) {
            const int c = c0 + j;
            if (c >= C || p >= P) continue;
            tile[j][tx] = f(sp[(int64_t)c * P + p], n, c, p, ((int64_t)n * C + c) * P + p);
        }
        __syncthreads();
        const int c = c0 + 2 * tx;
        for (int j = ty; j < TP; j += TROWS) {
            const int64_t q = p0 + j;
            if (q >= P || c >= C) continue;
            T *o = d + q * C + c;
            if (pairs) {
                const float f2[2] = {tile[2 * tx][j], tile[2 * tx + 1][j]};
                *reinterpret_cast<uint32_t *>(o) = pbw_pack_half<T, 2, uint32_t>(f2);
            } else {
                o[0] = pbw_to_half<T>(tile[2 * tx][j]);
                if (c + 1 < C) o[1] = pbw_to_half<T>(tile[2 * tx + 1][j]);
            }
        }
        __syncthreads();
    });
}

// tile[c - c0][q - p0] = the half value of channel c at pixel q of one sample's (P,C) values sp,
// for the tile's TC channels from c0 and TP pixels from p0 (entries past C or P are left as
// they are): 8 channels (16 bytes) a thread where wide (C % 8 == 0, sp 16-byte aligned), else
// two a thread, as one word where C is even. The copies back from NHWC halves share it.
template <typename T>
__device__ __forceinline__ void load_half_tile(float (&tile)[TC][TP + 1], const T *sp, int C,
                                               int64_t P, int c0, int64_t p0, bool wide) {
    const int tx = threadIdx.x, ty = threadIdx.y;
    if (wide) {
        const int t = ty * TP + tx, q = t / (TC / 8), g = t % (TC / 8); // pixel, channel group
        if (p0 + q < P && c0 + 8 * g < C) {
            float h[8];
            const T *i = sp + (p0 + q) * C + c0 + 8 * g;
            pbw_unpack_half<T, 8>(*reinterpret_cast<const uint4 *>(i), h);
#pragma unroll
            for (int e = 0; e < 8; e++) tile[8 * g + e][q] = h[e];
        }
        return;
    }
    const int c = c0 + 2 * tx;
    for (int j = ty; j < TP; j += TROWS) {
        const int64_t q = p0 + j;
        if (q >= P || c >= C) continue;
        const T *i = sp + q * C + c;
        if (C % 2 == 0) {
            float f[2];
            pbw_unpack_half<T, 2>(*reinterpret_cast<const uint32_t *>(i), f);
            tile[2 * tx][j] = f[0];
            tile[2 * tx + 1][j] = f[1];
        } else {
            tile[2 * tx][j] = pbw_from_half<T>(i[0]);
            if (c + 1 < C) tile[2 * tx + 1][j] = pbw_from_half<T>(i[1]);
        }
    }
}

// dst (N,C,P) float = src (N,P,C) half, or dst += it when accumulate: the reverse transpose;
// then + bias[c] where bias is set (conv2d's bias: the same two fp32 adds as the output written,
// then add_bias_kernel). pa.g.N non-zero: each value goes through StyleGAN2's bias and
// activation instead (pbw_sg_modconv_act).
template <typename T>
__global__ void nhwc_to_nchw_kernel(float *dst, const T *src, int N, int C, int64_t P,
                                    int accumulate, pbw_cuda_postact pa, const float *bias) {
    pbw_pdl_wait();
    __shared__ float tile[TC][TP + 1];
    const int tx = threadIdx.x, ty = threadIdx.y;
    for_tiles(N, C, P, [&](int n, int c0, int64_t p0) {
        float *d = dst + (int64_t)n * C * P;
        load_half_tile(tile, src + (int64_t)n * C * P, C, P, c0, p0, false);
        __syncthreads();
        const int64_t p = p0 + tx;
        for (int j = ty; j < TC; j += TROWS) {
            const int cc = c0 + j;
            if (cc >= C || p >= P) continue;
            float *o = &d[(int64_t)cc * P + p];
            if (pa.g.N) {
                *o = act_at(tile[j][tx], act_plane_at(pa.d, pa.noise, pa.bias, pa.g, n, cc),
                            pa.g, p);
            } else {
                const float v = accumulate ? *o + tile[j][tx] : tile[j][tx];
                *o = bias ? v + bias[cc] : v;
            }
        }
        __syncthreads();
    });
}

// The two transposes above with 16-byte accesses, where C % 8 == 0, P % 4 == 0 and the
// pointers are 16-byte aligned (wide_ok): the float side moves float4s along P (two a thread a
// tile), the half side 8 channels (a uint4) a thread; each thread issues its loads before it
// uses them. Same values and arithmetic as the scalar kernels, element by element. Measured on
// an H100 in an Adam step, the fused modulation backward's copy back (the same pattern) went
// from 0.33 to 0.20 ms with it.
bool wide_ok(int C, int64_t P, const void *a, const void *b) {
    return C % 8 == 0 && P % 4 == 0 && (((uintptr_t)a | (uintptr_t)b) & 15) == 0;
}

template <typename T, class F>
__global__ void nchw_to_nhwc_wide_kernel(T *dst, const float *src, int N, int C, int64_t P, F f) {
    pbw_pdl_wait();
    __shared__ float tile[TC][TP + 1];
    const int t = threadIdx.y * TP + threadIdx.x;
    const int q4 = t % (TP / 4), cr = t / (TP / 4); // float4 column, channel row (of 32)
    const int q = t / (TC / 8), g = t % (TC / 8);    // pixel, channel group of the half side
    for_tiles(N, C, P, [&](int n, int c0, int64_t p0) {
        const float *sp = src + (int64_t)n * C * P;
        float4 v[2];
#pragma unroll
        for (int r = 0; r < 2; r++) {
            const int c = c0 + cr + 32 * r;
            const int64_t p = p0 + 4 * q4;
            if (c < C && p < P) v[r] = *reinterpret_cast<const float4 *>(sp + (int64_t)c * P + p);
        }
#pragma unroll
        for (int r = 0; r < 2; r++) {
            const int c = c0 + cr + 32 * r;
            const int64_t p = p0 + 4 * q4;
            if (c >= C || p >= P) continue;
            const int64_t i = ((int64_t)n * C + c) * P + p;
            float *row = &tile[cr + 32 * r][4 * q4];
            row[0] = f(v[r].x, n, c, p, i);
            row[1] = f(v[r].y, n, c, p + 1, i + 1);
            row[2] = f(v[r].z, n, c, p + 2, i + 2);
            row[3] = f(v[r].w, n, c, p + 3, i + 3);
        }
        __syncthreads();
        if (p0 + q < P && c0 + 8 * g < C) {
            float h[8];
#pragma unroll
            for (int e = 0; e < 8; e++) h[e] = tile[8 * g + e][q];
            *reinterpret_cast<uint4 *>(dst + ((int64_t)n * P + p0 + q) * C + c0 + 8 * g) =
                pbw_pack_half<T, 8, uint4>(h);
        }
        __syncthreads();
    });
}

template <typename T>
__global__ void nhwc_to_nchw_wide_kernel(float *dst, const T *src, int N, int C, int64_t P,
                                         int accumulate, pbw_cuda_postact pa,
                                         const float *bias) {
    pbw_pdl_wait();
    __shared__ float tile[TC][TP + 1];
    const int t = threadIdx.y * TP + threadIdx.x;
    const int q4 = t % (TP / 4), cr = t / (TP / 4);
    for_tiles(N, C, P, [&](int n, int c0, int64_t p0) {
        load_half_tile(tile, src + (int64_t)n * C * P, C, P, c0, p0, true);
        __syncthreads();
#pragma unroll
        for (int r = 0; r < 2; r++) {
            const int c = c0 + cr + 32 * r;
            const int64_t p = p0 + 4 * q4;
            if (c >= C || p >= P) continue;
            float *o = dst + ((int64_t)n * C + c) * P + p;
            const float *row = &tile[cr + 32 * r][4 * q4];
            float4 v = make_float4(row[0], row[1], row[2], row[3]);
            if (pa.g.N) {
                const act_plane a = act_plane_at(pa.d, pa.noise, pa.bias, pa.g, n, c);
                v = make_float4(act_at(v.x, a, pa.g, p), act_at(v.y, a, pa.g, p + 1),
                                act_at(v.z, a, pa.g, p + 2), act_at(v.w, a, pa.g, p + 3));
            } else {
                if (accumulate) {
                    const float4 u = *reinterpret_cast<const float4 *>(o);
                    v = make_float4(u.x + v.x, u.y + v.y, u.z + v.z, u.w + v.w);
                }
                if (bias) {
                    const float b = bias[c];
                    v = make_float4(v.x + b, v.y + b, v.z + b, v.w + b);
                }
            }
            *reinterpret_cast<float4 *>(o) = v;
        }
        __syncthreads();
    });
}

// The sums over a warp's 32 lanes of each of a lane's V values (V a power of two, 2..32),
// stored as nhwc_modgrad_kernel's partials: value j < KJ_MODGRAD is channel c0 + ty + j TROWS's
// ps, j >= KJ_MODGRAD that channel's ps0. Recursive halving: at each exchange (lane offsets 16,
// 8, ..., 32 / V) a lane keeps half of its values, adds its partner's copies of them and sends
// the other half, V - 1 shuffles in all where a tree a value takes 5 V; lane l then holds the
// sum over its group of V lanes of value l / (32 / V), and a plain tree over the 32 / V lanes
// that share it finishes the sum. A fixed order: the same bits every run.
template <int HALF, int V>
__device__ __forceinline__ void halving_step(double (&val)[V], int lane, int off) {
    const bool hi = (lane & off) != 0;
#pragma unroll
    for (int i = 0; i < HALF; i++) {
        const double send = hi ? val[i] : val[i + HALF];
        const double keep = hi ? val[i + HALF] : val[i];
        val[i] = keep + __shfl_xor_sync(0xffffffffu, send, off);
    }
    if constexpr (HALF > 1) halving_step<HALF / 2>(val, lane, off / 2);
}

template <int V>
__device__ __forceinline__ void modgrad_store(double (&val)[V], double *ps, double *ps0, int n,
                                              int C, int c0, int ty, int lane) {
    static_assert(V >= 2 && V <= 32 && (V & (V - 1)) == 0, "V a power of two");
    halving_step<V / 2>(val, lane, 16);
#pragma unroll
    for (int off = 16 / V; off > 0; off /= 2)
        val[0] += __shfl_xor_sync(0xffffffffu, val[0], off);
    constexpr int per = 32 / V; // lanes holding each value
    if (lane % per) return;
    const int j = lane / per;   // the value this lane holds
    const int k = j % KJ_MODGRAD, cc = c0 + ty + k * TROWS;
    if (cc >= C) return;
    const int64_t at = ((int64_t)n * C + cc) * gridDim.x + blockIdx.x;
    (j < KJ_MODGRAD ? ps : ps0)[at] = val[0];
}

// The copy back of pbw_sg_modconv's input gradient (its backward): gx (N,C,P) float = src
// (N,P,C) half, the gradient of the modulated input, scaled by pm as pbw_sg_modulate's backward
// scales it (written, or added with one fused multiply-add when accumulate; gx NULL: not
// wanted), and where ps is set the style gradients' partial sums over pixels: ps of src x (x:
// the modulated input, (N,C,P) float), times m when masked, and ps0 of src x (1 - m) (NULL: not
// wanted). A block a tile of TC channels by TP pixels, as the other transposes (grid: pixel
// tiles, channel tiles, samples); its warps (a channel each of every TROWS) sum their 32
// pixels' products in double in a fixed order (modgrad_store), so the partial of (sample n,
// channel c, pixel tile b) at ps[(n C + c) gridDim.x + b] comes out the same every run. The half
// tile is read 16 bytes (8 channels) a thread where C allows; each thread loads its channels'
// values (x, the scales) before it uses any, so their loads are in flight together.
template <typename T>
__global__ void nhwc_modgrad_kernel(float *gx, const T *src, const float *x, int N, int C,
                                    int64_t P, int accumulate, pbw_cuda_premod pm, double *ps,
                                    double *ps0) {
    pbw_pdl_wait();
    __shared__ float tile[TC][TP + 1];
    const int tx = threadIdx.x, ty = threadIdx.y;
    const int n = blockIdx.z, c0 = blockIdx.y * TC;
    const int64_t p0 = (int64_t)blockIdx.x * TP;
    if (n >= N || c0 >= C) return; // the grid spans the tiles exactly (whole block)
    load_half_tile(tile, src + (int64_t)n * C * P, C, P, c0, p0,
                   C % 8 == 0 && ((uintptr_t)src & 15) == 0);
    __syncthreads();
    constexpr int KJ = KJ_MODGRAD; // channels a thread
    const int64_t p = p0 + tx;
    const bool pin = p < P;
    const float mv = pm.m && pin ? pm.m[n * pm.m_nstride + p] : 0.0f;
    float xv[KJ], sc[KJ];
#pragma unroll
    for (int k = 0; k < KJ; k++) {
        const int cc = c0 + ty + k * TROWS;
        const bool ok = pin && cc < C;
        xv[k] = ok && ps ? x[((int64_t)n * C + cc) * P + p] : 0.0f;
        sc[k] = ok && pm.s ? premod_scale(pm, n, cc, mv) : 1.0f;
    }
    float a[KJ], b[KJ];
#pragma unroll
    for (int k = 0; k < KJ; k++) {
        const int cc = c0 + ty + k * TROWS;
        const bool ok = pin && cc < C;
        const float gv = ok ? tile[ty + k * TROWS][tx] : 0.0f;
        if (ok && gx) { // modulate_kernel's arithmetic (pbw_cuda_stylegan.cu)
            float *o = gx + ((int64_t)n * C + cc) * P + p;
            *o = accumulate ? __fmaf_rn(gv, sc[k], *o) : __fmul_rn(gv, sc[k]);
        }
        const float tv = __fmul_rn(gv, xv[k]); // modulate_gs_kernel's products
        a[k] = pm.m ? __fmul_rn(tv, mv) : tv;
        b[k] = pm.m ? __fmul_rn(tv, __fsub_rn(1.0f, mv)) : 0.0f;
    }
    if (!ps) return;
    if (ps0) {
        double val[2 * KJ];
#pragma unroll
        for (int k = 0; k < KJ; k++) val[k] = a[k], val[KJ + k] = b[k];
        modgrad_store<2 * KJ>(val, ps, ps0, n, C, c0, ty, tx);
    } else {
        double val[KJ];
#pragma unroll
        for (int k = 0; k < KJ; k++) val[k] = a[k];
        modgrad_store<KJ>(val, ps, nullptr, n, C, c0, ty, tx);
    }
}

// For each job (blockIdx.y) of several tensors' partials: dst[n nstride + c] += (float)(the
// sum of part[(n C + c) nparts ..]) for every n in order (a style shared by the batch gets one
// float addition a sample, as the CPU adds): a warp a channel, its lanes striding over the
// partials, then a fixed shuffle tree.
struct style_parts_jobs {
    pbw_cuda_style_parts j[PBW_CUDA_STYLE_PARTS_MAX];
};

__global__ void modgrad_finish_many_kernel(style_parts_jobs jobs) {
    pbw_pdl_wait();
    const pbw_cuda_style_parts &p = jobs.j[blockIdx.y];
    const int c = (int)((blockIdx.x * (int64_t)blockDim.x + threadIdx.x) / 32);
    const int lane = threadIdx.x % 32;
    if (c >= p.C) return; // the whole warp
    for (int n = 0; n < p.N; n++) {
        const double *q = p.part + ((int64_t)n * p.C + c) * p.nparts;
        double v = 0;
        for (int k = lane; k < p.nparts; k += 32) v += q[k];
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
        if (lane == 0) p.dst[n * p.nstride + c] += (float)v;
    }
}

// The n (<= PBW_CUDA_STYLE_PARTS_MAX) jobs' sums in one launch; none for n < 1.
void style_parts_launch(int n, const pbw_cuda_style_parts *p) {
    if (n < 1) return;
    if (n > PBW_CUDA_STYLE_PARTS_MAX) {
        pbw_cuda_fail("style partial sums: %d tensors at once (at most %d)", n,
                      PBW_CUDA_STYLE_PARTS_MAX);
        return;
    }
    style_parts_jobs jobs = {};
    int most = 0;
    for (int i = 0; i < n; i++) {
        jobs.j[i] = p[i];
        most = p[i].C > most ? p[i].C : most;
    }
    pbw_launch(modgrad_finish_many_kernel, dim3((unsigned)((most * 32 + 255) / 256), n), 256, 0,
               jobs);
}

// dst (N,P,C) = f(src (N,P,C)), both half (dst may be src), V channels a thread in one word W
// (8 in 16 bytes where C allows, else 2 in 4). The functor f maps the V values of sample n,
// channels c.. at pixel p in place, as floats, in two parts: f.prep<V>(n, c) gathers what the V
// channels share over all pixels (scales, activation planes), f.apply(state, v, p) maps one
// pixel's values. This kernel takes any (N, P, C) and prepares per element.
template <typename T, int V, typename W, class F>
__global__ void nhwc_map_kernel(T *dst, const T *src, int N, int C, int64_t P, F f) {
    pbw_pdl_wait();
    const int cv = C / V;
    PBW_GRID_STRIDE(i, (int64_t)N * P * cv) {
        const int c = V * (int)(i % cv);
        const int64_t np = i / cv, p = np % P;
        float v[V];
        pbw_unpack_half<T, V>(reinterpret_cast<const W *>(src)[i], v);
        f.apply(f.template prep<V>((int)(np / P), c), v, p);
        reinterpret_cast<W *>(dst)[i] = pbw_pack_half<T, V, W>(v);
    }
}

// nhwc_map_kernel's values where the C / 8 channel groups of a pixel divide the block: a thread
// keeps one sample's 8 channels (prepared once) and walks pixels, MAP_UNROLL 16-byte loads in
// flight; the grid spans (pixel chunks, N). No 64-bit division per element.
const int MAP_THREADS = 256, MAP_UNROLL = 4;
// Blocks of 256 threads for the kernels that walk pixels: two waves of 8 an SM (2112 on an
// H100's 132), enough to hide the memory's latency without a long tail.
int64_t grid_blocks() { return (int64_t)2 * 8 * pbw_cuda_sm_count(); }
template <typename T, class F>
__global__ void __launch_bounds__(MAP_THREADS)
    nhwc_map_rows_kernel(T *dst, const T *src, int cv, int64_t P, F f) {
    pbw_pdl_wait();
    const int lane = threadIdx.x % cv, rows = MAP_THREADS / cv, n = blockIdx.y;
    const auto st = f.template prep<8>(n, 8 * lane);
    const uint4 *s = reinterpret_cast<const uint4 *>(src) + (int64_t)n * P * cv + lane;
    uint4 *d = reinterpret_cast<uint4 *>(dst) + (int64_t)n * P * cv + lane;
    const int64_t step = (int64_t)gridDim.x * rows;
    for (int64_t p0 = (int64_t)blockIdx.x * rows + threadIdx.x / cv; p0 < P;
         p0 += MAP_UNROLL * step) {
        uint4 w[MAP_UNROLL];
#pragma unroll
        for (int u = 0; u < MAP_UNROLL; u++)
            if (p0 + u * step < P) w[u] = s[(p0 + u * step) * cv];
#pragma unroll
        for (int u = 0; u < MAP_UNROLL; u++) {
            const int64_t p = p0 + u * step;
            if (p >= P) break;
            float v[8];
            pbw_unpack_half<T, 8>(w[u], v);
            f.apply(st, v, p);
            d[p * cv] = pbw_pack_half<T, 8, uint4>(v);
        }
    }
}

// The staging of an input already held as NHWC halves (pbw_tensor.half_nhwc): scaled by pm,
// with nchw_to_nhwc_kernel's arithmetic.
struct NhwcModulate {
    pbw_cuda_premod pm;
    template <int V> struct state {
        float s[V], s0[V];
        const float *m; // the sample's mask, or NULL
    };
    template <int V> __device__ __forceinline__ state<V> prep(int n, int c) const {
        state<V> st;
#pragma unroll
        for (int k = 0; k < V; k++) {
            st.s[k] = pm.s[n * pm.s_nstride + c + k];
            st.s0[k] = pm.m ? pm.s0[n * pm.s0_nstride + c + k] : 0.0f;
        }
        st.m = pm.m ? pm.m + n * pm.m_nstride : nullptr;
        return st;
    }
    template <int V>
    __device__ __forceinline__ void apply(const state<V> &st, float (&v)[V], int64_t p) const {
        const float mv = st.m ? st.m[p] : 0.0f;
#pragma unroll
        for (int k = 0; k < V; k++) v[k] = __fmul_rn(v[k], masked_scale(st.m, st.s[k], st.s0[k], mv));
    }
};

// StyleGAN2's bias and activation (pa) of a convolution's output that stays as NHWC halves
// (pbw_sg_modconv_act), with nhwc_to_nchw_kernel's arithmetic on the same values, rounded to the
// half type once more.
struct NhwcPostact {
    pbw_cuda_postact pa;
    template <int V> struct state {
        act_group<V> a;
    };
    template <int V> __device__ __forceinline__ state<V> prep(int n, int c) const {
        return state<V>{act_group_at<V>(pa.d, pa.noise, pa.bias, pa.g, n, c)};
    }
    template <int V>
    __device__ __forceinline__ void apply(const state<V> &st, float (&v)[V], int64_t p) const {
#pragma unroll
        for (int k = 0; k < V; k++) v[k] = act_group_apply<V>(v[k], st.a, k, pa.g, p);
    }
};

dim3 transpose_grid(int N, int C, int64_t P) {
    int64_t px = (P + TP - 1) / TP, cy = (C + TC - 1) / TC;
    return dim3((unsigned)(px < 65536 * 32 ? px : 65536 * 32), (unsigned)(cy < 65535 ? cy : 65535),
                (unsigned)(N < 65535 ? N : 65535));
}

// (N,C,P) float -> (N,P,C) half of the precision's type, enqueued; scaled by pm first when
// given.
template <class F>
void to_nhwc_map(void *dst, const float *src, int N, int C, int64_t P, int prec, const F &f) {
    if ((int64_t)N * C * P == 0) return;
    dim3 grid = transpose_grid(N, C, P), block(TP, TROWS);
    const bool wide = wide_ok(C, P, dst, src);
    pbw_half_type(prec, [&](auto t) {
        using H = decltype(t);
        if (wide)
            pbw_launch(nchw_to_nhwc_wide_kernel<H, F>, grid, block, 0, (H *)dst, src, N, C, P, f);
        else
            pbw_launch(nchw_to_nhwc_kernel<H, F>, grid, block, 0, (H *)dst, src, N, C, P, f);
    });
    PBW_CUDA_LAUNCHED("conv2d nchw_to_nhwc");
}
void to_nhwc(void *dst, const float *src, int N, int C, int64_t P, int prec,
             const pbw_cuda_premod *pm = nullptr) {
    const pbw_cuda_premod none = {};
    to_nhwc_map(dst, src, N, C, P, prec, StagePremod{pm ? *pm : none});
}

// (N,P,C) half -> (N,C,P) float, written or added, then bias added where given, enqueued;
// activated by pa when given (then written).
void from_nhwc(float *dst, const void *src, int N, int C, int64_t P, int accumulate, int prec,
               const pbw_cuda_postact *pa = nullptr, const float *bias = nullptr) {
    if ((int64_t)N * C * P == 0) return;
    dim3 grid = transpose_grid(N, C, P), block(TP, TROWS);
    const pbw_cuda_postact none = {}, &a = pa ? *pa : none;
    const bool wide = wide_ok(C, P, dst, src);
    pbw_half_type(prec, [&](auto t) {
        using H = decltype(t);
        if (wide)
            pbw_launch(nhwc_to_nchw_wide_kernel<H>, grid, block, 0, dst, (const H *)src, N, C, P,
                       accumulate, a, bias);
        else
            pbw_launch(nhwc_to_nchw_kernel<H>, grid, block, 0, dst, (const H *)src, N, C, P,
                       accumulate, a, bias);
    });
    PBW_CUDA_LAUNCHED("conv2d nhwc_to_nchw");
}

// dst (N,P,C) half = f(src) (nhwc_map_kernel), enqueued (C even).
template <class F>
void nhwc_map(void *dst, const void *src, int N, int C, int64_t P, int prec, const F &f,
              const char *what) {
    if ((int64_t)N * P * C == 0) return;
    const bool wide = C % 8 == 0 && ((uintptr_t)dst | (uintptr_t)src) % 16 == 0;
    const int64_t n = (int64_t)N * P * (C / (wide ? 8 : 2));
    const int cv = C / 8;
    const bool rows = wide && cv <= MAP_THREADS && MAP_THREADS % cv == 0 && N <= 65535;
    // grid_blocks() in all, or a pixel a thread where that takes fewer
    const int64_t chunks = rows ? (P + MAP_THREADS / cv - 1) / (MAP_THREADS / cv) : 1;
    const int64_t want = (grid_blocks() + N - 1) / N;
    const dim3 grid((unsigned)(chunks < want ? chunks : want), (unsigned)N);
    pbw_half_type(prec, [&](auto t) {
        using H = decltype(t);
        if (rows)
            pbw_launch(nhwc_map_rows_kernel<H, F>, grid, MAP_THREADS, 0, (H *)dst, (const H *)src,
                       cv, P, f);
        else if (wide)
            pbw_launch(nhwc_map_kernel<H, 8, uint4, F>, pbw_grid(n), 256, 0, (H *)dst,
                       (const H *)src, N, C, P, f);
        else
            pbw_launch(nhwc_map_kernel<H, 2, uint32_t, F>, pbw_grid(n), 256, 0, (H *)dst,
                       (const H *)src, N, C, P, f);
    });
    PBW_CUDA_LAUNCHED(what);
}

long g_postact_calls; // staged runs whose copy back applied a pbw_cuda_postact

// The dimensions of a staged direction's input and output: channels and pixels a sample.
struct stage_dims {
    int in_c, out_c;
    int64_t in_p, out_p;
};

// Runs direction dir (DIR_FWD: out = conv(in, w); DIR_BWD_DATA: out = conv's adjoint applied
// to in) of a staged plan on half NHWC copies. stage(hin, dims) fills the half input at hin (the
// staging buffer's) and returns what cuDNN reads (hin, or an input already held as halves);
// back(hout, dims) reads the half output. wh: the caller's half KRSC copy of w in the plan's
// precision, or NULL to convert w here; out_h: NULL, or where the half output goes instead of
// the staging buffer. 0 when done; -1 on failure (recorded); 1 when the direction has no NHWC
// algorithm (now unstaged: run the float32 path; back has not run).
template <class Stage, class Back>
int staged_core(conv_plan *p, int dir, const float *w, const void *wh, void *out_h,
                const Stage &stage, const Back &back) {
    const pbw_cpu_conv_geom &g = p->key.g;
    const int prec = p->key.prec, fwd = dir == DIR_FWD;
    const stage_dims d = {fwd ? g.C : g.O, fwd ? g.O : g.C,
                          fwd ? (int64_t)g.H * g.W : (int64_t)g.OH * g.OW,
                          fwd ? (int64_t)g.OH * g.OW : (int64_t)g.H * g.W};
    const int cg = g.C / g.G, kk = g.KH * g.KW;
    const size_t in_b = align256((size_t)g.N * d.in_c * d.in_p * 2);
    const size_t out_b = align256((size_t)g.N * d.out_c * d.out_p * 2);
    const size_t w_b = wh ? 0 : align256((size_t)g.O * cg * kk * 2);
    char *buf = (char *)stage_get(in_b + out_b + w_b);
    if (!buf) return -1;
    void *hout = out_h ? out_h : buf + in_b;
    if (!wh) {
        wh = buf + in_b + out_b;
        to_nhwc((void *)wh, w, g.O, cg, kk, prec); // (O, C/G, KH*KW) -> KRSC
    }
    const void *hin = stage((void *)buf, d);
    void *ws;
    int rc = fwd ? prepare(p, dir, hin, wh, &ws) : prepare(p, dir, wh, hin, &ws);
    if (rc) return rc;
    const float alpha = 1.0f, zero = 0.0f;
    cudnnStatus_t s;
    if (fwd && p->algo[dir] == ALGO_GEMM) {
        if (!gemm_conv(p, hin, wh, hout, ws)) {
            pbw_cuda_fail("conv2d: the im2col product (cuBLAS) failed");
            return -1;
        }
        s = CUDNN_STATUS_SUCCESS;
    } else if (p->algo[dir] == ALGO_BACKEND &&
               !(((uintptr_t)hin | (uintptr_t)wh | (uintptr_t)hout) & 15)) {
        s = backend_run(p->bk[dir]->plan, dir, hin, wh, hout);
        g_backend_calls += s == CUDNN_STATUS_SUCCESS;
    } else {
        int algo = p->algo[dir];
        size_t wsb = p->ws[dir];
        if (algo == ALGO_BACKEND) { // operands the plan cannot take: the heuristics' algorithm
            if (!fallback_algo(p, dir)) return -1;
            algo = p->fb_algo[dir];
            wsb = p->fb_ws[dir];
            ws = wsb ? pbw_cuda_workspace(wsb) : NULL;
            if (wsb && !ws) return -1;
        }
        s = fwd ? cudnnConvolutionForward(pbw_cudnn(), &alpha, p->hxd, hin, p->hwd, wh, p->cd,
                                          (cudnnConvolutionFwdAlgo_t)algo, ws, wsb, &zero,
                                          p->hyd, hout)
                : cudnnConvolutionBackwardData(pbw_cudnn(), &alpha, p->hwd, wh, p->hyd, hin,
                                               p->cd, (cudnnConvolutionBwdDataAlgo_t)algo, ws,
                                               wsb, &zero, p->hxd, hout);
    }
    if (!status_ok(s, fwd ? "staged forward" : "staged backward-data")) return -1;
    back(hout, d);
    return 0;
}

// staged_core with the plain staging: in (fp32 NCHW) converted, scaled by pm first when given,
// and the output converted into dst (fp32 NCHW), overwriting when beta == 0 and adding when
// beta == 1. in_h: NULL, or the input already as NHWC halves (in is then not read; pm scales it
// into the stage); out_h: NULL, or where the result stays as NHWC halves (dst and beta are then
// unused; pa is applied there in place).
int staged_run(conv_plan *p, int dir, float *dst, const float *in, const float *w,
               const void *wh, float beta, const pbw_cuda_premod *pm,
               const pbw_cuda_postact *pa, const void *in_h = nullptr, void *out_h = nullptr,
               const float *bias = nullptr) {
    const int prec = p->key.prec, N = p->key.g.N;
    const int rc = staged_core(
        p, dir, w, wh, out_h,
        [&](void *hin, const stage_dims &d) -> const void * {
            if (!in_h) to_nhwc(hin, in, N, d.in_c, d.in_p, prec, pm);
            else if (pm)
                nhwc_map(hin, in_h, N, d.in_c, d.in_p, prec, NhwcModulate{*pm},
                         "conv2d nhwc_modulate");
            else return in_h;
            return hin;
        },
        [&](void *hout, const stage_dims &d) {
            if (out_h) {
                if (pa)
                    nhwc_map(out_h, out_h, N, d.out_c, d.out_p, prec, NhwcPostact{*pa},
                             "conv2d nhwc_postact");
            } else {
                from_nhwc(dst, hout, N, d.out_c, d.out_p, beta != 0.0f, prec, pa, bias);
            }
            g_postact_calls += pa != nullptr;
        });
    return rc;
}

int empty(const pbw_cpu_conv_geom *g) {
    return g->N == 0 || g->O == 0 || g->C == 0 || (int64_t)g->OH * g->OW == 0 ||
           (int64_t)g->H * g->W == 0;
}

void add_bias(float *out, const float *b, int N, int O, int64_t P);

// wh: a half KRSC copy of w for staged plans (see staged_run), or NULL. pm: NULL, or a scale
// of x applied as it is staged; pa: NULL, or an activation applied as the output is copied
// back; with either, 1 is returned, nothing written, when the plan does not run staged (0
// otherwise: done, or failed and recorded). bias (with neither): added per output channel,
// as the staged output is copied back (no pass of its own) or after cuDNN's.
int conv_forward(float *out, const float *x, const float *w, const void *wh,
                 const pbw_cpu_conv_geom *g, float beta, const pbw_cuda_premod *pm = nullptr,
                 const pbw_cuda_postact *pa = nullptr, const void *x_h = nullptr,
                 void *out_h = nullptr, const float *bias = nullptr) {
    conv_plan *p = plan_get(g);
    if (!p) return 0;
    if (p->stage[DIR_FWD]) {
        int rc = staged_run(p, DIR_FWD, out, x, w, wh, beta, pm, pa, x_h, out_h, bias);
        if (rc <= 0) return 0; // done, or failed (recorded); 1: unstaged now
    }
    if (pm || pa || x_h || out_h) return 1;
    void *ws;
    if (prepare(p, DIR_FWD, x, w, &ws)) return 0;
    const float alpha = 1.0f;
    PBW_CUDNN_OK(cudnnConvolutionForward(pbw_cudnn(), &alpha, p->xd, x, p->wd, w, p->cd,
                                         (cudnnConvolutionFwdAlgo_t)p->algo[DIR_FWD], ws,
                                         p->ws[DIR_FWD], &beta, p->yd, out));
    if (bias) add_bias(out, bias, g->N, g->O, (int64_t)g->OH * g->OW);
    return 0;
}

int conv_backward_data(float *dx, const float *dout, const float *w, const void *wh,
                       const pbw_cpu_conv_geom *g, float beta,
                       const pbw_cuda_premod *pm = nullptr,
                       const pbw_cuda_postact *pa = nullptr, const void *dout_h = nullptr,
                       void *dx_h = nullptr) {
    conv_plan *p = plan_get(g);
    if (!p) return 0;
    if (p->stage[DIR_BWD_DATA]) {
        int rc = staged_run(p, DIR_BWD_DATA, dx, dout, w, wh, beta, pm, pa, dout_h, dx_h);
        if (rc <= 0) return 0;
    }
    if (pm || pa || dout_h || dx_h) return 1;
    void *ws;
    if (prepare(p, DIR_BWD_DATA, w, dout, &ws)) return 0;
    const float alpha = 1.0f;
    PBW_CUDNN_OK(cudnnConvolutionBackwardData(pbw_cudnn(), &alpha, p->wd, w, p->yd, dout, p->cd,
                                              (cudnnConvolutionBwdDataAlgo_t)p->algo[DIR_BWD_DATA],
                                              ws, p->ws[DIR_BWD_DATA], &beta, p->xd, dx));
    return 0;
}

// ---------- bias ----------

__global__ void add_bias_kernel(float *out, const float *b, int O, int64_t P, int64_t n) {
    pbw_pdl_wait();
    PBW_GRID_STRIDE(i, n) out[i] += b[(i / P) % O];
}

// One block per channel: threads sum strided elements in double, then a tree in shared memory
// (fixed order: deterministic). The CPU sums in double too.
const int BIAS_THREADS = 512;

__global__ void backward_bias_kernel(float *db, const float *dout, int N, int O, int64_t P) {
    pbw_pdl_wait();
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
    pbw_pdl_wait();
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
    conv_forward(out, x, w, NULL, g, accumulate ? 1.0f : 0.0f, nullptr, nullptr, nullptr,
                 nullptr, b);
}

extern "C" void pbw_cuda_conv2d_backward_data(float *dx, const float *dout, const float *w,
                                              const pbw_cpu_conv_geom *g, float *scratch) {
    (void)scratch;
    if (empty(g)) return;
    conv_backward_data(dx, dout, w, NULL, g, 1.0f);
}

extern "C" void pbw_cuda_conv2d_backward_weight(float *dw, const float *dout, const float *x,
                                                const pbw_cpu_conv_geom *g, float *scratch) {
    (void)scratch;
    if (empty(g)) return;
    void *ws;
    conv_plan *p = plan_get(g); // never staged: weight gradients stay float32 NCHW
    if (!p || prepare(p, DIR_BWD_FILTER, x, dout, &ws)) return;
    const float alpha = 1.0f, beta = 1.0f;
    PBW_CUDNN_OK(cudnnConvolutionBackwardFilter(
        pbw_cudnn(), &alpha, p->xd, x, p->yd, dout, p->cd,
        (cudnnConvolutionBwdFilterAlgo_t)p->algo[DIR_BWD_FILTER], ws, p->ws[DIR_BWD_FILTER], &beta,
        p->wd, dw));
}

namespace {
void add_bias(float *out, const float *b, int N, int O, int64_t P) {
    const int64_t n = (int64_t)N * O * P;
    if (n == 0) return;
    pbw_launch(add_bias_kernel, pbw_grid(n), 256, 0, out, b, O, P, n);
    PBW_CUDA_LAUNCHED("conv2d_add_bias");
}
} // namespace

extern "C" void pbw_cuda_conv2d_add_bias(float *out, const float *b, int N, int O, int64_t P) {
    add_bias(out, b, N, O, P);
}

extern "C" void pbw_cuda_conv2d_backward_bias(float *db, const float *dout, int N, int O,
                                              int64_t P) {
    if (O == 0) return;
    pbw_launch(backward_bias_kernel, O, BIAS_THREADS, 0, db, dout, N, O, P);
    PBW_CUDA_LAUNCHED("conv2d_backward_bias");
}

extern "C" void pbw_cuda_sg_conv_transpose_weight(float *wt, const float *w, int O, int C,
                                                  int k) {
    const int64_t n = (int64_t)O * C * k * k;
    if (n == 0) return;
    pbw_launch(transpose01_kernel, pbw_grid(n), 256, 0, wt, w, O, C, k * k);
    PBW_CUDA_LAUNCHED("sg_conv_transpose_weight");
}

extern "C" int pbw_cuda_conv_staged(void) { return prec_staged((int)pbw_cuda_precision()); }

extern "C" size_t pbw_cuda_sg_conv_half_weight_bytes(int O, int C, int k) {
    return (size_t)O * C * k * k * 2;
}

extern "C" void pbw_cuda_sg_conv_half_weight(void *wh, const float *w, int O, int C, int k,
                                             int transposed) {
    const int prec = (int)pbw_cuda_precision();
    if (!prec_staged(prec)) return;
    if (!transposed) // KRSC of w (O,C,k,k): per o, (C, k*k) -> (k*k, C)
        to_nhwc(wh, w, O, C, (int64_t)k * k, prec);
    else // KRSC of wt = w.transpose(0,1) (C,O,k,k): wh[c][t][o] = w[o][c][t], i.e. the
         // (O, C*k*k) matrix w transposed
        to_nhwc(wh, w, 1, O, (int64_t)C * k * k, prec);
}

extern "C" void pbw_cuda_sg_conv_forward(float *out, const float *x, const float *w,
                                         const float *wt, const void *wh, int N, int C, int H,
                                         int W, int O, int k, int transposed) {
    if (N == 0) return;
    if (!transposed) {
        pbw_cpu_conv_geom g = sg_plain_geom(N, C, H, W, O, k);
        conv_forward(out, x, w, wh, &g, 0.0f);
        return;
    }
    pbw_cpu_conv_geom g = sg_adjoint_geom(N, C, H, W, O, k);
    conv_backward_data(out, x, wt, wh, &g, 0.0f);
}

extern "C" long pbw_cuda_sg_postact_calls(void) { return g_postact_calls; }

extern "C" int pbw_cuda_sg_conv_forward_mod(float *out, const float *x,
                                            const pbw_cuda_premod *pm,
                                            const pbw_cuda_postact *pa, const float *w,
                                            const float *wt, const void *wh, int N, int C,
                                            int H, int W, int O, int k, int transposed,
                                            const void *xh, void *outh) {
    if (N == 0) return 0;
    if (!prec_staged((int)pbw_cuda_precision()) || ((xh || outh) && (C % 2 || O % 2)))
        return -1;
    if (!transposed) {
        pbw_cpu_conv_geom g = sg_plain_geom(N, C, H, W, O, k);
        return conv_forward(out, x, w, wh, &g, 0.0f, pm, pa, xh, outh) ? -1 : 0;
    }
    pbw_cpu_conv_geom g = sg_adjoint_geom(N, C, H, W, O, k);
    return conv_backward_data(out, x, wt, wh, &g, 0.0f, pm, pa, xh, outh) ? -1 : 0;
}

// ---------- a 1x1 convolution with a weight per sample, on NHWC halves (pbw_sg_pointwise) ----
// y (N,O,P) float = w_n (O,C) x_n, x (N,P,C) halves: a thread per pixel reads the pixel's row of
// C halves 16 bytes (8 channels) at a time, PW_BATCH loads (a 128-byte line) in flight, and sums
// the products for the O outputs in fp32 against its sample's weights in shared memory (all
// lanes read the same weight: a broadcast). A warp's loads touch 32 rows; the L1 cache keeps
// each row's line between them, so x is read from memory once. The outputs are written along P,
// a warp's contiguous. Measured on an H100, a CMA generation's ToRGB products: 1.85 ms, against
// 2.04 ms with a group of lanes a pixel summed with shuffles, and 2.50 ms with each block's
// pixels staged through shared memory by coalesced loads.
namespace {
const int PW_THREADS = 256, PW_OMAX = 8, PW_CMAX = 1024, PW_BATCH = 8;

// The outputs of one pixel from its O sums: as they are, or (m non-NULL) the blend
// y0 + m (y1 - y0) of the second half (y0) and the first (y1); then + bias. Written with the
// separate ops' roundings (pbw_sg_pointwise_blend), no fused multiply-add.
struct pw_epilogue {
    const float *m, *bias;
    int64_t m_nstride;
};

// Output o of a pixel whose mask value is mv from its sums y1 (output o) and y0 (output o + O/2,
// read only with a mask), as both kernels below write it.
__device__ __forceinline__ float pw_output(const pw_epilogue &ep, float y1, float y0, float mv,
                                           int o) {
    const float v = ep.m ? __fadd_rn(y0, __fmul_rn(mv, __fsub_rn(y1, y0))) : y1;
    return ep.bias ? __fadd_rn(v, ep.bias[o]) : v;
}

template <typename T, int OM>
__global__ void __launch_bounds__(PW_THREADS)
    pointwise_nhwc_kernel(float *y, const T *x, const float *w, int C, int64_t P, int O,
                          pw_epilogue ep) {
    pbw_pdl_wait();
    extern __shared__ float4 ws4[]; // (O, C) floats of sample blockIdx.y
    const int n = blockIdx.y, cv = C / 8;
    float *ws = reinterpret_cast<float *>(ws4);
    for (int i = threadIdx.x; i < O * C; i += blockDim.x) ws[i] = w[(int64_t)n * O * C + i];
    __syncthreads();
    const T *xn = x + (int64_t)n * P * C;
    for (int64_t p = (int64_t)blockIdx.x * PW_THREADS + threadIdx.x; p < P;
         p += (int64_t)gridDim.x * PW_THREADS) {
        const uint4 *row = reinterpret_cast<const uint4 *>(xn + p * C);
        float acc[OM];
#pragma unroll
        for (int o = 0; o < OM; o++) acc[o] = 0.0f;
        for (int j0 = 0; j0 < cv; j0 += PW_BATCH) {
            uint4 u[PW_BATCH];
#pragma unroll
            for (int b = 0; b < PW_BATCH; b++)
                if (j0 + b < cv) u[b] = row[j0 + b];
#pragma unroll
            for (int b = 0; b < PW_BATCH; b++) {
                if (j0 + b >= cv) break;
                float f[8];
                pbw_unpack_half<T, 8>(u[b], f);
#pragma unroll
                for (int o = 0; o < OM; o++) {
                    if (o >= O) break;
                    const float4 a = ws4[(o * C + 8 * (j0 + b)) / 4],
                                 c = ws4[(o * C + 8 * (j0 + b)) / 4 + 1];
                    acc[o] += f[0] * a.x + f[1] * a.y + f[2] * a.z + f[3] * a.w + f[4] * c.x +
                              f[5] * c.y + f[6] * c.z + f[7] * c.w;
                }
            }
        }
        if (!ep.m && !ep.bias) {
#pragma unroll
            for (int o = 0; o < OM; o++)
                if (o < O) y[((int64_t)n * O + o) * P + p] = acc[o];
            continue;
        }
        const int Oy = ep.m ? O / 2 : O;
        const float mv = ep.m ? ep.m[n * ep.m_nstride + p] : 0.0f;
#pragma unroll
        for (int o = 0; o < OM; o++) {
            if (o >= Oy) break;
            float y0 = 0.0f;
            if (ep.m) {
#pragma unroll
                for (int h = 0; h < OM; h++) // acc[o + Oy] with a constant index (registers)
                    if (h == o + Oy) y0 = acc[h];
            }
            y[((int64_t)n * Oy + o) * P + p] = pw_output(ep, acc[o], y0, mv, o);
        }
    }
}

// The same product on tensor cores, for bf16 halves and C % 32 == 0: a warp takes 16 pixels
// (mma.m16n8k16's rows) at a time and sums them against the sample's weights (its 8 columns,
// those past O zero) in fp32. Each lane reads 16 bytes (8 channels) of its two rows per 32
// channels, so a warp's load moves 8 rows x 64 contiguous bytes; the fragments' k order within
// 32 channels is permuted to match (k-step h of chunk q: lane t's a0/a2 hold channels 32q + 8t +
// 4h + {0,1} / {2,3}) and the weights' B fragments are laid out in shared memory in the same
// order, one 8-byte word a lane a k-step. The fp32 weights enter as PW_TERMS bf16 terms
// (w = hi + mid + lo to fp32's precision; each product of a bf16 value and a term is exact),
// one product each. The epilogue (pw_output) is pointwise_nhwc_kernel's, from the warp's sums
// gathered per pixel in shared memory.
const int PWM_WARPS = 4, PWM_QB = 4, PW_TERMS = 3;

// With pa (pa.g.N != 0; d one value a channel or none), x holds the convolution's output
// before its bias, noise and activation: each value is activated as it is loaded, with
// NhwcPostact's arithmetic and rounding, written back in place and fed to the products, so
// that the activated features and ToRGB's sums come out of one pass over x.
__global__ void __launch_bounds__(PWM_WARPS * 32)
    pointwise_mma_kernel(float *y, __nv_bfloat16 *x, const float *w, int C, int64_t P, int O,
                         pw_epilogue ep, pbw_cuda_postact pa) {
    pbw_pdl_wait();
    extern __shared__ uint4 pwm_smem[];
    const int ks = C / 16, lane = threadIdx.x % 32, warp = threadIdx.x / 32, n = blockIdx.y;
    uint2 *bf = reinterpret_cast<uint2 *>(pwm_smem);            // (ks, PW_TERMS, 32)
    float *adv = reinterpret_cast<float *>(bf + ks * PW_TERMS * 32), *ab = adv + C; // (C) each
    float *es = ab + C + warp * 16 * 9;                          // (16, 9) a warp
    const bool activate = pa.g.N != 0;
    if (activate)
        for (int c = threadIdx.x; c < C; c += blockDim.x) {
            adv[c] = pa.g.d_mode == 1 ? pa.d[n * pa.g.d_nstride + c] : 1.0f;
            ab[c] = pa.bias ? pa.bias[c] : 0.0f;
        }
    const float *noise = pa.noise ? pa.noise + n * pa.g.noise_nstride : nullptr;
    // channels c .. c + 7's d and bias (c a multiple of 8): two 16-byte words each, not 16
    // scalar shared-memory loads, read once for both rows of a tile (the compiler read them
    // again for the second: the stores to x between might have aliased them)
    auto factors8 = [&](int c, float (&dv)[8], float (&bv)[8]) {
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const float4 d4 = reinterpret_cast<const float4 *>(adv + c)[h],
                         b4 = reinterpret_cast<const float4 *>(ab + c)[h];
            dv[4 * h] = d4.x, dv[4 * h + 1] = d4.y, dv[4 * h + 2] = d4.z, dv[4 * h + 3] = d4.w;
            bv[4 * h] = b4.x, bv[4 * h + 1] = b4.y, bv[4 * h + 2] = b4.z, bv[4 * h + 3] = b4.w;
        }
    };
    // those channels of pixel p (in range), activated in place in the word and in x
    auto act8 = [&](uint4 &word, uint4 *dst, int64_t p, const float (&dv)[8],
                    const float (&bv)[8]) {
        float v[8];
        pbw_unpack_half<__nv_bfloat16, 8>(word, v);
        const float nz = noise ? noise[p] : 0.0f;
#pragma unroll
        for (int e = 0; e < 8; e++)
            v[e] = act(pre_act_of(v[e], dv[e], noise != nullptr, nz, bv[e], pa.g), pa.g);
        word = pbw_pack_half<__nv_bfloat16, 8, uint4>(v);
        *dst = word;
    };
    for (int i = threadIdx.x; i < ks * 32; i += blockDim.x) {
        const int j = i / 32, l = i % 32, g = l / 4, t = l % 4;
        const int c = 32 * (j / 2) + 8 * t + 4 * (j % 2);
        float r[4];
#pragma unroll
        for (int e = 0; e < 4; e++) r[e] = g < O ? w[((int64_t)n * O + g) * C + c + e] : 0.0f;
#pragma unroll
        for (int term = 0; term < PW_TERMS; term++) {
            float h[4];
#pragma unroll
            for (int e = 0; e < 4; e++) {
                h[e] = pbw_from_half<__nv_bfloat16>(pbw_to_half<__nv_bfloat16>(r[e]));
                r[e] = __fsub_rn(r[e], h[e]); // exact: the rounding's remainder
            }
            bf[(j * PW_TERMS + term) * 32 + l] = make_uint2(
                mma_pack<__nv_bfloat16>(h[0], h[1]), mma_pack<__nv_bfloat16>(h[2], h[3]));
        }
    }
    __syncthreads();
    const int g = lane / 4, t = lane % 4, nq = C / 32;
    __nv_bfloat16 *xn = x + (int64_t)n * P * C;
    const int64_t tiles = (P + 15) / 16;
    for (int64_t tile = (int64_t)blockIdx.x * PWM_WARPS + warp; tile < tiles;
         tile += (int64_t)gridDim.x * PWM_WARPS) {
        const int64_t px = tile * 16 + g, py = px + 8; // rows g and g + 8
        uint4 *ra = reinterpret_cast<uint4 *>(xn + px * C) + t;
        uint4 *rb = reinterpret_cast<uint4 *>(xn + py * C) + t;
        float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        for (int q0 = 0; q0 < nq; q0 += PWM_QB) {
            uint4 A[PWM_QB], B[PWM_QB];
#pragma unroll
            for (int u = 0; u < PWM_QB; u++) {
                const bool in = q0 + u < nq;
                A[u] = in && px < P ? ra[4 * (q0 + u)] : make_uint4(0, 0, 0, 0);
                B[u] = in && py < P ? rb[4 * (q0 + u)] : make_uint4(0, 0, 0, 0);
            }
            if (activate)
#pragma unroll
                for (int u = 0; u < PWM_QB; u++) {
                    if (q0 + u >= nq) break;
                    float dv[8], bv[8];
                    factors8(32 * (q0 + u) + 8 * t, dv, bv);
                    if (px < P) act8(A[u], ra + 4 * (q0 + u), px, dv, bv);
                    if (py < P) act8(B[u], rb + 4 * (q0 + u), py, dv, bv);
                }
#pragma unroll
            for (int u = 0; u < PWM_QB; u++) {
                if (q0 + u >= nq) break;
#pragma unroll
                for (int h = 0; h < 2; h++) {
                    const uint32_t a[4] = {h ? A[u].z : A[u].x, h ? B[u].z : B[u].x,
                                           h ? A[u].w : A[u].y, h ? B[u].w : B[u].y};
                    const uint2 *bj = bf + (2 * (q0 + u) + h) * PW_TERMS * 32 + lane;
#pragma unroll
                    for (int term = 0; term < PW_TERMS; term++)
                        mma_16816<__nv_bfloat16>(acc, a, bj[term * 32].x, bj[term * 32].y);
                }
            }
        }
        // rows g and g + 8, outputs 2t and 2t + 1: gathered per pixel
        es[g * 9 + 2 * t] = acc[0], es[g * 9 + 2 * t + 1] = acc[1];
        es[(g + 8) * 9 + 2 * t] = acc[2], es[(g + 8) * 9 + 2 * t + 1] = acc[3];
        __syncwarp();
        const int64_t p = tile * 16 + lane;
        if (lane < 16 && p < P) {
            const float *v = es + lane * 9;
            if (!ep.m && !ep.bias) {
                for (int o = 0; o < O; o++) y[((int64_t)n * O + o) * P + p] = v[o];
            } else {
                const int Oy = ep.m ? O / 2 : O;
                const float mv = ep.m ? ep.m[n * ep.m_nstride + p] : 0.0f;
                for (int o = 0; o < Oy; o++) {
                    const float y0 = ep.m ? v[o + Oy] : 0.0f;
                    y[((int64_t)n * Oy + o) * P + p] = pw_output(ep, v[o], y0, mv, o);
                }
            }
        }
        __syncwarp(); // es is read before the next tile overwrites it
    }
}

template <typename T, int OM>
void pointwise_launch(dim3 grid, size_t smem, float *y, const T *x, const float *w, int C,
                      int64_t P, int O, const pw_epilogue &ep) {
    pbw_launch(pointwise_nhwc_kernel<T, OM>, grid, PW_THREADS, smem, y, x, w, C, P, O, ep);
}
} // namespace

static long g_pointwise_mma_calls, g_pointwise_act_calls;
extern "C" long pbw_cuda_sg_pointwise_mma_calls(void) { return g_pointwise_mma_calls; }
extern "C" long pbw_cuda_sg_pointwise_act_calls(void) { return g_pointwise_act_calls; }

// Whether either kernel takes the shape: 8-channel groups of 16-byte aligned rows, at most
// PW_OMAX outputs (an even count with a mask), a grid row a sample.
static bool pointwise_shape_ok(int N, int C, int O, const void *xh, const float *m) {
    return C % 8 == 0 && C <= PW_CMAX && O <= PW_OMAX && (uintptr_t)xh % 16 == 0 && N <= 65535 &&
           !(m && O % 2);
}

// Whether the tensor-core kernel takes it (and pa, may be NULL: one d a channel or none).
static bool pointwise_mma_ok(int N, int C, int64_t P, int O, const void *xh, const float *m,
                             const pbw_cuda_postact *pa) {
    return pointwise_shape_ok(N, C, O, xh, m) && pbw_cuda_precision() == PBW_PREC_BF16 &&
           C % 32 == 0 && O > 0 && N > 0 && P > 0 && !(pa && pa->g.d_mode == 2) &&
           !pbw_env_zero("PBW_CUDA_TORGB_MMA");
}

static void pointwise_mma_launch(float *y, void *xh, const pbw_cuda_postact *pa, const float *w,
                                 int N, int C, int64_t P, int O, const pw_epilogue &ep) {
    // 16-pixel tiles, a warp's in turn, four a warp where that leaves blocks enough to fill
    // the GPU four times over; fewer a warp (down to one) at the small sizes where it does not
    // (a 16x16 layer's 16 tiles a sample were one block's: 50 blocks on 132 SMs, each warp four
    // tiles in a row, ~75 us under Nsight Compute); at most grid_blocks() blocks in all
    const int64_t want = (grid_blocks() + N - 1) / N, tiles = (P + 15) / 16;
    const int64_t fill = (4 * pbw_cuda_sm_count() + N - 1) / N;
    const int64_t mb4 = (tiles + 4 * PWM_WARPS - 1) / (4 * PWM_WARPS),
                  mb1 = (tiles + PWM_WARPS - 1) / PWM_WARPS;
    const int64_t mbf = mb4 > fill ? mb4 : fill;
    const int64_t mb = mb1 < mbf ? mb1 : mbf;
    const dim3 grid((unsigned)(mb < want ? mb : want), (unsigned)N);
    const size_t smem = (size_t)C / 16 * PW_TERMS * 32 * sizeof(uint2) +
                        (size_t)2 * C * sizeof(float) + (size_t)PWM_WARPS * 16 * 9 * sizeof(float);
    const pbw_cuda_postact none = {};
    pbw_launch(pointwise_mma_kernel, grid, PWM_WARPS * 32, smem, y, (__nv_bfloat16 *)xh, w, C, P,
               O, ep, pa ? *pa : none);
    PBW_CUDA_LAUNCHED("sg_pointwise (NHWC halves, tensor cores)");
    g_pointwise_mma_calls++;
}

extern "C" int pbw_cuda_sg_pointwise_nhwc(float *y, const void *xh, const float *w, int N, int C,
                                          int64_t P, int O, const float *m, int64_t m_nstride,
                                          const float *bias) {
    if (N == 0 || P == 0 || O == 0) return 0;
    if (!pointwise_shape_ok(N, C, O, xh, m)) return -1;
    const pw_epilogue ep = {m, bias, m_nstride};
    if (pointwise_mma_ok(N, C, P, O, xh, m, nullptr)) { // (not written: no activation)
        pointwise_mma_launch(y, const_cast<void *>(xh), nullptr, w, N, C, P, O, ep);
        return 0;
    }
    // a few pixels a thread where there are many (the weights are loaded once a block):
    // grid_blocks() in all
    const int64_t blocks = (P + PW_THREADS - 1) / PW_THREADS, want = (grid_blocks() + N - 1) / N;
    const dim3 grid((unsigned)(blocks < want ? blocks : want), (unsigned)N);
    const size_t smem = (size_t)O * C * sizeof(float);
    pbw_half_type((int)pbw_cuda_precision(), [&](auto t) {
        using H = decltype(t);
        const H *x = (const H *)xh;
        if (O <= 3) // RGB
            pointwise_launch<H, 3>(grid, smem, y, x, w, C, P, O, ep);
        else if (O <= 6) // RGB of the edit and of the original style (masked)
            pointwise_launch<H, 6>(grid, smem, y, x, w, C, P, O, ep);
        else
            pointwise_launch<H, PW_OMAX>(grid, smem, y, x, w, C, P, O, ep);
    });
    PBW_CUDA_LAUNCHED("sg_pointwise (NHWC halves)");
    return 0;
}

extern "C" int pbw_cuda_sg_pointwise_act_ok(int N, int C, int64_t P, int O, const void *xh,
                                            const float *m, const pbw_cuda_postact *pa) {
    return pa && pointwise_mma_ok(N, C, P, O, xh, m, pa);
}

extern "C" int pbw_cuda_sg_pointwise_nhwc_act(float *y, void *xh, const pbw_cuda_postact *pa,
                                              const float *w, int N, int C, int64_t P, int O,
                                              const float *m, int64_t m_nstride,
                                              const float *bias) {
    if (!pbw_cuda_sg_pointwise_act_ok(N, C, P, O, xh, m, pa)) return -1;
    const pw_epilogue ep = {m, bias, m_nstride};
    pointwise_mma_launch(y, xh, pa, w, N, C, P, O, ep);
    g_postact_calls++;
    g_pointwise_act_calls++;
    return 0;
}

extern "C" void pbw_cuda_nhwc_half_to_f32(const void *h, float *y, int N, int C, int64_t P) {
    from_nhwc(y, h, N, C, P, 0, (int)pbw_cuda_precision());
}

extern "C" void pbw_cuda_sg_conv_backward(float *gx, const float *gout, const float *w,
                                          const float *wt, const void *wh, int N, int C, int H,
                                          int W, int O, int k, int transposed, float beta) {
    if (N == 0) return;
    if (!transposed) {
        pbw_cpu_conv_geom g = sg_plain_geom(N, C, H, W, O, k);
        conv_backward_data(gx, gout, w, wh, &g, beta);
        return;
    }
    pbw_cpu_conv_geom g = sg_adjoint_geom(N, C, H, W, O, k);
    conv_forward(gx, gout, wt, wh, &g, beta);
}

// dst (N,C,P) float = f(src (N,C,P) float), f one of the Stage* maps: a thread an element.
template <class F>
__global__ void nchw_map_kernel(float *dst, const float *src, int N, int C, int64_t P, F f) {
    pbw_pdl_wait();
    PBW_GRID_STRIDE(i, (int64_t)N * C * P) {
        const int64_t np = i / P;
        dst[i] = f(src[i], (int)(np / C), (int)(np % C), i % P, i);
    }
}

extern "C" void pbw_cuda_sg_act_grad_from_out(float *gy, const float *gout, const float *out,
                                              const pbw_cuda_postact *pa) {
    const int64_t n = (int64_t)pa->g.N * pa->g.O * pa->g.P;
    if (n == 0) return;
    pbw_launch(nchw_map_kernel<StageActGrad>, pbw_grid(n), 256, 0, gy, gout, pa->g.N, pa->g.O,
               pa->g.P, StageActGrad{out, *pa, nullptr});
    PBW_CUDA_LAUNCHED("sg_act_grad_from_out");
}

static long g_modconv_bwd_calls;
extern "C" long pbw_cuda_sg_modconv_backward_calls(void) { return g_modconv_bwd_calls; }

extern "C" int pbw_cuda_sg_modconv_backward(const pbw_cuda_modconv_bwd_args *a, const float *w,
                                            const float *wt, const void *wh, int N, int C, int H,
                                            int W, int O, int k, int transposed) {
    if (N == 0) return 0;
    if (!prec_staged((int)pbw_cuda_precision()) || (a->gout_add && !a->pa)) return -1;
    // the convolution's adjoint: backward-data of the plain one, the forward of the strided
    // one whose adjoint the transposed convolution is; either reads O channels, writes C
    const pbw_cpu_conv_geom g =
        transposed ? sg_adjoint_geom(N, C, H, W, O, k) : sg_plain_geom(N, C, H, W, O, k);
    const int dir = transposed ? DIR_FWD : DIR_BWD_DATA;
    conv_plan *p = plan_get(&g);
    if (!p) return 0;
    if (!p->stage[dir]) return -1;
    const int prec = p->key.prec;
    const pbw_cuda_premod none = {};
    const pbw_cuda_premod pm = a->pm ? *a->pm : none;
    const bool sums = pm.s && (a->gs || (a->gs0 && pm.m));
    const int rc = staged_core(
        p, dir, transposed ? wt : w, wh, nullptr,
        [&](void *hin, const stage_dims &d) -> const void * {
            if (a->pa)
                to_nhwc_map(hin, a->gout, N, d.in_c, d.in_p, prec,
                            StageActGrad{a->out, *a->pa, a->gout_add});
            else
                to_nhwc(hin, a->gout, N, d.in_c, d.in_p, prec);
            return hin;
        },
        [&](void *hout, const stage_dims &d) {
            const int64_t ptiles = (d.out_p + TP - 1) / TP, ctiles = (d.out_c + TC - 1) / TC;
            // a block a tile (the kernel takes no more: grid limits checked here)
            if (ptiles > 0x7fffffff || ctiles > 65535 || N > 65535) {
                pbw_cuda_fail("sg_modconv backward: %d x %d x %lld is too large", N, d.out_c,
                              (long long)d.out_p);
                return;
            }
            double *ps = nullptr, *ps0 = nullptr;
            const int64_t each = (int64_t)N * d.out_c * ptiles; // a partial a pixel tile
            if (sums && a->gs_parts && a->gs && !(a->gs0 && pm.m)) {
                ps = a->gs_parts; // the caller's: finished later (pbw_cuda_style_parts_finish)
            } else if (sums) {
                if (!(ps = (double *)pbw_cuda_workspace((size_t)each * 2 * sizeof(double)))) return;
                if (a->gs0 && pm.m) ps0 = ps + each;
            }
            const dim3 grid((unsigned)ptiles, (unsigned)ctiles, (unsigned)N), block(TP, TROWS);
            pbw_half_type(prec, [&](auto t) {
                using Hh = decltype(t);
                pbw_launch(nhwc_modgrad_kernel<Hh>, grid, block, 0, a->gx, (const Hh *)hout,
                           a->x, N, d.out_c, d.out_p, a->gx_beta != 0.0f, pm, ps, ps0);
            });
            PBW_CUDA_LAUNCHED("sg_modconv backward (copy back)");
            pbw_cuda_style_parts jobs[2];
            int nj = 0;
            if (ps && a->gs && ps != a->gs_parts)
                jobs[nj++] = {a->gs, ps, N, d.out_c, (int)ptiles, pm.s_nstride};
            if (ps0) jobs[nj++] = {a->gs0, ps0, N, d.out_c, (int)ptiles, pm.s0_nstride};
            style_parts_launch(nj, jobs);
            PBW_CUDA_LAUNCHED("sg_modconv backward (style sums)");
            g_modconv_bwd_calls++;
        });
    return rc == 1 ? -1 : 0;
}

static long g_style_parts_calls;

extern "C" int64_t pbw_cuda_sg_modconv_parts(int N, int C, int H, int W) {
    return (int64_t)N * C * (((int64_t)H * W + TP - 1) / TP);
}

extern "C" void pbw_cuda_style_parts_finish(int n, const pbw_cuda_style_parts *p) {
    if (n < 1) return;
    style_parts_launch(n, p);
    PBW_CUDA_LAUNCHED("sg_modconv backward (style sums, deferred)");
    g_style_parts_calls++;
}

extern "C" long pbw_cuda_style_parts_calls(void) { return g_style_parts_calls; }

extern "C" long pbw_cuda_conv_gemm_calls(void) { return g_gemm_calls; }

extern "C" long pbw_cuda_conv_backend_calls(void) { return g_backend_calls; }

extern "C" long pbw_cuda_conv_forget(void) {
    for (int i = 0; i < NPLANS; i++) plan_destroy(&plans[i]);
    g_cache.clear();
    g_cache_state = 0;
    long hits = g_cache_hits;
    g_cache_hits = 0;
    return hits;
}
