#!/usr/bin/env python3
"""Writes tests/fixtures/tokenizer/extra_cases.jsonl: CLIP token ids of varied, awkward texts
(mojibake in many code pages, HTML entities, Greek sigma, dotted I, control characters,
width forms, ligatures, long words...), for tests/test_tokenizer.c.

Each line: {"text": ..., "clean": <text after CLIP's cleaning>, "ids": [...]}.

The ids come from a line-for-line port of OpenAI CLIP's simple_tokenizer.py below, which uses
ftfy and the `regex` module like the original:

    pip install ftfy regex
    python3 tools/make_tokenizer_cases.py

The file is UTF-8 with non-ASCII characters written as they are: json-c 0.16 decodes the
escaped surrogate pairs of code points U+xD800..U+xDFFF (x >= 1) as U+FFFD.
Deterministic for given versions of ftfy / regex / Python. Characters that Python's
unicodedata lists as unassigned are kept out, because PCRE2 and `regex` may be built on
different Unicode versions and disagree about them (see src/models/pbw_tokenizer.c).
"""
import gzip
import html
import html.entities
import json
import os
import random
import sys
import unicodedata

import ftfy
import ftfy.bad_codecs  # noqa: F401  (registers the sloppy-* codecs used to make mojibake)
import regex

HERE = os.path.dirname(os.path.abspath(__file__))
VOCAB = os.path.join(HERE, "..", "..", "shared", "data", "clip", "bpe_simple_vocab_16e6.txt.gz")
OUT = os.path.join(HERE, "..", "tests", "fixtures", "tokenizer", "extra_cases.jsonl")


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def clip_clean(text):
    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    text = regex.sub(r"\s+", " ", text).strip()
    return text.lower()


