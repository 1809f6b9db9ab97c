"""Planning a study: fine-tuning run specs (the grid of ``vitlab study`` and the methods of ``vitlab peft-study``).

A run spec is ``{"config": RunConfig fields, "method", "shots", "seed", "backbone_sha256"}`` (``vitlab study`` adds
``backbone`` and ``negatives``); `vitlab.study.launch.launch_run` trains it in a process of its own. Few-shot runs
use the datamodule option ``data.options.few_shot: {shots: k, seed: s}`` (`vitlab.data.few_shot_indices`: k images
per class of the training split, after the validation split is carved); validation is off and the accuracy is top-1
on the official test set.

Fine-tuning run names of ``vitlab study`` are ``<backbone>-<method>-<negatives>-k<k>-s<seed>`` (few-shot) and
``<backbone>-<method>-<negatives>-full-s<seed>`` (whole training split), folders ``finetune/runs/<name>/``.

Example:
    >>> run_name("vit", "kadaptation", "rotate_l2", 5, 0), run_name("iformer", "lora", "none", "full", 1)
    ('vit-kadaptation-rotate_l2-k5-s0', 'iformer-lora-none-full-s1')
    >>> few_shot_batch(5, 10, batch_size=128), few_shot_batch(20, 10, batch_size=128)
    (50, 128)
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vitlab.study.config import STUDY_METHODS, StudyConfig, check_method_options
from vitlab.train.config import check_accelerator

if TYPE_CHECKING:
    from vitlab.data import VitlabDataModule

__all__ = ["DEFAULT_BACKBONE", "STUDY_METHODS", "backbone_model", "few_shot_batch", "finetune_specs",
           "plan_study", "run_name", "split_sizes"]

DEFAULT_BACKBONE = "runs/pretrain_vit_mnist"


def run_name(backbone: str, method: str, negatives: str, shots: int | str, seed: int) -> str:
    """The folder name of one fine-tuning run."""
    return f"{backbone}-{method}-{negatives}-{'full' if shots == 'full' else f'k{shots}'}-s{seed}"


def few_shot_batch(shots: int, num_classes: int, batch_size: int) -> int:
    """Batch size of a few-shot run: the whole ``shots x num_classes`` subset when it fits in ``batch_size``."""
    if min(shots, num_classes, batch_size) < 1:
        raise ValueError(f"shots, num_classes and batch_size must be >= 1, got {shots}, {num_classes}, {batch_size}")
    return min(batch_size, shots * num_classes)


def split_sizes(datamodule: VitlabDataModule) -> tuple[int, int]:
    """``(training images after the validation split, test images)`` of a datamodule (set up here)."""
    datamodule.setup("fit")
    datamodule.setup("test")
    return len(datamodule.train_dataset), len(datamodule.test_dataset)


def _int_list(text: str | Sequence[int], option: str) -> list[int]:
    """Distinct integers from ``'5,20'`` or ``[5, 20]`` (a float, a bool or a repeated value is refused)."""
    items = text.split(",") if isinstance(text, str) else text
    try:
        values = [int(v) if isinstance(v, str) else v for v in items if str(v).strip()]
    except (TypeError, ValueError):
        values = None
    if values is None or any(isinstance(v, bool) or not isinstance(v, int) for v in values):
        raise ValueError(f"{option} takes a list of integers such as '[5, 20]' (or comma-separated integers such as "
                         f"5,20); got {text!r}")
    if len(set(values)) != len(values):
        raise ValueError(f"{option} lists a value twice ({text!r}): each value names one set of runs; give each once")
    return values


def _check_model_kwargs(name: str, kwargs: Mapping[str, Any], model_kwargs: Mapping[str, Any]) -> None:
    """Build the architecture once on the meta device (no memory, no weights) so that a keyword its constructor
    refuses is one message here, not a failure in every run's process. ``kwargs``: all the runs' keywords (the
    backbone's own and ``model_kwargs``, the user's, which the message names)."""
    import timm
    import torch

    try:
        with torch.device("meta"):
            timm.create_model(name, **kwargs)
    except (TypeError, ValueError, AssertionError) as err:
        raise ValueError(f"--model_kwargs {dict(model_kwargs)} were refused by timm.create_model({name!r}): "
                         f"{type(err).__name__}: {err}; check each keyword's name and type against the model's "
                         "constructor") from None


def backbone_model(backbone: str | None, model: str | None, model_kwargs: Mapping[str, Any],
                   img_size: int | None) -> tuple[dict[str, Any], int]:
    """``(model section, img_size)`` of the runs.

    ``backbone`` is a vitlab ``model.safetensors`` or run folder (the architecture comes from its metadata), any
    other ``model.pretrained`` form of `vitlab.checkpoint.resolve_pretrained` (``timm``, ``hf-hub:ORG/NAME``, a plain
    weights file; ``model`` names the architecture, except for ``hf-hub:`` where the Hub config does), or ``none``
    (random init of ``model``).
    """
    from vitlab.checkpoint import check_model_name, read_metadata, resolve_pretrained

    if model:
        check_model_name(model)  # here, not in each run's process
    if backbone is None or str(backbone).lower() == "none":
        if not model:
            raise ValueError("--backbone none needs --model <timm name>: the architecture to train from random init")
        kwargs = dict(model_kwargs)
        size = img_size or kwargs.pop("img_size", 32)
        kwargs.pop("img_size", None)
        return {"name": model, "kwargs": kwargs, "pretrained": None}, size
    hub = str(backbone).startswith("hf-hub:")
    if str(backbone) == "timm" or hub or (Path(backbone).is_file() and not _is_vitlab_file(backbone)):
        if not (model or hub):
            raise ValueError(f"--backbone {backbone} needs --model <timm name>: the architecture its weights are for")
        weights = resolve_pretrained(backbone, model or str(backbone))
        if hub and model:
            weights.check_architecture(model)  # --model of another architecture than the Hub's: not ignored
        kwargs = dict(model_kwargs)
        size = img_size or kwargs.pop("img_size", None) or int((weights.pretrained_cfg().get("input_size")
                                                                or (3, 224, 224))[-1])
        kwargs.pop("img_size", None)
        pretrained = weights.location if weights.source == "file" else str(backbone)
        return {"name": weights.architecture() if hub else model, "kwargs": kwargs, "pretrained": pretrained}, size
    if not Path(backbone).exists():
        raise FileNotFoundError(f"no pretrained backbone at {backbone}: train it with `vitlab fit --config "
                                "configs/pretrain_vit_mnist.yaml` (writes runs/pretrain_vit_mnist), or pass "
                                "--backbone PATH (a vitlab run folder or a weights file), --backbone timm / "
                                "hf-hub:ORG/NAME with --model, or --backbone none")
    meta = read_metadata(backbone)
    if meta["kind"] != "model":
        raise ValueError(f"{backbone} holds a {meta['kind']!r} checkpoint; the study needs a whole pretrained model "
                         "(kind 'model', written by `vitlab fit` without a peft method)")
    if model and model != meta["model_name"]:
        raise ValueError(f"--model {model} differs from the backbone's architecture {meta['model_name']}; drop --model")
    kwargs = {k: v for k, v in meta.get("model_kwargs", {}).items() if k != "num_classes"}
    size = img_size or kwargs.pop("img_size", None) or meta.get("extra", {}).get("data", {}).get("img_size", 32)
    kwargs.pop("img_size", None)
    return {"name": meta["model_name"], "kwargs": {**kwargs, **model_kwargs}, "pretrained": str(backbone)}, size


def _is_vitlab_file(path: str | Path) -> bool:
    from vitlab.checkpoint import has_vitlab_metadata

    return Path(path).suffix == ".safetensors" and has_vitlab_metadata(path)


def plan_study(backbone: str | None = DEFAULT_BACKBONE, data: str = "fashion_mnist", *, model: str | None = None,
               model_kwargs: Mapping[str, Any] | None = None, root: str | None = None, img_size: int | None = None,
               methods: str | Sequence[str] | None = None, method_options: Mapping[str, Any] | None = None,
               shots: str | Sequence[int] = (5, 20), seeds: str | Sequence[int] = (0, 1, 2), full_data: bool = True,
               steps: int = 200, full_epochs: int = 1, batch_size: int = 128, accelerator: str = "auto",
               output_dir: str = "runs/peft_study") -> list[dict[str, Any]]:
    """One spec per run: ``{"config": RunConfig fields, "method", "shots", "seed", "backbone_sha256"}``.

    Few-shot runs train ``steps`` optimizer steps on ``k x classes`` images (the datamodule option
    ``data.options.few_shot: {shots: k, seed: <run seed>}``, batch `few_shot_batch`); full-data runs train
    ``full_epochs`` epochs. Warm-up is the first 10 % of the steps; ``optim.lr`` is the method's (``STUDY_METHODS``).
    Run names are ``<method>-k<k>-s<seed>`` and ``<method>-full-s<seed>``. Arguments mirror ``vitlab peft-study
    --help``.

    Example:
        >>> specs = plan_study("none", "digits", model="vit_vitlab_tiny_patch4_32", methods="linear", shots="5",
        ...                    seeds="0")
        >>> [(s["config"]["name"], s["config"]["trainer"]["max_steps"]) for s in specs]
        [('linear-k5-s0', 200), ('linear-full-s0', -1)]
    """
    from vitlab.data import build_datamodule
    from vitlab.peft.methods import PEFT_METHODS

    if methods is None:
        methods = list(STUDY_METHODS)
    names = [m.strip() for m in methods.split(",") if m.strip()] if isinstance(methods, str) else list(methods)
    unknown = [m for m in names if m not in STUDY_METHODS and m not in PEFT_METHODS]
    if not names or unknown:
        valid = sorted(set(STUDY_METHODS) | set(PEFT_METHODS))
        raise ValueError(f"unknown or missing method(s) {unknown} in --methods; choose from {valid}")
    if len(set(names)) != len(names):  # as --shots and --seeds: was silently run once
        raise ValueError(f"--methods lists a method twice ({names}): give each once")
    shots, seeds = _int_list(shots, "--shots"), _int_list(seeds, "--seeds")
    if any(not 0 <= s < 2**32 for s in seeds):
        raise ValueError(f"--seeds must be integers in [0, 2**32) (a run's seed), got {seeds}")
    if any(k < 1 for k in shots) or (not shots and not full_data) or (shots and not seeds):
        raise ValueError(f"need --shots >= 1 with at least one --seeds value, or --full_data true; got shots={shots} "
                         f"seeds={seeds}")
    if steps < 1 or full_epochs < 1 or batch_size < 1:
        raise ValueError(f"--steps, --full_epochs and --batch_size must be >= 1, got {steps}, {full_epochs}, "
                         f"{batch_size}")
    check_accelerator(accelerator, "--accelerator")
    if img_size is not None and (isinstance(img_size, bool) or not isinstance(img_size, int) or img_size < 1):
        raise ValueError(f"--img_size must be an integer >= 1 (input pixels per side), got {img_size!r}; leave it out "
                         "for the backbone's own size")
    if not isinstance(method_options or {}, Mapping):
        raise ValueError(f"--method_options is a mapping of method -> peft options, e.g. "
                         f"'{{\"lora\": {{\"r\": 8}}}}'; got {method_options!r}")
    extra = dict(method_options or {})
    bad = {name: value for name, value in extra.items() if not isinstance(value, Mapping)}
    if bad:
        raise ValueError(f"--method_options gives each method a mapping of peft options, e.g. "
                         f"'{{\"lora\": {{\"r\": 8}}}}'; got {bad}")
    if set(extra) - set(names):
        raise ValueError(f"--method_options names {sorted(set(extra) - set(names))}, which are not in --methods "
                         f"{names}: add them to --methods or drop their options")
    specs_by_method = {}
    for name in names:
        spec = dict(STUDY_METHODS.get(name, {"options": {}, "lr": 3e-3}))
        spec["options"] = {**spec["options"], **extra.get(name, {})}
        check_method_options(name, spec["options"], f"--method_options {name}")  # now, not in each run's process
        specs_by_method[name] = spec
    if not isinstance(model_kwargs or {}, Mapping):
        raise ValueError(f"--model_kwargs is a mapping of timm.create_model keywords, e.g. '{{\"drop_rate\": 0.1}}'; "
                         f"got {model_kwargs!r}")
    model_section, size = backbone_model(backbone, model, model_kwargs or {}, img_size)
    if model_kwargs:
        _check_model_kwargs(model_section["name"], model_section["kwargs"], model_kwargs)
    backbone_sha256 = None
    if model_section["pretrained"]:
        from vitlab.checkpoint import resolve_pretrained

        backbone_sha256 = resolve_pretrained(model_section["pretrained"], model_section["name"]).describe()["sha256"]
    num_classes = build_datamodule(data, root=root, img_size=size).num_classes
    base_trainer = {"accelerator": accelerator, "devices": 1, "limit_val_batches": 0, "num_sanity_val_steps": 0,
                    "enable_progress_bar": False, "enable_model_summary": False, "log_every_n_steps": 1}
    data_section = {"name": data, "root": root, "img_size": size, "batch_size": batch_size}
    settings = [(k, s) for k in shots for s in seeds] + ([(None, seeds[0] if seeds else 0)] if full_data else [])
    specs = []
    for method, spec in specs_by_method.items():
        for k, seed in settings:
            run_data = copy.deepcopy(data_section)
            if k is None:
                epochs, max_steps = full_epochs, -1
            else:
                run_data["batch_size"] = few_shot_batch(k, num_classes, batch_size)
                run_data["options"] = {"few_shot": {"shots": k, "seed": seed}}
                epochs, max_steps = math.ceil(steps / math.ceil(k * num_classes / run_data["batch_size"])), steps
            run = {"name": f"{method}-{'full' if k is None else f'k{k}'}-s{seed}", "seed": seed,
                   "model": copy.deepcopy(model_section), "data": run_data,
                   "optim": {"lr": spec["lr"], "warmup_epochs": round(0.1 * epochs, 6)},
                   "trainer": {**base_trainer, "max_epochs": epochs, "max_steps": max_steps},
                   "peft": {"method": method, "target_modules": spec.get("target_modules"),
                            "options": dict(spec["options"])},
                   "output_dir": str(Path(output_dir) / "runs")}
            specs.append({"config": run, "method": method, "shots": "full" if k is None else k, "seed": seed,
                          "backbone_sha256": backbone_sha256})
    return specs


def _with_negatives(spec: dict[str, Any], backbone: str, label: str, negatives: dict[str, Any] | None) -> dict:
    spec = copy.deepcopy(spec)
    spec["config"]["name"] = run_name(backbone, spec["method"], label, spec["shots"], spec["seed"])
    spec["config"]["negatives"] = {"enabled": True, **negatives} if negatives else {"enabled": False}
    spec.update(backbone=backbone, negatives=label)
    return spec


def finetune_specs(config: StudyConfig, weights: dict[str, str]) -> list[dict[str, Any]]:
    """Specs (`plan_study` format + ``backbone``, ``negatives``) of the grid and extra runs."""
    ft = config.finetune
    out = str(config.folder / "finetune")

    def plan(label: str, methods: list[str], shots: list[int], seeds: list[int], full_data: bool) -> list[dict]:
        own = config.backbones[label].method_options
        options = {m: {**ft.methods.get(m, {}), **own.get(m, {})} for m in methods}
        spec = config.backbones[label]
        return plan_study(weights[label], config.downstream, root=config.root, model=spec.model, img_size=spec.img_size,
                          methods=methods, method_options=options,
                          shots=shots, seeds=seeds, full_data=full_data, steps=ft.steps, full_epochs=ft.full_epochs,
                          batch_size=ft.batch_size, accelerator=config.accelerator, output_dir=out)

    specs: dict[str, dict[str, Any]] = {}
    for label in ft.backbones:
        for spec in plan(label, list(ft.methods), ft.shots, ft.seeds, ft.full_data):
            for neg_label, negatives in ft.negatives.items():
                made = _with_negatives(spec, label, neg_label, negatives)
                specs[made["config"]["name"]] = made
    for run in config.extra_runs:
        shots = [] if run.shots == "full" else [run.shots]
        for spec in plan(run.backbone, [run.method], shots, [run.seed], run.shots == "full"):
            if spec["shots"] == run.shots:
                made = _with_negatives(spec, run.backbone, run.negatives, ft.negatives[run.negatives])
                specs.setdefault(made["config"]["name"], made)
    return list(specs.values())
