/* test_tokenizer.c: the CLIP tokenizer against ids made by OpenAI's own tokenizer
 * (../shared/data/clip/tokenizer_cases.jsonl) and by a port of it run with ftfy and `regex`
 * (tests/fixtures/tokenizer/extra_cases.jsonl, tools/make_tokenizer_cases.py); the Hugging Face
 * vocabulary format against the OpenAI one; `pbw tokenize`; hostile and unusual input. */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zlib.h>

#include "formats/pbw_json.h"
#include "models/pbw_text_clean.h"
#include "models/pbw_tokenizer.h"
#include "pbw_test.h"

#define OPENAI_VOCAB PBW_SHARED("data/clip/bpe_simple_vocab_16e6.txt.gz")
#define OPENAI_CASES PBW_SHARED("data/clip/tokenizer_cases.jsonl")
#define EXTRA_CASES "tests/fixtures/tokenizer/extra_cases.jsonl"

/* One case of a jsonl file. */
typedef struct {
    char *text;
    size_t len;
    char *clean; /* NULL when the file has none */
    size_t clean_len;
    int32_t *ids;
    size_t nids;
} tcase;

static void cases_free(tcase *c, size_t n) {
    for (size_t i = 0; i < n; i++) {
        free(c[i].text);
        free(c[i].clean);
        free(c[i].ids);
    }
    free(c);
}

static char *dup_mem(const char *s, size_t n) {
    char *p = malloc(n + 1);
    if (p) {
        memcpy(p, s, n);
        p[n] = 0;
    }
    return p;
}

/* Reads {"text", "ids"[, "clean"]} lines; returns the count, or 0 after a failed CHECK. */
static size_t cases_load(const char *path, tcase **out) {
    *out = NULL; /* callers free it whatever happens */
    FILE *f = fopen(path, "rb");
    CHECK_MSG(f != NULL, "cannot open %s", path);
    if (!f) return 0;
    size_t n = 0, cap = 0;
    tcase *c = NULL;
    char *line = NULL;
    size_t lcap = 0;
    ssize_t len;
    int lineno = 0;
    while ((len = getline(&line, &lcap, f)) > 0) {
        lineno++;
        pbw_err err;
        json_object *o = pbw_json_parse(line, (size_t)len, path, &err);
        CHECK_MSG(o != NULL, "%s", err.msg);
        if (!o) continue;
        json_object *t, *ids, *cl;
        if (!json_object_object_get_ex(o, "text", &t) || !json_object_object_get_ex(o, "ids", &ids)) {
            json_object_put(o);
            continue;
        }
        if (n == cap) {
            cap = cap ? cap * 2 : 64;
            c = realloc(c, cap * sizeof *c);
        }
        tcase *k = &c[n++];
        k->len = (size_t)json_object_get_string_len(t);
        k->text = dup_mem(json_object_get_string(t), k->len);
        k->clean = NULL;
        if (json_object_object_get_ex(o, "clean", &cl)) {
            k->clean_len = (size_t)json_object_get_string_len(cl);
            k->clean = dup_mem(json_object_get_string(cl), k->clean_len);
        }
        k->nids = json_object_array_length(ids);
        k->ids = malloc((k->nids ? k->nids : 1) * sizeof *k->ids);
        for (size_t i = 0; i < k->nids; i++)
            k->ids[i] = (int32_t)json_object_get_int(json_object_array_get_idx(ids, i));
        json_object_put(o);
    }
    free(line);
    fclose(f);
    *out = c;
    return n;
}

static void print_ids(const char *label, const int32_t *ids, size_t n) {
    fprintf(stderr, "    %s (%zu):", label, n);
    for (size_t i = 0; i < n && i < 40; i++) fprintf(stderr, " %d", ids[i]);
    fprintf(stderr, "%s\n", n > 40 ? " ..." : "");
}

