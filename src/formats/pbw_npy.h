/* pbw_npy.h: NumPy .npy arrays as float32.
 *
 *     pbw_npy a; pbw_err err;
 *     if (pbw_npy_read("z.npy", &a, &err)) { puts(err.msg); return 1; }
 *     // a.ndim, a.shape[0..ndim), a.numel floats at a.data, C order
 *     pbw_npy_free(&a);
 *
 *     int64_t shape[2] = {4, 512};
 *     pbw_npy_write("out.npy", data, 2, shape, &err);   // float32 '<f4', C order, atomic
 *
 * Reads versions 1.0, 2.0 and 3.0 with dtype '<f4', '<f8' or '<f2' (converted to float32), in C
 * order; Fortran order, big-endian and other dtypes are refused with a message. The data size
 * must match the shape exactly. On failure *out is zeroed (nothing to free). a.data is owned
 * by the pbw_npy (malloc'd; never NULL after a successful read, even for 0 elements).
 */
#ifndef PBW_NPY_H
#define PBW_NPY_H

#include "../core/pbw_common.h"

#ifdef __cplusplus
extern "C" {
#endif

#define PBW_NPY_MAX_DIMS 8

typedef struct pbw_npy {
    int ndim;
    int64_t shape[PBW_NPY_MAX_DIMS];
    int64_t numel;
    float *data;
} pbw_npy;

int pbw_npy_read(const char *path, pbw_npy *out, pbw_err *err);
/* Same from an in-memory file (buf is not kept). */
int pbw_npy_parse(const void *buf, size_t len, pbw_npy *out, pbw_err *err);
/* Writes numel = prod(shape) floats as a version 1.0 (2.0 if the header needs it) file. */
int pbw_npy_write(const char *path, const float *data, int ndim, const int64_t *shape,
                  pbw_err *err);
void pbw_npy_free(pbw_npy *a);

#ifdef __cplusplus
}
#endif
#endif
