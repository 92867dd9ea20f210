#!/usr/bin/env python3
"""train_clip.py: trains the shapes world's CLIP (transformers' CLIPModel, small config).

    python3 tools/train/train_clip.py --vocab models/shapes/clip --out DIR --seconds 240
    /usr/bin/python3 tools/train/train_clip.py --vocab models/shapes/clip --out /tmp/c --tiny

The model is transformers' CLIPModel with a ViT-B/32-shaped image tower (224 px input, 32 px
patches: 50 tokens) and a causal text tower, both narrow (--width, --layers), QuickGELU, its
own BPE vocabulary (tools/train/bpe_vocab.py; ids come from the word table that script made
with pbw's tokenizer). pbw_clip_load reads every size from config.json and the weights.

Data: scenes of dataset seed 2 rendered by pbw's C code (tools/train/shapes_world.py). Each
example is one of
  - the whole scene (64 px) with one of its four captions ("a red circle and a blue star", the
    sized, placed and full versions), or
  - one of its shapes as the painter's default loss (paste_onto_blank) shows a masked region:
    the image times a box mask around the shape (grown 1-8 px, usually square), so mid-gray
    outside in CLIP's [0,1] pixels, with one of that shape's captions ("a red circle", "a large
    red circle", "a large red circle at the top left"), or
  - (--p-empty) the same for a box over background only, captioned with the background part
    of the full caption ("a dark striped background"): without these, an edit can please the
    loss by erasing the shape, since CLIP never saw an empty mask.
Some pictures (--p-blur) are softened by a small Gaussian blur, as the GAN's are.
Like the painter's loss, most examples are a random square crop (side 0.7-0.98 of the image)
resized to 224 with bicubic interpolation, then CLIP's normalization.
Loss: CLIP's symmetric contrastive loss with soft targets that treat identical captions in the
batch as matches. AdamW, warm-up then cosine over the step count that fits --seconds (measured
on the first steps), bf16 autocast on a GPU.

Writes to --out: config.json, model.safetensors (fp16, HF CLIPModel names), vocab.json,
merges.txt, tokenizer_config.json (a Hugging Face CLIP directory), and clip_log.jsonl with the
held-out top-1 accuracy among 10 captions (seed 777001, as `pbw shapes clip-eval` measures).
"""
import argparse
import json
import math
import os
import shutil
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import shapes_world as sw  # noqa: E402

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


def make_config(vocab_size, sot, eot, a):
    return {
        "architectures": ["CLIPModel"],
        "model_type": "clip",
        "projection_dim": a.embed,
        "logit_scale_init_value": 2.6592,
        "torch_dtype": "float16",
        "text_config": {
            "model_type": "clip_text_model", "vocab_size": vocab_size, "hidden_size": a.text_width,
            "intermediate_size": 4 * a.text_width, "num_hidden_layers": a.text_layers,
            "num_attention_heads": a.text_width // 64, "max_position_embeddings": 77,
            "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5, "bos_token_id": sot,
            "eos_token_id": eot, "pad_token_id": 0, "projection_dim": a.embed},
        "vision_config": {
            "model_type": "clip_vision_model", "hidden_size": a.width,
            "intermediate_size": 4 * a.width, "num_hidden_layers": a.layers,
            "num_attention_heads": a.width // 64, "image_size": 224, "patch_size": 32,
            "num_channels": 3, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5,
            "projection_dim": a.embed},
    }


class Data:
    """Scenes on the device: pixels, caption ids, shape boxes."""

    def __init__(self, seed, n, tok, device, size=64):
        rgb, scenes = sw.render(seed=seed, first=0, n=n, size=size)
        self.size = size
        self.rgb = torch.from_numpy(rgb).to(device).permute(0, 3, 1, 2).contiguous()
        caps, index = [], {}

        def cid(t):
            if t not in index:
                index[t] = len(caps)
                caps.append(t)
            return index[t]

        self.scene_cap = torch.tensor([[cid(t) for t in s["captions"]] for s in scenes])
        # what an empty masked region shows: the background part of the full caption
        # ("... on a dark striped background" -> "a dark striped background")
        self.bg_cap = torch.tensor([cid("a " + s["captions"][-1].rsplit(" on a ", 1)[1]) for s in scenes])
        shape_cap = np.full((n, 3, 3), -1, np.int64)
        boxes = np.zeros((n, 3, 4), np.float32)
        nsh = np.zeros(n, np.int64)
        for i, s in enumerate(scenes):
            nsh[i] = len(s["shapes"])
            for j, sh in enumerate(s["shapes"]):
                shape_cap[i, j] = [cid(t) for t in sh["captions"]]
                boxes[i, j] = sh["bbox"]
        self.caps = caps
        self.ids = torch.tensor([tok.encode(t) for t in caps], device=device)
        self.scene_cap = self.scene_cap.to(device)
        self.bg_cap = self.bg_cap.to(device)
        self.shape_cap = torch.from_numpy(shape_cap).to(device)
        self.boxes = torch.from_numpy(boxes).to(device)
        self.nsh = torch.from_numpy(nsh).to(device)
        self.scenes = scenes


