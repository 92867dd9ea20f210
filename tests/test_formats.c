/* test_formats.c: checkpoint, array and JSON readers against files written by PyTorch/numpy
 * (tools/make_format_fixtures.py, ../shared/data) and against hostile inputs.
 *
 * Values are compared exactly: every fixture value is float32, float16, bfloat16, int64 or
 * bool, all of which convert to float32 without rounding, so the expected .npy (float32) and
 * our conversion must agree bit for bit. Sums of the LPIPS weights are compared with a
 * relative tolerance of 1e-9 because ours add in a different order (double accumulation of at
 * most 512 float32 values: the order changes the result by ~1e-15 relative). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/pbw_cache.h"
#include "formats/pbw_file.h"
#include "formats/pbw_json.h"
#include "formats/pbw_npy.h"
#include "formats/pbw_pickle.h"
#include "formats/pbw_records.h"
#include "pbw_test.h"

#define FIX "tests/fixtures/formats/"

static void *slurp(const char *path, size_t *len) {
    void *buf = NULL;
    pbw_err err;
    if (pbw_file_read(path, 1 << 26, &buf, len, &err)) {
        fprintf(stderr, "  %s\n", err.msg);
        return NULL;
    }
    return buf;
}

/* Checks every tensor and scalar of expected/manifest.txt against recs. */
static void check_manifest(const pbw_records *recs, int with_scalars, const char *what) {
    FILE *f = fopen(FIX "expected/manifest.txt", "r");
    CHECK(f != NULL);
    if (!f) return;
    char line[512];
    size_t ntensors = 0, nscalars = 0;
    while (fgets(line, sizeof line, f)) {
        char kind[16], name[256], type[32];
        int pos = 0;
        if (sscanf(line, "%15s %255s %31s %n", kind, name, type, &pos) != 3) continue;
        if (strcmp(kind, "scalar") == 0) {
            nscalars++;
            if (!with_scalars) continue;
            double v = strtod(line + pos, NULL);
            const pbw_scalar *s = NULL;
            for (size_t i = 0; i < recs->nscalars; i++)
                if (strcmp(recs->scalars[i].name, name) == 0) s = &recs->scalars[i];
            CHECK_MSG(s != NULL, "%s: scalar %s missing", what, name);
            if (s) {
                CHECK_MSG(s->value == v, "%s: scalar %s = %g, expected %g", what, name, s->value, v);
                CHECK(s->is_float == (strcmp(type, "float") == 0));
            }
            continue;
        }
        ntensors++;
        const pbw_record *r = pbw_records_find(recs, name);
        CHECK_MSG(r != NULL, "%s: tensor %s missing", what, name);
        if (!r) continue;
        CHECK_MSG(strcmp(pbw_dtype_name(r->dtype), type) == 0, "%s: %s is %s, expected %s", what,
                  name, pbw_dtype_name(r->dtype), type);
        char *p = line + pos;
        int ndim = (int)strtol(p, &p, 10);
        CHECK_MSG(r->ndim == ndim, "%s: %s has %d dims, expected %d", what, name, r->ndim, ndim);
        for (int d = 0; d < ndim && d < r->ndim; d++) CHECK(r->shape[d] == strtol(p, &p, 10));
        char npy[400];
        snprintf(npy, sizeof npy, FIX "expected/%s.npy", name);
        pbw_npy want;
        pbw_err err;
        CHECK_MSG(pbw_npy_read(npy, &want, &err) == 0, "%s", err.msg);
        CHECK(want.numel == r->numel);
        if (want.numel == r->numel) {
            float *got = malloc((size_t)r->numel * sizeof(float) + 4);
            CHECK(pbw_record_to_f32(r, got, &err) == 0);
            int bad = 0;
            for (int64_t i = 0; i < r->numel; i++) bad += got[i] != want.data[i];
            CHECK_MSG(bad == 0, "%s: %s differs in %d of %lld values", what, name, bad,
                      (long long)r->numel);
            if (r->numel) CHECK((uintptr_t)r->data % pbw_dtype_size(r->dtype) == 0);
            free(got);
        }
        pbw_npy_free(&want);
    }
    fclose(f);
    CHECK_MSG(recs->count == ntensors, "%s: %zu tensors, expected %zu", what, recs->count, ntensors);
    if (with_scalars)
        CHECK_MSG(recs->nscalars == nscalars, "%s: %zu scalars, expected %zu", what,
                  recs->nscalars, nscalars);
}

PBW_TEST(formats_torch_zip_fixture) {
    pbw_records r;
    pbw_err err;
    CHECK_MSG(pbw_load_checkpoint(FIX "state_zip.pt", &r, &err) == 0, "%s", err.msg);
    check_manifest(&r, 1, "zip");
    pbw_records_free(&r);
}

PBW_TEST(formats_torch_legacy_fixture) {
    pbw_records r;
    pbw_err err;
    CHECK_MSG(pbw_load_checkpoint(FIX "state_legacy.pt", &r, &err) == 0, "%s", err.msg);
    check_manifest(&r, 1, "legacy");
    pbw_records_free(&r);
}

PBW_TEST(formats_torch_zip_variants) {
    /* prefix "archive" (saved through a file object) and entries deflated by another zip tool */
    const char *files[] = {FIX "state_archive.pt", FIX "state_deflate.pt"};
    for (int k = 0; k < 2; k++) {
        pbw_records r;
        pbw_err err;
        CHECK_MSG(pbw_load_checkpoint(files[k], &r, &err) == 0, "%s", err.msg);
        check_manifest(&r, 1, files[k]);
        pbw_records_free(&r);
    }
    pbw_records r;
    pbw_err err;
    CHECK(pbw_load_checkpoint(FIX "state_bigendian.pt", &r, &err) != 0 &&
          strstr(err.msg, "big-endian"));
    CHECK(pbw_load_checkpoint(FIX "array_f4.npy", &r, &err) != 0 &&
          strstr(err.msg, "not a checkpoint"));
    CHECK(pbw_load_checkpoint("/nonexistent.pt", &r, &err) != 0 &&
          strstr(err.msg, "/nonexistent.pt"));
}

