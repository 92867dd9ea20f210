/* cuda_parity.h: checks that an op (or any chain of ops) gives the same output and the same
 * input gradients on CUDA as on the CPU.
 *
 *     static pbw_tensor *f(pbw_ctx *ctx, pbw_tensor **in, void *arg) {
 *         return pbw_gelu(ctx, in[0]);
 *     }
 *     PBW_TEST(cuda_gelu) {
 *         parity_input in[] = {{4, {2, 3, 8, 8}, 1}};   // rank, shape, requires_grad
 *         CHECK(parity_check("gelu", f, NULL, 1, in, 1e-5) == 0);
 *     }
 *
 * parity_check draws every input from a fixed-seed uniform(lo, hi) (lo = hi = 0 means (-1, 1)),
 * runs f on a CPU context and on a CUDA context, seeds backward with the same random output
 * gradient, and compares the output and the gradient of every input that asks for one by
 * max |cuda - cpu| / max(|cpu|) (the error relative to the tensor's scale). It prints one line
 * per comparison and returns the number over `tol`. Tests named cuda_* run only where a CUDA
 * device works (the runner skips them elsewhere, and `make test-cuda` requires one).
 */
#ifndef PBW_CUDA_PARITY_H
#define PBW_CUDA_PARITY_H

#include "core/pbw_ops.h"

typedef pbw_tensor *(*parity_fn)(pbw_ctx *ctx, pbw_tensor **in, void *arg);

typedef struct parity_input {
    int ndim;
    int64_t shape[PBW_MAX_DIMS];
    int requires_grad;
    float lo, hi; /* uniform range; both 0 means (-1, 1) */
} parity_input;

int parity_check(const char *name, parity_fn f, void *arg, int nin, const parity_input *in,
                 double tol);

/* One run's output and the gradients of the inputs that ask for one (g[i], NULL for the others);
 * malloc'd, freed by parity_outputs_free. */
typedef struct parity_outputs {
    float *y, *g[8];
    int64_t ny, ng[8];
} parity_outputs;
/* f run once on dev from parity_check's inputs and output gradient (the same fixed seed): for
 * comparing two runs on one device, say with a switch set for one. 0, or -1 (printed, name
 * saying which). */
int parity_run(pbw_device dev, parity_fn f, void *arg, int nin, const parity_input *in,
               const char *name, parity_outputs *o);
void parity_outputs_free(parity_outputs *o);

#endif
