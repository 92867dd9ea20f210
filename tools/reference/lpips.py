#!/usr/bin/python3
"""lpips.py: a PyTorch reference of LPIPS (AlexNet trunk, v0.1 linear heads) for pbw's
src/models/pbw_lpips.c, and the fixture that tests/test_lpips.c checks.

    tools/reference/lpips.py            writes tests/fixtures/lpips/ (see FILES below)
    tools/reference/lpips.py --check    recomputes everything from the committed fixture and
                                        says whether the expected outputs still match

Needs /usr/bin/python3 with torch (Debian's python3-torch, 1.13 here); torchvision and the
lpips package are not needed. Nothing is downloaded.

What it is: the computation of richzhang/PerceptualSimilarity's `lpips.LPIPS(net='alex',
version='0.1')` written out with plain torch modules, under the module names that matter:
  - ScalingLayer: (x - shift) / scale, shift (-.030,-.088,-.188), scale (.458,.448,.450)
  - torchvision's AlexNet `features` as an nn.Sequential with torchvision's indices (so its
    state dict has the real names features.0/3/6/8/10.weight/bias), cut after each ReLU into
    lpips's five slices (indices 0-1, 2-4, 5-7, 8-9, 10-11)
  - per layer: normalize_tensor (x / (sqrt(sum_c x^2) + 1e-10)), squared difference, the 1x1
    conv lin{k}.model.1 (no bias; its Dropout is identity in eval), then either the spatial
    mean (spatial=False) or nn.Upsample(size=input HW, bilinear, align_corners=False)
    (spatial=True, lpips >= 0.1.4's `upsample`), summed over the layers in order
  - Paint by Word's PerceptualLoss weighting (alexandonian/paint-by-word,
    paintbyword/losses.py): per image sum(map * weight) / sum(weight) over dims (1,2,3), with
    weight = 1 - mask as (1,1,H,W)

Weights: the heads are the real trained v0.1 file (../shared/data/lpips/v0.1/alex.pth). The
trunk is random (torchvision's real weights cannot be fetched here): seeded Kaiming-normal
weights (fan_in, ReLU gain, so activations keep their scale through five layers) and N(0, 0.1)
biases, rounded to float16 and saved as float16 with torch.save (zip format) under
torchvision's names. The reference computes in float32 with exactly those fp16-rounded values,
so pbw loading the file (fp16 -> fp32 is exact) sees the same weights. The classifier.* tensors
of a real alexnet-owt file are left out (60 M parameters pbw ignores anyway).

FILES (tests/fixtures/lpips/):
  alexnet_features_fp16.pth  the random trunk, torchvision names, float16   (~4.9 MB)
  x0.npy, x1.npy             two image batches (2,3,56,64) in [-1,1], float16-exact, stored <f2
  r.npy                      (2,1,56,64) random weights R of the linear function (<f2)
  spatial.npy                LPIPS spatial map (2,1,56,64)
  scalar.npy                 LPIPS with spatial=False (2,1,1,1)
  grad_x0.npy                d sum(R * spatial) / d x0 (2,3,56,64)
  weighted.npy               Paint by Word's weighted LPIPS (2) with the mask of mask_of()
56x64 keeps every layer non-square (13x15, 6x7, 2x3) so a swapped H/W cannot pass.
"""
import argparse
import os
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIX = os.path.join(ROOT, "tests", "fixtures", "lpips")
HEADS = os.path.join(ROOT, "..", "shared", "data", "lpips", "v0.1", "alex.pth")
N, H, W = 2, 56, 64


def alexnet_features():
    """torchvision.models.alexnet().features, same module indices."""
    return nn.Sequential(
        nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2),   # 0
        nn.ReLU(inplace=True),                                   # 1
        nn.MaxPool2d(kernel_size=3, stride=2),                   # 2
        nn.Conv2d(64, 192, kernel_size=5, padding=2),            # 3
        nn.ReLU(inplace=True),                                   # 4
        nn.MaxPool2d(kernel_size=3, stride=2),                   # 5
        nn.Conv2d(192, 384, kernel_size=3, padding=1),           # 6
        nn.ReLU(inplace=True),                                   # 7
        nn.Conv2d(384, 256, kernel_size=3, padding=1),           # 8
        nn.ReLU(inplace=True),                                   # 9
        nn.Conv2d(256, 256, kernel_size=3, padding=1),           # 10
        nn.ReLU(inplace=True),                                   # 11
        nn.MaxPool2d(kernel_size=3, stride=2),                   # 12
    )


class LPIPSAlex(nn.Module):
    CHANNELS = (64, 192, 384, 256, 256)
    SLICES = ((0, 2), (2, 5), (5, 8), (8, 10), (10, 12))

    def __init__(self, features, heads):
        super().__init__()
        self.register_buffer("shift", torch.tensor([-.030, -.088, -.188])[None, :, None, None])
        self.register_buffer("scale", torch.tensor([.458, .448, .450])[None, :, None, None])
        self.slices = nn.ModuleList(
            nn.Sequential(*[features[i] for i in range(a, b)]) for a, b in self.SLICES)
        self.lins = nn.ModuleList()
        for k, c in enumerate(self.CHANNELS):
            lin = nn.Conv2d(c, 1, 1, stride=1, padding=0, bias=False)
            lin.weight.data.copy_(heads["lin%d.model.1.weight" % k])
            self.lins.append(lin)
        for p in self.parameters():
            p.requires_grad_(False)

    def trunk(self, x):
        h = (x - self.shift) / self.scale
        outs = []
        for s in self.slices:
            h = s(h)
            outs.append(h)
        return outs

    @staticmethod
    def normalize_tensor(x, eps=1e-10):
        return x / (torch.sqrt(torch.sum(x ** 2, dim=1, keepdim=True)) + eps)

    def forward(self, in0, in1, spatial):
        o0, o1 = self.trunk(in0), self.trunk(in1)
        val = 0
        for k in range(len(self.CHANNELS)):
            d = (self.normalize_tensor(o0[k]) - self.normalize_tensor(o1[k])) ** 2
            r = self.lins[k](d)
            if spatial:
                r = nn.Upsample(size=tuple(in0.shape[2:]), mode="bilinear",
                                align_corners=False)(r)
            else:
                r = r.mean([2, 3], keepdim=True)
            val = val + r
        return val


