/* pbw_tokenizer.c: CLIP's BPE tokenizer (see pbw_tokenizer.h).
 *
 * Symbols: every string the BPE can produce (vocabulary entries, both halves of every merge
 * and their concatenation) is interned once as a symbol number; a merge is then a pair of
 * symbol numbers with a rank and a result. Words are split with CLIP's pattern through PCRE2,
 * and each word's bytes become symbols of one byte each (the last one with "</w>").
 *
 * BPE order: the reference repeatedly takes the lowest-ranked adjacent pair present and
 * merges all its occurrences left to right. Done literally that is quadratic in the word's
 * length, and words can be long (a prompt of 10,000 letters is one word), so rounds are
 * driven by a heap of candidate pairs: a round pops every live candidate of the lowest rank
 * and merges them in position order, skipping any already consumed by its left neighbour,
 * which is exactly one pass of the reference's loop. */
#include "models/pbw_tokenizer.h"

#include <json-c/json.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <zlib.h>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "formats/pbw_file.h"
#include "formats/pbw_json.h"
#include "models/pbw_text_clean.h"

#define NELEM(a) (sizeof(a) / sizeof((a)[0]))

/* OpenAI keeps merges[1 : 49152 - 256 - 2 + 1] of its file; Hugging Face's CLIPTokenizer
 * slices merges.txt the same way. */
#define CLIP_MERGES 48894
#define MAX_VOCAB_FILE (64u << 20)
#define CACHE_SLOTS 8192   /* power of two; cleared when half full */
#define CACHE_MAX_WORD 64  /* longer words are not cached */

static const char SOT[] = "<|startoftext|>";
static const char EOT[] = "<|endoftext|>";

/* ---------------------------------------------------------------------------------------------
 * Interned strings. */

typedef struct {
    char *pool;
    size_t pool_n, pool_cap;
    size_t *off; /* symbol -> offset of its NUL-terminated string in pool */
    uint32_t *len;
    int32_t *vocab; /* symbol -> vocabulary id, -1 if none */
    size_t n, cap;
    int32_t *slots; /* hash slots: symbol + 1, 0 = empty */
    size_t nslots;
} symtab;

static uint64_t hash_bytes(const char *s, size_t n) {
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
    return h ^ (h >> 29);
}

static const char *sym_str(const symtab *t, int32_t s) { return t->pool + t->off[s]; }

static int sym_grow_slots(symtab *t) {
    size_t ns = t->nslots ? t->nslots * 2 : 1024;
    int32_t *slots = calloc(ns, sizeof *slots);
    if (!slots) return -1;
    for (size_t i = 0; i < t->n; i++) {
        size_t h = (size_t)hash_bytes(sym_str(t, (int32_t)i), t->len[i]) & (ns - 1);
        while (slots[h]) h = (h + 1) & (ns - 1);
        slots[h] = (int32_t)i + 1;
    }
    free(t->slots);
    t->slots = slots;
    t->nslots = ns;
    return 0;
}

static int32_t sym_find(const symtab *t, const char *s, size_t n) {
    if (!t->nslots) return -1;
    size_t h = (size_t)hash_bytes(s, n) & (t->nslots - 1);
    while (t->slots[h]) {
        int32_t k = t->slots[h] - 1;
        if (t->len[k] == n && !memcmp(sym_str(t, k), s, n)) return k;
        h = (h + 1) & (t->nslots - 1);
    }
    return -1;
}

/* Symbol of s[0..n), added if new; -1 when out of memory. */
static int32_t sym_intern(symtab *t, const char *s, size_t n) {
    int32_t k = sym_find(t, s, n);
    if (k >= 0) return k;
    if (n > UINT32_MAX || t->n >= INT32_MAX - 1) return -1;
    if ((t->n + 1) * 2 > t->nslots && sym_grow_slots(t)) return -1;
    if (t->n == t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 1024;
        size_t *off = realloc(t->off, cap * sizeof *off);
        if (off) t->off = off;
        uint32_t *len = realloc(t->len, cap * sizeof *len);
        if (len) t->len = len;
        int32_t *vocab = realloc(t->vocab, cap * sizeof *vocab);
        if (vocab) t->vocab = vocab;
        if (!off || !len || !vocab) return -1;
        t->cap = cap;
    }
    if (t->pool_n + n + 1 > t->pool_cap) {
        size_t cap = t->pool_cap ? t->pool_cap : 1 << 16;
        while (cap < t->pool_n + n + 1) cap *= 2;
        char *pool = realloc(t->pool, cap);
        if (!pool) return -1;
        t->pool = pool;
        t->pool_cap = cap;
    }
    memcpy(t->pool + t->pool_n, s, n);
    t->pool[t->pool_n + n] = 0;
    k = (int32_t)t->n++;
    t->off[k] = t->pool_n;
    t->len[k] = (uint32_t)n;
    t->vocab[k] = -1;
    t->pool_n += n + 1;
    size_t h = (size_t)hash_bytes(s, n) & (t->nslots - 1);
    while (t->slots[h]) h = (h + 1) & (t->nslots - 1);
    t->slots[h] = k + 1;
    return k;
}

