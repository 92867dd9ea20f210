/* pbw_text_clean.c: CLIP's prompt cleaning (ftfy.fix_text, html.unescape, whitespace, lower),
 * matching the Python reference's output character for character. See pbw_text_clean.h.
 *
 * Text is kept as UTF-8 throughout, because PCRE2 matches UTF-8; every intermediate string is
 * valid UTF-8 by construction (the input is checked once), so matches skip PCRE2's check.
 * Python's "len" counts code points, so comparisons of lengths count code points too.
 *
 * This file is not a general ftfy: it reproduces what fix_text does with its default
 * configuration, which is all CLIP uses. The character classes of ftfy's heuristics are
 * written below as code point ranges, named after the classes they mirror. */
#include "models/pbw_text_clean.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <utf8proc.h>

typedef struct {
    const char *name;
    const char *value;
} text_entity;

#include "models/pbw_text_tables.inc"

#define NELEM(a) (sizeof(a) / sizeof((a)[0]))

/* ---------------------------------------------------------------------------------------------
 * Growable strings. A failed allocation sets `oom` and turns later writes into no-ops, so the
 * steps below check once at their end. */

typedef struct {
    char *p;
    size_t n, cap;
    int oom;
} sbuf;

static void sb_reserve(sbuf *b, size_t extra) {
    if (b->oom) return;
    if (b->n + extra + 1 <= b->cap) return;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < b->n + extra + 1) {
        if (cap > SIZE_MAX / 2) {
            b->oom = 1;
            return;
        }
        cap *= 2;
    }
    char *p = realloc(b->p, cap);
    if (!p) {
        b->oom = 1;
        return;
    }
    b->p = p;
    b->cap = cap;
}

static void sb_put(sbuf *b, const char *s, size_t n) {
    sb_reserve(b, n);
    if (b->oom) return;
    if (n) memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
}

static void sb_putc(sbuf *b, char c) { sb_put(b, &c, 1); }

static void sb_put_cp(sbuf *b, uint32_t c) {
    char u[4];
    size_t k;
    if (c < 0x80) {
        u[0] = (char)c;
        k = 1;
    } else if (c < 0x800) {
        u[0] = (char)(0xC0 | (c >> 6));
        u[1] = (char)(0x80 | (c & 0x3F));
        k = 2;
    } else if (c < 0x10000) {
        u[0] = (char)(0xE0 | (c >> 12));
        u[1] = (char)(0x80 | ((c >> 6) & 0x3F));
        u[2] = (char)(0x80 | (c & 0x3F));
        k = 3;
    } else {
        u[0] = (char)(0xF0 | (c >> 18));
        u[1] = (char)(0x80 | ((c >> 12) & 0x3F));
        u[2] = (char)(0x80 | ((c >> 6) & 0x3F));
        u[3] = (char)(0x80 | (c & 0x3F));
        k = 4;
    }
    sb_put(b, u, k);
}

static void sb_free(sbuf *b) {
    free(b->p);
    memset(b, 0, sizeof *b);
}

/* Moves b's contents into *out (an empty string when b is empty). */
static int sb_finish(sbuf *b, char **out, size_t *out_len, pbw_err *err) {
    if (!b->oom && !b->p) sb_reserve(b, 0);
    if (b->oom) {
        sb_free(b);
        return pbw_err_set(err, "text cleaning: out of memory");
    }
    b->p[b->n] = 0;
    *out = b->p;
    *out_len = b->n;
    memset(b, 0, sizeof *b);
    return 0;
}

/* ---------------------------------------------------------------------------------------------
 * UTF-8. */

int pbw_utf8_check(const char *str, size_t n, size_t *bad_offset) {
    const unsigned char *s = (const unsigned char *)str;
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        size_t k;
        unsigned lo = 0x80, hi = 0xBF;
        if (c < 0x80) {
            i++;
            continue;
        } else if (c >= 0xC2 && c <= 0xDF) {
            k = 1;
        } else if (c >= 0xE0 && c <= 0xEF) {
            k = 2;
            if (c == 0xE0) lo = 0xA0;
            if (c == 0xED) hi = 0x9F; /* surrogates */
        } else if (c >= 0xF0 && c <= 0xF4) {
            k = 3;
            if (c == 0xF0) lo = 0x90;
            if (c == 0xF4) hi = 0x8F;
        } else {
            if (bad_offset) *bad_offset = i;
            return -1;
        }
        for (size_t j = 1; j <= k; j++) {
            if (i + j >= n) {
                if (bad_offset) *bad_offset = i;
                return -1;
            }
            unsigned d = s[i + j];
            unsigned l = j == 1 ? lo : 0x80, h = j == 1 ? hi : 0xBF;
            if (d < l || d > h) {
                if (bad_offset) *bad_offset = i;
                return -1;
            }
        }
        i += k + 1;
    }
    return 0;
}

/* Next code point of valid UTF-8 at s[*i]; advances *i. */
static uint32_t u8_next(const char *str, size_t *i) {
    const unsigned char *s = (const unsigned char *)str + *i;
    uint32_t c = s[0];
    if (c < 0x80) {
        *i += 1;
        return c;
    }
    if (c < 0xE0) {
        *i += 2;
        return ((c & 0x1F) << 6) | (s[1] & 0x3F);
    }
    if (c < 0xF0) {
        *i += 3;
        return ((c & 0x0F) << 12) | ((uint32_t)(s[1] & 0x3F) << 6) | (s[2] & 0x3F);
    }
    *i += 4;
    return ((c & 0x07) << 18) | ((uint32_t)(s[1] & 0x3F) << 12) | ((uint32_t)(s[2] & 0x3F) << 6) |
           (s[3] & 0x3F);
}

static size_t u8_count(const char *s, size_t n) {
    size_t k = 0;
    for (size_t i = 0; i < n; i++) k += ((unsigned char)s[i] & 0xC0) != 0x80;
    return k;
}

/* Decodes bytes as Python's strict UTF-8 codec does; with `variants`, also as ftfy's
 * "utf-8-variants": C0 80 is U+0000 and a CESU-8 surrogate pair (ED A0-AF xx ED B0-BF xx)
 * is the supplementary character it encodes. Returns -1 where Python would raise. */
static int decode_utf8(const unsigned char *s, size_t n, int variants, sbuf *out) {
    size_t i = 0;
    while (i < n) {
        if (variants && s[i] == 0xC0 && i + 1 < n && s[i + 1] == 0x80) {
            sb_putc(out, 0);
            i += 2;
            continue;
        }
        if (variants && s[i] == 0xED && i + 5 < n && s[i + 1] >= 0xA0 && s[i + 1] <= 0xAF &&
            (s[i + 2] & 0xC0) == 0x80 && s[i + 3] == 0xED && s[i + 4] >= 0xB0 &&
            s[i + 4] <= 0xBF && (s[i + 5] & 0xC0) == 0x80) {
            uint32_t c = ((uint32_t)(s[i + 1] & 0x0F) << 16) + ((uint32_t)(s[i + 2] & 0x3F) << 10) +
                         ((uint32_t)(s[i + 4] & 0x0F) << 6) + (s[i + 5] & 0x3F) + 0x10000;
            sb_put_cp(out, c);
            i += 6;
            continue;
        }
        size_t bad, len;
        /* Validate one character at a time with the strict checker. */
        unsigned c = s[i];
        len = c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
        if (len > n - i) len = n - i;
        if (pbw_utf8_check((const char *)s + i, len, &bad) != 0) return -1;
        sb_put(out, (const char *)s + i, len);
        i += len;
    }
    return 0;
}

/* ---------------------------------------------------------------------------------------------
 * Character predicates with Python's meanings. */

