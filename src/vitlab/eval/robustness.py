"""Common-corruption robustness of a classifier: accuracy per corruption and severity, and the usual summaries.

Notation: ``A_{c,s}`` is top-1 accuracy (a fraction) on corruption ``c`` at severity ``s``; ``E_{c,s} = 1 - A_{c,s}``;
``E_clean`` the clean error. Over the 15 common corruptions ``C`` (the 4 extra ones are summarised separately):

- mean accuracy ``= mean_{c in C, s} A_{c,s}`` (the paper's ImageNet-C / CIFAR-C number);
- per severity ``mean_{c in C} A_{c,s}``; per corruption ``mean_s A_{c,s}``;
- unnormalised mean corruption error ``mCE_u = 100 * (1 - mean accuracy)`` (the CIFAR-C convention, in %);
- with ``alexnet_normalise`` (ImageNet-C only): ``CE_c = sum_s E_{c,s} / sum_s E^AlexNet_{c,s}``,
  ``mCE = 100 * mean_{c in C} CE_c``, relative ``rCE_c = sum_s (E_{c,s} - E_clean) / sum_s (E^AlexNet_{c,s} -
  E^AlexNet_clean)``, ``relative mCE = 100 * mean_c rCE_c``; sums over the 5 severities are replaced by means, both
  sides having 5 terms, with the AlexNet mean errors of `ALEXNET_ERRORS` and ``E^AlexNet_clean`` = 0.4348.

Entry points: `evaluate_corruptions` (a CIFAR-C-layout folder, generated or published; ImageNet-C JPEG folders are
in `vitlab.eval.imagenet_c`), `corruption_metrics` (the formulas above) and `format_robustness_report` (markdown).

Example:
    >>> acc = {c: {s: 0.5 for s in range(1, 6)} for c in COMMON_CORRUPTIONS}
    >>> corruption_metrics(acc)["mce_unnormalised"]
    50.0
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from vitlab.errors import ConfigError, DataError, MissingFileError
from vitlab.eval.corruptions import (
    ALL_CORRUPTIONS,
    COMMON_CORRUPTIONS,
    EXTRA_CORRUPTIONS,
    SEVERITIES,
    _check_corruption_names,
    _is_int,
    _read_meta,
)
from vitlab.eval.device import model_device
from vitlab.metrics import evaluate_classifier

__all__ = [
    "ALEXNET_CLEAN_ERROR",
    "ALEXNET_ERRORS",
    "corruption_metrics",
    "evaluate_corruptions",
    "format_robustness_report",
]

#: AlexNet top-1 error on ImageNet-C per common corruption, averaged over the 5 severities (Hendrycks & Dietterich).
ALEXNET_ERRORS: dict[str, float] = {
    "gaussian_noise": 0.886428, "shot_noise": 0.894468, "impulse_noise": 0.922640, "defocus_blur": 0.819880,
    "glass_blur": 0.826268, "motion_blur": 0.785948, "zoom_blur": 0.798360, "snow": 0.866816, "frost": 0.826572,
    "fog": 0.819324, "brightness": 0.564592, "contrast": 0.853204, "elastic_transform": 0.646056,
    "pixelate": 0.717840, "jpeg_compression": 0.606500,
}
#: AlexNet clean top-1 error on ImageNet (for relative mCE).
ALEXNET_CLEAN_ERROR = 0.4348

Accuracies = dict[str, dict[int, float]]


def corruption_metrics(
    accuracy: Accuracies, clean_accuracy: float | None = None, alexnet_normalise: bool = False,
    baseline_errors: dict[str, float] | None = None, baseline_clean_error: float | None = None,
) -> dict[str, Any]:
    """Summaries of ``accuracy[corruption][severity]`` (fractions); see the module docstring for the formulas.

    Args:
        accuracy: ``{corruption: {severity 1..5 (int): top-1 accuracy fraction}}``.
        clean_accuracy: the model's clean accuracy (fraction), for the relative mCE.
        alexnet_normalise: add ``ce`` / ``mce`` (and ``relative_ce`` / ``relative_mce`` given ``clean_accuracy``),
            normalised by the AlexNet errors of `ALEXNET_ERRORS` / `ALEXNET_CLEAN_ERROR`, or by another baseline's.
        baseline_errors: with ``alexnet_normalise``, another baseline's mean error over the 5 severities for each of
            the 15 common corruptions (fractions), in place of `ALEXNET_ERRORS` (e.g. a ResNet-50's table).
        baseline_clean_error: that baseline's clean error (fraction), needed for its relative mCE.

    Returns a dict with ``mean_accuracy``, ``per_severity``, ``per_corruption``, ``mce_unnormalised`` (over the
    common corruptions present), ``missing_common``, ``extra_mean_accuracy`` / ``extra_per_corruption`` (the 4 extra
    corruptions), and with ``alexnet_normalise`` ``ce``, ``mce`` and, given ``clean_accuracy``, ``relative_ce`` and
    ``relative_mce``.
    """
    _check_accuracies(accuracy)
    if clean_accuracy is not None and not _is_fraction(clean_accuracy):
        raise ConfigError(f"clean_accuracy must be a fraction in [0, 1] (e.g. 0.81, not 81), got {clean_accuracy!r}")
    base_errors, base_clean = _baseline(alexnet_normalise, baseline_errors, baseline_clean_error, clean_accuracy)
    unknown = [c for c in accuracy if c not in ALL_CORRUPTIONS]
    if unknown:
        raise ConfigError(f"unknown corruptions {unknown}; valid: {', '.join(ALL_CORRUPTIONS)}")
    common = [c for c in COMMON_CORRUPTIONS if c in accuracy]
    extra = [c for c in EXTRA_CORRUPTIONS if c in accuracy]
    if not common:
        raise ConfigError("no common corruption in the results; the summary needs at least one of "
                         f"{', '.join(COMMON_CORRUPTIONS)}")
    severities = sorted({s for c in common for s in accuracy[c]})
    per_corruption = {c: float(np.mean([accuracy[c][s] for s in sorted(accuracy[c])])) for c in common + extra}
    result: dict[str, Any] = {
        "mean_accuracy": float(np.mean([accuracy[c][s] for c in common for s in accuracy[c]])),
        "per_severity": {s: float(np.mean([accuracy[c][s] for c in common if s in accuracy[c]])) for s in severities},
        "per_corruption": {c: per_corruption[c] for c in common},
        "missing_common": [c for c in COMMON_CORRUPTIONS if c not in accuracy],
    }
    result["mce_unnormalised"] = 100.0 * (1.0 - result["mean_accuracy"])
    if extra:
        result["extra_per_corruption"] = {c: per_corruption[c] for c in extra}
        result["extra_mean_accuracy"] = float(np.mean([accuracy[c][s] for c in extra for s in accuracy[c]]))
    if alexnet_normalise:
        incomplete = [c for c in COMMON_CORRUPTIONS if c not in accuracy or sorted(accuracy[c]) != list(SEVERITIES)]
        if incomplete:
            raise ConfigError(f"AlexNet-normalised mCE needs all 15 common corruptions at severities 1-5; incomplete: "
                             f"{incomplete}")
        error = {c: 1.0 - per_corruption[c] for c in COMMON_CORRUPTIONS}
        result["ce"] = {c: error[c] / base_errors[c] for c in COMMON_CORRUPTIONS}
        result["mce"] = 100.0 * float(np.mean(list(result["ce"].values())))
        if clean_accuracy is not None:
            clean_error = 1.0 - clean_accuracy
            result["relative_ce"] = {c: (error[c] - clean_error) / (base_errors[c] - base_clean)
                                     for c in COMMON_CORRUPTIONS}
            result["relative_mce"] = 100.0 * float(np.mean(list(result["relative_ce"].values())))
    return result


def _baseline(normalise: bool, errors: object, clean_error: object,
              clean_accuracy: float | None) -> tuple[dict[str, float], float]:
    """The baseline table the CE is normalised by: AlexNet's, or ``errors`` checked to be usable."""
    if errors is None:
        if clean_error is not None:
            raise ConfigError("baseline_clean_error goes with baseline_errors: give both, or neither for AlexNet's")
        return ALEXNET_ERRORS, ALEXNET_CLEAN_ERROR
    if not normalise:
        raise ConfigError("baseline_errors is used only for the normalised mCE: pass alexnet_normalise=True too")
    if not isinstance(errors, dict):
        raise ConfigError(f"baseline_errors must be a dict {{corruption: mean error}}, got {type(errors).__name__}")
    missing = [c for c in COMMON_CORRUPTIONS if c not in errors]
    if missing:
        raise ConfigError(f"baseline_errors lacks {missing}: give the baseline's mean error over the 5 severities "
                          "for each of the 15 common corruptions")
    bad = {c: errors[c] for c in COMMON_CORRUPTIONS if not _is_fraction(errors[c]) or errors[c] == 0}
    if bad:
        raise ConfigError(f"baseline_errors {bad}: errors are fractions in (0, 1] (e.g. 0.8, not 80)")
    if clean_error is not None and not _is_fraction(clean_error):
        raise ConfigError(f"baseline_clean_error must be a fraction in [0, 1], got {clean_error!r}")
    if clean_accuracy is not None:
        if clean_error is None:
            raise ConfigError("the relative mCE against baseline_errors needs the baseline's clean error: pass "
                              "baseline_clean_error (or leave clean_accuracy unset)")
        equal = [c for c in COMMON_CORRUPTIONS if errors[c] == clean_error]
        if equal:
            raise ConfigError(f"baseline_errors of {equal} equal baseline_clean_error {clean_error}: the relative CE "
                              "divides by their difference")
    return {c: float(errors[c]) for c in COMMON_CORRUPTIONS}, (ALEXNET_CLEAN_ERROR if clean_error is None
                                                                else float(clean_error))


def _is_fraction(value: object) -> bool:
    return (isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)
            and math.isfinite(value) and 0.0 <= value <= 1.0)