PBW_TEST(formats_torchscript_module) {
    /* a torch.jit.save archive gives the same records as the module's state_dict */
    pbw_records a, b;
    pbw_err err;
    CHECK_MSG(pbw_load_checkpoint(FIX "jit_module.pt", &a, &err) == 0, "%s", err.msg);
    CHECK_MSG(pbw_load_checkpoint(FIX "jit_state.pt", &b, &err) == 0, "%s", err.msg);
    CHECK_MSG(a.count == b.count && b.count == 6, "%zu and %zu records", a.count, b.count);
    for (size_t i = 0; i < b.count; i++) {
        const pbw_record *x = &b.items[i], *y = pbw_records_find(&a, x->name);
        CHECK_MSG(y != NULL, "%s missing from the TorchScript load", x->name);
        if (!y) continue;
        CHECK(x->dtype == y->dtype && x->ndim == y->ndim && x->nbytes == y->nbytes);
        CHECK(x->nbytes == 0 || memcmp(x->data, y->data, x->nbytes) == 0);
    }
    CHECK(pbw_records_find(&a, "seq.0.weight") && pbw_records_find(&a, "scale"));
    pbw_records_free(&a);
    pbw_records_free(&b);
}

PBW_TEST(formats_torch_training_args) {
    /* rosinality-style training checkpoints carry an argparse.Namespace: kept as attributes */
    pbw_records r;
    pbw_err err;
    CHECK_MSG(pbw_load_checkpoint(FIX "train_ckpt.pt", &r, &err) == 0, "%s", err.msg);
    CHECK(r.count == 1 && pbw_records_find(&r, "g_ema.w"));
    int seen = 0;
    for (size_t i = 0; i < r.nscalars; i++) {
        const pbw_scalar *s = &r.scalars[i];
        if (strcmp(s->name, "args.size") == 0) seen += !s->is_float && s->value == 256;
        if (strcmp(s->name, "args.lr") == 0) seen += s->is_float && s->value == 0.002;
        if (strcmp(s->name, "iter") == 0) seen += s->value == 7;
    }
    CHECK_MSG(seen == 3, "%d of 3 scalars found", seen);
    pbw_records_free(&r);
}

PBW_TEST(formats_safetensors_fixture) {
    pbw_records r;
    pbw_err err;
    CHECK_MSG(pbw_load_checkpoint(FIX "state.safetensors", &r, &err) == 0, "%s", err.msg);
    check_manifest(&r, 0, "safetensors");
    pbw_records_free(&r);
}

PBW_TEST(formats_torch_parse_from_memory) {
    const char *files[] = {FIX "state_zip.pt", FIX "state_legacy.pt"};
    for (int k = 0; k < 2; k++) {
        size_t len;
        void *buf = slurp(files[k], &len);
        CHECK(buf != NULL);
        pbw_records r;
        pbw_err err;
        CHECK_MSG(pbw_torch_parse(buf, len, &r, &err) == 0, "%s", err.msg);
        check_manifest(&r, 1, files[k]);
        pbw_records_free(&r);
        free(buf);
    }
}

PBW_TEST(formats_torch_bare_tensor) {
    pbw_records r;
    pbw_err err;
    CHECK_MSG(pbw_torch_load(FIX "tensor_only.pt", &r, &err) == 0, "%s", err.msg);
    CHECK(r.count == 1 && r.nscalars == 0);
    const pbw_record *t = pbw_records_find(&r, "");
    CHECK(t != NULL);
    if (t) {
        CHECK(t->ndim == 2 && t->shape[0] == 3 && t->shape[1] == 4 && t->dtype == PBW_F32);
        const float *v = t->data;
        for (int i = 0; i < 12; i++) CHECK(v[i] == (float)i / 4);
    }
    pbw_records_free(&r);
}

PBW_TEST(formats_pickle_refuses_evil_global) {
    const char *files[] = {FIX "evil_zip.pt", FIX "evil_legacy.pt"};
    unlink("/tmp/pbw_pickle_pwned");
    for (int k = 0; k < 2; k++) {
        pbw_records r;
        pbw_err err = {{0}};
        CHECK(pbw_load_checkpoint(files[k], &r, &err) != 0);
        CHECK_MSG(strstr(err.msg, "unsupported pickle global 'posix.system'") != NULL, "%s",
                  err.msg);
        CHECK(strstr(err.msg, "nothing is executed") != NULL);
        CHECK(r.count == 0 && r.items == NULL);
    }
    CHECK(access("/tmp/pbw_pickle_pwned", F_OK) != 0);
}

static const struct {
    const char *net;
    struct {
        const char *name;
        int channels;
        double first, last, sum;
    } w[8];
} lpips_truth[] = {
    {"alex", {{"lin0.model.1.weight", 64, 3.78799541e-06, 0, 2.3495323137195783}, {"lin1.model.1.weight", 192, 0, 0.636245966, 16.1430274810632}, {"lin2.model.1.weight", 384, 0.000108401051, 0.0708653256, 39.268439245444029}, {"lin3.model.1.weight", 256, 0.142606422, 0.101783469, 27.197178440931964}, {"lin4.model.1.weight", 256, 0.193017259, 0.0845406353, 20.317177099761324}}},
    {"vgg", {{"lin0.model.1.weight", 64, 0.0501116589, 0.0344623849, 6.9259917009621859}, {"lin1.model.1.weight", 128, 0.039409373, 0.071724616, 8.8583340086042881}, {"lin2.model.1.weight", 256, 0.0579338633, 0.0637990162, 17.515006046742201}, {"lin3.model.1.weight", 512, 0.0578080118, 0.0623867549, 51.521323032677174}, {"lin4.model.1.weight", 512, 0.0426804051, 0.0583060235, 47.03485375829041}}},
    {"squeeze", {{"lin0.model.1.weight", 64, 0.204709068, 0.126328006, 5.6901007817689901}, {"lin1.model.1.weight", 128, 2.38741377e-05, 5.6480163e-05, 1.1852794939355817}, {"lin2.model.1.weight", 256, 0.0992534533, 1.79020335e-05, 16.326565414529796}, {"lin3.model.1.weight", 384, 0.411224931, 0.000189125218, 71.012624086462438}, {"lin4.model.1.weight", 384, 0.362765253, 0.000470220111, 37.37072320704965}, {"lin5.model.1.weight", 512, 7.18696465e-05, 0, 24.262872402536829}, {"lin6.model.1.weight", 512, 0.0379230976, 0.0490233675, 17.590552752050012}}},
};

