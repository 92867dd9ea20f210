/* pbw_common.h: error reporting, assertions, element types and half-precision conversion.
 *
 * Every library function that can fail returns 0 on success and -1 on failure, and fills a
 * caller-owned pbw_err with a message that names the bad file, argument or tensor:
 *
 *     pbw_err err = {0};
 *     if (pbw_npy_read("z.npy", &arr, &err) != 0) { fprintf(stderr, "%s\n", err.msg); return 1; }
 *
 * Library code never exits. PBW_ASSERT is for invariants that can only break by a bug in pbw;
 * it reports file and line and aborts (so a fuzzer or sanitizer sees it as a crash).
 */
#ifndef PBW_COMMON_H
#define PBW_COMMON_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct pbw_err {
    char msg[512];
} pbw_err;

/* printf-style: writes the message into err (if err is non-NULL) and returns -1, so that
 * `return pbw_err_set(err, "...")` is the idiom for failing. */
int pbw_err_set(pbw_err *err, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

/* Prefixes the existing message with context ("loading g_ema: " + old message). */
int pbw_err_prefix(pbw_err *err, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

/* Environment switches. pbw_env_zero: the variable is "0" (a feature on by default, turned
 * off); pbw_env_set: it is set to anything but "" or "0" (one off by default, turned on). */
int pbw_env_zero(const char *name);
int pbw_env_set(const char *name);

void pbw_assert_fail(const char *expr, const char *file, int line);
#define PBW_ASSERT(e) ((e) ? (void)0 : pbw_assert_fail(#e, __FILE__, __LINE__))

/* Element types of stored tensors. Compute on the CPU is float32; other types exist for
 * checkpoints (fp16/bf16 weights, int64 ids, ...) and are converted on load. */
typedef enum pbw_dtype {
    PBW_F32 = 0,
    PBW_F16,
    PBW_BF16,
    PBW_F64,
    PBW_I64,
    PBW_I32,
    PBW_I16,
    PBW_I8,
    PBW_U8,
    PBW_BOOL,
    PBW_DTYPE_COUNT
} pbw_dtype;

size_t pbw_dtype_size(pbw_dtype t);
const char *pbw_dtype_name(pbw_dtype t);

/* IEEE half and bfloat16 <-> float32. Round to nearest even; NaN and Inf preserved. */
float pbw_f16_to_f32(uint16_t h);
uint16_t pbw_f32_to_f16(float f);
float pbw_bf16_to_f32(uint16_t h);
uint16_t pbw_f32_to_bf16(float f);

/* Converts n elements of type t at src (any alignment) to float32. Returns -1 for types that
 * have no float meaning (none today; bool and ints convert by value). */
int pbw_convert_to_f32(pbw_dtype t, const void *src, size_t n, float *dst);

/* Checked size arithmetic for parsers of hostile input: returns -1 on overflow. */
int pbw_mul_overflow(size_t a, size_t b, size_t *out);
int pbw_add_overflow(size_t a, size_t b, size_t *out);

#ifdef __cplusplus
}
#endif
#endif
