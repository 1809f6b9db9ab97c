"""The README's Python examples are meant to be copied and pasted: each must name only what it imports or defines.

A block that uses names of the block just before it (a continuation, e.g. ``model.save_pretrained`` after the block
that builds ``model``) is checked together with that block. The check is ruff's pyflakes rules (undefined names,
unused or failing imports are caught statically, without running the examples' downloads or long steps).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def _ruff() -> str:
    found = Path(sys.executable).parent / "ruff"
    return str(found) if found.exists() else shutil.which("ruff") or "ruff"


def undefined_names(code: str) -> list[str]:
    """ruff's F821 (undefined name) findings for ``code``, one line each."""
    out = subprocess.run([_ruff(), "check", "--no-cache", "--select", "F821", "--output-format", "concise",
                          "--stdin-filename", "readme_example.py", "-"], input=code, capture_output=True, text=True)
    assert out.returncode in (0, 1), out.stderr
    return [line for line in out.stdout.splitlines() if "F821" in line]


def test_the_readme_has_python_examples():
    assert len(BLOCKS) >= 10


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_each_readme_example_names_only_what_it_or_the_block_before_defines(index):
    missing = undefined_names(BLOCKS[index])
    if missing and index > 0:  # a continuation of the block before it
        missing = undefined_names(BLOCKS[index - 1] + "\n" + BLOCKS[index])
    assert not missing, f"README example {index + 1} (starts {BLOCKS[index].splitlines()[0]!r}): {missing}"


def test_the_check_finds_an_undefined_name():
    assert undefined_names("model = get_peft_model(vit, config)\n")
