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
#include <vector>

#include "core/pbw_cache.h"
#include "core/pbw_common.h"
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

// A built plan (ok) or a refused shape (!ok); descs owns every descriptor the plan refers to.
// from_file: the plan was read from the cache folder.
struct fusion_plan {
    fusion_key k;
    bool ok, from_file;
    cudnnBackendDescriptor_t plan;
    int64_t ws_bytes;
    std::vector<cudnnBackendDescriptor_t> descs;
};

std::vector<fusion_plan> g_plans;
long g_calls, g_loaded;
int g_state; // 0 unread, 1 on, -1 off (PBW_CUDA_GELU_FUSION=0)

// Descriptor building: the first failing call sets st and the rest are skipped.
struct builder {
    fusion_plan &p;
    cudnnStatus_t st = CUDNN_STATUS_SUCCESS;
    cudnnBackendDescriptor_t make(cudnnBackendDescriptorType_t t) {
        cudnnBackendDescriptor_t d = nullptr;
        if (st == CUDNN_STATUS_SUCCESS)
            st = cudnnBackendCreateDescriptor(t, &d);
        if (d)
            p.descs.push_back(d);
        return d;
    }
    void set(cudnnBackendDescriptor_t d, cudnnBackendAttributeName_t a,
             cudnnBackendAttributeType_t t, int64_t n, const void *v) {
        if (st == CUDNN_STATUS_SUCCESS)
            st = cudnnBackendSetAttribute(d, a, t, n, v);
    }
    void set_desc(cudnnBackendDescriptor_t d, cudnnBackendAttributeName_t a,
                  cudnnBackendDescriptor_t v) {
        set(d, a, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &v);
    }
    void finalize(cudnnBackendDescriptor_t d) {
        if (st == CUDNN_STATUS_SUCCESS)
            st = cudnnBackendFinalize(d);
    }
    // A 3-D tensor [1, rows, columns] with the given strides, 16-byte aligned.
    cudnnBackendDescriptor_t tensor(int64_t uid, cudnnDataType_t type, int64_t rows, int64_t cols,
                                    int64_t row_stride, int64_t col_stride, bool is_virtual) {
        cudnnBackendDescriptor_t t = make(CUDNN_BACKEND_TENSOR_DESCRIPTOR);
        const int64_t dims[3] = {1, rows, cols}, strides[3] = {rows * cols, row_stride, col_stride};
        const int64_t align = 16;
        set(t, CUDNN_ATTR_TENSOR_DATA_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &type);
        set(t, CUDNN_ATTR_TENSOR_DIMENSIONS, CUDNN_TYPE_INT64, 3, dims);
        set(t, CUDNN_ATTR_TENSOR_STRIDES, CUDNN_TYPE_INT64, 3, strides);
        set(t, CUDNN_ATTR_TENSOR_UNIQUE_ID, CUDNN_TYPE_INT64, 1, &uid);
        set(t, CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, CUDNN_TYPE_INT64, 1, &align);
        set(t, CUDNN_ATTR_TENSOR_IS_VIRTUAL, CUDNN_TYPE_BOOLEAN, 1, &is_virtual);
        finalize(t);
        return t;
    }
    // The pointwise operation y = mode(x [, b]) computed in fp32.
    cudnnBackendDescriptor_t pointwise(cudnnPointwiseMode_t mode, cudnnBackendDescriptor_t x,
                                       cudnnBackendDescriptor_t b, cudnnBackendDescriptor_t y) {
        const cudnnDataType_t f32 = CUDNN_DATA_FLOAT;
        cudnnBackendDescriptor_t pw = make(CUDNN_BACKEND_POINTWISE_DESCRIPTOR);
        set(pw, CUDNN_ATTR_POINTWISE_MODE, CUDNN_TYPE_POINTWISE_MODE, 1, &mode);
        set(pw, CUDNN_ATTR_POINTWISE_MATH_PREC, CUDNN_TYPE_DATA_TYPE, 1, &f32);
        if (mode == CUDNN_POINTWISE_SWISH_FWD)
            set(pw, CUDNN_ATTR_POINTWISE_SWISH_BETA, CUDNN_TYPE_DOUBLE, 1, &QUICK_GELU_BETA);
        finalize(pw);
        cudnnBackendDescriptor_t op = make(CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR);
        set_desc(op, CUDNN_ATTR_OPERATION_POINTWISE_PW_DESCRIPTOR, pw);
        set_desc(op, CUDNN_ATTR_OPERATION_POINTWISE_XDESC, x);
        if (b)
            set_desc(op, CUDNN_ATTR_OPERATION_POINTWISE_BDESC, b);
        set_desc(op, CUDNN_ATTR_OPERATION_POINTWISE_YDESC, y);
        finalize(op);
        return op;
    }
};

