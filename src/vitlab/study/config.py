"""The ``vitlab study`` configuration: backbones, fine-tuning grid, evaluation and intrinsic-dimension stages.

A study YAML (``configs/study.yaml``) has these top-level keys; ``full`` holds overrides that ``--full`` merges over
the rest (dicts merge key by key, everything else is replaced), so one file describes the default (about an hour on
2 CPU cores) and the complete study::

    name: study                     # the study folder is <output_dir>/<name>
    output_dir: runs
    downstream: fashion_mnist       # fine-tuning and evaluation dataset
    accelerator: auto               # a GPU is used when present
    backbones:                      # label -> pretraining: a `vitlab fit` config (its run folder is the cache)
      vit: {pretrain: configs/pretrain_vit_mnist.yaml}
      iformer: {pretrain: configs/pretrain_iformer_mnist.yaml, method_options: {kadaptation: {n: 16}}}
    finetune:                       # the grid: backbones x methods x negatives x (shots + full data) x seeds
      backbones: [vit]
      methods: {full: {}, lora: {}, kadaptation: {}}        # method -> peft options over vitlab's defaults
                                    # (a list [full, lora] means no overrides)
      negatives: {none: null, rotate_l2: {kinds: [rotate], loss: l2, weight: 1.0, patch_size: 8}}
      shots: [5]
      full_data: true
      seeds: [0]
      steps: 200                    # optimizer steps of each few-shot run
      full_epochs: 1
      batch_size: 128
    extra_runs:                     # single runs outside the grid
      - {backbone: iformer, method: kadaptation, negatives: rotate_l2, shots: 20}
    evaluation: {corruption_n: 200, negative_view_n: 1000, patch_size: 8, kinds: [shuffle, rotate, infill]}
    intrinsic_dim: {config: configs/intrinsic_dim_study.yaml, backbones: [vit], per_module: true, from_scratch: true}
    headlines:                      # the report's "Headline effects" (vitlab.study.headline): A vs B on one column
      - {advance: architecture, metric: clean_acc, a: {backbone: iformer}, b: {backbone: vit, method: full}}
    not_shown: ["Full-data runs: `vitlab study --config configs/study.yaml --full true`"]  # listed in the report
    full: {finetune: {backbones: [vit, iformer], shots: [5, 20], seeds: [0, 1, 2]}, ...}

Example:
    >>> cfg = study_config_from_dict({"backbones": {"vit": {"pretrain": "configs/pretrain_vit_mnist.yaml"}}})
    >>> list(cfg.finetune.methods), cfg.evaluation.corruption_n
    (['full', 'lora', 'kadaptation'], 200)
"""

from __future__ import annotations

import copy
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from vitlab.checks import check_field_types
from vitlab.study.headline import check_headline
from vitlab.yaml_loader import load_yaml_file

__all__ = ["CONFIGS_DIR", "DEMO_CONFIG", "BackboneSpec", "EvaluationSpec", "ExtraRun", "FinetuneSpec", "HeadlineSpec",
           "IntrinsicSpec", "STUDY_METHODS", "StudyConfig", "check_method_options", "deep_merge", "load_study_config",
           "study_config_from_dict"]

#: The packaged study configs (the demo's study, pretraining and intrinsic-dimension YAMLs).
CONFIGS_DIR = Path(__file__).resolve().parent / "configs"
#: What ``vitlab demo`` runs (``configs/demo_study.yaml`` in the repository links to it).
DEMO_CONFIG = CONFIGS_DIR / "demo_study.yaml"

NEGATIVE_KEYS = ("kinds", "loss", "weight", "patch_size", "temperature", "options")

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


@dataclass
class BackboneSpec:
    """One pretrained backbone, either pretrained by the study or given as weights.

    ``pretrain``: a `vitlab fit` config whose run folder (``<output_dir>/<name>`` of that config) caches the weights.
    Or ``model`` + ``pretrained``: a timm name (with its tag) and where its weights come from (any
    ``model.pretrained`` form: ``timm``, ``hf-hub:ORG/NAME``, a weights file); the pretrain stage is skipped and
    ``img_size`` (default: the weights' own input size) sets the fine-tuning resolution. ``method_options`` override
    peft options for this backbone only.
    """

    label: str
    pretrain: str | None = None
    model: str | None = None
    pretrained: str | None = None
    img_size: int | None = None
    method_options: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def given_weights(self) -> bool:
        """True when the backbone names its weights (no pretraining stage)."""
        return self.pretrained is not None


