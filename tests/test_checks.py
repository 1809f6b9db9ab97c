"""`vitlab.checks.check_field_types`: a dataclass's fields against their annotations, as YAML gives values."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from vitlab.checks import check_field_types
from vitlab.errors import ConfigError


@dataclass
class Section:
    steps: int = 1
    lr: float | None = None
    shots: list[int] = field(default_factory=list)
    methods: dict[str, dict[str, Any]] = field(default_factory=dict)
    label: str | int = "full"
    enabled: bool = True


@pytest.mark.parametrize("values", [
    {}, {"lr": 1}, {"lr": 0.5}, {"shots": [5, 20]}, {"methods": {"lora": {"r": 8, "x": [1]}}}, {"label": 3},
    {"label": "full"}, {"enabled": False},
])
def test_values_of_the_annotated_types_pass(values):
    check_field_types(Section(**values), "section")


@pytest.mark.parametrize(("values", "message"), [
    ({"steps": True}, r"section.steps must be int, got True \(bool\)"),  # a bool is not an int
    ({"steps": 2.0}, r"section.steps must be int, got 2.0 \(float\)"),
    ({"lr": "1e-3"}, r"section.lr must be float \| null, got '1e-3' \(str\)"),
    ({"lr": False}, r"section.lr must be float \| null"),
    ({"shots": [5, "20"]}, r"section.shots must be list\[int\], got \[5, '20'\] \(list\)"),
    ({"shots": (5,)}, r"section.shots must be list\[int\]"),
    ({"methods": {"lora": 5}}, r"section.methods must be dict\[str, dict\[str, Any\]\]"),
    ({"methods": {1: {}}}, r"section.methods must be dict"),
    ({"label": 2.5}, r"section.label must be str \| int"),
    ({"enabled": "yes"}, r"section.enabled must be bool, got 'yes' \(str\)"),
])
def test_a_value_of_another_type_is_named_with_its_field_and_type(values, message):
    with pytest.raises(ConfigError, match=message):
        check_field_types(Section(**values), "section")
