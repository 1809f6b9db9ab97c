"""docs/config.md documents `peft.method: subspace`, its options and every `sweep` key (issue 7): a field added to
`SubspaceConfig` or `SweepSettings` without its row fails here."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

from vitlab.peft.intrinsic import SubspaceConfig
from vitlab.study.intrinsic import SweepSettings

DOC = Path(__file__).resolve().parents[2] / "docs" / "config.md"


def _documented_keys() -> set[str]:
    keys = set()
    for cell in re.findall(r"^\| ([^|]+) \|", DOC.read_text(), re.M):
        keys.update(re.findall(r"`([a-z_0-9]+)`", cell))
    return keys


def test_every_subspace_option_and_sweep_key_has_a_row():
    documented = _documented_keys()
    options = {f.name for f in fields(SubspaceConfig)} - {"target_modules"}  # peft.target_modules, in the prose
    sweep = {f.name for f in fields(SweepSettings)}
    assert options - documented == set() and sweep - documented == set()
    assert "projection_norm" in documented and "refine_ratio" in documented