/* str.isspace(): bidirectional class WS, B or S, or category Zs. */
static int py_isspace(uint32_t c) {
    return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 ||
           c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 ||
           c == 0x202F || c == 0x205F || c == 0x3000;
}

/* Unicode White_Space, which is what the `regex` module's \s matches (isspace without the
 * information separators U+1C..U+1F). */
static int white_space(uint32_t c) { return py_isspace(c) && !(c >= 0x1C && c <= 0x1F); }

/* The same set as a PCRE2 class body. */
#define WHITE_SPACE_CLASS \
    "\\t-\\r \\x{85}\\x{a0}\\x{1680}\\x{2000}-\\x{200a}\\x{2028}\\x{2029}\\x{202f}\\x{205f}\\x{3000}"
/* Python re's \s for str patterns (str.isspace). */
#define PY_SPACE_CLASS "[\\x{1c}-\\x{1f}" WHITE_SPACE_CLASS "]"

static int category(uint32_t c) { return (int)utf8proc_category((utf8proc_int32_t)c); }

/* Unicode Cased: Lowercase, Uppercase or Lt. Characters with a case mapping, plus the
 * Other_Lowercase / Other_Uppercase ranges that have none (ª, º, modifier letters, ...). */
static int is_cased(uint32_t c) {
    int cat = category(c);
    if (cat == UTF8PROC_CATEGORY_LU || cat == UTF8PROC_CATEGORY_LL || cat == UTF8PROC_CATEGORY_LT)
        return 1;
    utf8proc_int32_t x = (utf8proc_int32_t)c;
    if (utf8proc_tolower(x) != x || utf8proc_toupper(x) != x || utf8proc_totitle(x) != x) return 1;
    static const uint32_t other[][2] = {
        {0xAA, 0xAA},     {0xBA, 0xBA},     {0x2B0, 0x2B8},   {0x2C0, 0x2C1},   {0x2E0, 0x2E4},
        {0x345, 0x345},   {0x37A, 0x37A},   {0x10FC, 0x10FC}, {0x1D2C, 0x1D6A}, {0x1D78, 0x1D78},
        {0x1D9B, 0x1DBF}, {0x2071, 0x2071}, {0x207F, 0x207F}, {0x2090, 0x209C}, {0x2160, 0x217F},
        {0x24B6, 0x24E9}, {0x2C7C, 0x2C7D}, {0xA69C, 0xA69D}, {0xA770, 0xA770}, {0xA7F2, 0xA7F4},
        {0xA7F8, 0xA7F9}, {0xAB5C, 0xAB5F}, {0xAB69, 0xAB69}, {0x10780, 0x107BA},
        {0x1F130, 0x1F149}, {0x1F150, 0x1F169}, {0x1F170, 0x1F189},
    };
    for (size_t i = 0; i < NELEM(other); i++)
        if (c >= other[i][0] && c <= other[i][1]) return 1;
    return 0;
}

/* Unicode Case_Ignorable: Mn, Me, Cf, Lm, Sk, and Word_Break MidLetter, MidNumLet or
 * Single_Quote. */
static int is_case_ignorable(uint32_t c) {
    int cat = category(c);
    if (cat == UTF8PROC_CATEGORY_MN || cat == UTF8PROC_CATEGORY_ME || cat == UTF8PROC_CATEGORY_CF ||
        cat == UTF8PROC_CATEGORY_LM || cat == UTF8PROC_CATEGORY_SK)
        return 1;
    static const uint32_t mid[] = {0x27,   0x2E,   0x3A,   0xB7,   0x387,  0x55F,
                                   0x5F4,  0x2018, 0x2019, 0x2024, 0x2027, 0xFE13,
                                   0xFE52, 0xFE55, 0xFF07, 0xFF0E, 0xFF1A};
    for (size_t i = 0; i < NELEM(mid); i++)
        if (c == mid[i]) return 1;
    return 0;
}

/* ---------------------------------------------------------------------------------------------
 * Compiled patterns, built once. Classes mirror ftfy 6's (ftfy/badness.py, chardata.py). */

/* MOJIBAKE_CATEGORIES */
#define K_COMMON "\\x{a0}\\x{ad}\\x{b4}\\x{b7}\\x{2013}-\\x{2015}\\x{2019}\\x{2026}"
#define K_C1 "\\x{80}-\\x{9f}"
#define K_BAD                                                                                  \
    "\\x{a4}\\x{a6}\\x{a8}\\x{aa}\\x{ac}\\x{af}\\x{b8}\\x{ba}\\x{192}\\x{2c6}\\x{2c7}\\x{2d8}" \
    "\\x{2db}\\x{2dc}\\x{2020}\\x{2021}\\x{2030}\\x{2310}\\x{25ca}\\x{fffd}"
#define K_LAW "\\x{a7}\\x{b6}"
#define K_CURRENCY "\\x{a2}\\x{a3}\\x{a5}\\x{20a7}\\x{20ac}"
#define K_START                                                                                \
    "\\x{a1}\\x{a9}\\x{ab}\\x{bf}\\x{384}\\x{385}\\x{2018}\\x{201a}\\x{201c}\\x{201e}\\x{2022}" \
    "\\x{2039}\\x{f8ff}"
#define K_END "\\x{ae}\\x{bb}\\x{2dd}\\x{201d}\\x{203a}\\x{2122}"
#define K_NUMERIC                                                                              \
    "\\x{b1}-\\x{b3}\\x{b5}\\x{b9}\\x{bc}-\\x{be}\\x{d7}\\x{f7}\\x{2044}\\x{2116}\\x{2202}"    \
    "\\x{2206}\\x{220f}\\x{2211}\\x{221a}\\x{221e}\\x{2229}\\x{222b}\\x{2248}\\x{2260}\\x{2261}" \
    "\\x{2264}\\x{2265}"
#define K_KAOMOJI                                                                              \
    "\\x{b0}\\x{d2}-\\x{d6}\\x{d9}-\\x{dc}\\x{f2}-\\x{f6}\\x{f8}-\\x{fc}\\x{14c}\\x{150}"      \
    "\\x{16a}\\x{172}"
#define K_UPPER_ACC                                                                            \
    "\\x{c0}-\\x{d1}\\x{d8}\\x{dc}\\x{dd}\\x{100}\\x{102}\\x{104}\\x{106}\\x{10c}\\x{10e}"     \
    "\\x{110}\\x{112}\\x{116}\\x{118}\\x{11a}\\x{11e}\\x{122}\\x{12a}\\x{130}\\x{136}\\x{139}" \
    "\\x{13b}\\x{13d}\\x{141}\\x{143}\\x{145}\\x{147}\\x{152}\\x{158}\\x{15a}\\x{15e}\\x{160}" \
    "\\x{162}\\x{164}\\x{16e}\\x{170}\\x{178}\\x{179}\\x{17b}\\x{17d}\\x{490}"
#define K_LOWER_ACC                                                                            \
    "\\x{df}-\\x{f1}\\x{fc}\\x{101}\\x{103}\\x{105}\\x{107}\\x{10d}\\x{10f}\\x{111}\\x{113}"   \
    "\\x{117}\\x{119}\\x{11b}\\x{11f}\\x{123}\\x{12b}\\x{12f}\\x{137}\\x{13a}\\x{13c}\\x{13e}" \
    "\\x{142}\\x{153}\\x{155}\\x{15b}\\x{15f}\\x{161}\\x{165}\\x{17a}\\x{17c}\\x{17e}\\x{491}" \
    "\\x{fb01}\\x{fb02}"
#define K_UPPER_COMMON \
    "\\x{de}\\x{386}\\x{388}-\\x{38a}\\x{38c}\\x{38e}\\x{38f}\\x{391}-\\x{3ab}\\x{401}-\\x{42f}"
