// wgmma_gemm.cu: can a Hopper product of our own (wgmma fed by TMA) carry CLIP's QuickGELU in
// its epilogue and beat cuBLASLt's product followed by pbw's QuickGELU pass? (bench/gelu_gemm.cu
// asked the same with mma.sync and lost at 260 TFLOP/s; docs/cuda.md.) Both sides compute
// y = QuickGELU(bf16(x W^T + b)) in bf16 from bf16 x (R,I) and W (O,I), fp32 sums, as pbw's CLIP
// MLP does; cuBLASLt's side is bench_gemm_ref.cuh (the product with its bias epilogue, then the
// pass). Ours, three warpgroups a block: warpgroup 0 is the producer (one thread issues TMA loads
// of 64-wide k slices of x and W into a ring of stages, 128-byte swizzle, each stage's arrival
// counted by an mbarrier) and gives its registers to the others (setmaxnreg); warpgroups 1 and 2
// multiply with wgmma straight from shared memory, keep one group of products in flight while
// they free the stage before it, and in the epilogue add the bias, round, apply QuickGELU and
// round again as they store. Three ways to share the work:
//   - coop: a block a 128 x BN tile (one launch a tile), each consumer 64 of its rows;
//   - pingpong: persistent blocks (one per SM), each consumer warpgroup a WM x BN tile of its
//     own, the two taking turns (named barriers) so that one's epilogue overlaps the other's
//     products;
//   - pp-mc: pingpong in clusters of two blocks side by side, each loading half of the x slice
//     both multiply, multicast into both (pp-cross and pp-cluster take the multicast, then the
//     cross-block stage release, away, to see what each costs).
// Also the plain product with the bias (no QuickGELU) against cuBLASLt's alone, at fc1's, fc2's
// and qkv's shapes, for the kernels' raw rate. Each is timed as the median of 20 runs after 3
// warm-ups at 448 crops x 50 tokens (a CMA batch of 14) and, for fc1, 32 crops x 50 (an Adam
// step); our output is compared with cuBLASLt's (MISMATCH beyond 2e-2 of the output's scale).
//
// Measured on an H100 80GB HBM3 (every output equal to cuBLASLt's to the bit): the best of ours
// lost everywhere. fc1 with QuickGELU at 22400 rows: cuBLASLt + pass 265 us, coop 128x256
// 374 us, pingpong 128x128 320 us, pp-mc 415-582 us; the bias alone: cuBLASLt 163 us (650
// TFLOP/s), coop 237 us (446), pingpong 251 us. fc2 (K = 3072): cuBLASLt 142 us (740), coop
// 175 us (605). With K = 768 a tile has only 12 k steps, and coop pays its pipeline's fill and
// its epilogue once a tile; pingpong hides them but its 128x128 tiles draw a third more from L2 a
// flop (~6.6 TB/s at its 420 TFLOP/s). The clusters' multicast, which should have cut that,
// made it 1.3-2.2x slower; pp-cross (no multicast, stages still freed in both blocks) was as
// slow and pp-cluster (clusters alone) as fast as pingpong: the cost is the two blocks waiting
// on each other at every stage. pbw took cuDNN's runtime fusion instead
// (bench/cudnn_swish_gemm.cu). Standalone (wgmma needs sm_90a):
//   nvcc -O3 -gencode arch=compute_90a,code=sm_90a bench/wgmma_gemm.cu -lcublasLt -o wgmma_gemm
#include <cuda.h>
#include <cudaTypedefs.h>

#include <cstdint>
#include <functional>

#include "bench_gemm_ref.cuh"

namespace {

const int BM = 128, BK = 64; // a stage's x slice: 128 rows of 64 k = 128 bytes, one swizzle span
const int THREADS = 384;     // warpgroup 0 loads; 1 and 2 multiply 64 rows each

// WM rows of x and BN of W a stage, STAGES stages, their barriers, and room to align.
template <int WM, int BN, int STAGES> constexpr int smem_bytes() {
    return STAGES * (WM + BN) * BK * 2 + 2 * STAGES * 8 + 1024;
}

__device__ __forceinline__ uint32_t smem_u32(const void *p) {
    return (uint32_t)__cvta_generic_to_shared(p);
}

__device__ __forceinline__ void mbar_init(uint32_t bar, uint32_t count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count));
}
// One arrival that also announces `bytes` of TMA traffic to come.
__device__ __forceinline__ void mbar_expect_tx(uint32_t bar, uint32_t bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes)
                 : "memory");
}
__device__ __forceinline__ void mbar_arrive(uint32_t bar) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
// Waits until the barrier's phase of this parity has completed.
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity) {
    uint32_t done = 0;
    while (!done)
        asm volatile("{\n.reg .pred p;\n"
                     "mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
                     "selp.b32 %0, 1, 0, p;\n}\n"
                     : "=r"(done)
                     : "r"(bar), "r"(parity)
                     : "memory");
}