/* Tokenizes every case (no context) and counts exact matches; prints the first mismatches. */
static size_t check_cases(pbw_tokenizer *tok, const tcase *c, size_t n, const char *what) {
    size_t ok = 0, shown = 0, cap = 1 << 16;
    int32_t *ids = malloc(cap * sizeof *ids);
    for (size_t i = 0; i < n; i++) {
        size_t k;
        pbw_err err;
        int rc = pbw_tokenize(tok, c[i].text, c[i].len, ids, cap, 0, &k, &err);
        int same = rc == 0 && k == c[i].nids && !memcmp(ids, c[i].ids, k * sizeof *ids);
        if (same) {
            ok++;
        } else if (shown++ < 5) {
            fprintf(stderr, "  %s case %zu differs: \"%.80s\"%s\n", what, i + 1, c[i].text,
                    rc ? err.msg : "");
            print_ids("expected", c[i].ids, c[i].nids);
            if (!rc) print_ids("got     ", ids, k);
        }
    }
    free(ids);
    return ok;
}

static pbw_tokenizer *load_openai(void) {
    pbw_err err;
    pbw_tokenizer *tok = pbw_tokenizer_load(OPENAI_VOCAB, &err);
    CHECK_MSG(tok != NULL, "%s", err.msg);
    return tok;
}

PBW_TEST(tokenizer_openai_cases) {
    pbw_tokenizer *tok = load_openai();
    if (!tok) return;
    CHECK(pbw_tokenizer_vocab_size(tok) == 49408);
    CHECK(pbw_tokenizer_start_id(tok) == 49406);
    CHECK(pbw_tokenizer_end_id(tok) == 49407);
    CHECK(pbw_tokenizer_token(tok, 320) && !strcmp(pbw_tokenizer_token(tok, 320), "a</w>"));
    tcase *c;
    size_t n = cases_load(OPENAI_CASES, &c);
    CHECK(n >= 30);
    size_t ok = check_cases(tok, c, n, "openai");
    CHECK_MSG(ok == n, "%zu of %zu OpenAI cases match", ok, n);
    printf("  %zu of %zu cases of tokenizer_cases.jsonl match\n", ok, n);
    cases_free(c, n);
    pbw_tokenizer_free(tok);
}

/* The extra cases also record the cleaned text, so a cleaning bug shows as such. */
PBW_TEST(tokenizer_extra_cases) {
    pbw_tokenizer *tok = load_openai();
    if (!tok) return;
    tcase *c;
    size_t n = cases_load(EXTRA_CASES, &c);
    CHECK(n >= 600);
    size_t clean_ok = 0, shown = 0;
    for (size_t i = 0; i < n; i++) {
        char *s;
        size_t sl;
        pbw_err err;
        if (!c[i].clean) continue;
        if (pbw_text_clean(c[i].text, c[i].len, &s, &sl, &err) != 0) {
            CHECK_MSG(0, "case %zu: %s", i + 1, err.msg);
            continue;
        }
        if (sl == c[i].clean_len && !memcmp(s, c[i].clean, sl))
            clean_ok++;
        else if (shown++ < 5)
            fprintf(stderr, "  case %zu cleans to \"%s\", expected \"%s\"\n", i + 1, s, c[i].clean);
        free(s);
    }
    CHECK_MSG(clean_ok == n, "%zu of %zu cleaned texts match", clean_ok, n);
    size_t ok = check_cases(tok, c, n, "extra");
    CHECK_MSG(ok == n, "%zu of %zu extra cases match", ok, n);
    printf("  %zu of %zu extra cases match (cleaning: %zu)\n", ok, n, clean_ok);
    cases_free(c, n);
    pbw_tokenizer_free(tok);
}

/* Writes a Hugging Face directory (vocab.json, merges.txt) for OpenAI's vocabulary: the ids
 * from the loaded tokenizer, the merges straight from the .gz file. */
static int write_hf_dir(pbw_tokenizer *tok, const char *dir) {
    char path[512];
    json_object *v = json_object_new_object();
    for (int32_t id = 0; id < pbw_tokenizer_vocab_size(tok); id++)
        json_object_object_add(v, pbw_tokenizer_token(tok, id), json_object_new_int(id));
    snprintf(path, sizeof path, "%s/vocab.json", dir);
    int rc = json_object_to_file_ext(path, v, JSON_C_TO_STRING_PLAIN);
    json_object_put(v);
    if (rc) return -1;

    gzFile gz = gzopen(OPENAI_VOCAB, "rb");
    if (!gz) return -1;
    snprintf(path, sizeof path, "%s/merges.txt", dir);
    FILE *f = fopen(path, "wb");
    if (!f) {
        gzclose(gz);
        return -1;
    }
    char line[1024];
    int lines = 0;
    while (lines <= 48894 && gzgets(gz, line, sizeof line)) {
        fputs(line, f);
        lines++;
    }
    gzclose(gz);
    return fclose(f) || lines != 48895 ? -1 : 0;
}

