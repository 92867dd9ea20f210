// pbw_cuda.cu: the CUDA backend's runtime: device discovery and self-test, the stream and the
// library handles, device memory and copies, precision mode, sticky errors (see pbw_cuda.h).
#include <cuda_profiler_api.h>
#include <cuda_runtime.h>

#include <atomic>
#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <vector>

#include "core/pbw_cache.h"
#include "cuda/pbw_cuda.h"
#include "cuda/pbw_cuda_internal.cuh"

// ---- sticky errors ----

static char g_err[512];
static std::atomic<int> g_failed{0};
static std::mutex g_err_mu;

extern "C" void pbw_cuda_fail(const char *fmt, ...) {
    std::lock_guard<std::mutex> lk(g_err_mu);
    if (g_failed.load()) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g_err, sizeof g_err, fmt, ap);
    va_end(ap);
    g_failed.store(1);
}

extern "C" const char *pbw_cuda_error(void) { return g_failed.load() ? g_err : nullptr; }

extern "C" void pbw_cuda_clear_error(void) {
    std::lock_guard<std::mutex> lk(g_err_mu);
    g_failed.store(0);
    g_err[0] = 0;
}

// ---- CUDA graph capture state (see the graphs section below) ----

static int g_capturing, g_capture_broken, g_capture_grew;
static void capture_refuse(const char *what, int grew);
static void *capture_stage(const void *src, size_t bytes, void *dst);
static std::vector<void *> g_deferred_free; // pbw_cuda_free calls made while capturing

// ---- device, stream, handles ----

static int g_dev = -1;
static cudnnHandle_t g_cudnn; // one handle: its stream follows the current lane
static pbw_precision g_prec = PBW_PREC_FP32;

// A lane: a stream with the library state that work on it must not share with work that may
// run beside it (see pbw_cuda_lane_wait in pbw_cuda.h). Lane 0 is made by pbw_cuda_init, lane
// 1 on its first use.
struct lane {
    cudaStream_t stream;
    cublasHandle_t cublas; // bound to stream, with a workspace of its own
    cudaEvent_t mark; // recorded when another lane waits for this one's work
};
static lane g_lanes[PBW_CUDA_LANES];
static int g_lane;                     // the current lane
static int g_lanes_made = 1;           // lanes made so far (lane 0 at init)

static void apply_math_mode(void) {
    cublasMath_t m = CUBLAS_DEFAULT_MATH;
    if (g_prec == PBW_PREC_FP32) m = CUBLAS_PEDANTIC_MATH;
    else if (g_prec == PBW_PREC_TF32) m = CUBLAS_TF32_TENSOR_OP_MATH;
    for (int i = 0; i < g_lanes_made; i++)
        if (g_lanes[i].cublas) cublasSetMathMode(g_lanes[i].cublas, m);
}

// Lane i's stream, cuBLAS handle (bound to it, with a workspace of its own: cuBLAS then
// allocates nothing itself, which graph capture needs) and event. 0, or -1 (nothing kept).
static int lane_make(int i) {
    lane &l = g_lanes[i];
    if (cudaStreamCreateWithFlags(&l.stream, cudaStreamNonBlocking) != cudaSuccess) {
        cudaGetLastError();
        l.stream = nullptr;
        return -1;
    }
    void *cws = nullptr;
    if (cudaEventCreateWithFlags(&l.mark, cudaEventDisableTiming) != cudaSuccess ||
        cublasCreate(&l.cublas) != CUBLAS_STATUS_SUCCESS) {
        cudaGetLastError();
        if (l.mark) cudaEventDestroy(l.mark);
        cudaStreamDestroy(l.stream);
        l = lane();
        return -1;
    }
    cublasSetStream(l.cublas, l.stream);
    if ((cws = pbw_cuda_malloc((size_t)32 << 20))) // counted as pbw's memory
        cublasSetWorkspace(l.cublas, cws, (size_t)32 << 20);
    return 0;
}

extern "C" int pbw_cuda_init(int dev, pbw_err *err) {
    if (g_dev == dev) return 0;
    if (g_dev >= 0)
        return pbw_err_set(err, "cuda:%d: this process already uses cuda:%d", dev, g_dev);
    int n = pbw_cuda_device_count();
    if (dev < 0 || dev >= n)
        return pbw_err_set(err, "cuda:%d: no such device (%d found)", dev, n);
    cudaError_t e = cudaSetDevice(dev);
    if (e != cudaSuccess) return pbw_err_set(err, "cuda:%d: %s", dev, cudaGetErrorString(e));
    if (lane_make(0))
        return pbw_err_set(err, "cuda:%d: cannot create a stream and a cuBLAS handle", dev);
    cudnnStatus_t ds = cudnnCreate(&g_cudnn);
    if (ds != CUDNN_STATUS_SUCCESS)
        return pbw_err_set(err, "cuda:%d: cannot create a cuDNN handle: %s", dev, cudnnGetErrorString(ds));
    cudnnSetStream(g_cudnn, pbw_stream());
    g_dev = dev;
    apply_math_mode();
    return 0;
}

extern "C" int pbw_cuda_current(void) { return g_dev; }

