#!/usr/bin/env python3
"""train_gan.py: trains the shapes world's StyleGAN2 (rosinality's generator, narrow) at 64 px.

    python3 tools/train/train_gan.py --out DIR --seconds 480            # on a CUDA GPU
    /usr/bin/python3 tools/train/train_gan.py --out /tmp/g --tiny       # CPU smoke test

The generator is tools/reference/stylegan2.py's Generator: rosinality's modules and parameter
names, so the checkpoint loads in rosinality's code, in Bau's SeqStyleGAN2 and in pbw
(pbw_sg2_load reads channel widths, style size and mapping depth from the shapes). For speed the
training forward modulates the input and demodulates the output of one shared convolution
instead of building a weight per sample (the same function: see pbw_stylegan2.h for why).

Training is StyleGAN2's (rosinality's train.py / NVIDIA's ADA defaults where they differ):
non-saturating logistic loss, lazy R1 on reals every 16 steps, style mixing with probability
0.9, Adam (0, 0.99) lr 0.0025 with the lazy-regularization correction, random noise inputs,
x-flips of the reals, and an EMA generator (half-life 10 kimg * batch / 32, ramped up over
the first 5% of images seen). No path-length regularization (it costs a second backward and
matters little at 64 px). The discriminator is a residual one in rosinality's spirit
(equalized learning rate, average-pool downsampling, minibatch standard deviation).
Training images are scenes of dataset seed 1 rendered by pbw's C renderer
(tools/train/shapes_world.py). Training runs for a wall-clock budget.

Writes to --out: g_ema.safetensors (fp16, rosinality names under "g_ema." + "latent_avg": what
models/shapes/ ships), gan_g.pt / gan_d.pt (float32 state dicts; --resume DIR continues from
these and g_ema.safetensors), samples.png (seeds 0..63 of the seed bank as pbw numbers them, fixed noise) and
gan_log.jsonl.
"""
import argparse
import copy
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "reference"))
import shapes_world as sw  # noqa: E402
import stylegan2 as sg  # noqa: E402


def fast_modconv_forward(self, x, style, masked=None):
    """ModulatedConv2d.forward without per-sample weights: x * s, shared conv, * demod."""
    if masked is not None:
        return _orig_forward(self, x, style, masked)
    s = self.modulation(style)                        # (B,C)
    w = self.scale * self.weight[0]                   # (O,C,k,k)
    x = x * s[:, :, None, None].to(x.dtype)
    if self.upsample:
        out = self.blur(F.conv_transpose2d(x, w.transpose(0, 1), padding=0, stride=2))
    else:
        out = F.conv2d(x, w, padding=self.padding)
    if self.demodulate:
        wsq = w.float().pow(2).sum([2, 3])            # (O,C)
        d = torch.rsqrt(s.float().pow(2) @ wsq.t() + 1e-8)  # (B,O)
        out = out * d[:, :, None, None].to(out.dtype)
    return out


_orig_forward = sg.ModulatedConv2d.forward
sg.ModulatedConv2d.forward = fast_modconv_forward


# ---------------------------------------------------------------------------------------------
# discriminator


class EqualConv2d(nn.Module):
    def __init__(self, cin, cout, k, bias=True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin, k, k))
        self.scale = 1 / math.sqrt(cin * k * k)
        self.bias = nn.Parameter(torch.zeros(cout)) if bias else None
        self.pad = k // 2

    def forward(self, x):
        return F.conv2d(x, self.weight * self.scale, self.bias, padding=self.pad)


def lrelu(x):
    return F.leaky_relu(x, 0.2) * math.sqrt(2)


