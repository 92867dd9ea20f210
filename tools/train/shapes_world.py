"""shapes_world.py: the shapes world for Python training scripts, rendered by pbw's own C code.

The renderer and captions are src/models/pbw_shapes.c (libc + libm only), compiled into a
shared library and called through ctypes, so the training images are exactly the pixels that
`pbw shapes` writes: nothing of the world is re-implemented here.

    import shapes_world as sw
    rgb, scenes = sw.render(seed=0, first=0, n=1000, size=64)  # uint8 (n,64,64,3), list of dicts
    ids = sw.Tokens("models/shapes/clip").encode("a red circle")  # CLIP ids, start/end included

The library is $PBW_SHAPES_LIB when set, else build/libpbw_shapes.so, compiled there with `cc`
when missing or older than the sources (one second).
"""
import ctypes
import json
import os
import subprocess
import tempfile
from concurrent.futures import ProcessPoolExecutor

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SRCS = [os.path.join(ROOT, "src", "models", f) for f in ("pbw_shapes.c", "pbw_shapes_check.c")]
JSON_STRIDE = 4096

SHAPES = ["circle", "square", "triangle", "star", "ring"]
COLOURS = ["red", "orange", "yellow", "green", "blue", "purple"]

_lib = None


class Blob(ctypes.Structure):
    """pbw_blob of src/models/pbw_shapes_check.h."""
    _fields_ = [("colour", ctypes.c_int), ("kind", ctypes.c_int), ("area", ctypes.c_int),
                ("holes", ctypes.c_int), ("x0", ctypes.c_int), ("y0", ctypes.c_int),
                ("x1", ctypes.c_int), ("y1", ctypes.c_int), ("cx", ctypes.c_float),
                ("cy", ctypes.c_float), ("fill", ctypes.c_float), ("solidity", ctypes.c_float),
                ("hole_frac", ctypes.c_float), ("in_mask", ctypes.c_int)]


def find_shapes(rgb):
    """The checker (pbw_shapes_find) on one uint8 (H,W,3) image: a list of
    (colour name, shape name, area)."""
    lib = library()
    img = np.ascontiguousarray(rgb, dtype=np.uint8)
    out = (Blob * 16)()
    n = lib.pbw_shapes_find(img.ctypes.data, img.shape[1], img.shape[0], out, 16)
    if n < 0:
        raise RuntimeError("pbw_shapes_find failed")
    return [(COLOURS[b.colour], SHAPES[b.kind], b.area) for b in out[:min(n, 16)]]


def clean_fraction(images):
    """Fraction of uint8 (N,H,W,3) images in which the checker finds one to three shapes that
    hold at least 90% of the coloured pixels (what `pbw shapes gan-eval` calls clean)."""
    lib = library()
    ok = 0
    for im in images:
        blobs = find_shapes(im)
        mx, mn = im.max(-1).astype(int), im.min(-1).astype(int)
        chroma = int(((mx - mn) >= 48).sum())
        inside = sum(b[2] for b in blobs)
        ok += 1 <= len(blobs) <= 3 and (chroma == 0 or inside >= 0.9 * chroma)
    del lib
    return ok / max(1, len(images))


def library():
    global _lib
    if _lib is not None:
        return _lib
    path = os.environ.get("PBW_SHAPES_LIB", "")  # used as is when given
    if not path:
        path = os.path.join(ROOT, "build", "libpbw_shapes.so")
        if not os.path.exists(path) or os.path.getmtime(path) < max(os.path.getmtime(s) for s in SRCS):
            try:
                os.makedirs(os.path.dirname(path), exist_ok=True)
            except OSError:
                path = os.path.join(tempfile.mkdtemp(), "libpbw_shapes.so")
            subprocess.check_call(["cc", "-O2", "-std=c11", "-shared", "-fPIC", *SRCS, "-lm", "-o", path])
    lib = ctypes.CDLL(path)
    lib.pbw_shapes_render_batch.argtypes = [ctypes.c_uint64, ctypes.c_int64, ctypes.c_int64,
                                            ctypes.c_int, ctypes.c_void_p, ctypes.c_char_p,
                                            ctypes.c_size_t]
    lib.pbw_shapes_render_batch.restype = ctypes.c_int
    lib.pbw_shapes_find.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int,
                                    ctypes.POINTER(Blob), ctypes.c_int]
    lib.pbw_shapes_find.restype = ctypes.c_int
    _lib = lib
    return lib


def _render_chunk(args):
    seed, first, n, size, want_json = args
    lib = library()
    rgb = np.empty((n, size, size, 3), np.uint8)
    buf = ctypes.create_string_buffer(n * JSON_STRIDE) if want_json else None
    rc = lib.pbw_shapes_render_batch(seed, first, n, size, rgb.ctypes.data, buf, JSON_STRIDE)
    if rc:
        raise RuntimeError("pbw_shapes_render_batch failed")
    scenes = []
    if want_json:
        raw = buf.raw
        for i in range(n):
            row = raw[i * JSON_STRIDE:(i + 1) * JSON_STRIDE]
            scenes.append(json.loads(row[:row.index(b"\0")].decode()))
    return rgb, scenes


def render(seed, first, n, size=64, scenes=True, workers=None, chunk=2000):
    """Scenes first..first+n-1 of dataset `seed`: uint8 (n,size,size,3) and their JSON dicts."""
    library()  # compile once, before any worker needs it
    jobs = [(seed, first + s, min(chunk, n - s), size, scenes) for s in range(0, n, chunk)]
    if workers == 1 or len(jobs) == 1:
        parts = [_render_chunk(j) for j in jobs]
    else:
        with ProcessPoolExecutor(max_workers=workers or min(16, os.cpu_count() or 1)) as ex:
            parts = list(ex.map(_render_chunk, jobs))
    rgb = np.concatenate([p[0] for p in parts])
    return rgb, [s for p in parts for s in p[1]]


class Tokens:
    """CLIP ids of the world's captions from a word table made by pbw's own tokenizer.

    Captions are lower-case words separated by single spaces, with ", " between shapes. CLIP's
    pre-tokenizer splits them into those words and ','; BPE works on one word at a time, so a
    caption's ids are the start id, each piece's ids in order, and the end id. The table
    (word -> ids) is written by tools/train/bpe_vocab.py with `pbw tokenize`, and that script
    checks this rule against `pbw tokenize` on whole captions."""

    def __init__(self, table_path):
        with open(table_path) as f:
            t = json.load(f)
        self.words = t["words"]
        self.sot, self.eot = t["start"], t["end"]

    def encode(self, text, context=77):
        ids = [self.sot]
        for w in text.replace(",", " , ").split():
            ids += self.words[w]
        ids.append(self.eot)
        if len(ids) > context:
            ids = ids[:context - 1] + [self.eot]
        return ids + [0] * (context - len(ids))
