#!/usr/bin/python3
"""A PyTorch reference of rosinality's StyleGAN2 generator (stylegan2-pytorch, model.py), written
for pbw from the module definitions, with plain PyTorch ops only (no custom CUDA extensions).

Parameter and buffer names are rosinality's, so `{"g_ema": G.state_dict(), "latent_avg": ...}`
is a checkpoint that rosinality's code, Bau's SeqStyleGAN2 and pbw all load. Used by
  tests/fixtures/stylegan2/  (small fixtures for the C test, `fixtures` below)
  tools/check_stylegan2.sh   (64 and 256 px parity)
  bench/bench_stylegan2.sh   (forward + backward timing)

Run with Debian's Python (torch 1.13 CPU, numpy):
  /usr/bin/python3 tools/reference/stylegan2.py fixtures OUTDIR [--size 32 ...]
  /usr/bin/python3 tools/reference/stylegan2.py parity OUTDIR --size 256 --channel-multiplier 2
  /usr/bin/python3 tools/reference/stylegan2.py write CKPT --size 256 --channel-multiplier 2
  /usr/bin/python3 tools/reference/stylegan2.py bench --ckpt CKPT --size 256 --threads 2

Masked styles (DESIGN.md section 2, Paint by Word): every modulation of a convolution or ToRGB
uses the per-pixel style  s(w) * m + s(w0) * (1 - m), m being the mask at the resolution of the
layer's *input* feature map (area-averaged from the image-size mask, then for sides > 16 blurred
with a normalized Gaussian of sigma = side/16, kernel 2*int(sigma)-1, zero padding). As in Bau's
sequential StyleGAN2 the style multiplies the input feature map (x * s per channel and pixel)
and the plain convolution follows. Demodulation: 'orig' (the reference's quirk, the default)
scales output channel o by rsqrt(sum_{c,k} (scale W[o,c,k] s0[c])^2 + 1e-8) with s0 = s(w0);
'mixed' uses the mixed style at every output pixel, rsqrt(sum_c Wsq[o,c] smix_out[c]^2 + 1e-8),
Wsq[o,c] = sum_k (scale W[o,c,k])^2 and smix_out the mixed style with the mask at the layer's
*output* resolution (for an upsampling layer, applied after the blur).
"""
import argparse
import json
import math
import os
import struct
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# ---------------------------------------------------------------------------------------------
# low-level ops


def make_kernel(k):
    k = torch.tensor(k, dtype=torch.float32)
    if k.ndim == 1:
        k = k[None, :] * k[:, None]
    k /= k.sum()
    return k


def upfirdn2d(x, kernel, up=1, down=1, pad=(0, 0)):
    """StyleGAN2's upfirdn2d from its definition: zero insertion, pad (negative crops), true
    convolution with the kernel (flipped correlation), keep every `down`-th sample. pad is
    (pad0, pad1) for both axes, as rosinality's modules pass it."""
    p0, p1 = pad
    n, c, h, w = x.shape
    kh, kw = kernel.shape
    x = x.reshape(n * c, 1, h, 1, w, 1)
    x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1])
    x = x.reshape(n * c, 1, h * up, w * up)
    x = F.pad(x, [max(p0, 0), max(p1, 0), max(p0, 0), max(p1, 0)])
    x = x[:, :, max(-p0, 0): x.shape[2] - max(-p1, 0), max(-p0, 0): x.shape[3] - max(-p1, 0)]
    k = torch.flip(kernel, [0, 1]).view(1, 1, kh, kw).to(x.dtype)
    x = F.conv2d(x, k)
    x = x[:, :, ::down, ::down]
    return x.reshape(n, c, x.shape[2], x.shape[3])


def fused_leaky_relu(x, bias, negative_slope=0.2, scale=2 ** 0.5):
    rest = [1] * (x.ndim - bias.ndim - 1)
    return F.leaky_relu(x + bias.view(1, bias.shape[0], *rest), negative_slope) * scale


