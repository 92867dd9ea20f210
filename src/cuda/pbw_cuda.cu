// pbw_cuda.cu: the CUDA backend's runtime: device discovery and self-test, the stream and the
// library handles, device memory and copies, precision mode, sticky errors (see pbw_cuda.h).
#include <cuda_runtime.h>

#include <atomic>
#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <vector>

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

// ---- device, stream, handles ----

static int g_dev = -1;
static cudaStream_t g_stream;
static cublasHandle_t g_cublas;
static cudnnHandle_t g_cudnn;
static void *g_ws;
static size_t g_ws_size;
static pbw_precision g_prec = PBW_PREC_FP32;

static void apply_math_mode(void) {
    if (!g_cublas) return;
    cublasMath_t m = CUBLAS_DEFAULT_MATH;
    if (g_prec == PBW_PREC_FP32) m = CUBLAS_PEDANTIC_MATH;
    else if (g_prec == PBW_PREC_TF32) m = CUBLAS_TF32_TENSOR_OP_MATH;
    cublasSetMathMode(g_cublas, m);
}

extern "C" int pbw_cuda_init(int dev, pbw_err *err) {
    if (g_dev == dev) return 0;
    if (g_dev >= 0)
        return pbw_err_set(err, "cuda:%d: this process already uses cuda:%d", dev, g_dev);
    int n = pbw_cuda_device_count();
    if (dev < 0 || dev >= n)
        return pbw_err_set(err, "cuda:%d: no such device (%d found)", dev, n);
    cudaError_t e = cudaSetDevice(dev);
    if (e == cudaSuccess) e = cudaStreamCreateWithFlags(&g_stream, cudaStreamNonBlocking);
    if (e != cudaSuccess) return pbw_err_set(err, "cuda:%d: %s", dev, cudaGetErrorString(e));
    if (cublasCreate(&g_cublas) != CUBLAS_STATUS_SUCCESS)
        return pbw_err_set(err, "cuda:%d: cannot create a cuBLAS handle", dev);
    cublasSetStream(g_cublas, g_stream);
    cudnnStatus_t ds = cudnnCreate(&g_cudnn);
    if (ds != CUDNN_STATUS_SUCCESS)
        return pbw_err_set(err, "cuda:%d: cannot create a cuDNN handle: %s", dev, cudnnGetErrorString(ds));
    cudnnSetStream(g_cudnn, g_stream);
    g_dev = dev;
    apply_math_mode();
    return 0;
}

extern "C" int pbw_cuda_current(void) { return g_dev; }

cudaStream_t pbw_stream(void) { return g_stream; }
cublasHandle_t pbw_cublas(void) { return g_cublas; }
cudnnHandle_t pbw_cudnn(void) { return g_cudnn; }

void *pbw_cuda_workspace(size_t bytes) {
    if (bytes <= g_ws_size && g_ws) return g_ws;
    cudaStreamSynchronize(g_stream); // a queued kernel may still use the old one
    if (g_ws) cudaFree(g_ws);
    g_ws = nullptr;
    g_ws_size = 0;
    size_t sz = bytes < ((size_t)32 << 20) ? ((size_t)32 << 20) : bytes;
    if (cudaMalloc(&g_ws, sz) != cudaSuccess) {
        cudaGetLastError();
        g_ws = nullptr;
        pbw_cuda_fail("out of GPU memory for a %zu-byte library workspace", bytes);
        return nullptr;
    }
    g_ws_size = sz;
    return g_ws;
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

extern "C" void pbw_cuda_free(void *p) {
    if (!p) return;
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

static int copy_result(cudaError_t e, const char *what) {
    if (e == cudaSuccess) return 0;
    pbw_cuda_fail("%s: %s", what, cudaGetErrorString(e));
    return -1;
}

extern "C" int pbw_cuda_h2d(void *dst, const void *src, size_t bytes) {
    return copy_result(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, g_stream),
                       "copy to the GPU");
}

extern "C" int pbw_cuda_d2h(void *dst, const void *src, size_t bytes) {
    cudaError_t e = cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, g_stream);
    if (e == cudaSuccess) e = cudaStreamSynchronize(g_stream);
    return copy_result(e, "copy from the GPU");
}

extern "C" int pbw_cuda_d2d(void *dst, const void *src, size_t bytes) {
    return copy_result(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, g_stream),
                       "copy on the GPU");
}

extern "C" int pbw_cuda_memset0(void *dst, size_t bytes) {
    return copy_result(cudaMemsetAsync(dst, 0, bytes, g_stream), "memset on the GPU");
}

extern "C" int pbw_cuda_sync(pbw_err *err) {
    if (g_dev >= 0) {
        cudaError_t e = cudaStreamSynchronize(g_stream);
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
