/* pbw_npy.c: .npy reader and writer (see pbw_npy.h).
 *
 * Format: "\x93NUMPY", major, minor, header length (u16 for 1.x, u32 for 2.x/3.x), then a
 * Python dict literal such as {'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }
 * padded with spaces and ending in '\n', then the raw data. The dict is read by a small parser
 * that knows only quoted strings, True/False and tuples of non-negative integers. */
#include "pbw_npy.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pbw_file.h"

#define NPY_MAX_HEADER (1u << 20)

void pbw_npy_free(pbw_npy *a) {
    if (!a) return;
    free(a->data);
    memset(a, 0, sizeof *a);
}

typedef struct {
    const char *p, *end;
} lit;

static void lit_ws(lit *l) {
    while (l->p < l->end && (*l->p == ' ' || *l->p == '\t' || *l->p == '\n' || *l->p == '\r'))
        l->p++;
}

static int lit_accept(lit *l, char c) {
    lit_ws(l);
    if (l->p < l->end && *l->p == c) {
        l->p++;
        return 1;
    }
    return 0;
}

/* A quoted string without escapes (numpy never writes any) into out[cap]. */
static int lit_string(lit *l, char *out, size_t cap) {
    lit_ws(l);
    if (l->p >= l->end || (*l->p != '\'' && *l->p != '"')) return -1;
    char q = *l->p++;
    size_t n = 0;
    while (l->p < l->end && *l->p != q) {
        if (*l->p == '\\' || n + 1 >= cap) return -1;
        out[n++] = *l->p++;
    }
    if (l->p >= l->end) return -1;
    l->p++;
    out[n] = 0;
    return 0;
}

typedef struct {
    char descr[16];
    int fortran, have_descr, have_fortran, have_shape;
    int ndim;
    int64_t shape[PBW_NPY_MAX_DIMS];
} npy_header;

static int parse_dict(const char *s, size_t n, npy_header *h, pbw_err *err) {
    lit l = {s, s + n};
    memset(h, 0, sizeof *h);
    if (!lit_accept(&l, '{')) return pbw_err_set(err, "npy: header is not a dict");
    while (!lit_accept(&l, '}')) {
        char key[32];
        if (lit_string(&l, key, sizeof key) || !lit_accept(&l, ':'))
            return pbw_err_set(err, "npy: malformed header dict");
        lit_ws(&l);
        if (strcmp(key, "descr") == 0) {
            if (lit_string(&l, h->descr, sizeof h->descr))
                return pbw_err_set(err, "npy: unsupported dtype description");
            h->have_descr = 1;
        } else if (strcmp(key, "fortran_order") == 0) {
            if ((size_t)(l.end - l.p) >= 4 && memcmp(l.p, "True", 4) == 0) h->fortran = 1, l.p += 4;
            else if ((size_t)(l.end - l.p) >= 5 && memcmp(l.p, "False", 5) == 0) l.p += 5;
            else return pbw_err_set(err, "npy: fortran_order is not True or False");
            h->have_fortran = 1;
        } else if (strcmp(key, "shape") == 0) {
            if (!lit_accept(&l, '(')) return pbw_err_set(err, "npy: shape is not a tuple");
            h->ndim = 0;
            while (!lit_accept(&l, ')')) {
                lit_ws(&l);
                if (l.p >= l.end || *l.p < '0' || *l.p > '9')
                    return pbw_err_set(err, "npy: shape holds something other than a size");
                int64_t v = 0;
                while (l.p < l.end && *l.p >= '0' && *l.p <= '9') {
                    if (v > (INT64_MAX - 9) / 10) return pbw_err_set(err, "npy: dimension too large");
                    v = v * 10 + (*l.p++ - '0');
                }
                if (l.p < l.end && *l.p == 'L') l.p++; /* Python 2 long */
                if (h->ndim == PBW_NPY_MAX_DIMS)
                    return pbw_err_set(err, "npy: more than %d dimensions", PBW_NPY_MAX_DIMS);
                h->shape[h->ndim++] = v;
                if (!lit_accept(&l, ',')) {
                    if (!lit_accept(&l, ')')) return pbw_err_set(err, "npy: malformed shape");
                    break;
                }
            }
            h->have_shape = 1;
        } else {
            return pbw_err_set(err, "npy: unknown header key '%s'", key);
        }
        if (!lit_accept(&l, ',')) {
            if (!lit_accept(&l, '}')) return pbw_err_set(err, "npy: malformed header dict");
            break;
        }
    }
    lit_ws(&l);
    if (l.p != l.end) return pbw_err_set(err, "npy: bytes after the header dict");
    if (!h->have_descr || !h->have_fortran || !h->have_shape)
        return pbw_err_set(err, "npy: header lacks descr, fortran_order or shape");
    return 0;
}

