// gelu_gemm.cu: would our own product with QuickGELU in its epilogue beat cuBLASLt's product
// followed by pbw's QuickGELU pass? (A design question: CLIP's fc1 output, written in bf16 and
// read back once by QuickGELU, costs a CMA generation ~3.8 ms of memory traffic, and cuBLASLt
// has no QuickGELU epilogue.) Both sides compute y = QuickGELU(bf16(x W^T + b)) in bf16 from bf16
// x (R,I) and W (O,I), fp32 sums, as pbw's CLIP MLP does:
//   - cuBLASLt: the product with its bias epilogue into bf16 (the heuristic's first pick), then
//     one vectorized pass x * sigmoid(1.702 x);
//   - fused: a tensor-core kernel of ours (mma.sync m16n8k16, 128x128 tiles of 8 warps, a 4-stage
//     cp.async pipeline over k in steps of 32, operands through XOR-swizzled shared memory and
//     ldmatrix), adding the bias, rounding, applying QuickGELU and rounding again as it stores.
// Each is timed as the median of 20 runs after 3 warm-ups, at CLIP's fc1 shapes: 448 crops x 50
// tokens (a CMA batch of 14) and 32 crops x 50 (an Adam step); the fused output is checked
// against cuBLASLt's (bf16 rounding of both: 2^-8 relative where they round apart).
// Standalone:
//   nvcc -O3 -arch=sm_90 bench/gelu_gemm.cu -lcublasLt -o build/gelu_gemm
//   build/gelu_gemm
#include <cstdint>

#include "bench_gemm_ref.cuh"

namespace {

const int BM = 128, BN = 128, BK = 32, STAGES = 4, THREADS = 256;
const int TILE_BYTES = BM * BK * 2; // one operand's stage: 128 rows of 64 bytes
const int SMEM_BYTES = STAGES * 2 * TILE_BYTES;

__device__ __forceinline__ uint32_t smem_addr(const void *p) {
    return (uint32_t)__cvta_generic_to_shared(p);
}

// Byte offset of 16-byte chunk c (k = 8c .. 8c+7) of tile row r: rows of 64 bytes, the chunk
// index XORed with (r / 2) % 4 so that ldmatrix's eight rows fall in eight distinct bank groups.
__device__ __forceinline__ int swz(int r, int c) { return r * 64 + ((c ^ ((r >> 1) & 3)) << 4); }

__device__ __forceinline__ void cp_async16(uint32_t dst, const void *src, bool valid) {
    const int n = valid ? 16 : 0; // 0: the chunk is zero-filled (rows past the matrix)
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(n));
}

__device__ __forceinline__ void ldsm_x4(uint32_t addr, uint32_t &r0, uint32_t &r1, uint32_t &r2,
                                        uint32_t &r3) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
                 : "r"(addr));
}

__device__ __forceinline__ void mma_bf16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                         uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, "
                 "{%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// y (R,O) = QuickGELU(bf16(x (R,I) W^T (O,I) + b)), bf16. O % 128 == 0, I % 32 == 0.