def mask_of(h, w):
    """The painted region used for the weighted check: a rectangle with a 4-pixel ramp, values
    k/4 (exact in float32); tests/test_lpips.c builds the same one."""
    y = np.arange(h)[:, None]
    x = np.arange(w)[None, :]
    d = np.minimum(np.minimum(y - 12, 40 - y), np.minimum(x - 16, 48 - x))
    return (np.clip(d, 0, 4) / 4.0).astype(np.float32)


def paint_by_word_weighted(lp_map, weight):
    """paintbyword/losses.py PerceptualLoss.__call__ with loss_mask None."""
    n = torch.sum(lp_map * weight, [1, 2, 3])
    d = torch.sum(weight, [1, 2, 3])
    return n / d


def random_trunk_fp16(seed):
    torch.manual_seed(seed)
    feats = alexnet_features()
    with torch.no_grad():
        for m in feats:
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                m.bias.normal_(0.0, 0.1)
    return {"features." + k: v.half() for k, v in feats.state_dict().items()}


def load_trunk(sd16):
    feats = alexnet_features()
    feats.load_state_dict({k[len("features."):]: v.float() for k, v in sd16.items()})
    return feats


def save_npy(name, a, f16=False):
    a = np.ascontiguousarray(a.detach().numpy() if torch.is_tensor(a) else a)
    np.save(os.path.join(FIX, name), a.astype(np.float16 if f16 else np.float32))


def compute(model, x0, x1, r):
    x0 = x0.clone().requires_grad_(True)
    sp = model(x0, x1, spatial=True)
    (sp * r).sum().backward()
    with torch.no_grad():
        sc = model(x0, x1, spatial=False)
        weight = torch.from_numpy(1.0 - mask_of(H, W))[None, None]
        wt = paint_by_word_weighted(sp, weight)
    return {"spatial": sp.detach(), "scalar": sc, "grad_x0": x0.grad, "weighted": wt}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    heads = torch.load(HEADS, map_location="cpu")

    if args.check:
        sd16 = torch.load(os.path.join(FIX, "alexnet_features_fp16.pth"), map_location="cpu")
        ld = lambda n: torch.from_numpy(np.load(os.path.join(FIX, n)).astype(np.float32))
        x0, x1, r = ld("x0.npy"), ld("x1.npy"), ld("r.npy")
    else:
        os.makedirs(FIX, exist_ok=True)
        sd16 = random_trunk_fp16(seed=20240501)
        torch.save(sd16, os.path.join(FIX, "alexnet_features_fp16.pth"))
        g = torch.Generator().manual_seed(7)
        # x0: smooth random pictures with some texture. x1[0]: x0[0] with noise and a
        # brightened patch (an edit-like change); x1[1]: an unrelated picture (a large
        # distance). All rounded to float16 (stored as <f2, exact in float32).
        def picture():
            base = F.interpolate(torch.rand(N, 3, 7, 8, generator=g) * 2 - 1, size=(H, W),
                                 mode="bicubic", align_corners=False)
            return base + 0.15 * torch.randn(N, 3, H, W, generator=g)

        x0 = picture().clamp(-1, 1).half().float()
        other = picture()
        x1 = x0 + 0.3 * torch.randn(N, 3, H, W, generator=g)
        x1[:, :, 20:36, 24:44] += 0.6
        x1[1] = other[1]
        x1 = x1.clamp(-1, 1).half().float()
        r = torch.randn(N, 1, H, W, generator=g).half().float()
        save_npy("x0.npy", x0, f16=True)
        save_npy("x1.npy", x1, f16=True)
        save_npy("r.npy", r, f16=True)

    model = LPIPSAlex(load_trunk(sd16), heads).eval()
    out = compute(model, x0, x1, r)
    if args.check:
        worst = 0.0
        for k, v in out.items():
            ref = np.load(os.path.join(FIX, k + ".npy"))
            d = float(np.abs(v.numpy() - ref).max() / max(np.abs(ref).max(), 1e-30))
            print("%-9s max|d|/max|ref| = %.3g" % (k, d))
            worst = max(worst, d)
        sys.exit(0 if worst < 1e-5 else 1)
    for k, v in out.items():
        save_npy(k + ".npy", v)
    print("scalar:", out["scalar"].flatten().tolist())
    print("spatial mean:", out["spatial"].mean([1, 2, 3]).tolist())
    print("weighted:", out["weighted"].tolist())
    print("grad max:", float(out["grad_x0"].abs().max()))
    print("wrote", FIX)


if __name__ == "__main__":
    main()
