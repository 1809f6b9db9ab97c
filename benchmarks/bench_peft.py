"""PEFT speed: KAdaptation through peft beside vitlab 0.1's path and HF peft LoRA / LoKr, and merged inference.

On timm ``vit_small_patch16_224`` at 224 px (random weights, a 10-class head; speed does not depend on the weights):

- **ratios in one process** (the machine may be shared: the steps of all models are timed in turn each round, so a
  load change hits them alike): the training step of KAdaptation through peft (``peft.get_peft_model`` with
  ``KAdaptationConfig``, what ``vitlab fit`` runs: ΔW folded into the weight copy, factor gradients from low-rank
  products) against the same model on the per-token path (``RowSliceLayer.forward``: ``x R`` then ``h L_sᵀ`` added
  to each slice's rows, what KAdaptation ran before the folded path), against vitlab 0.1's own KAdaptation path (its
  ``DeltaLinear`` / ``KAdaptationDelta`` source read from git revision ``--legacy-rev``, the same seeded factors) and
  against peft LoRA r = 1 on every ``qkv``; goals: peft path ≤ 1.05× vitlab 0.1, KAdaptation ≤ 1.0× LoRA r = 1.
  KAdaptation's folded layer computes its ``qkv`` product through oneDNN (``vitlab.models.cpu_linear``), faster than
  PyTorch's default kernel on some CPUs, so LoRA r = 1 is also timed with its ``qkv`` base product on that kernel:
  the ratio to that row is the kernel-neutral one (the adapters' own costs).

- **training**: time of one optimizer step (forward, cross-entropy, backward, AdamW step) and peak memory, for
  ``kadaptation`` (default config: n = 32, r = 1, Q and V rows of every fused ``qkv``), peft ``lora`` and ``lokr`` on
  every ``qkv`` with the rank (LoKr: also ``decompose_factor``) whose adaptation-parameter count is closest to
  KAdaptation's, and ``full`` fine-tuning as the reference. Each method runs in its own process, so its peak memory
  is its own: on the CPU the peak resident set while training (Linux ``/proc/self/clear_refs`` resets it after the
  model is built; otherwise ``ru_maxrss``) and its excess over the resident set before the first step; on CUDA
  ``torch.cuda.max_memory_allocated``.
- **inference**: forward time of the base model, of the KAdaptation model before merging (Kronecker factors made
  non-zero, so ΔW ≠ 0) and after ``merge_adapters`` (a plain model with the base model's parameters); the largest
  output difference between the merged and unmerged model is printed as a check.

Prints a table (times, memory and ratios to KAdaptation / the base model) and writes JSON. Ratios, not absolute
times, are the result: they hold across machines.

Usage:
    python benchmarks/bench_peft.py [--batch-size 4] [--steps 5] [--warmup 1] [--device cpu]
                                    [--legacy-rev b7ef576] [--out benchmarks/results/bench_peft.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

import torch
import torch.nn.functional as F
from _args import check_git_files, check_out, check_positive

MODEL, NUM_CLASSES, IMG = "vit_small_patch16_224", 10, 224
WIDTH, DEPTH = 384, 12  # of MODEL: its fused qkv Linears are WIDTH -> 3 * WIDTH
TRAIN_METHODS = ("kadaptation", "lora", "lokr", "full")
LEGACY_REV = "b7ef576"  # the last revision with vitlab 0.1's own KAdaptation path (before it became a peft method)
LEGACY_FILES = ("src/vitlab/peft/kadaptation/layer.py", "src/vitlab/peft/delta_linear.py")  # read by legacy_kadaptation


def _legacy_module(rev: str, path: str) -> types.ModuleType:
    """A module of vitlab at git revision ``rev`` (its source read with ``git show``; it must import only torch)."""
    root = Path(__file__).resolve().parents[1]
    try:
        source = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=root, capture_output=True, text=True,
                                check=True).stdout
    except (OSError, subprocess.CalledProcessError) as err:
        raise SystemExit(f"cannot read {path} at git revision {rev} ({err}); pass --legacy-rev with a revision of "
                         "vitlab 0.1 that has src/vitlab/peft/delta_linear.py") from err
    module = types.ModuleType(f"vitlab_legacy_{Path(path).stem}")
    exec(compile(source, f"{rev}:{path}", "exec"), module.__dict__)  # noqa: S102 (our own repository's history)
    return module


def legacy_kadaptation(model: torch.nn.Module, rev: str, seed: int = 0) -> torch.nn.Module:
    """vitlab 0.1's ``apply_kadaptation`` defaults (n = 32, r = 1, Q and V rows, shared A, bias), from revision ``rev``:
    the same parameters and seeded initialisation order as the peft path, on every ``blocks.<i>.attn.qkv``."""
    layer, delta_linear = (_legacy_module(rev, path) for path in LEGACY_FILES)
    generator = torch.Generator().manual_seed(seed)
    rules: dict[str, torch.nn.Module] = {}
    for block in model.blocks:
        qkv = block.attn.qkv
        width = qkv.in_features
        adapters, rows = {}, {}
        for index, role in ((0, "q"), (2, "v")):
            if role not in rules:
                rules[role] = layer.KroneckerRule(32, 1, generator)
            adapters[role] = layer.KAdaptationDelta(rules[role], width, width, 1, 1.0, generator=generator)
            rows[role] = (index * width, (index + 1) * width)
        block.attn.qkv = delta_linear.DeltaLinear(qkv, adapters, rows, bias=True)
    model.add_module("kadaptation_rules", torch.nn.ModuleDict(rules))
    for name, param in model.named_parameters():
        param.requires_grad_(".adapters." in name or "adapter_bias" in name or name.startswith(("kadaptation_rules",
                                                                                                 "head.")))
    return model


def per_token_path(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` (a KAdaptation ``PeftModel``) with every ``KAdaptationLayer`` on ``RowSliceLayer``'s per-token path
    instead of the folded one (the same parameters and outputs)."""
    from vitlab.peft.kadaptation import kadaptation_layers
    from vitlab.peft.slice_tuner import RowSliceLayer

    for _, layer in kadaptation_layers(model):
        layer.forward = types.MethodType(RowSliceLayer.forward, layer)
    return model


