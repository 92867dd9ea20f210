// pbw_cuda_dnn.cu: cuDNN's backend (graph) API as the CUDA backend uses it. Contracts in
// pbw_cuda_dnn.cuh.
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "core/pbw_cache.h"
#include "core/pbw_common.h"
#include "cuda/pbw_cuda_dnn.cuh"
#include "cuda/pbw_cuda_internal.cuh"

void pbw_dnn_graph::clear() {
    for (size_t i = descs.size(); i-- > 0;)
        cudnnBackendDestroyDescriptor(descs[i]);
    descs.clear();
    st = CUDNN_STATUS_SUCCESS;
}

cudnnBackendDescriptor_t pbw_dnn_graph::make(cudnnBackendDescriptorType_t t) {
    cudnnBackendDescriptor_t d = nullptr;
    if (st == CUDNN_STATUS_SUCCESS)
        st = cudnnBackendCreateDescriptor(t, &d);
    if (d)
        descs.push_back(d);
    return d;
}

void pbw_dnn_graph::set(cudnnBackendDescriptor_t d, cudnnBackendAttributeName_t a,
                        cudnnBackendAttributeType_t t, int64_t n, const void *v) {
    if (st == CUDNN_STATUS_SUCCESS)
        st = cudnnBackendSetAttribute(d, a, t, n, v);
}

void pbw_dnn_graph::finalize(cudnnBackendDescriptor_t d) {
    if (st == CUDNN_STATUS_SUCCESS)
        st = cudnnBackendFinalize(d);
}

cudnnBackendDescriptor_t pbw_dnn_graph::tensor(int64_t uid, cudnnDataType_t type, int nd,
                                               const int64_t *dims, const int64_t *strides,
                                               bool is_virtual) {
    cudnnBackendDescriptor_t t = make(CUDNN_BACKEND_TENSOR_DESCRIPTOR);
    const int64_t align = 16;
    set(t, CUDNN_ATTR_TENSOR_DATA_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &type);
    set(t, CUDNN_ATTR_TENSOR_DIMENSIONS, CUDNN_TYPE_INT64, nd, dims);
    set(t, CUDNN_ATTR_TENSOR_STRIDES, CUDNN_TYPE_INT64, nd, strides);
    set(t, CUDNN_ATTR_TENSOR_UNIQUE_ID, CUDNN_TYPE_INT64, 1, &uid);
    set(t, CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, CUDNN_TYPE_INT64, 1, &align);
    set(t, CUDNN_ATTR_TENSOR_IS_VIRTUAL, CUDNN_TYPE_BOOLEAN, 1, &is_virtual);
    finalize(t);
    return t;
}