// The box at (c0 inner, c1 outer) of the tensor map into shared memory at dst, counted on bar.
__device__ __forceinline__ void tma_load_2d(uint32_t dst, const CUtensorMap *map, uint32_t bar,
                                            int c0, int c1) {
    asm volatile("cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes"
                 " [%0], [%1, {%3, %4}], [%2];\n" ::"r"(dst),
                 "l"(reinterpret_cast<uint64_t>(map)), "r"(bar), "r"(c0), "r"(c1)
                 : "memory");
}

// As tma_load_2d, the box written at dst in every block of the cluster that mask names, each
// block's barrier at bar counting its bytes.
__device__ __forceinline__ void tma_load_2d_mc(uint32_t dst, const CUtensorMap *map, uint32_t bar,
                                               int c0, int c1, uint16_t mask) {
    asm volatile("cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes"
                 ".multicast::cluster [%0], [%1, {%3, %4}], [%2], %5;\n" ::"r"(dst),
                 "l"(reinterpret_cast<uint64_t>(map)), "r"(bar), "r"(c0), "r"(c1), "h"(mask)
                 : "memory");
}
// An arrival on the barrier at bar in block `rank` of the cluster.
__device__ __forceinline__ void mbar_arrive_in(uint32_t bar, uint32_t rank) {
    uint32_t remote;
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;\n" : "=r"(remote) : "r"(bar), "r"(rank));
    asm volatile("mbarrier.arrive.release.cluster.shared::cluster.b64 _, [%0];\n" ::"r"(remote)
                 : "memory");
}
__device__ __forceinline__ void cluster_sync() {
    asm volatile("barrier.cluster.arrive.release.aligned;\n"
                 "barrier.cluster.wait.acquire.aligned;\n" ::
                     : "memory");
}
__device__ __forceinline__ uint32_t cluster_reg(int which) {
    uint32_t v;
    if (which == 0)
        asm volatile("mov.u32 %0, %%cluster_ctarank;\n" : "=r"(v));
    else if (which == 1)
        asm volatile("mov.u32 %0, %%clusterid.x;\n" : "=r"(v));
    else
        asm volatile("mov.u32 %0, %%nclusterid.x;\n" : "=r"(v));
    return v;
}

// wgmma's shared-memory descriptor of a K-major operand in TMA's 128-byte swizzle: rows of 128
// bytes, 8-row groups 1024 bytes apart (the stride offset); the leading offset is unused for
// this layout. Stepping k by 16 adds 32 bytes to the start address (the swizzle is applied to
// the address bits, so the buffers are 1024-byte aligned).
__device__ __forceinline__ uint64_t sw128_desc(uint32_t addr) {
    return (uint64_t)((addr & 0x3FFFF) >> 4) | ((uint64_t)1 << 16) | ((uint64_t)(1024 >> 4) << 32) |
           ((uint64_t)1 << 62);
}