static void sym_free(symtab *t) {
    free(t->pool);
    free(t->off);
    free(t->len);
    free(t->vocab);
    free(t->slots);
    memset(t, 0, sizeof *t);
}

/* ---------------------------------------------------------------------------------------------
 * Merges: (left, right) -> rank and result. */

typedef struct {
    uint64_t key; /* (left << 32 | right) + 1; 0 = empty */
    int32_t rank, result;
} merge_slot;

typedef struct {
    merge_slot *slots;
    size_t nslots, n;
} mergetab;

static uint64_t pair_key(int32_t a, int32_t b) { return ((uint64_t)(uint32_t)a << 32 | (uint32_t)b) + 1; }

static size_t pair_hash(uint64_t k) {
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdull;
    k ^= k >> 33;
    return (size_t)k;
}

static const merge_slot *merge_find(const mergetab *m, int32_t a, int32_t b) {
    if (!m->nslots) return NULL;
    uint64_t k = pair_key(a, b);
    size_t h = pair_hash(k) & (m->nslots - 1);
    while (m->slots[h].key) {
        if (m->slots[h].key == k) return &m->slots[h];
        h = (h + 1) & (m->nslots - 1);
    }
    return NULL;
}

/* Adds or overwrites (a later duplicate wins, as in Python's dict(zip(merges, range))). */
static int merge_put(mergetab *m, int32_t a, int32_t b, int32_t rank, int32_t result) {
    if ((m->n + 1) * 2 > m->nslots) {
        size_t ns = m->nslots ? m->nslots * 2 : 1 << 16;
        merge_slot *slots = calloc(ns, sizeof *slots);
        if (!slots) return -1;
        for (size_t i = 0; i < m->nslots; i++) {
            if (!m->slots[i].key) continue;
            size_t h = pair_hash(m->slots[i].key) & (ns - 1);
            while (slots[h].key) h = (h + 1) & (ns - 1);
            slots[h] = m->slots[i];
        }
        free(m->slots);
        m->slots = slots;
        m->nslots = ns;
    }
    uint64_t k = pair_key(a, b);
    size_t h = pair_hash(k) & (m->nslots - 1);
    while (m->slots[h].key && m->slots[h].key != k) h = (h + 1) & (m->nslots - 1);
    if (!m->slots[h].key) m->n++;
    m->slots[h].key = k;
    m->slots[h].rank = rank;
    m->slots[h].result = result;
    return 0;
}

/* ---------------------------------------------------------------------------------------------
 * The tokenizer. */

typedef struct {
    char *word; /* NULL = empty */
    uint32_t wlen, nids;
    int32_t *ids;
} cache_slot;

struct pbw_tokenizer {
    symtab syms;
    mergetab merges;
    int32_t byte_sym[256], byte_end_sym[256]; /* one byte's symbol, without / with "</w>" */
    int32_t *id_sym;                          /* vocabulary id -> symbol, -1 if unused */
    int32_t nvocab, id_cap, sot, eot, unk;
    uint8_t byte_of_char[0x200]; /* printable stand-in (U+0021..U+0143) -> byte */
    pcre2_code *split;
    pthread_mutex_t lock;
    cache_slot *cache;
    size_t cache_n;
};

/* CLIP's bytes_to_unicode: printable Latin-1 bytes stand for themselves, the other 68 bytes
 * for U+0100 onwards, in byte order. `order` receives the bytes in the order of the vocabulary
 * (stand-ins of printable bytes first). */
static void byte_chars(uint32_t ch[256], uint8_t order[256]) {
    int k = 0, extra = 0;
    for (int b = 0; b < 256; b++) {
        int printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
        if (printable) {
            ch[b] = (uint32_t)b;
            order[k++] = (uint8_t)b;
        }
    }
    for (int b = 0; b < 256; b++) {
        int printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
        if (!printable) {
            ch[b] = 256 + (uint32_t)extra++;
            order[k++] = (uint8_t)b;
        }
    }
}

static size_t put_utf8(char *o, uint32_t c) {
    if (c < 0x80) {
        o[0] = (char)c;
        return 1;
    }
    o[0] = (char)(0xC0 | (c >> 6));
    o[1] = (char)(0x80 | (c & 0x3F));
    return 2; /* stand-ins are below U+0800 */
}

static int set_vocab(pbw_tokenizer *tok, int32_t sym, int32_t id) {
    if (id >= tok->id_cap) {
        int32_t cap = tok->id_cap ? tok->id_cap : 1024;
        while (cap <= id) cap *= 2;
        int32_t *m = realloc(tok->id_sym, (size_t)cap * sizeof *m);
        if (!m) return -1;
        tok->id_sym = m;
        tok->id_cap = cap;
    }
    if (id >= tok->nvocab) {
        for (int32_t i = tok->nvocab; i <= id; i++) tok->id_sym[i] = -1;
        tok->nvocab = id + 1;
    }
    /* A string listed twice keeps its later id (Python's dict(zip(vocab, range))). */
    tok->syms.vocab[sym] = id;
    tok->id_sym[id] = sym;
    return 0;
}