int pbw_cuda_cache_file(const char *kind, size_t version, char *path, size_t n, FILE **f) {
    if (f) *f = nullptr;
    cudaDeviceProp prop;
    if (cudaGetDeviceProperties(&prop, g_dev) != cudaSuccess) {
        cudaGetLastError();
        return -1;
    }
    if (pbw_cache_path(kind, prop.name, version, path, n)) return -1;
    if (f) *f = std::fopen(path, "r");
    return 0;
}

int pbw_cuda_sm_count(void) {
    static int dev = -1, count = 1;
    if (g_dev >= 0 && dev != g_dev) {
        int n = 0;
        if (cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, g_dev) == cudaSuccess &&
            n > 0)
            count = n;
        else
            cudaGetLastError();
        dev = g_dev;
    }
    return count;
}

bool pbw_cuda_pdl(void) {
    static int dev = -1, off = -1;
    static bool ok = false;
    if (off < 0) off = pbw_env_zero("PBW_CUDA_PDL");
    if (g_dev >= 0 && dev != g_dev) {
        int major = 0;
        if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, g_dev) != cudaSuccess)
            cudaGetLastError();
        ok = major >= 9;
        dev = g_dev;
    }
    return ok && !off;
}

cudaStream_t pbw_stream(void) { return g_lanes[g_lane].stream; }
cublasHandle_t pbw_cublas(void) { return g_lanes[g_lane].cublas; }
cudnnHandle_t pbw_cudnn(void) { return g_cudnn; }

extern "C" void *pbw_cuda_lane_buffer(pbw_lane_buffer *b, size_t bytes, size_t min,
                                      const char *what) {
    const int l = g_lane;
    if (bytes <= b->size[l] && b->p[l]) return b->p[l];
    if (g_capturing) { // the graph would replay into the old buffer, or a new one freed later
        if (what) {
            char why[96];
            snprintf(why, sizeof why, "%s grew", what);
            capture_refuse(why, 1);
        }
        return nullptr;
    }
    pbw_cuda_free(b->p[l]); // waits for kernels still using it
    b->p[l] = nullptr;
    b->size[l] = 0;
    // min, or a quarter more than asked, so that sizes creeping up do not reallocate each time
    size_t want = bytes <= min ? min : bytes + bytes / 4;
    if (!(b->p[l] = pbw_cuda_malloc(want))) want = bytes, b->p[l] = pbw_cuda_malloc(bytes);
    if (!b->p[l]) {
        if (what) pbw_cuda_fail("out of GPU memory for %zu bytes of %s", bytes, what);
        return nullptr;
    }
    b->size[l] = want;
    return b->p[l];
}

static pbw_lane_buffer g_workspace;

void *pbw_cuda_workspace(size_t bytes) {
    return pbw_cuda_lane_buffer(&g_workspace, bytes, (size_t)32 << 20, "a library workspace");
}

// ---- lanes ----

static cudaError_t sync_lanes(void);

void pbw_cuda_wait_lanes(void) {
    if (!g_capturing && g_dev >= 0) sync_lanes();
}

extern "C" int pbw_cuda_lane(void) { return g_lane; }

extern "C" int pbw_cuda_lanes_on(void) { // read at each call: tests compare both ways
    return g_dev >= 0 && !pbw_env_zero("PBW_CUDA_LANES");
}

static long g_lane_waits;
extern "C" long pbw_cuda_lane_waits(void) { return g_lane_waits; }

extern "C" void pbw_cuda_lane_set(int i) {
    if (i < 0 || i >= g_lanes_made || i == g_lane) return;
    g_lane = i;
    cudnnSetStream(g_cudnn, pbw_stream());
}

extern "C" int pbw_cuda_lane_wait(int waiter, int on) {
    if (!pbw_cuda_lanes_on() || waiter < 0 || on < 0 || waiter >= PBW_CUDA_LANES ||
        on >= PBW_CUDA_LANES || waiter == on)
        return 0;
    for (int i = g_lanes_made; i <= waiter || i <= on; i++) {
        if (g_capturing) { // a stream made now would not be part of the recording
            capture_refuse("a lane made while recording", 1);
            return -1;
        }
        if (lane_make(i)) {
            pbw_cuda_fail("cannot create the stream of GPU lane %d", i);
            return -1;
        }
        g_lanes_made = i + 1;
        apply_math_mode();
    }
    cudaError_t e = cudaEventRecord(g_lanes[on].mark, g_lanes[on].stream);
    if (e == cudaSuccess) e = cudaStreamWaitEvent(g_lanes[waiter].stream, g_lanes[on].mark, 0);
    if (e != cudaSuccess) {
        cudaGetLastError();
        pbw_cuda_fail("a wait between GPU lanes: %s", cudaGetErrorString(e));
        return -1;
    }
    g_lane_waits++;
    return 1;
}

// Waits for every lane made (a read-back or a free may concern work on any of them).
static cudaError_t sync_lanes(void) {
    cudaError_t first = cudaSuccess;
    for (int i = 0; i < g_lanes_made; i++) {
        cudaError_t e = cudaStreamSynchronize(g_lanes[i].stream);
        if (first == cudaSuccess) first = e;
    }
    return first;
}

extern "C" void pbw_cuda_set_precision(pbw_precision p) {
    g_prec = p;
    apply_math_mode();
}
extern "C" pbw_precision pbw_cuda_precision(void) { return g_prec; }

extern "C" int pbw_precision_parse(const char *s, pbw_precision *p) {
    static const char *names[] = {"fp32", "tf32", "bf16", "fp16"};
    for (int i = 0; i < 4; i++)
        if (s && !strcmp(s, names[i])) {
            *p = (pbw_precision)i;
            return 0;
        }
    return -1;
}