# ---------------------------------------------------------------------------------------------
# modules (rosinality's names and semantics)


class PixelNorm(nn.Module):
    def forward(self, x):
        return x * torch.rsqrt(torch.mean(x ** 2, dim=1, keepdim=True) + 1e-8)


class Upsample(nn.Module):
    def __init__(self, kernel, factor=2):
        super().__init__()
        self.factor = factor
        kernel = make_kernel(kernel) * (factor ** 2)
        self.register_buffer("kernel", kernel)
        p = kernel.shape[0] - factor
        self.pad = ((p + 1) // 2 + factor - 1, p // 2)

    def forward(self, x):
        return upfirdn2d(x, self.kernel, up=self.factor, down=1, pad=self.pad)


class Blur(nn.Module):
    def __init__(self, kernel, pad, upsample_factor=1):
        super().__init__()
        kernel = make_kernel(kernel)
        if upsample_factor > 1:
            kernel = kernel * (upsample_factor ** 2)
        self.register_buffer("kernel", kernel)
        self.pad = pad

    def forward(self, x):
        return upfirdn2d(x, self.kernel, pad=self.pad)


class EqualLinear(nn.Module):
    def __init__(self, in_dim, out_dim, bias=True, bias_init=0, lr_mul=1, activation=None):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim).div_(lr_mul))
        self.bias = nn.Parameter(torch.zeros(out_dim).fill_(bias_init)) if bias else None
        self.activation = activation
        self.scale = (1 / math.sqrt(in_dim)) * lr_mul
        self.lr_mul = lr_mul

    def forward(self, x):
        if self.activation:
            out = F.linear(x, self.weight * self.scale)
            return fused_leaky_relu(out, self.bias * self.lr_mul)
        return F.linear(x, self.weight * self.scale, bias=self.bias * self.lr_mul)


class ModulatedConv2d(nn.Module):
    def __init__(self, in_channel, out_channel, kernel_size, style_dim, demodulate=True,
                 upsample=False, blur_kernel=(1, 3, 3, 1)):
        super().__init__()
        self.eps = 1e-8
        self.kernel_size = kernel_size
        self.in_channel = in_channel
        self.out_channel = out_channel
        self.upsample = upsample
        if upsample:
            factor = 2
            p = (len(blur_kernel) - factor) - (kernel_size - 1)
            pad0 = (p + 1) // 2 + factor - 1
            pad1 = p // 2 + 1
            self.blur = Blur(blur_kernel, pad=(pad0, pad1), upsample_factor=factor)
        fan_in = in_channel * kernel_size ** 2
        self.scale = 1 / math.sqrt(fan_in)
        self.padding = kernel_size // 2
        self.weight = nn.Parameter(torch.randn(1, out_channel, in_channel, kernel_size,
                                               kernel_size))
        self.modulation = EqualLinear(style_dim, in_channel, bias_init=1)
        self.demodulate = demodulate

    def forward(self, x, style, masked=None):
        if masked is not None:
            return self.forward_masked(x, style, masked)
        # rosinality's fused path: modulate (and demodulate) the weight per sample, grouped conv
        batch, in_channel, height, width = x.shape
        style = self.modulation(style).view(batch, 1, in_channel, 1, 1)
        weight = self.scale * self.weight * style
        if self.demodulate:
            demod = torch.rsqrt(weight.pow(2).sum([2, 3, 4]) + 1e-8)
            weight = weight * demod.view(batch, self.out_channel, 1, 1, 1)
        weight = weight.view(batch * self.out_channel, in_channel, self.kernel_size,
                             self.kernel_size)
        if self.upsample:
            x = x.reshape(1, batch * in_channel, height, width)
            weight = weight.view(batch, self.out_channel, in_channel, self.kernel_size,
                                 self.kernel_size)
            weight = weight.transpose(1, 2).reshape(batch * in_channel, self.out_channel,
                                                    self.kernel_size, self.kernel_size)
            out = F.conv_transpose2d(x, weight, padding=0, stride=2, groups=batch)
            _, _, height, width = out.shape
            out = out.view(batch, self.out_channel, height, width)
            out = self.blur(out)
        else:
            x = x.reshape(1, batch * in_channel, height, width)
            out = F.conv2d(x, weight, padding=self.padding, groups=batch)
            _, _, height, width = out.shape
            out = out.view(batch, self.out_channel, height, width)
        return out

    def forward_masked(self, x, style, masked):
        """Per-pixel style s*m + s0*(1-m) on the input map, then the shared convolution."""
        style0, m_in, m_out, mixed = masked
        s = self.modulation(style)
        s0 = self.modulation(style0)
        smix = s[:, :, None, None] * m_in + s0[:, :, None, None] * (1 - m_in)
        x = x * smix
        weight = self.scale * self.weight[0]  # (O,C,k,k)
        if self.upsample:
            out = F.conv_transpose2d(x, weight.transpose(0, 1), padding=0, stride=2)
            out = self.blur(out)
        else:
            out = F.conv2d(x, weight, padding=self.padding)
        if self.demodulate:
            if mixed:
                wsq = weight.pow(2).sum([2, 3])  # (O,C)
                smix_out = s[:, :, None, None] * m_out + s0[:, :, None, None] * (1 - m_out)
                d = F.conv2d(smix_out.pow(2), wsq[:, :, None, None])
                out = out * torch.rsqrt(d + 1e-8)
            else:
                w0 = weight[None] * s0[:, None, :, None, None]
                demod = torch.rsqrt(w0.pow(2).sum([2, 3, 4]) + 1e-8)
                out = out * demod[:, :, None, None]
        return out