def _check_accuracies(accuracy: object) -> None:
    """``accuracy`` must map corruption names to non-empty ``{severity 1..5: fraction in [0, 1]}`` dicts."""
    if not isinstance(accuracy, dict):
        raise ConfigError(f"accuracy must be a dict {{corruption: {{severity: fraction}}}}, got "
                          f"{type(accuracy).__name__}")
    for corruption, per_severity in accuracy.items():
        if not isinstance(per_severity, dict) or not per_severity:
            raise ConfigError(f"accuracy[{corruption!r}] must be a non-empty dict {{severity 1..5: fraction}}, got "
                              f"{per_severity!r}")
        for severity, value in per_severity.items():
            if not _is_int(severity) or severity not in SEVERITIES:
                hint = (" (a report read back from JSON has string keys: {int(s): a for s, a in ...items()})"
                        if isinstance(severity, str) and severity.isdigit() else "")
                raise ConfigError(f"accuracy[{corruption!r}] has severity {severity!r}: severities are the ints "
                                  f"1..5{hint}")
            if not _is_fraction(value):
                raise ConfigError(f"accuracy[{corruption!r}][{severity}] = {value!r}: accuracies are fractions in "
                                  "[0, 1] (e.g. 0.5, not 50)")


def _load_npy(path: Path, mmap_mode: str | None = None) -> np.ndarray:
    """``np.load`` of one array file (never a pickle); a corrupt or truncated file is a one-line `DataError`."""
    try:
        return np.load(path, mmap_mode=mmap_mode, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise DataError(f"{path}: not a readable .npy array ({err}); regenerate the set or fetch the folder again") \
            from None


def _uint8_batches(images: np.ndarray, labels: np.ndarray, preprocess: Callable[[Tensor], Tensor],
                   batch_size: int) -> Iterable[tuple[Tensor, Tensor]]:
    for start in range(0, images.shape[0], batch_size):
        chunk = torch.from_numpy(np.array(images[start : start + batch_size])).permute(0, 3, 1, 2)  # writable copy
        yield preprocess(chunk), torch.from_numpy(labels[start : start + batch_size].astype(np.int64))


def _default_preprocess(images: Tensor) -> Tensor:
    return images.float().div(255.0)


def evaluate_corruptions(
    model: nn.Module,
    folder: str | Path,
    preprocess: Callable[[Tensor], Tensor] | None = None,
    n: int | None = None,
    corruptions: Sequence[str] | None = None,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    alexnet_normalise: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Accuracy of ``model`` on a CIFAR-C-layout folder (generated by vitlab, or a published CIFAR-10/100-C).

    Args:
        model: classifier ``(B, C, H, W) -> (B, K)``; put in eval mode.
        folder: folder with ``labels.npy`` and ``<corruption>.npy`` files (see `vitlab.eval.corruptions`).
        preprocess: uint8 ``(B, C, H, W)`` -> model input, e.g. ``vitlab.data.transforms.Normalize(mean, std,
            in_chans)``; default ``x / 255``.
        n: images per severity (the first ``n``); ``None`` uses all of them. The count used is in the report.
        corruptions: subset to evaluate (default: every corruption file in the folder).
        batch_size: evaluation batch size.
        device: where the model runs; ``None`` (default): where the model is (it is not moved).
        alexnet_normalise: add AlexNet-normalised mCE (meaningful for ImageNet-C only).
        progress: show a tqdm bar.

    Returns:
        ``{"source", "folder", "n", "n_available", "accuracy": {c: {s: acc}}, "clean_accuracy", "metrics"}``;
        ``source`` is ``"generated"`` (with ``meta``) or ``"published"``; ``clean_accuracy`` is measured on the
        same ``n`` source images for generated sets (``None`` otherwise).
    """
    from tqdm.auto import tqdm

    if not isinstance(model, nn.Module):
        raise ConfigError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if n is not None and (not _is_int(n) or n < 1):
        raise ConfigError(f"n must be an int >= 1 (images per severity) or None for all of them, got {n!r}")
    if not _is_int(batch_size) or batch_size < 1:
        raise ConfigError(f"batch_size must be an int >= 1, got {batch_size!r}")
    if corruptions is not None:
        corruptions = _check_corruption_names(corruptions)
        if not any(c in COMMON_CORRUPTIONS for c in corruptions):
            raise ConfigError(f"corruptions {corruptions} holds none of the 15 common corruptions the summary is "
                              f"over: add at least one of {', '.join(COMMON_CORRUPTIONS)}")
    folder = Path(folder).expanduser()
    if folder.is_file():
        raise DataError(f"{folder} is a file, not a folder: unpack it first (e.g. `tar -xf {folder}`) and pass the "
                        "folder that holds labels.npy and the <corruption>.npy files")
    if not folder.is_dir():
        raise MissingFileError(f"{folder} does not exist: pass a CIFAR-C-layout folder (labels.npy and "
                               "<corruption>.npy files)")
    if not (folder / "labels.npy").is_file() and any((folder / c).is_dir() for c in ALL_CORRUPTIONS):
        raise DataError(f"{folder} holds <corruption>/ folders, the ImageNet-C JPEG layout: pass it with "
                        "--imagenet_c (vitlab.eval.evaluate_imagenet_c), not as a CIFAR-C-layout folder")
    if not (folder / "labels.npy").is_file():
        raise MissingFileError(f"{folder} has no labels.npy: not a CIFAR-C-layout folder (generate one with "
                                "vitlab.eval.corruptions.generate_corruption_set)")
    meta_path = folder / "meta.json"
    meta = _read_meta(meta_path) if meta_path.is_file() else None
    labels_all = _load_npy(folder / "labels.npy")
    if labels_all.ndim != 1 or not np.issubdtype(labels_all.dtype, np.integer):
        raise DataError(f"{folder}/labels.npy holds {labels_all.dtype} {labels_all.shape}, not int class indices "
                        "(5 * N,): regenerate the set or fetch the folder again")
    if labels_all.shape[0] % len(SEVERITIES):
        raise DataError(f"{folder}/labels.npy has {labels_all.shape[0]} rows, not a multiple of 5 severities")
    available = labels_all.shape[0] // len(SEVERITIES)
    n_used = available if n is None else int(n)
    if available == 0:
        raise DataError(f"{folder}/labels.npy is empty: regenerate the set or fetch the folder again")
    if not 1 <= n_used <= available:
        raise ConfigError(f"n={n} but {folder} has {available} images per severity: pass n <= {available} or None "
                          "(--n all on the command line)")
    present = [c for c in ALL_CORRUPTIONS if (folder / f"{c}.npy").is_file()]
    names = present if corruptions is None else list(corruptions)
    missing = [c for c in names if c not in present]
    if missing or not names:
        raise DataError(f"{folder} lacks corruption files for {missing or 'every corruption'}; present: {present}")
    if preprocess is not None and not callable(preprocess):
        raise ConfigError(f"preprocess must be a callable uint8 (B, C, H, W) -> model input, got "
                          f"{type(preprocess).__name__}")
    preprocess = preprocess or _default_preprocess
    device = model_device(model, device)
    model = model.to(device).eval()
    accuracy: Accuracies = {}
    bar = tqdm(total=len(names) * len(SEVERITIES), desc="robustness", unit="set", disable=not progress)
    for corruption in names:
        data = _load_npy(folder / f"{corruption}.npy", mmap_mode="r")
        if data.shape[0] != labels_all.shape[0]:
            raise DataError(f"{folder}/{corruption}.npy has {data.shape[0]} rows but labels.npy has "
                            f"{labels_all.shape[0]}: regenerate the set or fetch the folder again")
        if data.dtype != np.uint8 or data.ndim != 4:
            raise DataError(f"{folder}/{corruption}.npy holds {data.dtype} {data.shape}, not uint8 images "
                            "(5 * N, H, W, C): regenerate the set or fetch the folder again")
        accuracy[corruption] = {}
        for severity in SEVERITIES:
            rows = slice((severity - 1) * available, (severity - 1) * available + n_used)
            batches = _uint8_batches(data[rows], labels_all[rows], preprocess, batch_size)
            try:
                accuracy[corruption][severity] = evaluate_classifier(model, batches, device)["acc"]
            except ValueError as err:  # labels outside the model's classes, logits of the wrong shape: name the files
                bar.close()
                raise DataError(f"{folder}/{corruption}.npy (severity {severity}) with its labels.npy: {err}") \
                    from None
            bar.update(1)
    bar.close()
    clean_accuracy = None
    if meta is not None and (folder / "clean.npy").is_file():
        clean = _load_npy(folder / "clean.npy", mmap_mode="r")
        expected = data.shape[1:] if names else None
        if clean.dtype != np.uint8 or clean.shape[0] < n_used or clean.shape[1:] != expected:
            raise DataError(f"{folder}/clean.npy holds {clean.dtype} {clean.shape}, not uint8 images ({available}, "
                            f"{', '.join(map(str, expected))}) like the corruption files: regenerate the set")
        clean = clean[:n_used]
        batches = _uint8_batches(clean, labels_all[:n_used], preprocess, batch_size)
        clean_accuracy = evaluate_classifier(model, batches, device)["acc"]
    return {
        "source": "generated" if meta is not None and meta.get("generated") else "published",
        "folder": str(folder), "meta": meta, "n": n_used, "n_available": available, "accuracy": accuracy,
        "clean_accuracy": clean_accuracy,
        "metrics": corruption_metrics(accuracy, clean_accuracy, alexnet_normalise),
    }


def _int_severities(accuracy: dict[str, Any]) -> dict[str, dict[int, float]]:
    """``accuracy`` with int severity keys (JSON turns them into strings)."""
    return {c: {int(s): v for s, v in per_severity.items()} for c, per_severity in accuracy.items()}


def format_robustness_report(report: dict[str, Any]) -> str:
    """Markdown report of `evaluate_corruptions` / `evaluate_imagenet_c`: provenance, N, summaries, tables."""
    if not isinstance(report, dict):
        raise ConfigError(f"report must be the dict that evaluate_corruptions / evaluate_imagenet_c return, got "
                          f"{type(report).__name__}")
    missing = [key for key in ("source", "folder", "n", "accuracy", "metrics") if key not in report]
    if missing:
        raise ConfigError(f"report lacks {missing}: pass the dict that evaluate_corruptions / evaluate_imagenet_c "
                          "return")
    metrics, accuracy = report["metrics"], _int_severities(report["accuracy"])
    if isinstance(metrics, dict) and "per_severity" in metrics:  # a report read back from JSON has "1".."5" keys
        metrics = {**metrics, "per_severity": {int(s): v for s, v in metrics["per_severity"].items()}}
    if report["source"] == "generated":
        meta = report.get("meta") or {}
        version = meta.get("versions", {}).get("imagecorruptions-imaug", "?")
        origin = (f"generated with imagecorruptions-imaug {version} (ImageNet-C severities; seed "
                  f"{meta.get('seed')}) — a generated set, not the published CIFAR-10-C/CIFAR-100-C benchmark")
    else:
        origin = f"{report['source']} folder"
    available = f" of {report['n_available']}" if report.get("n_available") else ""
    lines = [
        f"Corruptions: {origin} ({report['folder']}).",
        f"Test images per corruption and severity: {report['n']}{available}.",
        "",
        f"- mean accuracy over {15 - len(metrics['missing_common'])} common corruptions x 5 severities: "
        f"{100 * metrics['mean_accuracy']:.2f} %",
        f"- unnormalised mCE (100 - mean accuracy): {metrics['mce_unnormalised']:.2f}",
    ]
    if report.get("clean_accuracy") is not None:
        where = "(given, for the relative mCE)" if report["source"] == "ImageNet-C" else "on the same images"
        lines.append(f"- clean accuracy {where}: {100 * report['clean_accuracy']:.2f} %")
    if metrics["missing_common"]:
        lines.append(f"- missing common corruptions: {', '.join(metrics['missing_common'])}")
    if "mce" in metrics:
        lines.append(f"- AlexNet-normalised mCE: {metrics['mce']:.2f}")
    if "relative_mce" in metrics:
        lines.append(f"- relative mCE: {metrics['relative_mce']:.2f}")
    if "extra_mean_accuracy" in metrics:
        lines.append(f"- mean accuracy over the extra corruptions ({', '.join(metrics['extra_per_corruption'])}): "
                     f"{100 * metrics['extra_mean_accuracy']:.2f} %")
    severities = sorted(metrics["per_severity"])
    lines += ["", "| severity | " + " | ".join(map(str, severities)) + " |",
              "|---|" + "---|" * len(severities),
              "| accuracy (%) | " + " | ".join(f"{100 * metrics['per_severity'][s]:.2f}" for s in severities) + " |",
              "", "| corruption | " + " | ".join(map(str, SEVERITIES)) + " | mean |", "|---|" + "---|" * 6]
    for corruption, per_severity in accuracy.items():
        cells = [f"{100 * per_severity[s]:.2f}" if s in per_severity else "-" for s in SEVERITIES]
        extra = " (extra)" if corruption in EXTRA_CORRUPTIONS else ""
        mean = 100 * float(np.mean(list(per_severity.values())))
        lines.append(f"| {corruption}{extra} | " + " | ".join(cells) + f" | {mean:.2f} |")
    return "\n".join(lines) + "\n"
