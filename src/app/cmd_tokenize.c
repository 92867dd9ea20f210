/* cmd_tokenize.c: `pbw tokenize --vocab PATH [--context N] TEXT...` prints CLIP token ids,
 * one JSON array per text. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "app/pbw_app.h"
#include "models/pbw_tokenizer.h"

static void help(FILE *f) {
    fprintf(f,
            "usage: pbw tokenize --vocab PATH [--context N] [--] TEXT...\n\n"
            "Prints the CLIP token ids of each TEXT as one JSON array per line, with the start\n"
            "(49406) and end (49407) tokens, exactly as OpenAI's CLIP tokenizer makes them\n"
            "(same text cleaning: ftfy fixes, HTML entities, whitespace, lower case).\n\n"
            "  --vocab PATH   OpenAI's bpe_simple_vocab_16e6.txt.gz, or a Hugging Face model\n"
            "                 directory holding vocab.json and merges.txt\n"
            "  --context N    give exactly N ids like clip.tokenize(..., truncate=True): cut\n"
            "                 to N ids ending with the end token, or padded with zeros\n"
            "                 (CLIP uses 77); without it the sequence is not cut or padded\n"
            "  --             what follows is text, even if it starts with '-'\n");
}

int cmd_tokenize(int argc, char **argv) {
    if (app_wants_help(argc, argv)) {
        help(stdout);
        return 0;
    }
    const char *vocab = NULL;
    long context = 0;
    int first_text = argc, ntexts = 0;
    char **texts = calloc((size_t)argc, sizeof *texts);
    if (!texts) {
        fprintf(stderr, "pbw tokenize: out of memory\n");
        return 1;
    }
    int only_text = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!only_text && !strcmp(a, "--")) {
            only_text = 1;
        } else if (!only_text && !strcmp(a, "--vocab")) {
            if (!(vocab = app_value("tokenize", argc, argv, &i))) goto usage;
        } else if (!only_text && !strcmp(a, "--context")) {
            const char *v = app_value("tokenize", argc, argv, &i);
            if (!v || app_parse_int("tokenize", "--context", v, 1, 1 << 20, &context)) goto usage;
        } else if (!only_text && a[0] == '-' && a[1]) {
            fprintf(stderr, "pbw tokenize: unknown option '%s' (use -- before text that starts "
                            "with '-')\n", a);
            goto usage;
        } else {
            if (first_text == argc) first_text = i;
            texts[ntexts++] = argv[i];
        }
    }
    if (!vocab) {
        fprintf(stderr, "pbw tokenize: --vocab PATH is required\n");
        goto usage;
    }
    if (!ntexts) {
        fprintf(stderr, "pbw tokenize: no TEXT given\n");
        goto usage;
    }

    pbw_err err;
    pbw_tokenizer *tok = pbw_tokenizer_load(vocab, &err);
    if (!tok) {
        fprintf(stderr, "pbw tokenize: --vocab: %s\n", err.msg);
        free(texts);
        return 1;
    }
    int status = 0;
    size_t cap = 0;
    int32_t *ids = NULL;
    for (int t = 0; t < ntexts && !status; t++) {
        /* usually one id per byte is enough; cleaning can expand text, and then
         * pbw_tokenize says how many it needs */
        size_t len = strlen(texts[t]), need = context ? (size_t)context : len + 2, n = 0;
        int rc = -1;
        for (int attempt = 0; attempt < 2 && rc; attempt++) {
            if (need > cap) {
                int32_t *p = realloc(ids, need * sizeof *ids);
                if (!p) break;
                ids = p;
                cap = need;
            }
            rc = pbw_tokenize(tok, texts[t], len, ids, cap, (int)context, &n, &err);
            if (rc && (context || n <= cap)) break; /* not a question of room */
            need = n;
        }
        if (rc) {
            fprintf(stderr, "pbw tokenize: text %d ('%.40s%s'): %s\n", t + 1, texts[t],
                    len > 40 ? "..." : "", cap < need ? "out of memory" : err.msg);
            status = 1;
            break;
        }
        putchar('[');
        for (size_t i = 0; i < n; i++) printf(i ? ", %d" : "%d", ids[i]);
        printf("]\n");
    }
    if (fflush(stdout) != 0 || ferror(stdout)) {
        fprintf(stderr, "pbw tokenize: writing the output failed\n");
        status = 1;
    }
    free(ids);
    free(texts);
    pbw_tokenizer_free(tok);
    return status;
usage:
    free(texts);
    fprintf(stderr, "(pbw tokenize --help shows the options)\n");
    return 2;
}
