// pbw_cuda_fusion.cu: products with their activation fused in, through cuDNN's runtime fusion
// (the backend graph API). CLIP's first MLP product and its QuickGELU, y = QuickGELU(x W^T + b),
// run as one kernel: a matmul whose epilogue adds the bias and applies cuDNN's SWISH,
// x sigmoid(beta x), with beta = 1.702, which is QuickGELU. cuBLASLt has no such epilogue, and
// the separate pass reads and writes the product's whole output once more (a CMA generation's
// CLIP: ~3.8 ms of its ~55). bench/cudnn_swish_gemm.cu measured the fused kernel at cuBLASLt's
// rate for the product alone (22400 x 3072 x 768: 170 us against 169 + 105 us).
//
// Where it runs: half operands (bf16 or fp16; the weight's and bias's cached half copies) and a
// half output, no gradient (pbw_linear_quick_gelu on half activations: CMA's CLIP). The sums and
// the biased sums stay in fp32 in the kernel, so the activation sees the unrounded product where
// the two ops round it to the half type first (one rounding fewer; both within the half-precision
// tolerances of cuda_half_activations).
//
// Plans: one per shape (R, O, I) and precision, the first engine config of cuDNN's heuristic
// (mode A) that builds, kept for the process. Building a runtime-fusion plan compiles its kernel
// (NVRTC): 0.3-0.9 s a shape on an H100 the first time in a process (a CMA generation has two
// shapes, full and last batch). So each plan is also written to the cache folder (pbw_cache.h:
// "cudnn-fusion-qgelu-RxOxI-PREC-GPU-CUDNNVERSION.txt", a header line naming the shape, then
// cuDNN's JSON of the plan, its compiled kernel included), and a later process turns the file
// back into a plan without compiling; a file cuDNN refuses, or whose plan fails to run, is
// replaced by a fresh build. PBW_CUDNN_CACHE=0 neither reads nor writes the files. A shape whose
// plan cuDNN refuses is remembered as refused and runs as the two ops. PBW_CUDA_GELU_FUSION=0
// turns the fusion off.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

#include "core/pbw_common.h"
#include "cuda/pbw_cuda_dnn.cuh"
#include "cuda/pbw_cuda_internal.cuh"