def box_masks(boxes, grow, square, size):
    """(B,4) boxes [x0,y0,x1,y1) grown by grow (B,) pixels, squared where square (B,) -> (B,1,S,S)."""
    x0, y0, x1, y1 = boxes.unbind(1)
    w, h = x1 - x0, y1 - y0
    side = torch.maximum(w, h)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    hw = torch.where(square, side, w) / 2 + grow
    hh = torch.where(square, side, h) / 2 + grow
    r = torch.arange(size, device=boxes.device, dtype=torch.float32) + 0.5
    mx = (r[None] >= (cx - hw)[:, None]) & (r[None] < (cx + hw)[:, None])
    my = (r[None] >= (cy - hh)[:, None]) & (r[None] < (cy + hh)[:, None])
    return (my[:, :, None] & mx[:, None, :]).float()[:, None]


def to_clip(img, crop_prob, gen=None):
    """img (B,3,S,S) in [-1,1] -> CLIP pixels (B,3,224,224): a random square crop (side in
    [0.7, 0.98) of S, uniform offset) with probability crop_prob, else the whole image; bicubic;
    [0,1], clamped, normalized."""
    B, _, S, _ = img.shape
    dev = img.device
    crop = torch.rand(B, device=dev) < crop_prob
    side = torch.where(crop, 0.7 + 0.28 * torch.rand(B, device=dev), torch.ones(B, device=dev))
    off_x = (1 - side) * torch.rand(B, device=dev)
    off_y = (1 - side) * torch.rand(B, device=dev)
    theta = torch.zeros(B, 2, 3, device=dev)
    theta[:, 0, 0] = side
    theta[:, 1, 1] = side
    theta[:, 0, 2] = (off_x + side / 2) * 2 - 1
    theta[:, 1, 2] = (off_y + side / 2) * 2 - 1
    grid = F.affine_grid(theta, (B, 3, 224, 224), align_corners=False)
    x = F.grid_sample(img, grid, mode="bicubic", padding_mode="border", align_corners=False)
    x = ((x + 1) / 2).clamp(0, 1)
    mean = torch.tensor(MEAN, device=dev).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=dev).view(1, 3, 1, 1)
    return (x - mean) / std


def empty_boxes(data, idx, tries=8):
    """A square box of 12-28 px per scene that touches no shape (grown by 2 px), as (B,4), and
    whether one was found in `tries` draws."""
    dev = idx.device
    B, S = idx.shape[0], data.size
    side = 12 + torch.rand(B, tries, device=dev) * 16
    x0 = torch.rand(B, tries, device=dev) * (S - side)
    y0 = torch.rand(B, tries, device=dev) * (S - side)
    cand = torch.stack([x0, y0, x0 + side, y0 + side], -1)              # (B,T,4)
    sb = data.boxes[idx]                                                   # (B,3,4)
    valid = torch.arange(3, device=dev)[None] < data.nsh[idx][:, None]     # (B,3)
    c, b = cand[:, :, None], sb[:, None]
    hit = ((c[..., 0] < b[..., 2] + 2) & (c[..., 2] > b[..., 0] - 2) &
           (c[..., 1] < b[..., 3] + 2) & (c[..., 3] > b[..., 1] - 2) & valid[:, None])
    free = ~hit.any(-1)                                                    # (B,T)
    first = torch.argmax(free.int(), 1)
    return cand[torch.arange(B, device=dev), first], free.any(1)


def blur(img, sigma):
    """Separable Gaussian blur of a batch, one sigma (pixels) for all."""
    r = max(1, int(math.ceil(2.5 * sigma)))
    x = torch.arange(-r, r + 1, device=img.device, dtype=img.dtype)
    k = torch.exp(-x * x / (2 * sigma * sigma))
    k = (k / k.sum()).view(1, 1, 1, -1).repeat(img.shape[1], 1, 1, 1)
    img = F.conv2d(F.pad(img, (r, r, 0, 0), mode="replicate"), k, groups=img.shape[1])
    return F.conv2d(F.pad(img, (0, 0, r, r), mode="replicate"), k.transpose(2, 3), groups=img.shape[1])


