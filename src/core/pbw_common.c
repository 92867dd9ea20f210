/* pbw_common.c: errors, assertions, dtype helpers and fp16/bf16 conversion. */
#include "pbw_common.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int pbw_err_set(pbw_err *err, const char *fmt, ...) {
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
    }
    return -1;
}

int pbw_err_prefix(pbw_err *err, const char *fmt, ...) {
    if (err) {
        char old[sizeof err->msg];
        char pre[sizeof err->msg];
        memcpy(old, err->msg, sizeof old);
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(pre, sizeof pre, fmt, ap);
        va_end(ap);
        /* pre then old, cut to the message's room (without snprintf's truncation warning) */
        const size_t room = sizeof err->msg - 1;
        size_t lp = strnlen(pre, sizeof pre), lo = strnlen(old, sizeof old);
        if (lp > room) lp = room;
        if (lo > room - lp) lo = room - lp;
        memcpy(err->msg, pre, lp);
        memcpy(err->msg + lp, old, lo);
        err->msg[lp + lo] = 0;
    }
    return -1;
}

int pbw_env_zero(const char *name) {
    const char *e = getenv(name);
    return e && !strcmp(e, "0");
}

int pbw_env_set(const char *name) {
    const char *e = getenv(name);
    return e && *e && strcmp(e, "0") != 0;
}

void pbw_assert_fail(const char *expr, const char *file, int line) {
    fprintf(stderr, "pbw: internal error: assertion '%s' failed at %s:%d\n", expr, file, line);
    abort();
}

static const struct {
    const char *name;
    size_t size;
} dtype_info[PBW_DTYPE_COUNT] = {
    [PBW_F32] = {"float32", 4}, [PBW_F16] = {"float16", 2}, [PBW_BF16] = {"bfloat16", 2},
    [PBW_F64] = {"float64", 8}, [PBW_I64] = {"int64", 8},   [PBW_I32] = {"int32", 4},
    [PBW_I16] = {"int16", 2},   [PBW_I8] = {"int8", 1},     [PBW_U8] = {"uint8", 1},
    [PBW_BOOL] = {"bool", 1},
};

size_t pbw_dtype_size(pbw_dtype t) { return (unsigned)t < PBW_DTYPE_COUNT ? dtype_info[t].size : 0; }

const char *pbw_dtype_name(pbw_dtype t) {
    return (unsigned)t < PBW_DTYPE_COUNT ? dtype_info[t].name : "invalid";
}

static float bits_to_f32(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static uint32_t f32_to_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

float pbw_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f;
    uint32_t man = h & 0x3ff;
    if (exp == 0x1f) return bits_to_f32(sign | 0x7f800000u | (man << 13)); /* inf / nan */
    if (exp == 0) {
        if (man == 0) return bits_to_f32(sign);
        /* subnormal: value = man * 2^-24 */
        float v = (float)man * (1.0f / 16777216.0f);
        return sign ? -v : v;
    }
    return bits_to_f32(sign | ((exp + 112) << 23) | (man << 13));
}

uint16_t pbw_f32_to_f16(float f) {
    uint32_t u = f32_to_bits(f);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000);
    uint32_t abs = u & 0x7fffffffu;
    if (abs >= 0x7f800000u) /* inf or nan (keep a quiet nan) */
        return sign | 0x7c00 | (abs > 0x7f800000u ? 0x200 : 0);
    if (abs >= 0x477ff000u) return sign | 0x7c00; /* rounds to >= 65520: overflow to inf */
    if (abs < 0x38800000u) {                       /* below 2^-14: subnormal or zero */
        /* value in units of 2^-24, rounded to nearest even */
        uint32_t man = (abs & 0x7fffff) | 0x800000;
        int shift = 126 - (int)(abs >> 23); /* 113 - exp + 13 */
        if (shift > 24) return sign;
        uint32_t q = man >> shift;
        uint32_t rem = man & ((1u << shift) - 1);
        uint32_t half = 1u << (shift - 1);
        if (rem > half || (rem == half && (q & 1))) q++;
        return sign | (uint16_t)q;
    }
    uint32_t r = abs - 0x38000000u; /* rebias exponent 127 -> 15 */
    uint32_t q = r >> 13;
    uint32_t rem = r & 0x1fff;
    if (rem > 0x1000 || (rem == 0x1000 && (q & 1))) q++;
    return sign | (uint16_t)q;
}

float pbw_bf16_to_f32(uint16_t h) { return bits_to_f32((uint32_t)h << 16); }

uint16_t pbw_f32_to_bf16(float f) {
    uint32_t u = f32_to_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* quiet nan */
    u += 0x7fff + ((u >> 16) & 1);
    return (uint16_t)(u >> 16);
}

/* One loop per type (a switch per element kept a 600 MB checkpoint's copy at ~2 GB/s). */
#define CONVERT(T, EXPR)                                                                          \
    for (size_t i = 0; i < n; i++) {                                                             \
        T v;                                                                                     \
        memcpy(&v, s + i * sizeof v, sizeof v);                                                  \
        dst[i] = (EXPR);                                                                         \
    }                                                                                            \
    return 0

int pbw_convert_to_f32(pbw_dtype t, const void *src, size_t n, float *dst) {
    const unsigned char *s = (const unsigned char *)src;
    switch (t) {
    case PBW_F32: memcpy(dst, src, n * sizeof *dst); return 0;
    case PBW_F16: CONVERT(uint16_t, pbw_f16_to_f32(v));
    case PBW_BF16: CONVERT(uint16_t, pbw_bf16_to_f32(v));
    case PBW_F64: CONVERT(double, (float)v);
    case PBW_I64: CONVERT(int64_t, (float)v);
    case PBW_I32: CONVERT(int32_t, (float)v);
    case PBW_I16: CONVERT(int16_t, (float)v);
    case PBW_I8: CONVERT(int8_t, (float)v);
    case PBW_U8: CONVERT(uint8_t, (float)v);
    case PBW_BOOL: CONVERT(uint8_t, v ? 1.0f : 0.0f);
    default: return -1;
    }
}
#undef CONVERT

int pbw_mul_overflow(size_t a, size_t b, size_t *out) {
    if (a != 0 && b > SIZE_MAX / a) return -1;
    *out = a * b;
    return 0;
}

int pbw_add_overflow(size_t a, size_t b, size_t *out) {
    if (b > SIZE_MAX - a) return -1;
    *out = a + b;
    return 0;
}
