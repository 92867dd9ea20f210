// graph_launch.cu: what a CUDA graph costs per dependent kernel, and what programmatic dependent
// launch (PDL) would take off (a design question: an Adam step replays ~1,000 launches from a
// graph). A graph of K launches of one small kernel, each reading what the last wrote, is
// replayed 10 times after 3 warm-ups; printed: microseconds a kernel, plain and with PDL (each
// launch allows the next to start early: cudaLaunchAttributeProgrammaticStreamSerialization,
// and the kernel waits for its predecessor with cudaGridDependencySynchronize before it reads).
// Standalone:
//   nvcc -O3 -arch=sm_90 bench/graph_launch.cu -o build/graph_launch
//   build/graph_launch
#include <cuda_runtime.h>

#include <cstdio>

#include "bench_cuda_check.cuh"

__global__ void step(float *x, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] = x[i] * 1.0001f + 1.0f;
}

__global__ void step_pdl(float *x, int n) {
    cudaGridDependencySynchronize(); // the predecessor's writes are visible after this
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] = x[i] * 1.0001f + 1.0f;
}

static double us_per_kernel(int blocks, bool pdl, int K) {
    const int n = blocks * 256;
    float *x;
    CK(cudaMalloc(&x, sizeof(float) * n));
    CK(cudaMemset(x, 0, sizeof(float) * n));
    cudaStream_t s;
    CK(cudaStreamCreate(&s));
    cudaGraph_t g;
    cudaGraphExec_t ge;
    CK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
    for (int k = 0; k < K; k++) {
        if (!pdl) {
            step<<<blocks, 256, 0, s>>>(x, n);
            continue;
        }
        cudaLaunchConfig_t cfg = {};
        cfg.gridDim = blocks;
        cfg.blockDim = 256;
        cfg.stream = s;
        cudaLaunchAttribute at[1];
        at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
        at[0].val.programmaticStreamSerializationAllowed = 1;
        cfg.attrs = at;
        cfg.numAttrs = 1;
        CK(cudaLaunchKernelEx(&cfg, step_pdl, x, n));
    }
    CK(cudaStreamEndCapture(s, &g));
    CK(cudaGraphInstantiate(&ge, g, 0));
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    for (int w = 0; w < 3; w++) CK(cudaGraphLaunch(ge, s));
    CK(cudaEventRecord(e0, s));
    for (int r = 0; r < 10; r++) CK(cudaGraphLaunch(ge, s));
    CK(cudaEventRecord(e1, s));
    CK(cudaEventSynchronize(e1));
    float ms = 0;
    CK(cudaEventElapsedTime(&ms, e0, e1));
    CK(cudaGraphExecDestroy(ge));
    CK(cudaGraphDestroy(g));
    CK(cudaEventDestroy(e0));
    CK(cudaEventDestroy(e1));
    CK(cudaStreamDestroy(s));
    CK(cudaFree(x));
    return 1e3 * ms / (10.0 * K);
}

int main() {
    const int K = 500;
    for (int blocks : {1, 32, 132, 1024})
        printf("graph of %d launches, %4d blocks of 256: %.2f us a kernel plain, %.2f with PDL\n", K,
               blocks, us_per_kernel(blocks, false, K), us_per_kernel(blocks, true, K));
    return 0;
}
