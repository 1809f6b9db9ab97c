"""vitlab.yaml_loader: YAML a user wrote, read with PyYAML's safe loader but refusing a key given twice."""

from __future__ import annotations

import pytest
import yaml

from vitlab.errors import ConfigError, MissingFileError
from vitlab.yaml_loader import check_unique_keys, load_yaml, load_yaml_file


@pytest.mark.parametrize(
    ("text", "key", "where"),
    [
        ("name: a\noptim:\n  lr: 0.1\ndata: {}\noptim:\n  lr: 0.2\n", "optim", "line 2 and line 5"),
        ("optim:\n  lr: 0.1\n  lr: 0.2\n", "optim.lr", "line 2 and line 3"),
        ("runs:\n  - {name: a, name: b}\n", "runs[0].name", "line 2, columns 6 and 15"),
        ("1: a\n0x1: b\n", "1", "line 1 and line 2"),  # one key as YAML reads it
        ("a: 1\n'a': 2\n", "a", "line 1 and line 2"),
    ],
)
def test_a_key_given_twice_is_refused_naming_it_and_both_places(text, key, where):
    assert isinstance(yaml.safe_load(text), dict)  # PyYAML alone keeps the last silently
    with pytest.raises(ConfigError) as err:
        load_yaml(text, "run.yaml")
    message = str(err.value)
    assert message.startswith(f"run.yaml: key {key!r} is given twice ({where})") and "keep one" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    "text",
    ["a: 1\nb:\n  a: 2\n", "base: &b {x: 1, y: 2}\nrun:\n  <<: *b\n  x: 3\n", "- {a: 1}\n- {a: 2}\n", "", "3\n"],
)
def test_equal_keys_in_different_mappings_and_merge_overrides_load_as_pyyaml(text):
    assert load_yaml(text) == yaml.safe_load(text)
    check_unique_keys(text)


@pytest.mark.parametrize(
    ("text", "where"), [("a: [1\n", "at line 2, column 1"), ("a: !!python/name:os.system x\n", "at line 1, column 4")]
)
def test_invalid_or_unsafe_yaml_names_the_source_and_line(text, where):
    with pytest.raises(ConfigError, match=rf"^x\.yaml is not valid YAML {where}: "):
        load_yaml(text, "x.yaml")


def test_files_missing_folders_binary_and_duplicates(tmp_path):
    with pytest.raises(MissingFileError, match="no YAML file at"):
        load_yaml_file(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="is a folder, not a YAML file"):
        load_yaml_file(tmp_path)
    binary = tmp_path / "b.yaml"
    binary.write_bytes(b"\xff\xfe\x00\x81")
    with pytest.raises(ConfigError, match="not a text"):
        load_yaml_file(binary)
    dup = tmp_path / "dup.yaml"
    dup.write_text("seed: 1\nseed: 2\n")
    with pytest.raises(ConfigError, match=rf"^{dup}: key 'seed' is given twice \(line 1 and line 2\)"):
        load_yaml_file(dup)
    good = tmp_path / "good.yaml"
    good.write_text("seed: 1\nmodel: {name: x}\n")
    assert load_yaml_file(str(good)) == {"seed": 1, "model": {"name": "x"}}
    with pytest.raises(ConfigError, match="must be a str or Path"):
        load_yaml_file(3)
