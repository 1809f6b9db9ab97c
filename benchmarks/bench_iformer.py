"""Inception Transformer speed beside timm models of similar FLOPs, in one run, same batch size and threads.

For each model at 224 px: parameters, GFLOPs (fvcore, 1 multiply-add = 1 FLOP, attention included), images/s of
the forward pass in eval mode (``torch.inference_mode``) and of forward+backward in train mode. With CUDA present
the same columns are measured on the GPU too. The ratio column divides by ``vit_small_patch16_224``'s images/s.

Usage:
    python benchmarks/bench_iformer.py [--batch-size 16] [--iters 3] [--out benchmarks/results/bench_iformer.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import timm
import torch
from torch import nn

import vitlab  # noqa: F401  (registers inception_transformer_*)
from vitlab.models.flops import count_flops

MODELS = ("inception_transformer_small", "vit_small_patch16_224", "swin_tiny_patch4_window7_224", "convnext_tiny")
REFERENCE = "vit_small_patch16_224"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def images_per_second(model: nn.Module, batch_size: int, iters: int, device: torch.device, train: bool) -> float:
    """Median images/s over ``iters`` timed calls after one warm-up call."""
    x = torch.randn(batch_size, 3, 224, 224, device=device)
    model.train(train)

    def step() -> None:
        if train:
            model(x).sum().backward()
            model.zero_grad(set_to_none=True)
        else:
            with torch.inference_mode():
                model(x)

    step()
    times = []
    for _ in range(iters):
        _sync(device)
        start = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - start)
    return batch_size / sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/bench_iformer.json"))
    args = parser.parse_args()
    if args.batch_size < 1 or args.iters < 1:
        parser.error("--batch-size and --iters must be >= 1")

    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    rows = []
    for name in MODELS:
        torch.manual_seed(0)
        model = timm.create_model(name, num_classes=1000)
        row = {"model": name, "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
               "gflops": count_flops(model) / 1e9}
        for device in devices:
            model.to(device)
            row[f"{device.type}_eval_img_s"] = images_per_second(model, args.batch_size, args.iters, device, False)
            row[f"{device.type}_train_img_s"] = images_per_second(model, args.batch_size, args.iters, device, True)
        rows.append(row)
        print(f"measured {name}", flush=True)

    reference = next(r for r in rows if r["model"] == REFERENCE)
    header = f"{'model':<30} {'params (M)':>10} {'GFLOPs':>7}"
    for device in devices:
        header += f" {device.type + ' eval img/s':>16} {'ratio':>6} {device.type + ' train img/s':>17} {'ratio':>6}"
    print(header)
    for row in rows:
        line = f"{row['model']:<30} {row['params_m']:>10.2f} {row['gflops']:>7.2f}"
        for device in devices:
            for mode in ("eval", "train"):
                key = f"{device.type}_{mode}_img_s"
                width = 16 if mode == "eval" else 17
                line += f" {row[key]:>{width}.1f} {row[key] / reference[key]:>5.2f}x"
        print(line)
    env = {"torch": torch.__version__, "timm": timm.__version__, "threads": torch.get_num_threads(),
           "machine": platform.machine(), "batch_size": args.batch_size, "iters": args.iters,
           "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"env": env, "reference": REFERENCE, "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
