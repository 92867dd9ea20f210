/* pbw_ops_internal.h: helpers shared by the op front-ends (not part of the public API). */
#ifndef PBW_OPS_INTERNAL_H
#define PBW_OPS_INTERNAL_H

#include "pbw_ops.h"

/* Fails the context unless every tensor is non-NULL, float32 and on the context's device.
 * Returns 0 when the op may run. NULL inputs mean an earlier op failed: no new message. */
int pbw_op_begin(pbw_ctx *ctx, const char *op, int n, pbw_tensor *const *ts);

/* The tensor's shape right-aligned in 5 slots (leading ones). */
void pbw_shape5(const pbw_tensor *t, int64_t *s5);
/* Element strides of a tensor of shape t seen in a 5-D index space `shape5` in which t
 * broadcasts: 0 where t has size 1 (or no dim), the row-major stride otherwise. */
void pbw_strides5(const pbw_tensor *t, const int64_t *shape5, int64_t *st);
/* Dense row-major strides of a 5-D shape. */
void pbw_dense_strides5(const int64_t *shape5, int64_t *st);
/* Normalizes a possibly negative axis; -1 when out of range. */
int pbw_axis(int axis, int ndim);

#endif
