// pbw_cuda_dnn.cuh: cuDNN's backend (graph) API as the CUDA backend uses it (not a public
// header): building an operation graph's descriptors, listing the engine configs cuDNN's
// heuristic proposes for it, finalizing execution plans, running them, and keeping a plan in the
// cache folder as cuDNN's JSON of it. pbw_cuda_fusion.cu (fc1 with its QuickGELU) and
// pbw_cuda_conv.cu (a convolution's engine configs measured beside the legacy API's algorithms)
// build on it.
//
//   pbw_dnn_graph g;                          // owns every descriptor made through it
//   cudnnBackendDescriptor_t x = g.tensor(UID_X, CUDNN_DATA_BFLOAT16, 3, dims, strides, false);
//   ...
//   cudnnBackendDescriptor_t graph = g.graph(ops, nops);
//   std::vector<cudnnBackendDescriptor_t> cfgs = g.configs(graph, 16);
//   pbw_dnn_plan plan;                         // one execution plan, owned
//   if (plan.from_config(cfgs[0])) plan.execute(3, uids, ptrs);
//
// Descriptors are destroyed in the reverse order of their making. Nothing here synchronizes;
// plans run on pbw_stream() (the handle pbw_cudnn() is bound to it) and may be captured in
// CUDA graphs.
#ifndef PBW_CUDA_DNN_CUH
#define PBW_CUDA_DNN_CUH

#include <cudnn.h>
#include <stdint.h>

#include <vector>

// The descriptors of one operation graph; the first failing call sets st and the rest are
// skipped (each returns NULL or does nothing), so a chain of calls is checked once at its end.
struct pbw_dnn_graph {
    cudnnStatus_t st = CUDNN_STATUS_SUCCESS;
    std::vector<cudnnBackendDescriptor_t> descs;

    pbw_dnn_graph() = default;
    pbw_dnn_graph(const pbw_dnn_graph &) = delete;
    pbw_dnn_graph &operator=(const pbw_dnn_graph &) = delete;
    ~pbw_dnn_graph() { clear(); }
    void clear(); // destroys every descriptor (newest first); st back to success

    cudnnBackendDescriptor_t make(cudnnBackendDescriptorType_t t);
    void set(cudnnBackendDescriptor_t d, cudnnBackendAttributeName_t a,
             cudnnBackendAttributeType_t t, int64_t n, const void *v);
    void set_desc(cudnnBackendDescriptor_t d, cudnnBackendAttributeName_t a,
                  cudnnBackendDescriptor_t v) {
        set(d, a, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &v);
    }
    void finalize(cudnnBackendDescriptor_t d);
    // A finalized tensor of nd dimensions, 16-byte aligned (the caller checks its pointers).
    cudnnBackendDescriptor_t tensor(int64_t uid, cudnnDataType_t type, int nd, const int64_t *dims,
                                    const int64_t *strides, bool is_virtual);
    // The pointwise operation y = mode(x [, b]) computed in fp32; swish_beta for SWISH_FWD.
    cudnnBackendDescriptor_t pointwise(cudnnPointwiseMode_t mode, cudnnBackendDescriptor_t x,
                                       cudnnBackendDescriptor_t b, cudnnBackendDescriptor_t y,
                                       double swish_beta = 1.0);
    // The finalized operation graph of ops on pbw_cudnn().
    cudnnBackendDescriptor_t graph(const cudnnBackendDescriptor_t *ops, int64_t n);
    // The engine configs heuristic mode A proposes for graph, best first, at most max.
    std::vector<cudnnBackendDescriptor_t> configs(cudnnBackendDescriptor_t graph, int64_t max);
};

// Whether an engine config's engine compiles its kernel when a plan is made (runtime fusion:
// NVRTC, 0.3-1 s a plan) and whether cuDNN notes its results as nondeterministic.
struct pbw_dnn_notes {
    bool runtime_compiled, nondeterministic;
    int64_t engine; // the engine's global index, -1 when unknown
};
pbw_dnn_notes pbw_dnn_config_notes(cudnnBackendDescriptor_t cfg);

// One execution plan and its workspace size; owns the plan descriptor (not the graph's).
struct pbw_dnn_plan {
    cudnnBackendDescriptor_t plan = nullptr;
    int64_t ws_bytes = 0;
    bool from_file = false; // made from a cache file (load)

    pbw_dnn_plan() = default;
    pbw_dnn_plan(const pbw_dnn_plan &) = delete;
    pbw_dnn_plan &operator=(const pbw_dnn_plan &) = delete;
    ~pbw_dnn_plan() { reset(); }
    void reset();
    void swap(pbw_dnn_plan &o);
    bool ok() const { return plan != nullptr; }
    // Finalized from an engine config of a graph; false (nothing kept) when cuDNN refuses it.
    bool from_config(cudnnBackendDescriptor_t cfg);
    // From the cache file at path, when it begins with header and cuDNN takes the JSON after it
    // (a plan of the same graph saved by an earlier process, its compiled kernel included).
    bool load(const char *path, const char *header);
    // Writes header, then cuDNN's JSON of the plan, to path (temporary file, then rename); a
    // plan not written is only slower to make next time.
    void save(const char *path, const char *header) const;
    // Runs the plan with uids[i] bound to ptrs[i] and the runtime's workspace.
    cudnnStatus_t execute(int n, const int64_t *uids, void *const *ptrs) const;
};

// The path of a plan file `kind` (pbw_cuda_cache_file, for this GPU and cuDNN's version); false
// when PBW_CUDNN_CACHE=0 or the cache folder has no place.
bool pbw_dnn_plan_path(const char *kind, char *path, size_t n);

// Clears cuDNN's last error message after a refusal that is no failure of ours (a config
// refused, a plan file cuDNN no longer takes).
void pbw_dnn_forget_error(void);

#endif
