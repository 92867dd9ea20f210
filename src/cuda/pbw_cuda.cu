// pbw_cuda.cu: device discovery and a self-test kernel for the CUDA backend (see pbw_cuda.h).
#include <cuda_runtime.h>

#include <cmath>
#include <cstdio>
#include <vector>

#include "cuda/pbw_cuda.h"

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