extern "C" const char *pbw_precision_name(pbw_precision p) {
    static const char *names[] = {"fp32", "tf32", "bf16", "fp16"};
    return (int)p >= 0 && (int)p < 4 ? names[p] : "?";
}

// ---- memory ----

static std::atomic<size_t> g_used{0}, g_peak{0};
static std::mutex g_mem_mu;
static std::vector<std::pair<void *, size_t>> g_sizes; // live blocks, for accounting

extern "C" void *pbw_cuda_malloc(size_t bytes) {
    void *p = nullptr;
    if (bytes == 0) bytes = 1;
    if (cudaMalloc(&p, bytes) != cudaSuccess) {
        cudaGetLastError();
        return nullptr;
    }
    std::lock_guard<std::mutex> lk(g_mem_mu);
    g_sizes.emplace_back(p, bytes);
    size_t u = g_used.fetch_add(bytes) + bytes;
    if (u > g_peak.load()) g_peak.store(u);
    return p;
}

static std::vector<std::pair<const char *, size_t>> g_weight_blocks;
void pbw_cuda_nn_forget_weights(const void *p, size_t bytes);     // pbw_cuda_nn.cu
void pbw_cuda_fusion_forget_weights(const void *p, size_t bytes); // pbw_cuda_fusion.cu

extern "C" void pbw_cuda_weights_block(const void *p, size_t bytes) {
    g_weight_blocks.emplace_back((const char *)p, bytes);
}

extern "C" int pbw_cuda_is_weight(const void *p, size_t bytes) {
    const char *c = (const char *)p;
    for (const auto &b : g_weight_blocks)
        if (c >= b.first && c + bytes <= b.first + b.second) return 1;
    return 0;
}

// 1 unless the environment variable is "0" (read once).
static int env_on(const char *name, int *cache) {
    if (*cache < 0) *cache = !pbw_env_zero(name);
    return *cache;
}

extern "C" int pbw_cuda_half_gemm(void) {
    static int env = -1;
    return env_on("PBW_CUDA_HALF_GEMM", &env) && (g_prec == PBW_PREC_BF16 || g_prec == PBW_PREC_FP16);
}

extern "C" int pbw_cuda_half_gx(void) { // read at each call: tests compare both paths
    return !pbw_env_zero("PBW_CUDA_HALF_GX");
}

extern "C" int pbw_cuda_half_acts(void) {
    static int env = -1;
    return env_on("PBW_CUDA_HALF_ACTS", &env) && pbw_cuda_half_gemm();
}

extern "C" int pbw_cuda_half_acts_grad(void) {
    return pbw_cuda_half_acts() && !pbw_env_zero("PBW_CUDA_HALF_ACTS_GRAD");
}

extern "C" int pbw_cuda_modconv(void) {
    static int env = -1;
    return env_on("PBW_CUDA_MODCONV", &env);
}

extern "C" int pbw_cuda_modconv_grad(void) { // read at each call: tests compare both paths
    return pbw_cuda_modconv() && !pbw_env_zero("PBW_CUDA_MODCONV_GRAD");
}

extern "C" int pbw_cuda_style_parts_on(void) { // read at each call: tests compare both paths
    return !pbw_env_zero("PBW_CUDA_STYLE_PARTS");
}

extern "C" int pbw_cuda_nhwc(void) { // read at each call: tests compare both paths
    return pbw_cuda_modconv() && !pbw_env_zero("PBW_CUDA_NHWC");
}

extern "C" void pbw_cuda_free(void *p) {
    if (!p) return;
    for (size_t i = 0; i < g_weight_blocks.size(); i++)
        if (g_weight_blocks[i].first == (const char *)p) { // their half copies go with them
            size_t bytes = g_weight_blocks[i].second;
            g_weight_blocks.erase(g_weight_blocks.begin() + (long)i);
            pbw_cuda_nn_forget_weights(p, bytes);
            pbw_cuda_fusion_forget_weights(p, bytes);
            break;
        }
    if (g_capturing) { // nothing has run yet: freed when the capture ends
        // but the graph would replay into it: a block the recorded pass allocated, or one it
        // used before the free (an arena's chunks merged on a reset between passes)
        capture_refuse("memory freed while recording", 1);
        g_deferred_free.push_back(p);
        return;
    }
    pbw_cuda_sync(NULL); // a kernel queued earlier may still use the memory
    {
        std::lock_guard<std::mutex> lk(g_mem_mu);
        for (size_t i = 0; i < g_sizes.size(); i++)
            if (g_sizes[i].first == p) {
                g_used.fetch_sub(g_sizes[i].second);
                g_sizes[i] = g_sizes.back();
                g_sizes.pop_back();
                break;
            }
    }
    cudaFree(p);
}

extern "C" size_t pbw_cuda_mem_used(void) { return g_used.load(); }
extern "C" size_t pbw_cuda_mem_peak(void) { return g_peak.load(); }
extern "C" void pbw_cuda_mem_reset_peak(void) { g_peak.store(g_used.load()); }