cudnnBackendDescriptor_t pbw_dnn_graph::pointwise(cudnnPointwiseMode_t mode,
                                                  cudnnBackendDescriptor_t x,
                                                  cudnnBackendDescriptor_t b,
                                                  cudnnBackendDescriptor_t y, double swish_beta) {
    const cudnnDataType_t f32 = CUDNN_DATA_FLOAT;
    cudnnBackendDescriptor_t pw = make(CUDNN_BACKEND_POINTWISE_DESCRIPTOR);
    set(pw, CUDNN_ATTR_POINTWISE_MODE, CUDNN_TYPE_POINTWISE_MODE, 1, &mode);
    set(pw, CUDNN_ATTR_POINTWISE_MATH_PREC, CUDNN_TYPE_DATA_TYPE, 1, &f32);
    if (mode == CUDNN_POINTWISE_SWISH_FWD)
        set(pw, CUDNN_ATTR_POINTWISE_SWISH_BETA, CUDNN_TYPE_DOUBLE, 1, &swish_beta);
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

cudnnBackendDescriptor_t pbw_dnn_graph::graph(const cudnnBackendDescriptor_t *ops, int64_t n) {
    cudnnHandle_t dnn = pbw_cudnn();
    cudnnBackendDescriptor_t g = make(CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR);
    set(g, CUDNN_ATTR_OPERATIONGRAPH_OPS, CUDNN_TYPE_BACKEND_DESCRIPTOR, n, ops);
    set(g, CUDNN_ATTR_OPERATIONGRAPH_HANDLE, CUDNN_TYPE_HANDLE, 1, &dnn);
    finalize(g);
    return g;
}

std::vector<cudnnBackendDescriptor_t> pbw_dnn_graph::configs(cudnnBackendDescriptor_t graph,
                                                             int64_t max) {
    std::vector<cudnnBackendDescriptor_t> cfgs;
    cudnnBackendDescriptor_t heur = make(CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR);
    const cudnnBackendHeurMode_t mode = CUDNN_HEUR_MODE_A;
    set_desc(heur, CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, graph);
    set(heur, CUDNN_ATTR_ENGINEHEUR_MODE, CUDNN_TYPE_HEUR_MODE, 1, &mode);
    finalize(heur);
    int64_t n = 0;
    if (st == CUDNN_STATUS_SUCCESS)
        st = cudnnBackendGetAttribute(heur, CUDNN_ATTR_ENGINEHEUR_RESULTS,
                                      CUDNN_TYPE_BACKEND_DESCRIPTOR, 0, &n, nullptr);
    if (st != CUDNN_STATUS_SUCCESS || n <= 0)
        return cfgs;
    for (int64_t i = 0; i < n && i < max; i++)
        cfgs.push_back(make(CUDNN_BACKEND_ENGINECFG_DESCRIPTOR));
    if (st == CUDNN_STATUS_SUCCESS)
        st = cudnnBackendGetAttribute(heur, CUDNN_ATTR_ENGINEHEUR_RESULTS,
                                      CUDNN_TYPE_BACKEND_DESCRIPTOR, (int64_t)cfgs.size(), &n,
                                      cfgs.data());
    if (st != CUDNN_STATUS_SUCCESS)
        n = 0;
    // the unfilled ones stay owned by descs, unused
    cfgs.resize((size_t)(n < (int64_t)cfgs.size() ? n : (int64_t)cfgs.size()));
    return cfgs;
}

// Whether an engine's list of notes (behaviour or numerical: attribute a of type t, at most
// Note's count of kinds) has `want`.
template <typename Note, int64_t COUNT>
static bool has_note(cudnnBackendDescriptor_t engine, cudnnBackendAttributeName_t a,
                     cudnnBackendAttributeType_t t, Note want) {
    Note notes[COUNT];
    int64_t n = 0;
    if (cudnnBackendGetAttribute(engine, a, t, COUNT, &n, notes) != CUDNN_STATUS_SUCCESS)
        return false;
    for (int64_t i = 0; i < n && i < COUNT; i++)
        if (notes[i] == want)
            return true;
    return false;
}

pbw_dnn_notes pbw_dnn_config_notes(cudnnBackendDescriptor_t cfg) {
    pbw_dnn_notes r = {false, false, -1};
    cudnnBackendDescriptor_t engine = nullptr;
    if (cudnnBackendCreateDescriptor(CUDNN_BACKEND_ENGINE_DESCRIPTOR, &engine) !=
        CUDNN_STATUS_SUCCESS)
        return r;
    int64_t n = 0;
    if (cudnnBackendGetAttribute(cfg, CUDNN_ATTR_ENGINECFG_ENGINE, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1,
                                 &n, &engine) == CUDNN_STATUS_SUCCESS) {
        if (cudnnBackendGetAttribute(engine, CUDNN_ATTR_ENGINE_GLOBAL_INDEX, CUDNN_TYPE_INT64, 1,
                                     &n, &r.engine) != CUDNN_STATUS_SUCCESS)
            r.engine = -1;
        r.runtime_compiled = has_note<cudnnBackendBehaviorNote_t, CUDNN_BEHAVIOR_NOTE_TYPE_COUNT>(
            engine, CUDNN_ATTR_ENGINE_BEHAVIOR_NOTE, CUDNN_TYPE_BEHAVIOR_NOTE,
            CUDNN_BEHAVIOR_NOTE_RUNTIME_COMPILATION);
        r.nondeterministic = has_note<cudnnBackendNumericalNote_t, CUDNN_NUMERICAL_NOTE_TYPE_COUNT>(
            engine, CUDNN_ATTR_ENGINE_NUMERICAL_NOTE, CUDNN_TYPE_NUMERICAL_NOTE,
            CUDNN_NUMERICAL_NOTE_NONDETERMINISTIC);
    }
    cudnnBackendDestroyDescriptor(engine);
    return r;
}

void pbw_dnn_plan::reset() {
    if (plan)
        cudnnBackendDestroyDescriptor(plan);
    plan = nullptr;
    ws_bytes = 0;
    from_file = false;
}

void pbw_dnn_plan::swap(pbw_dnn_plan &o) {
    std::swap(plan, o.plan);
    std::swap(ws_bytes, o.ws_bytes);
    std::swap(from_file, o.from_file);
}

// An execution plan finalized from `source` (an engine config, or the plan's JSON) into p, with
// its workspace size; false (nothing kept) when cuDNN refuses it.
static bool finish_plan(pbw_dnn_plan &p, cudnnBackendAttributeName_t source,
                        cudnnBackendAttributeType_t type, int64_t count, const void *value) {
    p.reset();
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
    p.plan = plan;
    p.ws_bytes = ws;
    return true;
}

bool pbw_dnn_plan::from_config(cudnnBackendDescriptor_t cfg) {
    return finish_plan(*this, CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG,
                       CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &cfg);
}

bool pbw_dnn_plan::load(const char *path, const char *header) {
    size_t n = 0;
    char *text = (char *)pbw_cache_read_file(path, (size_t)64 << 20, &n);
    const size_t hl = std::strlen(header);
    bool ok = text && n > hl && !std::memcmp(text, header, hl) &&
              finish_plan(*this, CUDNN_ATTR_EXECUTION_PLAN_JSON_REPRESENTATION, CUDNN_TYPE_CHAR,
                          (int64_t)(n - hl), text + hl);
    std::free(text);
    from_file = ok;
    return ok;
}

void pbw_dnn_plan::save(const char *path, const char *header) const {
    int64_t n = 0;
    if (!plan ||
        cudnnBackendGetAttribute(plan, CUDNN_ATTR_EXECUTION_PLAN_JSON_REPRESENTATION,
                                 CUDNN_TYPE_CHAR, 0, &n, nullptr) != CUDNN_STATUS_SUCCESS ||
        n <= 0)
        return;
    const size_t hl = std::strlen(header);
    std::vector<char> buf(hl + (size_t)n + 1, 0);
    std::memcpy(buf.data(), header, hl);
    if (cudnnBackendGetAttribute(plan, CUDNN_ATTR_EXECUTION_PLAN_JSON_REPRESENTATION,
                                 CUDNN_TYPE_CHAR, n, &n, buf.data() + hl) != CUDNN_STATUS_SUCCESS)
        return;
    size_t len = hl + (size_t)n;
    while (len > hl && buf[len - 1] == 0)
        len--; // the JSON's own terminator, if counted
    pbw_cache_write_file(path, buf.data(), len);
}

cudnnStatus_t pbw_dnn_plan::execute(int n, const int64_t *uids, void *const *ptrs) const {
    if (!plan)
        return CUDNN_STATUS_NOT_INITIALIZED;
    void *ws = ws_bytes > 0 ? pbw_cuda_workspace((size_t)ws_bytes) : nullptr;
    if (ws_bytes > 0 && !ws)
        return CUDNN_STATUS_ALLOC_FAILED;
    cudnnBackendDescriptor_t vp = nullptr;
    cudnnStatus_t st = cudnnBackendCreateDescriptor(CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR, &vp);
    if (st == CUDNN_STATUS_SUCCESS)
        st = cudnnBackendSetAttribute(vp, CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, CUDNN_TYPE_INT64, n,
                                      uids);
    if (st == CUDNN_STATUS_SUCCESS)
        st = cudnnBackendSetAttribute(vp, CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS,
                                      CUDNN_TYPE_VOID_PTR, n, ptrs);
    if (st == CUDNN_STATUS_SUCCESS)
        st = cudnnBackendSetAttribute(vp, CUDNN_ATTR_VARIANT_PACK_WORKSPACE, CUDNN_TYPE_VOID_PTR, 1,
                                      &ws);
    if (st == CUDNN_STATUS_SUCCESS)
        st = cudnnBackendFinalize(vp);
    if (st == CUDNN_STATUS_SUCCESS)
        st = cudnnBackendExecute(pbw_cudnn(), plan, vp);
    if (vp)
        cudnnBackendDestroyDescriptor(vp);
    return st;
}

bool pbw_dnn_plan_path(const char *kind, char *path, size_t n) {
    return !pbw_env_zero("PBW_CUDNN_CACHE") &&
           pbw_cuda_cache_file(kind, cudnnGetVersion(), path, n, nullptr) == 0;
}

void pbw_dnn_forget_error(void) {
#if CUDNN_MAJOR >= 9
    char msg[256];
    cudnnGetLastErrorString(msg, sizeof msg);
#endif
}