/* Symbols for single bytes, with and without "</w>" (added to the table if the vocabulary
 * lacks them, so that BPE can always start). */
static int init_byte_symbols(pbw_tokenizer *tok) {
    uint32_t ch[256];
    uint8_t order[256];
    byte_chars(ch, order);
    for (int b = 0; b < 256; b++) {
        char s[8];
        size_t k = put_utf8(s, ch[b]);
        tok->byte_of_char[ch[b]] = (uint8_t)b;
        tok->byte_sym[b] = sym_intern(&tok->syms, s, k);
        memcpy(s + k, "</w>", 4);
        tok->byte_end_sym[b] = sym_intern(&tok->syms, s, k + 4);
        if (tok->byte_sym[b] < 0 || tok->byte_end_sym[b] < 0) return -1;
    }
    return 0;
}

/* Reads one merge line "left right" (split on whitespace, as Python's str.split does for
 * these ASCII-separated files); adds it with the given rank; *result is the merged symbol. */
static int add_merge(pbw_tokenizer *tok, const char *line, size_t n, int32_t rank,
                     int32_t *result, const char *path, size_t lineno, pbw_err *err) {
    const char *part[2] = {NULL, NULL};
    size_t plen[2] = {0, 0}, np = 0, i = 0;
    while (i < n) {
        while (i < n && (line[i] == ' ' || line[i] == '\t' || line[i] == '\r')) i++;
        if (i >= n) break;
        size_t j = i;
        while (j < n && line[j] != ' ' && line[j] != '\t' && line[j] != '\r') j++;
        if (np < 2) {
            part[np] = line + i;
            plen[np] = j - i;
        }
        np++;
        i = j;
    }
    if (np != 2)
        return pbw_err_set(err, "%s: line %zu: expected two symbols separated by a space, found %zu",
                           path, lineno, np);
    char buf[1024];
    if (plen[0] + plen[1] > sizeof buf)
        return pbw_err_set(err, "%s: line %zu: merge longer than %zu bytes", path, lineno,
                           sizeof buf);
    memcpy(buf, part[0], plen[0]);
    memcpy(buf + plen[0], part[1], plen[1]);
    int32_t a = sym_intern(&tok->syms, part[0], plen[0]);
    int32_t b = sym_intern(&tok->syms, part[1], plen[1]);
    int32_t r = sym_intern(&tok->syms, buf, plen[0] + plen[1]);
    if (a < 0 || b < 0 || r < 0 || merge_put(&tok->merges, a, b, rank, r))
        return pbw_err_set(err, "%s: out of memory", path);
    *result = r;
    return 0;
}

/* Iterates the lines of a text buffer; returns 0 at the end. */
static int next_line(const char *s, size_t n, size_t *pos, const char **line, size_t *len) {
    if (*pos >= n) return 0;
    const char *nl = memchr(s + *pos, '\n', n - *pos);
    size_t end = nl ? (size_t)(nl - s) : n;
    *line = s + *pos;
    *len = end - *pos;
    *pos = nl ? end + 1 : n;
    return 1;
}

/* Reads a gzip file (at most MAX_VOCAB_FILE bytes once decompressed), stopping early once it
 * holds max_lines complete lines: OpenAI's file has 262,000 lines of which CLIP uses 48,895. */
static int read_gzip(const char *path, size_t max_lines, char **data, size_t *len, pbw_err *err) {
    gzFile gz = gzopen(path, "rb");
    if (!gz) return pbw_err_set(err, "%s: cannot open", path);
    size_t cap = 1 << 20, n = 0, lines = 0;
    char *buf = malloc(cap);
    int rc = buf ? 0 : pbw_err_set(err, "%s: out of memory", path);
    while (!rc) {
        if (n == cap) {
            if (cap >= MAX_VOCAB_FILE) {
                rc = pbw_err_set(err, "%s: more than %u bytes once decompressed", path,
                                 MAX_VOCAB_FILE);
                break;
            }
            char *nb = realloc(buf, cap * 2);
            if (!nb) {
                rc = pbw_err_set(err, "%s: out of memory", path);
                break;
            }
            buf = nb;
            cap *= 2;
        }
        int got = gzread(gz, buf + n, (unsigned)(cap - n));
        if (got < 0) {
            int zerr;
            rc = pbw_err_set(err, "%s: not a readable gzip file (%s)", path, gzerror(gz, &zerr));
            break;
        }
        if (got == 0) break;
        size_t end = n + (size_t)got;
        for (; n < end && lines < max_lines; n++) lines += buf[n] == '\n';
        if (lines >= max_lines) break; /* n is just past the last line wanted */
    }
    gzclose(gz);
    if (rc) {
        free(buf);
        return -1;
    }
    *data = buf;
    *len = n;
    return 0;
}