// ---- fills and read-backs as kernels ----
// A memset or memcpy node in a CUDA graph breaks the chain of programmatic dependent launches:
// it waits for the kernel before it to finish, and the kernel after it starts only once it has
// (CUPTI on an H200 put 4-14 us of idle GPU after some of an Adam step's memset nodes). So
// PBW_CUDA_COPY_KERNELS, a sum of bits, default both: 1 the memset nodes of a recorded graph
// (cuDNN's before its transposed convolutions, pbw_cuda_memset0's) become zero-fill kernel
// nodes; 2 the gathered read-back is written by its kernel straight into pinned host memory,
// with no copy after it. 0: the runtime's own sets and copies. Read at each call: tests
// compare both ways.
static int copy_kernels(int bit) {
    const char *e = getenv("PBW_CUDA_COPY_KERNELS");
    if (!e || !*e) return 1;
    char *end = nullptr;
    const long v = strtol(e, &end, 0);
    return *end || v < 0 || v > 3 || (v & bit) != 0; // not a sum of the bits: both
}

static long g_memsets_replaced;
extern "C" long pbw_cuda_graph_memsets_replaced(void) { return g_memsets_replaced; }

// dst[0, bytes) = 0: 16-byte stores where dst is 16-byte aligned, its head and tail by bytes.
__global__ static void fill_zero_kernel(unsigned char *dst, size_t bytes) {
    pbw_pdl_wait();
    const size_t stride = (size_t)gridDim.x * blockDim.x;
    const size_t t0 = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    const size_t head = (16 - ((uintptr_t)dst & 15)) & 15;
    const size_t h = head < bytes ? head : bytes;
    const size_t words = (bytes - h) / 16;
    uint4 *w = reinterpret_cast<uint4 *>(dst + h);
    for (size_t i = t0; i < words; i += stride) w[i] = make_uint4(0, 0, 0, 0);
    const size_t tail = h + words * 16;
    if (t0 < h) dst[t0] = 0;
    if (t0 < bytes - tail) dst[tail + t0] = 0;
}

static unsigned zero_blocks(size_t bytes) {
    const size_t b = (bytes / 16 + 16 + 255) / 256, most = (size_t)pbw_cuda_sm_count() * 8;
    return (unsigned)(b < 1 ? 1 : b > most ? most : b);
}

// graph's nodes of the given type (none where the runtime cannot list them).
static std::vector<cudaGraphNode_t> graph_nodes(cudaGraph_t graph, cudaGraphNodeType type) {
    std::vector<cudaGraphNode_t> nodes, out;
    size_t n = 0;
    if (cudaGraphGetNodes(graph, nullptr, &n) != cudaSuccess || n == 0) {
        cudaGetLastError();
        return out;
    }
    nodes.resize(n);
    if (cudaGraphGetNodes(graph, nodes.data(), &n) != cudaSuccess) {
        cudaGetLastError();
        return out;
    }
    for (cudaGraphNode_t node : nodes) {
        cudaGraphNodeType t;
        if (cudaGraphNodeGetType(node, &t) != cudaSuccess) cudaGetLastError();
        else if (t == type) out.push_back(node);
    }
    return out;
}

// The zero-fill kernel's node in place of each memset node of graph that sets contiguous bytes
// to 0 (a library's or pbw_cuda_memset0's, recorded with the pass), with the same edges. Nodes
// it cannot replace stay.
static void memsets_to_kernels(cudaGraph_t graph) {
    for (cudaGraphNode_t node : graph_nodes(graph, cudaGraphNodeTypeMemset)) {
        cudaMemsetParams m;
        if (cudaGraphMemsetNodeGetParams(node, &m) != cudaSuccess) {
            cudaGetLastError();
            continue;
        }
        const size_t row = m.width * m.elementSize;
        if (m.value != 0 || (m.height > 1 && m.pitch != row)) continue;
        size_t nin = 0, nout = 0;
        if (cudaGraphNodeGetDependencies(node, nullptr, nullptr, &nin) != cudaSuccess ||
            cudaGraphNodeGetDependentNodes(node, nullptr, nullptr, &nout) != cudaSuccess) {
            cudaGetLastError();
            continue;
        }
        std::vector<cudaGraphNode_t> in(nin), out(nout);
        std::vector<cudaGraphEdgeData> ein(nin), eout(nout);
        if (cudaGraphNodeGetDependencies(node, in.data(), ein.data(), &nin) != cudaSuccess ||
            cudaGraphNodeGetDependentNodes(node, out.data(), eout.data(), &nout) != cudaSuccess) {
            cudaGetLastError();
            continue;
        }
        unsigned char *dst = (unsigned char *)m.dst;
        size_t bytes = row * (m.height ? m.height : 1);
        void *args[2] = {&dst, &bytes};
        cudaKernelNodeParams k = {};
        k.func = (void *)fill_zero_kernel;
        k.gridDim = dim3(zero_blocks(bytes));
        k.blockDim = dim3(256);
        k.kernelParams = args;
        cudaGraphNode_t repl = nullptr;
        // the memset's edges (plain ones: a memset neither waits nor is waited on early)
        if (cudaGraphAddKernelNode(&repl, graph, nullptr, 0, &k) != cudaSuccess) {
            cudaGetLastError();
            continue;
        }
        bool ok = true;
        for (size_t i = 0; i < nin && ok; i++)
            ok = cudaGraphAddDependencies(graph, &in[i], &repl, &ein[i], 1) == cudaSuccess;
        for (size_t i = 0; i < nout && ok; i++)
            ok = cudaGraphAddDependencies(graph, &repl, &out[i], &eout[i], 1) == cudaSuccess;
        // the memset goes with its edges; where an edge failed, the kernel goes with its own
        if (cudaGraphDestroyNode(ok ? node : repl) != cudaSuccess) cudaGetLastError();
        if (ok) g_memsets_replaced++;
        else cudaGetLastError();
    }
}