@dataclass
class FinetuneSpec:
    """The fine-tuning grid (see the module docstring); ``methods`` maps a peft method to its option overrides and
    ``negatives`` a label to a ``negatives`` section (``null``: without negative views)."""

    backbones: list[str] = field(default_factory=lambda: ["vit"])
    methods: dict[str, dict[str, Any]] = field(default_factory=lambda: {"full": {}, "lora": {}, "kadaptation": {}})
    negatives: dict[str, dict[str, Any] | None] = field(default_factory=lambda: {
        "none": None, "rotate_l2": {"kinds": ["rotate"], "loss": "l2", "weight": 1.0, "patch_size": 8}})
    shots: list[int] = field(default_factory=lambda: [5])
    full_data: bool = True
    seeds: list[int] = field(default_factory=lambda: [0])
    steps: int = 200
    full_epochs: int = 1
    batch_size: int = 128


@dataclass
class ExtraRun:
    """A single fine-tuning run outside the grid (e.g. Inception Transformer + KAdaptation + P-Rotate/l2)."""

    backbone: str
    method: str
    negatives: str = "none"
    shots: int | str = "full"
    seed: int = 0


@dataclass
class EvaluationSpec:
    """Test images of the generated corruption set and of the negative-view diagnostics, and the views' cells."""

    corruption_n: int = 200
    negative_view_n: int = 1000
    patch_size: int = 8
    kinds: list[str] = field(default_factory=lambda: ["shuffle", "rotate", "infill"])


@dataclass
class IntrinsicSpec:
    """``config``: a `vitlab intrinsic-dim` config (its model is replaced by each backbone, fine-tuned from the
    pretrained weights); ``per_module`` adds the per-module sweep; ``from_scratch`` adds the same whole-model sweep
    from random initialisation (folder ``intrinsic/<backbone>_scratch``), the seed's pretrained-vs-scratch
    comparison. ``backbones: []`` skips the stage."""

    config: str = "configs/intrinsic_dim_study.yaml"
    backbones: list[str] = field(default_factory=lambda: ["vit"])
    per_module: bool = True
    from_scratch: bool = False


@dataclass
class HeadlineSpec:
    """One comparison of the report's "Headline effects" (`vitlab.study.headline`): ``metric`` (a results column,
    `vitlab.study.headline.HEADLINE_METRICS`) of the runs ``a`` selects against those ``b`` selects; a selection names
    some of backbone, method, negatives, shots and must pick exactly one planned group. ``advance`` labels the row."""

    advance: str
    metric: str
    a: dict[str, Any]
    b: dict[str, Any]


@dataclass
class StudyConfig:
    """A whole study (see the module docstring)."""

    backbones: dict[str, BackboneSpec]
    name: str = "study"
    output_dir: str = "runs"
    downstream: str = "fashion_mnist"
    root: str | None = None
    accelerator: str = "auto"
    finetune: FinetuneSpec = field(default_factory=FinetuneSpec)
    extra_runs: list[ExtraRun] = field(default_factory=list)
    evaluation: EvaluationSpec = field(default_factory=EvaluationSpec)
    intrinsic_dim: IntrinsicSpec = field(default_factory=IntrinsicSpec)
    headlines: list[HeadlineSpec] = field(default_factory=list)
    not_shown: list[str] = field(default_factory=list)

    @property
    def folder(self) -> Path:
        return Path(self.output_dir) / self.name

    def used_backbones(self) -> list[str]:
        """Backbone labels some stage needs, in config order."""
        wanted = {*self.finetune.backbones, *(r.backbone for r in self.extra_runs), *self.intrinsic_dim.backbones}
        return [label for label in self.backbones if label in wanted]

    def planned_runs(self) -> list[tuple[str, str, str, int | str, int]]:
        """``(backbone, method, negatives, shots, seed)`` of every fine-tuning run: the grid (the full-data runs with
        the first seed only), then the extra runs, duplicates dropped, in order."""
        ft = self.finetune
        runs = [(b, m, n, k, s) for b in ft.backbones for m in ft.methods for n in ft.negatives
                for k in [*ft.shots, *(["full"] if ft.full_data else [])]
                for s in (ft.seeds if k != "full" else ft.seeds[:1])]
        runs += [(r.backbone, r.method, r.negatives, r.shots, r.seed) for r in self.extra_runs]
        return list(dict.fromkeys(runs))


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``override`` merged in: nested dicts merge key by key, other values are replaced (copies)."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _build(cls: type, raw: Any, where: str) -> Any:
    if not isinstance(raw, dict):
        raise ValueError(f"{where} must be a mapping, got {raw!r}")
    valid = [f.name for f in fields(cls)]
    unknown = sorted(set(raw) - set(valid))
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in {where}; valid keys: {valid}")
    try:
        built = cls(**raw)
    except TypeError as err:
        raise ValueError(f"{where}: {err}") from None
    check_field_types(built, where)
    return built