#define K_LOWER_COMMON "\\x{3ac}-\\x{3c9}\\x{430}-\\x{45f}"
#define K_BOX                                                                                  \
    "\\x{2502}\\x{250c}\\x{2510}\\x{2518}\\x{251c}\\x{2524}\\x{252c}\\x{253c}\\x{2550}-"       \
    "\\x{256c}\\x{2580}\\x{2584}\\x{2588}\\x{258c}\\x{2590}-\\x{2593}"

/* ftfy's BADNESS_RE: sequences that are unlikely in real text and likely in mojibake. The
 * alternatives are joined at start-up (one literal would exceed C's portable string length). */
static const char *const BADNESS_PARTS[] = {
    "[" K_C1 "]",
    "|[" K_BAD K_LOWER_ACC K_UPPER_ACC K_BOX K_START K_END K_CURRENCY K_NUMERIC K_LAW "][" K_BAD "]",
    "|[a-zA-Z][" K_LOWER_COMMON K_UPPER_COMMON "][" K_BAD "]",
    "|[" K_BAD "][" K_LOWER_ACC K_UPPER_ACC K_BOX K_START K_END K_CURRENCY K_NUMERIC K_LAW "]",
    "|[" K_LOWER_ACC K_LOWER_COMMON K_BOX K_END K_CURRENCY K_NUMERIC "][" K_UPPER_ACC "]",
    "|[" K_BOX K_END K_CURRENCY K_NUMERIC "][" K_LOWER_ACC "]",
    "|[" K_LOWER_ACC K_BOX K_END "][" K_CURRENCY "]",
    "|" PY_SPACE_CLASS "[" K_UPPER_ACC "][" K_CURRENCY "]",
    "|[" K_UPPER_ACC K_BOX "][" K_NUMERIC K_LAW "]",
    "|[" K_LOWER_ACC K_UPPER_ACC K_BOX K_CURRENCY K_END "][" K_START "][" K_NUMERIC "]",
    "|[" K_LOWER_ACC K_UPPER_ACC K_CURRENCY K_NUMERIC K_BOX K_LAW "][" K_END "][" K_START "]",
    "|[" K_CURRENCY K_NUMERIC K_BOX "][" K_START "]",
    "|[a-z][" K_UPPER_ACC "][" K_START K_CURRENCY "]",
    "|[" K_BOX "][" K_KAOMOJI "]",
    "|[" K_LOWER_ACC K_UPPER_ACC K_CURRENCY K_NUMERIC K_START K_END K_LAW "][" K_BOX "]",
    "|[" K_BOX "][" K_END "]",
    "|[" K_LOWER_ACC K_UPPER_ACC "][" K_START K_END "][\\p{L}\\p{N}_]",
    /* the ligature oe not followed by an unaccented Latin letter */
    "|[\\x{152}\\x{153}][^A-Za-z]",
    /* a degree sign after a capital letter */
    "|[" K_UPPER_ACC "]\\x{b0}",
    /* common two-character Windows-1252 mojibake */
    "|[\\x{c2}\\x{c3}\\x{ce}\\x{d0}][\\x{20ac}\\x{153}\\x{160}\\x{161}\\x{a2}\\x{a3}\\x{178}"
    "\\x{17e}\\x{a0}\\x{ad}\\x{ae}\\x{a9}\\x{b0}\\x{b7}\\x{bb}" K_START K_END
    "\\x{2013}\\x{2014}\\x{b4}]",
    "|\\x{d7}[\\x{b2}\\x{b3}]",
    /* Windows-1252 mojibake of Arabic: four characters */
    "|[\\x{d8}\\x{d9}][" K_COMMON K_CURRENCY K_BAD K_NUMERIC K_START
    "\\x{178}\\x{160}\\x{ae}\\x{b0}\\x{b5}\\x{bb}]"
    "[\\x{d8}\\x{d9}][" K_COMMON K_CURRENCY K_BAD K_NUMERIC K_START
    "\\x{178}\\x{160}\\x{ae}\\x{b0}\\x{b5}\\x{bb}]",
    /* Windows-1252 starts of South Asian letters */
    "|\\x{e0}[\\x{b2}\\x{b5}\\x{b9}\\x{bc}\\x{bd}\\x{be}]",
    /* MacRoman */
    "|\\x{221a}[\\x{b1}\\x{2202}\\x{2020}\\x{2260}\\x{ae}\\x{2122}\\x{b4}\\x{2264}\\x{2265}"
    "\\x{a5}\\x{b5}\\x{f8}]",
    "|\\x{2248}[\\x{b0}\\x{a2}]",
    "|\\x{201a}\\x{c4}[\\x{ec}\\x{ee}\\x{ef}\\x{f2}\\x{f4}\\x{fa}\\x{f9}\\x{fb}\\x{2020}\\x{b0}"
    "\\x{a2}\\x{3c0}]",
    "|\\x{201a}[\\x{e2}\\x{f3}][\\x{e0}\\x{e4}\\x{b0}\\x{ea}]",
    /* Windows-1251 */
    "|\\x{432}\\x{402}",
    "|[\\x{412}\\x{413}\\x{420}\\x{421}][" K_C1 K_BAD K_START K_END K_CURRENCY
    "\\x{b0}\\x{b5}][\\x{412}\\x{413}\\x{420}\\x{421}]",
    "|\\x{413}\\x{45e}\\x{412}\\x{402}\\x{412}[^\\n][A-Za-z ]",
    /* Windows-1252 of a-grave, a-acute and A0 itself */
    "|\\x{c3}[\\x{a0}\\x{a1}]",
    "|[a-z]" PY_SPACE_CLASS "?[\\x{c3}\\x{c2}] ",
    "|^[\\x{c3}\\x{c2}] ",
    "|[a-z.,?!" K_END "]\\x{c2}[ " K_START K_END "]",
    /* Windows-1253 */
    "|\\x{3b2}\\x{20ac}[\\x{2122}\\x{a0}\\x{386}\\x{ad}\\x{ae}\\x{b0}]",
    "|[\\x{392}\\x{393}\\x{39e}\\x{39f}][" K_C1 K_BAD K_START K_END K_CURRENCY
    "\\x{b0}][\\x{392}\\x{393}\\x{39e}\\x{39f}]",
    /* Windows-1257 */
    "|\\x{101}\\x{20ac}",
};

/* UTF8_CLUES */
#define U_FIRST2                                                                               \
    "\\x{c2}-\\x{df}\\x{100}\\x{102}\\x{106}\\x{10c}\\x{10e}\\x{110}\\x{112}\\x{116}\\x{118}"  \
    "\\x{11a}\\x{11e}\\x{122}\\x{12a}\\x{130}\\x{136}\\x{139}\\x{13b}\\x{141}\\x{143}\\x{145}" \
    "\\x{147}\\x{14c}\\x{150}\\x{158}\\x{15a}\\x{15e}\\x{160}\\x{162}\\x{16a}\\x{16e}\\x{170}" \
    "\\x{172}\\x{179}\\x{17b}\\x{17d}\\x{392}-\\x{3a1}\\x{3a3}-\\x{3af}\\x{412}-\\x{42f}"
#define U_FIRST3                                                                               \
    "\\x{e0}-\\x{ef}\\x{101}\\x{103}\\x{105}\\x{107}\\x{10d}\\x{10f}\\x{113}\\x{117}\\x{119}"  \
    "\\x{11b}\\x{123}\\x{12b}\\x{12f}\\x{137}\\x{13a}\\x{13c}\\x{155}\\x{17a}\\x{3b0}-"        \
    "\\x{3bf}\\x{430}-\\x{43f}"
