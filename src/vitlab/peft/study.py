"""Building blocks of the accuracy-vs-parameters study (``vitlab peft-study``); Lightning-free.

The study runs every method on one backbone and dataset: few-shot k ∈ {5, 20} examples per class with 3 seeds, plus
the full training set with 1 seed, one process per run. This module makes the run configs, draws few-shot subsets,
summarises per-run result rows (mean ± sample std over seeds) and plots accuracy against trainable parameters.

Example:
    >>> runs = study_run_configs({"name": "vit_vitlab_tiny_patch4_32", "kwargs": {"num_classes": 10}},
    ...                          {"name": "fashion_mnist"}, methods={"linear": {}, "kadaptation": {}})
    >>> len(runs), runs[0]["name"], runs[0]["data"]["few_shot"]
    (14, 'linear-k5-s0', {'k': 5, 'seed': 0})
    >>> summarize_study([{"method": "linear", "shots": 5, "seed": s, "accuracy": a, "trainable_params": 1290}
    ...                  for s, a in enumerate([0.5, 0.6, 0.7])])[0]["accuracy_std"]
    0.1
"""

from __future__ import annotations

import copy
import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "REFERENCE_RESULTS",
    "STUDY_METHODS",
    "few_shot_indices",
    "plot_accuracy_vs_params",
    "study_run_configs",
    "summarize_study",
    "write_csv",
]

# Method -> (peft options, learning rate). PEFT methods take a larger lr than full fine-tuning (as in the reference's
# ELEVATER search, which picks lr per method); adapter/LoRA sizes are those of the PEViT baselines.
STUDY_METHODS: dict[str, dict[str, Any]] = {
    "full": {"options": {}, "lr": 3e-4},
    "linear": {"options": {}, "lr": 3e-3},
    "kadaptation": {"options": {}, "lr": 3e-3},
    "lora": {"options": {"r": 4}, "lr": 3e-3},
    "lora_qv": {"options": {"r": 4}, "lr": 3e-3},
    "lokr": {"options": {"r": 4}, "lr": 3e-3},
    "adapter": {"options": {"bottleneck": 16}, "lr": 3e-3},
}

# PEViT README, CLIP ViT-B/32, ELEVATER 20-dataset average, 5-shot, 3 seeds: (accuracy %, trainable params).
REFERENCE_RESULTS = {
    "kadaptation": (68.92, 79_699),
    "linear": (66.32, 29_523),
    "full": (65.49, 87_878_739),
    "adapter": (65.08, 1_237_587),
    "compacter": (62.79, 77_907),
    "lora": (61.48, 176_979),
}


def few_shot_indices(labels: Sequence[int] | torch.Tensor, k: int, seed: int) -> torch.Tensor:
    """Indices of ``k`` examples per class, drawn with a seeded generator (global RNG untouched), sorted.

    Args:
        labels: ``[N]`` integer class labels of the training set.
        k: examples per class.
        seed: subset seed (the study's seeds 0, 1, 2).

    Returns:
        ``[k * num_classes]`` int64 indices into the training set.
    """
    labels = torch.as_tensor(labels)
    if labels.ndim != 1 or labels.dtype.is_floating_point:
        raise ValueError(f"labels must be a 1-D integer tensor, got shape {tuple(labels.shape)} {labels.dtype}")
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    generator = torch.Generator().manual_seed(seed)
    picked = []
    for cls in torch.unique(labels).tolist():
        members = torch.nonzero(labels == cls).flatten()
        if len(members) < k:
            raise ValueError(f"class {cls} has {len(members)} examples, fewer than k={k}")
        picked.append(members[torch.randperm(len(members), generator=generator)[:k]])
    return torch.sort(torch.cat(picked)).values