class NoiseInjection(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, image, noise=None):
        if noise is None:
            batch, _, height, width = image.shape
            noise = image.new_empty(batch, 1, height, width).normal_()
        return image + self.weight * noise


class ConstantInput(nn.Module):
    def __init__(self, channel, size=4):
        super().__init__()
        self.input = nn.Parameter(torch.randn(1, channel, size, size))

    def forward(self, batch):
        return self.input.repeat(batch, 1, 1, 1)


class FusedLeakyReLU(nn.Module):
    def __init__(self, channel, negative_slope=0.2, scale=2 ** 0.5):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channel))
        self.negative_slope = negative_slope
        self.scale = scale

    def forward(self, x):
        return fused_leaky_relu(x, self.bias, self.negative_slope, self.scale)


class StyledConv(nn.Module):
    def __init__(self, in_channel, out_channel, kernel_size, style_dim, upsample=False,
                 blur_kernel=(1, 3, 3, 1), demodulate=True):
        super().__init__()
        self.conv = ModulatedConv2d(in_channel, out_channel, kernel_size, style_dim,
                                    upsample=upsample, blur_kernel=blur_kernel,
                                    demodulate=demodulate)
        self.noise = NoiseInjection()
        self.activate = FusedLeakyReLU(out_channel)

    def forward(self, x, style, noise=None, masked=None):
        out = self.conv(x, style, masked)
        out = self.noise(out, noise=noise)
        return self.activate(out)


