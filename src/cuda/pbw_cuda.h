/* pbw_cuda.h: the CUDA backend's entry points (compiled when nvcc is found; PBW_HAVE_CUDA).
 *
 * Today this holds device discovery and a self-test kernel; the op kernels arrive behind the
 * same front-ends as the CPU ones (src/core/pbw_ops_*.c). A build with CUDA still runs on a
 * machine without a GPU: pbw_cuda_device_count then returns 0 and pbw uses the CPU.
 */
#ifndef PBW_CUDA_H
#define PBW_CUDA_H

#include <stddef.h>

#include "core/pbw_common.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Number of usable CUDA devices; 0 when there is no driver or no GPU (never an error). */
int pbw_cuda_device_count(void);
/* "NVIDIA H100 80GB HBM3 (sm_90, 79.1 GiB)" into buf; -1 if dev is not usable. */
int pbw_cuda_describe(int dev, char *buf, size_t len, pbw_err *err);
/* Runs a small kernel on dev and checks its result against the CPU: proves the toolkit,
 * driver and card work together. */
int pbw_cuda_selftest(int dev, pbw_err *err);

#ifdef __cplusplus
}
#endif
#endif