PBW_TEST(tokenizer_hf_dir_matches_openai) {
    pbw_tokenizer *tok = load_openai();
    if (!tok) return;
    char dir[] = "/tmp/pbw_test_tok_XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    CHECK(write_hf_dir(tok, dir) == 0);
    pbw_err err;
    pbw_tokenizer *hf = pbw_tokenizer_load(dir, &err);
    CHECK_MSG(hf != NULL, "%s", err.msg);
    char vpath[600];
    snprintf(vpath, sizeof vpath, "%s/vocab.json", dir);
    pbw_tokenizer *hf2 = pbw_tokenizer_load(vpath, &err); /* a file of the directory */
    CHECK_MSG(hf2 != NULL, "%s", err.msg);
    if (hf && hf2) {
        CHECK(pbw_tokenizer_vocab_size(hf) == 49408);
        CHECK(pbw_tokenizer_start_id(hf) == 49406 && pbw_tokenizer_end_id(hf) == 49407);
        const char *files[] = {OPENAI_CASES, EXTRA_CASES};
        for (int f = 0; f < 2; f++) {
            tcase *c;
            size_t n = cases_load(files[f], &c);
            size_t ok = check_cases(hf, c, n, "hf");
            size_t ok2 = check_cases(hf2, c, n, "hf via vocab.json");
            CHECK_MSG(ok == n && ok2 == n, "%s: %zu and %zu of %zu match", files[f], ok, ok2, n);
            cases_free(c, n);
        }
    }
    pbw_tokenizer_free(hf);
    pbw_tokenizer_free(hf2);

    /* a directory without merges.txt: the error names the file */
    char mpath[600];
    snprintf(mpath, sizeof mpath, "%s/merges.txt", dir);
    unlink(mpath);
    hf = pbw_tokenizer_load(dir, &err);
    CHECK(hf == NULL);
    CHECK_MSG(strstr(err.msg, "merges.txt") != NULL, "%s", err.msg);
    unlink(vpath);
    hf = pbw_tokenizer_load(dir, &err);
    CHECK(hf == NULL);
    CHECK_MSG(strstr(err.msg, "vocab.json") != NULL, "%s", err.msg);
    rmdir(dir);
    pbw_tokenizer_free(tok);
}

PBW_TEST(tokenizer_context) {
    pbw_tokenizer *tok = load_openai();
    if (!tok) return;
    int32_t ids[200];
    size_t n;
    pbw_err err;
    /* short: padded with zeros to the context */
    CHECK(pbw_tokenize(tok, "happy dog", 9, ids, 200, 77, &n, &err) == 0);
    CHECK(n == 77);
    CHECK(ids[0] == 49406 && ids[1] == 900 && ids[2] == 1929 && ids[3] == 49407);
    int zeros = 1;
    for (int i = 4; i < 77; i++) zeros &= ids[i] == 0;
    CHECK(zeros);
    /* long: cut so that the last kept id is the end token */
    char text[2000] = "";
    for (int i = 0; i < 100; i++) strcat(text, "dog ");
    CHECK(pbw_tokenize(tok, text, strlen(text), ids, 200, 0, &n, &err) == 0);
    CHECK(n == 102);
    CHECK(pbw_tokenize(tok, text, strlen(text), ids, 200, 77, &n, &err) == 0);
    CHECK(n == 77 && ids[0] == 49406 && ids[75] == 1929 && ids[76] == 49407);
    /* exactly full: nothing cut */
    CHECK(pbw_tokenize(tok, text, 75 * 4, ids, 200, 77, &n, &err) == 0);
    CHECK(ids[75] == 1929 && ids[76] == 49407);
    /* context 1 and 2, as clip.tokenize(..., truncate=True) would give */
    CHECK(pbw_tokenize(tok, "happy dog", 9, ids, 200, 2, &n, &err) == 0);
    CHECK(n == 2 && ids[0] == 49406 && ids[1] == 49407);
    CHECK(pbw_tokenize(tok, "happy dog", 9, ids, 200, 1, &n, &err) == 0);
    CHECK(n == 1 && ids[0] == 49407);
    /* buffer too small: a clear error, and the count needed when there is no context */
    CHECK(pbw_tokenize(tok, "happy dog", 9, ids, 10, 77, &n, &err) == -1);
    CHECK_MSG(strstr(err.msg, "77") != NULL, "%s", err.msg);
    CHECK(pbw_tokenize(tok, text, strlen(text), ids, 10, 0, &n, &err) == -1);
    CHECK(n == 102);
    CHECK(pbw_tokenize(tok, "x", 1, ids, 200, -1, &n, &err) == -1);
    pbw_tokenizer_free(tok);
}

