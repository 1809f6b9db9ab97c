"""Random-subspace training speed and memory on ViT-S/16: Fastfood, dense (where it fits) and full fine-tuning.

A *step* is forward + backward + AdamW step on a random batch ``[B, 3, 224, 224]`` through timm's
``vit_small_patch16_224`` (10 classes, D = 21.7M parameters, all of them in the subspace as in Li et al.):

- ``full``: every parameter trains (the reference);
- ``fastfood``: ``wrap_in_subspace(model, SubspaceConfig(dim=d))``, only θ_d trains (O(D) memory);
- ``dense``: the same with ``projection="dense"``, run only where the D×d float32 matrix fits in half of the free
  memory (otherwise the row records the estimate, as ``wrap_in_subspace`` would refuse it).

Each configuration runs in its own subprocess, so its peak memory is its own: peak RSS on the CPU
(``getrusage``; ``model_gib`` is the RSS right after building the model), ``torch.cuda.max_memory_allocated`` on
CUDA. ``setup_s`` is the time to build the projection (P regenerated from the seed). Then the Walsh–Hadamard transform
throughput by size (one vector, each backend). Prints both tables (step time as a ratio to full fine-tuning; the
issue's goal is Fastfood <= 2x) and writes JSON.

Usage:
    python benchmarks/bench_subspace.py [--batch-size 32] [--iters 2] [--warmup 1] [--dims 1000 10000 100000]
        [--device cpu|cuda] [--wht-max-log2 25] [--out benchmarks/results/bench_subspace.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
from _args import check_device, check_out, check_positive

MODEL = "vit_small_patch16_224"


def _rss_gib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**30


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_one(method: str, dim: int | None, batch_size: int, iters: int, warmup: int, device_name: str) -> dict:
    """Time ``warmup + iters`` training steps of one configuration in this process; returns its row."""
    import timm
    import torch.nn.functional as F

    from vitlab.peft.intrinsic import SubspaceConfig, wrap_in_subspace

    device = torch.device(device_name)
    torch.manual_seed(0)
    model = timm.create_model(MODEL, num_classes=10).to(device)
    num_params = sum(p.numel() for p in model.parameters())
    model_gib = _rss_gib() if device.type == "cpu" else torch.cuda.memory_allocated(device) / 2**30
    setup_s = 0.0
    if method != "full":
        start = time.perf_counter()
        model = wrap_in_subspace(model, SubspaceConfig(dim=dim, projection=method))
        _sync(device)
        setup_s = time.perf_counter() - start
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    images = torch.randn(batch_size, 3, 224, 224, device=device)
    labels = torch.randint(0, 10, (batch_size,), device=device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for i in range(warmup + iters):
        _sync(device)
        start = time.perf_counter()
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**30
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    return {"method": method, "dim": dim, "num_params": num_params, "trainable": sum(p.numel() for p in params),
            "step_s": min(times), "mean_step_s": sum(times) / len(times), "setup_s": setup_s, "peak_gib": peak,
            "model_gib": model_gib}


def _child(spec: dict, args: argparse.Namespace) -> dict:
    command = [sys.executable, __file__, "--child", json.dumps(spec), "--batch-size", str(args.batch_size),
               "--iters", str(args.iters), "--warmup", str(args.warmup), "--device", args.device]
    out = subprocess.run(command, capture_output=True, text=True)
    if out.returncode != 0:
        lines = out.stderr.strip().splitlines()
        return {**spec, "error": lines[-1] if lines else f"exit status {out.returncode}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def wht_throughput(max_log2: int, device_name: str) -> list[dict]:
    """Milliseconds per unnormalised FWHT of one vector of 2^k entries, per backend, k = 10, 13, ..., max_log2."""
    from vitlab.peft.intrinsic.hadamard import cuda_kernel_available, fwht

    device = torch.device(device_name)
    backends = ["matmul", "butterfly"] + (["cuda"] if device.type == "cuda" and cuda_kernel_available() else [])
    sizes = sorted({*range(10, max_log2 + 1, 3), max_log2})
    rows = []
    for k in sizes:
        x = torch.randn(2**k, device=device)
        for backend in backends:
            fwht(x, backend)  # warm-up (and the cached ±1 blocks)
            reps, start = 0, time.perf_counter()
            while reps < 3 or time.perf_counter() - start < 0.2:
                fwht(x, backend)
                _sync(device)
                reps += 1
            seconds = (time.perf_counter() - start) / reps
            rows.append({"log2_size": k, "backend": backend, "ms": seconds * 1e3,
                         "gelem_per_s": 2**k / seconds / 1e9})
    return rows


def build_parser() -> argparse.ArgumentParser:
    """The command line of this script (its options are those of the module docstring's Usage)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--iters", type=int, default=2, help="timed steps per configuration (the minimum is kept)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--dims", type=int, nargs="+", default=[1000, 10_000, 100_000])
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--wht-max-log2", type=int, default=25, help="largest FWHT size (2^25 is ViT-S's padded D)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/bench_subspace.json"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parsed and checked arguments; a bad one exits with status 2 and a line naming the fix."""
    parser = build_parser()
    args = parser.parse_args(argv)
    check_positive(parser, batch_size=args.batch_size, iters=args.iters)
    if args.warmup < 0 or not all(d >= 1 for d in args.dims):
        parser.error(f"--warmup must be >= 0 and every --dims value >= 1, got {args.warmup} and {args.dims}")
    if not 10 <= args.wht_max_log2 <= 30:  # sizes 2^10 .. 2^max; 2^30 floats are 4 GiB per vector
        parser.error(f"--wht-max-log2 must be in 10..30 (the FWHT table starts at 2^10), got {args.wht_max_log2}")
    check_device(parser, args.device)
    if not args.child:  # children print their row; only the parent writes
        check_out(parser, args.out)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child:
        spec = json.loads(args.child)
        print(json.dumps(run_one(spec["method"], spec["dim"], args.batch_size, args.iters, args.warmup, args.device)))
        return

    from vitlab.peft.intrinsic.projection import available_memory_bytes

    start = time.perf_counter()
    rows = [_child({"method": "full", "dim": None}, args)]
    num_params = rows[0].get("num_params", 21_669_514)
    free = available_memory_bytes(torch.device(args.device))
    for dim in args.dims:
        rows.append(_child({"method": "fastfood", "dim": dim}, args))
        need = 4 * num_params * dim
        if need <= free // 2:
            rows.append(_child({"method": "dense", "dim": dim}, args))
        else:
            rows.append({"method": "dense", "dim": dim, "error": f"does not fit: P needs {need / 2**30:.0f} GiB, "
                         f"half of the free memory is {free / 2**31:.0f} GiB"})
    full = rows[0].get("step_s")
    print(f"{MODEL}, batch {args.batch_size}, {args.device}, {torch.get_num_threads()} threads")
    print(f"{'method':<9} {'d':>7} {'trainable':>10} {'step s':>8} {'x full':>7} {'peak GiB':>9} {'setup s':>8}")
    for r in rows:
        if "error" in r:
            print(f"{r['method']:<9} {r['dim'] or '-':>7}  {r['error']}")
            continue
        r["ratio_to_full"] = r["step_s"] / full if full else None
        print(f"{r['method']:<9} {r['dim'] or '-':>7} {r['trainable']:>10,} {r['step_s']:>8.2f} "
              f"{r['ratio_to_full']:>6.2f}x {r['peak_gib']:>9.2f} {r['setup_s']:>8.1f}")
    wht = wht_throughput(args.wht_max_log2, args.device)
    print(f"\n{'FWHT size':>10} {'backend':<10} {'ms':>9} {'Gelem/s':>8}")
    for r in wht:
        print(f"{'2^' + str(r['log2_size']):>10} {r['backend']:<10} {r['ms']:>9.3f} {r['gelem_per_s']:>8.3f}")
    env = {"torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.machine(),
           "device": args.device, "model": MODEL, "batch_size": args.batch_size, "iters": args.iters,
           "warmup": args.warmup, "wall_s": time.perf_counter() - start}
    if args.device.startswith("cuda"):
        env["gpu"] = torch.cuda.get_device_name()
    args.out.write_text(json.dumps({"env": env, "steps": rows, "wht": wht}, indent=2) + "\n")
    print(f"wrote {args.out} ({env['wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