def _check(config: StudyConfig) -> None:
    from vitlab.train.run_folder import check_run_name  # the study folder <output_dir>/<name>: one plain name too

    check_run_name(config.name)
    if not config.output_dir.strip():  # "" made the study folder ./<name> in whatever folder the command ran from
        raise ValueError("output_dir is empty: give the parent folder of the study folder, e.g. --output_dir runs "
                         "(or `output_dir: runs` in the study YAML)")
    config.output_dir = os.path.expanduser(config.output_dir)  # `~/runs`: a folder named `~` was made, not home's
    from vitlab.data import check_name

    try:  # refused when the fine-tuning stage built its data, after pretraining
        check_name(config.downstream)
    except ValueError as err:
        raise ValueError(f"downstream: {err}") from None
    labels = list(config.backbones)
    for label, spec in config.backbones.items():
        if (spec.pretrain is None) == (spec.pretrained is None) or (spec.pretrained is None) != (spec.model is None):
            raise ValueError(f"backbones.{label} needs either `pretrain: <vitlab fit config>` or `model: <timm name>` "
                             "with `pretrained: timm | hf-hub:ORG/NAME | <weights file>`, not both")
        if spec.img_size is not None and spec.img_size < 1:
            raise ValueError(f"backbones.{label}.img_size must be an integer >= 1 (input pixels per side), got "
                             f"{spec.img_size}; leave it out for the weights' own size")
    ft = config.finetune
    for where, names in (("finetune.backbones", ft.backbones), ("intrinsic_dim.backbones",
                                                                 config.intrinsic_dim.backbones),
                         ("extra_runs[].backbone", [r.backbone for r in config.extra_runs])):
        missing = [n for n in names if n not in config.backbones]
        if missing:
            raise ValueError(f"{where} names {missing}, which are not in backbones {labels}: add them under backbones")
    for where, names in (("finetune.backbones", ft.backbones), ("intrinsic_dim.backbones",
                                                                 config.intrinsic_dim.backbones)):
        if len(set(names)) != len(names):  # silently ran once, as if listed once
            raise ValueError(f"{where} lists a backbone twice ({names}): each backbone runs once; give each once")
    for label, neg in ft.negatives.items():
        if neg is not None and set(neg) - set(NEGATIVE_KEYS):
            raise ValueError(f"finetune.negatives.{label} has unknown key(s) {sorted(set(neg) - set(NEGATIVE_KEYS))};"
                             f" valid: {list(NEGATIVE_KEYS)} (the negatives section of `vitlab fit`)")
    from vitlab.augment import NegativeViews
    from vitlab.train.config import NegativesConfig

    for label, neg in ft.negatives.items():  # as each run's `negatives` section (refused in its process before)
        if neg is not None:
            try:
                NegativesConfig(**{"enabled": True, **neg})
            except ValueError as err:
                raise ValueError(f"finetune.negatives.{label}: {err}") from None
    try:  # the evaluate stage's views (refused after pretraining and fine-tuning before)
        NegativeViews(config.evaluation.kinds, config.evaluation.patch_size)
    except ValueError as err:
        raise ValueError(f"evaluation.kinds / evaluation.patch_size: {err}") from None
    for run in config.extra_runs:
        if run.negatives not in ft.negatives:
            raise ValueError(f"extra run negatives {run.negatives!r} is not a finetune.negatives label "
                             f"{list(ft.negatives)}")
        if run.shots != "full" and (not isinstance(run.shots, int) or run.shots < 1):
            raise ValueError(f"extra run shots must be a positive int or 'full', got {run.shots!r}")
    if not ft.methods or (not ft.shots and not ft.full_data) or not ft.seeds or not ft.negatives:
        raise ValueError("finetune needs at least one method, one negatives entry, one seed and shots or full_data")
    from vitlab.peft.methods import PEFT_METHODS  # the one method registry (the study's methods are among them)

    unknown = [m for m in ft.methods if m not in PEFT_METHODS]
    if unknown:
        raise ValueError(f"finetune.methods names unknown method(s) {unknown}; choose from {sorted(PEFT_METHODS)}")
    for i, run in enumerate(config.extra_runs):  # refused after pretraining, naming --methods / --seeds, before
        if run.method not in PEFT_METHODS:
            raise ValueError(f"extra_runs[{i}].method {run.method!r} is not a peft method; choose from "
                             f"{sorted(PEFT_METHODS)}")
        if not 0 <= run.seed < 2**32:
            raise ValueError(f"extra_runs[{i}].seed must be an integer in [0, 2**32) (the run's seed), got {run.seed}")
    for label, spec in config.backbones.items():  # options of a misspelt method were dropped without a word
        unknown = sorted(set(spec.method_options) - set(PEFT_METHODS))
        if unknown:
            raise ValueError(f"backbones.{label}.method_options names unknown method(s) {unknown}; choose from "
                             f"{sorted(PEFT_METHODS)}")
    _check_method_options(config)
    if any(k < 1 for k in ft.shots) or len(set(ft.shots)) != len(ft.shots):
        raise ValueError(f"finetune.shots must be distinct positive ints (training images per class), got {ft.shots}")
    bad_seeds = [s for s in ft.seeds if isinstance(s, bool) or not isinstance(s, int) or not 0 <= s < 2**32]
    if bad_seeds:
        raise ValueError(f"finetune.seeds must be integers in [0, 2**32) (each run's seed), got {ft.seeds}")
    if len(set(ft.seeds)) != len(ft.seeds):  # refused after pretraining, naming --seeds, before
        raise ValueError(f"finetune.seeds lists a seed twice ({ft.seeds}): each seed is one run; give each once")
    if min(ft.steps, ft.full_epochs, ft.batch_size, config.evaluation.corruption_n,
           config.evaluation.negative_view_n) < 1:
        raise ValueError("finetune.steps/full_epochs/batch_size and evaluation.corruption_n/negative_view_n must be "
                         ">= 1")
    groups = [run[:4] for run in config.planned_runs()]
    for i, headline in enumerate(config.headlines):
        check_headline(asdict(headline), groups, where=f"headlines[{i}]")
    if not all(isinstance(item, str) and item.strip() for item in config.not_shown):
        raise ValueError(f"not_shown is a list of non-empty strings (one per item), got {config.not_shown!r}")


