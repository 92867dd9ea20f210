/* fuzz_tokenizer.c: libFuzzer target for the CLIP tokenizer (text cleaning, split, BPE), run
 * by make fuzz from the repository root. The vocabulary is OpenAI's file, loaded once
 * (PBW_FUZZ_VOCAB overrides its path).
 *
 * Besides crashes and sanitizer reports, it checks what must hold for any input: valid UTF-8
 * tokenizes and invalid UTF-8 is refused; ids lie in the vocabulary and are framed by the
 * start and end tokens; a second run (through the word cache) gives the same ids; a context
 * of 77 gives the untruncated ids cut or padded as CLIP does; decoding never fails. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "models/pbw_text_clean.h"
#include "models/pbw_tokenizer.h"

static pbw_tokenizer *tok;

#define FUZZ_CHECK(c)                                                                       \
    do {                                                                                    \
        if (!(c)) {                                                                         \
            fprintf(stderr, "fuzz_tokenizer: %s failed at line %d\n", #c, __LINE__);        \
            abort();                                                                        \
        }                                                                                   \
    } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!tok) {
        const char *path = getenv("PBW_FUZZ_VOCAB");
        pbw_err err;
        tok = pbw_tokenizer_load(path ? path : "../shared/data/clip/bpe_simple_vocab_16e6.txt.gz",
                                 &err);
        if (!tok) {
            fprintf(stderr, "fuzz_tokenizer: %s\n", err.msg);
            abort();
        }
    }
    if (size > PBW_TOKENIZER_MAX_TEXT) return 0;
    const char *text = (const char *)data;
    size_t cap = 3 * size + 8; /* cleaning can expand text a little; the call says if not */
    int32_t *ids = malloc(cap * sizeof *ids), *again = malloc(cap * sizeof *ids);
    int32_t ctx[PBW_CLIP_CONTEXT];
    size_t n = 0, n2 = 0, nc = 0;
    pbw_err err;
    int valid = pbw_utf8_check(text, size, NULL) == 0;
    int rc = pbw_tokenize(tok, text, size, ids, cap, 0, &n, &err);
    if (rc && valid && n > cap) { /* not enough room: retry with what it asked for */
        cap = n;
        ids = realloc(ids, cap * sizeof *ids);
        again = realloc(again, cap * sizeof *ids);
        rc = pbw_tokenize(tok, text, size, ids, cap, 0, &n, &err);
    }
    FUZZ_CHECK(valid == (rc == 0));
    if (rc == 0) {
        int32_t sot = pbw_tokenizer_start_id(tok), eot = pbw_tokenizer_end_id(tok);
        FUZZ_CHECK(n >= 2 && ids[0] == sot && ids[n - 1] == eot);
        for (size_t i = 0; i < n; i++)
            FUZZ_CHECK(ids[i] >= 0 && ids[i] < pbw_tokenizer_vocab_size(tok));
        FUZZ_CHECK(pbw_tokenize(tok, text, size, again, cap, 0, &n2, &err) == 0);
        FUZZ_CHECK(n2 == n && !memcmp(ids, again, n * sizeof *ids));
        FUZZ_CHECK(pbw_tokenize(tok, text, size, ctx, PBW_CLIP_CONTEXT, PBW_CLIP_CONTEXT, &nc,
                                &err) == 0);
        FUZZ_CHECK(nc == PBW_CLIP_CONTEXT);
        size_t keep = n < PBW_CLIP_CONTEXT ? n : PBW_CLIP_CONTEXT;
        FUZZ_CHECK(!memcmp(ctx, ids, (keep - 1) * sizeof *ids));
        FUZZ_CHECK(ctx[keep - 1] == eot);
        for (size_t i = keep; i < PBW_CLIP_CONTEXT; i++) FUZZ_CHECK(ctx[i] == 0);
        char *dec;
        FUZZ_CHECK(pbw_tokenizer_decode(tok, ids, n, &dec, &err) == 0);
        FUZZ_CHECK(pbw_utf8_check(dec, strlen(dec), NULL) == 0);
        free(dec);
    }
    free(ids);
    free(again);
    return 0;
}