static int npy_parse(const unsigned char *b, size_t len, pbw_npy *out, pbw_err *err) {
    if (len < 10 || memcmp(b, "\x93NUMPY", 6) != 0) return pbw_err_set(err, "not a .npy file");
    int major = b[6];
    size_t hlen, off;
    if (major == 1) {
        hlen = (size_t)b[8] | (size_t)b[9] << 8;
        off = 10;
    } else if (major == 2 || major == 3) {
        if (len < 12) return pbw_err_set(err, "npy: truncated header");
        hlen = (size_t)b[8] | (size_t)b[9] << 8 | (size_t)b[10] << 16 | (size_t)b[11] << 24;
        off = 12;
    } else {
        return pbw_err_set(err, "npy: unsupported format version %d.%d", major, b[7]);
    }
    if (hlen > NPY_MAX_HEADER || hlen > len - off)
        return pbw_err_set(err, "npy: header length %zu runs past the end of the file", hlen);
    npy_header h;
    if (parse_dict((const char *)b + off, hlen, &h, err)) return -1;
    off += hlen;
    if (h.fortran)
        return pbw_err_set(err, "npy: Fortran-order arrays are not supported (save with "
                                "numpy.ascontiguousarray first)");
    size_t es;
    pbw_dtype dt;
    if (strcmp(h.descr, "<f4") == 0) es = 4, dt = PBW_F32;
    else if (strcmp(h.descr, "<f8") == 0) es = 8, dt = PBW_F64;
    else if (strcmp(h.descr, "<f2") == 0) es = 2, dt = PBW_F16;
    else
        return pbw_err_set(err, "npy: dtype '%s' is not supported (only '<f4', '<f8', '<f2')",
                           h.descr);
    int64_t numel = 1;
    for (int i = 0; i < h.ndim; i++) {
        if (h.shape[i] != 0 && numel > INT64_MAX / h.shape[i])
            return pbw_err_set(err, "npy: shape has too many elements");
        numel *= h.shape[i];
    }
    size_t data_len = len - off;
    if ((uint64_t)numel > data_len / es || (size_t)numel * es != data_len)
        return pbw_err_set(err, "npy: %zu bytes of data for a shape of %lld elements of %zu bytes",
                           data_len, (long long)numel, es);
    float *data = malloc(numel ? (size_t)numel * sizeof(float) : 1);
    if (!data) return pbw_err_set(err, "npy: out of memory for %lld elements", (long long)numel);
    pbw_convert_to_f32(dt, b + off, (size_t)numel, data);
    out->ndim = h.ndim;
    memcpy(out->shape, h.shape, sizeof out->shape);
    out->numel = numel;
    out->data = data;
    return 0;
}

int pbw_npy_parse(const void *buf, size_t len, pbw_npy *out, pbw_err *err) {
    memset(out, 0, sizeof *out);
    return npy_parse(buf, len, out, err);
}

int pbw_npy_read(const char *path, pbw_npy *out, pbw_err *err) {
    memset(out, 0, sizeof *out);
    void *map;
    size_t len;
    if (pbw_file_map(path, &map, &len, err)) return -1;
    int rc = npy_parse(map, len, out, err);
    pbw_file_unmap(map, len);
    if (rc) return pbw_err_prefix(err, "'%s': ", path);
    return 0;
}

int pbw_npy_write(const char *path, const float *data, int ndim, const int64_t *shape,
                  pbw_err *err) {
    if (ndim < 0 || ndim > PBW_NPY_MAX_DIMS)
        return pbw_err_set(err, "npy: cannot write %d dimensions", ndim);
    char dict[512];
    int n = snprintf(dict, sizeof dict, "{'descr': '<f4', 'fortran_order': False, 'shape': (");
    int64_t numel = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0) return pbw_err_set(err, "npy: negative dimension");
        n += snprintf(dict + n, sizeof dict - (size_t)n, "%lld,%s", (long long)shape[i],
                      i + 1 < ndim ? " " : "");
        numel *= shape[i];
    }
    if (ndim > 1) n--; /* "(2, 3)" rather than "(2, 3,)"; one dim keeps "(5,)" */
    n += snprintf(dict + n, sizeof dict - (size_t)n, "), }");
    /* pad with spaces so that the data starts at a multiple of 64; '\n' ends the header */
    size_t total = 10 + (size_t)n + 1;
    size_t pad = (64 - total % 64) % 64, hlen = (size_t)n + pad + 1;
    unsigned char pre[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, (unsigned char)(hlen & 0xff),
                             (unsigned char)(hlen >> 8)};
    pbw_file_tmp t;
    if (pbw_file_tmp_open(&t, path, err)) return -1;
    int bad = fwrite(pre, 1, 10, t.fp) != 10 || fwrite(dict, 1, (size_t)n, t.fp) != (size_t)n;
    for (size_t i = 0; i < pad && !bad; i++) bad = fputc(' ', t.fp) == EOF;
    if (!bad) bad = fputc('\n', t.fp) == EOF;
    /* float32 data in memory is little-endian on every machine pbw runs on */
    if (!bad && numel) bad = fwrite(data, sizeof(float), (size_t)numel, t.fp) != (size_t)numel;
    if (bad) {
        pbw_file_tmp_abort(&t);
        return pbw_err_set(err, "cannot write '%s'", path);
    }
    return pbw_file_tmp_commit(&t, err);
}