__device__ __forceinline__ void wgmma_fence() {
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
}
__device__ __forceinline__ void wgmma_commit() {
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
template <int N> __device__ __forceinline__ void wgmma_wait() {
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
// Keeps the compiler from touching accumulator registers across a wgmma wait.
template <int R> __device__ __forceinline__ void fence_regs(float (&d)[R]) {
#pragma unroll
    for (int i = 0; i < R; i++)
        asm volatile("" : "+f"(d[i])::"memory");
}

// d (64 x 128 per warpgroup, fp32) (+)= A (64 x 16, descriptor da) B^T (128 x 16, db); d is
// overwritten where accumulate is 0.
__device__ __forceinline__ void wgmma_n128(float (&d)[64], uint64_t da, uint64_t db,
                                           int accumulate) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {"
                 "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
                 "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
                 "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
                 "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"
                 "}, %64, %65, p, 1, 1, 0, 0;\n}\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]),
                   "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]),
                   "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]),
                   "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
                   "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]),
                   "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]),
                   "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]),
                   "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
                   "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]),
                   "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]),
                   "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
                 : "l"(da), "l"(db), "r"(accumulate)
                 : "memory");
}

// d (64 x 256 per warpgroup, fp32) (+)= A (64 x 16, descriptor da) B^T (256 x 16, db); d is
// overwritten where accumulate is 0.
__device__ __forceinline__ void wgmma_n256(float (&d)[128], uint64_t da, uint64_t db,
                                           int accumulate) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %130, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 {"
        "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
        "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
        "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
        "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, "
        "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, "
        "%80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, "
        "%96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, "
        "%111, "
        "%112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, "
        "%127"
        "}, %128, %129, p, 1, 1, 0, 0;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]),
          "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]),
          "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]),
          "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]),
          "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]),
          "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]),
          "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]),
          "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
          "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]),
          "+f"(d[63]), "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]),
          "+f"(d[70]), "+f"(d[71]), "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]),
          "+f"(d[77]), "+f"(d[78]), "+f"(d[79]), "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]),
          "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]), "+f"(d[88]), "+f"(d[89]), "+f"(d[90]),
          "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95]), "+f"(d[96]), "+f"(d[97]),
          "+f"(d[98]), "+f"(d[99]), "+f"(d[100]), "+f"(d[101]), "+f"(d[102]), "+f"(d[103]),
          "+f"(d[104]), "+f"(d[105]), "+f"(d[106]), "+f"(d[107]), "+f"(d[108]), "+f"(d[109]),
          "+f"(d[110]), "+f"(d[111]), "+f"(d[112]), "+f"(d[113]), "+f"(d[114]), "+f"(d[115]),
          "+f"(d[116]), "+f"(d[117]), "+f"(d[118]), "+f"(d[119]), "+f"(d[120]), "+f"(d[121]),
          "+f"(d[122]), "+f"(d[123]), "+f"(d[124]), "+f"(d[125]), "+f"(d[126]), "+f"(d[127])
        : "l"(da), "l"(db), "r"(accumulate)
        : "memory");
}

template <int BN>
__device__ __forceinline__ void wgmma_tile(float (&d)[BN / 2], uint64_t da, uint64_t db,
                                           int accumulate) {
    if constexpr (BN == 256)
        wgmma_n256(d, da, db, accumulate);
    else
        wgmma_n128(d, da, db, accumulate);
}

__device__ __forceinline__ void named_sync(int id, int n) {
    asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(n) : "memory");
}
__device__ __forceinline__ void named_arrive(int id, int n) {
    asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(n) : "memory");
}

// Stores a warpgroup's 64 x BN accumulators d at rows m0 .., columns n0 .. of y (R,O): d[4i +
// 2h + e] is row 16 warp + lane / 4 + 8h, column 8i + 2 (lane % 4) + e. The bias is added, and
// where GELU, the sum rounded to bf16 as the unfused path's product is, then QuickGELU.
template <int BN, bool GELU>
__device__ __forceinline__ void
store_tile(const float (&d)[BN / 2], const __nv_bfloat16 *__restrict__ b,
           __nv_bfloat16 *__restrict__ y, int m0, int n0, int R, int O, int warp, int lane) {
    const int row = m0 + warp * 16 + lane / 4;
#pragma unroll
    for (int i = 0; i < BN / 8; i++) {
        const int n = n0 + 8 * i + 2 * (lane % 4);
        const float2 bb = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162 *>(b + n));
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const int m = row + 8 * h;
            if (m >= R)
                continue;
            float v0 = d[4 * i + 2 * h] + bb.x, v1 = d[4 * i + 2 * h + 1] + bb.y;
            if (GELU) {
                v0 = quick_gelu(__bfloat162float(__float2bfloat16(v0)));
                v1 = quick_gelu(__bfloat162float(__float2bfloat16(v1)));
            }
            *reinterpret_cast<__nv_bfloat162 *>(y + (size_t)m * O + n) =
                __floats2bfloat162_rn(v0, v1);
        }
    }
}