class ClipTokenizer:
    def __init__(self, path):
        self.byte_encoder = bytes_to_unicode()
        merges = gzip.open(path).read().decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]
        merges = [tuple(m.split()) for m in merges]
        vocab = list(self.byte_encoder.values())
        vocab = vocab + [v + "</w>" for v in vocab]
        vocab += ["".join(m) for m in merges]
        vocab += ["<|startoftext|>", "<|endoftext|>"]
        self.encoder = dict(zip(vocab, range(len(vocab))))
        self.ranks = dict(zip(merges, range(len(merges))))
        self.cache = {"<|startoftext|>": "<|startoftext|>", "<|endoftext|>": "<|endoftext|>"}
        self.pat = regex.compile(r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|"""
                                 r"""[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""", regex.IGNORECASE)

    def bpe(self, token):
        if token in self.cache:
            return self.cache[token]
        word = tuple(token[:-1]) + (token[-1] + "</w>",)
        pairs = set(zip(word, word[1:]))
        if not pairs:
            return token + "</w>"
        while True:
            first, second = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if (first, second) not in self.ranks:
                break
            out, i = [], 0
            while i < len(word):
                try:
                    j = word.index(first, i)
                except ValueError:
                    out.extend(word[i:])
                    break
                out.extend(word[i:j])
                i = j
                if word[i] == first and i < len(word) - 1 and word[i + 1] == second:
                    out.append(first + second)
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            word = tuple(out)
            if len(word) == 1:
                break
            pairs = set(zip(word, word[1:]))
        self.cache[token] = " ".join(word)
        return self.cache[token]

    def encode(self, text):
        ids = [49406]
        for token in regex.findall(self.pat, clip_clean(text)):
            token = "".join(self.byte_encoder[b] for b in token.encode("utf-8"))
            ids.extend(self.encoder[t] for t in self.bpe(token).split(" "))
        return ids + [49407]


FIXED = [
    "ΟΔΥΣΣΕΥΣ", "ΑΣ.", "ΑΣ'Β", "Σ", "ΑΣ Σ", "İstanbul İİ", "ſ's K", "ǅemal ǈubljana ǋ",
    "Ĳssel ŉ ﬅ ﬆ ﬃ", "Ｆｕｌｌ　ｗｉｄｔｈ ｶﾀｶﾅ ￦", "\x1b[36;44mblue\x1b[0m \x1b[1mbold",
    "Broken text&hellip; it&#x2019;s ﬂubberiﬁc!", "P&EACUTE;REZ &ntilde; &Ntilde; &NTILDE; &nTILDE;",
    "&SZLIG; &AMP; &amp;amp; &ampfoo; &amp &lt3 &notit; &notin; &#65&#66; &#x41;&#X42;",
    "&#0; &#1; &#13; &#128; &#129; &#150; &#x110000; &#xD800; &#65535; &#9999999999;",
    "<b>bold</b> &amp; more\n&eacute; on the next line", "a &eacute;\n<i>x</i>\n&eacute;",
    "Ã¢â‚¬Å“quotedÃ¢â‚¬Â", "â€œquotedâ€\x9d", "â€œ like this â€�", "Ã la mode", "voilÃ le travail",
    "sÃ³", "l'Ã©tÃ©", "Ð”Ð¾Ð±Ñ€Ð¾ Ð¿Ð¾Ð¶Ð°Ð»Ð¾Ð²Ð°Ñ‚ÑŒ", "&macr;\\_(ã\x83\x84)_/&macr;",
    "ðŸ˜€ ðŸ¶", "í ½í¸€", "\xc3\xa0\xc2\xb2\xc2\xa0", "Ã¡rbol", "PÃ¨re NoÃ«l", "Ã\xa0 bientÃ´t",
    "âœ” No problems", "schÃ¶n", "cafÃ\u0083Â©", "Ã\x83Â©", "\x80\x81\x85\x9f", "x\x85y",
    "line\u2028sep\u2029para", "tab\tcr\rcrlf\r\nff\x0cvt\x0bend", "\ufeffbom \u200b zw \u2060 wj",
    "\u206a\ufff9\ufffc", "a\x00b\x01c\x7fd", "don't I'LL we'Ve they'RE it'S 'd 'm",
    "100% ½ ¾ ² ³ ⁴ ① ⅻ ٣ ३", "e\u0301 a\u0308 n\u0303 \u1e9b\u0323", "\U0001F469\u200d\U0001F4BB \U0001F1EB\U0001F1F7",
    "한국어 日本語 中文 ภาษาไทย हिन्दी العربية עברית", "x" * 300, "ab" * 200 + "!" * 50,
    "<|startoftext|><|ENDOFTEXT|>text<|endoftext|>", "   \t\n  ", "",
]

WORDS = ["café", "naïve", "crème brûlée", "Zürich", "Łódź", "İstanbul", "ΟΔΥΣΣΕΥΣ", "Σίσυφος",
         "Москва", "東京", "😀", "señor", "façade", "déjà vu", "smörgåsbord", "Ærøskøbing", "–", "—",
         "“quote”", "‘x’", "…", "€100", "™", "©", "½", "x²", "ﬁ", "ＡＢＣ", "ｶﾀｶﾅ", "ß", "hello",
         "a photo of", "it's", "we'll", "<b>", "&", "Ã", "Â", "à la", "Ø", "العربية", "हिन्दी",
         "\u00a0", "\u2028", "\x85", "\x1b[31m", "\r\n", "ΑΣ.", "$3.50", "ſ's", "\u0130", "ͅ"]
ENCODINGS = ["latin-1", "sloppy-windows-1252", "sloppy-windows-1251", "sloppy-windows-1250",
             "sloppy-windows-1253", "sloppy-windows-1254", "sloppy-windows-1257", "iso-8859-2",
             "macroman", "cp437", "windows-1252", "cp850"]


def assigned(c):
    return not 0xD800 <= c <= 0xDFFF and unicodedata.category(chr(c)) != "Cn"


def random_texts(rng, count):
    names = sorted(html.entities.html5)

    def moji(s):
        try:
            return s.encode("utf-8").decode(rng.choice(ENCODINGS), errors=rng.choice(["replace", "strict"]))
        except UnicodeError:
            return s

    def char():
        lo, hi = rng.choice([(0x20, 0x7E), (0x80, 0x24F), (0x370, 0x4FF), (0x2000, 0x2100),
                             (0, 0x1F), (0xFF00, 0xFFEF), (0x2500, 0x25FF), (0x300, 0x36F),
                             (0x1F300, 0x1F6FF), (0, 0x10FFFF)])
        while True:
            c = rng.randint(lo, hi)
            if assigned(c):
                return chr(c)

    def entity():
        r = rng.random()
        if r < 0.4:
            return "&" + rng.choice(names)
        if r < 0.5:
            return "&" + rng.choice(names).upper()
        while True:
            c = rng.choice([rng.randint(0, 300), rng.randint(0x80, 0x9F), rng.randint(0, 0x10FFFF)])
            if assigned(c) or c < 0x100:
                break
        return rng.choice(["&#%d", "&#x%x", "&#X%X"]) % c + rng.choice([";", "", ";x"])

    def piece():
        r = rng.random()
        if r < 0.35:
            return rng.choice(WORDS)
        if r < 0.6:
            return moji(rng.choice(WORDS) + rng.choice(["", " ", rng.choice(WORDS)]))
        if r < 0.7:
            return moji(moji(rng.choice(WORDS)))
        if r < 0.85:
            return entity()
        return "".join(char() for _ in range(rng.randint(1, 5)))

    return [rng.choice(["", " ", "\n"]).join(piece() for _ in range(rng.randint(1, 5)))
            for _ in range(count)]


def main():
    if not os.path.exists(VOCAB):
        sys.exit("missing " + VOCAB)
    tok = ClipTokenizer(VOCAB)
    rng = random.Random(20240611)
    texts = FIXED + random_texts(rng, 600)
    with open(OUT, "w", encoding="utf-8") as f:
        for t in texts:
            f.write(json.dumps({"text": t, "clean": clip_clean(t), "ids": tok.encode(t)},
                               ensure_ascii=False) + "\n")
    print("wrote", OUT, len(texts), "cases (ftfy %s, regex %s, Python %s)" % (
        ftfy.__version__, regex.__version__, sys.version.split()[0]))


if __name__ == "__main__":
    main()
