"""GPU check (run it where a CUDA GPU is present): ViT-B/16 fine-tuning methods and the iFormer-S step in bf16.

ViT-B/16 at 224 px, batch 64, ``torch.autocast(bfloat16)``: full fine-tuning vs LoRA (r = 8 and r = 1 on ``qkv``)
vs KAdaptation (vitlab's defaults; its step also as a ratio to LoRA r = 1's) — training step time, images/s, peak
GPU memory — and iFormer-S forward + backward at the same batch. Weights are random (timing does not depend on them;
nothing is downloaded). It also checks that a bf16 step gives finite losses and that each method trains only its own
parameters.

Usage (prints a Markdown table, writes JSON)::

    python benchmarks/gpu_check.py [--batch 64] [--steps 20] [--out benchmarks/results/gpu_check.json]
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from _args import check_out, check_positive

import vitlab  # noqa: F401  (registers vitlab's models)
from vitlab.peft import build_peft_transform, count_parameters


def _step_time(model: torch.nn.Module, batch: int, steps: int, device: torch.device) -> dict[str, float]:
    model = model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    frozen = {name: p.detach().clone() for name, p in model.named_parameters() if not p.requires_grad}
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    images = torch.randn(batch, 3, 224, 224, device=device).to(memory_format=torch.channels_last)
    targets = torch.randint(0, 10, (batch,), device=device)

    def step() -> float:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = F.cross_entropy(model(images), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    for _ in range(3):  # warm-up: cuDNN autotuning, allocator
        step()
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    losses = [step() for _ in range(steps)]
    torch.cuda.synchronize(device)
    seconds = (time.perf_counter() - start) / steps
    if not all(math.isfinite(v) for v in losses):
        raise FloatingPointError(f"non-finite bf16 loss: {losses}")
    current = dict(model.named_parameters())
    moved = [name for name, value in frozen.items() if not torch.equal(current[name], value)]
    if moved:
        raise AssertionError(f"frozen parameters changed in training: {moved[:5]}")
    return {"step_ms": 1000 * seconds, "images_per_s": batch / seconds,
            "peak_mem_gib": torch.cuda.max_memory_allocated(device) / 2**30,
            "trainable": count_parameters(model)["trainable"]}


def build_parser() -> argparse.ArgumentParser:
    """The command line of this script (its options are those of the module docstring's Usage)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64, help="images per training step")
    parser.add_argument("--steps", type=int, default=20, help="timed training steps per model (after 3 warm-up)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/gpu_check.json"))
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parsed and checked arguments; a bad one, or a machine without a CUDA GPU, exits with status 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    check_positive(parser, batch=args.batch, steps=args.steps)
    check_out(parser, args.out)
    if not torch.cuda.is_available():
        parser.error("needs a CUDA GPU (torch.cuda.is_available() is False); run it on a machine with one")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.backends.cudnn.benchmark = True
    device = torch.device("cuda")
    rows = {}
    for label, method, options in (("full", "full", {}), ("LoRA r=8", "lora", {"r": 8}),
                                   ("LoRA r=1", "lora", {"r": 1}), ("KAdaptation", "kadaptation", {})):
        vit = timm.create_model("vit_base_patch16_224", num_classes=10)
        model = build_peft_transform(method, **options)(vit)
        rows[f"ViT-B/16 {label}"] = _step_time(model, args.batch, args.steps, device)
        del model, vit
        torch.cuda.empty_cache()
    iformer = timm.create_model("inception_transformer_small", num_classes=10)
    rows["iFormer-S full"] = _step_time(iformer, args.batch, args.steps, device)
    name = torch.cuda.get_device_name(device)
    print(f"GPU: {name}, torch {torch.__version__}, bf16 autocast, channels-last, batch {args.batch}, 224 px\n")
    lora_r1 = rows["ViT-B/16 LoRA r=1"]["step_ms"]
    print("| model / method | trainable | step (ms) | step / LoRA r=1 | images/s | peak memory (GiB) |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, row in rows.items():
        row["step_vs_lora_r1"] = row["step_ms"] / lora_r1
        ratio = f"{row['step_vs_lora_r1']:.2f}x" if label.startswith("ViT") else "-"
        print(f"| {label} | {row['trainable']:,} | {row['step_ms']:.1f} | {ratio} | {row['images_per_s']:.0f} | "
              f"{row['peak_mem_gib']:.2f} |")
    args.out.write_text(json.dumps({"gpu": name, "torch": torch.__version__, "batch": args.batch, "rows": rows},
                                   indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