#define U_FIRST4 "\\x{f0}\\x{f3}\\x{111}\\x{11f}\\x{161}\\x{3c0}\\x{3c3}\\x{440}\\x{443}"
#define U_CONT_STRICT                                                                          \
    "\\x{80}-\\x{bf}\\x{c6}\\x{d8}\\x{e6}\\x{f8}\\x{104}\\x{105}\\x{13d}\\x{13e}\\x{141}"      \
    "\\x{142}\\x{152}\\x{153}\\x{156}\\x{157}\\x{15a}\\x{15b}\\x{15e}\\x{15f}\\x{160}\\x{161}" \
    "\\x{164}\\x{165}\\x{178}-\\x{17e}\\x{192}\\x{2c6}\\x{2c7}\\x{2d8}\\x{2db}-\\x{2dd}"       \
    "\\x{384}-\\x{386}\\x{388}-\\x{38a}\\x{38c}\\x{38e}\\x{38f}\\x{401}-\\x{40c}\\x{40e}"      \
    "\\x{40f}\\x{451}-\\x{45c}\\x{45e}\\x{45f}\\x{490}\\x{491}\\x{2020}\\x{2021}\\x{2030}"     \
    "\\x{2039}\\x{203a}\\x{20ac}\\x{2116}\\x{2122}"
#define U_CONT U_CONT_STRICT " \\x{2013}-\\x{2015}\\x{2018}\\x{2019}\\x{201a}\\x{201c}-\\x{201e}\\x{2022}\\x{2026}"

/* ftfy's UTF8_DETECTOR_RE: runs of characters that look like UTF-8 read one byte at a time,
 * not preceded by a character that only appears inside such runs. */
static const char *const DETECTOR_PARTS[] = {
    "(?<![" U_CONT_STRICT "])(?:",
    "[" U_FIRST2 "][" U_CONT "]",
    "|[" U_FIRST3 "][" U_CONT "]{2}",
    "|[" U_FIRST4 "][" U_CONT "]{3}",
    ")+",
};

/* Byte patterns (no UTF): ftfy's ALTERED_UTF8_RE, the a-grave exception of restore_byte_a0,
 * and LOSSY_UTF8_RE. */
static const char ALTERED_PATTERN[] = "[\\xc2\\xc3\\xc5\\xce\\xd0\\xd9] "
                                      "|[\\xe2\\xe3] [\\x80-\\x84\\x86-\\x9f\\xa1-\\xbf]"
                                      "|[\\xe0-\\xe3][\\x80-\\x84\\x86-\\x9f\\xa1-\\xbf] "
                                      "|\\xf0 [\\x80-\\xbf][\\x80-\\xbf]"
                                      "|\\xf0[\\x80-\\xbf] [\\x80-\\xbf]"
                                      "|\\xf0[\\x80-\\xbf][\\x80-\\xbf] ";
static const char AGRAVE_PATTERN[] = "\\xc3 (?! |quele|quela|quilo|s )";
static const char LOSSY_PATTERN[] =
    "[\\xc2-\\xdf]\\x1a"
    "|[\\xc2-\\xc3]\\?"
    "|\\xed[\\xa0-\\xaf][\\x1a?]\\xed[\\xb0-\\xbf][\\x1a?\\x80-\\xbf]"
    "|\\xed[\\xa0-\\xaf][\\x1a?\\x80-\\xbf]\\xed[\\xb0-\\xbf][\\x1a?]"
    "|[\\xe0-\\xef][\\x1a?][\\x1a\\x80-\\xbf]"
    "|[\\xe0-\\xef][\\x1a\\x80-\\xbf][\\x1a?]"
    "|[\\xf0-\\xf4][\\x1a?][\\x1a\\x80-\\xbf][\\x1a\\x80-\\xbf]"
    "|[\\xf0-\\xf4][\\x1a\\x80-\\xbf][\\x1a?][\\x1a\\x80-\\xbf]"
    "|[\\xf0-\\xf4][\\x1a\\x80-\\xbf][\\x1a\\x80-\\xbf][\\x1a?]"
    "|\\x1a";

enum { RE_BADNESS, RE_DETECTOR, RE_ALTERED, RE_AGRAVE, RE_LOSSY, RE_COUNT };

static struct {
    pcre2_code *re[RE_COUNT];
    char error[256];
} g_text;
static pthread_once_t g_text_once = PTHREAD_ONCE_INIT;

/* Joins a pattern's parts into one malloc'd string (NULL when out of memory). */
static char *join_parts(const char *const *parts, size_t count) {
    size_t len = 1;
    for (size_t i = 0; i < count; i++) len += strlen(parts[i]);
    char *p = malloc(len), *q = p;
    if (!p) return NULL;
    for (size_t i = 0; i < count; i++) {
        size_t k = strlen(parts[i]);
        memcpy(q, parts[i], k);
        q += k;
    }
    *q = 0;
    return p;
}

static void build_reverse(void);

static void text_init(void) {
    build_reverse();
    char *badness = join_parts(BADNESS_PARTS, NELEM(BADNESS_PARTS));
    char *detector = join_parts(DETECTOR_PARTS, NELEM(DETECTOR_PARTS));
    const struct {
        const char *pattern;
        uint32_t flags;
    } spec[RE_COUNT] = {
        [RE_BADNESS] = {badness, PCRE2_UTF | PCRE2_UCP},
        [RE_DETECTOR] = {detector, PCRE2_UTF | PCRE2_UCP},
        [RE_ALTERED] = {ALTERED_PATTERN, 0},
        [RE_AGRAVE] = {AGRAVE_PATTERN, 0},
        [RE_LOSSY] = {LOSSY_PATTERN, 0},
    };
    for (int i = 0; i < RE_COUNT && !g_text.error[0]; i++) {
        int code;
        PCRE2_SIZE off;
        if (!spec[i].pattern) {
            snprintf(g_text.error, sizeof g_text.error, "patterns: out of memory");
            break;
        }
        g_text.re[i] = pcre2_compile((PCRE2_SPTR)spec[i].pattern, PCRE2_ZERO_TERMINATED,
                                     spec[i].flags, &code, &off, NULL);
        if (!g_text.re[i]) {
            char msg[160];
            pcre2_get_error_message(code, (PCRE2_UCHAR *)msg, sizeof msg);
            snprintf(g_text.error, sizeof g_text.error, "pattern %d at offset %zu: %s", i,
                     (size_t)off, msg);
            break;
        }
        pcre2_jit_compile(g_text.re[i], PCRE2_JIT_COMPLETE); /* optional: falls back if absent */
    }
    free(badness);
    free(detector);
}

/* Per-call state: one match block (PCRE2 match data is not shareable between threads) and
 * the recursion depth of decode_inconsistent_utf8. */
typedef struct {
    pcre2_match_data *md;
    int depth;
    int oom;
} tctx;

/* Leftmost match of pattern `which` in s[start..n); 1 if found (span in *ms, *me), 0 if not,
 * -1 on a matching error (treated as out of resources by the callers). */
static int re_find(tctx *t, int which, const char *s, size_t n, size_t start, size_t *ms,
                   size_t *me) {
    int utf = which == RE_BADNESS || which == RE_DETECTOR;
    int rc = pcre2_match(g_text.re[which], (PCRE2_SPTR)(s ? s : ""), n, start,
                         utf ? PCRE2_NO_UTF_CHECK : 0, t->md, NULL);
    if (rc == PCRE2_ERROR_NOMATCH) return 0;
    if (rc < 0) {
        t->oom = 1;
        return -1;
    }
    PCRE2_SIZE *ov = pcre2_get_ovector_pointer(t->md);
    *ms = ov[0];
    *me = ov[1];
    return 1;
}