static int copy_result(cudaError_t e, const char *what) {
    if (e == cudaSuccess) return 0;
    pbw_cuda_fail("%s: %s", what, cudaGetErrorString(e));
    return -1;
}

extern "C" int pbw_cuda_h2d(void *dst, const void *src, size_t bytes) {
    if (g_capturing) { // the graph copies from pinned memory that lives as long as it does
        src = capture_stage(src, bytes, dst);
        if (!src) return -1;
    }
    return copy_result(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, pbw_stream()),
                       "copy to the GPU");
}

extern "C" int pbw_cuda_d2h(void *dst, const void *src, size_t bytes) {
    if (g_capturing) {
        capture_refuse("a read back from the GPU", 0);
        return -1;
    }
    cudaError_t e = cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, pbw_stream());
    if (e == cudaSuccess) e = sync_lanes();
    return copy_result(e, "copy from the GPU");
}

// Pinned staging of pbw_cuda_d2h_gather (grown as needed, kept for the process); each
// read-back in a 16-byte slot of its own. Up to GATHER_JOBS small read-backs are first put
// side by side on the device by one kernel (g_gather_dev), then copied to the host in one
// copy, where each had taken a copy of its own (an Adam step's four losses, its gradient and
// its image: five copies of ~1.5 us each on an H200, one after another on the stream).
static unsigned char *g_gather_pin, *g_gather_dev;
static size_t g_gather_cap, g_gather_dev_cap;
static size_t gather_slot(size_t bytes) { return (bytes + 15) / 16 * 16; }
static const int GATHER_JOBS = 8;
static const size_t GATHER_DEV_MAX = (size_t)4 << 20; // larger read-backs: a copy each

struct gather_jobs {
    const unsigned char *src[GATHER_JOBS];
    size_t off[GATHER_JOBS], bytes[GATHER_JOBS];
};

// Job blockIdx.y's bytes to its slot: 4-byte words where its size and source allow.
__global__ static void gather_kernel(unsigned char *dst, gather_jobs j) {
    pbw_pdl_wait();
    const int k = blockIdx.y;
    const unsigned char *src = j.src[k];
    unsigned char *d = dst + j.off[k];
    const size_t bytes = j.bytes[k];
    const size_t stride = (size_t)gridDim.x * blockDim.x;
    const size_t t0 = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (bytes % 4 == 0 && (uintptr_t)src % 4 == 0) {
        for (size_t i = t0; i < bytes / 4; i += stride)
            reinterpret_cast<uint32_t *>(d)[i] = reinterpret_cast<const uint32_t *>(src)[i];
    } else {
        for (size_t i = t0; i < bytes; i += stride) d[i] = src[i];
    }
}

// The n read-backs' bytes side by side (total bytes, their slots) by one kernel: into
// g_gather_dev, or with to_host straight into the pinned g_gather_pin; false where that does
// not apply (a copy each then).
static bool gather_on_device(int n, const void *const *src, const size_t *bytes, size_t total,
                             bool to_host) {
    if (n < 2 || n > GATHER_JOBS || total > GATHER_DEV_MAX) return false;
    if (!to_host && total > g_gather_dev_cap) {
        void *p = nullptr;
        if (cudaMalloc(&p, total) != cudaSuccess) {
            cudaGetLastError();
            return false;
        }
        if (g_gather_dev) cudaFree(g_gather_dev);
        g_gather_dev = (unsigned char *)p;
        g_gather_dev_cap = total;
    }
    gather_jobs j = {};
    size_t off = 0, most = 0;
    for (int i = 0; i < n; i++) {
        j.src[i] = (const unsigned char *)src[i];
        j.off[i] = off;
        j.bytes[i] = bytes[i];
        off += gather_slot(bytes[i]);
        most = bytes[i] > most ? bytes[i] : most;
    }
    const size_t blocks = (most / 4 + 255) / 256;
    pbw_launch(gather_kernel, dim3((unsigned)(blocks < 1 ? 1 : blocks > 1024 ? 1024 : blocks), n),
               256, 0, to_host ? g_gather_pin : g_gather_dev, j);
    return cudaGetLastError() == cudaSuccess;
}

