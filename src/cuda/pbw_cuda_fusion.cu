// pbw_cuda_fusion.cu: products with their neighbours fused in, through cuDNN's runtime fusion
// (the backend graph API).
//
// CLIP's first MLP product and its QuickGELU, y = QuickGELU(x W^T + b), run as one kernel: a
// matmul whose epilogue adds the bias and applies cuDNN's SWISH, x sigmoid(beta x), with
// beta = 1.702, which is QuickGELU. cuBLASLt has no such epilogue, and the separate pass reads
// and writes the product's whole output once more (a CMA generation's CLIP: ~3.8 ms of its ~55).
// bench/cudnn_swish_gemm.cu measured the fused kernel at cuBLASLt's rate for the product alone
// (22400 x 3072 x 768: 170 us against 169 + 105 us).
//
// A layer norm and the product after it, y = LN(x) W^T + b (CLIP's ln_1 before qkv, ln_2 before
// fc1, the latter with its QuickGELU), run without the layer norm's output. With
// U = W diag(gamma) and each row of U centred, Ut_jk = U_jk - mean_k U_jk:
//     LN(x)_r W_j^T + b_j = rstd_r * (x_r . Ut_j) + (b_j + W_j . beta),
// because sum_k Ut_jk = 0 takes the row's mean out of the product by itself. The product then
// reads the residual stream x as it is, and the epilogue scales each row by its 1/std (a
// [R,1] operand) and adds the folded bias: a pass that only reads x for the statistics replaces
// one that read x and wrote the normalized copy. Ut (half) and the folded bias (fp32) are made
// once per weight (ln_fold_kernel) and kept as the weights' half copies are. Precision: Ut is
// rounded to the half type once, as W's half copy was; its rows then sum to a rounding's worth
// of zero, which leaves mean_r * sum_k Ut_jk in the sum: relative to the output that is the
// half type's rounding (2^-9 in bf16) times |mean_r| / std_r, against the rounding of LN(x)
// the two ops make (the same 2^-9 times 1); a residual stream whose rows' means are small
// against their spread (CLIP's) loses nothing.
//
// Where they run: half operands (bf16 or fp16) and a half output, no gradient (CMA's CLIP, the
// text embedding). The sums stay in fp32 in the kernel.
//
// Plans: one per kind (QuickGELU, layer norm and product, with or without QuickGELU), shape
// (R, O, I) and precision, the first engine config of cuDNN's heuristic (mode A) that builds,
// kept for the process. Building a runtime-fusion plan compiles its kernel (NVRTC): 0.3-0.9 s a
// shape on an H100 the first time in a process. So each plan is also written to the cache
// folder (pbw_cache.h: "cudnn-fusion-KIND-RxOxI-PREC-GPU-CUDNNVERSION.txt", a header line naming
// the shape, then cuDNN's JSON of the plan, its compiled kernel included), and a later process
// turns the file back into a plan without compiling; a file cuDNN refuses, or whose plan fails
// to run, is replaced by a fresh build. PBW_CUDNN_CACHE=0 neither reads nor writes the files. A
// shape whose plan cuDNN refuses is remembered as refused and runs as the separate ops.
// PBW_CUDA_GELU_FUSION=0 turns the QuickGELU fusion off, PBW_CUDA_LN_FOLD=0 the layer norm's.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

#include "core/pbw_common.h"
#include "cuda/pbw_cuda_dnn.cuh"
#include "cuda/pbw_cuda_internal.cuh"
#include "cuda/pbw_cuda_nn.h"

