"""Inception Transformer speed beside timm models of similar FLOPs, in one run, same batch size and threads.

For each model at 224 px: parameters, GFLOPs (fvcore, 1 multiply-add = 1 FLOP, attention included), images/s of
the forward pass in eval mode (``torch.inference_mode``) and of forward+backward in train mode. With CUDA present
the same columns are measured on the GPU too (``--dtype bfloat16 --channels-last`` for the usual GPU setting).
Every images/s column has ratio columns beside it: to ``--reference`` (default ``convnext_tiny``, the speed goal)
and, with ``--official PATH``, to the official iFormer code. Only ratios within one run are comparable: on a shared
machine the absolute numbers move with the load.

``--official PATH`` loads a copy of the official ``models/inception_transformer.py`` (github.com/sail-sg/iFormer) that
you supply (it is not shipped: its licence is Apache-2.0 but vitlab keeps no copy); the official ``iformer_small`` is
built from it, given vitlab's weights (same parameter names) and checked to give the same outputs before it is timed.

vitlab's iFormer runs its Linear and 1x1-conv products through oneDNN (``vitlab.models.cpu_linear``); the row
``... (PyTorch GEMM)`` times the same model with that switched off (``onednn_linear(False)``: PyTorch's default
kernel, as the peers use), so the table shows what the kernel gives. ``--onednn-peers`` runs the peers' ``nn.Linear``
layers through the same oneDNN path: the comparison with the kernel held equal.

``--baseline PATH`` does the same with an earlier version of vitlab's own model file, so that one run measures a
speed-up step against the code before it (ratio column ``/baseline``), e.g.
``git show <commit>:src/vitlab/models/inception_transformer.py > /tmp/before.py``.

Usage:
    python benchmarks/bench_iformer.py [--batch-size 8] [--iters 3] [--reference convnext_tiny] [--official PATH]
        [--baseline PATH] [--compile] [--clock wall|cpu] [--onednn-peers] [--cpu-only | --gpu-only]
        [--dtype float32|bfloat16] [--channels-last] [--skip-flops] [--out benchmarks/results/bench_iformer.json]

On a GPU (cuDNN autotuning on), the usual setting:
    python benchmarks/bench_iformer.py --gpu-only --dtype bfloat16 --channels-last --batch-size 128 --iters 10
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import sys
import time
import warnings
from pathlib import Path

import timm
import torch
from _args import check_out, check_positive, check_python_file
from torch import nn

import vitlab  # noqa: F401  (registers inception_transformer_*)
from vitlab.models.cpu_linear import linear, onednn_linear
from vitlab.models.flops import count_flops

IFORMER = "inception_transformer_small"
PEERS = ("vit_small_patch16_224", "swin_tiny_patch4_window7_224", "convnext_tiny")
OFFICIAL = "official iformer_small"
BASELINE = "baseline (--baseline file)"
WITHOUT_ONEDNN = f"{IFORMER} (PyTorch GEMM)"


class WithoutOneDnn(nn.Module):
    """``model`` run with vitlab's oneDNN products switched off (the same module and weights, PyTorch's kernels)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with onednn_linear(False):
            return self.model(x)


def onednn_peer(model: nn.Module) -> nn.Module:
    """``model`` with every plain ``nn.Linear`` computed by ``vitlab.models.cpu_linear.linear`` (in place)."""
    for module in model.modules():
        if type(module) is nn.Linear:
            module.forward = lambda x, m=module: linear(x, m.weight, m.bias)
    return model


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def load_model_file(option: str, path: Path, factory: str, reference: nn.Module) -> nn.Module:
    """``factory()`` from a user-supplied model file, holding ``reference``'s weights and checked against it.

    The file is run as a module of its own; its timm registrations replace vitlab's, which this script no longer
    needs once its models are built.
    """
    if path.is_dir():
        raise SystemExit(f"{option} {path}: a folder; pass the model file itself (models/inception_transformer.py)")
    if not path.is_file():
        raise SystemExit(f"{option} {path}: no such file")
    spec = importlib.util.spec_from_file_location(f"bench_{option.strip('-')}_inception_transformer", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"{option} {path}: not a Python file; pass the model file (models/inception_transformer.py)")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # timm's register_model looks the module up
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Overwriting", category=UserWarning)
            spec.loader.exec_module(module)
        if not callable(getattr(module, factory, None)):
            raise SystemExit(f"{option} {path}: the file defines no {factory}(); is it the right model file?")
        model = getattr(module, factory)(pretrained=False)
        if not isinstance(model, nn.Module):
            raise SystemExit(f"{option} {path}: {factory}() returned a {type(model).__name__}, not a model")
        model.load_state_dict(reference.state_dict(), strict=True)
    except SystemExit:
        raise
    except Exception as err:  # the user's file: any failure is theirs to fix, said in one line
        raise SystemExit(f"{option} {path}: could not build {factory}() from it ({type(err).__name__}: "
                         f"{' '.join(str(err).split())[:300]})") from None
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        error = (model.eval()(x) - reference.eval()(x)).abs().max().item()
    if error > 1e-4:
        raise SystemExit(f"{option} {path}: its outputs differ from vitlab's by {error:.3g} on the same weights")
    return model


