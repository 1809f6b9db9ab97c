"""The benchmark scripts' command lines: ``--help`` matches each docstring's Usage, and bad arguments are refused
up front (argparse ``error``: exit status 2, one line naming the fix) before anything is built or measured.

Only argument parsing runs here (each script's ``parse_args``); nothing is timed.
"""

from __future__ import annotations

import importlib.util
import re
import sys
import types
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = ("bench_cpu_linear", "bench_data", "bench_iformer", "bench_negatives", "bench_peft", "bench_subspace",
           "gpu_check")
_LOADED: dict[str, types.ModuleType] = {}


def load(name: str) -> types.ModuleType:
    """The script ``benchmarks/<name>.py`` as a module (its folder on ``sys.path`` while it imports ``_args``)."""
    if name not in _LOADED:
        sys.path.insert(0, str(BENCH))
        try:
            spec = importlib.util.spec_from_file_location(f"vitlab_test_{name}", BENCH / f"{name}.py")
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        finally:
            sys.path.remove(str(BENCH))
        _LOADED[name] = module
    return _LOADED[name]


def refused(name: str, argv: list[str], capsys: pytest.CaptureFixture) -> str:
    """The one-line error of ``parse_args(argv)`` (asserting exit status 2)."""
    with pytest.raises(SystemExit) as exit_info:
        load(name).parse_args(argv)
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith(f"{Path(sys.argv[0]).name}: error: ")
    return lines[-1]


@pytest.fixture
def no_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_every_script_is_covered() -> None:
    assert sorted(SCRIPTS) == sorted(p.stem for p in BENCH.glob("*.py") if not p.name.startswith("_"))


@pytest.mark.parametrize("name", SCRIPTS)
def test_help_lists_the_options_of_the_usage(name: str, capsys: pytest.CaptureFixture) -> None:
    module = load(name)
    usage = module.__doc__[module.__doc__.index("Usage"):]
    documented = set(re.findall(r"--[a-z][a-z0-9-]*", usage))
    parser = module.build_parser()
    options = {o for action in parser._actions if action.help != "==SUPPRESS==" for o in action.option_strings}
    assert documented == options - {"-h", "--help"}
    with pytest.raises(SystemExit) as exit_info:
        module.parse_args(["--help"])
    assert exit_info.value.code == 0
    shown = capsys.readouterr().out
    assert shown.startswith("usage: ") and all(option in shown for option in documented)


BAD_NUMBERS = [
    ("bench_cpu_linear", ["--repeats", "0"], "--repeats must be >= 1"),
    ("bench_data", ["--batches", "0"], "--batches must be >= 1"),
    ("bench_data", ["--batch-size", "0"], "--batch-size must be >= 1"),
    ("bench_iformer", ["--iters", "0"], "--iters must be >= 1"),
    ("bench_iformer", ["--batch-size", "0"], "--batch-size must be >= 1"),
    ("bench_negatives", ["--repeats", "0"], "--repeats must be >= 1"),
    ("bench_negatives", ["--min-time", "nan"], "--min-time must be a finite number > 0"),
    ("bench_negatives", ["--min-time", "0"], "--min-time must be a finite number > 0"),
    ("bench_negatives", ["--threads", "-1"], "--threads must be >= 0"),
    ("bench_peft", ["--steps", "-1"], "--steps must be >= 1"),
    ("bench_peft", ["--batch-size", "0"], "--batch-size must be >= 1"),
    ("bench_peft", ["--warmup", "-1"], "--warmup must be >= 0"),
    ("bench_subspace", ["--iters", "0"], "--iters must be >= 1"),
    ("bench_subspace", ["--dims", "0"], "every --dims value >= 1"),
    ("bench_subspace", ["--wht-max-log2", "5"], "--wht-max-log2 must be in 10..30"),
    ("gpu_check", ["--steps", "-1"], "--steps must be >= 1"),
    ("gpu_check", ["--batch", "0"], "--batch must be >= 1"),
]


@pytest.mark.parametrize(("name", "argv", "message"), BAD_NUMBERS)
def test_bad_numbers_are_refused(name: str, argv: list[str], message: str, capsys: pytest.CaptureFixture) -> None:
    assert message in refused(name, argv, capsys)


