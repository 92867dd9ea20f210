/* pbw_safetensors.c: safetensors reader and writer.
 *
 * Layout: u64 little-endian header length N, N bytes of JSON header, then the data section.
 * The header maps tensor names to {"dtype", "shape", "data_offsets": [begin, end]} (offsets
 * relative to the data section) plus an optional "__metadata__" object, which is skipped.
 *
 * The header is parsed by a small JSON reader written for it rather than json-c, because
 * json-c silently keeps the last of two equal keys and we must refuse duplicate names. It
 * allocates only the names it keeps, never recurses, and checks every number it reads.
 * Not supported: dtypes other than F32 F16 BF16 F64 I64 I32 I16 I8 U8 BOOL, more than 8 dims.
 * Overlapping tensors and holes in the data section are accepted (they are harmless to us). */
#include <stdlib.h>
#include <string.h>

#include "pbw_file.h"
#include "pbw_records.h"

#define ST_MAX_HEADER (100u << 20)
#define ST_MAX_SKIP_DEPTH 64

static const struct {
    const char *name;
    pbw_dtype t;
} st_dtypes[] = {
    {"F32", PBW_F32}, {"F16", PBW_F16}, {"BF16", PBW_BF16}, {"F64", PBW_F64}, {"I64", PBW_I64},
    {"I32", PBW_I32}, {"I16", PBW_I16}, {"I8", PBW_I8},     {"U8", PBW_U8},   {"BOOL", PBW_BOOL},
};

static const char *st_dtype_name(pbw_dtype t) {
    for (size_t i = 0; i < sizeof st_dtypes / sizeof st_dtypes[0]; i++)
        if (st_dtypes[i].t == t) return st_dtypes[i].name;
    return NULL;
}

/* ---- a minimal JSON reader over [p, end) ---- */

typedef struct {
    const char *start, *p, *end;
    pbw_err *err;
} jr;

static int jr_fail(jr *j, const char *what) {
    return pbw_err_set(j->err, "safetensors header: %s at byte %zu", what,
                       (size_t)(j->p - j->start));
}

static void jr_ws(jr *j) {
    while (j->p < j->end && (*j->p == ' ' || *j->p == '\t' || *j->p == '\n' || *j->p == '\r'))
        j->p++;
}

/* Skips whitespace, then consumes c or fails. */
static int jr_expect(jr *j, char c) {
    jr_ws(j);
    if (j->p >= j->end || *j->p != c) {
        char msg[32];
        snprintf(msg, sizeof msg, "expected '%c'", c);
        return jr_fail(j, msg);
    }
    j->p++;
    return 0;
}

/* Skips whitespace; returns 1 and consumes c if it is next. */
static int jr_accept(jr *j, char c) {
    jr_ws(j);
    if (j->p < j->end && *j->p == c) {
        j->p++;
        return 1;
    }
    return 0;
}

static int hex4(const char *s, unsigned *out) {
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        char c = s[i];
        v <<= 4;
        if (c >= '0' && c <= '9') v |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f') v |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') v |= (unsigned)(c - 'A' + 10);
        else return -1;
    }
    *out = v;
    return 0;
}

