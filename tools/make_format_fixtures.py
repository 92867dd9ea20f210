#!/usr/bin/python3
"""Writes the small checkpoint, array and image files that tests/test_formats.c and
tests/test_images.c read, plus the ground truth they are compared with.

Run with Debian's Python (torch 1.13, numpy, PIL):  /usr/bin/python3 tools/make_format_fixtures.py
Output: tests/fixtures/formats/ (a few KB). Values are deterministic (fixed seeds); the legacy
files embed storage ids (memory addresses), so their bytes change from run to run.

  state_zip.pt, state_legacy.pt   one nested state dict saved by torch.save in both formats
  state.safetensors               its tensors (contiguous), written here without the package
  expected/manifest.txt           one line per tensor: name dtype ndim dims..., per scalar:
                                  "scalar name int|float value"; values in expected/<name>.npy
  state_archive.pt                the same saved through a file object (zip prefix "archive")
  state_deflate.pt                state_zip.pt re-zipped by Python with deflate compression
  state_bigendian.pt              state_zip.pt plus a "byteorder" entry saying "big" (refused)
  tensor_only.pt                  torch.save of a bare tensor (one record named "")
  train_ckpt.pt                   a training checkpoint with an argparse.Namespace `args`
  jit_module.pt, jit_state.pt     a traced TorchScript module (torch.jit.save) and its
                                  state_dict saved by torch.save: both must give one set of records
  evil_zip.pt, evil_legacy.pt     a pickle whose global is posix.system (must be refused)
  array_*.npy                     .npy files of several kinds
  img_*.png, img_*.jpg            images; img_*.npy hold their pixels as decoded by PIL
"""
import argparse
import io
import os
import json
import struct
import zipfile
from collections import OrderedDict

import numpy as np
import torch
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "tests", "fixtures", "formats")
EXP = os.path.join(OUT, "expected")


def state_dict():
    g = torch.Generator().manual_seed(0)
    rn = lambda *s: torch.randn(*s, generator=g)
    big = rn(4, 6)
    latent = rn(8)
    obj = OrderedDict()
    obj["g_ema"] = OrderedDict(
        convs=[
            OrderedDict(conv=OrderedDict(weight=rn(4, 3, 3, 3), bias=rn(4))),
            OrderedDict(conv=OrderedDict(weight=rn(2, 4, 1, 1))),
        ],
        style={"weight_t": rn(5, 3).t()},  # non-contiguous: strides (1, 3)
    )
    obj["half"] = rn(3, 5).half()
    obj["bf16"] = rn(7).bfloat16()
    obj["ids"] = torch.arange(6, dtype=torch.int64).reshape(2, 3)
    obj["mask"] = torch.tensor([True, False, True])
    obj["scalar_tensor"] = torch.tensor(3.5)
    obj["latent_avg"] = latent
    obj["tied"] = latent  # the same tensor under two names
    obj["empty"] = torch.zeros(0, 4)
    obj["slice"] = big[1:3, 2:5]  # storage offset and non-contiguous
    obj["param"] = torch.nn.Parameter(rn(3))
    obj["step"] = 1234
    obj["lr"] = 0.002
    obj["nested"] = [1, 2.5, [3, rn(2, 2)]]
    obj["name"] = "hello"
    obj["flag"] = True
    obj["nothing"] = None
    return obj


def flatten(obj, prefix=""):
    """The records pbw must produce: (name, tensor) and (name, scalar)."""
    tensors, scalars = [], []
    items = obj.items() if isinstance(obj, dict) else enumerate(obj)
    for k, v in items:
        name = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, torch.Tensor):
            tensors.append((name, v.detach()))
        elif isinstance(v, (dict, list, tuple)):
            t, s = flatten(v, name)
            tensors += t
            scalars += s
        elif isinstance(v, bool) or v is None or isinstance(v, str):
            pass
        elif isinstance(v, (int, float)):
            scalars.append((name, v))
    return tensors, scalars


ST_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
             torch.float64: "F64", torch.int64: "I64", torch.int32: "I32", torch.int16: "I16",
             torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL"}
PBW_DTYPES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16",
              torch.int64: "int64", torch.bool: "bool"}


def raw_bytes(t):
    t = t.contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().tobytes()
    return t.numpy().tobytes()


def write_safetensors(path, tensors):
    header, blobs, off = {}, [], 0
    for name, t in tensors:
        b = raw_bytes(t)
        header[name] = {"dtype": ST_DTYPES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    header["__metadata__"] = {"format": "pt", "note": "written by make_format_fixtures.py"}
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


class TinyNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Parameter(torch.randn(2, 3))
        self.seq = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.LayerNorm(3))
        self.register_buffer("scale", torch.tensor([0.5, 2.0, 4.0]))

    def forward(self, x):
        return self.seq(x @ self.proj) * self.scale


def torchscript():
    torch.manual_seed(5)
    net = TinyNet()
    traced = torch.jit.trace(net, torch.randn(1, 2))
    traced.save(os.path.join(OUT, "jit_module.pt"))
    torch.save(net.state_dict(), os.path.join(OUT, "jit_state.pt"))


class Evil:
    """Unpickling this with Python would run a shell command. pbw must refuse it."""

    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/pbw_pickle_pwned",))