def check_method_options(method: str, options: dict[str, Any], where: str) -> None:
    """Validate the peft ``options`` a run of ``method`` will get (``STUDY_METHODS``' target modules), as the run's
    own process would, so a bad option is refused before anything trains; ``where`` names the setting in the error.

    Example:
        >>> check_method_options("lora", {"r": 4, "bogus": 1}, "--method_options lora")
        Traceback (most recent call last):
        ...
        ValueError: --method_options lora: unknown option(s) ['bogus'] for peft method 'lora'; ...
    """
    from vitlab.peft.methods import build_peft_transform

    try:
        build_peft_transform(method, STUDY_METHODS.get(method, {}).get("target_modules"), **options)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}: {err}") from None


def _check_method_options(config: StudyConfig) -> None:
    """Each method's peft options as its runs will get them (``STUDY_METHODS``, then ``finetune.methods``, then the
    backbone's ``method_options``), validated now rather than in each run's process."""
    used = {label: set() for label in config.backbones}
    for label in config.finetune.backbones:
        used[label].update(config.finetune.methods)
    for run in config.extra_runs:
        used[run.backbone].add(run.method)
    for label, methods in used.items():
        own = config.backbones[label].method_options
        for method in sorted(methods):
            defaults = STUDY_METHODS.get(method, {"options": {}})["options"]
            options = {**defaults, **config.finetune.methods.get(method, {}), **own.get(method, {})}
            check_method_options(method, options, f"the options of method {method!r} for backbone {label!r} "
                                 f"(finetune.methods.{method} over backbones.{label}.method_options.{method})")