static size_t put_utf8(char *o, unsigned cp) {
    if (cp < 0x80) { o[0] = (char)cp; return 1; }
    if (cp < 0x800) {
        o[0] = (char)(0xc0 | (cp >> 6));
        o[1] = (char)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (char)(0xe0 | (cp >> 12));
        o[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        o[2] = (char)(0x80 | (cp & 0x3f));
        return 3;
    }
    o[0] = (char)(0xf0 | (cp >> 18));
    o[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
    o[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
    o[3] = (char)(0x80 | (cp & 0x3f));
    return 4;
}

/* Parses a JSON string. With out != NULL, stores a malloc'd, NUL-terminated copy (escapes
 * decoded to UTF-8; a decoded NUL is refused since names are C strings). */
static int jr_string(jr *j, char **out) {
    if (out) *out = NULL;
    if (jr_expect(j, '"')) return -1;
    const char *s = j->p;
    /* find the closing quote first: the decoded string is never longer than the raw one */
    const char *q = s;
    while (q < j->end && *q != '"') q += (*q == '\\' && j->end - q >= 2) ? 2 : 1;
    if (q >= j->end) return jr_fail(j, "unterminated string");
    char *buf = NULL, *o = NULL;
    if (out) {
        buf = malloc((size_t)(q - s) + 1);
        if (!buf) return pbw_err_set(j->err, "out of memory");
        o = buf;
    }
    while (j->p < q) {
        unsigned char c = (unsigned char)*j->p;
        if (c < 0x20) {
            free(buf);
            return jr_fail(j, "control character in string");
        }
        if (c != '\\') {
            if (o) *o++ = (char)c;
            j->p++;
            continue;
        }
        char e = j->p[1]; /* j->p + 1 < q because q is past the escaped char */
        j->p += 2;
        unsigned cp;
        switch (e) {
        case '"': cp = '"'; break;
        case '\\': cp = '\\'; break;
        case '/': cp = '/'; break;
        case 'b': cp = '\b'; break;
        case 'f': cp = '\f'; break;
        case 'n': cp = '\n'; break;
        case 'r': cp = '\r'; break;
        case 't': cp = '\t'; break;
        case 'u':
            if (q - j->p < 4 || hex4(j->p, &cp)) {
                free(buf);
                return jr_fail(j, "bad \\u escape");
            }
            j->p += 4;
            if (cp >= 0xd800 && cp < 0xdc00) { /* high surrogate: a low one must follow */
                unsigned lo;
                if (q - j->p < 6 || j->p[0] != '\\' || j->p[1] != 'u' || hex4(j->p + 2, &lo) ||
                    lo < 0xdc00 || lo > 0xdfff) {
                    free(buf);
                    return jr_fail(j, "unpaired surrogate in \\u escape");
                }
                j->p += 6;
                cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
            } else if (cp >= 0xdc00 && cp < 0xe000) {
                free(buf);
                return jr_fail(j, "unpaired surrogate in \\u escape");
            }
            if (cp == 0) {
                free(buf);
                return jr_fail(j, "NUL character in string");
            }
            break;
        default:
            free(buf);
            return jr_fail(j, "bad escape in string");
        }
        /* a \uXXXX escape is 6 raw bytes and decodes to at most 3 (4 for a 12-byte pair) */
        if (o) o += put_utf8(o, cp);
    }
    j->p = q + 1;
    if (out) {
        *o = 0;
        *out = buf;
    }
    return 0;
}

/* Parses a JSON number that must be an integer in int64 range. */
static int jr_int(jr *j, int64_t *out) {
    jr_ws(j);
    int neg = 0;
    if (j->p < j->end && *j->p == '-') {
        neg = 1;
        j->p++;
    }
    if (j->p >= j->end || *j->p < '0' || *j->p > '9') return jr_fail(j, "expected an integer");
    uint64_t v = 0;
    while (j->p < j->end && *j->p >= '0' && *j->p <= '9') {
        unsigned d = (unsigned)(*j->p - '0');
        if (v > (UINT64_MAX - d) / 10 || v * 10 + d > (uint64_t)INT64_MAX)
            return jr_fail(j, "integer out of range");
        v = v * 10 + d;
        j->p++;
    }
    if (j->p < j->end && (*j->p == '.' || *j->p == 'e' || *j->p == 'E'))
        return jr_fail(j, "expected an integer, found a fraction");
    *out = neg ? -(int64_t)v : (int64_t)v;
    return 0;
}

/* Skips any JSON value without recursion (nesting limited to ST_MAX_SKIP_DEPTH). */
static int jr_skip(jr *j) {
    char stack[ST_MAX_SKIP_DEPTH];
    int depth = 0;
    for (;;) {
        jr_ws(j);
        if (j->p >= j->end) return jr_fail(j, "unexpected end");
        char c = *j->p;
        if (c == '{' || c == '[') {
            if (depth == ST_MAX_SKIP_DEPTH) return jr_fail(j, "nesting too deep");
            stack[depth++] = c == '{' ? '}' : ']';
            j->p++;
            if (jr_accept(j, stack[depth - 1])) {
                depth--;
                goto after_value;
            }
            if (c == '{') {
                if (jr_string(j, NULL) || jr_expect(j, ':')) return -1;
            }
            continue; /* parse the first member value */
        }
        if (c == '"') {
            if (jr_string(j, NULL)) return -1;
        } else if (c == '-' || (c >= '0' && c <= '9')) {
            j->p++;
            while (j->p < j->end && *j->p && strchr("0123456789+-.eE", *j->p)) j->p++;
        } else {
            static const char *lits[] = {"true", "false", "null"};
            size_t k = 0;
            for (; k < 3; k++) {
                size_t l = strlen(lits[k]);
                if ((size_t)(j->end - j->p) >= l && memcmp(j->p, lits[k], l) == 0) {
                    j->p += l;
                    break;
                }
            }
            if (k == 3) return jr_fail(j, "unexpected character");
        }
    after_value:
        while (depth > 0) {
            if (jr_accept(j, ',')) {
                if (stack[depth - 1] == '}' && (jr_string(j, NULL) || jr_expect(j, ':')))
                    return -1;
                break; /* next member value */
            }
            if (jr_expect(j, stack[depth - 1])) return -1;
            depth--;
        }
        if (depth == 0) return 0;
    }
}

/* ---- header ---- */

typedef struct {
    int have_dtype, have_shape, have_offsets;
    pbw_dtype dtype;
    int ndim;
    int64_t shape[PBW_RECORD_MAX_DIMS];
    int64_t begin, end;
} st_entry;

static int parse_entry(jr *j, const char *name, st_entry *e) {
    memset(e, 0, sizeof *e);
    if (jr_expect(j, '{')) return -1;
    if (!jr_accept(j, '}')) {
        do {
            char *key;
            if (jr_string(j, &key)) return -1;
            if (jr_expect(j, ':')) {
                free(key);
                return -1;
            }
            int rc = 0;
            if (strcmp(key, "dtype") == 0) {
                char *v = NULL;
                if (e->have_dtype) rc = jr_fail(j, "field 'dtype' given twice");
                else if ((rc = jr_string(j, &v)) == 0) {
                    size_t k = 0, nt = sizeof st_dtypes / sizeof st_dtypes[0];
                    while (k < nt && strcmp(st_dtypes[k].name, v) != 0) k++;
                    if (k == nt)
                        rc = pbw_err_set(j->err, "tensor '%.200s': unsupported dtype '%.40s'",
                                         name, v);
                    else e->dtype = st_dtypes[k].t;
                    e->have_dtype = 1;
                }
                free(v);
            } else if (strcmp(key, "shape") == 0) {
                if (e->have_shape) rc = jr_fail(j, "field 'shape' given twice");
                else if ((rc = jr_expect(j, '[')) == 0 && !jr_accept(j, ']')) {
                    do {
                        int64_t d;
                        if ((rc = jr_int(j, &d))) break;
                        if (d < 0) {
                            rc = pbw_err_set(j->err, "tensor '%.200s': negative dimension %lld",
                                             name, (long long)d);
                            break;
                        }
                        if (e->ndim == PBW_RECORD_MAX_DIMS) {
                            rc = pbw_err_set(j->err, "tensor '%.200s': more than %d dimensions",
                                             name, PBW_RECORD_MAX_DIMS);
                            break;
                        }
                        e->shape[e->ndim++] = d;
                    } while (jr_accept(j, ','));
                    if (!rc) rc = jr_expect(j, ']');
                }
                e->have_shape = 1;
            } else if (strcmp(key, "data_offsets") == 0) {
                if (e->have_offsets) rc = jr_fail(j, "field 'data_offsets' given twice");
                else if (jr_expect(j, '[') || jr_int(j, &e->begin) || jr_expect(j, ',') ||
                         jr_int(j, &e->end) || jr_expect(j, ']'))
                    rc = -1;
                e->have_offsets = 1;
            } else {
                rc = jr_skip(j);
            }
            free(key);
            if (rc) return -1;
        } while (jr_accept(j, ','));
        if (jr_expect(j, '}')) return -1;
    }
    if (!e->have_dtype || !e->have_shape || !e->have_offsets)
        return pbw_err_set(j->err, "tensor '%.200s': missing %s", name,
                           !e->have_dtype ? "dtype" : !e->have_shape ? "shape" : "data_offsets");
    return 0;
}

/* Checks an entry against the data section and appends its record. */
static int add_entry(pbw_records *out, const char *name, const st_entry *e,
                     const unsigned char *data, size_t data_len, pbw_err *err) {
    int64_t numel = 1;
    for (int i = 0; i < e->ndim; i++) {
        if (e->shape[i] != 0 && numel > INT64_MAX / e->shape[i])
            return pbw_err_set(err, "tensor '%.200s': shape has too many elements", name);
        numel *= e->shape[i];
    }
    size_t es = pbw_dtype_size(e->dtype), nbytes;
    if ((uint64_t)numel > SIZE_MAX || pbw_mul_overflow((size_t)numel, es, &nbytes))
        return pbw_err_set(err, "tensor '%.200s': shape has too many elements", name);
    if (e->begin < 0 || e->end < e->begin || (uint64_t)e->end > data_len)
        return pbw_err_set(err,
                           "tensor '%.200s': data_offsets [%lld, %lld] outside the data section "
                           "of %zu bytes",
                           name, (long long)e->begin, (long long)e->end, data_len);
    if ((uint64_t)(e->end - e->begin) != nbytes)
        return pbw_err_set(err, "tensor '%.200s': %lld bytes of data for a shape needing %zu",
                           name, (long long)(e->end - e->begin), nbytes);
    pbw_record *r = pbw_records_push(out, name, err);
    if (!r) return -1;
    r->dtype = e->dtype;
    r->ndim = e->ndim;
    memcpy(r->shape, e->shape, sizeof r->shape);
    r->numel = numel;
    r->nbytes = nbytes;
    r->data = nbytes ? data + e->begin : NULL;
    return pbw_records_align(out, r, err);
}

static int parse_header(const unsigned char *buf, size_t len, pbw_records *out, pbw_err *err) {
    if (len < 8) return pbw_err_set(err, "safetensors: file of %zu bytes is too short", len);
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--) n = (n << 8) | buf[i];
    if (n > ST_MAX_HEADER)
        return pbw_err_set(err, "safetensors: header length %llu is larger than %u bytes",
                           (unsigned long long)n, ST_MAX_HEADER);
    if (n > len - 8)
        return pbw_err_set(err, "safetensors: header length %llu runs past the end of the file",
                           (unsigned long long)n);
    const unsigned char *data = buf + 8 + n;
    size_t data_len = len - 8 - (size_t)n;
    jr j = {(const char *)buf + 8, (const char *)buf + 8, (const char *)buf + 8 + n, err};
    if (jr_expect(&j, '{')) return -1;
    if (!jr_accept(&j, '}')) {
        do {
            char *name;
            if (jr_string(&j, &name)) return -1;
            int rc = jr_expect(&j, ':');
            if (!rc) {
                if (strcmp(name, "__metadata__") == 0) rc = jr_skip(&j);
                else {
                    st_entry e;
                    rc = parse_entry(&j, name, &e);
                    if (!rc) rc = add_entry(out, name, &e, data, data_len, err);
                }
            }
            free(name);
            if (rc) return -1;
        } while (jr_accept(&j, ','));
        if (jr_expect(&j, '}')) return -1;
    }
    jr_ws(&j);
    if (j.p != j.end) return jr_fail(&j, "unexpected bytes after the header object");
    return pbw_records_check_unique(out, err);
}

int pbw_safetensors_parse(const void *buf, size_t len, pbw_records *out, pbw_err *err) {
    memset(out, 0, sizeof *out);
    if (parse_header(buf, len, out, err)) {
        pbw_records_free(out);
        return -1;
    }
    return 0;
}

int pbw_safetensors_load(const char *path, pbw_records *out, pbw_err *err) {
    memset(out, 0, sizeof *out);
    void *map;
    size_t len;
    if (pbw_file_map(path, &map, &len, err)) return -1;
    if (parse_header(map, len, out, err)) {
        pbw_records_free(out);
        pbw_file_unmap(map, len);
        return pbw_err_prefix(err, "'%s': ", path);
    }
    out->map = map;
    out->map_len = len;
    return 0;
}

/* ---- writer ---- */

typedef struct {
    char *p;
    size_t len, cap;
    int oom;
} sbuf;

static void sb_put(sbuf *b, const char *s, size_t n) {
    if (b->oom) return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1) cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) {
            b->oom = 1;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = 0;
}

static void sb_puts(sbuf *b, const char *s) { sb_put(b, s, strlen(s)); }

static void sb_json_string(sbuf *b, const char *s) {
    sb_puts(b, "\"");
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        char tmp[8];
        if (c == '"' || c == '\\') {
            tmp[0] = '\\';
            tmp[1] = (char)c;
            sb_put(b, tmp, 2);
        } else if (c < 0x20) {
            snprintf(tmp, sizeof tmp, "\\u%04x", c);
            sb_puts(b, tmp);
        } else {
            sb_put(b, (const char *)&c, 1);
        }
    }
    sb_puts(b, "\"");
}