def images():
    rng = np.random.RandomState(3)
    rgb = rng.randint(0, 256, (5, 7, 3)).astype(np.uint8)
    rgba = rng.randint(0, 256, (4, 6, 4)).astype(np.uint8)
    gray16 = rng.randint(0, 65536, (3, 5)).astype(np.uint16)
    smooth = np.zeros((16, 24, 3), np.uint8)  # JPEG-friendly: smooth gradients
    yy, xx = np.mgrid[0:16, 0:24]
    smooth[..., 0] = xx * 10
    smooth[..., 1] = yy * 15
    smooth[..., 2] = 128
    Image.fromarray(rgb).save(os.path.join(OUT, "img_rgb.png"))
    Image.fromarray(rgba).save(os.path.join(OUT, "img_rgba.png"))
    Image.fromarray(rgb).convert("P", palette=Image.ADAPTIVE, colors=8).save(
        os.path.join(OUT, "img_palette.png"))
    Image.fromarray(gray16, mode="I;16").save(os.path.join(OUT, "img_gray16.png"))
    Image.fromarray(smooth).save(os.path.join(OUT, "img_rgb.jpg"), quality=95)
    Image.fromarray(smooth[..., 0]).save(os.path.join(OUT, "img_gray.jpg"), quality=95)
    Image.fromarray(smooth).convert("CMYK").save(os.path.join(OUT, "img_cmyk.jpg"), quality=95)
    Image.fromarray(rgb).save(os.path.join(OUT, "img_interlaced.png"), interlace=1)
    # pixels as PIL decodes them (RGB or RGBA), float32 (our npy reader reads floats)
    for name in ["img_rgb.png", "img_rgba.png", "img_palette.png", "img_gray16.png",
                 "img_rgb.jpg", "img_gray.jpg", "img_cmyk.jpg", "img_interlaced.png"]:
        im = Image.open(os.path.join(OUT, name))
        if name == "img_gray16.png":  # 16-bit gray -> 8 bits by the high byte, as pbw does
            px = (np.asarray(im).astype(np.uint32) >> 8).astype(np.uint8)
            px = np.stack([px] * 3, -1)
        else:
            px = np.asarray(im.convert("RGBA" if "A" in im.getbands() or
                                       "transparency" in im.info else "RGB"))
        np.save(os.path.join(OUT, name.replace(".", "_") + ".npy"), px.astype(np.float32))


def main():
    os.makedirs(EXP, exist_ok=True)
    obj = state_dict()
    torch.save(obj, os.path.join(OUT, "state_zip.pt"))
    torch.save(obj, os.path.join(OUT, "state_legacy.pt"), _use_new_zipfile_serialization=False)
    buf = io.BytesIO()
    torch.save(obj, buf)
    with open(os.path.join(OUT, "state_archive.pt"), "wb") as f:
        f.write(buf.getvalue())
    with zipfile.ZipFile(os.path.join(OUT, "state_zip.pt")) as src:
        entries = [(i.filename, src.read(i)) for i in src.infolist()]
    for name, method, extra in [("state_deflate.pt", zipfile.ZIP_DEFLATED, None),
                                ("state_bigendian.pt", zipfile.ZIP_STORED, b"big")]:
        with zipfile.ZipFile(os.path.join(OUT, name), "w", method) as dst:
            for n, data in entries:
                dst.writestr(zipfile.ZipInfo(n, (1980, 1, 1, 0, 0, 0)), data, compress_type=method)
            if extra:
                dst.writestr(zipfile.ZipInfo("state_zip/byteorder", (1980, 1, 1, 0, 0, 0)), extra)
    tensors, scalars = flatten(obj)
    write_safetensors(os.path.join(OUT, "state.safetensors"), tensors)
    with open(os.path.join(EXP, "manifest.txt"), "w") as f:
        for name, t in tensors:
            f.write(f"tensor {name} {PBW_DTYPES[t.dtype]} {t.dim()} "
                    + " ".join(str(d) for d in t.shape) + "\n")
            np.save(os.path.join(EXP, name + ".npy"), np.array(t.float().numpy(), order="C"))
        for name, v in scalars:
            f.write(f"scalar {name} {'float' if isinstance(v, float) else 'int'} {v!r}\n")
    t = torch.arange(12, dtype=torch.float32).reshape(3, 4) / 4
    torch.save(t, os.path.join(OUT, "tensor_only.pt"))
    torch.save({"x": Evil()}, os.path.join(OUT, "evil_zip.pt"))
    torch.save({"x": Evil()}, os.path.join(OUT, "evil_legacy.pt"),
               _use_new_zipfile_serialization=False)
    # .npy: float32 in versions 1, 2 and 3, float64 and float16, and a Fortran-order one
    a = (np.arange(24, dtype=np.float32).reshape(2, 3, 4) - 5) / 8
    np.save(os.path.join(OUT, "array_f4.npy"), a)
    np.save(os.path.join(OUT, "array_f8.npy"), a.astype(np.float64))
    np.save(os.path.join(OUT, "array_f2.npy"), a.astype(np.float16))
    np.save(os.path.join(OUT, "array_scalar.npy"), np.float32(2.25))
    for v in [(2, 0), (3, 0)]:
        with open(os.path.join(OUT, f"array_v{v[0]}.npy"), "wb") as f:
            np.lib.format.write_array(f, a, version=v)
    np.save(os.path.join(OUT, "array_fortran.npy"), np.asfortranarray(a))
    images()
    torchscript()
    args = argparse.Namespace(size=256, lr=0.002, name="ffhq", channel_multiplier=2)
    torch.save({"g_ema": {"w": torch.ones(2)}, "args": args, "iter": 7},
               os.path.join(OUT, "train_ckpt.pt"))


if __name__ == "__main__":
    main()