static int is_bad(tctx *t, const char *s, size_t n) {
    size_t a, b;
    return re_find(t, RE_BADNESS, s, n, 0, &a, &b) == 1;
}

/* ---------------------------------------------------------------------------------------------
 * Single-byte code pages, as ftfy uses them. "Sloppy" ones decode undefined bytes as Latin-1
 * and byte 1A as U+FFFD (so that text holding U+FFFD can be re-encoded). */

typedef struct {
    const uint16_t *table; /* bytes 80..FF; 0 = undefined; NULL = Latin-1 */
    int sloppy;
    int macroman;
} codepage;

static const codepage CHARMAPS[] = {
    {NULL, 0, 0},           /* latin-1 */
    {text_cp_cp1252, 1, 0}, /* sloppy-windows-1252 */
    {text_cp_cp1251, 1, 0}, {text_cp_cp1250, 1, 0}, {text_cp_cp1253, 1, 0},
    {text_cp_cp1254, 1, 0}, {text_cp_cp1257, 1, 0},
    {text_cp_iso8859_2, 0, 0},
    {text_cp_macroman, 0, 1},
    {text_cp_cp437, 0, 0},
};
enum { CM_LATIN1 = 0, CM_SLOPPY_1252 = 1, CM_COUNT = (int)NELEM(CHARMAPS) };

/* The character byte b (>= 0x80) decodes to, or 0 if none. */
static uint32_t cp_decode(const codepage *cp, unsigned b) {
    if (!cp->table) return b;
    uint32_t c = cp->table[b - 0x80];
    if (!c && cp->sloppy) c = b;
    return c;
}

/* Encoding tables: each code page's characters of bytes 80..FF sorted by code point, built
 * once by text_init (no character comes from two bytes in these code pages). */
typedef struct {
    uint16_t c;
    uint8_t b;
} cp_rev;
static cp_rev g_rev[CM_COUNT][128];
static int g_rev_n[CM_COUNT];

static void build_reverse(void) {
    for (int e = 0; e < CM_COUNT; e++) {
        int n = 0;
        for (unsigned b = 0x80; b < 0x100; b++) {
            uint32_t c = cp_decode(&CHARMAPS[e], b);
            if (!c) continue;
            int k = n++; /* insertion sort: 128 entries */
            while (k > 0 && g_rev[e][k - 1].c > c) {
                g_rev[e][k] = g_rev[e][k - 1];
                k--;
            }
            g_rev[e][k] = (cp_rev){(uint16_t)c, (uint8_t)b};
        }
        g_rev_n[e] = n;
    }
}

/* The byte that encodes c in cp, or -1. */
static int cp_encode(const codepage *cp, uint32_t c) {
    if (c == 0x1A) return cp->sloppy ? -1 : 0x1A;
    if (c < 0x80) return (int)c;
    if (cp->sloppy && c == 0xFFFD) return 0x1A;
    int e = (int)(cp - CHARMAPS), lo = 0, hi = g_rev_n[e];
    while (lo < hi) {
        int mid = (lo + hi) / 2;
        if (g_rev[e][mid].c < c)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < g_rev_n[e] && g_rev[e][lo].c == c ? g_rev[e][lo].b : -1;
}

static int possible_encoding(const codepage *cp, const char *s, size_t n) {
    for (size_t i = 0; i < n;) {
        uint32_t c = u8_next(s, &i);
        if (c < 0x80 && c != 0x1A) continue;
        if (cp_encode(cp, c) < 0) return 0;
    }
    return 1;
}

static int is_ascii(const char *s, size_t n) {
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] >= 0x80) return 0;
    return 1;
}

/* ---------------------------------------------------------------------------------------------
 * Byte repairs applied between re-encoding and decoding (ftfy.fixes). */

/* Replaces every match of byte pattern `which` in *b: with `repl` if given, else with the
 * match where spaces became A0 bytes. */
static void bytes_sub(tctx *t, int which, sbuf *b, const char *repl, size_t repl_len) {
    sbuf out = {0};
    size_t pos = 0, ms, me;
    while (pos <= b->n && re_find(t, which, b->p, b->n, pos, &ms, &me) == 1) {
        sb_put(&out, b->p + pos, ms - pos);
        if (repl) {
            sb_put(&out, repl, repl_len);
        } else {
            for (size_t i = ms; i < me; i++) sb_putc(&out, b->p[i] == ' ' ? (char)0xA0 : b->p[i]);
        }
        pos = me > ms ? me : me + 1;
    }
    if (pos < b->n) sb_put(&out, b->p + pos, b->n - pos);
    if (out.oom) t->oom = 1;
    sb_free(b);
    *b = out;
}

/* restore_byte_a0: a space that stands where an A0 byte of UTF-8 was. */
static void restore_byte_a0(tctx *t, sbuf *b) {
    bytes_sub(t, RE_AGRAVE, b, "\xc3\xa0 ", 3);
    bytes_sub(t, RE_ALTERED, b, NULL, 0);
}

/* ---------------------------------------------------------------------------------------------
 * fix_encoding (ftfy/__init__.py). */

static void fix_encoding(tctx *t, const char *s, size_t n, sbuf *out);
static void fix_c1_controls(const char *s, size_t n, sbuf *out);

/* decode_inconsistent_utf8: fixes each mojibake-looking run on its own. */
static void decode_inconsistent_utf8(tctx *t, const char *s, size_t n, sbuf *out) {
    size_t pos = 0, ms, me, total = u8_count(s, n);
    while (pos < n && re_find(t, RE_DETECTOR, s, n, pos, &ms, &me) == 1) {
        sb_put(out, s + pos, ms - pos);
        /* The run must be shorter than the text, so that this cannot recurse forever; the
         * depth cap is a second guard that Python does not need (its strings only shrink). */
        if (u8_count(s + ms, me - ms) < total && t->depth < 16 && is_bad(t, s + ms, me - ms)) {
            t->depth++;
            fix_encoding(t, s + ms, me - ms, out);
            t->depth--;
        } else {
            sb_put(out, s + ms, me - ms);
        }
        pos = me > ms ? me : me + 1;
    }
    if (pos < n) sb_put(out, s + pos, n - pos);
}

/* One step of _fix_encoding_one_step_and_explain; writes the result (possibly s itself). */
static void fix_encoding_step(tctx *t, const char *s, size_t n, sbuf *out) {
    if (n == 0 || is_ascii(s, n) || !is_bad(t, s, n)) {
        sb_put(out, s, n);
        return;
    }
    int latin1_possible = 0;
    for (int e = 0; e < CM_COUNT; e++) {
        const codepage *cp = &CHARMAPS[e];
        if (!possible_encoding(cp, s, n)) continue;
        if (e == CM_LATIN1) latin1_possible = 1;
        sbuf b = {0};
        for (size_t i = 0; i < n;) {
            uint32_t c = u8_next(s, &i);
            sb_putc(&b, (char)cp_encode(cp, c));
        }
        size_t ms, me;
        if (!cp->macroman && b.n && re_find(t, RE_ALTERED, b.p, b.n, 0, &ms, &me) == 1)
            restore_byte_a0(t, &b);
        if (cp->sloppy) bytes_sub(t, RE_LOSSY, &b, "\xef\xbf\xbd", 3);
        int variants = b.n && (memchr(b.p, 0xED, b.n) || memchr(b.p, 0xC0, b.n));
        sbuf d = {0};
        int ok = !b.oom && decode_utf8((const unsigned char *)b.p, b.n, variants, &d) == 0;
        if (b.oom || d.oom) t->oom = 1;
        sb_free(&b);
        if (ok) {
            sb_put(out, d.p, d.n);
            sb_free(&d);
            return;
        }
        sb_free(&d);
    }
    size_t ms, me;
    if (re_find(t, RE_DETECTOR, s, n, 0, &ms, &me) == 1) {
        sbuf d = {0};
        decode_inconsistent_utf8(t, s, n, &d);
        if (d.oom) t->oom = 1;
        if (d.n != n || memcmp(d.p, s, n)) {
            sb_put(out, d.p, d.n);
            sb_free(&d);
            return;
        }
        sb_free(&d);
    }
    /* ftfy then asks whether "windows-1252" is among the possible encodings; its list only
     * ever names "sloppy-windows-1252", so the answer is always no and it goes on to try a
     * strict Latin-1 -> Windows-1252 reading. */
    if (latin1_possible) {
        sbuf d = {0};
        int ok = 1;
        for (size_t i = 0; i < n && ok;) {
            uint32_t c = u8_next(s, &i);
            if (c >= 0x80 && c < 0x100) {
                c = text_cp_cp1252[c - 0x80];
                if (!c) ok = 0;
            }
            sb_put_cp(&d, c);
        }
        if (d.oom) t->oom = 1;
        if (ok && (d.n != n || memcmp(d.p, s, n))) {
            sb_put(out, d.p, d.n);
            sb_free(&d);
            return;
        }
        sb_free(&d);
    }
    /* Last resort: C1 controls read as Windows-1252. */
    for (size_t i = 0; i < n;) {
        uint32_t c = u8_next(s, &i);
        if (c >= 0x80 && c <= 0x9F) {
            fix_c1_controls(s, n, out);
            return;
        }
    }
    sb_put(out, s, n);
}

