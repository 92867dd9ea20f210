/* pbw_text_clean.h: the text cleaning that OpenAI's CLIP tokenizer applies before it splits a
 * prompt into words, reproduced in C without Python:
 *
 *     whitespace_clean(basic_clean(text)).lower()
 *     basic_clean(t)      = html.unescape(html.unescape(ftfy.fix_text(t))).strip()
 *     whitespace_clean(t) = regex.sub(r'\s+', ' ', t).strip()
 *
 *     char *clean; size_t n; pbw_err err;
 *     if (pbw_text_clean("Caf\xc3\x83\xc2\xa9 &amp; Cr\xc3\xa8me", 20, &clean, &n, &err)) {
 *         fprintf(stderr, "%s\n", err.msg);            // "text is not valid UTF-8 ..."
 *         return 1;
 *     }
 *     // clean = "café & crème" (UTF-8, NUL-terminated, n bytes); the caller frees it
 *     free(clean);
 *
 * ftfy.fix_text is reproduced step by step as ftfy 6 does it: HTML entities (unless the line
 * holds '<'), mojibake (UTF-8 read as Latin-1, Windows-125x, ISO-8859-2, MacRoman or CP437,
 * with ftfy's "badness" heuristic deciding when to try, its A0-byte and lossy-sequence repairs,
 * CESU-8, and embedded mojibake), C1 controls, Latin ligatures, full- and half-width forms,
 * curly quotes, line breaks, terminal escapes, control characters, then NFC; repeated per line
 * until nothing changes. Unicode data comes from utf8proc and PCRE2, whose Unicode versions
 * may differ from Python's for characters assigned in the newest versions.
 *
 * Input must be valid UTF-8 (Python text cannot hold anything else); NUL bytes are allowed
 * and, like other control characters, removed. Every function is reentrant: the few
 * compiled patterns are built once, under pthread_once.
 */
#ifndef PBW_TEXT_CLEAN_H
#define PBW_TEXT_CLEAN_H

#include <stddef.h>
#include <stdint.h>

#include "../core/pbw_common.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The whole CLIP cleaning (see above). *out is malloc'd, NUL-terminated UTF-8 of *out_len
 * bytes. Fails on invalid UTF-8 (naming the byte offset) or when out of memory. */
int pbw_text_clean(const char *text, size_t len, char **out, size_t *out_len, pbw_err *err);

/* Single steps, same conventions; exposed for tests and for callers that want one of them. */
int pbw_text_fix(const char *text, size_t len, char **out, size_t *out_len, pbw_err *err);
int pbw_text_html_unescape(const char *text, size_t len, char **out, size_t *out_len,
                           pbw_err *err);
int pbw_text_lower(const char *text, size_t len, char **out, size_t *out_len, pbw_err *err);

/* 0 when s[0..n) is valid UTF-8 as Python decodes it (no overlongs, surrogates or code points
 * above U+10FFFF); otherwise -1 with *bad_offset at the first bad byte. */
int pbw_utf8_check(const char *s, size_t n, size_t *bad_offset);

#ifdef __cplusplus
}
#endif
#endif