class ResBlock(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.conv1 = EqualConv2d(cin, cin, 3)
        self.conv2 = EqualConv2d(cin, cout, 3)
        self.skip = EqualConv2d(cin, cout, 1, bias=False)

    def forward(self, x):
        y = lrelu(self.conv1(x))
        y = lrelu(self.conv2(F.avg_pool2d(y, 2)))
        return (y + self.skip(F.avg_pool2d(x, 2))) / math.sqrt(2)


class Discriminator(nn.Module):
    def __init__(self, size, channels):
        super().__init__()
        self.from_rgb = EqualConv2d(3, channels[size], 1)
        blocks, s = [], size
        while s > 4:
            blocks.append(ResBlock(channels[s], channels[s // 2]))
            s //= 2
        self.convs = nn.Sequential(*blocks)
        c4 = channels[4]
        self.final_conv = EqualConv2d(c4 + 1, c4, 3)
        # equalized like every other layer: with Adam, a plain nn.Linear (weights ~ 1/sqrt(fan
        # in)) would move ~lr / 0.016 of its scale per step and let D run away from G
        self.final_linear = sg.EqualLinear(c4 * 16, c4, activation="fused_lrelu")
        self.final_out = sg.EqualLinear(c4, 1)

    def forward(self, x):
        out = self.convs(lrelu(self.from_rgb(x)))
        b, c, h, w = out.shape
        g = min(b, 4)
        while b % g:
            g -= 1
        y = out.view(g, -1, 1, c, h, w)
        y = torch.sqrt(y.float().var(0, unbiased=False) + 1e-8).mean([2, 3, 4], keepdim=True).squeeze(2)
        y = y.repeat(g, 1, h, w).to(out.dtype)
        out = lrelu(self.final_conv(torch.cat([out, y], 1)))
        return self.final_out(self.final_linear(out.flatten(1)))


# ---------------------------------------------------------------------------------------------


def make_noise(g, batch, device):
    return [torch.randn(batch, 1, 2 ** ((i + 5) // 2), 2 ** ((i + 5) // 2), device=device)
            for i in range(g.num_layers)]


def generate(g, batch, device, mixing=0.9):
    z = torch.randn(2, batch, g.style_dim, device=device)
    w = g.style(z.view(-1, g.style_dim)).view(2, batch, g.style_dim)
    lat = w[0][:, None].repeat(1, g.n_latent, 1)
    if mixing > 0 and np.random.rand() < mixing:
        k = np.random.randint(1, g.n_latent)
        lat[:, k:] = w[1][:, None]
    return g.synthesis(lat, noise=make_noise(g, batch, device))


def seedbank_z(first, count, dim):
    """pbw's seed bank: rows of numpy.random.RandomState(1).standard_normal(...)."""
    return np.random.RandomState(1).standard_normal((first + count) * dim).astype(np.float32) \
        .reshape(first + count, dim)[first:]


@torch.no_grad()
def sample_grid(g, device, path, n=64):
    z = torch.from_numpy(seedbank_z(0, n, g.style_dim)).to(device)
    lat = g.style(z)[:, None].repeat(1, g.n_latent, 1)
    img = g.synthesis(lat).float().clamp(-1, 1)  # the fixed noise buffers, as pbw renders seeds
    img = ((img + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    side = int(math.ceil(math.sqrt(n)))
    S = img.shape[1]
    grid = np.zeros((side * S, side * S, 3), np.uint8)
    for i in range(n):
        grid[(i // side) * S:(i // side + 1) * S, (i % side) * S:(i % side + 1) * S] = img[i]
    try:
        from PIL import Image
        Image.fromarray(grid).save(path)
    except ImportError:
        np.save(path + ".npy", grid)
    return img


def save_all(args, g, d, g_ema, nimg):
    g_ema = copy.deepcopy(g_ema).float().cpu()
    with torch.no_grad():
        torch.manual_seed(0)
        latent_avg = g_ema.style(torch.randn(8192, g_ema.style_dim)).mean(0)
    sd = {f"g_ema.{k}": v.detach().half().contiguous() for k, v in g_ema.state_dict().items()}
    sd["latent_avg"] = latent_avg.half().contiguous()
    from safetensors.torch import save_file
    meta = {"format": "pt", "arch": "rosinality stylegan2", "size": str(args.size),
            "channels": args.channels, "style_dim": str(args.style_dim), "n_mlp": str(args.n_mlp)}
    save_file(sd, os.path.join(args.out, "g_ema.safetensors.tmp"), metadata=meta)
    os.replace(os.path.join(args.out, "g_ema.safetensors.tmp"), os.path.join(args.out, "g_ema.safetensors"))
    for name, m in (("gan_g.pt", g), ("gan_d.pt", d)):
        torch.save({"state": {k: v.detach().float().cpu() for k, v in m.state_dict().items()},
                    "nimg": nimg}, os.path.join(args.out, name + ".tmp"))
        os.replace(os.path.join(args.out, name + ".tmp"), os.path.join(args.out, name))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--seconds", type=float, default=480)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--channels", default="256,256,128,64,32", help="sides 4, 8, ..., size")
    ap.add_argument("--d-channels", default="256,256,128,64,32")
    ap.add_argument("--style-dim", type=int, default=128)
    ap.add_argument("--n-mlp", type=int, default=4)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--lr", type=float, default=0.0025)
    ap.add_argument("--r1", type=float, default=1.0)
    ap.add_argument("--scenes", type=int, default=100000)
    ap.add_argument("--save-every", type=float, default=120, help="seconds")
    ap.add_argument("--resume", default="")
    ap.add_argument("--tiny", action="store_true", help="CPU smoke test settings")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    if args.tiny:
        args.scenes, args.batch, args.seconds = 256, 8, min(args.seconds, 60)
        args.save_every = 20
        args.channels, args.d_channels, args.style_dim = "64,64,32,16,8", "64,64,32,16,8", 32
    os.makedirs(args.out, exist_ok=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    log = open(os.path.join(args.out, "gan_log.jsonl"), "a")

    def say(**kv):
        kv["t"] = round(time.time() - t0, 1)
        line = json.dumps(kv)
        print("gan", line, flush=True)
        log.write(line + "\n")
        log.flush()

    t0 = time.time()
    rgb, _ = sw.render(seed=1, first=0, n=args.scenes, size=args.size, scenes=False)
    reals = torch.from_numpy(rgb).to(device).permute(0, 3, 1, 2).contiguous()  # uint8 (N,3,S,S)
    say(event="data", scenes=args.scenes, render_s=round(time.time() - t0, 1))

    gch = [int(c) for c in args.channels.split(",")]
    dch_list = [int(c) for c in args.d_channels.split(",")]
    dch = {4 << i: c for i, c in enumerate(dch_list)}
    g = sg.Generator(args.size, args.style_dim, args.n_mlp, channels=gch).to(device)
    d = Discriminator(args.size, dch).to(device)
    nimg = 0
    if args.resume:
        ck = torch.load(os.path.join(args.resume, "gan_g.pt"))
        g.load_state_dict(ck["state"])
        nimg = ck["nimg"]
        d.load_state_dict(torch.load(os.path.join(args.resume, "gan_d.pt"))["state"])
    g_ema = copy.deepcopy(g).eval()
    if args.resume:  # the EMA generator from the fp16 file that ships
        from safetensors.torch import load_file
        sd = load_file(os.path.join(args.resume, "g_ema.safetensors"))
        g_ema.load_state_dict({k[len("g_ema."):]: v.float() for k, v in sd.items()
                               if k.startswith("g_ema.")})
    for p in g_ema.parameters():
        p.requires_grad_(False)
    n_g = sum(p.numel() for p in g.parameters())
    n_d = sum(p.numel() for p in d.parameters())
    say(event="models", g_params=n_g, d_params=n_d, channels=args.channels, style_dim=args.style_dim)

    d_every = 16
    c = d_every / (d_every + 1)
    fused = {"fused": True} if device == "cuda" else {}
    g_opt = torch.optim.Adam(g.parameters(), lr=args.lr, betas=(0.0, 0.99), eps=1e-8, **fused)
    d_opt = torch.optim.Adam(d.parameters(), lr=args.lr * c, betas=(0.0, 0.99 ** c), eps=1e-8,
                             **fused)
    ema_p, g_p = list(g_ema.parameters()), list(g.parameters())
    B = args.batch
    ema_half = 10000 * B / 32
    it = 0
    last_save = time.time()
    t_train = time.time()
    stats = {"d": 0.0, "g": 0.0, "r1": 0.0}
    while time.time() - t_train < args.seconds:
        idx = torch.randint(0, reals.shape[0], (B,), device=device)
        real = reals[idx].float() / 127.5 - 1
        flip = torch.rand(B, device=device) < 0.5
        real = torch.where(flip[:, None, None, None], real.flip(3), real)
        # discriminator
        with torch.no_grad():
            fake = generate(g, B, device)
        d_loss = F.softplus(d(fake)).mean() + F.softplus(-d(real)).mean()
        d_opt.zero_grad(set_to_none=True)
        d_loss.backward()
        d_opt.step()
        if it % d_every == 0:
            real.requires_grad_(True)
            out = d(real)
            (grad,) = torch.autograd.grad(out.sum(), real, create_graph=True)
            r1 = grad.pow(2).flatten(1).sum(1).mean()
            d_opt.zero_grad(set_to_none=True)
            (args.r1 / 2 * r1 * d_every + 0 * out[0, 0]).backward()
            d_opt.step()
            stats["r1"] = r1.item()
        # generator
        for p in d.parameters():
            p.requires_grad_(False)
        g_loss = F.softplus(-d(generate(g, B, device))).mean()
        g_opt.zero_grad(set_to_none=True)
        g_loss.backward()
        g_opt.step()
        for p in d.parameters():
            p.requires_grad_(True)
        # EMA
        nimg += B
        half = min(ema_half, nimg * 0.05)
        beta = 0.5 ** (B / max(half, 1e-8))
        with torch.no_grad():
            if hasattr(torch, "_foreach_lerp_"):
                torch._foreach_lerp_(ema_p, g_p, 1 - beta)
            else:  # older torch (the CPU smoke test)
                for pe, p in zip(ema_p, g_p):
                    pe.lerp_(p, 1 - beta)
            for be, b in zip(g_ema.buffers(), g.buffers()):
                be.copy_(b)
        it += 1
        if it % 200 == 0 or (args.tiny and it % 10 == 0):
            stats["d"], stats["g"] = d_loss.item(), g_loss.item()
            el = time.time() - t_train
            say(it=it, kimg=round(nimg / 1000, 1), d=round(stats["d"], 4), g=round(stats["g"], 4),
                r1=round(stats["r1"], 4), it_s=round(it / el, 2))
        if time.time() - last_save > args.save_every:
            save_all(args, g, d, g_ema, nimg)
            last_save = time.time()
            with torch.no_grad():
                imgs = sample_grid(g_ema, device, os.path.join(args.out, "samples.png"))
            try:
                say(it=it, clean_fraction_64_seeds=sw.clean_fraction(imgs))
            except Exception:
                pass
    save_all(args, g, d, g_ema, nimg)
    imgs = sample_grid(g_ema, device, os.path.join(args.out, "samples.png"))
    try:
        clean = sw.clean_fraction(imgs)
    except Exception as e:  # the checker is a diagnostic here, never a reason to fail
        clean = f"unavailable: {e}"
    say(event="done", it=it, kimg=round(nimg / 1000, 1), train_s=round(time.time() - t_train, 1),
        clean_fraction_64_seeds=clean)


if __name__ == "__main__":
    main()