static int ids_equal(pbw_tokenizer *tok, const char *a, size_t al, const char *b, size_t bl) {
    int32_t x[256], y[256];
    size_t nx, ny;
    pbw_err err;
    if (pbw_tokenize(tok, a, al, x, 256, 0, &nx, &err) || pbw_tokenize(tok, b, bl, y, 256, 0, &ny, &err))
        return 0;
    return nx == ny && !memcmp(x, y, nx * sizeof *x);
}

PBW_TEST(tokenizer_unusual_input) {
    pbw_tokenizer *tok = load_openai();
    if (!tok) return;
    int32_t *ids = malloc(40000 * sizeof *ids);
    size_t n;
    pbw_err err;
    /* empty, NULL with length 0, whitespace only: just the start and end tokens */
    CHECK(pbw_tokenize(tok, "", 0, ids, 10, 0, &n, &err) == 0 && n == 2 && ids[0] == 49406 &&
          ids[1] == 49407);
    CHECK(pbw_tokenize(tok, NULL, 0, ids, 10, 0, &n, &err) == 0 && n == 2);
    CHECK(pbw_tokenize(tok, " \t\n\r\v\f\xc2\xa0\xe3\x80\x80 ", 12, ids, 10, 0, &n, &err) == 0 &&
          n == 2);
    /* invalid UTF-8: an error that says so and where */
    CHECK(pbw_tokenize(tok, "ab\xff", 3, ids, 10, 0, &n, &err) == -1);
    CHECK_MSG(strstr(err.msg, "UTF-8") && strstr(err.msg, "offset 2"), "%s", err.msg);
    const char *bad[] = {"\xc0\x80", "\xed\xa0\x80", "\xf4\x90\x80\x80", "\xe2\x82", "\x80"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        CHECK(pbw_tokenize(tok, bad[i], strlen(bad[i]), ids, 10, 0, &n, &err) == -1);
    /* NUL bytes are control characters: removed like the reference's ftfy does */
    CHECK(ids_equal(tok, "a\0b c\0", 6, "ab c", 4));
    /* emoji, CJK, a combining mark with nothing to combine with */
    CHECK(pbw_tokenize(tok, "\xf0\x9f\x90\xb6 \xe6\x9d\xb1\xe4\xba\xac \xcc\x81", 14, ids, 40, 0,
                       &n, &err) == 0);
    CHECK(n > 4 && ids[n - 1] == 49407);
    /* 10,000 characters: one long word and many short ones */
    char *big = malloc(40001);
    memset(big, 'a', 10000);
    CHECK(pbw_tokenize(tok, big, 10000, ids, 40000, 0, &n, &err) == 0);
    CHECK(n > 2 && n < 10002 && ids[n - 1] == 49407);
    for (int i = 0; i < 10000; i++) big[i] = i % 7 == 6 ? ' ' : "photo"[i % 5];
    CHECK(pbw_tokenize(tok, big, 10000, ids, 40000, 77, &n, &err) == 0);
    CHECK(n == 77 && ids[76] == 49407);
    for (int i = 0; i < 10000; i++) memcpy(big + 4 * i, "\xf0\x9f\x98\x80", 4); /* 10,000 emoji */
    CHECK(pbw_tokenize(tok, big, 40000, ids, 40000, 0, &n, &err) == 0);
    free(big);
    /* longer than the limit: refused, not truncated */
    char *huge = malloc(PBW_TOKENIZER_MAX_TEXT + 1);
    memset(huge, 'x', PBW_TOKENIZER_MAX_TEXT + 1);
    CHECK(pbw_tokenize(tok, huge, PBW_TOKENIZER_MAX_TEXT + 1, ids, 10, 0, &n, &err) == -1);
    CHECK_MSG(strstr(err.msg, "longer") != NULL, "%s", err.msg);
    free(huge);
    /* typed special tokens are those tokens */
    CHECK(pbw_tokenize(tok, "<|endoftext|>", 13, ids, 10, 0, &n, &err) == 0);
    CHECK(n == 3 && ids[1] == 49407);
    free(ids);
    pbw_tokenizer_free(tok);
}

/* Steps of the cleaning, with what Python gives. */
static void check_step(int (*fn)(const char *, size_t, char **, size_t *, pbw_err *),
                       const char *in, const char *want) {
    char *out;
    size_t n;
    pbw_err err;
    if (fn(in, strlen(in), &out, &n, &err) != 0) {
        CHECK_MSG(0, "\"%s\": %s", in, err.msg);
        return;
    }
    CHECK_MSG(n == strlen(want) && !memcmp(out, want, n), "\"%s\" -> \"%s\", expected \"%s\"", in,
              out, want);
    free(out);
}

PBW_TEST(tokenizer_text_steps) {
    /* html.unescape */
    check_step(pbw_text_html_unescape, "&amp;amp; &lt;&gt; &quot;&#39; &nbsp;", "&amp; <> \"' \xc2\xa0");
    check_step(pbw_text_html_unescape, "&ampfoo &amp &notit; &notin; &copy2020", "&foo & \xc2\xac" "it; \xe2\x88\x89 \xc2\xa9" "2020");
    check_step(pbw_text_html_unescape, "&#65;&#x42;&#X43 &#0; &#1; &#128; &#x110000; &#xd800;",
               "ABC \xef\xbf\xbd  \xe2\x82\xac \xef\xbf\xbd \xef\xbf\xbd");
    check_step(pbw_text_html_unescape, "&unknown; & &; &#; &#x;", "&unknown; & &; &#; &#x;");
    /* str.lower */
    check_step(pbw_text_lower, "\xce\x91\xce\xa3 \xce\xa3\xce\x91\xce\xa3.", "\xce\xb1\xcf\x82 \xcf\x83\xce\xb1\xcf\x82.");
    check_step(pbw_text_lower, "\xc4\xb0I", "i\xcc\x87i");
    /* ftfy.fix_text */
    check_step(pbw_text_fix, "caf\xc3\x83\xc2\xa9 au lait", "caf\xc3\xa9 au lait");
    check_step(pbw_text_fix, "\xc3\x83\xc6\x92\xc3\x82\xc2\xa9", "\xc3\xa9");
    check_step(pbw_text_fix, "\xe2\x80\x9c" "curly\xe2\x80\x9d \xe2\x80\x98x\xe2\x80\x99", "\"curly\" 'x'");
    check_step(pbw_text_fix, "\xef\xac\x81ne \xef\xbc\xa1\xef\xbc\xa2\xe3\x80\x80\xef\xbd\xb6", "fine AB \xe3\x82\xab");
    check_step(pbw_text_fix, "a\r\nb\rc\x1b[31md\x01\xef\xbb\xbf", "a\nb\ncd");
    check_step(pbw_text_fix, "e\xcc\x81", "\xc3\xa9");
    check_step(pbw_text_fix, "P&EACUTE;REZ &lt;", "P\xc3\x89REZ <");
    check_step(pbw_text_fix, "<b>&eacute;</b>", "<b>&eacute;</b>");
    /* the whole cleaning */
    check_step(pbw_text_clean, "  Rock &amp;amp; ROLL\t\n ", "rock & roll");
}

PBW_TEST(tokenizer_decode) {
    pbw_tokenizer *tok = load_openai();
    if (!tok) return;
    const char *text = "a photo of a caf\xc3\xa9, isn't it? \xf0\x9f\x90\xb6";
    int32_t ids[64];
    size_t n;
    pbw_err err;
    CHECK(pbw_tokenize(tok, text, strlen(text), ids, 64, 0, &n, &err) == 0);
    char *out;
    CHECK(pbw_tokenizer_decode(tok, ids, n, &out, &err) == 0);
    CHECK_MSG(!strcmp(out, "a photo of a caf\xc3\xa9 , isn 't it ? \xf0\x9f\x90\xb6 "), "%s", out);
    free(out);
    pbw_tokenizer_free(tok);
}

/* Several threads share one tokenizer (and its cache) and must agree with one thread. */
typedef struct {
    pbw_tokenizer *tok;
    const tcase *c;
    size_t n;
    size_t ok;
} thread_job;

static void *thread_run(void *arg) {
    thread_job *j = arg;
    for (int rep = 0; rep < 3; rep++) {
        int32_t ids[4096];
        for (size_t i = 0; i < j->n; i++) {
            size_t k;
            pbw_err err;
            if (pbw_tokenize(j->tok, j->c[i].text, j->c[i].len, ids, 4096, 0, &k, &err) == 0 &&
                k == j->c[i].nids && !memcmp(ids, j->c[i].ids, k * sizeof *ids))
                j->ok++;
        }
    }
    return NULL;
}

PBW_TEST(tokenizer_threads) {
    pbw_tokenizer *tok = load_openai();
    if (!tok) return;
    tcase *c;
    size_t n = cases_load(EXTRA_CASES, &c);
    pthread_t th[4];
    thread_job jobs[4];
    for (int t = 0; t < 4; t++) {
        jobs[t] = (thread_job){tok, c, n, 0};
        CHECK(pthread_create(&th[t], NULL, thread_run, &jobs[t]) == 0);
    }
    for (int t = 0; t < 4; t++) {
        pthread_join(th[t], NULL);
        CHECK_MSG(jobs[t].ok == 3 * n, "thread %d: %zu of %zu", t, jobs[t].ok, 3 * n);
    }
    cases_free(c, n);
    pbw_tokenizer_free(tok);
}

PBW_TEST(tokenizer_load_errors) {
    pbw_err err;
    CHECK(pbw_tokenizer_load("/nonexistent/vocab.txt.gz", &err) == NULL);
    CHECK_MSG(strstr(err.msg, "/nonexistent") != NULL, "%s", err.msg);
    CHECK(pbw_tokenizer_load("Makefile", &err) == NULL);
    CHECK_MSG(strstr(err.msg, "Makefile") && strstr(err.msg, "not a vocabulary"), "%s", err.msg);
    /* a .gz that is not gzip, and one with a malformed merge line */
    char path[] = "/tmp/pbw_test_vocab_XXXXXX.gz";
    int fd = mkstemps(path, 3);
    CHECK(fd >= 0);
    CHECK(write(fd, "not gzip at all\nx y z\n", 22) == 22);
    close(fd);
    pbw_tokenizer *tok = pbw_tokenizer_load(path, &err);
    /* zlib reads a non-gzip file as plain text: then it is the merge lines that fail */
    CHECK(tok == NULL);
    CHECK_MSG(strstr(err.msg, path) && strstr(err.msg, "line 2"), "%s", err.msg);
    gzFile gz = gzopen(path, "wb");
    gzputs(gz, "#version: 0.2\nh e\nt h e\n");
    gzclose(gz);
    tok = pbw_tokenizer_load(path, &err);
    CHECK(tok == NULL);
    CHECK_MSG(strstr(err.msg, "line 3") && strstr(err.msg, "two symbols"), "%s", err.msg);
    /* a tiny valid one: two merges */
    gz = gzopen(path, "wb");
    gzputs(gz, "#version: 0.2\nh e\nhe y</w>\n");
    gzclose(gz);
    tok = pbw_tokenizer_load(path, &err);
    CHECK_MSG(tok != NULL, "%s", err.msg);
    if (tok) {
        int32_t ids[8];
        size_t n;
        CHECK(pbw_tokenize(tok, "hey", 3, ids, 8, 0, &n, &err) == 0);
        CHECK(n == 3 && ids[0] == 514 && ids[1] == 513 && ids[2] == 515);
        CHECK(pbw_tokenizer_vocab_size(tok) == 516);
        pbw_tokenizer_free(tok);
    }
    unlink(path);
}

/* `pbw tokenize` itself: the program next to this test binary (build/ or build-asan/). */
static int program_path(char *buf, size_t cap) {
    ssize_t k = readlink("/proc/self/exe", buf, cap - 8);
    if (k <= 0) return -1;
    buf[k] = 0;
    char *slash = strrchr(buf, '/');
    if (!slash) return -1;
    strcpy(slash + 1, "pbw");
    return access(buf, X_OK);
}

/* Runs argv, capturing stdout (and stderr into `errout`); returns the exit status. */
static int run_program(char *const argv[], char *out, size_t cap, char *errout, size_t ecap) {
    int po[2], pe[2];
    if (pipe(po) || pipe(pe)) return -1;
    pid_t pid = fork();
    if (pid == 0) {
        dup2(po[1], 1);
        dup2(pe[1], 2);
        close(po[0]);
        close(pe[0]);
        execv(argv[0], argv);
        _exit(127);
    }
    close(po[1]);
    close(pe[1]);
    size_t n = 0, m = 0;
    ssize_t k;
    while ((k = read(po[0], out + n, cap - 1 - n)) > 0) n += (size_t)k;
    while ((k = read(pe[0], errout + m, ecap - 1 - m)) > 0) m += (size_t)k;
    out[n] = 0;
    errout[m] = 0;
    close(po[0]);
    close(pe[0]);
    int st;
    waitpid(pid, &st, 0);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void format_ids(const int32_t *ids, size_t n, char *buf) {
    size_t o = (size_t)sprintf(buf, "[");
    for (size_t i = 0; i < n; i++) o += (size_t)sprintf(buf + o, i ? ", %d" : "%d", ids[i]);
    sprintf(buf + o, "]\n");
}

PBW_TEST(tokenizer_cli) {
    char prog[1024];
    if (program_path(prog, sizeof prog) != 0) {
        CHECK_MSG(0, "no pbw program beside the test binary (%s): build it first", prog);
        return;
    }
    tcase *c;
    size_t n = cases_load(OPENAI_CASES, &c);
    static char out[1 << 16], errout[4096], want[1 << 16];
    /* a few cases at once, untruncated: one array per text, in order */
    size_t pick[] = {0, 5, 12, 16, 18};
    char *argv[16] = {prog, "tokenize", "--vocab", OPENAI_VOCAB, "--"};
    int a = 5;
    size_t w = 0;
    for (size_t i = 0; i < sizeof pick / sizeof pick[0] && pick[i] < n; i++) {
        argv[a++] = c[pick[i]].text;
        format_ids(c[pick[i]].ids, c[pick[i]].nids, want + w);
        w += strlen(want + w);
    }
    argv[a] = NULL;
    int st = run_program(argv, out, sizeof out, errout, sizeof errout);
    CHECK_MSG(st == 0, "exit %d: %s", st, errout);
    CHECK_MSG(!strcmp(out, want), "got:\n%s\nexpected:\n%s", out, want);
    /* --context 77 pads with zeros */
    char *argv2[] = {prog, "tokenize", "--context", "77", "--vocab", OPENAI_VOCAB, "happy dog", NULL};
    st = run_program(argv2, out, sizeof out, errout, sizeof errout);
    int32_t ids[77] = {49406, 900, 1929, 49407};
    format_ids(ids, 77, want);
    CHECK_MSG(st == 0 && !strcmp(out, want), "exit %d: %s%s", st, out, errout);
    /* errors name the bad argument or file and exit nonzero */
    char *argv3[] = {prog, "tokenize", "--vocab", "/nonexistent.gz", "x", NULL};
    st = run_program(argv3, out, sizeof out, errout, sizeof errout);
    CHECK(st != 0 && strstr(errout, "/nonexistent.gz") && !out[0]);
    char *argv4[] = {prog, "tokenize", "--vocab", OPENAI_VOCAB, "--context", "abc", "x", NULL};
    st = run_program(argv4, out, sizeof out, errout, sizeof errout);
    CHECK(st != 0 && strstr(errout, "--context"));
    char *argv5[] = {prog, "tokenize", "x", NULL};
    st = run_program(argv5, out, sizeof out, errout, sizeof errout);
    CHECK(st != 0 && strstr(errout, "--vocab"));
    char *argv6[] = {prog, "tokenize", "--vocab", OPENAI_VOCAB, "ok", "bad\xff", NULL};
    st = run_program(argv6, out, sizeof out, errout, sizeof errout);
    CHECK(st != 0 && strstr(errout, "text 2") && strstr(errout, "UTF-8"));
    char *argv7[] = {prog, "tokenize", "--help", NULL};
    st = run_program(argv7, out, sizeof out, errout, sizeof errout);
    CHECK(st == 0 && strstr(out, "--vocab") && strstr(out, "--context"));
    cases_free(c, n);
}