extern "C" int pbw_cuda_d2h_gather(int n, void *const *dst, const void *const *src,
                                   const size_t *bytes) {
    if (g_capturing) {
        capture_refuse("a read back from the GPU", 0);
        return -1;
    }
    size_t total = 0;
    for (int i = 0; i < n; i++)
        total += gather_slot(bytes[i]);
    if (total > g_gather_cap) {
        const size_t cap = total < 4096 ? 4096 : total;
        void *p = nullptr;
        // mapped: the gather kernel may write it (copy_kernels(2))
        if (cudaHostAlloc(&p, cap, cudaHostAllocMapped) != cudaSuccess) {
            cudaGetLastError(); // no pinned memory: a copy at a time
            for (int i = 0; i < n; i++)
                if (bytes[i] && pbw_cuda_d2h(dst[i], src[i], bytes[i]))
                    return -1;
            return 0;
        }
        if (g_gather_pin)
            cudaFreeHost(g_gather_pin);
        g_gather_pin = (unsigned char *)p;
        g_gather_cap = cap;
    }
    cudaError_t e = cudaSuccess;
    size_t off = 0;
    if (copy_kernels(2) && gather_on_device(n, src, bytes, total, true)) {
        // written through the unified address space: nothing left to copy
    } else if (gather_on_device(n, src, bytes, total, false)) {
        e = cudaMemcpyAsync(g_gather_pin, g_gather_dev, total, cudaMemcpyDeviceToHost,
                            pbw_stream());
    } else {
        for (int i = 0; i < n && e == cudaSuccess; i++) {
            if (bytes[i])
                e = cudaMemcpyAsync(g_gather_pin + off, src[i], bytes[i],
                                    cudaMemcpyDeviceToHost, pbw_stream());
            off += gather_slot(bytes[i]);
        }
    }
    if (e == cudaSuccess)
        e = sync_lanes();
    else
        sync_lanes(); // copies queued before the failed one still write the staging
    if (copy_result(e, "copy from the GPU"))
        return -1;
    off = 0;
    for (int i = 0; i < n; i++) {
        if (bytes[i])
            memcpy(dst[i], g_gather_pin + off, bytes[i]);
        off += gather_slot(bytes[i]);
    }
    return 0;
}

extern "C" int pbw_cuda_d2d(void *dst, const void *src, size_t bytes) {
    return copy_result(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, pbw_stream()),
                       "copy on the GPU");
}

extern "C" int pbw_cuda_memset0(void *dst, size_t bytes) {
    return copy_result(cudaMemsetAsync(dst, 0, bytes, pbw_stream()), "memset on the GPU");
}

extern "C" void pbw_cuda_profiler(int on) {
    if (g_dev < 0) return;
    if (on) cudaProfilerStart();
    else cudaProfilerStop();
    cudaGetLastError(); // without a profiler attached these do nothing worth reporting
}

extern "C" int pbw_cuda_sync(pbw_err *err) {
    if (g_capturing) {
        capture_refuse("a wait for the GPU", 0);
        return pbw_err_set(err, "cuda: %s", pbw_cuda_error());
    }
    if (g_dev >= 0) {
        cudaError_t e = sync_lanes();
        if (e != cudaSuccess) pbw_cuda_fail("%s", cudaGetErrorString(e));
    }
    if (pbw_cuda_error()) return pbw_err_set(err, "cuda: %s", pbw_cuda_error());
    return 0;
}

extern "C" int pbw_cuda_device_count(void) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError(); // clear the sticky "no device" error
        return 0;
    }
    return n;
}

extern "C" int pbw_cuda_describe(int dev, char *buf, size_t len, pbw_err *err) {
    cudaDeviceProp p;
    cudaError_t e = cudaGetDeviceProperties(&p, dev);
    if (e != cudaSuccess) return pbw_err_set(err, "cuda:%d: %s", dev, cudaGetErrorString(e));
    snprintf(buf, len, "%s (sm_%d%d, %.1f GiB)", p.name, p.major, p.minor,
             (double)p.totalGlobalMem / (1024.0 * 1024.0 * 1024.0));
    return 0;
}

// y = a*x + y, one thread per element
__global__ static void axpy_kernel(int n, float a, const float *x, float *y) {
    pbw_pdl_wait();
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = a * x[i] + y[i];
}

