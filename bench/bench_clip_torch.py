#!/usr/bin/python3
"""bench_clip_torch.py: PyTorch's time for what bench/bench_clip.c measures: transformers'
CLIPModel image tower (get_image_features) on a batch at the model's size, forward alone
(no_grad) and forward + backward to the pixels of sum_i (1 - cos(image_i, text)), parameters
frozen (requires_grad False, as painting does).

    bench_clip_torch.py MODEL_DIR THREADS BATCH REPS     one TSV line per pass: torch <TAB> pass
                                                         <TAB> batch <TAB> median ms <TAB> - <TAB>
                                                         - <TAB> mean CPU ms (all threads)
    bench_clip_torch.py --write MODEL_DIR                writes a ViT-B/32 CLIPModel with seeded
                                                         random weights (no download)
"""
import sys
import time

import torch


def write(path):
    from transformers import CLIPConfig, CLIPModel
    torch.manual_seed(0)
    cfg = CLIPConfig(text_config=dict(eos_token_id=2), vision_config=dict(
        hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
        patch_size=32, image_size=224), projection_dim=512)
    CLIPModel(cfg).save_pretrained(path, safe_serialization=True)


def main():
    if sys.argv[1] == "--write":
        write(sys.argv[2])
        return
    path, threads, batch, reps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    torch.set_num_threads(threads)
    from transformers import CLIPModel
    model = CLIPModel.from_pretrained(path, local_files_only=True).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    S = model.config.vision_config.image_size
    g = torch.Generator().manual_seed(1)
    px0 = torch.rand(batch, 3, S, S, generator=g) * 4 - 2
    target = torch.rand(1, model.config.projection_dim, generator=g) - 0.5
    for name in ("fwd", "fwd+dx"):
        times, cpu = [], 0.0
        for r in range(reps + 2):
            t0, c0 = time.perf_counter(), time.process_time()
            if name == "fwd":
                with torch.no_grad():
                    model.get_image_features(pixel_values=px0)
            else:
                px = px0.clone().requires_grad_(True)
                img = model.get_image_features(pixel_values=px)
                loss = (1 - torch.nn.functional.cosine_similarity(img, target, dim=-1)).sum()
                loss.backward()
            if r >= 2:  # two warm-up runs, as bench_clip.c
                times.append(time.perf_counter() - t0)
                cpu += time.process_time() - c0
        times.sort()
        print(f"torch\t{name}\t{batch}\t{times[len(times) // 2] * 1e3:.1f}\t-\t-\t{cpu / reps * 1e3:.1f}",
              flush=True)


if __name__ == "__main__":
    main()
