// bench_cudnn_graph.cuh: for the benchmarks that build cuDNN operation graphs with the backend C
// API (bench/cudnn_*.cu): descriptors freed with their owner, tensors and pointwise operations,
// the heuristic's engine configs, and the loop that builds each config into a plan, runs it,
// checks its output and times it.
//
//   Desc x(CUDNN_BACKEND_TENSOR_DESCRIPTOR);
//   make_tensor(x, UID_X, CUDNN_DATA_BFLOAT16, {1, R, I}, {R * I, I, 1}, false);
//   ... the operations and the graph (finalize with DNN_TRY: cuDNN may refuse them) ...
//   ConfigResults res;
//   try_configs(graph, flop, [&](const Desc &cfg, PlanRun *r) {
//       return run_plan(dnn, cfg, {UID_X, ...}, {x_ptr, ...}, clear_output, check_output, r);
//   }, &res);
#ifndef PBW_BENCH_CUDNN_GRAPH_CUH
#define PBW_BENCH_CUDNN_GRAPH_CUH

#include <cudnn.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

#include "bench_cuda_check.cuh"

// A cuDNN call that must not fail (descriptor creation, attributes, the handle): prints the call,
// file, line and cuDNN's status string, and exits.
#define DNN_CK(x)                                                                                  \
    do {                                                                                           \
        const cudnnStatus_t s_ = (x);                                                              \
        if (s_ != CUDNN_STATUS_SUCCESS) {                                                          \
            fprintf(stderr, "%s:%d: %s -> %s\n", __FILE__, __LINE__, #x, cudnnGetErrorString(s_)); \
            exit(1);                                                                               \
        }                                                                                          \
    } while (0)

// A cuDNN call that may refuse this graph or engine config (finalizing operations, the graph, the
// heuristic, a plan; executing it): records why and returns the status from the calling
// function, so that the config is skipped rather than the run ended.
#define DNN_TRY(x)                                                                                 \
    do {                                                                                           \
        dnn_forget_last_error();                                                                   \
        const cudnnStatus_t s_ = (x);                                                              \
        if (s_ != CUDNN_STATUS_SUCCESS) {                                                          \
            dnn_note_failure(#x, s_);                                                              \
            return s_;                                                                             \
        }                                                                                          \
    } while (0)

// cuDNN's error and warning log (9.x; CUDNN_LOGERR_DBG=1, deprecated, still works in 9.x too)
static const char *const DNN_LOG_HINT = "CUDNN_LOGLEVEL_DBG=2 CUDNN_LOGDEST_DBG=stderr";

// The last DNN_TRY that failed: the call, status and cuDNN's message.
static std::string dnn_last_failure;

// Reads cuDNN's last error message away, so that the one dnn_note_failure reads is the call's.
static inline void dnn_forget_last_error() {
    char msg[512];
    cudnnGetLastErrorString(msg, sizeof msg);
}

static inline void dnn_note_failure(const char *call, cudnnStatus_t s) {
    char msg[512] = "";
    cudnnGetLastErrorString(msg, sizeof msg);
    dnn_last_failure = std::string(call) + ": " + cudnnGetErrorString(s);
    if (msg[0])
        dnn_last_failure += std::string(" (") + msg + ")";
}

// One backend descriptor, destroyed with its owner (early returns included).
struct Desc {
    cudnnBackendDescriptor_t d = nullptr;
    explicit Desc(cudnnBackendDescriptorType_t type) {
        DNN_CK(cudnnBackendCreateDescriptor(type, &d));
    }
    Desc(Desc &&o) noexcept : d(o.d) { o.d = nullptr; }
    Desc(const Desc &) = delete;
    Desc &operator=(const Desc &) = delete;
    Desc &operator=(Desc &&) = delete;
    ~Desc() {
        if (d)
            DNN_CK(cudnnBackendDestroyDescriptor(d));
    }
};

static inline void set(const Desc &desc, cudnnBackendAttributeName_t name,
                       cudnnBackendAttributeType_t type, int64_t n, const void *values) {
    const cudnnStatus_t s = cudnnBackendSetAttribute(desc.d, name, type, n, values);
    if (s != CUDNN_STATUS_SUCCESS) {
        fprintf(stderr, "cudnnBackendSetAttribute(attribute %d, type %d) -> %s\n", (int)name,
                (int)type, cudnnGetErrorString(s));
        exit(1);
    }
}

static inline void set_desc(const Desc &desc, cudnnBackendAttributeName_t name, const Desc &value) {
    set(desc, name, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &value.d);
}

// A tensor of the given dimensions and strides (in elements), 16-byte aligned.
static inline void make_tensor(const Desc &t, int64_t uid, cudnnDataType_t type,
                               const std::vector<int64_t> &dims,
                               const std::vector<int64_t> &strides, bool is_virtual) {
    const int64_t alignment = 16;
    set(t, CUDNN_ATTR_TENSOR_DATA_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &type);
    set(t, CUDNN_ATTR_TENSOR_DIMENSIONS, CUDNN_TYPE_INT64, (int64_t)dims.size(), dims.data());
    set(t, CUDNN_ATTR_TENSOR_STRIDES, CUDNN_TYPE_INT64, (int64_t)strides.size(), strides.data());
    set(t, CUDNN_ATTR_TENSOR_UNIQUE_ID, CUDNN_TYPE_INT64, 1, &uid);
    set(t, CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, CUDNN_TYPE_INT64, 1, &alignment);
    set(t, CUDNN_ATTR_TENSOR_IS_VIRTUAL, CUDNN_TYPE_BOOLEAN, 1, &is_virtual);
    DNN_CK(cudnnBackendFinalize(t.d));
}

// A pointwise operation's descriptor: `mode` computed in fp32 (its attributes, such as SWISH's
// beta, set by the caller before finalizing).
static inline void make_pointwise(const Desc &pw, cudnnPointwiseMode_t mode) {
    const cudnnDataType_t f32 = CUDNN_DATA_FLOAT;
    set(pw, CUDNN_ATTR_POINTWISE_MODE, CUDNN_TYPE_POINTWISE_MODE, 1, &mode);
    set(pw, CUDNN_ATTR_POINTWISE_MATH_PREC, CUDNN_TYPE_DATA_TYPE, 1, &f32);
}

// The matmul c = a b with fp32 sums: its descriptor mm and operation mm_op, both finalized.
static inline cudnnStatus_t make_matmul(const Desc &mm, const Desc &mm_op, const Desc &a,
                                        const Desc &b, const Desc &c) {
    const cudnnDataType_t f32 = CUDNN_DATA_FLOAT;
    set(mm, CUDNN_ATTR_MATMUL_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &f32);
    DNN_TRY(cudnnBackendFinalize(mm.d));
    set_desc(mm_op, CUDNN_ATTR_OPERATION_MATMUL_ADESC, a);
    set_desc(mm_op, CUDNN_ATTR_OPERATION_MATMUL_BDESC, b);
    set_desc(mm_op, CUDNN_ATTR_OPERATION_MATMUL_CDESC, c);
    set_desc(mm_op, CUDNN_ATTR_OPERATION_MATMUL_DESC, mm);
    DNN_TRY(cudnnBackendFinalize(mm_op.d));
    return CUDNN_STATUS_SUCCESS;
}

// The operation y = pw(x [, b]) (pw finalized), alpha1 = alpha2 = 1.
static inline cudnnStatus_t make_pointwise_op(const Desc &op, const Desc &pw, const Desc &x,
                                              const Desc *b, const Desc &y) {
    const float one = 1.0f;
    set_desc(op, CUDNN_ATTR_OPERATION_POINTWISE_PW_DESCRIPTOR, pw);
    set_desc(op, CUDNN_ATTR_OPERATION_POINTWISE_XDESC, x);
    if (b)
        set_desc(op, CUDNN_ATTR_OPERATION_POINTWISE_BDESC, *b);
    set_desc(op, CUDNN_ATTR_OPERATION_POINTWISE_YDESC, y);
    set(op, CUDNN_ATTR_OPERATION_POINTWISE_ALPHA1, CUDNN_TYPE_FLOAT, 1, &one);
    if (b)
        set(op, CUDNN_ATTR_OPERATION_POINTWISE_ALPHA2, CUDNN_TYPE_FLOAT, 1, &one);
    DNN_TRY(cudnnBackendFinalize(op.d));
    return CUDNN_STATUS_SUCCESS;
}

// The engine configs heuristic `mode` proposes for `graph`, best first; none (and *status the
// failure) where the heuristic fails.
static inline std::vector<Desc> engine_configs(const Desc &graph, cudnnBackendHeurMode_t mode,
                                               cudnnStatus_t *status) {
    std::vector<Desc> cfgs;
    *status = [&]() -> cudnnStatus_t {
        Desc heur(CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR);
        set_desc(heur, CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, graph);
        set(heur, CUDNN_ATTR_ENGINEHEUR_MODE, CUDNN_TYPE_HEUR_MODE, 1, &mode);
        DNN_TRY(cudnnBackendFinalize(heur.d));
        int64_t n = 0;
        DNN_TRY(cudnnBackendGetAttribute(heur.d, CUDNN_ATTR_ENGINEHEUR_RESULTS,
                                         CUDNN_TYPE_BACKEND_DESCRIPTOR, 0, &n, nullptr));
        if (n <= 0)
            return CUDNN_STATUS_SUCCESS;
        // cuDNN fills in engine config descriptors of ours
        cfgs.reserve((size_t)n);
        std::vector<cudnnBackendDescriptor_t> raw;
        for (int64_t i = 0; i < n; i++) {
            cfgs.emplace_back(CUDNN_BACKEND_ENGINECFG_DESCRIPTOR);
            raw.push_back(cfgs.back().d);
        }
        int64_t got = 0;
        DNN_TRY(cudnnBackendGetAttribute(heur.d, CUDNN_ATTR_ENGINEHEUR_RESULTS,
                                         CUDNN_TYPE_BACKEND_DESCRIPTOR, n, &got, raw.data()));
        while ((int64_t)cfgs.size() > got)
            cfgs.pop_back();
        return CUDNN_STATUS_SUCCESS;
    }();
    if (*status != CUDNN_STATUS_SUCCESS)
        cfgs.clear();
    return cfgs;
}

// "engine N", and ", runtime-compiled" where cuDNN notes it (the runtime-fusion engines).
static inline std::string describe_engine(const Desc &cfg) {
    Desc engine(CUDNN_BACKEND_ENGINE_DESCRIPTOR);
    int64_t n = 0, index = -1;
    if (cudnnBackendGetAttribute(cfg.d, CUDNN_ATTR_ENGINECFG_ENGINE, CUDNN_TYPE_BACKEND_DESCRIPTOR,
                                 1, &n, &engine.d) != CUDNN_STATUS_SUCCESS)
        return "engine ?";
    if (cudnnBackendGetAttribute(engine.d, CUDNN_ATTR_ENGINE_GLOBAL_INDEX, CUDNN_TYPE_INT64, 1, &n,
                                 &index) != CUDNN_STATUS_SUCCESS)
        index = -1;
    std::string s = "engine " + std::to_string(index);
    cudnnBackendBehaviorNote_t notes[CUDNN_BEHAVIOR_NOTE_TYPE_COUNT];
    if (cudnnBackendGetAttribute(engine.d, CUDNN_ATTR_ENGINE_BEHAVIOR_NOTE,
                                 CUDNN_TYPE_BEHAVIOR_NOTE, CUDNN_BEHAVIOR_NOTE_TYPE_COUNT, &n,
                                 notes) != CUDNN_STATUS_SUCCESS)
        n = 0;
    for (int64_t i = 0; i < n; i++)
        if (notes[i] == CUDNN_BEHAVIOR_NOTE_RUNTIME_COMPILATION)
            s += ", runtime-compiled";
    return s;
}

// Device memory freed with its owner.
struct DevBuf {
    void *p = nullptr;
    explicit DevBuf(size_t bytes) {
        if (bytes)
            CK(cudaMalloc(&p, bytes));
    }
    DevBuf(const DevBuf &) = delete;
    DevBuf &operator=(const DevBuf &) = delete;
    ~DevBuf() {
        if (p)
            CK(cudaFree(p));
    }
};

static inline double ms_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

struct PlanRun {
    double build_ms;   // host time of the plan's finalize (its first build for this config)
    int64_t ws_bytes;  // its workspace
    float us;          // median time of one execution
    double err, scale; // the check's largest difference and the reference's largest magnitude
};

static inline bool mismatch(double err, double scale) { return !(err <= 2e-2 * scale); }

// Builds `cfg` into an execution plan, binds uids[i] to ptrs[i], runs it once after clear() (so
// that a plan that writes nothing cannot pass on an earlier one's output), check(&err, &scale)s
// its output, and times it (median of 20 runs after 3); a status other than success means the
// config was refused (dnn_last_failure says where).
static inline cudnnStatus_t
run_plan(cudnnHandle_t dnn, const Desc &cfg, const std::vector<int64_t> &uids,
         const std::vector<void *> &ptrs, const std::function<void()> &clear,
         const std::function<void(double *, double *)> &check, PlanRun *out) {
    Desc plan(CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR);
    set(plan, CUDNN_ATTR_EXECUTION_PLAN_HANDLE, CUDNN_TYPE_HANDLE, 1, &dnn);
    set_desc(plan, CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG, cfg);
    const auto t0 = std::chrono::steady_clock::now();
    DNN_TRY(cudnnBackendFinalize(plan.d)); // runtime fusion generates and compiles its kernel here
    out->build_ms = ms_since(t0);
    int64_t n = 0;
    DNN_CK(cudnnBackendGetAttribute(plan.d, CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE,
                                    CUDNN_TYPE_INT64, 1, &n, &out->ws_bytes));
    DevBuf ws((size_t)out->ws_bytes);
    Desc pack(CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR);
    set(pack, CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, CUDNN_TYPE_INT64, (int64_t)uids.size(),
        uids.data());
    set(pack, CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS, CUDNN_TYPE_VOID_PTR, (int64_t)ptrs.size(),
        ptrs.data());
    set(pack, CUDNN_ATTR_VARIANT_PACK_WORKSPACE, CUDNN_TYPE_VOID_PTR, 1, &ws.p);
    DNN_CK(cudnnBackendFinalize(pack.d));
    clear();
    DNN_TRY(cudnnBackendExecute(dnn, plan.d, pack.d));
    CK(cudaDeviceSynchronize());
    check(&out->err, &out->scale);
    out->us =
        1e3f * bench_median_ms([&] { DNN_CK(cudnnBackendExecute(dnn, plan.d, pack.d)); }, 3, 20);
    CK(cudaGetLastError());
    return CUDNN_STATUS_SUCCESS;
}

// The plans try_configs ran: runs[i] came from cfgs[run_cfg[i]]; best, the fastest whose output
// matches (the fastest of all where none does).
struct ConfigResults {
    std::vector<Desc> cfgs;
    std::vector<PlanRun> runs;
    std::vector<size_t> run_cfg;
    int refused = 0;
    size_t best = 0;
};

// Every engine config heuristic mode A proposes for `graph` (B, then FALLBACK, only where A gives
// no working plan), each given to run() (run_plan with the graph's operands), a line each with
// its rate for `flop` operations; with PBW_BENCH_CONFIG=I set, config I alone (a config that
// faults takes the process with it). False when no plan worked.
static inline bool try_configs(const Desc &graph, double flop,
                               const std::function<cudnnStatus_t(const Desc &, PlanRun *)> &run,
                               ConfigResults *res) {
    for (cudnnBackendHeurMode_t mode :
         {CUDNN_HEUR_MODE_A, CUDNN_HEUR_MODE_B, CUDNN_HEUR_MODE_FALLBACK}) {
        const char *name = mode == CUDNN_HEUR_MODE_A   ? "A"
                           : mode == CUDNN_HEUR_MODE_B ? "B"
                                                       : "FALLBACK";
        cudnnStatus_t st;
        std::vector<Desc> got = engine_configs(graph, mode, &st);
        if (st != CUDNN_STATUS_SUCCESS)
            printf("  heuristic mode %s failed: %s\n", name, dnn_last_failure.c_str());
        else
            printf("  heuristic mode %s: %zu engine configs\n", name, got.size());
        const char *only = getenv("PBW_BENCH_CONFIG");
        for (Desc &cfg : got) {
            const size_t k = res->cfgs.size();
            res->cfgs.push_back(std::move(cfg));
            if (only && atoi(only) != (int)k)
                continue;
            const std::string what = describe_engine(res->cfgs[k]);
            PlanRun r;
            if (run(res->cfgs[k], &r) != CUDNN_STATUS_SUCCESS) {
                res->refused++;
                printf("    config %zu (%s): refused: %s\n", k, what.c_str(),
                       dnn_last_failure.c_str());
                continue;
            }
            printf("    config %zu (%s): plan built in %.1f ms, workspace %lld B: %.1f us (%.0f "
                   "TFLOP/s), max abs diff %.2e of %.2f%s\n",
                   k, what.c_str(), r.build_ms, (long long)r.ws_bytes, r.us, flop / r.us * 1e-6,
                   r.err, r.scale, mismatch(r.err, r.scale) ? "  MISMATCH" : "");
            res->runs.push_back(r);
            res->run_cfg.push_back(k);
        }
        if (!res->runs.empty())
            break;
    }
    if (res->runs.empty()) {
        printf("  cuDNN: no working plan (%zu engine configs, %d refused, statuses above); %s "
               "says why\n",
               res->cfgs.size(), res->refused, DNN_LOG_HINT);
        return false;
    }
    res->best = 0;
    for (size_t i = 1; i < res->runs.size(); i++) {
        const PlanRun &a = res->runs[i], &b = res->runs[res->best];
        const bool bad_a = mismatch(a.err, a.scale), bad_b = mismatch(b.err, b.scale);
        if (bad_a != bad_b ? bad_b : a.us < b.us)
            res->best = i;
    }
    return true;
}

// The summary line of try_configs' best plan beside the unfused sequence's t_seq us.
static inline void print_best(const ConfigResults &res, double flop, double t_seq) {
    const PlanRun &r = res.runs[res.best];
    const size_t k = res.run_cfg[res.best];
    printf("  cuDNN fused, fastest of %zu working plans (%d refused; config %zu, %s): %.1f us "
           "(%.0f TFLOP/s), %.2fx the sequence; plan build %.1f ms; max abs diff %.2e of "
           "%.2f%s\n",
           res.runs.size(), res.refused, k, describe_engine(res.cfgs[k]).c_str(), r.us,
           flop / r.us * 1e-6, t_seq / r.us, r.build_ms, r.err, r.scale,
           mismatch(r.err, r.scale) ? "  MISMATCH" : "");
}

#endif