def batch(data, B, p_mask, crop_prob, p_empty=0.0, p_blur=0.0):
    dev = data.rgb.device
    idx = torch.randint(0, data.rgb.shape[0], (B,), device=dev)
    img = data.rgb[idx].float() / 127.5 - 1
    if p_blur > 0:  # the GAN's pictures are softer than the renderer's
        nb = int(B * p_blur)
        img[:nb] = blur(img[:nb], 0.3 + 0.7 * float(torch.rand(())))
    u = torch.rand(B, device=dev)
    masked = u < p_mask
    j = (torch.rand(B, device=dev) * data.nsh[idx]).long()
    lvl_scene = torch.randint(0, 4, (B,), device=dev)
    lvl_shape = torch.randint(0, 3, (B,), device=dev)
    cap = torch.where(masked, data.shape_cap[idx, j, lvl_shape], data.scene_cap[idx, lvl_scene])
    boxes = data.boxes[idx, j]
    grow = torch.randint(1, 9, (B,), device=dev).float()
    square = torch.rand(B, device=dev) < 0.7
    if p_empty > 0:  # a mask over background only: its caption names the background
        eb, found = empty_boxes(data, idx)
        empty = (u >= p_mask) & (u < p_mask + p_empty) & found
        boxes = torch.where(empty[:, None], eb, boxes)
        grow = torch.where(empty, torch.zeros_like(grow), grow)
        cap = torch.where(empty, data.bg_cap[idx], cap)
        masked = masked | empty
    m = box_masks(boxes, grow, square, data.size)
    img = torch.where(masked[:, None, None, None], img * m, img)
    return to_clip(img, crop_prob), cap


def features(model, px, ids):
    v = model.visual_projection(model.vision_model(pixel_values=px).pooler_output)
    t = model.text_model(input_ids=ids).pooler_output
    return v, model.text_projection(t)


@torch.no_grad()
def evaluate(model, data, n=500, choices=10, seed=777001):
    """Top-1 among `choices` captions: whole scenes (short caption) and the first shape in a
    square mask grown by 4 px (its short caption), as `pbw shapes clip-eval` does; and for a
    mask over background only, how often its background caption beats every one of 9 short
    shape captions (an empty region must not look like a shape to the painter's loss)."""
    model.eval()
    dev = data.rgb.device
    n = min(n, data.rgb.shape[0])
    img = data.rgb[:n].float() / 127.5 - 1
    m = box_masks(data.boxes[:n, 0], torch.full((n,), 4.0, device=dev),
                  torch.ones(n, dtype=torch.bool, device=dev), data.size)
    eb, found = empty_boxes(data, torch.arange(n, device=dev))
    me = box_masks(eb, torch.zeros(n, device=dev), torch.ones(n, dtype=torch.bool, device=dev), data.size)

    def embed(views, cap_ids):
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            v, _ = features(model, to_clip(views, 0.0), data.ids[:1])
            _, t = features(model, to_clip(views[:1], 0.0), data.ids[cap_ids])
        return F.normalize(v.float(), dim=-1), F.normalize(t.float(), dim=-1)

    res = []
    rng = np.random.RandomState(seed)
    for views, caps in ((img, data.scene_cap[:n, 0]), (img * m, data.shape_cap[:n, 0, 0])):
        uniq, inv = torch.unique(caps, return_inverse=True)
        v, t = embed(views, uniq)
        sims = v @ t.T
        right = 0
        for i in range(n):
            others = [u for u in range(len(uniq)) if u != inv[i].item()]
            pick = rng.choice(others, size=min(choices - 1, len(others)), replace=False)
            right += bool((sims[i, inv[i]] > sims[i, torch.as_tensor(pick, device=dev)]).all())
        res.append(right / n)
    shape_caps = torch.unique(data.shape_cap[:n, 0, 0])
    bg_u, bg_inv = torch.unique(data.bg_cap[:n], return_inverse=True)
    v, t_shape = embed(img * me, shape_caps)
    _, t_bg = embed(img[:1], bg_u)
    s_bg = (v * t_bg[bg_inv]).sum(-1)
    s_sh = v @ t_shape.T
    right, tot = 0, 0
    for i in range(n):
        if not found[i]:
            continue
        pick = rng.choice(len(shape_caps), size=min(choices - 1, len(shape_caps)), replace=False)
        right += bool((s_bg[i] > s_sh[i, torch.as_tensor(pick, device=dev)]).all())
        tot += 1
    res.append(right / max(1, tot))
    model.train()
    return res


