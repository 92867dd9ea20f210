#!/usr/bin/python3
"""Writes PyTorch reference outputs for the convolution and resampling ops, read by
tests/test_conv.c and tests/test_resample.c.

Run with Debian's Python (torch 1.13, numpy):  /usr/bin/python3 tools/make_op_fixtures.py
Output: tests/fixtures/ops/*.npy (float32, about 1.3 MB). Deterministic.

Inputs of the large resize cases are not stored: both sides compute them with ramp(), an integer
hash that float32 represents identically in C and NumPy:
    ramp(i, seed) = ((i * 2654435761 + seed * 40503) mod 2^32) / 2^32 - 0.5
Small inputs are stored beside the outputs (<case>_x.npy, _w.npy, _b.npy -> <case>_y.npy).

  resize_<case>_<mode>.npy  F.interpolate(ramp input, size, mode, align_corners=False)
  convt<k>_*                F.conv_transpose2d with stride, padding, output_padding, groups,
                            dilation as listed in CONVT
  conv<k>_*                 F.conv2d (grouped, strided, dilated) to pin the weight layout
  upfirdn<k>_*              StyleGAN2's upfirdn2d, as the reference's pure-PyTorch version
                            computes it (zero insertion, pad/crop, flipped-kernel conv2d, stride)
  blur<k>_*                 Gaussian blur: conv2d with the normalized outer-product kernel,
                            zero padding, one channel at a time
"""
import os

import numpy as np
import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "tests", "fixtures", "ops")

# name: (input shape, seed, output size). The crop case cuts rows 17..17+204, cols 40..40+204 of
# a 256x256 image (a CLIP crop of 0.8 of the side) and resizes it to 224.
RESIZE = {
    "up7x9": ((1, 1, 7, 9), 1, (224, 224)),
    "down224": ((1, 1, 224, 224), 2, (13, 17)),
    "crop256": ((1, 1, 256, 256), 3, (224, 224)),
    "mixed": ((2, 3, 5, 6), 4, (10, 7)),
    "twice": ((1, 2, 5, 6), 5, (10, 12)),
    "same": ((1, 2, 5, 6), 6, (5, 6)),
}
CROP = (17, 40, 204)
MODES = ("nearest", "bilinear", "bicubic")

# name: (x shape, w shape, bias, stride, padding, output_padding, groups, dilation)
CONVT = {
    "convt1": ((2, 4, 5, 6), (4, 3, 3, 3), True, (2, 2), (1, 1), (1, 1), 1, (1, 1)),
    "convt2": ((1, 4, 4, 5), (4, 2, 3, 2), False, (3, 2), (2, 0), (2, 1), 2, (2, 1)),
    "convt3": ((1, 6, 4, 4), (6, 4, 3, 3), False, (2, 2), (0, 0), (0, 0), 2, (1, 1)),
}
# name: (x shape, w shape, bias, stride, padding, groups, dilation)
CONV = {
    "conv1": ((2, 6, 9, 11), (4, 3, 3, 5), True, (2, 1), (1, 2), 2, (1, 2)),
}
# name: (x shape, up, down, (pad_x0, pad_x1, pad_y0, pad_y1), kernel scale)
UPFIRDN = {
    "upfirdn1": ((1, 2, 6, 5), 2, 1, (2, 1, 2, 1), 4.0),    # Upsample: up 2, kernel * up^2
    "upfirdn2": ((2, 1, 8, 9), 1, 2, (1, 1, 1, 1), 1.0),    # Downsample (discriminator)
    "upfirdn3": ((1, 2, 9, 9), 1, 1, (1, 1, 1, 1), 4.0),    # Blur after the transposed conv
    "upfirdn4": ((1, 1, 7, 8), 2, 3, (-1, 2, 3, -2), 1.0),  # crops, up and down together
}
# name: (x shape, sigma, ksize)
BLUR = {
    "blur1": ((1, 1, 32, 32), 2.0, 3),
    "blur2": ((2, 1, 20, 24), 1.5, 5),
}


