// graph_launch.cu: what a CUDA graph costs per dependent kernel, and what programmatic dependent
// launch (PDL) would take off (a design question: an Adam step replays ~1,000 launches from a
// graph). A graph of K launches of one small kernel, each reading what the last wrote, is
// replayed 10 times after 3 warm-ups; printed: microseconds a kernel, plain and with PDL (each
// launch allows the next to start early: cudaLaunchAttributeProgrammaticStreamSerialization,
// and the kernel waits for its predecessor with cudaGridDependencySynchronize before it reads).
// Then whether an idle GPU waits for a large graph's launch to end before it starts
// (launch_overlap: one graph of 1,000 launches, or two parts; H200: 9 us of launch, ~9 us of
// wait, split or not).
// Standalone:
//   nvcc -O3 -arch=sm_90 bench/graph_launch.cu -o build/graph_launch
//   build/graph_launch
#include <cuda_runtime.h>

#include <cstdio>
#include <ctime>

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

// Launches from .. to - 1 of step over x's n values (blocks of 256 threads) captured as one
// graph; with pdl, step_pdl launched with programmatic stream serialization instead.
static cudaGraphExec_t capture(cudaStream_t s, float *x, int n, int blocks, int from, int to,
                               bool pdl) {
    cudaGraph_t g;
    cudaGraphExec_t ge;
    CK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
    for (int k = from; k < to; k++) {
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
    CK(cudaGraphDestroy(g));
    return ge;
}

// The mean time in ms of launch()'s replays run back to back on s: 3 untimed, then 10 timed.
template <class Launch> static float replay_ms(cudaStream_t s, Launch launch) {
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    for (int w = 0; w < 3; w++) launch();
    CK(cudaEventRecord(e0, s));
    for (int r = 0; r < 10; r++) launch();
    CK(cudaEventRecord(e1, s));
    CK(cudaEventSynchronize(e1));
    float ms = 0;
    CK(cudaEventElapsedTime(&ms, e0, e1));
    CK(cudaEventDestroy(e0));
    CK(cudaEventDestroy(e1));
    return ms / 10;
}

static double us_per_kernel(int blocks, bool pdl, int K) {
    const int n = blocks * 256;
    float *x;
    CK(cudaMalloc(&x, sizeof(float) * n));
    CK(cudaMemset(x, 0, sizeof(float) * n));
    cudaStream_t s;
    CK(cudaStreamCreate(&s));
    cudaGraphExec_t ge = capture(s, x, n, blocks, 0, K, pdl);
    const float ms = replay_ms(s, [&] { CK(cudaGraphLaunch(ge, s)); });
    CK(cudaGraphExecDestroy(ge));
    CK(cudaStreamDestroy(s));
    CK(cudaFree(x));
    return 1e3 * ms / K;
}

// Whether the GPU starts a large graph's first kernels while cudaGraphLaunch is still
// submitting the rest (the painter's generation is one graph of ~1,000 nodes whose launch takes
// ~0.5 ms of the host): an idle stream, then one replay (or the two parts, launched back to
// back); printed: the host's time in the launch calls, the GPU's time from an event recorded
// just before them to one just after, and the same replay's time when the launches are hidden
// behind earlier replays (back to back). The difference of the last two is how long the idle
// GPU waited for the launch.
static void launch_overlap(int K, int head) {
    const int n = 132 * 256;
    float *x;
    CK(cudaMalloc(&x, sizeof(float) * n));
    CK(cudaMemset(x, 0, sizeof(float) * n));
    cudaStream_t s;
    CK(cudaStreamCreate(&s));
    cudaGraphExec_t a = capture(s, x, n, 132, 0, head > 0 ? head : K, false);
    cudaGraphExec_t b = head > 0 ? capture(s, x, n, 132, head, K, false) : nullptr;
    auto launch = [&]() {
        CK(cudaGraphLaunch(a, s));
        if (b) CK(cudaGraphLaunch(b, s));
    };
    const float busy = replay_ms(s, launch);
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    double host = 0, cold = 0;
    const int R = 20;
    for (int r = 0; r < R; r++) {
        CK(cudaStreamSynchronize(s));
        CK(cudaEventRecord(e0, s));
        timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        launch();
        clock_gettime(CLOCK_MONOTONIC, &t1);
        CK(cudaEventRecord(e1, s));
        CK(cudaEventSynchronize(e1));
        float ms = 0;
        CK(cudaEventElapsedTime(&ms, e0, e1));
        cold += ms / R;
        host += ((t1.tv_sec - t0.tv_sec) * 1e3 + (t1.tv_nsec - t0.tv_nsec) * 1e-6) / R;
    }
    printf("graph of %d launches%s: host in the launch %.3f ms, idle GPU's replay %.3f ms, "
           "back-to-back replay %.3f ms: waited %.3f ms\n", K,
           head > 0 ? (head == 1 ? " (its first launch a graph of its own)" : " (split)") : "", host,
           cold, busy, cold - busy);
    if (b) CK(cudaGraphExecDestroy(b));
    CK(cudaGraphExecDestroy(a));
    CK(cudaEventDestroy(e0));
    CK(cudaEventDestroy(e1));
    CK(cudaStreamDestroy(s));
    CK(cudaFree(x));
}

int main() {
    const int K = 500;
    for (int blocks : {1, 32, 132, 1024})
        printf("graph of %d launches, %4d blocks of 256: %.2f us a kernel plain, %.2f with PDL\n", K,
               blocks, us_per_kernel(blocks, false, K), us_per_kernel(blocks, true, K));
    for (int head : {0, 1, 64, 500}) launch_overlap(1000, head);
    return 0;
}