/* fix_encoding: steps until the text stops changing. */
static void fix_encoding(tctx *t, const char *s, size_t n, sbuf *out) {
    sbuf cur = {0};
    sb_put(&cur, s, n);
    for (int iter = 0; iter < 64 && !cur.oom && !t->oom; iter++) {
        sbuf next = {0};
        fix_encoding_step(t, cur.p, cur.n, &next);
        int same = next.n == cur.n && (cur.n == 0 || !memcmp(next.p, cur.p, cur.n));
        if (next.oom) t->oom = 1;
        sb_free(&cur);
        cur = next;
        if (same) break;
    }
    if (cur.oom) t->oom = 1;
    sb_put(out, cur.p, cur.n);
    sb_free(&cur);
}

/* ---------------------------------------------------------------------------------------------
 * The simple fixers (ftfy.fixes), one pass each, in ftfy's order. */

/* C1 controls (U+80..U+9F) read as Windows-1252, undefined ones kept. */
static void fix_c1_controls(const char *s, size_t n, sbuf *out) {
    for (size_t i = 0; i < n;) {
        size_t i0 = i;
        uint32_t c = u8_next(s, &i);
        if (c >= 0x80 && c <= 0x9F) {
            sb_put_cp(out, cp_decode(&CHARMAPS[CM_SLOPPY_1252], c));
        } else {
            sb_put(out, s + i0, i - i0);
        }
    }
}

static void fix_latin_ligatures(const char *s, size_t n, sbuf *out) {
    static const struct {
        uint32_t c;
        const char *to;
    } lig[] = {
        {0x132, "IJ"},         {0x133, "ij"},         {0x149, "\xca\xbcn"},  {0x1F1, "DZ"},
        {0x1F2, "Dz"},         {0x1F3, "dz"},         {0x1C4, "D\xc5\xbd"},  {0x1C5, "D\xc5\xbe"},
        {0x1C6, "d\xc5\xbe"},  {0x1C7, "LJ"},         {0x1C8, "Lj"},         {0x1C9, "lj"},
        {0x1CA, "NJ"},         {0x1CB, "Nj"},         {0x1CC, "nj"},         {0xFB00, "ff"},
        {0xFB01, "fi"},        {0xFB02, "fl"},        {0xFB03, "ffi"},       {0xFB04, "ffl"},
        {0xFB05, "\xc5\xbft"}, {0xFB06, "st"},
    };
    for (size_t i = 0; i < n;) {
        size_t i0 = i;
        uint32_t c = u8_next(s, &i);
        const char *to = NULL;
        if ((c >= 0x132 && c <= 0x1F3) || (c >= 0xFB00 && c <= 0xFB06))
            for (size_t k = 0; k < NELEM(lig); k++)
                if (lig[k].c == c) to = lig[k].to;
        if (to)
            sb_put(out, to, strlen(to));
        else
            sb_put(out, s + i0, i - i0);
    }
}

/* Full- and half-width forms (U+FF01..U+FFEF) to their NFKC equivalents; U+3000 to a space. */
static void fix_character_width(const char *s, size_t n, sbuf *out) {
    for (size_t i = 0; i < n;) {
        size_t i0 = i;
        uint32_t c = u8_next(s, &i);
        if (c == 0x3000) {
            sb_putc(out, ' ');
        } else if (c >= 0xFF01 && c <= 0xFFEF) {
            utf8proc_uint8_t *m = NULL;
            utf8proc_ssize_t k = utf8proc_map((const utf8proc_uint8_t *)s + i0,
                                              (utf8proc_ssize_t)(i - i0), &m,
                                              UTF8PROC_STABLE | UTF8PROC_COMPOSE | UTF8PROC_COMPAT);
            if (k > 0)
                sb_put(out, (const char *)m, (size_t)k);
            else
                sb_put(out, s + i0, i - i0);
            free(m);
        } else {
            sb_put(out, s + i0, i - i0);
        }
    }
}

static void uncurl_quotes(const char *s, size_t n, sbuf *out) {
    for (size_t i = 0; i < n;) {
        size_t i0 = i;
        uint32_t c = u8_next(s, &i);
        if (c == 0x2BC || (c >= 0x2018 && c <= 0x201B))
            sb_putc(out, '\'');
        else if (c >= 0x201C && c <= 0x201F)
            sb_putc(out, '"');
        else
            sb_put(out, s + i0, i - i0);
    }
}

static void fix_line_breaks(const char *s, size_t n, sbuf *out) {
    for (size_t i = 0; i < n;) {
        size_t i0 = i;
        uint32_t c = u8_next(s, &i);
        if (c == '\r') {
            if (i < n && s[i] == '\n') i++;
            sb_putc(out, '\n');
        } else if (c == 0x2028 || c == 0x2029 || c == 0x85) {
            sb_putc(out, '\n');
        } else {
            sb_put(out, s + i0, i - i0);
        }
    }
}

/* ANSI escapes: ESC [ (decimal digit | ;)* letter, where "decimal digit" is any Nd. */
static void remove_terminal_escapes(const char *s, size_t n, sbuf *out) {
    size_t i = 0;
    while (i < n) {
        if (s[i] == 0x1B && i + 1 < n && s[i + 1] == '[') {
            size_t j = i + 2;
            while (j < n) {
                size_t k = j;
                uint32_t c = u8_next(s, &k);
                if (c == ';' || category(c) == UTF8PROC_CATEGORY_ND)
                    j = k;
                else
                    break;
            }
            if (j < n && ((s[j] >= 'a' && s[j] <= 'z') || (s[j] >= 'A' && s[j] <= 'Z'))) {
                i = j + 1;
                continue;
            }
        }
        sb_putc(out, s[i]);
        i++;
    }
}

static void remove_control_chars(const char *s, size_t n, sbuf *out) {
    for (size_t i = 0; i < n;) {
        size_t i0 = i;
        uint32_t c = u8_next(s, &i);
        if (c <= 0x08 || c == 0x0B || (c >= 0x0E && c <= 0x1F) || c == 0x7F ||
            (c >= 0x206A && c <= 0x206F) || c == 0xFEFF || (c >= 0xFFF9 && c <= 0xFFFC))
            continue;
        sb_put(out, s + i0, i - i0);
    }
}