PBW_TEST(formats_lpips_legacy_files) {
    for (size_t k = 0; k < sizeof lpips_truth / sizeof lpips_truth[0]; k++) {
        char path[256];
        snprintf(path, sizeof path, PBW_SHARED("data/lpips/v0.1/%s.pth"), lpips_truth[k].net);
        pbw_records r;
        pbw_err err;
        CHECK_MSG(pbw_load_checkpoint(path, &r, &err) == 0, "%s", err.msg);
        size_t n = 0;
        for (int i = 0; i < 8 && lpips_truth[k].w[i].name; i++, n++) {
            const pbw_record *t = pbw_records_find(&r, lpips_truth[k].w[i].name);
            CHECK_MSG(t != NULL, "%s: %s missing", path, lpips_truth[k].w[i].name);
            if (!t) continue;
            CHECK(t->dtype == PBW_F32 && t->ndim == 4 && t->shape[0] == 1 &&
                  t->shape[1] == lpips_truth[k].w[i].channels && t->shape[2] == 1 &&
                  t->shape[3] == 1);
            float *v = malloc((size_t)t->numel * sizeof(float));
            CHECK(pbw_record_to_f32(t, v, &err) == 0);
            double sum = 0;
            for (int64_t j = 0; j < t->numel; j++) sum += v[j];
            /* the first and last values were printed with 9 significant digits */
            CHECK_NEAR(v[0], lpips_truth[k].w[i].first, 1e-8 * (1 + fabs(lpips_truth[k].w[i].first)));
            CHECK_NEAR(v[t->numel - 1], lpips_truth[k].w[i].last, 1e-8);
            CHECK_NEAR(sum, lpips_truth[k].w[i].sum, 1e-9 * fabs(lpips_truth[k].w[i].sum));
            free(v);
        }
        CHECK(r.count == n);
        pbw_records_free(&r);
    }
}

PBW_TEST(formats_safetensors_roundtrip) {
    pbw_records a, b;
    pbw_err err;
    CHECK_MSG(pbw_torch_load(FIX "state_zip.pt", &a, &err) == 0, "%s", err.msg);
    char path[] = "/tmp/pbw_test_st_XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    close(fd);
    CHECK_MSG(pbw_safetensors_save(path, a.items, a.count, &err) == 0, "%s", err.msg);
    CHECK_MSG(pbw_safetensors_load(path, &b, &err) == 0, "%s", err.msg);
    check_manifest(&b, 0, "safetensors written by pbw");
    for (size_t i = 0; i < b.count; i++)
        if (b.items[i].nbytes) CHECK((uintptr_t)b.items[i].data % pbw_dtype_size(b.items[i].dtype) == 0);
    /* the header is padded to 8 bytes */
    size_t len;
    unsigned char *raw = slurp(path, &len);
    CHECK(raw && len > 8 && raw[0] % 8 == 0 && raw[8] == '{');
    free(raw);
    pbw_records_free(&a);
    pbw_records_free(&b);
    unlink(path);
}

/* safetensors bytes from a header string and data_len bytes of data */
static unsigned char *st_make(const char *header, size_t data_len, size_t *len) {
    size_t h = strlen(header);
    *len = 8 + h + data_len;
    unsigned char *b = calloc(1, *len);
    for (int i = 0; i < 8; i++) b[i] = (unsigned char)((uint64_t)h >> (8 * i));
    memcpy(b + 8, header, h);
    return b;
}

PBW_TEST(formats_safetensors_malformed) {
    static const struct {
        const char *header;
        size_t data;
        const char *msg; /* part of the expected message */
    } cases[] = {
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 4, "outside the data"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,0]}}", 8, "outside the data"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,4]}}", 8, "bytes of data"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", 8, "negative"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[4611686018427387904],\"data_offsets\":[0,8]}}", 8, "elements"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2147483648,2147483648,4],\"data_offsets\":[0,8]}}", 8, "elements"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[99999999999999999999],\"data_offsets\":[0,8]}}", 8, "out of range"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
         "\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "twice"},
        {"{\"a\":{\"dtype\":\"F7\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "unsupported dtype"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2]}}", 8, "missing"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}} x", 8, "after the header"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}", 8, "expected"},
        {"{\"a\\u0000b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "NUL"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,4]}}", 4, "dimensions"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2.5],\"data_offsets\":[0,8]}}", 8, "fraction"},
        {"{\"__metadata__\":[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}", 0, "too deep"},
        {"", 0, "expected '{'"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8],\"dtype\":\"F16\"}}", 8, "twice"},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        size_t len;
        unsigned char *b = st_make(cases[k].header, cases[k].data, &len);
        pbw_records r;
        pbw_err err = {{0}};
        CHECK_MSG(pbw_safetensors_parse(b, len, &r, &err) != 0, "case %zu accepted", k);
        CHECK_MSG(strstr(err.msg, cases[k].msg) != NULL, "case %zu: '%s' lacks '%s'", k, err.msg,
                  cases[k].msg);
        CHECK(r.count == 0 && r.items == NULL);
        free(b);
    }
    /* a valid one with metadata, escapes and an empty tensor parses */
    size_t len;
    unsigned char *b = st_make("{\"__metadata__\":{\"k\":\"v\",\"n\":[1,{\"x\":null}]},"
                               "\"a\\\"\\u00e9\":{\"dtype\":\"I32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                               "\"e\":{\"dtype\":\"F16\",\"shape\":[0,3],\"data_offsets\":[8,8]}}  ",
                               8, &len);
    pbw_records r;
    pbw_err err;
    CHECK_MSG(pbw_safetensors_parse(b, len, &r, &err) == 0, "%s", err.msg);
    CHECK(r.count == 2 && pbw_records_find(&r, "a\"\xc3\xa9") && pbw_records_find(&r, "e"));
    pbw_records_free(&r);
    /* header length past the end of the file, and absurd */
    b[0] = 0xff;
    CHECK(pbw_safetensors_parse(b, len, &r, &err) != 0 && strstr(err.msg, "past the end"));
    b[5] = 0x10;
    CHECK(pbw_safetensors_parse(b, len, &r, &err) != 0 && strstr(err.msg, "larger than"));
    free(b);
}