def study_config_from_dict(raw: dict[str, Any], full: bool = False) -> StudyConfig:
    """Validate a study mapping (the YAML's content) into a `StudyConfig`; ``full`` merges its ``full`` overrides.

    Raises:
        ValueError: an unknown key (the message lists the valid ones), a backbone used but not defined, ...
    """
    if not isinstance(raw, dict):
        raise ValueError(f"a study config is a mapping, got {type(raw).__name__}")
    raw = dict(raw)
    overrides = raw.pop("full", None) or {}
    if not isinstance(overrides, dict):  # was an AttributeError with --full, unnoticed without
        raise ValueError(f"full: is a mapping of overrides that --full merges (e.g. {{finetune: {{seeds: [0, 1, 2]}}}})"
                         f", got {overrides!r}")
    if full:
        if not overrides:
            raise ValueError("--full merges the config's `full:` section (the paper-sized budget), and this config "
                             "has none: drop --full, or add a `full:` section of overrides")
        raw = deep_merge(raw, overrides)
    backbones = raw.pop("backbones", None)
    if not backbones or not isinstance(backbones, dict):
        raise ValueError("a study needs `backbones: {label: {pretrain: <vitlab fit config>}}` (or {label: {model: "
                         "<timm name>, pretrained: timm}})")
    parsed = {label: _build(BackboneSpec, {"label": label, **(spec or {})}, f"backbones.{label}")
              for label, spec in backbones.items()}
    sections = {"finetune": FinetuneSpec, "evaluation": EvaluationSpec, "intrinsic_dim": IntrinsicSpec}
    if isinstance(raw.get("finetune"), dict) and isinstance(raw["finetune"].get("methods"), list):
        methods = raw["finetune"]["methods"]  # [full, lora]: the methods without option overrides
        if all(isinstance(m, str) for m in methods):
            if len(set(methods)) != len(methods):  # silently ran once, as if listed once
                raise ValueError(f"finetune.methods lists a method twice ({methods}): each method runs once; give "
                                 "each once (a method with other options is one method, set its options: "
                                 "`methods: {lora: {r: 8}}`)")
            raw["finetune"] = {**raw["finetune"], "methods": {m: {} for m in methods}}
    kwargs = {key: _build(cls, raw.pop(key), key) for key, cls in sections.items() if key in raw}
    extra = [_build(ExtraRun, r, f"extra_runs[{i}]") for i, r in enumerate(raw.pop("extra_runs", None) or [])]
    headlines = [_build(HeadlineSpec, h, f"headlines[{i}]") for i, h in enumerate(raw.pop("headlines", None) or [])]
    config = _build(StudyConfig, {"backbones": parsed, "extra_runs": extra, "headlines": headlines, **kwargs, **raw},
                    "the study config")
    _check(config)
    return config


def load_study_config(path: str | Path, full: bool = False, **overrides: Any) -> StudyConfig:
    """Read a study YAML; ``overrides`` (``name``, ``output_dir``, ``accelerator``) win over the file.

    Config paths inside it (``pretrain``, ``intrinsic_dim.config``) are taken from the working directory, or from the
    YAML's own folder (symbolic links followed) when they are not found there (a packaged study names its configs
    beside it).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no study config at {path}: pass --config configs/study.yaml")
    raw = load_yaml_file(path) or {}  # a key given twice is refused, naming both lines
    raw.update({k: v for k, v in overrides.items() if v is not None})
    config = study_config_from_dict(raw, full=full)
    for spec in config.backbones.values():
        if spec.pretrain is not None:
            spec.pretrain = _resolve(spec.pretrain, path.resolve().parent)
    config.intrinsic_dim.config = _resolve(config.intrinsic_dim.config, path.resolve().parent)
    if config.intrinsic_dim.backbones and not Path(config.intrinsic_dim.config).is_file():
        raise FileNotFoundError(f"intrinsic_dim.config {config.intrinsic_dim.config} is not a file (looked in the "
                                f"working directory and beside {path}): set it to a `vitlab intrinsic-dim` YAML, or "
                                "`intrinsic_dim: {backbones: []}` to skip the intrinsic-dimension stage")
    return config


def _resolve(file: str, beside: Path) -> str:
    """A config path as given when it exists from the working directory, else beside the study YAML."""
    return file if Path(file).exists() or not (beside / file).exists() else str(beside / file)