// Block: a 128x128 tile of y; warp w: rows 64 (w / 4) .. +64, columns 32 (w % 4) .. +32.
__global__ void __launch_bounds__(THREADS, 2)
    gelu_gemm_kernel(const __nv_bfloat16 *__restrict__ x, const __nv_bfloat16 *__restrict__ w,
                     const __nv_bfloat16 *__restrict__ b, __nv_bfloat16 *__restrict__ y, int R,
                     int O, int I) {
    extern __shared__ __align__(128) unsigned char smem[];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
    const int wm = (warp >> 2) * 64, wn = (warp & 3) * 32;
    const int KT = I / BK;
    const uint32_t sbase = smem_addr(smem);

    // stage s's A (x rows) then B (W rows); each thread copies 2 chunks of each
    auto load_stage = [&](int s, int kt) {
        const uint32_t sa = sbase + s * 2 * TILE_BYTES, sb = sa + TILE_BYTES;
#pragma unroll
        for (int j = 0; j < 2; j++) {
            const int q = tid + j * THREADS, r = q >> 2, c = q & 3;
            const int gr = m0 + r;
            const __nv_bfloat16 *src = x + (size_t)(gr < R ? gr : R - 1) * I + kt * BK + c * 8;
            cp_async16(sa + swz(r, c), src, gr < R);
            cp_async16(sb + swz(r, c), w + (size_t)(n0 + r) * I + kt * BK + c * 8, true);
        }
    };

    float acc[4][4][4];
#pragma unroll
    for (int i = 0; i < 4; i++)
#pragma unroll
        for (int j = 0; j < 4; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) acc[i][j][e] = 0.0f;

#pragma unroll
    for (int s = 0; s < STAGES - 1; s++) {
        if (s < KT) load_stage(s, s);
        asm volatile("cp.async.commit_group;\n" ::);
    }
    for (int kt = 0; kt < KT; kt++) {
        asm volatile("cp.async.wait_group %0;\n" ::"n"(STAGES - 2));
        __syncthreads(); // stage kt landed for every thread; stage kt - 1 is free again
        if (kt + STAGES - 1 < KT) load_stage((kt + STAGES - 1) % STAGES, kt + STAGES - 1);
        asm volatile("cp.async.commit_group;\n" ::);
        const uint32_t sa = sbase + (kt % STAGES) * 2 * TILE_BYTES, sb = sa + TILE_BYTES;
#pragma unroll
        for (int kk = 0; kk < BK / 16; kk++) {
            uint32_t af[4][4], bf[4][2];
#pragma unroll
            for (int i = 0; i < 4; i++) { // rows wm + 16i .., k 16kk ..: matrices (r0-7,k0-7),
                                          // (r8-15,k0-7), (r0-7,k8-15), (r8-15,k8-15)
                const int r = wm + 16 * i + (lane & 7) + ((lane >> 3) & 1) * 8;
                const int c = kk * 2 + (lane >> 4);
                ldsm_x4(sa + swz(r, c), af[i][0], af[i][1], af[i][2], af[i][3]);
            }
#pragma unroll
            for (int j = 0; j < 2; j++) { // columns wn + 16j ..: (n0-7,k0-7), (n0-7,k8-15),
                                          // (n8-15,k0-7), (n8-15,k8-15)
                const int r = wn + 16 * j + (lane & 7) + (lane >> 4) * 8;
                const int c = kk * 2 + ((lane >> 3) & 1);
                ldsm_x4(sb + swz(r, c), bf[2 * j][0], bf[2 * j][1], bf[2 * j + 1][0],
                        bf[2 * j + 1][1]);
            }
#pragma unroll
            for (int i = 0; i < 4; i++)
#pragma unroll
                for (int j = 0; j < 4; j++) mma_bf16(acc[i][j], af[i], bf[j][0], bf[j][1]);
        }
    }
    asm volatile("cp.async.wait_group 0;\n" ::);

    // accumulator (i, j): rows wm + 16i + lane / 4 (+8), columns wn + 8j + 2 (lane % 4) (+1)
#pragma unroll
    for (int j = 0; j < 4; j++) {
        const int n = n0 + wn + 8 * j + 2 * (lane & 3);
        const float b0 = __bfloat162float(b[n]), b1 = __bfloat162float(b[n + 1]);
#pragma unroll
        for (int i = 0; i < 4; i++)
#pragma unroll
            for (int h = 0; h < 2; h++) {
                const int m = m0 + wm + 16 * i + (lane >> 2) + 8 * h;
                if (m >= R) continue;
                // as the unfused path: the product rounded to bf16, then QuickGELU, rounded
                const float v0 = __bfloat162float(__float2bfloat16(acc[i][j][2 * h] + b0));
                const float v1 = __bfloat162float(__float2bfloat16(acc[i][j][2 * h + 1] + b1));
                *reinterpret_cast<__nv_bfloat162 *>(y + (size_t)m * O + n) =
                    __floats2bfloat162_rn(quick_gelu(v0), quick_gelu(v1));
            }
    }
}

void run_shape(cublasLtHandle_t lt, void *ws, size_t ws_bytes, int R, int O, int I) {
    GemmCase c(R, O, I);
    LtLinear ref(c, lt, ws, ws_bytes);
    __nv_bfloat16 *y_fused;
    CK(cudaMalloc(&y_fused, sizeof(__nv_bfloat16) * R * O));
    const dim3 grid(O / BN, (R + BM - 1) / BM);
    auto fused = [&] {
        gelu_gemm_kernel<<<grid, THREADS, SMEM_BYTES>>>(c.x, c.w, c.b, y_fused, R, O, I);
    };
    auto us = [](auto run) { return 1e3f * bench_median_ms(run, 3, 20); };
    const float t_product = us([&] { ref.product(); }), t_gelu = us([&] { ref.gelu(); });
    const float t_both = us([&] { ref.product(), ref.gelu(); }), t_fused = us(fused);
    CK(cudaGetLastError());

    ref.product(), ref.gelu(), fused();
    double err, scale;
    c.compare(y_fused, &err, &scale);
    const double flop = c.flop();
    printf("%6d x %4d x %4d: cuBLASLt %.1f us (%.0f TFLOP/s) + QuickGELU %.1f us = %.1f us in "
           "sequence; fused %.1f us (%.0f TFLOP/s), %.2fx; max abs diff %.2e of %.2f\n",
           R, O, I, t_product, flop / t_product * 1e-6, t_gelu, t_both, t_fused,
           flop / t_fused * 1e-6, t_both / t_fused, err, scale);
    CK(cudaFree(y_fused));
}

} // namespace

int main() {
    CK(cudaFuncSetAttribute(gelu_gemm_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                            SMEM_BYTES));
    cublasLtHandle_t lt;
    CK(cublasLtCreate(&lt));
    const size_t ws_bytes = (size_t)32 << 20;
    void *ws;
    CK(cudaMalloc(&ws, ws_bytes));
    run_shape(lt, ws, ws_bytes, 448 * 50, 3072, 768); // a CMA batch's fc1
    run_shape(lt, ws, ws_bytes, 32 * 50, 3072, 768);  // an Adam step's fc1
    CK(cudaFree(ws));
    CK(cublasLtDestroy(lt));
    return 0;
}
