"""Speed of the patch-based negative views beside a per-image Python loop, kornia's RandomJigsaw and ``x.clone()``.

Two float32 sizes: 256x3x32x32 with 4-px cells (vitlab's training size, where per-call overhead dominates) and
64x3x224x224 with 16-px cells (where memory bandwidth bounds everything). For each: images/s of vitlab's
``PatchShuffle``, ``PatchRotate``, ``PatchInfill`` (a centred 4x4 block of the 8x8 grid = 25 % at 32 px; 6x8 of
the 14x14 grid = 24.5 % at 224 px, where no centred block gives 25 %) and ``NegativeViews`` (all three kinds), of a
straightforward Python loop over images and cells doing the same work (the style of the public unofficial code),
of kornia's ``RandomJigsaw(p=1)`` (shuffle only) and of ``x.clone()`` (one read + one write of the batch: the
memory-bandwidth ceiling). Then the share of a training step of the demo ViT (``vit_vitlab_tiny_patch8_32``,
8-px patches, batch 256 of 1x32x32, AdamW) that making the negative views costs, for the three experiment settings
of ``configs/negatives_*.yaml``. With CUDA present every number is measured on the GPU too.

Goals (issue 5): at 32 px >= 30x the loop and >= 1.5x kornia; at 224 px >= 0.5x ``x.clone()``; views < 3 % of a
training step. Prints a table and the goals, writes JSON. Ratios, not absolute times, are the result.

CPU threads: ``--threads`` (default 1). On a machine whose cores are busy with other work, torch's intra-op thread
pool makes every small op wait for a descheduled worker (milliseconds each), which swamps what is measured; one
thread gives stable ratios. ``--threads 0`` keeps torch's default. The load average is recorded in the JSON.

Usage:
    python benchmarks/bench_negatives.py [--threads 1] [--repeats 5] [--min-time 0.3] [--devices cpu [cuda]]
        [--out benchmarks/results/bench_negatives.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import timm
import torch
import torch.nn.functional as F
from _args import check_out, check_positive

import vitlab  # noqa: F401  (registers vit_vitlab_tiny_patch8_32)
from vitlab.augment import NegativeViews, PatchInfill, PatchRotate, PatchShuffle
from vitlab.losses import NegativeAugmentationLoss

SIZES = ((256, 3, 32, 4, (4, 4)), (64, 3, 224, 16, (6, 8)))  # (batch, channels, side, cell, infill block)
SETTINGS = (("shuffle", "uniform"), ("rotate", "l2"), ("rotate", "contrastive"))  # configs/negatives_*.yaml


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds_per_call(fn: Callable[[], object], device: torch.device, repeats: int, min_time: float) -> float:
    """Median over ``repeats`` of the mean time per call, each repeat calling ``fn`` for at least ``min_time`` s."""
    fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        calls, start = 0, time.perf_counter()
        while True:
            fn()
            calls += 1
            _sync(device)
            elapsed = time.perf_counter() - start
            if elapsed >= min_time:
                break
        times.append(elapsed / calls)
    return statistics.median(times)


def _cells(side: int, cell: int) -> list[tuple[slice, slice]]:
    n = side // cell
    return [(slice(r * cell, (r + 1) * cell), slice(c * cell, (c + 1) * cell)) for r in range(n) for c in range(n)]


def loop_shuffle(x: torch.Tensor, cell: int) -> torch.Tensor:
    """Per image: cut the cells out, put them back in a random order (Python loops over images and cells)."""
    out = torch.empty_like(x)
    cells = _cells(x.shape[-1], cell)
    for i in range(x.shape[0]):
        pieces = [x[i, :, rows, cols] for rows, cols in cells]
        for (rows, cols), source in zip(cells, torch.randperm(len(cells)).tolist(), strict=True):
            out[i, :, rows, cols] = pieces[source]
    return out


def loop_rotate(x: torch.Tensor, cell: int) -> torch.Tensor:
    """Per image and cell: ``rot90`` by a random multiple of 90 degrees."""
    out = torch.empty_like(x)
    cells = _cells(x.shape[-1], cell)
    for i in range(x.shape[0]):
        turns = torch.randint(0, 4, (len(cells),)).tolist()
        for (rows, cols), k in zip(cells, turns, strict=True):
            out[i, :, rows, cols] = torch.rot90(x[i, :, rows, cols], k, dims=(1, 2))
    return out


def loop_infill(x: torch.Tensor, cell: int, block: tuple[int, int] = (2, 2)) -> torch.Tensor:
    """Per image: copy a random border cell into each cell of the centred ``block`` (rows, cols) of cells."""
    out = x.clone()
    n = x.shape[-1] // cell
    cells = _cells(x.shape[-1], cell)
    border = [k for k in range(n * n) if k // n in (0, n - 1) or k % n in (0, n - 1)]
    top, left = (n - block[0]) // 2, (n - block[1]) // 2
    centre = [r * n + c for r in range(top, top + block[0]) for c in range(left, left + block[1])]
    for i in range(x.shape[0]):
        sources = torch.randint(0, len(border), (len(centre),)).tolist()
        for target, source in zip(centre, sources, strict=True):
            (rows, cols), (src_rows, src_cols) = cells[target], cells[border[source]]
            out[i, :, rows, cols] = x[i, :, src_rows, src_cols]
    return out


def loop_views(x: torch.Tensor, cell: int, block: tuple[int, int] = (2, 2)) -> torch.Tensor:
    """Per image: one of the three loops above, drawn uniformly."""
    loops = (loop_shuffle, loop_rotate, lambda t, c: loop_infill(t, c, block))
    kinds = torch.randint(0, 3, (x.shape[0],)).tolist()
    return torch.cat([loops[k](x[i : i + 1], cell) for i, k in enumerate(kinds)])


def throughput(device: torch.device, repeats: int, min_time: float) -> list[dict]:
    """Images/s of every method at both sizes on ``device``."""
    from kornia.augmentation import RandomJigsaw

    rows = []
    for batch, channels, side, cell, block in SIZES:
        x = torch.rand(batch, channels, side, side, device=device)
        grid = (side // cell, side // cell)
        infill = {"replace_rate": None, "centre_shape": block}
        methods = {
            "vitlab PatchShuffle": PatchShuffle(cell), "vitlab PatchRotate": PatchRotate(cell),
            "vitlab PatchInfill": PatchInfill(cell, **infill),
            "vitlab NegativeViews": NegativeViews(["shuffle", "rotate", "infill"], cell, **infill),
            "loop shuffle": lambda t, c=cell: loop_shuffle(t, c), "loop rotate": lambda t, c=cell: loop_rotate(t, c),
            "loop infill": lambda t, c=cell, b=block: loop_infill(t, c, b),
            "loop views": lambda t, c=cell, b=block: loop_views(t, c, b),
            "kornia RandomJigsaw": RandomJigsaw(grid=grid, p=1.0), "x.clone()": torch.Tensor.clone,
        }
        for name, method in methods.items():
            if name.startswith("loop") and device.type == "cuda" and side > 32:
                continue  # 200k tiny kernel launches: minutes, and says nothing new
            with torch.no_grad():
                seconds = seconds_per_call(lambda m=method, t=x: m(t), device, repeats, min_time)
            rows.append({"device": device.type, "size": f"{batch}x{channels}x{side}x{side}", "cell": cell,
                         "method": name, "img_per_s": batch / seconds})
            print(f"  {device.type} {rows[-1]['size']} {name}: {rows[-1]['img_per_s']:.0f} img/s", flush=True)
    return rows


def training_step_share(device: torch.device, repeats: int, min_time: float) -> list[dict]:
    """Time of a demo-ViT training step with and without the negative term, and of making the views alone."""
    rows = []
    x = torch.randn(256, 1, 32, 32, device=device)
    y = torch.randint(0, 10, (256,), device=device)
    for kind, loss in SETTINGS:
        torch.manual_seed(0)
        model = timm.create_model("vit_vitlab_tiny_patch8_32", in_chans=1, num_classes=10).to(device).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        term = NegativeAugmentationLoss([kind], 8, loss, weight=1.0, model_patch_size=8).to(device)
        task = SimpleNamespace(model=model)

        def step(negatives: bool, model=model, optimizer=optimizer, term=term, task=task) -> None:
            logits = model(x)
            total = F.cross_entropy(logits, y, label_smoothing=0.1)
            if negatives:
                total = total + term.weight * term(task, (x, y), {"logits": logits})["loss"]
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            optimizer.step()

        plain = seconds_per_call(lambda s=step: s(False), device, repeats, min_time)
        with_negatives = seconds_per_call(lambda s=step: s(True), device, repeats, min_time)
        with torch.no_grad():
            views = seconds_per_call(lambda t=term: t.views(x), device, repeats, min_time)
        rows.append({"device": device.type, "setting": f"{kind}/{loss}", "step_ms": 1e3 * plain,
                     "step_with_negatives_ms": 1e3 * with_negatives, "views_ms": 1e3 * views,
                     "views_share_of_step": views / with_negatives})
        print(f"  {device.type} {kind}/{loss}: step {1e3 * plain:.1f} ms, with negatives {1e3 * with_negatives:.1f} "
              f"ms, views {1e3 * views:.2f} ms", flush=True)
    return rows


def _rate(rows: list[dict], device: str, size: str, method: str) -> float | None:
    found = [r["img_per_s"] for r in rows if (r["device"], r["size"], r["method"]) == (device, size, method)]
    return found[0] if found else None


def summarise(rows: list[dict], steps: list[dict], devices: list[str]) -> dict:
    """Ratios to the loop / kornia / clone, and the goals of issue 5 (met or not) per device."""
    small, large = (f"{b}x{c}x{s}x{s}" for b, c, s, _, _ in SIZES)
    goals = {}
    for device in devices:
        shuffle = _rate(rows, device, small, "vitlab PatchShuffle")
        loops = {kind: _rate(rows, device, small, f"loop {kind}") for kind in ("shuffle", "rotate", "infill")}
        ours = {kind: _rate(rows, device, small, f"vitlab Patch{kind.capitalize()}") for kind in loops}
        clone = _rate(rows, device, large, "x.clone()")
        large_min = min(_rate(rows, device, large, m) for m in ("vitlab PatchShuffle", "vitlab PatchRotate",
                                                                "vitlab PatchInfill"))
        vs_loop = min(ours[k] / loops[k] for k in loops)
        vs_kornia = shuffle / _rate(rows, device, small, "kornia RandomJigsaw")
        share = max(r["views_share_of_step"] for r in steps if r["device"] == device)
        goals[device] = {
            "32px_min_speedup_vs_loop": vs_loop, "32px_min_speedup_vs_loop_met": vs_loop >= 30,
            "32px_shuffle_vs_kornia": vs_kornia, "32px_shuffle_vs_kornia_met": vs_kornia >= 1.5,
            "224px_slowest_vs_clone": large_min / clone, "224px_slowest_vs_clone_met": large_min / clone >= 0.5,
            "max_views_share_of_step": share, "max_views_share_of_step_met": share < 0.03,
        }
    return goals


def print_table(rows: list[dict], steps: list[dict], goals: dict, devices: list[str]) -> None:
    for size in dict.fromkeys(r["size"] for r in rows):
        print(f"\n{size}  (cells of {next(r['cell'] for r in rows if r['size'] == size)} px)")
        header = "".join(f"{d + ' img/s':>14}{'/loop':>8}{'/kornia':>9}{'/clone':>8}" for d in devices)
        print(f"{'method':<22}{header}")
        for method in dict.fromkeys(r["method"] for r in rows if r["size"] == size):
            line = f"{method:<22}"
            for device in devices:
                rate = _rate(rows, device, size, method)
                if rate is None:
                    line += f"{'-':>14}{'':>25}"
                    continue
                kind = method.split()[-1].removeprefix("Patch").lower()
                loop = _rate(rows, device, size, f"loop {'views' if kind == 'negativeviews' else kind}")
                kornia = _rate(rows, device, size, "kornia RandomJigsaw")
                clone = _rate(rows, device, size, "x.clone()")
                cells = [rate / loop if loop and method.startswith("vitlab") else None,
                         rate / kornia if kornia and "Shuffle" in method else None, rate / clone]
                line += f"{rate:>14.0f}" + "".join(f"{c:>{w}.2f}x" if c else f"{'':>{w + 1}}"
                                                   for c, w in zip(cells, (7, 8, 7), strict=True))
            print(line)
    print("\ntraining step of the demo ViT (batch 256, 1x32x32, AdamW)")
    for r in steps:
        print(f"  {r['device']:<5} {r['setting']:<20} step {r['step_ms']:8.1f} ms | with negatives "
              f"{r['step_with_negatives_ms']:8.1f} ms | views {r['views_ms']:7.2f} ms = "
              f"{100 * r['views_share_of_step']:.2f} % of the step")
    for device in devices:
        g = goals[device]
        print(f"\ngoals on {device}:")
        print(f"  32 px, slowest vitlab/loop ratio {g['32px_min_speedup_vs_loop']:.1f}x (>= 30x: "
              f"{g['32px_min_speedup_vs_loop_met']})")
        print(f"  32 px, shuffle vs kornia {g['32px_shuffle_vs_kornia']:.2f}x (>= 1.5x: "
              f"{g['32px_shuffle_vs_kornia_met']})")
        print(f"  224 px, slowest transform vs x.clone() {g['224px_slowest_vs_clone']:.2f}x (>= 0.5x: "
              f"{g['224px_slowest_vs_clone_met']})")
        print(f"  views share of a training step <= {100 * g['max_views_share_of_step']:.2f} % (< 3 %: "
              f"{g['max_views_share_of_step_met']})")


def build_parser() -> argparse.ArgumentParser:
    """The command line of this script (its options are those of the module docstring's Usage)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per method (median is kept)")
    parser.add_argument("--min-time", type=float, default=0.3, help="seconds each repeat runs at least")
    parser.add_argument("--devices", nargs="+", default=None, choices=("cpu", "cuda"),
                        help="cpu and/or cuda (default: cpu, plus cuda if present)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/bench_negatives.json"))
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parsed and checked arguments; a bad one exits with status 2 and a line naming the fix."""
    parser = build_parser()
    args = parser.parse_args(argv)
    check_positive(parser, repeats=args.repeats, min_time=args.min_time)
    if args.threads < 0:
        parser.error(f"--threads must be >= 0 (0: torch's default), got {args.threads}")
    if args.devices is not None and len(set(args.devices)) < len(args.devices):
        parser.error(f"--devices {' '.join(args.devices)}: a device given twice; name each once")
    if args.devices is not None and "cuda" in args.devices and not torch.cuda.is_available():
        parser.error("--devices cuda: torch sees no CUDA GPU on this machine; pass --devices cpu")
    check_out(parser, args.out)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    rows, steps = [], []
    for device in devices:
        print(f"measuring on {device} ...", flush=True)
        rows += throughput(torch.device(device), args.repeats, args.min_time)
        steps += training_step_share(torch.device(device), args.repeats, args.min_time)
    goals = summarise(rows, steps, devices)
    print_table(rows, steps, goals, devices)
    env = {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
           "load_average_1_5_15": list(os.getloadavg()), "machine": platform.machine(),
           "processor": platform.processor(), "cuda": torch.cuda.get_device_name() if "cuda" in devices else None,
           "repeats": args.repeats, "min_time_s": args.min_time}
    args.out.write_text(json.dumps({"env": env, "throughput": rows, "training_step": steps, "goals": goals},
                                   indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
