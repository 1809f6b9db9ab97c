"""Measured time estimates of the ``vitlab study`` stages, printed before anything starts.

Each backbone's cost is *measured* on this machine: a few timed AdamW training steps at the batch sizes the stages use
(forward, backward, step; after one warm-up step) and the evaluation throughput; corruption generation is timed on a
few images per corruption. The stage estimates multiply these by the work each stage will do (optimizer steps,
images evaluated), so they follow the hardware; process start-up and data loading are a fixed allowance per run.
Cached stages (pretrained weights present, runs already finished) count zero and are not timed; a backbone given its
weights never pretrains, so its pretraining batch is not timed either.

Example:
    >>> format_estimates([{"stage": "finetune", "runs": 6, "estimated_s": 125.0}])
    'stage          runs  estimate\\nfinetune          6     2.1 min'
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vitlab.study.config import StudyConfig

__all__ = ["RUN_OVERHEAD_S", "estimate_study", "format_estimates", "refine_points", "time_corruptions", "time_model"]

#: Allowance per run for starting a process, building the model and data, testing and saving (seconds).
RUN_OVERHEAD_S = 8.0
#: Cost of a training step with negative views relative to one without (a second forward and backward).
NEGATIVES_FACTOR = 2.0
#: Cost of a subspace (Fastfood) training step relative to full fine-tuning (bench_subspace, small models).
SUBSPACE_FACTOR = 1.5
#: Images of the timed evaluation forward: the cost per image at 64 matched the one at 256 (the evaluation batch)
#: within the load noise on the tiny ViT and iFormer, at a quarter of the time on a large backbone.
EVAL_IMAGES = 64
#: A warm-up step slower than this (seconds) is followed by one timed step, not ``repeats``: the fastest of several
#: guards short steps against timer and load noise, and a step this long is not short (ViT-B/16 at 224 px on a CPU).
SLOW_STEP_S = 5.0


def time_model(model: nn.Module, input_shape: Sequence[int], batch_sizes: Sequence[int], num_classes: int,
               device: str | torch.device = "cpu", repeats: int = 2, eval_images: int = EVAL_IMAGES) -> dict[str, Any]:
    """Seconds per training step at each batch size, and evaluation seconds per image.

    Args:
        model: the backbone (its weights are restored afterwards).
        input_shape: ``(C, H, W)`` of one image.
        batch_sizes: training batch sizes to time (empty: the evaluation throughput only).
        num_classes: logits count (targets are drawn below it).
        device: where to time.
        repeats: timed steps per batch size and timed evaluation forwards (after one warm-up each; the fastest counts;
            one when the warm-up took over `SLOW_STEP_S`).
        eval_images: images of the evaluation forward (per-image cost, so a sample stands for the test set).

    Returns:
        ``{"train_step_s": {batch: seconds}, "eval_image_s": seconds}``.

    Example:
        >>> t = time_model(nn.Sequential(nn.Flatten(), nn.Linear(12, 3)), (3, 2, 2), [4], 3, eval_images=8)
        >>> sorted(t["train_step_s"]), t["eval_image_s"] > 0
        ([4], True)
    """
    def positive(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value > 0

    if len(input_shape) != 3 or not all(positive(n) for n in input_shape):
        raise ValueError(f"input_shape must be (C, H, W) of positive ints, got {input_shape}")
    if not all(positive(b) for b in batch_sizes) or not positive(repeats) or not positive(eval_images):
        raise ValueError(f"batch sizes, repeats and eval_images must be positive ints, got {list(batch_sizes)}, "
                         f"{repeats!r}, {eval_images!r}")
    device = torch.device(device)

    def timed(work: Any) -> float:
        times = []
        for _ in range(repeats + 1):
            start = time.perf_counter()
            work()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
            if len(times) > 1 and times[0] > SLOW_STEP_S:
                break
        return min(times[1:])

    state = {k: v.clone() for k, v in model.state_dict().items()}
    model = model.to(device).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)
    generator = torch.Generator().manual_seed(0)  # timing inputs; the global RNG is neither drawn from nor reseeded

    def train_step(x: torch.Tensor, y: torch.Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()

    step_s = {}
    for batch in sorted(set(batch_sizes)):
        x = torch.randn(batch, *input_shape, generator=generator).to(device)
        y = torch.randint(0, num_classes, (batch,), generator=generator).to(device)
        step_s[batch] = timed(partial(train_step, x, y))
    model.eval()
    x = torch.randn(eval_images, *input_shape, generator=generator).to(device)
    with torch.no_grad():
        eval_s = timed(lambda: model(x)) / eval_images
    model.load_state_dict(state)
    return {"train_step_s": step_s, "eval_image_s": eval_s}


def time_corruptions(height: int, width: int, images: int = 2) -> float:
    """Mean seconds to corrupt one ``height x width`` RGB image, over every corruption at severity 3 (``images``
    random images each)."""
    if isinstance(images, bool) or not isinstance(images, int) or images < 1:
        raise ValueError(f"images must be a positive int (images corrupted per corruption), got {images!r}")
    import numpy as np

    from vitlab.eval.corruptions import ALL_CORRUPTIONS, corrupt_images

    batch = np.random.default_rng(0).integers(0, 256, (images, height, width, 3), dtype=np.uint8)
    start = time.perf_counter()
    for corruption in ALL_CORRUPTIONS:
        corrupt_images(batch, corruption, 3, seed=0)
    return (time.perf_counter() - start) / (images * len(ALL_CORRUPTIONS))


def run_steps(steps: int, shots: int | str, num_classes: int, batch_size: int, train_size: int,
              full_epochs: int) -> tuple[int, int]:
    """``(optimizer steps, batch size)`` of one fine-tuning run, as `vitlab.study.plan.plan_study` sets them."""
    from vitlab.study.plan import few_shot_batch

    if shots == "full":
        return full_epochs * math.ceil(train_size / batch_size), batch_size
    return steps, few_shot_batch(int(shots), num_classes, batch_size)


def refine_points(grid: Sequence[int], ratio: float | None) -> int:
    """Most points a sweep's refinement adds (`vitlab.peft.intrinsic.sweep.refinement_point`): geometric midpoints of
    the widest gap of ``grid`` until its ends are at most ``ratio`` apart (``None``: no refinement).

    Example:
        >>> refine_points([10, 100, 1000, 10000], 2.0), refine_points([10, 100], None), refine_points([10, 15], 2.0)
        (2, 0, 0)
    """
    if ratio is not None and (isinstance(ratio, bool) or not isinstance(ratio, int | float)
                              or not 1 < ratio < math.inf):
        raise ValueError(f"ratio must be a number > 1 (e.g. 2.0) or None (no refinement), got {ratio!r}")
    if any(not isinstance(d, int) or isinstance(d, bool) or d < 1 for d in grid) or not all(
            low < high for low, high in zip(grid, grid[1:], strict=False)):
        raise ValueError(f"grid must be increasing positive ints (the sweep's dimensions, sorted), got {list(grid)}")
    if ratio is None or len(grid) < 2:
        return 0
    widest = max(high / low for low, high in zip(grid, grid[1:], strict=False))
    return math.ceil(math.log2(math.log(widest) / math.log(ratio))) if widest > ratio else 0


def format_estimates(rows: Sequence[Mapping[str, Any]]) -> str:
    """A small text table of ``{"stage", "runs", "estimated_s"}`` rows (minutes)."""
    lines = [f"{'stage':<14} {'runs':>4}  estimate"]
    for row in rows:
        lines.append(f"{row['stage']:<14} {row['runs']:>4} {row['estimated_s'] / 60:>7.1f} min")
    return "\n".join(lines)


def _pretrain_model(config: Any, label: str) -> tuple[Any, nn.Module, Any]:
    """``(pretrain RunConfig, randomly initialised model for the downstream data, downstream datamodule)``."""
    from dataclasses import replace

    from vitlab.data import build_datamodule
    from vitlab.study.stages import pretrain_config
    from vitlab.train.run import build_run_model

    spec = config.backbones[label]
    if spec.given_weights:  # no pretraining: a run config of the architecture at its fine-tuning size
        from vitlab.checkpoint import resolve_pretrained
        from vitlab.train.config import DataConfig, ModelConfig, RunConfig

        cfg = resolve_pretrained(spec.pretrained, spec.model).pretrained_cfg()
        size = spec.img_size or int((cfg.get("input_size") or (3, 224, 224))[-1])
        run_config = RunConfig(name=f"pretrained_{label}", model=ModelConfig(name=spec.model),
                               data=DataConfig(name=config.downstream, img_size=size))
    else:
        run_config = pretrain_config(config, label)
    datamodule = build_datamodule(config.downstream, root=config.root, img_size=run_config.data.img_size,
                                  in_chans=3 if spec.given_weights else None)
    random_init = replace(run_config, model=replace(run_config.model, pretrained=None))
    model = build_run_model(random_init, datamodule.num_classes, datamodule.in_chans).model
    return run_config, model, datamodule


def estimate_study(config: StudyConfig) -> list[dict[str, Any]]:
    """Per-stage ``{"stage", "runs", "estimated_s"}`` of a `vitlab.study.config.StudyConfig` on this machine.

    Finished work counts zero: pretrained weights present, runs in ``finetune/results.csv``, evaluation JSONs, the
    corruption set in the cache, intrinsic-dimension rows in the sweep CSVs (counted per backbone: all or nothing).
    Only the batch sizes of work that will run are timed (a backbone given its weights never pretrains; a backbone
    whose work is all cached is not timed at all); a line before each timing says what is timed and where, and the
    first line says whether the estimate is of a CPU or a GPU run.
    The intrinsic-dimension figure is an upper bound: every grid point and the most refinement points the widest gap
    can take (`refine_points`; the sweep may stop early once d90 is found).
    """
    from vitlab.data import default_cache_dir
    from vitlab.peft.intrinsic.per_module import available_module_kinds
    from vitlab.study.intrinsic import SweepSettings
    from vitlab.study.plan import run_name, split_sizes
    from vitlab.study.results import read_result_rows
    from vitlab.study.stages import pretraining_differences
    from vitlab.train.arguments import load_run_config_file

    if not isinstance(config, StudyConfig):
        raise TypeError(f"config must be a StudyConfig: load the YAML with "
                        f"vitlab.study.config.load_study_config(path), got {type(config).__name__}")
    device = "cuda" if config.accelerator != "cpu" and torch.cuda.is_available() else "cpu"
    where = f"a GPU run ({torch.cuda.get_device_name()})" if device == "cuda" else "a CPU run"
    print(f"estimating {where} (accelerator: {config.accelerator}): every cost below is timed on this machine's "
          f"{'GPU' if device == 'cuda' else 'CPU'}", flush=True)
    ft, ev = config.finetune, config.evaluation
    done = {row["run"] for row in read_result_rows(config.folder / "finetune" / "results.csv")}
    stages = {name: {"stage": name, "runs": 0, "estimated_s": 0.0}
              for name in ("pretrain", "finetune", "evaluate", "intrinsic_dim", "report")}
    runs = config.planned_runs()
    base = load_run_config_file(config.intrinsic_dim.config) if config.intrinsic_dim.backbones else None
    sweeping = {label for label in config.intrinsic_dim.backbones
                if not (config.folder / "intrinsic" / label / "intrinsic_dim.json").is_file()}
    timings = {}
    for label in config.used_backbones():
        run_config, model, datamodule = _pretrain_model(config, label)
        shape = (datamodule.in_chans, run_config.data.img_size, run_config.data.img_size)
        train, test = split_sizes(datamodule)
        run_dir = Path(run_config.output_dir) / run_config.name
        changed = None if config.backbones[label].given_weights else pretraining_differences(config, label)
        if changed:
            print(f"{label}: {run_dir} was pretrained by another configuration ({'; '.join(changed[:4])}): the study "
                  "will refuse it (delete it to pretrain again, or pass --reuse_cached_as_is true)", flush=True)
        pretraining = not config.backbones[label].given_weights and not (run_dir / "model.safetensors").is_file()
        batches = {run_steps(ft.steps, run[3], datamodule.num_classes, ft.batch_size, train, ft.full_epochs)[1]
                   for run in runs if run[0] == label and run_name(*run) not in done}
        batches |= {run_config.data.batch_size} if pretraining else set()
        batches |= {base.data.batch_size} if label in sweeping else set()
        evaluating = any(not (config.folder / "finetune" / "runs" / run_name(*run) /
                              f"robustness_{config.downstream}.json").is_file() for run in runs if run[0] == label)
        t = {"train_step_s": {}, "eval_image_s": 0.0}  # all of this backbone's work is cached: nothing to time
        if batches or evaluating:
            print(f"timing {label} ({run_config.model.name}) at {run_config.data.img_size} px, batch "
                  f"{', '.join(map(str, sorted(batches))) or '- (evaluation only)'} on {device} ...", flush=True)
            t = time_model(model, shape, sorted(batches), datamodule.num_classes, device)
        timings[label] = t
        if pretraining:
            steps = run_config.trainer.get("max_epochs", 10) * math.ceil(train / run_config.data.batch_size)
            stages["pretrain"]["runs"] += 1
            stages["pretrain"]["estimated_s"] += (steps * t["train_step_s"][run_config.data.batch_size] * 1.1
                                                 + 2 * test * t["eval_image_s"]
                                                 + RUN_OVERHEAD_S)
        t["train_size"], t["test_size"] = train, test
        t["model"], t["num_classes"] = model, datamodule.num_classes
    for backbone, method, negatives, shots, seed in runs:
        t = timings[backbone]
        name = run_name(backbone, method, negatives, shots, seed)
        if name not in done:
            steps, batch = run_steps(ft.steps, shots, t["num_classes"], ft.batch_size, t["train_size"],
                                     ft.full_epochs)
            factor = NEGATIVES_FACTOR if ft.negatives[negatives] else 1.0
            stages["finetune"]["runs"] += 1
            stages["finetune"]["estimated_s"] += steps * t["train_step_s"][batch] * factor \
                + t["test_size"] * t["eval_image_s"] + RUN_OVERHEAD_S
        run_dir = config.folder / "finetune" / "runs" / name
        if not (run_dir / f"robustness_{config.downstream}.json").is_file():
            images = ev.corruption_n * 96 + ev.negative_view_n * (len(ev.kinds) + 1)
            stages["evaluate"]["runs"] += 1
            stages["evaluate"]["estimated_s"] += images * t["eval_image_s"] + 2.0
    pattern = f"{config.downstream}_*_n{ev.corruption_n}_seed0"
    if runs and not any((default_cache_dir() / "corruptions").glob(pattern)):
        stages["evaluate"]["estimated_s"] += ev.corruption_n * 95 * time_corruptions(32, 32) / (os.cpu_count() or 1)
    if sweeping:
        settings = SweepSettings.from_options(base.peft.options)
        grid = settings.grid(None)
        points = len(grid) + refine_points(grid, settings.refine_ratio)
        for label in config.intrinsic_dim.backbones:
            if label not in sweeping:
                continue
            t = timings[label]
            kinds = len(available_module_kinds(t["model"])) if config.intrinsic_dim.per_module else 0
            train = min(t["train_size"], base.data.options.get("limit_train") or t["train_size"])
            steps = base.trainer.get("max_epochs", 10) * math.ceil(train / base.data.batch_size)
            per_run = steps * t["train_step_s"][base.data.batch_size] * SUBSPACE_FACTOR \
                + t["test_size"] * t["eval_image_s"] + RUN_OVERHEAD_S
            scratch = 1 + points if config.intrinsic_dim.from_scratch else 0
            stages["intrinsic_dim"]["runs"] += 1 + points * (1 + kinds) + scratch
            stages["intrinsic_dim"]["estimated_s"] += per_run * (1 + points * (1 + kinds) + scratch)
    stages["report"].update(runs=1, estimated_s=10.0)
    return [{**row, "estimated_s": round(row["estimated_s"], 1)} for row in stages.values()]