namespace {

const double QUICK_GELU_BETA = 1.702;
enum : int64_t { UID_X = 1, UID_W, UID_B, UID_Y, UID_ACC, UID_BIASED, UID_RSTD, UID_SCALED };

// What a plan fuses: fc1 and QuickGELU; a layer norm and its product; the same with QuickGELU.
enum fusion_kind : int { KIND_QGELU = 0, KIND_LN = 1, KIND_LN_QGELU = 2 };
const char *const KIND_NAMES[3] = {"qgelu", "lnlin", "lnqgelu"};

struct fusion_key {
    int64_t R, O, I;
    int prec, kind;
    bool operator==(const fusion_key &o) const {
        return R == o.R && O == o.O && I == o.I && prec == o.prec && kind == o.kind;
    }
};

// A shape's plan (plan.ok()) or a refused shape (!plan.ok()); graph holds the descriptors a
// plan built from a config refers to (empty for a plan read from its file).
struct fusion_plan {
    fusion_key k;
    pbw_dnn_graph graph;
    pbw_dnn_plan plan;
    void drop() {
        plan.reset();
        graph.clear();
    }
};

std::vector<std::unique_ptr<fusion_plan>> g_plans;
long g_calls, g_ln_calls, g_loaded;
// PBW_CUDA_GELU_FUSION=0 turns the QuickGELU fusion off (read once).
bool gelu_fusion_on() {
    static const bool on = !pbw_env_zero("PBW_CUDA_GELU_FUSION");
    return on;
}

// A 3-D tensor [1, rows, columns] with the given strides.
cudnnBackendDescriptor_t tensor(pbw_dnn_graph &g, int64_t uid, cudnnDataType_t type, int64_t rows,
                                int64_t cols, int64_t row_stride, int64_t col_stride,
                                bool is_virtual) {
    const int64_t dims[3] = {1, rows, cols}, strides[3] = {rows * cols, row_stride, col_stride};
    return g.tensor(uid, type, 3, dims, strides, is_virtual);
}

// A call's operands (rstd: nullptr for KIND_QGELU).
struct fusion_args {
    const void *xh, *wh, *bias;
    const float *rstd;
    void *yh;
};

cudnnStatus_t run_plan(const pbw_dnn_plan &plan, const fusion_args &a);

// How many of the heuristic's configs a new plan times, the fastest kept (PBW_CUDNN_FUSION_CONFIGS;
// 1, the default, takes the first that builds, untimed). Each builds its kernel (NVRTC, 0.3-0.9 s
// once a machine: the pick's plan is kept on disk). On an H200 the first was the fastest of
// eight at a CMA generation's shapes (qkv 22400 x 2304 x 768: 114 us, the others 117-282; fc1
// with QuickGELU: 160 us against 164-396), so the default times none.
const int FUSION_CONFIGS = 1;
int fusion_configs() { // read at each build: tests pin it
    const char *e = getenv("PBW_CUDNN_FUSION_CONFIGS");
    return e && atoi(e) > 0 ? atoi(e) : FUSION_CONFIGS;
}

// The graph of p.k and its plan: of the heuristic's configs that build, the first
// fusion_configs(), each timed on a's operands (best of three), the fastest kept; without
// operands (or while a CUDA graph is being recorded) the first that builds. x (R,I), y (R,O)
// row-major; W (O,I) row-major read as W^T (I,O) column-major.
//   KIND_QGELU:    y = SWISH_1.702(x W^T + b), b in the half type
//   KIND_LN:       y = (x W^T) * rstd + b, rstd (R) and b (O) in fp32
//   KIND_LN_QGELU: y = SWISH_1.702((x W^T) * rstd + b)
void build(fusion_plan &p, const fusion_args *a) {
    pbw_dnn_graph &g = p.graph;
    const int64_t R = p.k.R, O = p.k.O, I = p.k.I;
    const bool ln = p.k.kind != KIND_QGELU, act = p.k.kind != KIND_LN;
    const cudnnDataType_t h = p.k.prec == PBW_PREC_FP16 ? CUDNN_DATA_HALF : CUDNN_DATA_BFLOAT16;
    const cudnnDataType_t f32 = CUDNN_DATA_FLOAT;
    cudnnBackendDescriptor_t x = tensor(g, UID_X, h, R, I, I, 1, false);
    cudnnBackendDescriptor_t w = tensor(g, UID_W, h, I, O, 1, I, false);
    cudnnBackendDescriptor_t b = tensor(g, UID_B, ln ? f32 : h, 1, O, O, 1, false); // over rows
    cudnnBackendDescriptor_t y = tensor(g, UID_Y, h, R, O, O, 1, false);
    cudnnBackendDescriptor_t acc = tensor(g, UID_ACC, f32, R, O, O, 1, true);

    cudnnBackendDescriptor_t mm = g.make(CUDNN_BACKEND_MATMUL_DESCRIPTOR);
    g.set(mm, CUDNN_ATTR_MATMUL_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &f32);
    g.finalize(mm);
    cudnnBackendDescriptor_t mm_op = g.make(CUDNN_BACKEND_OPERATION_MATMUL_DESCRIPTOR);
    g.set_desc(mm_op, CUDNN_ATTR_OPERATION_MATMUL_ADESC, x);
    g.set_desc(mm_op, CUDNN_ATTR_OPERATION_MATMUL_BDESC, w);
    g.set_desc(mm_op, CUDNN_ATTR_OPERATION_MATMUL_CDESC, acc);
    g.set_desc(mm_op, CUDNN_ATTR_OPERATION_MATMUL_DESC, mm);
    g.finalize(mm_op);
    cudnnBackendDescriptor_t ops[4] = {mm_op};
    int n = 1;
    cudnnBackendDescriptor_t cur = acc;
    if (ln) { // each row scaled by its 1/std, broadcast over the columns
        cudnnBackendDescriptor_t rstd = tensor(g, UID_RSTD, f32, R, 1, 1, 1, false);
        cudnnBackendDescriptor_t scaled = tensor(g, UID_SCALED, f32, R, O, O, 1, true);
        ops[n++] = g.pointwise(CUDNN_POINTWISE_MUL, cur, rstd, scaled);
        cur = scaled;
    }
    if (act) {
        cudnnBackendDescriptor_t biased = tensor(g, UID_BIASED, f32, R, O, O, 1, true);
        ops[n++] = g.pointwise(CUDNN_POINTWISE_ADD, cur, b, biased);
        ops[n++] = g.pointwise(CUDNN_POINTWISE_SWISH_FWD, biased, nullptr, y, QUICK_GELU_BETA);
    } else {
        ops[n++] = g.pointwise(CUDNN_POINTWISE_ADD, cur, b, y);
    }
    const cudnnBackendDescriptor_t graph = g.graph(ops, n);
    const bool timed = a && fusion_configs() > 1 && !pbw_cuda_capturing();
    const bool log = pbw_env_set("PBW_CUDNN_LOG") != 0;
    int built = 0;
    float best = -1.0f;
    pbw_dnn_plan cand;
    const std::vector<cudnnBackendDescriptor_t> cfgs = g.configs(graph, 16);
    for (size_t i = 0; i < cfgs.size() && built < (timed ? fusion_configs() : 1); i++) {
        if (g.st != CUDNN_STATUS_SUCCESS || !cand.from_config(cfgs[i]))
            continue; // refused: the next
        built++;
        const float t = timed ? pbw_cuda_best_of_three([&] {
            return run_plan(cand, *a) == CUDNN_STATUS_SUCCESS;
        })
                              : 0.0f;
        if (log)
            fprintf(stderr, "pbw cudnn fusion %s %lldx%lldx%lld: config %zu (engine %lld) %.4f ms\n",
                    KIND_NAMES[p.k.kind], (long long)R, (long long)O, (long long)I, i,
                    (long long)pbw_dnn_config_notes(cfgs[i]).engine, (double)t);
        if (t < 0 || (best >= 0 && t >= best))
            continue;
        best = t;
        p.plan.swap(cand);
    }
    cudaGetLastError();
}

// The plan's file in path (n bytes); false when files are off (PBW_CUDNN_CACHE=0) or have no
// place. header: the line the file begins with.
bool plan_file(const fusion_key &k, char *path, size_t n, char *header, size_t hn) {
    const char *prec = pbw_precision_name((pbw_precision)k.prec);
    const char *kind = KIND_NAMES[k.kind];
    char name[128];
    snprintf(name, sizeof name, "cudnn-fusion-%s-%lldx%lldx%lld-%s", kind, (long long)k.R,
             (long long)k.O, (long long)k.I, prec);
    snprintf(header, hn, "pbw cudnn plan v1 %s %lld %lld %lld %s\n",
             k.kind == KIND_QGELU ? "quick_gelu" : kind, (long long)k.R, (long long)k.O,
             (long long)k.I, prec);
    return pbw_dnn_plan_path(name, path, n);
}

// The plan of k: from the process's list, else its file, else built (and its file written).
// a: the call's operands, on which a new plan's candidates are timed (nullptr: untimed). fresh:
// build even when a file exists (its plan failed to run).
fusion_plan *plan_for(const fusion_key &k, const fusion_args *a, bool fresh = false) {
    fusion_plan *p = nullptr;
    for (auto &q : g_plans)
        if (q->k == k)
            p = q.get();
    if (p && !fresh)
        return p;
    if (!p) {
        g_plans.emplace_back(new fusion_plan{k, {}, {}});
        p = g_plans.back().get();
    }
    p->drop();
    char path[4096], header[160];
    const bool file = plan_file(k, path, sizeof path, header, sizeof header);
    if (file && !fresh && p->plan.load(path, header)) {
        g_loaded++;
        return p;
    }
    build(*p, a);
    pbw_dnn_forget_error(); // a refused config's message is no failure of ours
    if (!p->plan.ok())
        p->drop();
    else if (file)
        p->plan.save(path, header);
    return p;
}

// Runs a plan on a call's operands; the status.
cudnnStatus_t run_plan(const pbw_dnn_plan &plan, const fusion_args &a) {
    const int64_t uids[5] = {UID_X, UID_W, UID_B, UID_Y, UID_RSTD};
    void *const ptrs[5] = {const_cast<void *>(a.xh), const_cast<void *>(a.wh),
                           const_cast<void *>(a.bias), a.yh, const_cast<float *>(a.rstd)};
    return plan.execute(a.rstd ? 5 : 4, uids, ptrs);
}

// The plan of k already refused in this process (nothing to launch for it).
bool refused(const fusion_key &k) {
    for (auto &q : g_plans)
        if (q->k == k)
            return !q->plan.ok();
    return false;
}

// Runs k's plan, rebuilding it once when it came from a file and fails; false when k has no
// plan or it fails (nothing was written: the caller runs the separate ops, and the shape stays
// with them).
bool run_fused(const fusion_key &k, const fusion_args &a) {
    fusion_plan *p = plan_for(k, &a);
    if (!p->plan.ok())
        return false;
    cudnnStatus_t st = run_plan(p->plan, a);
    if (st != CUDNN_STATUS_SUCCESS && p->plan.from_file) { // a stale file: build it afresh
        p = plan_for(k, &a, true);
        if (!p->plan.ok())
            return false;
        st = run_plan(p->plan, a);
    }
    if (st != CUDNN_STATUS_SUCCESS) {
        p->drop();
        return false;
    }
    return true;
}

// A layer norm's affine folded into the product after it (the file's opening comment): Ut
// (O,I) in the half type, the folded bias (O) in fp32.
struct ln_fold {
    const float *w, *gamma, *beta, *b;
    int64_t O, I;
    int prec;
    void *ut;
    float *bias;
};
std::vector<ln_fold> g_folds;

// One block of 256 threads a row j: U_jk = W_jk gamma_k, Ut_jk = U_jk - mean_k U_jk (the mean
// summed in double), bias_j = b_j + sum_k W_jk beta_k.
template <typename H>
__global__ void ln_fold_kernel(const float *w, const float *gamma, const float *beta,
                               const float *b, H *ut, float *bias, int64_t I) {
    pbw_pdl_wait();
    __shared__ double sh[256];
    const int64_t j = blockIdx.x;
    const float *wr = w + j * I;
    double s = 0.0, sb = 0.0;
    for (int64_t k = threadIdx.x; k < I; k += 256) {
        s += (double)(wr[k] * gamma[k]);
        sb += (double)wr[k] * (double)beta[k];
    }
    const double mean = pbw_block_sum<256>(s, sh) / (double)I;
    const double bsum = pbw_block_sum<256>(sb, sh);
    for (int64_t k = threadIdx.x; k < I; k += 256)
        ut[j * I + k] = pbw_to_half<H>((float)((double)(wr[k] * gamma[k]) - mean));
    if (threadIdx.x == 0)
        bias[j] = (float)((double)b[j] + bsum);
}

// The fold of (w, gamma, beta, b) in the current precision: made on first use (constant weights
// only), kept until their block is freed (pbw_cuda_fusion_forget_weights).
const ln_fold *fold_of(const float *w, const float *gamma, const float *beta, const float *b,
                       int64_t O, int64_t I) {
    const int prec = (int)pbw_cuda_precision();
    for (const ln_fold &f : g_folds)
        if (f.w == w && f.gamma == gamma && f.beta == beta && f.b == b && f.O == O && f.I == I &&
            f.prec == prec)
            return &f;
    if (!pbw_cuda_is_weight(w, (size_t)(O * I) * sizeof(float)) ||
        !pbw_cuda_is_weight(gamma, (size_t)I * sizeof(float)) ||
        !pbw_cuda_is_weight(beta, (size_t)I * sizeof(float)) ||
        !pbw_cuda_is_weight(b, (size_t)O * sizeof(float)))
        return nullptr;
    void *ut = pbw_cuda_malloc((size_t)(O * I) * 2);
    float *bias = ut ? (float *)pbw_cuda_malloc((size_t)O * sizeof(float)) : nullptr;
    if (!bias) {
        pbw_cuda_free(ut);
        return nullptr;
    }
    pbw_half_type(prec, [&](auto t) {
        using H = decltype(t);
        pbw_launch(ln_fold_kernel<H>, (unsigned)O, 256, 0, w, gamma, beta, b, (H *)ut, bias, I);
    });
    PBW_CUDA_LAUNCHED("layer norm fold");
    g_folds.push_back({w, gamma, beta, b, O, I, prec, ut, bias});
    return &g_folds.back();
}

// The rows' statistics alone, x (R, 256 V) in the half type: a warp a row, each lane loading its
// V 16-byte words at once (the layer norm's kernel loads 8 bytes at a time and also writes its
// output); the mean, then the centred squares from the registers, as that kernel sums them.
// Only 1/std is written: the centred weight takes the mean out of the product.
template <int V, typename H>
__global__ void ln_stats_kernel(const H *x, float *rstd, int64_t R, float eps) {
    pbw_pdl_wait();
    const int64_t D = 256 * V, r = (int64_t)blockIdx.x * 8 + threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    if (r >= R)
        return;
    float v[V][8];
    uint4 w[V];
#pragma unroll
    for (int j = 0; j < V; j++)
        w[j] = reinterpret_cast<const uint4 *>(x + r * D)[lane + 32 * j];
    float s = 0.0f;
#pragma unroll
    for (int j = 0; j < V; j++) {
        pbw_unpack_half<H, 8>(w[j], v[j]);
#pragma unroll
        for (int i = 0; i < 8; i++)
            s += v[j][i];
    }
    const float m = pbw_warp_sum(s) / (float)D;
    float s2 = 0.0f;
#pragma unroll
    for (int j = 0; j < V; j++)
#pragma unroll
        for (int i = 0; i < 8; i++)
            s2 = fmaf(v[j][i] - m, v[j][i] - m, s2);
    const float rs = 1.0f / sqrtf(pbw_warp_sum(s2) / (float)D + eps);
    if (lane == 0)
        rstd[r] = rs;
}

// Launches the statistics of x (R, D); false when D is not 512, 768 or 1024 (CLIP's widths).
bool ln_stats(const void *xh, float *rstd, int64_t R, int64_t D, float eps) {
    bool ok = true;
    const unsigned blocks = (unsigned)((R + 7) / 8);
    pbw_half_type((int)pbw_cuda_precision(), [&](auto t) {
        using H = decltype(t);
        const H *x = (const H *)xh;
        switch (D) {
        case 512: pbw_launch(ln_stats_kernel<2, H>, blocks, 256, 0, x, rstd, R, eps); break;
        case 768: pbw_launch(ln_stats_kernel<3, H>, blocks, 256, 0, x, rstd, R, eps); break;
        case 1024: pbw_launch(ln_stats_kernel<4, H>, blocks, 256, 0, x, rstd, R, eps); break;
        default: ok = false;
        }
    });
    if (ok)
        PBW_CUDA_LAUNCHED("layer norm statistics");
    return ok;
}

} // namespace