static void nfc(tctx *t, const char *s, size_t n, sbuf *out) {
    if (n == 0) return;
    if (is_ascii(s, n)) {
        sb_put(out, s, n);
        return;
    }
    utf8proc_uint8_t *m = NULL;
    utf8proc_ssize_t k = utf8proc_map((const utf8proc_uint8_t *)s, (utf8proc_ssize_t)n, &m,
                                      UTF8PROC_STABLE | UTF8PROC_COMPOSE);
    if (k < 0) {
        t->oom = 1; /* valid UTF-8 only fails here for lack of memory */
        sb_put(out, s, n);
    } else {
        sb_put(out, (const char *)m, (size_t)k);
    }
    free(m);
}

/* ---------------------------------------------------------------------------------------------
 * HTML character references. */

static const char *entity_find(const text_entity *tab, size_t count, const char *name,
                               size_t len) {
    size_t lo = 0, hi = count;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        const char *k = tab[mid].name;
        size_t kl = strlen(k);
        int c = memcmp(k, name, kl < len ? kl : len);
        if (c == 0) c = kl < len ? -1 : kl > len ? 1 : 0;
        if (c == 0) return tab[mid].value;
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

static int is_digit(char c) { return c >= '0' && c <= '9'; }
static int is_hex(char c) { return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'); }
static int is_alnum(char c) { return is_digit(c) || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }

/* What Python's html.unescape makes of a numeric reference to `num`. */
static void numeric_ref(uint64_t num, sbuf *out) {
    if (num == 0) {
        sb_put_cp(out, 0xFFFD);
    } else if (num == 0x0D) {
        sb_putc(out, '\r');
    } else if (num >= 0x80 && num <= 0x9F) {
        sb_put_cp(out, cp_decode(&CHARMAPS[CM_SLOPPY_1252], (unsigned)num));
    } else if ((num >= 0xD800 && num <= 0xDFFF) || num > 0x10FFFF) {
        sb_put_cp(out, 0xFFFD);
    } else if ((num >= 0x1 && num <= 0x8) || num == 0xB || (num >= 0xE && num <= 0x1F) ||
               num == 0x7F || (num >= 0xFDD0 && num <= 0xFDEF) || (num & 0xFFFE) == 0xFFFE) {
        /* "invalid code points" are dropped */
    } else {
        sb_put_cp(out, (uint32_t)num);
    }
}

/* Python's html.unescape: `&(#[0-9]+;?|#[xX][0-9a-fA-F]+;?|[^\t\n\f <&#;]{1,32};?)`, named
 * references looked up whole, then by their longest prefix that is a reference. */
static void html_unescape(const char *s, size_t n, sbuf *out) {
    size_t i = 0;
    while (i < n) {
        const char *amp = memchr(s + i, '&', n - i);
        if (!amp) {
            sb_put(out, s + i, n - i);
            break;
        }
        size_t a = (size_t)(amp - s);
        sb_put(out, s + i, a - i);
        size_t j = a + 1;
        if (j < n && s[j] == '#') {
            int hex = j + 1 < n && (s[j + 1] == 'x' || s[j + 1] == 'X');
            size_t d = j + 1 + (size_t)hex;
            if (!hex && j + 1 < n && is_digit(s[j + 1])) {
                d = j + 1;
            } else if (!(hex && d < n && is_hex(s[d]))) {
                sb_putc(out, '&');
                i = a + 1;
                continue;
            }
            uint64_t num = 0;
            size_t e = d;
            while (e < n && (hex ? is_hex(s[e]) : is_digit(s[e]))) {
                int v = is_digit(s[e]) ? s[e] - '0' : (s[e] | 0x20) - 'a' + 10;
                if (num <= 0x10FFFF) num = num * (hex ? 16 : 10) + (uint64_t)v;
                e++;
            }
            if (e < n && s[e] == ';') e++;
            numeric_ref(num, out);
            i = e;
            continue;
        }
        /* named: up to 32 characters other than \t \n \f space < & # ; */
        size_t e = j, count = 0;
        size_t bounds[34];
        while (e < n && count < 32) {
            size_t k = e;
            uint32_t c = u8_next(s, &k);
            if (c == '\t' || c == '\n' || c == '\f' || c == ' ' || c == '<' || c == '&' ||
                c == '#' || c == ';')
                break;
            bounds[count++] = e;
            e = k;
        }
        if (count == 0) {
            sb_putc(out, '&');
            i = a + 1;
            continue;
        }
        bounds[count] = e;
        size_t ncp = count;
        if (e < n && s[e] == ';') {
            e++;
            bounds[++ncp] = e;
        }
        const char *v = entity_find(text_html5, NELEM(text_html5), s + j, e - j);
        if (v) {
            sb_put(out, v, strlen(v));
        } else {
            size_t x;
            for (x = ncp - 1; x >= 2; x--) {
                v = entity_find(text_html5, NELEM(text_html5), s + j, bounds[x] - j);
                if (v) break;
            }
            if (v && ncp >= 3) {
                sb_put(out, v, strlen(v));
                sb_put(out, s + bounds[x], e - bounds[x]);
            } else {
                sb_put(out, s + a, e - a);
            }
        }
        i = e;
    }
}

/* ftfy's unescape_html: only `&#?[0-9A-Za-z]{1,24};`, looked up among the HTML5 names that
 * end in ';' and ftfy's all-caps spellings; numeric ones through html.unescape, kept as they
 * were unless that consumed the ';'. */
static void ftfy_unescape_html(const char *s, size_t n, sbuf *out) {
    size_t i = 0;
    while (i < n) {
        const char *amp = memchr(s + i, '&', n - i);
        if (!amp) {
            sb_put(out, s + i, n - i);
            break;
        }
        size_t a = (size_t)(amp - s);
        sb_put(out, s + i, a - i);
        size_t j = a + 1;
        int hash = j < n && s[j] == '#';
        size_t k = j + (size_t)hash, e = k;
        while (e < n && is_alnum(s[e])) e++;
        if (e == k || e - k > 24 || e >= n || s[e] != ';') {
            sb_putc(out, '&');
            i = a + 1;
            continue;
        }
        e++; /* the ';' */
        const char *v = NULL;
        if (!hash) {
            v = entity_find(text_html5, NELEM(text_html5), s + j, e - j);
            if (!v) v = entity_find(text_upper_entities, NELEM(text_upper_entities), s + j, e - j);
        }
        if (v) {
            sb_put(out, v, strlen(v));
        } else if (hash) {
            sbuf u = {0};
            html_unescape(s + a, e - a, &u);
            if (u.oom || memchr(u.p ? u.p : "", ';', u.n))
                sb_put(out, s + a, e - a);
            else
                sb_put(out, u.p, u.n);
            sb_free(&u);
        } else {
            sb_put(out, s + a, e - a);
        }
        i = e;
    }
}

/* ---------------------------------------------------------------------------------------------
 * fix_text. */

typedef void (*fixer_fn)(const char *, size_t, sbuf *);

static void apply(tctx *t, sbuf *cur, fixer_fn f) {
    sbuf next = {0};
    f(cur->p, cur->n, &next);
    if (next.oom) t->oom = 1;
    sb_free(cur);
    *cur = next;
}

/* fix_and_explain on one segment (a line with its '\n'), until it stops changing. */
static void fix_segment(tctx *t, const char *s, size_t n, int unescape, sbuf *out) {
    sbuf cur = {0};
    sb_put(&cur, s, n);
    /* ftfy loops until a fixed point; every pass so far has converged in two or three
     * rounds, the cap only keeps a pathological input from spinning. */
    for (int iter = 0; iter < 32 && !cur.oom && !t->oom; iter++) {
        sbuf orig = {0};
        sb_put(&orig, cur.p, cur.n);
        if (unescape) apply(t, &cur, ftfy_unescape_html);
        sbuf fixed = {0};
        fix_encoding(t, cur.p, cur.n, &fixed);
        sb_free(&cur);
        cur = fixed;
        apply(t, &cur, fix_c1_controls);
        apply(t, &cur, fix_latin_ligatures);
        apply(t, &cur, fix_character_width);
        apply(t, &cur, uncurl_quotes);
        apply(t, &cur, fix_line_breaks);
        apply(t, &cur, remove_terminal_escapes);
        apply(t, &cur, remove_control_chars);
        sbuf norm = {0};
        nfc(t, cur.p, cur.n, &norm);
        sb_free(&cur);
        cur = norm;
        int same = cur.n == orig.n && (cur.n == 0 || !memcmp(cur.p, orig.p, cur.n));
        if (orig.oom || cur.oom) t->oom = 1;
        sb_free(&orig);
        if (same) break;
    }
    if (cur.oom) t->oom = 1;
    sb_put(out, cur.p, cur.n);
    sb_free(&cur);
}

/* ftfy.fix_text: segments end after each '\n' (or every 1,000,000 characters); HTML
 * unescaping stays off from the first segment that holds a '<' on. */
static void fix_text(tctx *t, const char *s, size_t n, sbuf *out) {
    const size_t max_decode_length = 1000000;
    int unescape = 1;
    size_t pos = 0;
    while (pos < n && !t->oom) {
        const char *nl = memchr(s + pos, '\n', n - pos);
        size_t end = nl ? (size_t)(nl - s) + 1 : n;
        size_t k = pos, count = 0;
        while (k < end && count < max_decode_length) {
            u8_next(s, &k);
            count++;
        }
        end = k;
        if (memchr(s + pos, '<', end - pos)) unescape = 0;
        fix_segment(t, s + pos, end - pos, unescape, out);
        pos = end;
    }
}

/* ---------------------------------------------------------------------------------------------
 * Whitespace and case. */

static void strip_space(const char *s, size_t n, size_t *a, size_t *b) {
    size_t i = 0, start = 0, end = 0;
    int seen = 0;
    while (i < n) {
        size_t i0 = i;
        uint32_t c = u8_next(s, &i);
        if (!py_isspace(c)) {
            if (!seen) start = i0;
            seen = 1;
            end = i;
        }
    }
    *a = seen ? start : 0;
    *b = seen ? end : 0;
}

/* regex.sub(r'\s+', ' ', t).strip() */
static void whitespace_clean(const char *s, size_t n, sbuf *out) {
    sbuf tmp = {0};
    int in_space = 0;
    for (size_t i = 0; i < n;) {
        size_t i0 = i;
        uint32_t c = u8_next(s, &i);
        if (white_space(c)) {
            if (!in_space) sb_putc(&tmp, ' ');
            in_space = 1;
        } else {
            sb_put(&tmp, s + i0, i - i0);
            in_space = 0;
        }
    }
    size_t a, b;
    const char *t = tmp.p ? tmp.p : "";
    strip_space(t, tmp.n, &a, &b);
    sb_put(out, t + a, b - a);
    if (tmp.oom) out->oom = 1;
    sb_free(&tmp);
}

/* Python's str.lower(): full lower-case mapping (U+0130 becomes "i" + U+0307) and the
 * Final_Sigma rule for U+03A3; everything else is the simple mapping. */
static void py_lower(const char *s, size_t n, sbuf *out) {
    if (is_ascii(s, n)) {
        sb_reserve(out, n);
        if (out->oom) return;
        for (size_t i = 0; i < n; i++) {
            char c = s[i];
            out->p[out->n++] = (c >= 'A' && c <= 'Z') ? (char)(c + 32) : c;
        }
        out->p[out->n] = 0;
        return;
    }
    size_t count = u8_count(s, n);
    uint32_t *cp = malloc((count ? count : 1) * sizeof *cp);
    if (!cp) {
        out->oom = 1;
        return;
    }
    for (size_t i = 0, k = 0; i < n;) cp[k++] = u8_next(s, &i);
    for (size_t k = 0; k < count; k++) {
        uint32_t c = cp[k];
        if (c == 0x130) {
            sb_put(out, "i\xcc\x87", 3);
        } else if (c == 0x3A3) {
            /* final if preceded by a cased letter and not followed by one, skipping
             * case-ignorable characters on both sides */
            size_t j = k;
            while (j > 0 && is_case_ignorable(cp[j - 1])) j--;
            int final_sigma = j > 0 && is_cased(cp[j - 1]);
            if (final_sigma) {
                j = k + 1;
                while (j < count && is_case_ignorable(cp[j])) j++;
                final_sigma = j == count || !is_cased(cp[j]);
            }
            sb_put_cp(out, final_sigma ? 0x3C2 : 0x3C3);
        } else {
            sb_put_cp(out, (uint32_t)utf8proc_tolower((utf8proc_int32_t)c));
        }
    }
    free(cp);
}

/* ---------------------------------------------------------------------------------------------
 * Public entry points. */

static int begin(const char *text, size_t len, tctx *t, pbw_err *err) {
    memset(t, 0, sizeof *t);
    pthread_once(&g_text_once, text_init);
    if (g_text.error[0]) return pbw_err_set(err, "text cleaning: bad built-in %s", g_text.error);
    size_t bad;
    if (pbw_utf8_check(text, len, &bad) != 0)
        return pbw_err_set(err, "text is not valid UTF-8 (byte 0x%02x at offset %zu)",
                           (unsigned char)text[bad], bad);
    t->md = pcre2_match_data_create(4, NULL);
    if (!t->md) return pbw_err_set(err, "text cleaning: out of memory");
    return 0;
}

static int end(tctx *t, sbuf *b, char **out, size_t *out_len, pbw_err *err) {
    pcre2_match_data_free(t->md);
    if (t->oom) b->oom = 1;
    return sb_finish(b, out, out_len, err);
}

int pbw_text_fix(const char *text, size_t len, char **out, size_t *out_len, pbw_err *err) {
    tctx t;
    if (begin(text, len, &t, err)) return -1;
    sbuf b = {0};
    fix_text(&t, text, len, &b);
    return end(&t, &b, out, out_len, err);
}

int pbw_text_html_unescape(const char *text, size_t len, char **out, size_t *out_len,
                           pbw_err *err) {
    tctx t;
    if (begin(text, len, &t, err)) return -1;
    sbuf b = {0};
    html_unescape(text, len, &b);
    return end(&t, &b, out, out_len, err);
}

int pbw_text_lower(const char *text, size_t len, char **out, size_t *out_len, pbw_err *err) {
    tctx t;
    if (begin(text, len, &t, err)) return -1;
    sbuf b = {0};
    py_lower(text, len, &b);
    return end(&t, &b, out, out_len, err);
}

int pbw_text_clean(const char *text, size_t len, char **out, size_t *out_len, pbw_err *err) {
    tctx t;
    if (begin(text, len, &t, err)) return -1;
    sbuf a = {0}, b = {0};
    fix_text(&t, text, len, &a);
    html_unescape(a.p, a.n, &b);
    sb_free(&a);
    html_unescape(b.p, b.n, &a);
    sb_free(&b);
    size_t s0, s1;
    const char *ap = a.p ? a.p : "";
    strip_space(ap, a.n, &s0, &s1);
    whitespace_clean(ap + s0, s1 - s0, &b);
    if (a.oom) b.oom = 1;
    sb_free(&a);
    py_lower(b.p, b.n, &a);
    if (b.oom) a.oom = 1;
    sb_free(&b);
    return end(&t, &a, out, out_len, err);
}