/* Every prefix of a valid file must be refused without a crash. */
static void check_truncations(const char *path, int (*parse)(const void *, size_t, pbw_records *, pbw_err *)) {
    size_t len;
    unsigned char *full = slurp(path, &len);
    CHECK(full != NULL);
    if (!full) return;
    int accepted = 0;
    for (size_t cut = 0; cut < len; cut++) {
        unsigned char *b = malloc(cut ? cut : 1); /* exact size, so ASan sees any overread */
        memcpy(b, full, cut);
        pbw_records r;
        pbw_err err;
        if (parse(b, cut, &r, &err) == 0) {
            accepted++;
            pbw_records_free(&r);
        }
        free(b);
    }
    CHECK_MSG(accepted == 0, "%s: %d truncated copies accepted", path, accepted);
    free(full);
}

/* Setting bytes to 0x00, 0xff or 0x80 (nvals of them, at every step-th byte) must never crash;
 * the result may be accepted or refused. The fuzz targets go much further. */
static void check_corruptions(const char *path, int (*parse)(const void *, size_t, pbw_records *, pbw_err *),
                              size_t step, size_t nvals) {
    size_t len;
    unsigned char *b = slurp(path, &len);
    CHECK(b != NULL);
    if (!b) return;
    static const unsigned char vals[] = {0xff, 0x00, 0x80};
    for (size_t i = 0; i < len; i += step) {
        unsigned char keep = b[i];
        for (size_t v = 0; v < nvals && v < sizeof vals; v++) {
            b[i] = keep ^ vals[v] ? vals[v] : (unsigned char)(keep + 1);
            pbw_records r;
            pbw_err err;
            if (parse(b, len, &r, &err) == 0) pbw_records_free(&r);
        }
        b[i] = keep;
    }
    free(b);
}

PBW_TEST(formats_truncated) {
    check_truncations(FIX "state_zip.pt", pbw_torch_parse);
    check_truncations(FIX "state_deflate.pt", pbw_torch_parse);
    check_truncations(FIX "state_legacy.pt", pbw_torch_parse);
    check_truncations(FIX "state.safetensors", pbw_safetensors_parse);
}

PBW_TEST(formats_corrupted) {
    /* every byte of the pickle-only and JSON files (two values); the zip is slower to open (libzip checks
     * every entry), so one value at every third byte */
    check_corruptions(FIX "state_legacy.pt", pbw_torch_parse, 1, 2);
    check_corruptions(FIX "state.safetensors", pbw_safetensors_parse, 1, 2);
    check_corruptions(FIX "state_zip.pt", pbw_torch_parse, 3, 1);
}

/* ---- hand-made pickles ---- */

typedef struct {
    unsigned char *p;
    size_t n, cap;
} bytes;

static void put(bytes *b, const void *data, size_t n) {
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2 + 64;
        b->p = realloc(b->p, b->cap);
    }
    memcpy(b->p + b->n, data, n);
    b->n += n;
}
static void put1(bytes *b, int c) {
    unsigned char x = (unsigned char)c;
    put(b, &x, 1);
}
static void puts_(bytes *b, const char *s) { put(b, s, strlen(s)); }
/* a string literal that may hold NUL bytes */
#define PUTL(b, lit) put((b), (lit), sizeof(lit) - 1)
static void put_str(bytes *b, const char *s) { /* SHORT_BINUNICODE */
    put1(b, 0x8c);
    put1(b, (int)strlen(s));
    puts_(b, s);
}
static void put_int(bytes *b, int32_t v) { /* BININT */
    put1(b, 'J');
    put(b, &v, 4);
}

/* A legacy-format file around the main pickle `main` (protocol 2 header added) and storages
 * listed in `keys` with their data. */
static bytes legacy_file(const bytes *main, const char *key, const void *data, int64_t count,
                         size_t es) {
    bytes b = {0};
    static const unsigned char magic[] = {0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9,
                                          0x20, 0x6a, 0xa8, 0x50, 0x19, '.'};
    put(&b, magic, sizeof magic);
    puts_(&b, "\x80\x02M\xe9\x03.");
    puts_(&b, "\x80\x02}.");
    puts_(&b, "\x80\x02");
    put(&b, main->p, main->n);
    puts_(&b, "\x80\x02]");
    if (key) {
        puts_(&b, "(");
        put_str(&b, key);
        puts_(&b, "e");
    }
    puts_(&b, ".");
    if (key) {
        put(&b, &count, 8);
        put(&b, data, (size_t)count * es);
    }
    return b;
}

/* ('storage', FloatStorage, key, 'cpu', numel, None) BINPERSID */
static void put_storage(bytes *b, const char *key, int numel) {
    puts_(b, "(");
    put_str(b, "storage");
    puts_(b, "ctorch\nFloatStorage\n");
    put_str(b, key);
    put_str(b, "cpu");
    put_int(b, numel);
    puts_(b, "NtQ");
}

/* {'t': _rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())} */
static bytes tensor_pickle(int offset, int ndim, const int *size, const int *stride, int numel) {
    bytes m = {0};
    puts_(&m, "}");
    put_str(&m, "t");
    puts_(&m, "ctorch._utils\n_rebuild_tensor_v2\n(");
    put_storage(&m, "0", numel);
    put_int(&m, offset);
    puts_(&m, "(");
    for (int i = 0; i < ndim; i++) put_int(&m, size[i]);
    puts_(&m, "t(");
    for (int i = 0; i < ndim; i++) put_int(&m, stride[i]);
    puts_(&m, "t\x89");
    puts_(&m, "ccollections\nOrderedDict\n)RtRs.");
    return m;
}

static int parse_bytes(const bytes *b, pbw_records *r, pbw_err *err) {
    /* exact-size copy so that ASan sees any read past the end */
    unsigned char *copy = malloc(b->n);
    memcpy(copy, b->p, b->n);
    int rc = pbw_torch_parse(copy, b->n, r, err);
    if (rc == 0) pbw_records_free(r); /* tests below only look at failures and counts */
    free(copy);
    return rc;
}

/* Wraps main in a legacy file (with storage "0" of 16 floats when with_storage) and expects
 * it refused with msg in the message. */
static void expect_refused_ex(const bytes *main, int with_storage, const char *msg,
                              const char *what) {
    float data[16] = {0};
    bytes f = legacy_file(main, with_storage ? "0" : NULL, data, 16, 4);
    pbw_records r;
    pbw_err err = {{0}};
    CHECK_MSG(parse_bytes(&f, &r, &err) != 0, "%s accepted", what);
    CHECK_MSG(strstr(err.msg, msg) != NULL, "%s: '%s' lacks '%s'", what, err.msg, msg);
    free(f.p);
}
static void expect_refused(const bytes *main, const char *msg, const char *what) {
    expect_refused_ex(main, 1, msg, what);
}
static void expect_refused_plain(const bytes *main, const char *msg, const char *what) {
    expect_refused_ex(main, 0, msg, what);
}

