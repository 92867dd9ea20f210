/* pbw_weights.h: taking a model's parameters out of checkpoint records.
 *
 * Models read their architecture from the shapes in a checkpoint and copy each parameter into
 * float32 tensors in their own arena (fp16/bf16 checkpoints convert on load). Every lookup
 * names the tensor in its error, so a user learns which one is missing or has the wrong shape:
 *
 *     pbw_tensor *w = pbw_weight_get(&model->arena, &recs, "g_ema.style.1.weight", 2,
 *                                    (int64_t[]){512, 512}, &err);   // NULL + message on error
 *     int64_t shape[8]; int nd;
 *     if (pbw_weight_shape(&recs, "g_ema.input.input", &nd, shape)) ...  // -1 when absent
 *
 * A dimension of -1 in `shape` accepts any size.
 */
#ifndef PBW_WEIGHTS_H
#define PBW_WEIGHTS_H

#include "core/pbw_tensor.h"
#include "formats/pbw_records.h"

/* Copies the record `name` into a new float32 tensor in arena `a` after checking its shape.
 * prefix (may be NULL or "") is prepended to name ("g_ema." + "conv1.conv.weight"). */
pbw_tensor *pbw_weight_get(pbw_arena *a, const pbw_records *r, const char *prefix,
                           const char *name, int ndim, const int64_t *shape, pbw_err *err);
/* Same, but returns NULL without an error when the tensor is absent (optional parameters). */
pbw_tensor *pbw_weight_get_opt(pbw_arena *a, const pbw_records *r, const char *prefix,
                               const char *name, int ndim, const int64_t *shape, pbw_err *err,
                               int *failed);
/* Rank and shape of a record; 0 when present, -1 when absent. */
int pbw_weight_shape(const pbw_records *r, const char *prefix, const char *name, int *ndim,
                     int64_t *shape);

#endif