// Finalizes an execution plan made from `source` (an engine config, or the plan's JSON) into
// p, with its workspace size; false (nothing kept) when cuDNN refuses it.
bool finish_plan(fusion_plan &p, cudnnBackendAttributeName_t source,
                 cudnnBackendAttributeType_t type, int64_t count, const void *value) {
    cudnnHandle_t dnn = pbw_cudnn();
    cudnnBackendDescriptor_t plan = nullptr;
    int64_t ws = 0, got = 0;
    const bool ok =
        cudnnBackendCreateDescriptor(CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR, &plan) ==
            CUDNN_STATUS_SUCCESS &&
        cudnnBackendSetAttribute(plan, CUDNN_ATTR_EXECUTION_PLAN_HANDLE, CUDNN_TYPE_HANDLE, 1,
                                 &dnn) == CUDNN_STATUS_SUCCESS &&
        cudnnBackendSetAttribute(plan, source, type, count, value) == CUDNN_STATUS_SUCCESS &&
        cudnnBackendFinalize(plan) == CUDNN_STATUS_SUCCESS &&
        cudnnBackendGetAttribute(plan, CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE, CUDNN_TYPE_INT64,
                                 1, &got, &ws) == CUDNN_STATUS_SUCCESS;
    if (!ok) {
        if (plan)
            cudnnBackendDestroyDescriptor(plan);
        return false;
    }
    p.descs.push_back(plan);
    p.plan = plan;
    p.ws_bytes = ws;
    p.ok = true;
    return true;
}

// The graph y = SWISH_1.702(x W^T + b) for p.k, and the first plan of the heuristic's configs
// that builds. x (R,I), y (R,O) row-major; W (O,I) row-major read as W^T (I,O) column-major.
void build(fusion_plan &p) {
    builder bd{p};
    const int64_t R = p.k.R, O = p.k.O, I = p.k.I;
    const cudnnDataType_t h = p.k.prec == PBW_PREC_FP16 ? CUDNN_DATA_HALF : CUDNN_DATA_BFLOAT16;
    const cudnnDataType_t f32 = CUDNN_DATA_FLOAT;
    cudnnBackendDescriptor_t x = bd.tensor(UID_X, h, R, I, I, 1, false);
    cudnnBackendDescriptor_t w = bd.tensor(UID_W, h, I, O, 1, I, false);
    cudnnBackendDescriptor_t b = bd.tensor(UID_B, h, 1, O, O, 1, false); // broadcast over rows
    cudnnBackendDescriptor_t y = bd.tensor(UID_Y, h, R, O, O, 1, false);
    cudnnBackendDescriptor_t acc = bd.tensor(UID_ACC, f32, R, O, O, 1, true);
    cudnnBackendDescriptor_t biased = bd.tensor(UID_BIASED, f32, R, O, O, 1, true);

    cudnnBackendDescriptor_t mm = bd.make(CUDNN_BACKEND_MATMUL_DESCRIPTOR);
    bd.set(mm, CUDNN_ATTR_MATMUL_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &f32);
    bd.finalize(mm);
    cudnnBackendDescriptor_t mm_op = bd.make(CUDNN_BACKEND_OPERATION_MATMUL_DESCRIPTOR);
    bd.set_desc(mm_op, CUDNN_ATTR_OPERATION_MATMUL_ADESC, x);
    bd.set_desc(mm_op, CUDNN_ATTR_OPERATION_MATMUL_BDESC, w);
    bd.set_desc(mm_op, CUDNN_ATTR_OPERATION_MATMUL_CDESC, acc);
    bd.set_desc(mm_op, CUDNN_ATTR_OPERATION_MATMUL_DESC, mm);
    bd.finalize(mm_op);
    cudnnBackendDescriptor_t ops[3] = {mm_op, bd.pointwise(CUDNN_POINTWISE_ADD, acc, b, biased),
                                       bd.pointwise(CUDNN_POINTWISE_SWISH_FWD, biased, nullptr, y)};

    cudnnHandle_t dnn = pbw_cudnn();
    cudnnBackendDescriptor_t graph = bd.make(CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR);
    bd.set(graph, CUDNN_ATTR_OPERATIONGRAPH_OPS, CUDNN_TYPE_BACKEND_DESCRIPTOR, 3, ops);
    bd.set(graph, CUDNN_ATTR_OPERATIONGRAPH_HANDLE, CUDNN_TYPE_HANDLE, 1, &dnn);
    bd.finalize(graph);
    cudnnBackendDescriptor_t heur = bd.make(CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR);
    const cudnnBackendHeurMode_t mode = CUDNN_HEUR_MODE_A;
    bd.set_desc(heur, CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, graph);
    bd.set(heur, CUDNN_ATTR_ENGINEHEUR_MODE, CUDNN_TYPE_HEUR_MODE, 1, &mode);
    bd.finalize(heur);
    int64_t n = 0;
    if (bd.st == CUDNN_STATUS_SUCCESS)
        bd.st = cudnnBackendGetAttribute(heur, CUDNN_ATTR_ENGINEHEUR_RESULTS,
                                         CUDNN_TYPE_BACKEND_DESCRIPTOR, 0, &n, nullptr);
    if (bd.st != CUDNN_STATUS_SUCCESS || n <= 0)
        return;
    std::vector<cudnnBackendDescriptor_t> cfgs;
    for (int64_t i = 0; i < n && i < 16; i++)
        cfgs.push_back(bd.make(CUDNN_BACKEND_ENGINECFG_DESCRIPTOR));
    if (bd.st == CUDNN_STATUS_SUCCESS)
        bd.st = cudnnBackendGetAttribute(heur, CUDNN_ATTR_ENGINEHEUR_RESULTS,
                                         CUDNN_TYPE_BACKEND_DESCRIPTOR, (int64_t)cfgs.size(), &n,
                                         cfgs.data());
    for (int64_t i = 0; bd.st == CUDNN_STATUS_SUCCESS && i < n && i < (int64_t)cfgs.size(); i++)
        if (finish_plan(p, CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG, CUDNN_TYPE_BACKEND_DESCRIPTOR,
                        1, &cfgs[(size_t)i]))
            return; // else this config was refused: the next
}

