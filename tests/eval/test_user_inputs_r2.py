"""Round-2 user inputs of the evaluation commands: scripts without a main guard, run folders of every kind."""

import sys
import types
import warnings
from pathlib import Path

import numpy as np
import pytest

from vitlab.eval import corruptions as corruptions_module
from vitlab.eval.corruptions import generate_corruption_set


class _ThreadPool:
    """Stands in for the process pool (records that it was used; threads, so nothing is spawned)."""

    used = 0

    def __init__(self, max_workers, mp_context=None):
        from concurrent.futures import ThreadPoolExecutor

        type(self).used += 1
        self._pool = ThreadPoolExecutor(max_workers)

    def __enter__(self):
        return self._pool.__enter__()

    def __exit__(self, *exc):
        return self._pool.__exit__(*exc)


def _run_as_main(tmp_path, monkeypatch, source: str) -> dict:
    """Run ``source`` as the ``__main__`` script ``tmp_path/probe.py`` (as `python probe.py` would)."""
    script = tmp_path / "probe.py"
    script.write_text(source)
    main = types.ModuleType("__main__")
    main.__file__ = str(script)
    monkeypatch.setitem(sys.modules, "__main__", main)
    main.__dict__["generate_corruption_set"] = generate_corruption_set
    exec(compile(source, str(script), "exec"), main.__dict__)
    return main.__dict__


_IMAGES = "import numpy as np\nimages = np.arange(2 * 32 * 32 * 3, dtype=np.uint64).reshape(2, 32, 32, 3) % 251\n"
_CALL = ("generate_corruption_set(images.astype(np.uint8), np.array([0, 1]), FOLDER, corruptions=['glass_blur'], "
         "workers=2, chunk_size=1, progress=False)")


def test_unguarded_script_generates_in_one_process_with_the_same_images(tmp_path, monkeypatch):
    """A script calling the generation at its top level (no `if __name__ == "__main__":`) was re-run by every spawned
    worker (and the pool broke); it now runs in one process, warns naming the guard, and makes the same images."""
    monkeypatch.setattr(corruptions_module, "ProcessPoolExecutor", _ThreadPool)
    _ThreadPool.used = 0
    reference = generate_corruption_set(
        (np.arange(2 * 32 * 32 * 3, dtype=np.uint64).reshape(2, 32, 32, 3) % 251).astype(np.uint8),
        np.array([0, 1]), tmp_path / "ref", corruptions=["glass_blur"], workers=1, chunk_size=1, progress=False)
    with pytest.warns(UserWarning, match=r'if __name__ == "__main__"'):
        _run_as_main(tmp_path, monkeypatch, _IMAGES + f"FOLDER = {str(tmp_path / 'unguarded')!r}\n" + _CALL + "\n")
    assert _ThreadPool.used == 0
    np.testing.assert_array_equal(np.load(tmp_path / "unguarded" / "glass_blur.npy"),
                                  np.load(reference / "glass_blur.npy"))


