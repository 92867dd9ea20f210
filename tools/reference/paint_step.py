#!/usr/bin/python3
"""paint_step.py: the Paint by Word painting step in PyTorch, for timing pbw against (bench/run_paint.sh).

    /usr/bin/python3 tools/reference/paint_step.py --gan G.pt --clip HF_DIR \
        --lpips-trunk ALEXNET.pth --lpips-heads alex.pth --mask M.png --ids 49406,...,49407 \
        [--steps 3] [--cma-pop 8] [--threads 2] [--crops 32] [--size 256]

Times, with the same model files pbw loads, what one step of `pbw edit` computes:
  - Adam step: the masked-style synthesis of one w (tools/reference/stylegan2.py's Generator with
    its masked path: demodulation with the original style, the reference's quirk), the CLIP
    loss over `crops` random crops of mask * image (crop side uniform in [0.7, 0.98) of the
    side, (x+1)/2, bicubic to CLIP's size, clamp, CLIP's normalization, 100 (1 - cos)), the
    reconstruction loss outside the mask (L1 + 10 LPIPS, spatial LPIPS weighted by 1 - mask;
    LPIPS from tools/reference/lpips.py), total clip + 5 recon, backward to w, Adam with
    OneCycleLR: what alexandonian/paint-by-word's optimize_sgd does per iteration;
  - CMA generation: `cma_pop` candidates evaluated with the same loss, forward only
    (torch.no_grad), one crop set for the whole population, in batches of `cma_batch` (the
    CMA-ES update itself is negligible and left out).
CLIP is transformers' CLIPModel (get_image_features / get_text_features) from the HF
directory. Prints one JSON line: median seconds per Adam step and per CMA generation (the first
of each is a warm-up and not counted), with the losses so the two sides can be compared.
"""
import argparse
import importlib.util
import json
import os
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))


def load_module(name):
    spec = importlib.util.spec_from_file_location("ref_" + name, os.path.join(HERE, name + ".py"))
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # torch.compile (dynamo) looks modules up by name
    spec.loader.exec_module(mod)
    return mod


sg2 = load_module("stylegan2")
lp = load_module("lpips")

MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
STD = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)


def clip_loss(model, images, target, crops, res):
    """paintbyword/losses.py CLIPLoss (reduction 'none') with given crops: (B) losses."""
    parts = []
    for (y, x, s) in crops:
        c = (images[:, :, y:y + s, x:x + s] + 1) / 2
        c = F.interpolate(c, res, mode="bicubic", align_corners=False).clamp(0, 1)
        parts.append(c)
    px = (torch.stack(parts, 1).view(-1, 3, res, res) - MEAN) / STD
    emb = model.get_image_features(pixel_values=px)
    loss = 100 * (1 - F.cosine_similarity(emb, target, dim=-1))
    return loss.view(-1, len(crops)).mean(1)