PBW_TEST(formats_pickle_tensor_views) {
    /* a transposed view (strides (1, 4)) of a 4x4 storage at offset 1: copied in C order */
    float data[16];
    for (int i = 0; i < 16; i++) data[i] = (float)i;
    int size[2] = {3, 2}, stride[2] = {1, 4};
    bytes m = tensor_pickle(1, 2, size, stride, 16);
    bytes f = legacy_file(&m, "0", data, 16, 4);
    pbw_records r;
    pbw_err err;
    CHECK_MSG(pbw_torch_parse(f.p, f.n, &r, &err) == 0, "%s", err.msg);
    const pbw_record *t = pbw_records_find(&r, "t");
    CHECK(t && t->ndim == 2 && t->shape[0] == 3 && t->shape[1] == 2);
    if (t) {
        const float *v = t->data;
        float want[6] = {1, 5, 2, 6, 3, 7};
        for (int i = 0; i < 6; i++) CHECK(v[i] == want[i]);
    }
    pbw_records_free(&r);
    free(f.p);
    free(m.p);
}

PBW_TEST(formats_pickle_hostile) {
    bytes m;
    /* a tensor reaching past its storage */
    int size[2] = {4, 5}, stride[2] = {5, 1};
    m = tensor_pickle(0, 2, size, stride, 16);
    expect_refused(&m, "reaches element", "tensor past its storage");
    free(m.p);
    /* 2^62 elements */
    int bsize[2] = {2147483647, 2147483647}, bstride[2] = {2147483647, 1};
    m = tensor_pickle(0, 2, bsize, bstride, 16);
    expect_refused(&m, "reaches element", "huge tensor");
    free(m.p);
    /* a broadcast (stride 0) view whose copy would be huge */
    int zsize[2] = {2147483647, 1000}, zstride[2] = {0, 0};
    m = tensor_pickle(0, 2, zsize, zstride, 16);
    expect_refused(&m, "too large", "stride-0 giant");
    free(m.p);
    /* negative stride and offset */
    int nstride[2] = {-1, 1};
    m = tensor_pickle(0, 2, size, nstride, 16);
    expect_refused(&m, "non-negative", "negative stride");
    free(m.p);
    m = tensor_pickle(-1, 2, size, stride, 16);
    expect_refused(&m, "offset", "negative offset");
    free(m.p);
    /* deep nesting of marks */
    m = (bytes){0};
    for (int i = 0; i < 100000; i++) put1(&m, '(');
    expect_refused_plain(&m, "too deep", "100k MARKs");
    free(m.p);
    /* 100k nested lists: the VM builds them without recursion, flattening stops at 64 */
    m = (bytes){0};
    for (int i = 0; i < 100000; i++) put1(&m, ']');
    for (int i = 0; i < 99999; i++) put1(&m, 'a');
    put1(&m, '.');
    expect_refused_plain(&m, "nested deeper", "100k nested lists");
    free(m.p);
    /* a list that contains itself */
    m = (bytes){0};
    PUTL(&m, "]q\x00h\x00" "a.");
    expect_refused_plain(&m, "nested deeper", "cyclic list");
    free(m.p);
    /* sharing: L(k+1) = [Lk, Lk], 40 levels = 2^40 paths */
    m = (bytes){0};
    PUTL(&m, "]q\x00");
    for (int i = 0; i < 40; i++) {
        puts_(&m, "(h");
        put1(&m, i);
        puts_(&m, "h");
        put1(&m, i);
        puts_(&m, "lq");
        put1(&m, i + 1);
    }
    puts_(&m, ".");
    expect_refused_plain(&m, "too many", "exponential sharing");
    free(m.p);
    /* huge claimed lengths */
    static const struct {
        const char *bytes;
        size_t n;
        const char *what;
    } lens[] = {
        {"X\xff\xff\xff\xff", 5, "BINUNICODE 4G"},
        {"\x8d\xff\xff\xff\xff\xff\xff\xff\x7f", 9, "BINUNICODE8 2^63"},
        {"\x8e\xff\xff\xff\xff\xff\xff\xff\xff", 9, "BINBYTES8 2^64-1"},
        {"\x8b\xff\xff\xff\x7f", 5, "LONG4 2G"},
        {"T\xff\xff\xff\xff", 5, "BINSTRING negative"},
        {"B\x00\x00\x00\x80", 5, "BINBYTES 2G"},
    };
    for (size_t k = 0; k < sizeof lens / sizeof lens[0]; k++) {
        m = (bytes){0};
        put(&m, lens[k].bytes, lens[k].n);
        put1(&m, '.');
        expect_refused_plain(&m, "pickle:", lens[k].what);
        free(m.p);
    }
    /* other malformed programs, run on the VM directly */
    static const struct {
        const char *bytes;
        size_t n;
        const char *msg;
    } progs[] = {
        {"a.", 2, "underflow"},
        {".", 1, "underflow"},
        {"h\x05.", 3, "memo key"},
        {"Nr\xff\xff\xff\x7f.", 7, "memo index"},
        {"\xfe.", 2, "opcode"},
        {"cos\nsystem\n.", 12, "'os.system'"},
        {"\x8c\x08" "builtins\x8c\x04" "eval\x93.", 17, "'builtins.eval'"},
        {"ctorch._utils\n_rebuild_tensor_v2\n)R.", 36, "too few"},
        {"ccollections\nOrderedDict\nK\x01\x85R.", 30, "unsupported call"},
        {"N", 1, "STOP"},
        {"(K\x01" "d.", 4, "odd"},
        {"]N\x85N\x81.", 6, "NEWOBJ"},
        {"c\xff\n\x01\n.", 6, "'?.?'"},
        {"ctorch\nFloatStorage\n)R.", 23, "unsupported call"},
        {"(N", 2, "STOP"},
        {"N)Q.", 4, "persistent id"},
        {"\x80\x06N.", 4, "protocol"},
        {"K\x01\x93.", 4, "underflow"},
        {"K\x01K\x01\x93.", 6, "non-strings"},
        {"]K\x01K\x01s.", 7, "not a dict"},
        {"}K\x01" "a.", 5, "not a list"},
        {"1.", 2, "no mark"},
    };
    for (size_t k = 0; k < sizeof progs / sizeof progs[0]; k++) {
        unsigned char *copy = malloc(progs[k].n); /* exact size for ASan */
        memcpy(copy, progs[k].bytes, progs[k].n);
        pk_vm vm;
        pbw_err err = {{0}};
        pk_vm_init(&vm, NULL, NULL, &err);
        pk_value *v;
        size_t used;
        CHECK_MSG(pk_vm_run(&vm, copy, progs[k].n, &used, &v) != 0, "program %zu accepted", k);
        CHECK_MSG(strstr(err.msg, progs[k].msg) != NULL, "program %zu: '%s' lacks '%s'", k,
                  err.msg, progs[k].msg);
        pk_vm_free(&vm);
        free(copy);
    }
    /* storage bytes cut short */
    int s1[1] = {4}, st1[1] = {1};
    m = tensor_pickle(0, 1, s1, st1, 4);
    float data[4] = {1, 2, 3, 4};
    bytes f = legacy_file(&m, "0", data, 4, 4);
    pbw_records r;
    pbw_err err;
    f.n -= 3;
    CHECK(parse_bytes(&f, &r, &err) != 0 && strstr(err.msg, "past the end"));
    f.n += 3;
    CHECK_MSG(parse_bytes(&f, &r, &err) == 0, "%s", err.msg);
    free(f.p);
    free(m.p);
}