// Barriers in shared memory after the stages: full[s] (the producer's expect_tx, then TMA's
// bytes) and empty[s] (each consuming warp's arrival once it is done reading stage s).
__device__ __forceinline__ void init_barriers(uint32_t full, uint32_t empty, int stages,
                                              int consumers) {
    if (threadIdx.x == 0) {
        for (int s = 0; s < stages; s++) {
            mbar_init(full + 8 * s, 1);
            mbar_init(empty + 8 * s, consumers);
        }
        asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    }
    __syncthreads();
}

// Cooperative: block (x, y) computes the 128 x BN tile of y at rows 128 y, columns BN x; both
// consumer warpgroups share each stage's W slice, 64 rows each. y (R,O) = [QuickGELU](bf16(x
// (R,I) W^T (O,I) + b)) in bf16; O % BN == 0, I % 64 == 0; rows past R are read as zeros by TMA
// and not stored.
template <int BN, int STAGES, bool GELU>
__global__ void __launch_bounds__(THREADS, 1)
    coop_kernel(const __grid_constant__ CUtensorMap tx, const __grid_constant__ CUtensorMap tw,
                const __nv_bfloat16 *__restrict__ b, __nv_bfloat16 *__restrict__ y, int R, int O,
                int I) {
    extern __shared__ unsigned char smem_raw[];
    const int A_BYTES = BM * BK * 2, STAGE_BYTES = (BM + BN) * BK * 2;
    const uint32_t base = (smem_u32(smem_raw) + 1023) & ~1023u;
    const uint32_t full = base + STAGES * STAGE_BYTES, empty = full + 8 * STAGES;
    const int wg = threadIdx.x / 128, tid = threadIdx.x % 128;
    const int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN, KT = I / BK;
    init_barriers(full, empty, STAGES, 8);

    if (wg == 0) {
        asm volatile("setmaxnreg.dec.sync.aligned.u32 40;\n");
        if (tid == 0) {
            for (int kt = 0; kt < KT; kt++) {
                const int s = kt % STAGES;
                if (kt >= STAGES)
                    mbar_wait(empty + 8 * s, (kt / STAGES - 1) & 1);
                const uint32_t sa = base + s * STAGE_BYTES;
                mbar_expect_tx(full + 8 * s, STAGE_BYTES);
                tma_load_2d(sa, &tx, full + 8 * s, kt * BK, m0);
                tma_load_2d(sa + A_BYTES, &tw, full + 8 * s, kt * BK, n0);
            }
        }
        return;
    }
    asm volatile("setmaxnreg.inc.sync.aligned.u32 232;\n");
    const int c = wg - 1, warp = tid / 32, lane = tid % 32;
    float d[BN / 2];
#pragma unroll
    for (int i = 0; i < BN / 2; i++)
        d[i] = 0.0f;
    for (int kt = 0; kt < KT; kt++) {
        const int s = kt % STAGES;
        mbar_wait(full + 8 * s, (kt / STAGES) & 1);
        const uint32_t sa = base + s * STAGE_BYTES;
        const uint64_t da = sw128_desc(sa + c * 64 * 128), db = sw128_desc(sa + A_BYTES);
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < BK / 16; kk++)
            wgmma_tile<BN>(d, da + 2 * kk, db + 2 * kk, kt > 0 || kk > 0);
        wgmma_commit();
        wgmma_wait<1>(); // the group before this one is done: its stage may be refilled
        fence_regs(d);
        if (kt > 0 && lane == 0)
            mbar_arrive(empty + 8 * ((kt - 1) % STAGES));
    }
    wgmma_wait<0>();
    fence_regs(d);
    store_tile<BN, GELU>(d, b, y, m0 + c * 64, n0, R, O, warp, lane);
}

// How ping-pong blocks share their x slices: PLAIN alone; in clusters of two blocks side by side
// along y's columns, MC each loading half of the x slice both multiply, multicast into both, a
// stage refilled only once the consuming warps of both blocks have freed it (each arrives on both
// blocks' empty barrier: 8 arrivals), which cuts the traffic from L2 a k step from (WM + BN) *
// 128 to (WM / 2 + BN) * 128 bytes a block; and, to see what each part of that costs, CROSS (each
// block loads its own x slice, stages still freed in both) and CLUSTER (clusters alone).
enum Share { MC, CROSS, CLUSTER, PLAIN };

// A consuming warp's arrival on the empty barrier of its stage: in both blocks of the cluster
// where they share stages, else in its own.
template <int MODE> __device__ __forceinline__ void free_stage(uint32_t bar, int rank) {
    mbar_arrive(bar);
    if (MODE == MC || MODE == CROSS)
        mbar_arrive_in(bar, rank ^ 1);
}