def draw_crops(gen, side, n):
    out = []
    for _ in range(n):
        s = int(torch.randint(int(0.7 * side), int(0.98 * side), (), generator=gen))
        y = int(torch.randint(0, side - s, (), generator=gen))
        x = int(torch.randint(0, side - s, (), generator=gen))
        out.append((y, x, s))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gan", required=True)
    ap.add_argument("--clip", required=True)
    ap.add_argument("--lpips-trunk", required=True)
    ap.add_argument("--lpips-heads", required=True)
    ap.add_argument("--mask", required=True)
    ap.add_argument("--ids", required=True, help="CLIP token ids, start and end included")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--style-dim", type=int, default=512)
    ap.add_argument("--n-mlp", type=int, default=8)
    ap.add_argument("--channel-multiplier", type=int, default=2)
    ap.add_argument("--channels", default="")
    ap.add_argument("--steps", type=int, default=3, help="Adam steps timed (after a warm-up)")
    ap.add_argument("--cma-pop", type=int, default=8, help="0: no CMA generation")
    ap.add_argument("--cma-gens", type=int, default=1, help="CMA generations timed")
    ap.add_argument("--cma-batch", type=int, default=2)
    ap.add_argument("--crops", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=30, help="seed-bank row of the start z")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)

    from PIL import Image
    from transformers import CLIPModel

    g, _ = sg2.load_checkpoint(a.gan, a)
    clip = CLIPModel.from_pretrained(a.clip).eval()
    for p in clip.parameters():
        p.requires_grad_(False)
    lpips = lp.LPIPSAlex(lp.load_trunk(torch.load(a.lpips_trunk, map_location="cpu")),
                         torch.load(a.lpips_heads, map_location="cpu")).eval()
    for p in lpips.parameters():
        p.requires_grad_(False)
    res = clip.config.vision_config.image_size
    S = a.size

    m = Image.open(a.mask).convert("RGB").resize((S, S), Image.BILINEAR)
    mask = torch.from_numpy(np.asarray(m)[:, :, 0].astype(np.float32) / 255.0)
    masks = sg2.layer_masks(mask, S)
    mask4 = mask[None, None]
    keep = 1 - mask4

    z = torch.from_numpy(np.random.RandomState(1).standard_normal((a.seed + 1) * a.style_dim)
                         .astype(np.float32)[a.seed * a.style_dim:]).view(1, -1)
    with torch.no_grad():
        w0 = g.style(z)
        lat0 = w0[:, None].repeat(1, g.n_latent, 1)
        orig = g.synthesis(lat0)
        ids = torch.tensor([[int(v) for v in a.ids.split(",")]])
        target = clip.get_text_features(input_ids=ids)

    def render(w):
        lat = w[:, None].expand(-1, g.n_latent, -1)
        return g.synthesis(lat, masked=(lat0.expand(w.shape[0], -1, -1), masks, False))

    def total(img, crops):
        c = clip_loss(clip, img * mask4, target, crops, res)
        l1 = ((img - orig).abs() * keep).sum([1, 2, 3]) / keep.sum()
        mp = lpips(img, orig.expand(img.shape[0], -1, -1, -1), spatial=True)
        lpv = (mp * keep).sum([1, 2, 3]) / keep.sum()
        return c + 5 * (l1 + 10 * lpv), c

    gen = torch.Generator().manual_seed(1)
    out = {"torch": torch.__version__, "threads": torch.get_num_threads(), "crops": a.crops,
           "size": S}

    # Adam steps
    w = w0.clone().requires_grad_(True)
    opt = torch.optim.Adam([w], lr=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 0.01, a.steps + 1)
    times, cpu, losses = [], [], []
    for k in range(a.steps + 1):
        t0, c0 = time.perf_counter(), time.process_time()
        loss, c = total(render(w), draw_crops(gen, S, a.crops))
        opt.zero_grad()
        loss.sum().backward()
        opt.step()
        sched.step()
        if k:
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        losses.append(float(loss))
    out.update(adam_step_s=statistics.median(times) if times else None,
               adam_step_cpu_s=statistics.median(cpu) if cpu else None, adam_losses=losses)

    # CMA generations (forward only, population in batches, one crop set per generation)
    if a.cma_pop > 0:
        times, cpu = [], []
        rng = torch.Generator().manual_seed(2)
        for k in range(a.cma_gens + 1):
            X = w0 + 0.5 * torch.randn(a.cma_pop, a.style_dim, generator=rng)
            crops = draw_crops(gen, S, a.crops)
            t0, c0 = time.perf_counter(), time.process_time()
            vals = []
            with torch.no_grad():
                for i in range(0, a.cma_pop, a.cma_batch):
                    vals.append(total(render(X[i:i + a.cma_batch]), crops)[0])
            if k:
                times.append(time.perf_counter() - t0)
                cpu.append(time.process_time() - c0)
        out.update(cma_pop=a.cma_pop, cma_gen_s=statistics.median(times),
                   cma_gen_cpu_s=statistics.median(cpu), cma_best=float(torch.cat(vals).min()))
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