/* OpenAI's bpe_simple_vocab_16e6.txt.gz: its merges define the vocabulary: the 256 byte
 * stand-ins, the same with "</w>", each merge's result in file order, then the two special
 * tokens. */
static int load_openai(pbw_tokenizer *tok, const char *path, pbw_err *err) {
    char *buf = NULL;
    size_t n = 0;
    if (read_gzip(path, CLIP_MERGES + 1, &buf, &n, err)) return -1;
    size_t bad;
    if (pbw_utf8_check(buf, n, &bad)) {
        free(buf);
        return pbw_err_set(err, "%s: not UTF-8 text (byte offset %zu)", path, bad);
    }
    uint32_t ch[256];
    uint8_t order[256];
    byte_chars(ch, order);
    int32_t id = 0;
    for (int pass = 0; pass < 2; pass++)
        for (int i = 0; i < 256; i++) {
            int b = order[i];
            if (set_vocab(tok, pass ? tok->byte_end_sym[b] : tok->byte_sym[b], id++)) {
                free(buf);
                return pbw_err_set(err, "%s: out of memory", path);
            }
        }
    /* Python: gzip...read().decode().split('\n')[1:48895]; a final empty piece (the file's
     * last newline) is not a merge. */
    size_t pos = 0, lineno = 0, len;
    const char *line;
    int32_t rank = 0;
    while (rank < CLIP_MERGES && next_line(buf, n, &pos, &line, &len)) {
        lineno++;
        if (lineno == 1) continue; /* "#version: 0.2" */
        int32_t r;
        if (add_merge(tok, line, len, rank, &r, path, lineno, err)) {
            free(buf);
            return -1;
        }
        if (set_vocab(tok, r, id++)) {
            free(buf);
            return pbw_err_set(err, "%s: out of memory", path);
        }
        rank++;
    }
    free(buf);
    if (rank == 0) return pbw_err_set(err, "%s: no merges found after the first line", path);
    int32_t s = sym_intern(&tok->syms, SOT, strlen(SOT));
    int32_t e = sym_intern(&tok->syms, EOT, strlen(EOT));
    if (s < 0 || e < 0 || set_vocab(tok, s, id) || set_vocab(tok, e, id + 1))
        return pbw_err_set(err, "%s: out of memory", path);
    tok->sot = id;
    tok->eot = id + 1;
    tok->unk = id + 1;
    return 0;
}

/* A Hugging Face directory: vocab.json ({token: id}) and merges.txt. */
static int load_hf(pbw_tokenizer *tok, const char *dir, pbw_err *err) {
    size_t dl = strlen(dir);
    char *vpath = malloc(dl + 16), *mpath = malloc(dl + 16);
    if (!vpath || !mpath) {
        free(vpath);
        free(mpath);
        return pbw_err_set(err, "%s: out of memory", dir);
    }
    snprintf(vpath, dl + 16, "%s/vocab.json", dir);
    snprintf(mpath, dl + 16, "%s/merges.txt", dir);
    int rc = -1;
    char *buf = NULL;
    json_object *vocab = pbw_json_load(vpath, MAX_VOCAB_FILE, err);
    if (!vocab) goto done;
    if (!json_object_is_type(vocab, json_type_object)) {
        pbw_err_set(err, "%s: expected an object mapping tokens to ids", vpath);
        goto done;
    }
    json_object_object_foreach(vocab, key, val) {
        if (!json_object_is_type(val, json_type_int)) {
            pbw_err_set(err, "%s: the id of '%.64s' is not an integer", vpath, key);
            goto done;
        }
        int64_t id = json_object_get_int64(val);
        if (id < 0 || id > (1 << 24)) {
            pbw_err_set(err, "%s: id %lld of '%.64s' is out of range [0, %d]", vpath,
                        (long long)id, key, 1 << 24);
            goto done;
        }
        int32_t s = sym_intern(&tok->syms, key, strlen(key));
        if (s < 0 || set_vocab(tok, s, (int32_t)id)) {
            pbw_err_set(err, "%s: out of memory", vpath);
            goto done;
        }
    }
    int32_t s = sym_find(&tok->syms, SOT, strlen(SOT));
    int32_t e = sym_find(&tok->syms, EOT, strlen(EOT));
    if (s < 0 || tok->syms.vocab[s] < 0 || e < 0 || tok->syms.vocab[e] < 0) {
        pbw_err_set(err, "%s: lacks the special tokens %s and %s", vpath, SOT, EOT);
        goto done;
    }
    tok->sot = tok->syms.vocab[s];
    tok->eot = tok->syms.vocab[e];
    tok->unk = tok->eot; /* CLIPTokenizer's unk_token */

    /* Hugging Face: read().strip().split("\n")[1:48895]: the first line (the "#version"
     * header) is skipped whatever it holds. */
    size_t n;
    if (pbw_file_read(mpath, MAX_VOCAB_FILE, (void **)&buf, &n, err)) goto done;
    size_t bad;
    if (pbw_utf8_check(buf, n, &bad)) {
        pbw_err_set(err, "%s: not UTF-8 text (byte offset %zu)", mpath, bad);
        goto done;
    }
    size_t a = 0;
    while (a < n && (buf[a] == ' ' || (buf[a] >= '\t' && buf[a] <= '\r'))) a++;
    while (n > a && (buf[n - 1] == ' ' || (buf[n - 1] >= '\t' && buf[n - 1] <= '\r'))) n--;
    size_t pos = a, lineno = 0, len;
    const char *line;
    int32_t rank = 0;
    while (rank < CLIP_MERGES && next_line(buf, n, &pos, &line, &len)) {
        lineno++;
        if (lineno == 1) continue;
        int32_t r;
        if (add_merge(tok, line, len, rank, &r, mpath, lineno, err)) goto done;
        rank++;
    }
    rc = 0;
done:
    if (vocab) json_object_put(vocab);
    free(buf);
    free(vpath);
    free(mpath);
    return rc;
}