PBW_TEST(formats_pickle_vm_values) {
    /* direct VM run: ints of every width, floats, strings, bytes, dict order, memo */
    bytes m = {0};
    PUTL(&m, "\x80\x04\x95\x00\x00\x00\x00\x00\x00\x00\x00(");
    put_int(&m, -5);
    PUTL(&m, "K\xffM\xff\xff\x8a\x02\x00\x80\x8a\x00\x8b\x09\x00\x00\x00\x01\x02\x03\x04\x05\x06\x07\x08\x09");
    PUTL(&m, "G\x3f\xf8\x00\x00\x00\x00\x00\x00"); /* 1.5 */
    PUTL(&m, "\x88\x89N" "C\x02hi" "U\x03old" "\x8c\x03new\x94h\x00"); /* MEMOIZE 0, BINGET 0 */
    puts_(&m, "l.");
    pk_vm vm;
    pbw_err err;
    pk_vm_init(&vm, NULL, NULL, &err);
    pk_value *v;
    size_t used;
    CHECK_MSG(pk_vm_run(&vm, m.p, m.n, &used, &v) == 0, "%s", err.msg);
    CHECK(used == m.n);
    CHECK(v && v->type == PK_LIST && v->u.seq.n == 14);
    if (v && v->u.seq.n == 14) {
        pk_value **x = v->u.seq.v;
        CHECK(x[0]->type == PK_INT && x[0]->u.i == -5);
        CHECK(x[1]->u.i == 255 && x[2]->u.i == 65535);
        CHECK(x[3]->type == PK_INT && x[3]->u.i == -32768);
        CHECK(x[4]->type == PK_INT && x[4]->u.i == 0);
        CHECK(x[5]->type == PK_BIGINT && x[5]->u.s.len == 9);
        CHECK(x[6]->type == PK_FLOAT && x[6]->u.f == 1.5);
        CHECK(x[7]->type == PK_BOOL && x[7]->u.i == 1 && x[8]->u.i == 0);
        CHECK(x[9]->type == PK_NONE);
        CHECK(x[10]->type == PK_BYTES && x[10]->u.s.len == 2);
        CHECK(pk_is_str(x[11], "old") && pk_is_str(x[12], "new") && x[13] == x[12]);
    }
    pk_vm_free(&vm);
    free(m.p);
}

/* ---- npy ---- */

PBW_TEST(formats_npy_read_variants) {
    const char *files[] = {"array_f4.npy", "array_f8.npy", "array_f2.npy", "array_v2.npy",
                           "array_v3.npy"};
    for (size_t k = 0; k < 5; k++) {
        char path[256];
        snprintf(path, sizeof path, FIX "%s", files[k]);
        pbw_npy a;
        pbw_err err;
        CHECK_MSG(pbw_npy_read(path, &a, &err) == 0, "%s", err.msg);
        CHECK(a.ndim == 3 && a.shape[0] == 2 && a.shape[1] == 3 && a.shape[2] == 4 && a.numel == 24);
        /* (i - 5) / 8 is exact in float16 too */
        for (int i = 0; i < 24 && a.data; i++) CHECK(a.data[i] == (float)(i - 5) / 8);
        pbw_npy_free(&a);
    }
    pbw_npy a;
    pbw_err err;
    CHECK(pbw_npy_read(FIX "array_scalar.npy", &a, &err) == 0 && a.ndim == 0 && a.numel == 1 &&
          a.data[0] == 2.25f);
    pbw_npy_free(&a);
    CHECK(pbw_npy_read(FIX "array_fortran.npy", &a, &err) != 0 && strstr(err.msg, "Fortran"));
    CHECK(a.data == NULL);
}

PBW_TEST(formats_npy_zbank) {
    pbw_npy a;
    pbw_err err;
    CHECK_MSG(pbw_npy_read(PBW_SHARED("data/zbank/rows_0_1_30_1999.npy"), &a, &err) == 0, "%s", err.msg);
    CHECK(a.ndim == 2 && a.shape[0] == 4 && a.shape[1] == 512);
    if (a.numel == 2048) {
        double sum = 0;
        for (int i = 0; i < 2048; i++) sum += a.data[i];
        CHECK(a.data[0] == 1.6243454f);     /* RandomState(1).standard_normal() first value */
        CHECK(a.data[2047] == -0.19497712f);
        CHECK_NEAR(sum, 59.805795918771764, 1e-9); /* float64 sum of 2048 float32: order only */
    }
    pbw_npy_free(&a);
}