def ramp(shape, seed):
    n = int(np.prod(shape))
    i = np.arange(n, dtype=np.uint64)
    k = (i * np.uint64(2654435761) + np.uint64(seed * 40503)) % np.uint64(2**32)
    return (k.astype(np.float64) / 2.0**32 - 0.5).astype(np.float32).reshape(shape)


def save(name, a):
    a = np.ascontiguousarray(np.asarray(a, dtype=np.float32))
    np.save(os.path.join(OUT, name + ".npy"), a)


def randn(g, *shape):
    return torch.randn(*shape, generator=g, dtype=torch.float32)


def upfirdn2d_ref(x, k, up, down, pad):
    """StyleGAN2's upfirdn2d written from its definition with PyTorch ops."""
    px0, px1, py0, py1 = pad
    n, c, h, w = x.shape
    kh, kw = k.shape
    u = torch.zeros(n, c, h, up, w, up, dtype=x.dtype)
    u[:, :, :, 0, :, 0] = x
    u = u.reshape(n, c, h * up, w * up)
    u = F.pad(u, [max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)])
    u = u[:, :, max(-py0, 0): u.shape[2] - max(-py1, 0), max(-px0, 0): u.shape[3] - max(-px1, 0)]
    kf = torch.flip(k, [0, 1]).reshape(1, 1, kh, kw).repeat(c, 1, 1, 1)
    y = F.conv2d(u, kf, groups=c)
    return y[:, :, ::down, ::down]


def main():
    os.makedirs(OUT, exist_ok=True)
    torch.set_num_threads(1)
    for name, (shape, seed, size) in RESIZE.items():
        x = torch.from_numpy(ramp(shape, seed))
        if name == "crop256":
            y0, x0, s = CROP
            x = x[:, :, y0:y0 + s, x0:x0 + s]
        for mode in MODES:
            kw = {} if mode == "nearest" else {"align_corners": False}
            y = F.interpolate(x, size=size, mode=mode, **kw)
            save("resize_%s_%s" % (name, mode), y)

    g = torch.Generator().manual_seed(7)
    for name, (xs, ws, bias, st, pad, opad, groups, dil) in CONVT.items():
        x, w = randn(g, *xs), randn(g, *ws)
        b = randn(g, ws[1] * groups) if bias else None
        y = F.conv_transpose2d(x, w, b, stride=st, padding=pad, output_padding=opad,
                               groups=groups, dilation=dil)
        save(name + "_x", x), save(name + "_w", w), save(name + "_y", y)
        if bias:
            save(name + "_b", b)
    for name, (xs, ws, bias, st, pad, groups, dil) in CONV.items():
        x, w = randn(g, *xs), randn(g, *ws)
        b = randn(g, ws[0]) if bias else None
        y = F.conv2d(x, w, b, stride=st, padding=pad, groups=groups, dilation=dil)
        save(name + "_x", x), save(name + "_w", w), save(name + "_y", y)
        if bias:
            save(name + "_b", b)
    k1 = torch.tensor([1.0, 3.0, 3.0, 1.0])
    k2 = torch.outer(k1, k1)
    k2 = k2 / k2.sum()
    save("upfirdn_k", k2)  # un-scaled; each case multiplies by its scale (exact: powers of 2)
    for name, (xs, up, down, pad, scale) in UPFIRDN.items():
        x = randn(g, *xs)
        y = upfirdn2d_ref(x, k2 * scale, up, down, pad)
        save(name + "_x", x), save(name + "_y", y)
    for name, (xs, sigma, ks) in BLUR.items():
        x = randn(g, *xs)
        t = torch.linspace(-(ks // 2), ks // 2, ks)
        k1d = torch.exp(-0.5 * (t / sigma) ** 2)
        k1d = k1d / k1d.sum()
        k = torch.outer(k1d, k1d).reshape(1, 1, ks, ks).repeat(xs[1], 1, 1, 1)
        y = F.conv2d(x, k, padding=ks // 2, groups=xs[1])
        save(name + "_x", x), save(name + "_y", y)
    print("wrote fixtures to", os.path.normpath(OUT))


if __name__ == "__main__":
    main()