/* CLIP's split pattern, case-insensitive. Two details make PCRE2 agree with the `regex`
 * module: its \s (Unicode White_Space) is spelled out, because PCRE2's \s is a slightly
 * different set; and U+0345 (combining ypogegrammeni) is left out of the last class, because
 * under IGNORECASE `regex` matches it with none of the three classes (its case partner iota
 * is a letter), so the reference skips it like a space. */
static const char SPLIT_PATTERN[] =
    "<\\|startoftext\\|>|<\\|endoftext\\|>|'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]"
    "|[^\\t-\\r \\x{85}\\x{a0}\\x{1680}\\x{2000}-\\x{200a}\\x{2028}\\x{2029}\\x{202f}\\x{205f}"
    "\\x{3000}\\x{345}\\p{L}\\p{N}]+";

static int has_suffix(const char *s, const char *suffix) {
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && !strcmp(s + a - b, suffix);
}

pbw_tokenizer *pbw_tokenizer_load(const char *path, pbw_err *err) {
    if (!path || !*path) {
        pbw_err_set(err, "tokenizer: no vocabulary path given");
        return NULL;
    }
    pbw_tokenizer *tok = calloc(1, sizeof *tok);
    if (!tok) {
        pbw_err_set(err, "%s: out of memory", path);
        return NULL;
    }
    if (pthread_mutex_init(&tok->lock, NULL)) {
        free(tok);
        pbw_err_set(err, "%s: cannot create a mutex", path);
        return NULL;
    }
    tok->cache = calloc(CACHE_SLOTS, sizeof *tok->cache);
    if (!tok->cache || init_byte_symbols(tok)) {
        pbw_err_set(err, "%s: out of memory", path);
        goto fail;
    }

    struct stat st;
    if (stat(path, &st) != 0) {
        pbw_err_set(err, "%s: no such file or directory", path);
        goto fail;
    }
    int rc;
    if (S_ISDIR(st.st_mode)) {
        rc = load_hf(tok, path, err);
    } else if (has_suffix(path, "vocab.json") || has_suffix(path, "merges.txt")) {
        /* a file of a Hugging Face directory: use the directory */
        size_t k = strlen(path);
        while (k > 0 && path[k - 1] != '/') k--;
        char *dir = k ? strndup(path, k - 1 ? k - 1 : 1) : strdup(".");
        if (!dir) {
            pbw_err_set(err, "%s: out of memory", path);
            goto fail;
        }
        rc = load_hf(tok, dir, err);
        free(dir);
    } else if (has_suffix(path, ".gz")) {
        rc = load_openai(tok, path, err);
    } else {
        pbw_err_set(err, "%s: not a vocabulary (expected OpenAI's bpe_simple_vocab_16e6.txt.gz "
                         "or a Hugging Face directory with vocab.json and merges.txt)", path);
        goto fail;
    }
    if (rc) goto fail;

    int code;
    PCRE2_SIZE off;
    tok->split = pcre2_compile((PCRE2_SPTR)SPLIT_PATTERN, PCRE2_ZERO_TERMINATED,
                               PCRE2_UTF | PCRE2_UCP | PCRE2_CASELESS, &code, &off, NULL);
    if (!tok->split) {
        char msg[128];
        pcre2_get_error_message(code, (PCRE2_UCHAR *)msg, sizeof msg);
        pbw_err_set(err, "tokenizer: split pattern at offset %zu: %s", (size_t)off, msg);
        goto fail;
    }
    pcre2_jit_compile(tok->split, PCRE2_JIT_COMPLETE);
    return tok;
fail:
    pbw_tokenizer_free(tok);
    return NULL;
}

