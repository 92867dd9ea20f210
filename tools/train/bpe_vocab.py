#!/usr/bin/env python3
"""bpe_vocab.py: trains the shapes CLIP's byte-level BPE vocabulary on the world's captions.

    tools/train/bpe_vocab.py OUTDIR [--scenes 20000] [--pbw build/pbw]

Writes OUTDIR/vocab.json and OUTDIR/merges.txt in CLIP's layout (what transformers'
CLIPTokenizer and pbw_tokenizer_load read): ids 0-255 are the 256 bytes as GPT-2/CLIP's
printable stand-ins, 256-511 the same with the word-end marker "</w>", then one id per merge in
the order learned, then <|startoftext|> and <|endoftext|>. The merges are learned as BPE does,
on the words of the captions of `--scenes` scenes (every level of detail, each shape's
captions too) weighted by frequency: the most frequent adjacent pair first (ties broken by the
pair's text, so the result is reproducible), until every word is one symbol.

Then it asks pbw itself (`pbw tokenize`) for the ids of every caption word and of ',' and
writes OUTDIR/word_ids.json (what tools/train/shapes_world.Tokens uses on the GPU machine,
which has no pbw), and checks that rule against `pbw tokenize` on 500 whole captions.
Needs only Python's standard library, numpy and a built pbw.
"""
import argparse
import collections
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import shapes_world as sw  # noqa: E402


def bytes_to_unicode():
    """CLIP's (GPT-2's) reversible map from bytes to printable characters."""
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


def caption_texts(scenes):
    for s in scenes:
        yield from s["captions"]
        for sh in s["shapes"]:
            yield from sh["captions"]


def words_of(text):
    return text.replace(",", " , ").split()


def learn(freq):
    """freq: {word: count}. Returns the merges (pairs of symbols) in order."""
    b2u = bytes_to_unicode()
    words = {w: [b2u[b] for b in w.encode()] for w in freq}
    for w in words:
        words[w][-1] += "</w>"
    merges = []
    while True:
        pairs = collections.Counter()
        for w, syms in words.items():
            for a, b in zip(syms, syms[1:]):
                pairs[(a, b)] += freq[w]
        if not pairs:
            return merges
        best = min(pairs.items(), key=lambda kv: (-kv[1], kv[0]))[0]
        merges.append(best)
        for w, syms in words.items():
            out, i = [], 0
            while i < len(syms):
                if i + 1 < len(syms) and (syms[i], syms[i + 1]) == best:
                    out.append(syms[i] + syms[i + 1])
                    i += 2
                else:
                    out.append(syms[i])
                    i += 1
            words[w] = out


def pbw_tokenize(pbw, vocab_dir, texts):
    out = []
    for s in range(0, len(texts), 200):
        r = subprocess.run([pbw, "tokenize", "--vocab", vocab_dir, *texts[s:s + 200]],
                           check=True, capture_output=True, text=True)
        out += [json.loads(line) for line in r.stdout.splitlines() if line.strip()]
    assert len(out) == len(texts), (len(out), len(texts))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out")
    ap.add_argument("--scenes", type=int, default=20000)
    ap.add_argument("--pbw", default=os.path.join(sw.ROOT, "build", "pbw"))
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    _, scenes = sw.render(seed=0, first=0, n=args.scenes, size=64, workers=1)
    freq = collections.Counter(w for t in caption_texts(scenes) for w in words_of(t))
    merges = learn(freq)
    b2u = bytes_to_unicode()
    vocab = list(b2u.values())
    vocab += [v + "</w>" for v in vocab]
    vocab += ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    assert len(set(vocab)) == len(vocab)
    with open(os.path.join(args.out, "vocab.json"), "w") as f:
        json.dump({t: i for i, t in enumerate(vocab)}, f, ensure_ascii=False)
    with open(os.path.join(args.out, "merges.txt"), "w") as f:
        f.write("#version: 0.2 - the shapes world's captions (tools/train/bpe_vocab.py)\n")
        for a, b in merges:
            f.write(f"{a} {b}\n")
    print(f"{len(freq)} words, {sum(freq.values())} occurrences, {len(merges)} merges, "
          f"vocabulary of {len(vocab)}")

    words = sorted(freq)
    ids = pbw_tokenize(args.pbw, args.out, words)
    sot, eot = len(vocab) - 2, len(vocab) - 1
    table = {"start": sot, "end": eot, "vocab_size": len(vocab), "words": {}}
    for w, row in zip(words, ids):
        assert row[0] == sot and row[-1] == eot, (w, row)
        table["words"][w] = row[1:-1]
    with open(os.path.join(args.out, "word_ids.json"), "w") as f:
        json.dump(table, f, indent=0, sort_keys=True)
    tok = sw.Tokens(os.path.join(args.out, "word_ids.json"))
    texts = list(dict.fromkeys(caption_texts(scenes[:300])))[:500]
    ref = pbw_tokenize(args.pbw, args.out, texts)
    bad = [t for t, r in zip(texts, ref) if tok.encode(t)[:len(r)] != r]
    if bad:
        sys.exit(f"word table disagrees with pbw tokenize on {len(bad)} captions, e.g. {bad[0]!r}")
    longest = max(len(r) for r in ref)
    print(f"word table checked against pbw tokenize on {len(texts)} captions (longest {longest} ids)")
    for w in ("a", "an", "red", "triangle", "background", ","):
        print(f"  {w!r}: {table['words'][w]}")


if __name__ == "__main__":
    main()