// Ping-pong, persistent: each block (or cluster of two) takes its units of WM rows by BN columns
// (by 2 BN in a cluster) in turn, unit u = p + j x the blocks (clusters), row-major over y,
// alternately consumer warpgroup 1 and 2. A warpgroup waits for the other to have issued its
// unit's products before it issues its own (named barriers 1 and 2), so that one's epilogue runs
// while the other's products keep the tensor cores busy. The producer fills one ring of stages
// for both in unit order. Same y as coop_kernel; MODE a Share.
template <int WM, int BN, int STAGES, bool GELU, int MODE>
__global__ void __launch_bounds__(THREADS, 1)
    pingpong_kernel(const __grid_constant__ CUtensorMap tx, const __grid_constant__ CUtensorMap tw,
                    const __nv_bfloat16 *__restrict__ b, __nv_bfloat16 *__restrict__ y, int R,
                    int O, int I) {
    constexpr int MI = WM / 64, WIDTH = MODE == PLAIN ? 1 : 2; // m64 products a k step; blocks
    extern __shared__ unsigned char smem_raw[];
    const int A_BYTES = WM * BK * 2, STAGE_BYTES = (WM + BN) * BK * 2;
    const uint32_t base = (smem_u32(smem_raw) + 1023) & ~1023u;
    const uint32_t full = base + STAGES * STAGE_BYTES, empty = full + 8 * STAGES;
    const int wg = threadIdx.x / 128, tid = threadIdx.x % 128;
    const int rank = MODE == PLAIN ? 0 : (int)cluster_reg(0);
    const int cid = MODE == PLAIN ? (int)blockIdx.x : (int)cluster_reg(1);
    const int ncl = MODE == PLAIN ? (int)gridDim.x : (int)cluster_reg(2);
    const int KT = I / BK, NP = O / BN / WIDTH, units = (R + WM - 1) / WM * NP;
    const int mine = (units - cid + ncl - 1) / ncl;
    if (threadIdx.x == 0) {
        for (int s = 0; s < STAGES; s++) {
            mbar_init(full + 8 * s, 1); // the producer's expect_tx, then TMA's bytes
            mbar_init(empty + 8 * s, MODE == MC || MODE == CROSS ? 8 : 4);
        }
        asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    }
    if (MODE == PLAIN)
        __syncthreads();
    else
        cluster_sync(); // both blocks' barriers exist before either multicasts or arrives

    if (wg == 0) {
        asm volatile("setmaxnreg.dec.sync.aligned.u32 40;\n");
        if (tid == 0) {
            int g = 0; // k steps loaded so far, over all units
            for (int j = 0; j < mine; j++) {
                const int u = cid + j * ncl, m0 = u / NP * WM, n0 = (u % NP * WIDTH + rank) * BN;
                for (int kt = 0; kt < KT; kt++, g++) {
                    const int s = g % STAGES;
                    if (g >= STAGES)
                        mbar_wait(empty + 8 * s, (g / STAGES - 1) & 1);
                    const uint32_t sa = base + s * STAGE_BYTES;
                    mbar_expect_tx(full + 8 * s, STAGE_BYTES);
                    if (MODE == MC)
                        tma_load_2d_mc(sa + rank * (WM / 2) * 128, &tx, full + 8 * s, kt * BK,
                                       m0 + rank * (WM / 2), 3);
                    else
                        tma_load_2d(sa, &tx, full + 8 * s, kt * BK, m0);
                    tma_load_2d(sa + A_BYTES, &tw, full + 8 * s, kt * BK, n0);
                }
            }
        }
        __syncwarp();
    } else {
        asm volatile("setmaxnreg.inc.sync.aligned.u32 232;\n");
        const int c = wg - 1, warp = tid / 32, lane = tid % 32;
        float d[MI][BN / 2];
        for (int j = c; j < mine; j += 2) {
            const int u = cid + j * ncl, m0 = u / NP * WM, n0 = (u % NP * WIDTH + rank) * BN;
            if (j > 0)
                named_sync(1 + c, 256); // the other has issued unit j - 1's products
            for (int kt = 0; kt < KT; kt++) {
                const int g = j * KT + kt, s = g % STAGES;
                mbar_wait(full + 8 * s, (g / STAGES) & 1);
                const uint32_t sa = base + s * STAGE_BYTES;
                const uint64_t db = sw128_desc(sa + A_BYTES);
                wgmma_fence();
#pragma unroll
                for (int kk = 0; kk < BK / 16; kk++)
#pragma unroll
                    for (int mi = 0; mi < MI; mi++)
                        wgmma_tile<BN>(d[mi], sw128_desc(sa + mi * 64 * 128) + 2 * kk, db + 2 * kk,
                                       kt > 0 || kk > 0);
                wgmma_commit();
                wgmma_wait<1>(); // the group before this one is done: its stage may be refilled
#pragma unroll
                for (int mi = 0; mi < MI; mi++)
                    fence_regs(d[mi]);
                if (kt > 0 && lane == 0)
                    free_stage<MODE>(empty + 8 * ((g - 1) % STAGES), rank);
            }
            if (j + 1 < mine)
                named_arrive(2 - c, 256); // the other may issue unit j + 1's
            wgmma_wait<0>();
#pragma unroll
            for (int mi = 0; mi < MI; mi++)
                fence_regs(d[mi]);
            if (lane == 0)
                free_stage<MODE>(empty + 8 * ((j * KT + KT - 1) % STAGES), rank);
#pragma unroll
            for (int mi = 0; mi < MI; mi++)
                store_tile<BN, GELU>(d[mi], b, y, m0 + mi * 64, n0, R, O, warp, lane);
        }
    }
    if (MODE != PLAIN)
        cluster_sync(); // neither block leaves while the other may still write to its memory
}