def onednn_lora_base(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` (a peft LoRA model on every ``qkv``) with each ``qkv`` base Linear computed by vitlab's oneDNN product
    (``vitlab.models.cpu_linear.linear``), the kernel KAdaptation's folded layer uses: the kernel-neutral comparison."""
    from vitlab.models.cpu_linear import linear

    for name, module in model.named_modules():
        if name.endswith("attn.qkv.base_layer") and type(module) is torch.nn.Linear:
            module.forward = lambda x, m=module: linear(x, m.weight, m.bias)
    return model


def matching_options(method: str, target: int, in_features: int, layers: int) -> tuple[dict, int]:
    """Options of peft ``method`` (``lora`` or ``lokr``) on ``layers`` fused ``qkv`` Linears (``in_features`` ->
    ``3 * in_features``) whose adaptation-parameter count is closest to ``target``: rank 1..32 and, for LoKr, also
    ``decompose_factor`` in {-1, 4, 8, 16, 32} (LoKr's count saturates in ``r`` with the default factor).

    Returns:
        ``({"r": ..., ["decompose_factor": ...]}, count)``.
    """
    from peft import LoKrConfig, LoraConfig, inject_adapter_in_model

    if method not in ("lora", "lokr") or target < 1:
        raise ValueError(f"method must be 'lora' or 'lokr' and target >= 1, got {method!r}, {target}")
    best = None
    for factor in (-1,) if method == "lora" else (-1, 4, 8, 16, 32):
        for r in range(1, 33):
            layer = torch.nn.ModuleDict({"qkv": torch.nn.Linear(in_features, 3 * in_features)})
            config = (LoraConfig(r=r, lora_alpha=r, target_modules=["qkv"]) if method == "lora"
                      else LoKrConfig(r=r, alpha=r, target_modules=["qkv"], decompose_factor=factor))
            inject_adapter_in_model(config, layer)
            count = layers * sum(p.numel() for n, p in layer.named_parameters() if f"{method}_" in n)
            options = {"r": r} if method == "lora" else {"r": r, "decompose_factor": factor}
            if best is None or abs(count - target) < abs(best[1] - target):
                best = (options, count)
    return best


def _build(method: str | None, options: dict | None = None) -> torch.nn.Module:
    import timm

    from vitlab.peft import build_peft_transform

    torch.manual_seed(0)
    model = timm.create_model(MODEL, num_classes=NUM_CLASSES)
    if method is None:
        return model
    return build_peft_transform(method, None, **(options or {}))(model)


def _rss_mb(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _timed(fn, steps: int, warmup: int, device: torch.device) -> float:
    """Median seconds of ``fn()`` over ``steps`` calls after ``warmup`` calls."""
    return _interleaved({"fn": fn}, steps, warmup, device)["fn"]


def worker_train(method: str, options: dict, args: argparse.Namespace) -> dict:
    """One process: train-step time and peak memory of one method."""
    from vitlab.peft import count_parameters

    device = torch.device(args.device)
    model = _build(method, options).to(device).train()
    counts = count_parameters(model)
    x = torch.randn(args.batch_size, 3, IMG, IMG, device=device)
    y = torch.randint(0, NUM_CLASSES, (args.batch_size,), device=device)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()

    rss_before = _rss_mb("VmRSS")
    reset = False
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    else:
        try:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (peak RSS) to the current RSS
            reset = True
        except OSError:
            pass
    seconds = _timed(step, args.steps, args.warmup, device)
    if device.type == "cuda":
        peak, excess = torch.cuda.max_memory_allocated() / 2**20, None
    else:
        peak = _rss_mb("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        excess = None if rss_before is None else peak - rss_before
    return {"method": method, "options": options, "trainable": counts["trainable"], "adaptation": counts["adaptation"],
            "step_s": seconds, "peak_mb": peak, "excess_mb": excess}


def _interleaved(fns: dict[str, object], steps: int, warmup: int, device: torch.device) -> dict[str, float]:
    """Median seconds of each ``fn()``, the functions timed in turn each round (a load change hits them all alike)."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for i in range(warmup + steps):
        for name, fn in fns.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i >= warmup:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def worker_ratios(args: argparse.Namespace) -> dict:
    """One process: train steps of KAdaptation through peft (folded and per-token paths), vitlab 0.1's KAdaptation and
    peft LoRA r=1, in turn."""
    import timm

    from vitlab.peft import count_parameters

    device = torch.device(args.device)
    x = torch.randn(args.batch_size, 3, IMG, IMG, device=device)
    y = torch.randint(0, NUM_CLASSES, (args.batch_size,), device=device)
    torch.manual_seed(0)
    models = {"kadaptation (peft)": _build("kadaptation"),
              "kadaptation (peft, per-token path)": per_token_path(_build("kadaptation")),
              "kadaptation (vitlab 0.1)": legacy_kadaptation(timm.create_model(MODEL, num_classes=NUM_CLASSES),
                                                             args.legacy_rev),
              "lora r=1 (peft)": _build("lora", {"r": 1}),
              "lora r=1 (peft, qkv product through oneDNN)": onednn_lora_base(_build("lora", {"r": 1}))}
    counts = {label: count_parameters(m)["adaptation"] for label, m in models.items()}
    steps = {}
    for label, model in models.items():
        model.to(device).train()
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

        def step(model=model, optimizer=optimizer) -> None:
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            optimizer.step()

        steps[label] = step
    seconds = _interleaved(steps, args.steps, args.warmup, device)
    return {"step_s": seconds, "adaptation": counts,
            "peft_vs_vitlab01": seconds["kadaptation (peft)"] / seconds["kadaptation (vitlab 0.1)"],
            "folded_vs_per_token": seconds["kadaptation (peft)"] / seconds["kadaptation (peft, per-token path)"],
            "per_token_vs_lora_r1": seconds["kadaptation (peft, per-token path)"] / seconds["lora r=1 (peft)"],
            "kadaptation_vs_lora_r1": seconds["kadaptation (peft)"] / seconds["lora r=1 (peft)"],
            "kadaptation_vs_lora_r1_same_kernel":
                seconds["kadaptation (peft)"] / seconds["lora r=1 (peft, qkv product through oneDNN)"]}


def worker_infer(args: argparse.Namespace) -> list[dict]:
    """One process: forward time of the base model and of KAdaptation unmerged / merged, timed in turn."""
    import copy

    from vitlab.peft import merge_adapters

    device = torch.device(args.device)
    x = torch.randn(args.batch_size, 3, IMG, IMG, device=device)
    base = _build(None).to(device).eval()
    adapted = _build("kadaptation").to(device).eval()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # ΔW = 0 at initialisation; make it non-zero so that the merge check means something
        for name, param in adapted.named_parameters():
            if param.requires_grad and "kadaptation_" in name:
                param.copy_(0.02 * torch.randn(param.shape, generator=generator))
    merged = merge_adapters(copy.deepcopy(adapted))
    models = {"base": base, "kadaptation (unmerged)": adapted, "kadaptation merged": merged}
    with torch.inference_mode():
        diff = (merged(x) - adapted(x)).abs().max().item()
        seconds = _interleaved({label: (lambda m=model: m(x)) for label, model in models.items()}, args.steps,
                               args.warmup, device)
    rows = [{"model": label, "params": sum(p.numel() for p in model.parameters()), "forward_s": seconds[label]}
            for label, model in models.items()]
    rows[-1]["max_abs_diff"] = diff
    return rows


def _spawn(args: argparse.Namespace, *worker: str) -> dict | list:
    cmd = [sys.executable, __file__, "--worker", *worker, "--batch-size", str(args.batch_size), "--steps",
           str(args.steps), "--warmup", str(args.warmup), "--device", args.device, "--legacy-rev", args.legacy_rev]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"worker {' '.join(worker)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def build_parser() -> argparse.ArgumentParser:
    """The command line of this script (its options are those of the module docstring's Usage)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=5, help="timed iterations (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed iterations first")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--legacy-rev", default=LEGACY_REV, help="git revision of vitlab 0.1's KAdaptation path")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/bench_peft.json"))
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parsed and checked arguments; a bad one exits with status 2 and a line naming the fix."""
    parser = build_parser()
    args = parser.parse_args(argv)
    check_positive(parser, batch_size=args.batch_size, steps=args.steps)
    if args.warmup < 0:
        parser.error(f"--warmup must be >= 0, got {args.warmup}")
    if args.device not in ("cpu", "cuda") or (args.device == "cuda" and not torch.cuda.is_available()):
        parser.error(f"--device must be cpu, or cuda on a machine with a GPU; got {args.device!r}")
    if not args.worker:  # the workers get what the parent checked
        check_git_files(parser, args.legacy_rev, LEGACY_FILES, "--legacy-rev")
        check_out(parser, args.out)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        kind, *rest = args.worker
        if kind == "infer":
            result = worker_infer(args)
        elif kind == "ratios":
            result = worker_ratios(args)
        else:
            result = worker_train(rest[0], json.loads(rest[1]), args)
        print(json.dumps(result))
        return

    start = time.perf_counter()
    kad = _spawn(args, "train", "kadaptation", "{}")
    options = {m: matching_options(m, kad["adaptation"], WIDTH, DEPTH)[0] for m in ("lora", "lokr")}
    train = [kad] + [_spawn(args, "train", m, json.dumps(options.get(m, {}))) for m in TRAIN_METHODS[1:]]
    infer = _spawn(args, "infer")
    ratios = _spawn(args, "ratios")

    print(f"{MODEL} at {IMG} px, batch {args.batch_size}, {args.device}, {torch.get_num_threads()} threads")
    memory = "peak CUDA MB" if args.device == "cuda" else "peak RSS MB"
    print(f"\n{'method':<12} {'options':<26} {'adaptation':>11} {'step s':>8} {'vs KAd.':>8} {memory:>12} "
          f"{'excess MB':>10}")
    for row in train:
        excess = "-" if row["excess_mb"] is None else f"{row['excess_mb']:.0f}"
        opts = ", ".join(f"{k}={v}" for k, v in row["options"].items()) or "default"
        print(f"{row['method']:<12} {opts:<26} {row['adaptation']:>11,} {row['step_s']:>8.3f} "
              f"{row['step_s'] / kad['step_s']:>7.2f}x {row['peak_mb']:>12.0f} {excess:>10}")
    base_s = infer[0]["forward_s"]
    print(f"\n{'inference':<24} {'parameters':>12} {'forward s':>10} {'vs base':>8}")
    for row in infer:
        print(f"{row['model']:<24} {row['params']:>12,} {row['forward_s']:>10.3f} {row['forward_s'] / base_s:>7.2f}x")
    print(f"merged vs unmerged outputs: max |diff| = {infer[-1]['max_abs_diff']:.2e}")
    print(f"\n{'train step, timed in turn in one process':<46} {'adaptation':>11} {'step s':>8}")
    for label, seconds in ratios["step_s"].items():
        print(f"{label:<46} {ratios['adaptation'][label]:>11,} {seconds:>8.3f}")
    print(f"KAdaptation through peft / vitlab 0.1 path: {ratios['peft_vs_vitlab01']:.3f}x (goal <= 1.05)")
    print(f"KAdaptation / peft LoRA r=1:               {ratios['kadaptation_vs_lora_r1']:.3f}x (goal <= 1.0)")
    print(f"  with LoRA's qkv product on the same kernel: {ratios['kadaptation_vs_lora_r1_same_kernel']:.3f}x")
    print(f"  folded path / per-token path:            {ratios['folded_vs_per_token']:.3f}x "
          f"(per-token path / LoRA r=1: {ratios['per_token_vs_lora_r1']:.3f}x)")
    env = {"torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.machine(),
           "processor": platform.processor(), "device": args.device, "model": MODEL, "img_size": IMG,
           "batch_size": args.batch_size, "steps": args.steps, "warmup": args.warmup,
           "wall_time_s": round(time.perf_counter() - start, 1)}
    args.out.write_text(json.dumps({"env": env, "train": train, "inference": infer, "ratios": ratios}, indent=2)
                        + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
