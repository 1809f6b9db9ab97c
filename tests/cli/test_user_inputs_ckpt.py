"""Lightning ``.ckpt`` files a user points vitlab at (``vitlab eval --checkpoint X.ckpt``, ``--resume true``): a
hostile or broken one is one line saying what is wrong, never torch's advice to set ``weights_only=False``."""

from __future__ import annotations

import os

import pytest
import timm
import torch

from vitlab.checkpoint import CheckpointError, checkpoint_weights, load_lightning_checkpoint, save_checkpoint
from vitlab.cli.main import main


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.makedirs, (self.marker,)


@pytest.fixture
def finished_run(tmp_path):
    """A finished run folder as `vitlab fit` leaves it (config.yaml, model.safetensors, checkpoints/)."""
    run = tmp_path / "run"
    kwargs = {"num_classes": 10, "in_chans": 1, "depth": 1, "embed_dim": 32, "num_heads": 2}
    model = timm.create_model("vit_vitlab_tiny_patch4_32", **kwargs)
    save_checkpoint(run, model.state_dict(), kind="model", model_name="vit_vitlab_tiny_patch4_32",
                    model_kwargs=kwargs, extra={"data": {"name": "digits"}})
    (run / "config.yaml").write_text("name: run\n")
    (run / "checkpoints").mkdir()
    return run


def test_a_code_running_ckpt_is_refused_without_torchs_weights_only_advice(finished_run, capsys):
    marker = finished_run / "ran"
    ckpt = finished_run / "checkpoints" / "evil.ckpt"
    torch.save({"state_dict": _RunsCode(str(marker))}, ckpt)
    assert main(["eval", "--checkpoint", str(ckpt), "--data", "digits", "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert "pickled Python objects besides tensors" in err and str(ckpt) in err
    assert "weights_only" not in err and not marker.exists()


def test_a_state_dict_holding_non_tensors_is_a_checkpoint_error_not_an_attribute_error(finished_run):
    ckpt = finished_run / "checkpoints" / "odd.ckpt"
    torch.save({"state_dict": {"model.pos_embed": 5}}, ckpt)
    with pytest.raises(CheckpointError, match="has no Lightning 'state_dict' of tensors"):
        with checkpoint_weights(ckpt):
            pass


@pytest.mark.parametrize(("content", "why"), [
    (b"", r"empty \(0 bytes; its write was interrupted\)"),
    (b"garbage" * 20, r"corrupt or truncated \(140 bytes; RuntimeError\)"),
])
def test_an_empty_or_garbage_ckpt_says_so_not_torchs_mmap_advice(tmp_path, content, why):
    ckpt = tmp_path / "last.ckpt"
    ckpt.write_bytes(content)
    with pytest.raises(CheckpointError, match=why) as info:
        load_lightning_checkpoint(ckpt, ": restore it")
    assert "torch.save" not in str(info.value) and str(info.value).endswith(": restore it")
