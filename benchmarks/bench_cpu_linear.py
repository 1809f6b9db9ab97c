"""Linear products: PyTorch's ``F.linear`` beside ``vitlab.models.cpu_linear.linear`` (oneDNN), on the iFormer-S's
shapes, in one run.

For each shape (tokens × in -> out: the MLP and qkv products of iFormer-S's four stages at 224 px, batch 8) it times
the forward product (no autograd) and a training product (forward, then the input and weight gradients) with both
kernels, the two taking turns, and prints milliseconds, the ratio F.linear / oneDNN (above 1: oneDNN faster) and the
multiply-adds per second. It also prints the largest difference between the two forward results, relative to the
largest output.

Usage:
    OMP_NUM_THREADS=1 python benchmarks/bench_cpu_linear.py [--repeats 7]
        [--out benchmarks/results/bench_cpu_linear.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from _args import check_out, check_positive

from vitlab.models.cpu_linear import linear, onednn_linear, onednn_linear_available

# (name, tokens, in, out): iFormer-S at 224 px, batch 8 (stage maps 56², 28², 14², 7²; widths 96/192/320/384)
SHAPES = (
    ("stage 1 fc1", 8 * 56 * 56, 96, 384),
    ("stage 1 fc2", 8 * 56 * 56, 384, 96),
    ("stage 2 fc1", 8 * 28 * 28, 192, 768),
    ("stage 3 fc1", 8 * 14 * 14, 320, 1280),
    ("stage 3 fc2", 8 * 14 * 14, 1280, 320),
    ("stage 3 qkv", 8 * 14 * 14, 288, 864),
    ("stage 4 fc1", 8 * 7 * 7, 384, 1536),
)


def median_ms(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median process-CPU milliseconds of each function, the functions taking turns (one warm-up call each)."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.process_time()
            fn()
            times[name].append((time.process_time() - start) * 1e3)
    return {name: statistics.median(values) for name, values in times.items()}


def measure(name: str, tokens: int, fan_in: int, fan_out: int, repeats: int, generator: torch.Generator) -> dict:
    """One shape's row: the forward and training products with both kernels, and their outputs' difference."""
    x = torch.randn(tokens, fan_in, generator=generator)
    weight = (torch.randn(fan_out, fan_in, generator=generator) / fan_in**0.5).requires_grad_()
    bias = torch.zeros(fan_out).requires_grad_()
    upstream = torch.randn(tokens, fan_out, generator=generator)
    inputs = x.clone().requires_grad_()

    def forward(fast: bool) -> torch.Tensor:
        with torch.no_grad(), onednn_linear(fast):
            return linear(x, weight, bias)

    def train(fast: bool) -> None:
        with onednn_linear(fast):
            torch.autograd.grad(linear(inputs, weight, bias), (inputs, weight, bias), upstream)

    ms = median_ms({"forward F.linear": lambda: forward(False), "forward oneDNN": lambda: forward(True),
                    "train F.linear": lambda: train(False), "train oneDNN": lambda: train(True)}, repeats)
    reference = F.linear(x, weight, bias).detach()
    error = ((forward(True) - reference).abs().max() / reference.abs().max()).item()
    macs = tokens * fan_in * fan_out
    return {"shape": name, "tokens": tokens, "in": fan_in, "out": fan_out, **ms,
            "forward_ratio": ms["forward F.linear"] / ms["forward oneDNN"],
            "train_ratio": ms["train F.linear"] / ms["train oneDNN"],
            "forward_gmacs_oneDNN": macs / ms["forward oneDNN"] / 1e6,
            "forward_gmacs_F.linear": macs / ms["forward F.linear"] / 1e6, "relative_difference": error}


def build_parser() -> argparse.ArgumentParser:
    """The command line of this script (its options are those of the module docstring's Usage)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="timed calls per kernel (median reported)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/bench_cpu_linear.json"))
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parsed and checked arguments; a bad one exits with status 2 and a line naming the fix."""
    parser = build_parser()
    args = parser.parse_args(argv)
    check_positive(parser, repeats=args.repeats)
    check_out(parser, args.out)
    if not onednn_linear_available():
        parser.error("this PyTorch build cannot run oneDNN's linear op: nothing to compare; use a build with oneDNN")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)

    generator = torch.Generator().manual_seed(0)
    rows = [measure(*shape, args.repeats, generator) for shape in SHAPES]

    machine = platform.processor() or platform.machine()
    print(f"{torch.get_num_threads()} thread(s), {machine}, torch {torch.__version__}")
    print(f"{'shape':<12} {'tokens x in -> out':>20} {'fwd F.linear ms':>15} {'fwd oneDNN ms':>13} {'ratio':>6} "
          f"{'train F.linear ms':>17} {'train oneDNN ms':>15} {'ratio':>6} {'G MAC/s (F / oneDNN)':>21} "
          f"{'rel. diff':>9}")
    for r in rows:
        dims = f"{r['tokens']} x {r['in']} -> {r['out']}"
        print(f"{r['shape']:<12} {dims:>20} {r['forward F.linear']:>15.2f} {r['forward oneDNN']:>13.2f} "
              f"{r['forward_ratio']:>5.2f}x {r['train F.linear']:>17.2f} {r['train oneDNN']:>15.2f} "
              f"{r['train_ratio']:>5.2f}x {r['forward_gmacs_F.linear']:>10.1f} / {r['forward_gmacs_oneDNN']:>8.1f} "
              f"{r['relative_difference']:>9.1e}")
    env = {"torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.machine(),
           "processor": platform.processor(), "repeats": args.repeats}
    args.out.write_text(json.dumps({"env": env, "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