PBW_TEST(formats_npy_roundtrip_and_malformed) {
    float v[30];
    for (int i = 0; i < 30; i++) v[i] = (float)i * 0.37f - 3;
    int64_t shapes[][3] = {{30, 0, 0}, {5, 6, 0}, {2, 3, 5}};
    char path[] = "/tmp/pbw_test_npy_XXXXXX";
    int fd = mkstemp(path);
    close(fd);
    for (int nd = 1; nd <= 3; nd++) {
        pbw_err err;
        CHECK_MSG(pbw_npy_write(path, v, nd, shapes[nd - 1], &err) == 0, "%s", err.msg);
        pbw_npy a;
        CHECK_MSG(pbw_npy_read(path, &a, &err) == 0, "%s", err.msg);
        CHECK(a.ndim == nd && a.numel == 30);
        for (int d = 0; d < nd; d++) CHECK(a.shape[d] == shapes[nd - 1][d]);
        for (int i = 0; i < 30 && a.data; i++) CHECK(a.data[i] == v[i]);
        pbw_npy_free(&a);
        size_t len;
        unsigned char *raw = slurp(path, &len);
        CHECK(raw && (10 + (raw[8] | raw[9] << 8)) % 64 == 0);
        /* every truncation is refused */
        for (size_t cut = 0; raw && cut < len; cut++) {
            unsigned char *b = malloc(cut + 1);
            memcpy(b, raw, cut);
            CHECK(pbw_npy_parse(b, cut, &a, &err) != 0);
            free(b);
        }
        free(raw);
    }
    unlink(path);
    static const char *bad[] = {
        "{'descr': '>f4', 'fortran_order': False, 'shape': (2,), }",
        "{'descr': '<i4', 'fortran_order': False, 'shape': (2,), }",
        "{'descr': '<f4', 'fortran_order': False, 'shape': (-2,), }",
        "{'descr': '<f4', 'fortran_order': False, 'shape': (4611686018427387904, 4), }",
        "{'descr': '<f4', 'fortran_order': False, 'shape': (2, }",
        "{'descr': '<f4', 'fortran_order': False, }",
        "{'descr': '<f4', 'fortran_order': Maybe, 'shape': (2,), }",
        "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'x': 1}",
        "{'descr': '<f4', 'fortran_order': False, 'shape': (1,1,1,1,1,1,1,1,1), }",
        "{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }", /* data is for 2 */
    };
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
        bytes b = {0};
        size_t h = strlen(bad[k]) + 1;
        unsigned char pre[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, (unsigned char)h, 0};
        put(&b, pre, 10);
        puts_(&b, bad[k]);
        put1(&b, '\n');
        float d[2] = {1, 2};
        put(&b, d, 8);
        pbw_npy a;
        pbw_err err = {{0}};
        CHECK_MSG(pbw_npy_parse(b.p, b.n, &a, &err) != 0, "npy case %zu accepted", k);
        CHECK(a.data == NULL);
        free(b.p);
    }
}

/* ---- files and JSON ---- */

PBW_TEST(formats_file_atomic_write) {
    char dir[] = "/tmp/pbw_test_dir_XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    char path[256];
    snprintf(path, sizeof path, "%s/out.bin", dir);
    pbw_err err;
    CHECK(pbw_file_write_atomic(path, "hello", 5, &err) == 0);
    CHECK(pbw_file_write_atomic(path, "hello world", 11, &err) == 0);
    void *buf;
    size_t len;
    CHECK(pbw_file_read(path, 100, &buf, &len, &err) == 0 && len == 11 &&
          memcmp(buf, "hello world", 12) == 0);
    free(buf);
    CHECK(pbw_file_read(path, 10, &buf, &len, &err) != 0 && strstr(err.msg, "more than"));
    /* an aborted stream leaves the old file and no temporary */
    pbw_file_tmp t;
    CHECK(pbw_file_tmp_open(&t, path, &err) == 0);
    fputs("partial", t.fp);
    pbw_file_tmp_abort(&t);
    CHECK(pbw_file_read(path, 100, &buf, &len, &err) == 0 && len == 11);
    free(buf);
    char missing[300];
    snprintf(missing, sizeof missing, "%s/no/such/dir/x", dir);
    CHECK(pbw_file_write_atomic(missing, "x", 1, &err) != 0 && strstr(err.msg, missing));
    CHECK(pbw_file_read(missing, 10, &buf, &len, &err) != 0);
    unlink(path);
    CHECK(rmdir(dir) == 0); /* fails if a temporary was left behind */
}

/* The GPU libraries' choice files (pbw_cache.h): where they go, what a line may hold, and that
 * appended lines read back. */
