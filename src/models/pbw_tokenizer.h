/* pbw_tokenizer.h: CLIP's byte-level BPE tokenizer, giving the same ids as OpenAI's
 * SimpleTokenizer (and Hugging Face's CLIPTokenizer) for every text.
 *
 *     pbw_err err;
 *     pbw_tokenizer *tok = pbw_tokenizer_load("bpe_simple_vocab_16e6.txt.gz", &err);
 *     if (!tok) { fprintf(stderr, "%s\n", err.msg); return 1; }   // names the file and line
 *     int32_t ids[77];
 *     size_t n;
 *     if (pbw_tokenize(tok, "a photo of a cat", 16, ids, 77, 77, &n, &err) == 0) {
 *         // ids = 49406 320 1125 539 320 2368 49407 0 0 ... (n = 77)
 *     }
 *     pbw_tokenizer_free(tok);
 *
 * The vocabulary is either OpenAI's `bpe_simple_vocab_16e6.txt.gz` (any path ending in .gz:
 * its merges, read as OpenAI does, define the whole vocabulary) or a Hugging Face model
 * directory holding `vocab.json` and `merges.txt` (a path to either file also works).
 *
 * Text goes through CLIP's cleaning first (pbw_text_clean.h: ftfy, HTML entities, whitespace,
 * lower case), then CLIP's split pattern, then BPE with `</w>` marking word ends. The
 * sequence is wrapped in the start token (49406) and the end token (49407). Typed
 * "<|startoftext|>" and "<|endoftext|>" become those tokens, as in the reference.
 *
 * Fidelity: every case of ../shared/data/clip/tokenizer_cases.jsonl (ids from OpenAI's code)
 * and of tests/fixtures/tokenizer/extra_cases.jsonl (mojibake, entities, sigma, controls...)
 * matches exactly. The one known way to differ: characters assigned in Unicode versions newer
 * than the tables of the installed PCRE2 (10.42: Unicode 14) and utf8proc (2.8: Unicode 15)
 * are not letters or numbers to the split pattern here, while Python's `regex` may know them.
 *
 * Ownership and threads: the tokenizer owns everything it loaded; pbw_tokenizer_free releases
 * it (NULL is fine). One tokenizer may serve several threads at once: its only mutable part,
 * a cache of words already split, is guarded by a mutex.
 */
#ifndef PBW_TOKENIZER_H
#define PBW_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "../core/pbw_common.h"

#ifdef __cplusplus
extern "C" {
#endif

#define PBW_CLIP_CONTEXT 77
/* Longest text accepted, in bytes; longer text is refused with an error. */
#define PBW_TOKENIZER_MAX_TEXT (1u << 20)

typedef struct pbw_tokenizer pbw_tokenizer;

/* Loads a vocabulary (see above). Returns NULL with err naming the file on failure. */
pbw_tokenizer *pbw_tokenizer_load(const char *path, pbw_err *err);
void pbw_tokenizer_free(pbw_tokenizer *tok);

/* Tokenizes len bytes of UTF-8 text (NUL bytes allowed; text may be NULL when len is 0).
 *
 * context == 0: writes the whole sequence, start and end tokens included, to ids[0..*n);
 *   if it needs more than max ids, fails with *n set to the count it needs.
 * context > 0: writes exactly `context` ids as CLIP's tokenize(..., truncate=True) does:
 *   a longer sequence is cut to `context` ids whose last is the end token; a shorter one is
 *   padded with zeros. Needs max >= context; *n = context.
 *
 * Fails (returns -1, err set) on invalid UTF-8, text longer than PBW_TOKENIZER_MAX_TEXT, a
 * negative context or a too-small buffer. */
int pbw_tokenize(pbw_tokenizer *tok, const char *text, size_t len, int32_t *ids, size_t max,
                 int context, size_t *n, pbw_err *err);

/* Number of ids (one more than the largest id) and the special ids. */
int32_t pbw_tokenizer_vocab_size(const pbw_tokenizer *tok);
int32_t pbw_tokenizer_start_id(const pbw_tokenizer *tok);
int32_t pbw_tokenizer_end_id(const pbw_tokenizer *tok);

/* The vocabulary entry of an id as stored (bytes shown as CLIP's printable stand-ins, word
 * ends as "</w>"), or NULL for an id that has none. Lives as long as tok. */
const char *pbw_tokenizer_token(const pbw_tokenizer *tok, int32_t id);

/* Writes the text that ids stand for (CLIP's decode: stand-ins back to bytes, "</w>" to a
 * space; start and end tokens and unknown ids are skipped) into a malloc'd, NUL-terminated
 * *out. Bytes that do not form UTF-8 are kept as they are. */
int pbw_tokenizer_decode(const pbw_tokenizer *tok, const int32_t *ids, size_t n, char **out,
                         pbw_err *err);

#ifdef __cplusplus
}
#endif
#endif