class ToRGB(nn.Module):
    def __init__(self, in_channel, style_dim, upsample=True, blur_kernel=(1, 3, 3, 1)):
        super().__init__()
        if upsample:
            self.upsample = Upsample(blur_kernel)
        self.conv = ModulatedConv2d(in_channel, 3, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(self, x, style, skip=None, masked=None):
        out = self.conv(x, style, masked) + self.bias
        if skip is not None:
            out = out + self.upsample(skip)
        return out


def channel_table(channel_multiplier, override=None):
    ch = {4: 512, 8: 512, 16: 512, 32: 512, 64: 256 * channel_multiplier,
          128: 128 * channel_multiplier, 256: 64 * channel_multiplier,
          512: 32 * channel_multiplier, 1024: 16 * channel_multiplier}
    if override:  # narrow test models: channels for 4, 8, 16, ... in order
        for i, c in enumerate(override):
            ch[4 << i] = c
    return ch


class Generator(nn.Module):
    def __init__(self, size, style_dim, n_mlp, channel_multiplier=2, blur_kernel=(1, 3, 3, 1),
                 lr_mlp=0.01, channels=None):
        super().__init__()
        self.size = size
        self.style_dim = style_dim
        layers = [PixelNorm()]
        for _ in range(n_mlp):
            layers.append(EqualLinear(style_dim, style_dim, lr_mul=lr_mlp,
                                      activation="fused_lrelu"))
        self.style = nn.Sequential(*layers)
        self.channels = channel_table(channel_multiplier, channels)
        self.input = ConstantInput(self.channels[4])
        self.conv1 = StyledConv(self.channels[4], self.channels[4], 3, style_dim,
                                blur_kernel=blur_kernel)
        self.to_rgb1 = ToRGB(self.channels[4], style_dim, upsample=False)
        self.log_size = int(math.log(size, 2))
        self.num_layers = (self.log_size - 2) * 2 + 1
        self.convs = nn.ModuleList()
        self.upsamples = nn.ModuleList()
        self.to_rgbs = nn.ModuleList()
        self.noises = nn.Module()
        in_channel = self.channels[4]
        for layer_idx in range(self.num_layers):
            res = (layer_idx + 5) // 2
            self.noises.register_buffer(f"noise_{layer_idx}", torch.randn(1, 1, 2 ** res, 2 ** res))
        for i in range(3, self.log_size + 1):
            out_channel = self.channels[2 ** i]
            self.convs.append(StyledConv(in_channel, out_channel, 3, style_dim, upsample=True,
                                         blur_kernel=blur_kernel))
            self.convs.append(StyledConv(out_channel, out_channel, 3, style_dim,
                                         blur_kernel=blur_kernel))
            self.to_rgbs.append(ToRGB(out_channel, style_dim))
            in_channel = out_channel
        self.n_latent = self.log_size * 2 - 2

    def mean_latent(self, n_latent, generator=None):
        z = torch.randn(n_latent, self.style_dim, generator=generator)
        return self.style(z).mean(0, keepdim=True)

    def synthesis(self, latent, noise=None, masked=None):
        """latent (N, n_latent, style_dim). noise: list of num_layers tensors or None (fixed
        buffers). masked: None or (latent0, masks by side, mixed) for masked styles."""
        if noise is None:
            noise = [getattr(self.noises, f"noise_{i}") for i in range(self.num_layers)]

        def mk(idx, side_in, side_out):
            if masked is None:
                return None
            lat0, masks, mixed = masked
            return (lat0[:, idx], masks[side_in], masks[side_out], mixed)

        out = self.input(latent.shape[0])
        out = self.conv1(out, latent[:, 0], noise=noise[0], masked=mk(0, 4, 4))
        skip = self.to_rgb1(out, latent[:, 1], masked=mk(1, 4, 4))
        i = 1
        side = 4
        for conv1, conv2, noise1, noise2, to_rgb in zip(self.convs[::2], self.convs[1::2],
                                                        noise[1::2], noise[2::2], self.to_rgbs):
            out = conv1(out, latent[:, i], noise=noise1, masked=mk(i, side, side * 2))
            side *= 2
            out = conv2(out, latent[:, i + 1], noise=noise2, masked=mk(i + 1, side, side))
            skip = to_rgb(out, latent[:, i + 2], skip, masked=mk(i + 2, side, side))
            i += 2
        return skip

    def forward(self, styles, truncation=1, truncation_latent=None, input_is_latent=False,
                noise=None):
        """rosinality's forward for a single style input: z (or w) (N, style_dim), or W+."""
        if not input_is_latent:
            styles = self.style(styles)
        if truncation < 1:
            styles = truncation_latent + truncation * (styles - truncation_latent)
        latent = styles if styles.ndim == 3 else styles.unsqueeze(1).repeat(1, self.n_latent, 1)
        return self.synthesis(latent, noise=noise)


# ---------------------------------------------------------------------------------------------
# masks


def gaussian_kernel1d(sigma, ksize, dtype=torch.float32):
    c = (ksize - 1) / 2.0
    x = torch.arange(ksize, dtype=torch.float64) - c
    k = torch.exp(-x * x / (2.0 * sigma * sigma))
    return (k / k.sum()).to(dtype)


def layer_masks(mask, size, dtype=torch.float32):
    """mask (H, W) in [0, 1] at image resolution -> {side: (1,1,side,side)} for sides 4..size:
    area average, then a normalized Gaussian blur (zero padding) for sides > 16."""
    out = {}
    m = mask.to(torch.float64)[None, None]
    side = 4
    while side <= size:
        r = F.adaptive_avg_pool2d(m, side)
        if side > 16:
            sigma = side / 16.0
            ks = 2 * int(sigma) - 1
            k1 = gaussian_kernel1d(sigma, ks, torch.float64)
            r = F.conv2d(r, k1.view(1, 1, 1, ks), padding=(0, ks // 2))
            r = F.conv2d(r, k1.view(1, 1, ks, 1), padding=(ks // 2, 0))
        out[side] = r.to(dtype)
        side *= 2
    return out


# ---------------------------------------------------------------------------------------------
# random models and checkpoints


def randomize(g, seed):
    """Every parameter random (seeded), noise weights and biases nonzero so every path counts."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in g.named_parameters():
            r = torch.randn(p.shape, generator=gen)
            if name.startswith("style.") and name.endswith(".weight"):
                p.copy_(r / 0.01)                      # EqualLinear init: randn / lr_mul
            elif name.startswith("style.") and name.endswith(".bias"):
                p.copy_(r * 10.0)                      # * lr_mul 0.01 in use -> 0.1
            elif name.endswith("modulation.bias"):
                p.copy_(1.0 + 0.2 * r)                 # bias_init 1, perturbed
            elif name.endswith("noise.weight"):
                p.copy_(0.3 * r)
            elif name.endswith("activate.bias") or name.endswith(".bias"):
                p.copy_(0.2 * r)
            elif "to_rgb" in name and name.endswith("conv.weight"):
                p.copy_(0.25 * r)                      # keeps images near [-1, 1]
            else:
                p.copy_(r)                             # conv, modulation weights, const input
        for name, b in g.named_buffers():
            if name.startswith("noises."):
                b.copy_(torch.randn(b.shape, generator=gen))
        latent_avg = g.mean_latent(512, generator=gen)[0]
    return latent_avg


def build(args):
    ch = [int(c) for c in args.channels.split(",")] if args.channels else None
    g = Generator(args.size, args.style_dim, args.n_mlp, args.channel_multiplier, channels=ch)
    g.eval()
    latent_avg = randomize(g, args.seed)
    for p in g.parameters():
        p.requires_grad_(False)
    return g, latent_avg


def save_safetensors(path, tensors):
    """A minimal safetensors writer (F32 only): u64 header size, JSON header, data."""
    header, blobs, off = {}, [], 0
    for name, t in tensors.items():
        a = np.ascontiguousarray(t.detach().cpu().numpy().astype("<f4"))
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [off, off + a.nbytes]}
        blobs.append(a.tobytes())
        off += a.nbytes
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def save_checkpoints(g, latent_avg, out, stem, formats=("zip", "legacy", "safetensors")):
    sd = {k: v.clone() for k, v in g.state_dict().items()}
    ck = {"g_ema": sd, "latent_avg": latent_avg.clone()}
    paths = {}
    if "zip" in formats:
        paths["zip"] = os.path.join(out, stem + ".pt")
        torch.save(ck, paths["zip"])
    if "legacy" in formats:
        paths["legacy"] = os.path.join(out, stem + "_legacy.pt")
        torch.save(ck, paths["legacy"], _use_new_zipfile_serialization=False)
    if "safetensors" in formats:
        paths["safetensors"] = os.path.join(out, stem + ".safetensors")
        flat = {"g_ema." + k: v for k, v in sd.items()}
        flat["latent_avg"] = latent_avg
        save_safetensors(paths["safetensors"], flat)
    return paths


# ---------------------------------------------------------------------------------------------
# expected outputs


def save(out, name, a):
    a = a.detach().cpu().numpy() if torch.is_tensor(a) else a
    np.save(os.path.join(out, name + ".npy"), np.ascontiguousarray(a, dtype=np.float32))


def test_mask(size):
    """A soft-edged disc off center plus a bar: fractional values and a border."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    r = np.hypot(x - 0.38 * size, y - 0.55 * size) / (0.25 * size)
    m = np.clip(1.5 - r, 0, 1)
    m[int(0.1 * size):int(0.3 * size), int(0.6 * size):int(0.9 * size)] = 1.0
    return torch.tensor(m, dtype=torch.float32)


def expected(g, latent_avg, out, n, seed, trunc=0.7, f64=False):
    """Inputs and the reference's outputs. With f64, every gradient is also computed by the same
    model in float64 (grad_*_f64): float32 PyTorch's own rounding in gradients summed over a
    256 px image reaches ~1e-3 of their size, so the float64 run is the one that measures us."""
    import copy
    g64 = copy.deepcopy(g).double() if f64 else None
    gen = torch.Generator().manual_seed(seed + 1000)
    sd, nl, size = g.style_dim, g.n_latent, g.size
    z = torch.randn(n, sd, generator=gen)
    r = torch.randn(n, 3, size, size, generator=gen)   # the random linear function of the image
    save(out, "z", z)
    save(out, "r", r)
    with torch.no_grad():
        save(out, "img_z", g(z))
        save(out, "img_z_trunc", g(z, truncation=trunc, truncation_latent=latent_avg))
        w = g.style(z)
        save(out, "w_of_z", w)
    # gradients to z (through the mapping and truncation), to w and to W+
    def grad64(name, fn, *inputs):
        """The gradient of sum(r * fn(g64, *inputs)) to inputs[0], in float64."""
        if g64 is None:
            return
        xs = [t.detach().double() for t in inputs]
        xs[0].requires_grad_(True)
        (fn(g64, *xs) * r.double()).sum().backward()
        save(out, name + "_f64", xs[0].grad)

    zz = z.clone().requires_grad_(True)
    (g(zz, truncation=trunc, truncation_latent=latent_avg) * r).sum().backward()
    save(out, "grad_z_trunc", zz.grad)
    grad64("grad_z_trunc", lambda m, a, avg: m(a, truncation=trunc, truncation_latent=avg), z,
           latent_avg)
    w = (torch.randn(n, sd, generator=gen) * 0.5 + latent_avg).requires_grad_(True)
    img = g(w, input_is_latent=True)
    (img * r).sum().backward()
    save(out, "w", w.detach())
    save(out, "img_w", img)
    save(out, "grad_w", w.grad)
    grad64("grad_w", lambda m, a: m(a, input_is_latent=True), w)
    wp = (torch.randn(n, nl, sd, generator=gen) * 0.5 + latent_avg).requires_grad_(True)
    img = g(wp, input_is_latent=True)
    (img * r).sum().backward()
    save(out, "wplus", wp.detach())
    save(out, "img_wplus", img)
    save(out, "grad_wplus", wp.grad)
    grad64("grad_wplus", lambda m, a: m(a, input_is_latent=True), wp)
    # masked styles: w (optimized) against w0 (original), both broadcast
    mask = test_mask(size)
    save(out, "mask", mask)
    masks = layer_masks(mask, size)
    w0 = (torch.randn(n, sd, generator=gen) * 0.5 + latent_avg)
    save(out, "w0", w0)
    lat0 = w0[:, None].repeat(1, nl, 1)
    for mode, mixed in (("orig", False), ("mixed", True)):
        wm = w.detach().clone().requires_grad_(True)
        img = g.synthesis(wm[:, None].repeat(1, nl, 1), masked=(lat0, masks, mixed))
        (img * r).sum().backward()
        save(out, f"img_masked_{mode}", img)
        save(out, f"grad_masked_{mode}", wm.grad)
        masks64 = {k: v.double() for k, v in masks.items()}
        grad64(f"grad_masked_{mode}",
               lambda m, a, l0, mixed=mixed: m.synthesis(a[:, None].repeat(1, nl, 1),
                                                         masked=(l0, masks64, mixed)),
               w, lat0)
    for side, m in masks.items():
        save(out, f"mask_{side}", m[0, 0])


def save_training_checkpoint(out, seed):
    """What rosinality's train.py saves: g, d, g_ema, both optimizers' states, the argparse
    Namespace of its options and ada_aug_p; no latent_avg. A tiny 8 px generator."""
    import argparse as ap
    a = ap.Namespace(size=8, style_dim=8, n_mlp=1, channel_multiplier=2, channels="4,4",
                     seed=seed)
    g, _ = build(a)
    params = [p.detach().clone().requires_grad_(True) for p in g.parameters()]
    opt = torch.optim.Adam(params, lr=0.002, betas=(0, 0.99))
    sum((p * p).sum() for p in params).backward()
    opt.step()
    d = {"convs.0.0.weight": torch.randn(4, 3, 1, 1), "final_linear.1.bias": torch.zeros(1)}
    dopt = torch.optim.Adam([torch.zeros(2, requires_grad=True)], lr=0.002, betas=(0, 0.99))
    args = ap.Namespace(path="lmdb", iter=800000, batch=16, n_sample=64, size=8, r1=10,
                        path_regularize=2, path_batch_shrink=2, d_reg_every=16, g_reg_every=4,
                        mixing=0.9, ckpt=None, lr=0.002, channel_multiplier=2, wandb=False,
                        local_rank=0, augment=False, augment_p=0, ada_target=0.6,
                        ada_length=500000, ada_every=256, distributed=False, latent=8, n_mlp=1,
                        start_iter=0)
    torch.save({"g": g.state_dict(), "d": d, "g_ema": g.state_dict(),
                "g_optim": opt.state_dict(), "d_optim": dopt.state_dict(), "args": args,
                "ada_aug_p": 0.0}, os.path.join(out, "train.pt"))
    z = torch.randn(2, 8, generator=torch.Generator().manual_seed(seed))
    save(out, "train_z", z)
    with torch.no_grad():
        save(out, "train_img", g(z))


def save_tiny4(out, seed):
    """The smallest generator (4 px: conv1 and to_rgb1 only), as safetensors."""
    import argparse as ap
    g, latent_avg = build(ap.Namespace(size=4, style_dim=8, n_mlp=1, channel_multiplier=2,
                                       channels="4", seed=seed))
    flat = {"g_ema." + k: v for k, v in g.state_dict().items()}
    flat["latent_avg"] = latent_avg
    save_safetensors(os.path.join(out, "g4.safetensors"), flat)
    z = torch.randn(3, 8, generator=torch.Generator().manual_seed(seed + 4))
    save(out, "g4_z", z)
    with torch.no_grad():
        save(out, "g4_img", g(z, truncation=0.5, truncation_latent=latent_avg))


def cmd_fixtures(args):
    os.makedirs(args.out, exist_ok=True)
    torch.manual_seed(args.seed)
    g, latent_avg = build(args)
    save_checkpoints(g, latent_avg, args.out, "g")
    expected(g, latent_avg, args.out, args.batch, args.seed)
    save_training_checkpoint(args.out, args.seed)
    save_tiny4(args.out, args.seed)
    print(f"wrote {args.out}: size {args.size}, channels {[g.channels[4 << i] for i in range(g.log_size - 1)]}, "
          f"style_dim {args.style_dim}, n_mlp {args.n_mlp}")


def cmd_parity(args):
    """Bigger models for tools/check_stylegan2.sh: zip checkpoint only, same expected set."""
    os.makedirs(args.out, exist_ok=True)
    torch.manual_seed(args.seed)
    g, latent_avg = build(args)
    save_checkpoints(g, latent_avg, args.out, "g", formats=("zip",))
    expected(g, latent_avg, args.out, args.batch, args.seed, trunc=0.7, f64=True)
    print(f"wrote {args.out}: size {args.size}, channel multiplier {args.channel_multiplier}")


def load_checkpoint(path, args):
    """A Generator with a checkpoint's g_ema (architecture from args) and its latent_avg."""
    ck = torch.load(path, map_location="cpu")
    ch = [int(c) for c in args.channels.split(",")] if args.channels else None
    g = Generator(args.size, args.style_dim, args.n_mlp, args.channel_multiplier, channels=ch)
    g.load_state_dict(ck["g_ema"])
    g.eval()
    for p in g.parameters():
        p.requires_grad_(False)
    return g, ck.get("latent_avg", torch.zeros(args.style_dim))


def cmd_write(args):
    """A random generator as a rosinality checkpoint (torch zip), for the benchmark."""
    g, latent_avg = build(args)
    torch.save({"g_ema": g.state_dict(), "latent_avg": latent_avg}, args.out)
    print(f"wrote {args.out}: size {args.size}, channel multiplier {args.channel_multiplier}")


def cmd_bench(args):
    """What bench/bench_stylegan2.c times: one image from one w (fixed noise, weights frozen),
    forward (no_grad) and forward + backward to w of sum(r * image). One TSV line per pass:
    torch, pass, batch, median ms, -, -, mean CPU ms (all threads)."""
    torch.set_num_threads(args.threads)
    g, latent_avg = load_checkpoint(args.ckpt, args) if args.ckpt else build(args)
    gen = torch.Generator().manual_seed(5)
    w = (torch.randn(1, args.style_dim, generator=gen) * 0.5 + latent_avg).requires_grad_(True)
    r = torch.randn(1, 3, args.size, args.size, generator=gen)
    for name in ("fwd", "fwd+dw"):
        times, cpu = [], 0.0
        for k in range(args.reps + 1):  # run 0 warms allocators and oneDNN primitives
            t0, c0 = time.perf_counter(), time.process_time()
            if name == "fwd":
                with torch.no_grad():
                    g(w, input_is_latent=True)
            else:
                w.grad = None
                (g(w, input_is_latent=True) * r).sum().backward()
            if k:
                times.append(time.perf_counter() - t0)
                cpu += time.process_time() - c0
        times.sort()
        print(f"torch\t{name}\t1\t{times[len(times) // 2] * 1e3:.1f}\t-\t-\t{cpu / args.reps * 1e3:.1f}",
              flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("fixtures", "parity", "bench", "write"):
        p = sub.add_parser(name)
        if name != "bench":
            p.add_argument("out")
        else:
            p.add_argument("--ckpt", default="", help="checkpoint to time (default: random)")
        p.add_argument("--size", type=int, default=32)
        p.add_argument("--style-dim", type=int, default=512)
        p.add_argument("--n-mlp", type=int, default=8)
        p.add_argument("--channel-multiplier", type=int, default=2)
        p.add_argument("--channels", default="", help="comma list for sides 4, 8, 16, ...")
        p.add_argument("--seed", type=int, default=1)
        p.add_argument("--batch", type=int, default=2)
        p.add_argument("--threads", type=int, default=2)
        p.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    {"fixtures": cmd_fixtures, "parity": cmd_parity, "bench": cmd_bench,
     "write": cmd_write}[args.cmd](args)


if __name__ == "__main__":
    main()
