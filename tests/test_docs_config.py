"""docs/config.md against the code: every option row names a real option with the code's default, every option of
the schema is documented, and the YAML examples are valid configuration."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import lightning.pytorch.callbacks as pl_callbacks
import lightning.pytorch.loggers as pl_loggers
import pytest
import yaml

from vitlab.peft.intrinsic.config import SubspaceConfig
from vitlab.study.config import (
    BackboneSpec,
    EvaluationSpec,
    ExtraRun,
    FinetuneSpec,
    HeadlineSpec,
    IntrinsicSpec,
    StudyConfig,
)
from vitlab.study.intrinsic import SweepSettings
from vitlab.train.config import (
    _NEGATIVES_DEFAULTS,
    DataConfig,
    ModelConfig,
    NegativesConfig,
    OptimConfig,
    PeftConfig,
    RunConfig,
)

DOC = (Path(__file__).resolve().parents[1] / "docs" / "config.md").read_text()


def section(heading: str) -> str:
    """The text under the Markdown heading that starts with ``heading``, up to the next heading of any level."""
    match = re.search(rf"^#+ {re.escape(heading)}.*?$(.*?)(?=^#)", DOC, re.S | re.M)
    assert match, f"no heading {heading!r} in docs/config.md"
    return match.group(1)


def table(text: str) -> dict[str, str]:
    """``{key: default cell}`` of the option table in ``text`` (a row naming several keys gives one entry each)."""
    rows = {}
    for keys, default in re.findall(r"^\| (`[^|]*?) \| ([^|]*?) \|", text, re.M):
        names = re.findall(r"`([^`]+)`", keys)
        defaults = re.findall(r"`([^`]+)`", default) or [default]
        for i, name in enumerate(names):
            rows[name] = defaults[i] if len(defaults) == len(names) else defaults[0]
    return rows


def defaults(cls: type) -> dict[str, Any]:
    """The dataclass's field defaults (``"required"`` for a field without one)."""
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
        else:
            out[f.name] = "required"
    return out


def as_value(cell: str) -> Any:
    """A documented default as a Python value (YAML, with ``1e-3``-style numbers read as floats)."""
    value = yaml.safe_load(cell)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def same(documented: Any, actual: Any) -> bool:
    if isinstance(actual, tuple):
        actual = list(actual)
    return documented == actual


TABLES = [
    ("Top level", {k: v for k, v in defaults(RunConfig).items() if k in ("name", "seed", "output_dir")}),
    ("`model`", defaults(ModelConfig)),
    ("`data`", defaults(DataConfig)),
    ("`optim`", defaults(OptimConfig)),
    ("`negatives`", {**defaults(NegativesConfig), **_NEGATIVES_DEFAULTS}),
    ("`peft` (reserved", defaults(PeftConfig)),
    ("`peft.method: subspace`", {k: v for k, v in defaults(SubspaceConfig).items() if k != "target_modules"}),
]


@pytest.mark.parametrize(("heading", "expected"), TABLES, ids=[t[0] for t in TABLES])
def test_option_tables_match_the_schema(heading: str, expected: dict[str, Any]) -> None:
    rows = table(section(heading).split("`peft.options.sweep`")[0])  # the sweep table follows the subspace one
    rows.pop("resume", None)  # a `vitlab fit` flag, not a config key
    rows.pop("sweep", None)  # documented in its own table below
    assert set(rows) == set(expected)
    wrong = {k: (rows[k], expected[k]) for k in rows if not same(as_value(rows[k]), expected[k])}
    assert not wrong, f"documented default != code default: {wrong}"


def test_sweep_table_matches_sweep_settings() -> None:
    rows = table(section("`peft.method: subspace`").split("`peft.options.sweep`")[1])
    expected = defaults(SweepSettings)
    assert set(rows) == set(expected)
    assert all(same(as_value(rows[k]), expected[k]) for k in rows), rows


def test_trainer_defaults_match_the_harness() -> None:
    from vitlab.train.run import TRAINER_DEFAULTS

    text = section("`trainer`")
    assert f"`max_epochs` (vitlab default {TRAINER_DEFAULTS['max_epochs']})" in text
    assert f"`accelerator` (`{TRAINER_DEFAULTS['accelerator']}`)" in text
    assert f"`devices` ({TRAINER_DEFAULTS['devices']})" in text


@pytest.mark.parametrize("spec", [StudyConfig, BackboneSpec, FinetuneSpec, ExtraRun, EvaluationSpec, IntrinsicSpec,
                                  HeadlineSpec])
def test_every_study_key_is_documented(spec: type) -> None:
    code = " ".join(re.findall(r"`([^`]+)`", section("Study configuration")))
    missing = [f.name for f in dataclasses.fields(spec) if f.name != "label" and not re.search(rf"\b{f.name}\b", code)]
    assert not missing, f"{spec.__name__} keys not in docs/config.md: {missing}"


def test_yaml_examples_are_valid_configuration() -> None:
    blocks = [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", DOC, re.S)]
    assert len(blocks) == 2
    trainer = blocks[0]["trainer"]
    for entry in trainer["logger"]:
        assert hasattr(pl_loggers, entry["class_path"]), entry
    for entry in trainer["callbacks"]:
        assert hasattr(pl_callbacks, entry["class_path"]), entry
    negatives = NegativesConfig(**blocks[1]["negatives"])
    assert negatives.loss == "contrastive" and negatives.temperature == 0.1