static void cache_clear(pbw_tokenizer *tok) {
    for (size_t i = 0; i < CACHE_SLOTS; i++) {
        free(tok->cache[i].word);
        free(tok->cache[i].ids);
    }
    memset(tok->cache, 0, CACHE_SLOTS * sizeof *tok->cache);
    tok->cache_n = 0;
}

void pbw_tokenizer_free(pbw_tokenizer *tok) {
    if (!tok) return;
    if (tok->cache) cache_clear(tok);
    free(tok->cache);
    pcre2_code_free(tok->split);
    sym_free(&tok->syms);
    free(tok->merges.slots);
    free(tok->id_sym);
    pthread_mutex_destroy(&tok->lock);
    free(tok);
}

int32_t pbw_tokenizer_vocab_size(const pbw_tokenizer *tok) { return tok->nvocab; }
int32_t pbw_tokenizer_start_id(const pbw_tokenizer *tok) { return tok->sot; }
int32_t pbw_tokenizer_end_id(const pbw_tokenizer *tok) { return tok->eot; }

const char *pbw_tokenizer_token(const pbw_tokenizer *tok, int32_t id) {
    if (!tok || id < 0 || id >= tok->nvocab || tok->id_sym[id] < 0) return NULL;
    return sym_str(&tok->syms, tok->id_sym[id]);
}

/* ---------------------------------------------------------------------------------------------
 * BPE. */

typedef struct {
    int32_t *v;
    size_t n, cap;
} ivec;

static int ivec_push(ivec *a, int32_t x) {
    if (a->n == a->cap) {
        size_t cap = a->cap ? a->cap * 2 : 64;
        int32_t *v = realloc(a->v, cap * sizeof *v);
        if (!v) return -1;
        a->v = v;
        a->cap = cap;
    }
    a->v[a->n++] = x;
    return 0;
}

typedef struct {
    int32_t rank, left;
    uint32_t vl, vr; /* versions of the left and right symbols when pushed */
} cand;

typedef struct {
    cand *v;
    size_t n, cap;
} heap;

static int cand_less(const cand *a, const cand *b) {
    return a->rank < b->rank || (a->rank == b->rank && a->left < b->left);
}

static int heap_push(heap *h, cand c) {
    if (h->n == h->cap) {
        size_t cap = h->cap ? h->cap * 2 : 64;
        cand *v = realloc(h->v, cap * sizeof *v);
        if (!v) return -1;
        h->v = v;
        h->cap = cap;
    }
    size_t i = h->n++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!cand_less(&c, &h->v[p])) break;
        h->v[i] = h->v[p];
        i = p;
    }
    h->v[i] = c;
    return 0;
}

static cand heap_pop(heap *h) {
    cand top = h->v[0], last = h->v[--h->n];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= h->n) break;
        if (c + 1 < h->n && cand_less(&h->v[c + 1], &h->v[c])) c++;
        if (!cand_less(&h->v[c], &last)) break;
        h->v[i] = h->v[c];
        i = c;
    }
    if (h->n) h->v[i] = last;
    return top;
}

static int32_t vocab_id(const pbw_tokenizer *tok, int32_t sym) {
    int32_t id = tok->syms.vocab[sym];
    return id >= 0 ? id : tok->unk;
}

/* Work arrays of one word: symbol, neighbours and version of each position. */
typedef struct {
    int32_t *sym, *next, *prev;
    uint32_t *ver;
} word_state;

static int push_pair(const pbw_tokenizer *tok, const word_state *w, heap *h, int32_t i) {
    int32_t j = w->next[i];
    if (j < 0) return 0;
    const merge_slot *m = merge_find(&tok->merges, w->sym[i], w->sym[j]);
    if (!m) return 0;
    cand c = {m->rank, i, w->ver[i], w->ver[j]};
    return heap_push(h, c);
}