/* Order of tensors in the data section: larger elements first (stable), so that with the
 * 8-aligned header every tensor starts aligned to its element size. */
static size_t *write_order(const pbw_record *recs, size_t n) {
    size_t *ord = malloc((n ? n : 1) * sizeof *ord);
    if (!ord) return NULL;
    size_t k = 0;
    for (size_t es = 8; es >= 1; es /= 2)
        for (size_t i = 0; i < n; i++)
            if (pbw_dtype_size(recs[i].dtype) == es) ord[k++] = i;
    return ord;
}

int pbw_safetensors_save(const char *path, const pbw_record *recs, size_t n, pbw_err *err) {
    for (size_t i = 0; i < n; i++) {
        const pbw_record *r = &recs[i];
        int64_t numel = 1;
        for (int d = 0; d < r->ndim; d++) numel *= r->shape[d];
        if (!st_dtype_name(r->dtype) || r->ndim < 0 || r->ndim > PBW_RECORD_MAX_DIMS ||
            numel != r->numel || r->nbytes != (size_t)r->numel * pbw_dtype_size(r->dtype) ||
            (r->nbytes && !r->data) || strcmp(r->name, "__metadata__") == 0)
            return pbw_err_set(err, "saving '%s': record '%.200s' is inconsistent", path,
                               r->name);
    }
    size_t *ord = write_order(recs, n);
    if (!ord) return pbw_err_set(err, "out of memory");
    sbuf h = {0};
    sb_puts(&h, "{");
    size_t off = 0;
    for (size_t k = 0; k < n; k++) {
        const pbw_record *r = &recs[ord[k]];
        char tmp[64];
        if (k) sb_puts(&h, ",");
        sb_json_string(&h, r->name);
        sb_puts(&h, ":{\"dtype\":\"");
        sb_puts(&h, st_dtype_name(r->dtype));
        sb_puts(&h, "\",\"shape\":[");
        for (int d = 0; d < r->ndim; d++) {
            snprintf(tmp, sizeof tmp, "%s%lld", d ? "," : "", (long long)r->shape[d]);
            sb_puts(&h, tmp);
        }
        snprintf(tmp, sizeof tmp, "],\"data_offsets\":[%zu,%zu]}", off, off + r->nbytes);
        sb_puts(&h, tmp);
        off += r->nbytes;
    }
    sb_puts(&h, "}");
    while (!h.oom && h.len % 8) sb_puts(&h, " ");
    if (h.oom) {
        free(h.p);
        free(ord);
        return pbw_err_set(err, "out of memory");
    }
    unsigned char len8[8];
    for (int i = 0; i < 8; i++) len8[i] = (unsigned char)((uint64_t)h.len >> (8 * i));
    pbw_file_tmp t;
    int rc = pbw_file_tmp_open(&t, path, err);
    if (rc == 0) {
        int bad = fwrite(len8, 1, 8, t.fp) != 8 || fwrite(h.p, 1, h.len, t.fp) != h.len;
        for (size_t k = 0; k < n && !bad; k++) {
            const pbw_record *r = &recs[ord[k]];
            if (r->nbytes && fwrite(r->data, 1, r->nbytes, t.fp) != r->nbytes) bad = 1;
        }
        if (bad) {
            pbw_file_tmp_abort(&t);
            rc = pbw_err_set(err, "cannot write '%s'", path);
        } else {
            rc = pbw_file_tmp_commit(&t, err);
        }
    }
    free(h.p);
    free(ord);
    return rc;
}