namespace {

const double QUICK_GELU_BETA = 1.702;
enum : int64_t { UID_X = 1, UID_W, UID_B, UID_Y, UID_ACC, UID_BIASED };

struct fusion_key {
    int64_t R, O, I;
    int prec;
    bool operator==(const fusion_key &o) const {
        return R == o.R && O == o.O && I == o.I && prec == o.prec;
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
long g_calls, g_loaded;
int g_state; // 0 unread, 1 on, -1 off (PBW_CUDA_GELU_FUSION=0)

// A 3-D tensor [1, rows, columns] with the given strides.
cudnnBackendDescriptor_t tensor(pbw_dnn_graph &g, int64_t uid, cudnnDataType_t type, int64_t rows,
                                int64_t cols, int64_t row_stride, int64_t col_stride,
                                bool is_virtual) {
    const int64_t dims[3] = {1, rows, cols}, strides[3] = {rows * cols, row_stride, col_stride};
    return g.tensor(uid, type, 3, dims, strides, is_virtual);
}

// The graph y = SWISH_1.702(x W^T + b) for p.k, and the first plan of the heuristic's configs
// that builds. x (R,I), y (R,O) row-major; W (O,I) row-major read as W^T (I,O) column-major.
void build(fusion_plan &p) {
    pbw_dnn_graph &g = p.graph;
    const int64_t R = p.k.R, O = p.k.O, I = p.k.I;
    const cudnnDataType_t h = p.k.prec == PBW_PREC_FP16 ? CUDNN_DATA_HALF : CUDNN_DATA_BFLOAT16;
    const cudnnDataType_t f32 = CUDNN_DATA_FLOAT;
    cudnnBackendDescriptor_t x = tensor(g, UID_X, h, R, I, I, 1, false);
    cudnnBackendDescriptor_t w = tensor(g, UID_W, h, I, O, 1, I, false);
    cudnnBackendDescriptor_t b = tensor(g, UID_B, h, 1, O, O, 1, false); // broadcast over rows
    cudnnBackendDescriptor_t y = tensor(g, UID_Y, h, R, O, O, 1, false);
    cudnnBackendDescriptor_t acc = tensor(g, UID_ACC, f32, R, O, O, 1, true);
    cudnnBackendDescriptor_t biased = tensor(g, UID_BIASED, f32, R, O, O, 1, true);

    cudnnBackendDescriptor_t mm = g.make(CUDNN_BACKEND_MATMUL_DESCRIPTOR);
    g.set(mm, CUDNN_ATTR_MATMUL_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &f32);
    g.finalize(mm);
    cudnnBackendDescriptor_t mm_op = g.make(CUDNN_BACKEND_OPERATION_MATMUL_DESCRIPTOR);
    g.set_desc(mm_op, CUDNN_ATTR_OPERATION_MATMUL_ADESC, x);
    g.set_desc(mm_op, CUDNN_ATTR_OPERATION_MATMUL_BDESC, w);
    g.set_desc(mm_op, CUDNN_ATTR_OPERATION_MATMUL_CDESC, acc);
    g.set_desc(mm_op, CUDNN_ATTR_OPERATION_MATMUL_DESC, mm);
    g.finalize(mm_op);
    const cudnnBackendDescriptor_t ops[3] = {
        mm_op, g.pointwise(CUDNN_POINTWISE_ADD, acc, b, biased),
        g.pointwise(CUDNN_POINTWISE_SWISH_FWD, biased, nullptr, y, QUICK_GELU_BETA)};
    const cudnnBackendDescriptor_t graph = g.graph(ops, 3);
    for (cudnnBackendDescriptor_t cfg : g.configs(graph, 16))
        if (g.st == CUDNN_STATUS_SUCCESS && p.plan.from_config(cfg))
            return; // else this config was refused: the next
}

// The plan's file in path (n bytes); false when files are off (PBW_CUDNN_CACHE=0) or have no
// place. header: the line the file begins with.
bool plan_file(const fusion_key &k, char *path, size_t n, char *header, size_t hn) {
    const char *prec = pbw_precision_name((pbw_precision)k.prec);
    char kind[128];
    snprintf(kind, sizeof kind, "cudnn-fusion-qgelu-%lldx%lldx%lld-%s", (long long)k.R,
             (long long)k.O, (long long)k.I, prec);
    snprintf(header, hn, "pbw cudnn plan v1 quick_gelu %lld %lld %lld %s\n", (long long)k.R,
             (long long)k.O, (long long)k.I, prec);
    return pbw_dnn_plan_path(kind, path, n);
}

// The plan of k: from the process's list, else its file, else built (and its file written).
// fresh: build even when a file exists (its plan failed to run).
fusion_plan *plan_for(const fusion_key &k, bool fresh = false) {
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
    build(*p);
    pbw_dnn_forget_error(); // a refused config's message is no failure of ours
    if (!p->plan.ok())
        p->drop();
    else if (file)
        p->plan.save(path, header);
    return p;
}

// Runs p's plan on the operands; the status.
cudnnStatus_t run_plan(const fusion_plan &p, const void *xh, const void *wh, const void *bh,
                       void *yh) {
    const int64_t uids[4] = {UID_X, UID_W, UID_B, UID_Y};
    void *const ptrs[4] = {const_cast<void *>(xh), const_cast<void *>(wh), const_cast<void *>(bh),
                           yh};
    return p.plan.execute(4, uids, ptrs);
}

} // namespace

extern "C" long pbw_cuda_linear_quick_gelu_calls(void) { return g_calls; }

extern "C" long pbw_cuda_linear_quick_gelu_forget(void) {
    g_plans.clear();
    const long n = g_loaded;
    g_loaded = 0;
    return n;
}

extern "C" int pbw_cuda_linear_quick_gelu(const void *xh, const float *w, const float *b, void *yh,
                                          int64_t R, int64_t O, int64_t I) {
    if (!g_state)
        g_state = pbw_env_zero("PBW_CUDA_GELU_FUSION") ? -1 : 1;
    const int prec = (int)pbw_cuda_precision();
    if (g_state < 0 || !xh || !yh || !b || R <= 0 || O <= 0 || I <= 0 || !pbw_cuda_half_gemm() ||
        (prec != PBW_PREC_BF16 && prec != PBW_PREC_FP16))
        return -1;
    const void *wh = pbw_cuda_half_weight(w, (size_t)(O * I));
    const void *bh = wh ? pbw_cuda_half_weight(b, (size_t)O) : nullptr;
    if (!bh || (((uintptr_t)xh | (uintptr_t)wh | (uintptr_t)bh | (uintptr_t)yh) & 15) ||
        (I * 2) % 16 || (O * 2) % 16)
        return -1;
    const fusion_key k{R, O, I, prec};
    fusion_plan *p = plan_for(k);
    if (!p->plan.ok())
        return -1;
    cudnnStatus_t st = run_plan(*p, xh, wh, bh, yh);
    if (st != CUDNN_STATUS_SUCCESS && p->plan.from_file) { // a stale file: build it afresh
        p = plan_for(k, true);
        if (!p->plan.ok())
            return -1;
        st = run_plan(*p, xh, wh, bh, yh);
    }
    if (st != CUDNN_STATUS_SUCCESS) {
        // nothing was written: the caller runs the two ops, and this shape stays with them
        p->drop();
        return -1;
    }
    g_calls++;
    return 0;
}