static int cmp_i32(const void *a, const void *b) {
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

/* Appends the ids of one word (its raw bytes) to out. */
static int bpe_word(const pbw_tokenizer *tok, const unsigned char *s, size_t n, ivec *out) {
    if (n == 1) return ivec_push(out, vocab_id(tok, tok->byte_end_sym[s[0]]));
    if (n > INT32_MAX / 2) return -1;
    word_state w;
    void *mem = malloc(n * (3 * sizeof(int32_t) + sizeof(uint32_t)));
    if (!mem) return -1;
    w.sym = mem;
    w.next = w.sym + n;
    w.prev = w.next + n;
    w.ver = (uint32_t *)(w.prev + n);
    for (size_t i = 0; i < n; i++) {
        w.sym[i] = i + 1 == n ? tok->byte_end_sym[s[i]] : tok->byte_sym[s[i]];
        w.next[i] = i + 1 == n ? -1 : (int32_t)i + 1;
        w.prev[i] = (int32_t)i - 1;
        w.ver[i] = 0;
    }
    heap h = {0};
    ivec round = {0}, changed = {0};
    int rc = 0;
    for (size_t i = 0; i + 1 < n && !rc; i++) rc = push_pair(tok, &w, &h, (int32_t)i);
    size_t alive = n;
    while (!rc && h.n && alive > 1) {
        int32_t rank = h.v[0].rank;
        round.n = 0;
        while (h.n && h.v[0].rank == rank && !rc) {
            cand c = heap_pop(&h);
            int32_t j = w.next[c.left];
            if (w.sym[c.left] >= 0 && w.ver[c.left] == c.vl && j >= 0 && w.ver[j] == c.vr)
                rc = ivec_push(&round, c.left);
        }
        if (rc || !round.n) continue;
        if (round.n > 1) qsort(round.v, round.n, sizeof *round.v, cmp_i32);
        changed.n = 0;
        for (size_t k = 0; k < round.n && !rc; k++) {
            int32_t i = round.v[k];
            if (k && round.v[k - 1] == i) continue;
            int32_t j = w.next[i];
            if (w.sym[i] < 0 || j < 0) continue;
            const merge_slot *m = merge_find(&tok->merges, w.sym[i], w.sym[j]);
            if (!m || m->rank != rank) continue; /* consumed by the merge on its left */
            w.sym[i] = m->result;
            w.ver[i]++;
            w.next[i] = w.next[j];
            if (w.next[j] >= 0) w.prev[w.next[j]] = i;
            w.sym[j] = -1;
            w.ver[j]++;
            alive--;
            rc = ivec_push(&changed, i);
        }
        for (size_t k = 0; k < changed.n && !rc; k++) {
            int32_t i = changed.v[k];
            if (w.sym[i] < 0) continue;
            if (w.prev[i] >= 0) rc = push_pair(tok, &w, &h, w.prev[i]);
            if (!rc) rc = push_pair(tok, &w, &h, i);
        }
    }
    for (int32_t i = 0; i >= 0 && !rc; i = w.next[i]) rc = ivec_push(out, vocab_id(tok, w.sym[i]));
    free(h.v);
    free(round.v);
    free(changed.v);
    free(mem);
    return rc;
}

/* bpe_word through the cache of short words. */
static int bpe_cached(pbw_tokenizer *tok, const char *s, size_t n, ivec *out) {
    if (n > CACHE_MAX_WORD) return bpe_word(tok, (const unsigned char *)s, n, out);
    size_t h = (size_t)hash_bytes(s, n) & (CACHE_SLOTS - 1);
    pthread_mutex_lock(&tok->lock);
    for (size_t k = h; tok->cache[k].word; k = (k + 1) & (CACHE_SLOTS - 1)) {
        cache_slot *c = &tok->cache[k];
        if (c->wlen == n && !memcmp(c->word, s, n)) {
            int rc = 0;
            for (uint32_t i = 0; i < c->nids && !rc; i++) rc = ivec_push(out, c->ids[i]);
            pthread_mutex_unlock(&tok->lock);
            return rc;
        }
    }
    pthread_mutex_unlock(&tok->lock);

    size_t start = out->n;
    if (bpe_word(tok, (const unsigned char *)s, n, out)) return -1;

    pthread_mutex_lock(&tok->lock);
    if (tok->cache_n * 2 >= CACHE_SLOTS) cache_clear(tok);
    size_t k = h;
    while (tok->cache[k].word) {
        if (tok->cache[k].wlen == n && !memcmp(tok->cache[k].word, s, n)) break; /* raced */
        k = (k + 1) & (CACHE_SLOTS - 1);
    }
    if (!tok->cache[k].word) {
        char *word = malloc(n);
        int32_t *ids = malloc((out->n - start) * sizeof *ids);
        if (word && ids) {
            memcpy(word, s, n);
            memcpy(ids, out->v + start, (out->n - start) * sizeof *ids);
            tok->cache[k].word = word;
            tok->cache[k].wlen = (uint32_t)n;
            tok->cache[k].ids = ids;
            tok->cache[k].nids = (uint32_t)(out->n - start);
            tok->cache_n++;
        } else {
            free(word); /* caching is optional */
            free(ids);
        }
    }
    pthread_mutex_unlock(&tok->lock);
    return 0;
}

int pbw_tokenize(pbw_tokenizer *tok, const char *text, size_t len, int32_t *ids, size_t max,
                 int context, size_t *n, pbw_err *err) {
    if (n) *n = 0;
    if (!tok) return pbw_err_set(err, "tokenize: no tokenizer");
    if (!text && len) return pbw_err_set(err, "tokenize: text is NULL");
    if (context < 0) return pbw_err_set(err, "tokenize: context %d is negative", context);
    if (len > PBW_TOKENIZER_MAX_TEXT)
        return pbw_err_set(err, "tokenize: text of %zu bytes is longer than the %u accepted", len,
                           PBW_TOKENIZER_MAX_TEXT);
    if (context > 0 && max < (size_t)context)
        return pbw_err_set(err, "tokenize: context %d needs room for %d ids, the buffer has %zu",
                           context, context, max);
    char *clean;
    size_t cn;
    if (pbw_text_clean(text ? text : "", len, &clean, &cn, err)) return -1;

    ivec out = {0};
    int rc = ivec_push(&out, tok->sot);
    pcre2_match_data *md = pcre2_match_data_create_from_pattern(tok->split, NULL);
    if (!md) rc = -1;
    size_t pos = 0;
    while (!rc && pos < cn) {
        int m = pcre2_match(tok->split, (PCRE2_SPTR)clean, cn, pos, PCRE2_NO_UTF_CHECK, md, NULL);
        if (m == PCRE2_ERROR_NOMATCH) break;
        if (m < 0) {
            char msg[128];
            pcre2_get_error_message(m, (PCRE2_UCHAR *)msg, sizeof msg);
            pcre2_match_data_free(md);
            free(clean);
            free(out.v);
            return pbw_err_set(err, "tokenize: splitting the text failed: %s", msg);
        }
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
        const char *word = clean + ov[0];
        size_t wl = ov[1] - ov[0];
        if (wl == strlen(SOT) && !memcmp(word, SOT, wl))
            rc = ivec_push(&out, tok->sot);
        else if (wl == strlen(EOT) && !memcmp(word, EOT, wl))
            rc = ivec_push(&out, tok->eot);
        else
            rc = bpe_cached(tok, word, wl, &out);
        pos = ov[1] > ov[0] ? ov[1] : ov[1] + 1;
    }
    if (!rc) rc = ivec_push(&out, tok->eot);
    pcre2_match_data_free(md);
    free(clean);
    if (rc) {
        free(out.v);
        return pbw_err_set(err, "tokenize: out of memory");
    }
    if (context == 0) {
        if (out.n > max) {
            if (n) *n = out.n;
            free(out.v);
            return pbw_err_set(err, "tokenize: the text needs %zu ids, the buffer has %zu",
                               out.n, max);
        }
        memcpy(ids, out.v, out.n * sizeof *ids);
        if (n) *n = out.n;
    } else {
        size_t c = (size_t)context, k = out.n < c ? out.n : c;
        memcpy(ids, out.v, k * sizeof *ids);
        if (out.n > c) ids[c - 1] = tok->eot;
        for (size_t i = k; i < c; i++) ids[i] = 0;
        if (n) *n = c;
    }
    free(out.v);
    return 0;
}

int pbw_tokenizer_decode(const pbw_tokenizer *tok, const int32_t *ids, size_t n, char **out,
                         pbw_err *err) {
    size_t cap = 64, len = 0;
    unsigned char *raw = malloc(cap);
    if (!raw) return pbw_err_set(err, "decode: out of memory");
    for (size_t k = 0; k < n; k++) {
        if (ids[k] == tok->eot) break;
        const char *t = ids[k] == tok->sot ? NULL : pbw_tokenizer_token(tok, ids[k]);
        if (!t) continue;
        size_t tl = strlen(t);
        if (len + tl + 1 > cap) {
            while (len + tl + 1 > cap) cap *= 2;
            unsigned char *r = realloc(raw, cap);
            if (!r) {
                free(raw);
                return pbw_err_set(err, "decode: out of memory");
            }
            raw = r;
        }
        /* stand-ins back to bytes; "</w>" to a space */
        for (size_t i = 0; i < tl;) {
            if (!strncmp(t + i, "</w>", 4)) {
                raw[len++] = ' ';
                i += 4;
                continue;
            }
            unsigned c = (unsigned char)t[i];
            if (c < 0x80) {
                raw[len++] = tok->byte_of_char[c];
                i++;
            } else if ((c & 0xE0) == 0xC0 && i + 1 < tl) {
                unsigned cp = ((c & 0x1F) << 6) | ((unsigned char)t[i + 1] & 0x3F);
                raw[len++] = cp < NELEM(tok->byte_of_char) ? tok->byte_of_char[cp] : '?';
                i += 2;
            } else {
                i++; /* not a stand-in: only possible in a foreign vocab.json */
            }
        }
    }
    /* bytes that are not UTF-8 become U+FFFD, one per byte */
    char *o = malloc(len * 3 + 1);
    if (!o) {
        free(raw);
        return pbw_err_set(err, "decode: out of memory");
    }
    size_t on = 0;
    for (size_t i = 0; i < len;) {
        unsigned c = raw[i];
        size_t k = c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
        if (k > len - i) k = len - i;
        if (pbw_utf8_check((const char *)raw + i, k, NULL) == 0) {
            memcpy(o + on, raw + i, k);
            on += k;
            i += k;
        } else {
            memcpy(o + on, "\xef\xbf\xbd", 3);
            on += 3;
            i++;
        }
    }
    o[on] = 0;
    free(raw);
    *out = o;
    return 0;
}