PFN_cuTensorMapEncodeTiled_v12000 g_encode;
int g_sms;

// A row-major bf16 matrix (rows, inner) as TMA boxes of box_rows x 64, 128-byte swizzle.
CUtensorMap tensor_map(const __nv_bfloat16 *p, int rows, int inner, int box_rows) {
    CUtensorMap m;
    const cuuint64_t dims[2] = {(cuuint64_t)inner, (cuuint64_t)rows};
    const cuuint64_t strides[1] = {(cuuint64_t)inner * 2};
    const cuuint32_t box[2] = {(cuuint32_t)BK, (cuuint32_t)box_rows}, es[2] = {1, 1};
    CK(g_encode(&m, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, const_cast<__nv_bfloat16 *>(p), dims,
                strides, box, es, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE));
    return m;
}

float us(const std::function<void()> &run) { return 1e3f * bench_median_ms(run, 3, 20); }

// One of our kernels against cuBLASLt (+ the pass where GELU): times, rate, and the largest
// difference, after filling y with NaN so that any element left unstored shows.
void compare(const GemmCase &c, const LtLinear &ref, __nv_bfloat16 *y, bool gelu, const char *name,
             const std::function<void()> &ours) {
    const float t_ref = gelu ? us([&] { ref.product(), ref.gelu(); }) : us([&] { ref.product(); });
    const float t_ours = us(ours);
    CK(cudaGetLastError());
    ref.product();
    if (gelu)
        ref.gelu();
    CK(cudaMemset(y, 0xff, sizeof(__nv_bfloat16) * c.R * c.O));
    ours();
    double err, scale;
    c.compare(y, &err, &scale);
    const double flop = c.flop();
    printf("%6d x %4d x %4d %-9s %-22s: cuBLASLt%s %.1f us (%.0f TFLOP/s); ours %.1f us (%.0f "
           "TFLOP/s), %.2fx; max abs diff %.2e of %.2f%s\n",
           c.R, c.O, c.I, gelu ? "QuickGELU" : "bias", name, gelu ? " + pass" : "", t_ref,
           flop / t_ref * 1e-6, t_ours, flop / t_ours * 1e-6, t_ref / t_ours, err, scale,
           err <= 2e-2 * scale && err == err ? "" : "  MISMATCH");
}