#define CUDA_TRY(call)                                                                         \
    do {                                                                                       \
        cudaError_t e_ = (call);                                                               \
        if (e_ != cudaSuccess) {                                                               \
            pbw_err_set(err, "cuda:%d: %s failed: %s", dev, #call, cudaGetErrorString(e_));    \
            goto fail;                                                                         \
        }                                                                                      \
    } while (0)

extern "C" int pbw_cuda_selftest(int dev, pbw_err *err) {
    const int n = 1 << 20;
    std::vector<float> x(n), y(n), out(n);
    for (int i = 0; i < n; i++) {
        x[i] = (float)((i * 37) % 101) / 101.0f;
        y[i] = (float)((i * 53) % 97) / 97.0f;
    }
    float *dx = nullptr, *dy = nullptr;
    int bad = 0;
    CUDA_TRY(cudaSetDevice(dev));
    CUDA_TRY(cudaMalloc(&dx, n * sizeof(float)));
    CUDA_TRY(cudaMalloc(&dy, n * sizeof(float)));
    CUDA_TRY(cudaMemcpy(dx, x.data(), n * sizeof(float), cudaMemcpyHostToDevice));
    CUDA_TRY(cudaMemcpy(dy, y.data(), n * sizeof(float), cudaMemcpyHostToDevice));
    axpy_kernel<<<(n + 255) / 256, 256>>>(n, 2.5f, dx, dy);
    CUDA_TRY(cudaGetLastError());
    CUDA_TRY(cudaMemcpy(out.data(), dy, n * sizeof(float), cudaMemcpyDeviceToHost));
    for (int i = 0; i < n; i++)
        if (std::fabs(out[i] - (2.5f * x[i] + y[i])) > 1e-6f) bad++;
    cudaFree(dx);
    cudaFree(dy);
    if (bad) return pbw_err_set(err, "cuda:%d: self-test kernel gave %d wrong values", dev, bad);
    return 0;
fail:
    cudaFree(dx);
    cudaFree(dy);
    return -1;
}

// ---- CUDA graphs ----
// A fixed-shape pass (the Adam step) is recorded once and replayed: one launch instead of about
// a thousand. What the pass uploads is staged in pinned memory owned by the graph; uploads from
// a host range registered with pbw_cuda_graph_input (the latent, the crops of a step) are
// copied into their pinned buffers again before each replay, every other upload replays the
// bytes it had when captured. What cannot be recorded (a read-back, a wait, a growing library
// workspace) breaks the capture: pbw_cuda_capture_end then returns NULL, clears the error, and
// the caller runs the pass as before.

namespace {
struct staged_input {
    void *pinned;
    const void *src;
    size_t bytes;
    int range;         // the registered host range src lies in (g_inputs' order)
    size_t off;        // src's offset in it
    void *dst;         // the device address the upload writes
    cudaGraphNode_t node; // its copy node in the recorded graph (null where not found)
};
struct pin_chunk {
    char *base;
    size_t size, off;
};
std::vector<std::pair<const void *, size_t>> g_inputs; // host ranges read at each replay
char g_refusal[160];
} // namespace

struct pbw_cuda_graph {
    cudaGraphExec_t exec;
    cudaGraph_t graph; // kept while inputs' copy nodes may be retargeted (pbw_cuda_graph_launch_from)
    std::vector<pin_chunk> pins;
    std::vector<staged_input> inputs;
};

static pbw_cuda_graph *g_cap; // the graph being recorded

// grew: memory or a workspace had to grow (the pass run directly leaves them grown)
static void capture_refuse(const char *what, int grew) {
    if (!g_capture_broken) {
        snprintf(g_refusal, sizeof g_refusal, "%s", what);
        g_capture_grew = grew;
    }
    g_capture_broken = 1;
    pbw_cuda_fail("not recordable in a CUDA graph: %s", what);
}

static void *capture_stage(const void *src, size_t bytes, void *to) {
    pbw_cuda_graph *g = g_cap;
    size_t need = (bytes + 63) / 64 * 64;
    if (g->pins.empty() || g->pins.back().size - g->pins.back().off < need) {
        size_t size = need > ((size_t)1 << 20) ? need : ((size_t)1 << 20);
        void *p = nullptr;
        if (cudaHostAlloc(&p, size, cudaHostAllocDefault) != cudaSuccess) {
            cudaGetLastError();
            capture_refuse("pinned staging memory", 0);
            return nullptr;
        }
        g->pins.push_back({(char *)p, size, 0});
    }
    pin_chunk &c = g->pins.back();
    void *dst = c.base + c.off;
    c.off += need;
    memcpy(dst, src, bytes);
    const char *s = (const char *)src;
    for (size_t k = 0; k < g_inputs.size(); k++) {
        const char *b = (const char *)g_inputs[k].first;
        if (s >= b && s + bytes <= b + g_inputs[k].second) {
            g->inputs.push_back({dst, src, bytes, (int)k, (size_t)(s - b), to, nullptr});
            break;
        }
    }
    return dst;
}

static void graph_release(pbw_cuda_graph *g) {
    if (!g) return;
    if (g->exec) cudaGraphExecDestroy(g->exec);
    if (g->graph) cudaGraphDestroy(g->graph);
    for (const pin_chunk &c : g->pins) cudaFreeHost(c.base);
    delete g;
}

// Each registered input's copy node in the recorded graph: the memcpy node reading its pinned
// staging (left null where none does: pbw_cuda_graph_launch_from then refuses).
static void input_nodes(cudaGraph_t graph, pbw_cuda_graph *g) {
    if (g->inputs.empty()) return;
    for (cudaGraphNode_t node : graph_nodes(graph, cudaGraphNodeTypeMemcpy)) {
        cudaMemcpy3DParms p = {};
        if (cudaGraphMemcpyNodeGetParams(node, &p) != cudaSuccess) {
            cudaGetLastError();
            continue;
        }
        for (staged_input &in : g->inputs)
            if (p.srcPtr.ptr == in.pinned) in.node = node;
    }
}

extern "C" void pbw_cuda_graph_input(const void *host, size_t bytes) {
    if (g_capturing) g_inputs.emplace_back(host, bytes); // for this capture only
}

extern "C" int pbw_cuda_capture_begin(void) {
    if (g_dev < 0 || g_capturing || g_lane != 0) return -1;
    g_inputs.clear();
    // no wait for the work queued before: the recording runs nothing, and its launches come
    // after that work in stream order (the painter records a pass while the one before runs)
    g_cap = new pbw_cuda_graph();
    g_cap->exec = nullptr;
    g_capture_broken = g_capture_grew = 0;
    g_refusal[0] = 0;
    // relaxed: an arena that grows may still call cudaMalloc while recording
    if (cudaStreamBeginCapture(pbw_stream(), cudaStreamCaptureModeRelaxed) != cudaSuccess) {
        cudaGetLastError();
        graph_release(g_cap);
        g_cap = nullptr;
        return -1;
    }
    g_capturing = 1;
    return 0;
}

extern "C" pbw_cuda_graph *pbw_cuda_capture_end(char *why, size_t why_len) {
    if (!g_capturing) return nullptr;
    cudaGraph_t graph = nullptr;
    if (g_lane != 0) { // a lane left current: end on lane 0 (the recording fails if unjoined)
        capture_refuse("a pass that left GPU lane 0", 0);
        pbw_cuda_lane_set(0);
    }
    cudaError_t e = cudaStreamEndCapture(pbw_stream(), &graph);
    g_capturing = 0;
    pbw_cuda_graph *g = g_cap;
    g_cap = nullptr;
    const char *err = pbw_cuda_error();
    if (e == cudaSuccess && graph && !g_capture_broken && !err && copy_kernels(1))
        memsets_to_kernels(graph);
    if (e == cudaSuccess && graph && !g_capture_broken && !err) {
        input_nodes(graph, g);
        e = cudaGraphInstantiate(&g->exec, graph, 0);
    }
    bool ok = e == cudaSuccess && graph && !g_capture_broken && !err && g->exec;
    // the graph's device side set up now, in stream order, rather than at its first launch
    if (ok && cudaGraphUpload(g->exec, pbw_stream()) != cudaSuccess) cudaGetLastError();
    if (why && why_len)
        snprintf(why, why_len, "%s", ok ? "" : g_capture_broken ? g_refusal
                                           : err               ? err
                                                               : cudaGetErrorString(e));
    if (ok) g->graph = graph; // its copy nodes name the exec's (pbw_cuda_graph_launch_from)
    else if (graph) cudaGraphDestroy(graph);
    cudaGetLastError();
    if (!ok) {
        pbw_cuda_clear_error();
        graph_release(g);
        g = nullptr;
    }
    g_inputs.clear();
    std::vector<void *> later;
    later.swap(g_deferred_free);
    for (void *p : later) pbw_cuda_free(p);
    return g;
}

extern "C" int pbw_cuda_capturing(void) { return g_capturing; }
extern "C" int pbw_cuda_capture_grew(void) { return g_capture_grew; }

static long g_graph_launches;
extern "C" long pbw_cuda_graph_launches(void) { return g_graph_launches; }

extern "C" int pbw_cuda_graph_launch(pbw_cuda_graph *g) {
    if (!g || !g->exec) return -1;
    g_graph_launches++;
    if (!g->inputs.empty()) {
        // the last replay's copies may still read the pinned buffers
        if (cudaStreamSynchronize(pbw_stream()) != cudaSuccess) return copy_result(cudaGetLastError(), "graph");
        for (const staged_input &in : g->inputs) memcpy(in.pinned, in.src, in.bytes);
    }
    return copy_result(cudaGraphLaunch(g->exec, pbw_stream()), "graph launch");
}

extern "C" int pbw_cuda_graph_launch_from(pbw_cuda_graph *g, int n, const void *const *pinned) {
    if (!g || !g->exec) return -1;
    for (const staged_input &in : g->inputs) {
        if (in.range >= n || !pinned[in.range]) continue;
        if (!in.node) return copy_result(cudaErrorInvalidValue, "graph input not found");
        cudaError_t e = cudaGraphExecMemcpyNodeSetParams1D(
            g->exec, in.node, in.dst, (const char *)pinned[in.range] + in.off, in.bytes,
            cudaMemcpyHostToDevice);
        if (e != cudaSuccess) return copy_result(e, "graph input");
    }
    g_graph_launches++;
    return copy_result(cudaGraphLaunch(g->exec, pbw_stream()), "graph launch");
}

extern "C" int pbw_cuda_graph_inputs_found(const pbw_cuda_graph *g) {
    if (!g || !g->exec) return 0;
    for (const staged_input &in : g->inputs)
        if (!in.node) return 0;
    return 1;
}

extern "C" void *pbw_cuda_host_alloc(size_t bytes) {
    void *p = nullptr;
    if (g_dev < 0 || cudaHostAlloc(&p, bytes ? bytes : 1, cudaHostAllocMapped) != cudaSuccess) {
        cudaGetLastError();
        return nullptr;
    }
    return p;
}

extern "C" void pbw_cuda_host_free(void *p) {
    if (!p) return;
    sync_lanes(); // a queued copy or kernel may still use it
    cudaFreeHost(p);
}

struct pbw_cuda_mark {
    cudaEvent_t ev;
};

extern "C" pbw_cuda_mark *pbw_cuda_mark_new(void) {
    if (g_dev < 0) return nullptr;
    pbw_cuda_mark *m = new pbw_cuda_mark;
    if (cudaEventCreateWithFlags(&m->ev, cudaEventDisableTiming) != cudaSuccess) {
        cudaGetLastError();
        delete m;
        return nullptr;
    }
    return m;
}

extern "C" int pbw_cuda_mark_record(pbw_cuda_mark *m) {
    if (!m || g_capturing) return -1;
    return copy_result(cudaEventRecord(m->ev, pbw_stream()), "marking the stream");
}

extern "C" int pbw_cuda_mark_wait(pbw_cuda_mark *m) {
    if (!m) return -1;
    if (copy_result(cudaEventSynchronize(m->ev), "waiting for the GPU")) return -1;
    return pbw_cuda_error() ? -1 : 0;
}

extern "C" void pbw_cuda_mark_free(pbw_cuda_mark *m) {
    if (!m) return;
    cudaEventDestroy(m->ev);
    delete m;
}

extern "C" void pbw_cuda_graph_free(pbw_cuda_graph *g) {
    if (!g) return;
    sync_lanes();
    graph_release(g);
}