def save(model, cfg, a, out):
    from safetensors.torch import save_file
    sd = {k: v.detach().half().contiguous().cpu() for k, v in model.state_dict().items()
          if not k.endswith("position_ids")}
    save_file(sd, os.path.join(out, "model.safetensors.tmp"), metadata={"format": "pt"})
    os.replace(os.path.join(out, "model.safetensors.tmp"), os.path.join(out, "model.safetensors"))
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    for name in ("vocab.json", "merges.txt"):
        if os.path.abspath(a.vocab) != os.path.abspath(out):
            shutil.copy(os.path.join(a.vocab, name), os.path.join(out, name))
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "CLIPTokenizer", "model_max_length": 77,
                   "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
                   "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}, f, indent=2)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--vocab", required=True, help="dir with vocab.json, merges.txt, word_ids.json")
    ap.add_argument("--out", required=True)
    ap.add_argument("--seconds", type=float, default=240)
    ap.add_argument("--width", type=int, default=192)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--text-width", type=int, default=192)
    ap.add_argument("--text-layers", type=int, default=3)
    ap.add_argument("--embed", type=int, default=128)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--wd", type=float, default=0.1)
    ap.add_argument("--scenes", type=int, default=150000)
    ap.add_argument("--p-mask", type=float, default=0.5)
    ap.add_argument("--crop-prob", type=float, default=0.8)
    ap.add_argument("--p-empty", type=float, default=0.15, help="masks over background only")
    ap.add_argument("--p-blur", type=float, default=0.3, help="softened pictures")
    ap.add_argument("--init", default="", help="start from this HF CLIP directory's weights")
    ap.add_argument("--tiny", action="store_true", help="CPU smoke test settings")
    args = ap.parse_args()
    if args.tiny:
        args.scenes, args.batch, args.seconds = 600, 32, min(args.seconds, 40)
    os.makedirs(args.out, exist_ok=True)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    np.random.seed(0)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    log = open(os.path.join(args.out, "clip_log.jsonl"), "a")
    t0 = time.time()

    def say(**kv):
        kv["t"] = round(time.time() - t0, 1)
        line = json.dumps(kv)
        print("clip", line, flush=True)
        log.write(line + "\n")
        log.flush()

    tok = sw.Tokens(os.path.join(args.vocab, "word_ids.json"))
    with open(os.path.join(args.vocab, "vocab.json")) as f:
        vocab_size = len(json.load(f))
    train = Data(2, args.scenes, tok, dev)
    held = Data(777001, 500 if not args.tiny else 100, tok, dev)
    say(event="data", scenes=args.scenes, captions=len(train.caps), render_s=round(time.time() - t0, 1))

    from transformers import CLIPConfig, CLIPModel
    cfg = make_config(vocab_size, tok.sot, tok.eot, args)
    hf_cfg = CLIPConfig(text_config=cfg["text_config"], vision_config=cfg["vision_config"],
                        projection_dim=args.embed)
    model = CLIPModel(hf_cfg)
    if args.init:
        from safetensors.torch import load_file
        sd = {k: v.float() for k, v in load_file(os.path.join(args.init, "model.safetensors")).items()}
        missing, unexpected = model.load_state_dict(sd, strict=False)
        assert not unexpected and all(k.endswith("position_ids") for k in missing), (missing, unexpected)
        say(event="init", path=args.init)
    model = model.to(dev).train()
    say(event="model", params=sum(p.numel() for p in model.parameters()))
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.wd},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.98), eps=1e-6)
    total, warm, t20 = None, 50, 0.0
    step = 0
    t_train = time.time()
    while True:
        el = time.time() - t_train
        if step == 20:
            t20 = el
        if total is None and step == 60:  # the first steps include warm-up costs: skip them
            rate = (el - t20) / 40
            total = max(100, 60 + int((args.seconds - el) / rate))
            say(event="schedule", steps=total, s_per_step=round(rate, 4))
        if total is not None and step >= total:
            break
        if el > args.seconds * 1.1:  # the estimate was off: stop on time anyway
            break
        T = total or 10 ** 9
        lr = args.lr * min(1.0, (step + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1.0, step / T)))
        for gr in opt.param_groups:
            gr["lr"] = lr
        px, cap = batch(train, args.batch, args.p_mask, args.crop_prob, args.p_empty, args.p_blur)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            v, t = features(model, px, train.ids[cap])
        v, t = F.normalize(v.float(), dim=-1), F.normalize(t.float(), dim=-1)
        scale = model.logit_scale.clamp(max=math.log(100)).exp()
        logits = scale * v @ t.T
        same = (cap[:, None] == cap[None, :]).float()
        tgt = same / same.sum(1, keepdim=True)
        loss = (-(tgt * F.log_softmax(logits, 1)).sum(1).mean()
                - (tgt * F.log_softmax(logits.T, 1)).sum(1).mean()) / 2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        if step % 250 == 0 or (args.tiny and step % 10 == 0):
            say(step=step, loss=round(loss.item(), 4), lr=round(lr, 6), scale=round(scale.item(), 2))
        if step % 1000 == 0:
            a, b, c = evaluate(model, held)
            say(step=step, top1_scene=a, top1_masked_shape=b, empty_vs_shapes=c)
    save(model, cfg, args, args.out)
    a, b, c = evaluate(model, held)
    say(event="done", steps=step, train_s=round(time.time() - t_train, 1), top1_scene=a,
        top1_masked_shape=b, empty_vs_shapes=c, final_loss=round(loss.item(), 4))


if __name__ == "__main__":
    main()