void pbw_cuda_fusion_forget_weights(const void *p, size_t bytes) {
    const char *lo = (const char *)p, *hi = lo + bytes;
    auto in = [&](const void *q) { return (const char *)q >= lo && (const char *)q < hi; };
    for (size_t i = g_folds.size(); i-- > 0;) {
        const ln_fold &f = g_folds[i];
        if (in(f.w) || in(f.gamma) || in(f.beta) || in(f.b)) {
            pbw_cuda_free(f.ut);
            pbw_cuda_free(f.bias);
            g_folds.erase(g_folds.begin() + (long)i);
        }
    }
}

extern "C" long pbw_cuda_linear_quick_gelu_calls(void) { return g_calls; }

extern "C" long pbw_cuda_layer_norm_linear_calls(void) { return g_ln_calls; }

extern "C" long pbw_cuda_linear_quick_gelu_forget(void) {
    g_plans.clear();
    const long n = g_loaded;
    g_loaded = 0;
    return n;
}

extern "C" int pbw_cuda_linear_quick_gelu(const void *xh, const float *w, const float *b, void *yh,
                                          int64_t R, int64_t O, int64_t I) {
    // (pbw_cuda_half_gemm: the precision is bf16 or fp16)
    if (!gelu_fusion_on() || !xh || !yh || !b || R <= 0 || O <= 0 || I <= 0 ||
        !pbw_cuda_half_gemm())
        return -1;
    const int prec = (int)pbw_cuda_precision();
    const void *wh = pbw_cuda_half_weight(w, (size_t)(O * I));
    const void *bh = wh ? pbw_cuda_half_weight(b, (size_t)O) : nullptr;
    if (!bh || !pbw_aligned16(xh) || !pbw_aligned16(wh) || !pbw_aligned16(bh) ||
        !pbw_aligned16(yh) || (I * 2) % 16 || (O * 2) % 16)
        return -1;
    if (!run_fused(fusion_key{R, O, I, prec, KIND_QGELU}, fusion_args{xh, wh, bh, nullptr, yh}))
        return -1;
    g_calls++;
    return 0;
}