def test_guarded_script_still_uses_the_workers(tmp_path, monkeypatch):
    """Under the guard (and from a function the guard calls) the workers are used, without a warning."""
    monkeypatch.setattr(corruptions_module, "ProcessPoolExecutor", _ThreadPool)
    _ThreadPool.used = 0
    source = (_IMAGES + f"FOLDER = {str(tmp_path / 'guarded')!r}\n"
              + f"def main():\n    {_CALL}\n\nif '__main__' == __name__:\n    main()\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _run_as_main(tmp_path, monkeypatch, source)
    assert _ThreadPool.used == 1
    assert np.load(tmp_path / "guarded" / "glass_blur.npy").shape == (10, 32, 32, 3)


@pytest.mark.parametrize("locked", [False, True])
@pytest.mark.parametrize("target", ["", "model.safetensors"])
def test_unfinished_run_names_resume_or_wait(tmp_path, locked, target):
    """A run folder without model.safetensors (killed before the end, or still training) said only "no weights at
    ...model.safetensors"; every evaluation now names `--resume true` (and waiting, while the .lock is held)."""
    from vitlab.errors import ConfigError
    from vitlab.eval.evaluate import diagnose_checkpoint, evaluate_checkpoint, predict_images, robustness_report

    run = tmp_path / "my run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(b"")
    (run / "config.yaml").write_text("name: my run\ndata:\n  name: digits\n")
    if locked:
        (run / ".lock").write_text('{"host": "here", "pid": 1}')
    fix = "still being trained" if locked else "has not finished"
    for call in (lambda c: evaluate_checkpoint(c), lambda c: robustness_report(c, n=4),
                 lambda c: diagnose_checkpoint(c, n=4), lambda c: predict_images(c, ["x.png"])):
        with pytest.raises(ConfigError, match=rf"{fix}.*--name 'my run' --output_dir .*--resume true"):
            call(run / target)


def test_adapter_weights_file_names_its_folder(tmp_path):
    """`--checkpoint RUN/adapter/adapter_model.safetensors` said the file was "not written by vitlab" and to start a
    run from it; it now names the adapter folder and the run folder to pass instead."""
    from peft import LoraConfig, get_peft_model
    from torch import nn

    from vitlab.errors import ConfigError
    from vitlab.eval.evaluate import evaluate_checkpoint

    model = get_peft_model(nn.Sequential(nn.Linear(4, 4)), LoraConfig(r=1, target_modules=["0"]))
    model.save_pretrained(tmp_path / "run" / "adapter")
    file = tmp_path / "run" / "adapter" / "adapter_model.safetensors"
    assert file.is_file()
    with pytest.raises(ConfigError, match=r"pass the folder \(.*adapter\) or its run folder \(.*run\)"):
        evaluate_checkpoint(file)


@pytest.mark.parametrize("device", ["mps", "xpu", "meta"])
def test_device_this_machine_lacks_is_refused_naming_cpu(device):
    """`--device mps` (a Mac habit) on a torch build without MPS failed deep in torch with a RuntimeError traceback,
    `meta` evaluated nothing; both are now one ConfigError naming --device cpu."""
    import torch

    from vitlab.errors import ConfigError
    from vitlab.eval.device import resolve_device

    try:
        torch.empty(0, device=device)
        usable = device != "meta"
    except (RuntimeError, AssertionError, ImportError):
        usable = False
    if usable:  # a machine that has the device: it is accepted
        assert resolve_device(device).type == device
    else:
        with pytest.raises(ConfigError, match=r"--device cpu") as info:
            resolve_device(device)
        assert "\n" not in str(info.value)


def test_generate_corruption_set_takes_none_for_every_corruption(tmp_path, monkeypatch):
    """`corruptions=None` (what robustness_report and evaluate_corruptions take for "all") failed with "'NoneType'
    object is not iterable"; it now means all 19, as the default does."""
    planned = []
    monkeypatch.setattr(corruptions_module, "_generate", lambda images, folder, todo, *rest: planned.extend(todo))
    images = np.zeros((1, 32, 32, 3), dtype=np.uint8)
    generate_corruption_set(images, np.array([0]), tmp_path / "set", corruptions=None, workers=1, progress=False)
    assert planned == list(corruptions_module.ALL_CORRUPTIONS)


def test_moved_run_folder_replaces_its_own_report(tmp_path, checkpoint, monkeypatch):
    """A run folder moved / copied with its reports (or evaluated from another directory: the report records a
    relative path) was refused as "the report of another checkpoint"; its own report is now replaced, while a report of
    another checkpoint in an --out folder is still refused."""
    import shutil

    from vitlab.errors import ConfigError
    from vitlab.eval.evaluate import diagnose_checkpoint

    monkeypatch.chdir(tmp_path)
    shutil.copytree(checkpoint, tmp_path / "run")
    diagnose_checkpoint("run", n=4, kinds=["rotate"], device="cpu")
    shutil.move(tmp_path / "run", tmp_path / "moved")
    result = diagnose_checkpoint("moved", n=4, kinds=["rotate"], device="cpu")
    assert result["checkpoint"] == str(Path("moved") / "model.safetensors")
    with pytest.raises(ConfigError, match="report of another checkpoint"):
        diagnose_checkpoint(checkpoint, n=4, kinds=["rotate"], device="cpu", out=tmp_path / "moved")