def study_run_configs(
    model: Mapping[str, Any], data: Mapping[str, Any], *, methods: Mapping[str, Mapping[str, Any]] | None = None,
    shots: Sequence[int] = (5, 20), seeds: Sequence[int] = (0, 1, 2), full_seed: int = 0,
    optim: Mapping[str, Any] | None = None, trainer: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """One config per run, in the harness schema ``{name, seed, model, data, optim, trainer, peft}``.

    Args:
        model: ``{"name": timm name, "kwargs": {...}}`` of the pretrained backbone (kwargs may hold the weights path).
        data: data section; each run adds ``few_shot: {"k", "seed"}`` (``None`` for the full training set).
        methods: method -> ``{"options": ..., "lr": ..., "target_modules": ...}`` (default ``STUDY_METHODS``).
        shots: few-shot k values, each run with every seed in ``seeds``; the full set runs once with ``full_seed``.
        optim, trainer: base sections; ``optim.lr`` is overridden per method.
    """
    methods = STUDY_METHODS if methods is None else methods
    settings = [(k, s) for k in shots for s in seeds] + [(None, full_seed)]
    runs = []
    for method, spec in methods.items():
        for k, seed in settings:
            tag = f"k{k}" if k is not None else "full"
            run_optim = dict(optim or {})
            if "lr" in spec:
                run_optim["lr"] = spec["lr"]
            runs.append({
                "name": f"{method}-{tag}-s{seed}",
                "seed": seed,
                "model": copy.deepcopy(dict(model)),
                "data": {**copy.deepcopy(dict(data)), "few_shot": {"k": k, "seed": seed} if k is not None else None},
                "optim": run_optim,
                "trainer": dict(trainer or {}),
                "peft": {"method": method, "target_modules": spec.get("target_modules"),
                         "options": dict(spec.get("options", {}))},
            })
    return runs


def _mean_std(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def summarize_study(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Group per-run rows by ``(method, shots)``; mean and sample std (ddof 1) of accuracy, means of the rest.

    Each row needs ``method``, ``shots`` (int or ``"full"``), ``seed``, ``accuracy``, ``trainable_params``; optional
    numeric ``train_time_s`` and ``peak_memory_mb`` are averaged too.
    """
    groups: dict[tuple[str, Any], list[Mapping[str, Any]]] = {}
    for row in rows:
        missing = {"method", "shots", "seed", "accuracy", "trainable_params"} - set(row)
        if missing:
            raise ValueError(f"study row {dict(row)} lacks {sorted(missing)}")
        groups.setdefault((row["method"], row["shots"]), []).append(row)
    summary = []
    for (method, shots), group in groups.items():
        mean, std = _mean_std([float(r["accuracy"]) for r in group])
        entry = {"method": method, "shots": shots, "seeds": len(group), "accuracy_mean": round(mean, 6),
                 "accuracy_std": round(std, 6), "trainable_params": int(group[0]["trainable_params"])}
        for key in ("train_time_s", "peak_memory_mb"):
            values = [float(r[key]) for r in group if r.get(key) not in (None, "")]
            if values:
                entry[key] = round(sum(values) / len(values), 3)
        summary.append(entry)
    return summary


def write_csv(rows: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Write dict rows as CSV (columns: union of keys, first-seen order)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = list(dict.fromkeys(key for row in rows for key in row))
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return path


def plot_accuracy_vs_params(summary: Sequence[Mapping[str, Any]], path: str | Path, title: str = "") -> Path:
    """Accuracy (mean ± std) against trainable parameters (log x), one panel per shots setting; returns ``path``.

    Example:
        >>> import tempfile
        >>> rows = [{"method": "lora", "shots": 5, "trainable_params": 5000, "accuracy_mean": 0.6,
        ...          "accuracy_std": 0.02}]
        >>> path = plot_accuracy_vs_params(rows, Path(tempfile.mkdtemp()) / "plot.png", title="digits")
        >>> path.name, path.stat().st_size > 0
        ('plot.png', True)
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    settings = list(dict.fromkeys(row["shots"] for row in summary))
    fig = Figure(figsize=(4.5 * len(settings), 3.8))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(settings), squeeze=False)
    for ax, shots in zip(axes[0], settings, strict=True):
        for row in (r for r in summary if r["shots"] == shots):
            ax.errorbar(row["trainable_params"], 100 * row["accuracy_mean"], yerr=100 * row["accuracy_std"],
                        fmt="o", capsize=3, label=row["method"])
            ax.annotate(row["method"], (row["trainable_params"], 100 * row["accuracy_mean"]), fontsize=7,
                        xytext=(4, 3), textcoords="offset points")
        ax.set_xscale("log")
        ax.set_xlabel("trainable parameters (log)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"{title} {'full data' if shots == 'full' else f'{shots}-shot'}".strip())
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path