extern "C" int pbw_cuda_layer_norm_linear(const void *xh, const float *gamma, const float *beta,
                                          float eps, const float *w, const float *b, void *yh,
                                          float *rstd, int64_t R, int64_t O, int64_t I,
                                          int quick_gelu) {
    if (pbw_env_zero("PBW_CUDA_LN_FOLD")) // read at each call: tests compare both paths
        return -1;
    if ((quick_gelu && !gelu_fusion_on()) || !xh || !yh || !gamma || !beta || !b || !rstd ||
        R <= 0 || O <= 0 || I <= 0 || !pbw_cuda_half_gemm() || !pbw_aligned16(xh) ||
        !pbw_aligned16(yh) || !pbw_aligned16(rstd) || (I != 512 && I != 768 && I != 1024) ||
        (O * 2) % 16)
        return -1;
    const int prec = (int)pbw_cuda_precision();
    const fusion_key k{R, O, I, prec, quick_gelu ? KIND_LN_QGELU : KIND_LN};
    if (refused(k)) // nothing launched: the caller runs the two ops
        return -1;
    const ln_fold *f = fold_of(w, gamma, beta, b, O, I);
    if (!f || !pbw_aligned16(f->ut) || !pbw_aligned16(f->bias) ||
        !ln_stats(xh, rstd, R, I, eps))
        return -1;
    // (a new shape's plan is timed on these operands, the statistics included)
    if (!run_fused(k, fusion_args{xh, f->ut, f->bias, rstd, yh}))
        return -1;
    g_ln_calls++;
    return 0;
}