void drop(fusion_plan &p) {
    for (size_t i = p.descs.size(); i-- > 0;)
        cudnnBackendDestroyDescriptor(p.descs[i]);
    p.descs.clear();
    p.ok = p.from_file = false;
    p.plan = nullptr;
}

// The plan's file in path (n bytes); false when files are off (PBW_CUDNN_CACHE=0) or have no
// place. header: the line the file begins with.
bool plan_file(const fusion_key &k, char *path, size_t n, char *header, size_t hn) {
    if (pbw_env_zero("PBW_CUDNN_CACHE"))
        return false;
    const char *prec = pbw_precision_name((pbw_precision)k.prec);
    char kind[128];
    snprintf(kind, sizeof kind, "cudnn-fusion-qgelu-%lldx%lldx%lld-%s", (long long)k.R,
             (long long)k.O, (long long)k.I, prec);
    snprintf(header, hn, "pbw cudnn plan v1 quick_gelu %lld %lld %lld %s\n", (long long)k.R,
             (long long)k.O, (long long)k.I, prec);
    return pbw_cuda_cache_file(kind, cudnnGetVersion(), path, n, nullptr) == 0;
}

// p's plan from its file, when the file begins with header and cuDNN takes the rest.
bool load_plan(fusion_plan &p, const char *path, const char *header) {
    size_t n = 0;
    char *text = (char *)pbw_cache_read_file(path, (size_t)64 << 20, &n);
    const size_t hl = std::strlen(header);
    if (!text || n <= hl || std::memcmp(text, header, hl)) {
        std::free(text);
        return false;
    }
    const bool ok = finish_plan(p, CUDNN_ATTR_EXECUTION_PLAN_JSON_REPRESENTATION, CUDNN_TYPE_CHAR,
                                (int64_t)(n - hl), text + hl);
    std::free(text);
    p.from_file = ok;
    return ok;
}