PBW_TEST(formats_choice_cache) {
    uint64_t v[4];
    CHECK(pbw_cache_parse_line("v1 12800 0 768 0x1f\n", "v1", v, 4) == 0 && v[0] == 12800 &&
          v[1] == 0 && v[2] == 768 && v[3] == 31);
    CHECK(pbw_cache_parse_line("v1 1 2 3 0xFFFFFFFFFFFFFFFF\n", "v1", v, 4) == 0 &&
          v[3] == UINT64_MAX);
    CHECK(pbw_cache_parse_line("v1 18446744073709551615 0 0 0\n", "v1", v, 4) == 0 &&
          v[0] == UINT64_MAX);
    const char *bad[] = {
        "v1 1 2 3\n",                      /* too few fields */
        "v1 1 2 3 4 5\n",                  /* too many */
        "v2 1 2 3 4\n",                    /* another tag */
        "v1 1 2 -3 4\n",                   /* signed */
        "v1 1 2  3 4\n",                   /* two spaces */
        "v1 1 2 3 4 \n",                   /* trailing space */
        "v1 1 2 3 4\n\n",                  /* more after the newline */
        "v1 1 2 3 0x\n",                   /* no hex digits */
        "v1 1 2 3 0x10000000000000000\n",  /* 65 bits */
        "v1 18446744073709551616 2 3 4\n", /* 2^64 */
        "v1 1 2 3 4x\n",                   /* junk */
        "v11 1 2 3 4\n",                   /* a longer tag */
        "v1 1 2 3 0x30",                   /* no newline: a line cut short by a failed write */
        "",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        CHECK_MSG(pbw_cache_parse_line(bad[i], "v1", v, 4) != 0, "accepted \"%s\"", bad[i]);
    /* the writer: decimal, then hex from hex_from; what it writes reads back the same */
    const uint64_t fv[4] = {12800, 0, UINT64_MAX, 31};
    char fl[96];
    CHECK(pbw_cache_format_line(fl, sizeof fl, "v1", fv, 4, 2) == 0);
    CHECK_MSG(!strcmp(fl, "v1 12800 0 0xffffffffffffffff 0x1f\n"), "%s", fl);
    CHECK(pbw_cache_parse_line(fl, "v1", v, 4) == 0 && !memcmp(v, fv, sizeof fv));
    CHECK(pbw_cache_format_line(fl, 20, "v1", fv, 4, 2) != 0); /* does not fit */

    char dir[] = "/tmp/pbw_test_cache_XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    char sub[300], path[512];
    snprintf(sub, sizeof sub, "%s/a/b", dir);
    char *saved_dir, *saved_xdg;
    pbw_test_env_set("PBW_CACHE_DIR", sub, &saved_dir);
    pbw_test_env_set("XDG_CACHE_HOME", NULL, &saved_xdg);
    CHECK(pbw_cache_path("cudnn", "NVIDIA H100 80GB HBM3", 91400, path, sizeof path) == 0);
    char want[512];
    snprintf(want, sizeof want, "%s/cudnn-NVIDIA_H100_80GB_HBM3-91400.txt", sub);
    CHECK_MSG(!strcmp(path, want), "%s", path);
    char tiny[16];
    CHECK(pbw_cache_path("cudnn", "x", 1, tiny, sizeof tiny) != 0); /* does not fit */
    /* the folders are made; lines append */
    CHECK(pbw_cache_append(path, "v1 1 2 3 0x4\n") == 0);
    CHECK(pbw_cache_append(path, "v1 5 6 7 0x8\n") == 0);
    FILE *f = fopen(path, "r");
    CHECK(f != NULL);
    int lines = 0;
    char line[128];
    while (f && fgets(line, sizeof line, f))
        if (pbw_cache_parse_line(line, "v1", v, 4) == 0 && v[0] == (uint64_t)(4 * lines + 1) &&
            v[3] == (uint64_t)(4 * lines + 4))
            lines++;
    if (f) fclose(f);
    CHECK(lines == 2);
    /* whole files (serialized plans): written by a rename, read back whole, refused past max */
    char blob_path[600];
    snprintf(blob_path, sizeof blob_path, "%s/c/d/plan.txt", sub);
    static const char blob[] = "pbw-plan v1\n{\"a\": [1, 2]}\n";
    CHECK(pbw_cache_write_file(blob_path, blob, sizeof blob - 1) == 0);
    size_t blob_n = 0;
    char *got = pbw_cache_read_file(blob_path, 1 << 20, &blob_n);
    CHECK(got && blob_n == sizeof blob - 1 && !memcmp(got, blob, blob_n) && got[blob_n] == 0);
    free(got);
    CHECK(pbw_cache_read_file(blob_path, sizeof blob - 2, &blob_n) == NULL && blob_n == 0);
    got = pbw_cache_read_file(blob_path, sizeof blob - 1, &blob_n); /* exactly max */
    CHECK(got && blob_n == sizeof blob - 1);
    free(got);
    CHECK(pbw_cache_write_file(blob_path, "x", 1) == 0); /* replaced whole */
    got = pbw_cache_read_file(blob_path, 16, &blob_n);
    CHECK(got && blob_n == 1 && got[0] == 'x');
    free(got);
    snprintf(blob_path, sizeof blob_path, "%s/none.txt", sub);
    CHECK(pbw_cache_read_file(blob_path, 16, &blob_n) == NULL);
    unsetenv("PBW_CACHE_DIR"); /* then $XDG_CACHE_HOME/pbw */
    setenv("XDG_CACHE_HOME", dir, 1);
    CHECK(pbw_cache_path("cudnn", "g", 9, path, sizeof path) == 0);
    snprintf(want, sizeof want, "%s/pbw/cudnn-g-9.txt", dir);
    CHECK_MSG(!strcmp(path, want), "%s", path);
    pbw_test_env_restore("XDG_CACHE_HOME", saved_xdg);
    pbw_test_env_restore("PBW_CACHE_DIR", saved_dir);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    CHECK(system(cmd) == 0);
}

PBW_TEST(formats_json_config) {
    const char *text = "{\n  \"hidden_size\": 768,\n  \"eps\": 1e-5,\n  \"name\": \"clip\",\n"
                       "  \"proj\": null,\n  \"vision_config\": {\"layers\": 12},\n  \"ok\": true\n}\n";
    pbw_err err;
    json_object *o = pbw_json_parse(text, strlen(text), "config.json", &err);
    CHECK(o != NULL);
    int64_t i;
    double d;
    const char *s;
    int b;
    CHECK(pbw_json_get_int(o, "hidden_size", 0, &i, &err) == 0 && i == 768);
    CHECK(pbw_json_get_int(o, "missing", 42, &i, &err) == 0 && i == 42);
    CHECK(pbw_json_get_int(o, "proj", 7, &i, &err) == 0 && i == 7);
    CHECK(pbw_json_get_float(o, "eps", 0, &d, &err) == 0 && d == 1e-5);
    CHECK(pbw_json_get_float(o, "hidden_size", 0, &d, &err) == 0 && d == 768);
    CHECK(pbw_json_get_string(o, "name", NULL, &s, &err) == 0 && strcmp(s, "clip") == 0);
    CHECK(pbw_json_get_bool(o, "ok", 0, &b, &err) == 0 && b == 1);
    CHECK(pbw_json_get_int(o, "eps", 0, &i, &err) != 0 && strstr(err.msg, "'eps'") &&
          strstr(err.msg, "integer"));
    CHECK(pbw_json_get_string(o, "hidden_size", NULL, &s, &err) != 0 && strstr(err.msg, "'hidden_size'"));
    json_object *v = pbw_json_get_object(o, "vision_config");
    CHECK(v && pbw_json_get_int(v, "layers", 0, &i, &err) == 0 && i == 12);
    CHECK(pbw_json_get_object(o, "name") == NULL);
    json_object_put(o);
    const char *bad = "{\n  \"a\": 1,\n  \"b\": ]\n}";
    CHECK(pbw_json_parse(bad, strlen(bad), "cfg.json", &err) == NULL &&
          strstr(err.msg, "cfg.json:3:") == err.msg);
    CHECK(pbw_json_parse("{} x", 4, "t.json", &err) == NULL && strstr(err.msg, "after"));
    CHECK(pbw_json_parse("{\"a\": [1, 2", 11, "t.json", &err) == NULL && strstr(err.msg, "end"));
    CHECK(pbw_json_load("/nonexistent/config.json", PBW_JSON_MAX_FILE, &err) == NULL &&
          strstr(err.msg, "/nonexistent/config.json"));
}