def images_per_second(
    models: dict[str, nn.Module], batch_size: int, iters: int, device: torch.device, train: bool,
    dtype: torch.dtype, channels_last: bool, clock: str = "wall",
) -> dict[str, float]:
    """Median images/s of each model over ``iters`` timed calls after one warm-up call each.

    The models take turns (one call each per round), so a change in the machine's load hits them all alike and the
    ratios stay meaningful on a shared machine. ``clock="cpu"`` times CPU models by this process's CPU time instead
    of the wall clock: with one thread, time spent waiting for a core that other jobs hold is not counted (with
    several threads it adds them up, so use it with ``OMP_NUM_THREADS=1``).
    """
    if clock not in ("wall", "cpu"):
        raise ValueError(f"clock must be 'wall' or 'cpu', got {clock!r}")
    timer = time.process_time if clock == "cpu" and device.type == "cpu" else time.perf_counter
    x = torch.randn(batch_size, 3, 224, 224, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)

    def step(model: nn.Module) -> None:
        model.train(train)
        if train:
            with autocast:
                loss = model(x).float().sum()
            loss.backward()
            model.zero_grad(set_to_none=True)
        else:
            with torch.inference_mode(), autocast:
                model(x)

    for model in models.values():
        step(model)
    times = {name: [] for name in models}
    for _ in range(iters):
        for name, model in models.items():
            _sync(device)
            start = timer()
            step(model)
            _sync(device)
            times[name].append(timer() - start)
    return {name: batch_size / sorted(t)[len(t) // 2] for name, t in times.items()}


def build_parser() -> argparse.ArgumentParser:
    """The command line of this script (its options are those of the module docstring's Usage)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--reference", default="convnext_tiny", choices=(IFORMER, *PEERS),
                        help="model the ratio columns divide by")
    parser.add_argument("--official", type=Path, help="your copy of the official models/inception_transformer.py")
    parser.add_argument("--baseline", type=Path, help="an earlier vitlab inception_transformer.py to compare with")
    parser.add_argument("--compile", action="store_true", help="torch.compile every model (compiled vs compiled)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="autocast dtype")
    parser.add_argument("--channels-last", action="store_true", help="channels-last inputs and weights")
    placement = parser.add_mutually_exclusive_group()
    placement.add_argument("--cpu-only", action="store_true", help="skip the GPU even when CUDA is present")
    placement.add_argument("--gpu-only", action="store_true", help="time the GPU only (e.g. batch 128, bf16)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="time CPU runs by wall clock or by process CPU time (1 thread, shared machine)")
    parser.add_argument("--onednn-peers", action="store_true",
                        help="run the peers' nn.Linear layers through vitlab's oneDNN path too (same kernel for all)")
    parser.add_argument("--skip-flops", action="store_true",
                        help="leave the GFLOPs column out (counting needs fvcore, which has no wheel for some Pythons)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/bench_iformer.json"))
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parsed and checked arguments; a bad one exits with status 2 and a line naming the fix."""
    parser = build_parser()
    args = parser.parse_args(argv)
    check_positive(parser, batch_size=args.batch_size, iters=args.iters)
    if args.gpu_only and not torch.cuda.is_available():
        parser.error("--gpu-only needs a CUDA GPU (torch.cuda.is_available() is False); leave it out on this machine")
    if args.gpu_only and args.onednn_peers:
        parser.error("--onednn-peers changes CPU products only; leave it out with --gpu-only")
    check_python_file(parser, args.official, "--official", "models/inception_transformer.py of sail-sg/iFormer")
    check_python_file(parser, args.baseline, "--baseline", "an earlier src/vitlab/models/inception_transformer.py")
    check_out(parser, args.out)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    dtype = getattr(torch, args.dtype)

    devices = [] if args.gpu_only else [torch.device("cpu")]
    if torch.cuda.is_available() and not args.cpu_only:
        devices.append(torch.device("cuda"))
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    models = {name: timm.create_model(name, num_classes=1000) for name in (IFORMER, *PEERS)}
    extra = {}
    if args.official is not None:
        extra[OFFICIAL] = load_model_file("--official", args.official, "iformer_small", models[IFORMER])
    if args.baseline is not None:
        extra[BASELINE] = load_model_file("--baseline", args.baseline, IFORMER, models[IFORMER])
    if args.onednn_peers:
        models.update({name: onednn_peer(models[name]) for name in PEERS})
    if not args.gpu_only:  # on the GPU the oneDNN path is off anyway: the row would repeat the model's
        extra[WITHOUT_ONEDNN] = WithoutOneDnn(models[IFORMER])
    models = {IFORMER: models[IFORMER], **extra, **models}
    rows = {name: {"model": name, "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
                   "gflops": None if args.skip_flops else count_flops(model) / 1e9} for name, model in models.items()}
    if args.channels_last:
        models = {name: model.to(memory_format=torch.channels_last) for name, model in models.items()}
    runnable = {name: torch.compile(model) if args.compile else model for name, model in models.items()}
    for device in devices:
        for model in models.values():
            model.to(device)
        for mode in ("eval", "train"):
            speeds = images_per_second(
                runnable, args.batch_size, args.iters, device, mode == "train", dtype, args.channels_last, args.clock
            )
            for name, speed in speeds.items():
                rows[name][f"{device.type}_{mode}_img_s"] = speed
            print(f"measured {device.type} {mode}", flush=True)
        for model in models.values():
            model.cpu()
    rows = list(rows.values())

    columns = [f"{d.type}_{m}_img_s" for d in devices for m in ("eval", "train")]
    bases = {"ref": next(r for r in rows if r["model"] == args.reference)}
    if args.official is not None:
        bases["official"] = next(r for r in rows if r["model"] == OFFICIAL)
    if args.baseline is not None:
        bases["baseline"] = next(r for r in rows if r["model"] == BASELINE)
    for row in rows:
        for column in columns:
            for label, base in bases.items():
                row[f"{column}_vs_{label}"] = row[column] / base[column]
    header = f"{'model':<44} {'params (M)':>10} {'GFLOPs':>7}"
    for column in columns:
        header += f" {column.removesuffix('_img_s').replace('_', ' ') + ' img/s':>16}"
        header += "".join(f" {'/' + label:>9}" for label in bases)
    print(f"ratios: /ref = / {args.reference}" + (", /official = / the official code" if "official" in bases else "")
          + (f", /baseline = / {args.baseline}" if "baseline" in bases else ""))
    print(header)
    for row in rows:
        gflops = "-" if row["gflops"] is None else f"{row['gflops']:.2f}"
        line = f"{row['model']:<44} {row['params_m']:>10.2f} {gflops:>7}"
        for column in columns:
            line += f" {row[column]:>16.1f}" + "".join(f" {row[f'{column}_vs_{label}']:>8.2f}x" for label in bases)
        print(line)
    env = {"torch": torch.__version__, "timm": timm.__version__, "threads": torch.get_num_threads(),
           "machine": platform.machine(), "batch_size": args.batch_size, "iters": args.iters, "dtype": args.dtype,
           "channels_last": args.channels_last, "compile": args.compile, "reference": args.reference,
           "onednn_peers": args.onednn_peers,
           "clock": args.clock,
           "official": str(args.official) if args.official else None,
           "baseline": str(args.baseline) if args.baseline else None,
           "cuda": torch.cuda.get_device_name() if any(d.type == "cuda" for d in devices) else None,
           "cudnn_benchmark": torch.backends.cudnn.benchmark}
    args.out.write_text(json.dumps({"env": env, "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