// Writes p's plan to its file: header, then cuDNN's JSON of the plan.
void save_plan(const fusion_plan &p, const char *path, const char *header) {
    int64_t n = 0;
    if (cudnnBackendGetAttribute(p.plan, CUDNN_ATTR_EXECUTION_PLAN_JSON_REPRESENTATION,
                                 CUDNN_TYPE_CHAR, 0, &n, nullptr) != CUDNN_STATUS_SUCCESS ||
        n <= 0)
        return;
    const size_t hl = std::strlen(header);
    std::vector<char> buf(hl + (size_t)n + 1, 0);
    std::memcpy(buf.data(), header, hl);
    if (cudnnBackendGetAttribute(p.plan, CUDNN_ATTR_EXECUTION_PLAN_JSON_REPRESENTATION,
                                 CUDNN_TYPE_CHAR, n, &n, buf.data() + hl) != CUDNN_STATUS_SUCCESS)
        return;
    size_t len = hl + (size_t)n;
    while (len > hl && buf[len - 1] == 0)
        len--; // the JSON's own terminator, if counted
    pbw_cache_write_file(path, buf.data(), len);
}

// The plan of k: from the process's list, else its file, else built (and its file written).
// fresh: build even when a file exists (its plan failed to run).
fusion_plan *plan_for(const fusion_key &k, bool fresh = false) {
    fusion_plan *p = nullptr;
    for (fusion_plan &q : g_plans)
        if (q.k == k)
            p = &q;
    if (p && !fresh)
        return p;
    if (!p) {
        g_plans.push_back(fusion_plan{k, false, false, nullptr, 0, {}});
        p = &g_plans.back();
    }
    drop(*p);
    char path[4096], header[160];
    const bool file = plan_file(k, path, sizeof path, header, sizeof header);
    if (file && !fresh && load_plan(*p, path, header)) {
        g_loaded++;
        return p;
    }
    build(*p);
#if CUDNN_MAJOR >= 9
    char msg[256];
    cudnnGetLastErrorString(msg, sizeof msg); // a refused config's message is no failure of ours
#endif
    if (!p->ok)
        drop(*p);
    else if (file)
        save_plan(*p, path, header);
    return p;
}

// Runs p's plan on the operands; the status.
cudnnStatus_t run_plan(const fusion_plan &p, const void *xh, const void *wh, const void *bh,
                       void *yh) {
    void *ws = p.ws_bytes > 0 ? pbw_cuda_workspace((size_t)p.ws_bytes) : nullptr;
    if (p.ws_bytes > 0 && !ws)
        return CUDNN_STATUS_ALLOC_FAILED;
    int64_t uids[4] = {UID_X, UID_W, UID_B, UID_Y};
    void *ptrs[4] = {const_cast<void *>(xh), const_cast<void *>(wh), const_cast<void *>(bh), yh};
    cudnnBackendDescriptor_t vp = nullptr;
    cudnnStatus_t st = cudnnBackendCreateDescriptor(CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR, &vp);
    if (st == CUDNN_STATUS_SUCCESS)
        st = cudnnBackendSetAttribute(vp, CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, CUDNN_TYPE_INT64, 4,
                                      uids);
    if (st == CUDNN_STATUS_SUCCESS)
        st = cudnnBackendSetAttribute(vp, CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS,
                                      CUDNN_TYPE_VOID_PTR, 4, ptrs);
    if (st == CUDNN_STATUS_SUCCESS)
        st = cudnnBackendSetAttribute(vp, CUDNN_ATTR_VARIANT_PACK_WORKSPACE, CUDNN_TYPE_VOID_PTR, 1,
                                      &ws);
    if (st == CUDNN_STATUS_SUCCESS)
        st = cudnnBackendFinalize(vp);
    if (st == CUDNN_STATUS_SUCCESS)
        st = cudnnBackendExecute(pbw_cudnn(), p.plan, vp);
    if (vp)
        cudnnBackendDestroyDescriptor(vp);
    return st;
}

} // namespace

extern "C" long pbw_cuda_linear_quick_gelu_calls(void) { return g_calls; }

extern "C" long pbw_cuda_linear_quick_gelu_forget(void) {
    for (fusion_plan &p : g_plans)
        drop(p);
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
    if (!p->ok)
        return -1;
    cudnnStatus_t st = run_plan(*p, xh, wh, bh, yh);
    if (st != CUDNN_STATUS_SUCCESS && p->from_file) { // a stale file: build it afresh
        p = plan_for(k, true);
        if (!p->ok)
            return -1;
        st = run_plan(*p, xh, wh, bh, yh);
    }
    if (st != CUDNN_STATUS_SUCCESS) {
        // nothing was written: the caller runs the two ops, and this shape stays with them
        drop(*p);
        return -1;
    }
    g_calls++;
    return 0;
}