template <int BN, int STAGES, bool GELU>
void coop(const GemmCase &c, const LtLinear &ref, __nv_bfloat16 *y) {
    auto k = coop_kernel<BN, STAGES, GELU>;
    const int smem = smem_bytes<BM, BN, STAGES>();
    CK(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
    const CUtensorMap tx = tensor_map(c.x, c.R, c.I, BM), tw = tensor_map(c.w, c.O, c.I, BN);
    const dim3 grid(c.O / BN, (c.R + BM - 1) / BM);
    char name[64];
    snprintf(name, sizeof name, "coop 128x%d, %d st", BN, STAGES);
    compare(c, ref, y, GELU, name,
            [&] { k<<<grid, THREADS, smem>>>(tx, tw, c.b, y, c.R, c.O, c.I); });
}

template <int WM, int BN, int STAGES, bool GELU, int MODE>
void pingpong(const GemmCase &c, const LtLinear &ref, __nv_bfloat16 *y) {
    auto k = pingpong_kernel<WM, BN, STAGES, GELU, MODE>;
    const int smem = smem_bytes<WM, BN, STAGES>();
    CK(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
    const CUtensorMap tx = tensor_map(c.x, c.R, c.I, MODE == MC ? WM / 2 : WM),
                      tw = tensor_map(c.w, c.O, c.I, BN);
    const int width = MODE == PLAIN ? 1 : 2, units = (c.R + WM - 1) / WM * (c.O / BN / width);
    cudaLaunchConfig_t cfg = {};
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeClusterDimension;
    attr[0].val.clusterDim.x = 2, attr[0].val.clusterDim.y = 1, attr[0].val.clusterDim.z = 1;
    cfg.blockDim = dim3(THREADS), cfg.dynamicSmemBytes = smem, cfg.attrs = attr;
    cfg.numAttrs = MODE == PLAIN ? 0 : 1;
    int groups = g_sms; // blocks, or clusters of two that fit at once
    if (MODE != PLAIN) {
        cfg.gridDim = dim3(2 * g_sms);
        CK(cudaOccupancyMaxActiveClusters(&groups, k, &cfg));
    }
    cfg.gridDim = dim3(width * std::min(units, groups));
    static const char *share[4] = {"pp-mc", "pp-cross", "pp-cluster", "pingpong"};
    char name[64];
    snprintf(name, sizeof name, "%s %dx%d, %d st", share[MODE], WM, BN, STAGES);
    compare(c, ref, y, GELU, name,
            [&] { CK(cudaLaunchKernelEx(&cfg, k, tx, tw, c.b, y, c.R, c.O, c.I)); });
}

template <bool GELU>
void run_shape(cublasLtHandle_t lt, void *ws, size_t ws_bytes, int R, int O, int I) {
    GemmCase c(R, O, I);
    LtLinear ref(c, lt, ws, ws_bytes);
    __nv_bfloat16 *y;
    CK(cudaMalloc(&y, sizeof(__nv_bfloat16) * R * O));
    coop<256, 4, GELU>(c, ref, y);
    pingpong<128, 128, 6, GELU, PLAIN>(c, ref, y);
    pingpong<128, 128, 6, GELU, MC>(c, ref, y);
    pingpong<128, 128, 6, GELU, CROSS>(c, ref, y);
    pingpong<128, 128, 6, GELU, CLUSTER>(c, ref, y);
    CK(cudaFree(y));
}

} // namespace

int main() {
    cudaDriverEntryPointQueryResult q;
    CK(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled",
                                        reinterpret_cast<void **>(&g_encode), 12000,
                                        cudaEnableDefault, &q));
    if (q != cudaDriverEntryPointSuccess) {
        fprintf(stderr, "the driver has no cuTensorMapEncodeTiled\n");
        return 1;
    }
    CK(cudaDeviceGetAttribute(&g_sms, cudaDevAttrMultiProcessorCount, 0));
    cublasLtHandle_t lt;
    CK(cublasLtCreate(&lt));
    const size_t ws_bytes = (size_t)32 << 20;
    void *ws;
    CK(cudaMalloc(&ws, ws_bytes));
    run_shape<true>(lt, ws, ws_bytes, 448 * 50, 3072, 768); // a CMA batch's fc1
    run_shape<true>(lt, ws, ws_bytes, 32 * 50, 3072, 768);  // an Adam step's fc1
    run_shape<false>(lt, ws, ws_bytes, 448 * 50, 3072, 768);
    run_shape<false>(lt, ws, ws_bytes, 448 * 50, 768, 3072); // a CMA batch's fc2
    run_shape<false>(lt, ws, ws_bytes, 448 * 50, 2304, 768); // its qkv
    CK(cudaFree(ws));
    CK(cublasLtDestroy(lt));
    return 0;
}