@pytest.mark.parametrize("name", SCRIPTS)
def test_unwritable_out_is_refused_before_any_work(name: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert "a folder; pass a file name inside it" in refused(name, ["--out", str(tmp_path)], capsys)
    missing = tmp_path / "missing" / "x.json"
    assert f"the folder {missing.parent} does not exist" in refused(name, ["--out", str(missing)], capsys)
    assert not missing.parent.exists()
    assert "cannot be written" in refused(name, ["--out", "/proc/vitlab_bench.json"], capsys)


def test_a_valid_out_is_checked_without_leaving_a_file(tmp_path: Path) -> None:
    fresh, kept = tmp_path / "fresh.json", tmp_path / "kept.json"
    kept.write_text("earlier results\n")
    for out in (fresh, kept):
        args = load("bench_negatives").parse_args(["--repeats", "1", "--out", str(out)])
        assert args.out == out and args.repeats == 1
    assert not fresh.exists() and kept.read_text() == "earlier results\n"


@pytest.mark.usefixtures("no_cuda")
@pytest.mark.parametrize(("name", "argv", "message"), [
    ("bench_peft", ["--device", "tpu"], "--device must be cpu, or cuda"),
    ("bench_peft", ["--device", "cuda"], "--device must be cpu, or cuda on a machine with a GPU"),
    ("bench_subspace", ["--device", "gpu"], "--device must be cpu, cuda or cuda:N, got 'gpu'"),
    ("bench_subspace", ["--device", "cuda"], "torch sees no CUDA GPU on this machine; pass --device cpu"),
    ("bench_negatives", ["--devices", "gpu"], "invalid choice: 'gpu'"),
    ("bench_negatives", ["--devices", "cuda"], "torch sees no CUDA GPU on this machine; pass --devices cpu"),
    ("bench_negatives", ["--devices", "cpu", "cpu"], "a device given twice"),
    ("bench_iformer", ["--gpu-only"], "--gpu-only needs a CUDA GPU"),
    ("bench_iformer", ["--reference", "resnet50"], "invalid choice: 'resnet50'"),
    ("gpu_check", [], "needs a CUDA GPU"),
])
def test_unusable_devices_are_refused(name: str, argv: list[str], message: str, capsys: pytest.CaptureFixture,
                                      tmp_path: Path) -> None:
    assert message in refused(name, [*argv, "--out", str(tmp_path / "x.json")], capsys)


@pytest.mark.parametrize("option", ["--official", "--baseline"])
def test_model_files_are_checked_before_models_are_built(option: str, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    out = ["--out", str(tmp_path / "x.json")]
    assert "no such file" in refused("bench_iformer", [option, str(tmp_path / "none.py"), *out], capsys)
    notes = tmp_path / "inception_transformer.txt"
    notes.write_text("not python\n")
    assert "not a Python file" in refused("bench_iformer", [option, str(notes), *out], capsys)
    assert "a folder; pass the model file itself" in refused("bench_iformer", [option, str(tmp_path), *out], capsys)
    model_file = tmp_path / "inception_transformer.py"
    model_file.write_text("")
    assert load("bench_iformer").parse_args([option, str(model_file), *out]).__dict__[option[2:]] == model_file


def test_legacy_revision_is_checked_before_the_workers_run(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = ["--out", str(tmp_path / "x.json")]
    assert "no src/vitlab/peft/kadaptation/layer.py at that revision" in refused(
        "bench_peft", ["--legacy-rev", "0123456789abcdef", *out], capsys)
    assert "no src/vitlab/peft/delta_linear.py at that revision" in refused(
        "bench_peft", ["--legacy-rev", "HEAD", *out], capsys)
    assert "not a git revision" in refused("bench_peft", ["--legacy-rev=--help", *out], capsys)
    assert load("bench_peft").parse_args(out).legacy_rev == load("bench_peft").LEGACY_REV


class _TinyDataModule:
    """Stands in for ``build_datamodule``'s result: 10 images, so a pass has 3 batches of 4."""

    def __init__(self, name: str, batch_size: int, augment: str) -> None:
        self.batch_size = batch_size

    def prepare_data(self) -> None:
        pass

    def setup(self, stage: str) -> None:
        pass

    def data_config(self) -> dict[str, list[float]]:
        return {"mean": [0.5], "std": [0.5]}

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        data = torch.utils.data.TensorDataset(torch.zeros(10, 1, 28, 28), torch.zeros(10, dtype=torch.long))
        return torch.utils.data.DataLoader(data, batch_size=self.batch_size)


def test_more_batches_than_one_pass_holds_are_refused_before_timing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture) -> None:
    module = load("bench_data")
    monkeypatch.setattr(module, "build_datamodule", _TinyDataModule)
    with pytest.raises(SystemExit) as exit_info:
        module.main(["--batches", "3", "--batch-size", "4", "--out", str(tmp_path / "x.json")])
    assert exit_info.value.code == 2
    assert "has only 2 batches of 4 after the warm-up; pass --batches 2 or less" in capsys.readouterr().err
