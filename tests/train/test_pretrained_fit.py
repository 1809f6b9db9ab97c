"""`vitlab fit` from Hub weights through timm's real loader (offline cache), and runs that stay self-contained."""

from __future__ import annotations

import json

import huggingface_hub.constants as hub_constants
import lightning as L
import pytest
import torch

from vitlab.checkpoint import LOADER_KEYWORDS, CheckpointError, load_model
from vitlab.cli.main import main
from vitlab.train import fit
from vitlab.train.config import DataConfig, ModelConfig, PeftConfig, RunConfig
from vitlab.train.run import build_run_datamodule

from ..hub_cache import HUB_ID

TRAINER = dict(max_epochs=1, limit_train_batches=2, limit_val_batches=1, enable_progress_bar=False,
               enable_model_summary=False)


class FirstStepWeights(L.Callback):
    """Keeps a copy of the model's weights when the first training batch starts."""

    def on_train_batch_start(self, trainer, task, batch, batch_idx):
        if batch_idx == 0 and trainer.current_epoch == 0:
            self.state = {k: v.detach().clone() for k, v in task.model.state_dict().items()}


def _config(tmp_path, name, pretrained, **peft):
    return RunConfig(name=name, output_dir=str(tmp_path), model=ModelConfig(name="vit_tiny_patch16_224",
                                                                             pretrained=pretrained),
                     data=DataConfig(name="digits", img_size=32, batch_size=32), trainer=dict(TRAINER),
                     peft=PeftConfig(**peft))


def test_fit_from_timm_weights_starts_from_the_file_and_evaluates_without_the_cache(offline_hub, tmp_path,
                                                                                     monkeypatch, capsys):
    _, state = offline_hub
    first = FirstStepWeights()
    result = fit(_config(tmp_path, "timm_full", "timm"), callbacks=[first])
    for key, value in state.items():
        if key.startswith("head.") or key == "pos_embed":
            continue  # a 10-class head replaces the 1000-class one; the 14x14 grid is resampled to 2x2
        assert torch.equal(first.state[key], value), key
    assert first.state["patch_embed.proj.weight"].shape[1] == 3  # 1-channel digits repeated for RGB weights
    meta = json.loads((result.run_dir / "config.json").read_text())
    assert meta["model_name"] == "vit_tiny_patch16_224"
    assert not set(meta["model_kwargs"]) & set(LOADER_KEYWORDS)
    data = meta["extra"]["data"]
    assert data["mean"] == [0.5, 0.5, 0.5] and data["std"] == [0.5, 0.5, 0.5] and data["in_chans"] == 3
    assert meta["extra"]["base_weights"]["source"] == "timm"
    assert meta["extra"]["base_weights"]["hub_id"] == HUB_ID
    # no Hub cache any more: eval rebuilds from the run folder alone, with the recorded normalisation
    empty = tmp_path / "empty_cache"
    empty.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(empty))
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(empty))
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(result.run_dir), "--data", "digits"]) == 0
    evaluated = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert evaluated["acc"] == pytest.approx(result.metrics["test/acc"], abs=1e-6)


def test_linear_probe_from_hf_hub_keeps_the_backbone_bit_identical(offline_hub, tmp_path):
    _, state = offline_hub
    result = fit(_config(tmp_path, "hub_linear", f"hf-hub:{HUB_ID}", method="linear"))
    model, meta = load_model(result.run_dir)
    own = model.state_dict()
    for key, value in state.items():
        if not key.startswith("head.") and key != "pos_embed":
            assert torch.equal(own[key], value), key
    assert meta["extra"]["base_weights"] == {"source": "hf-hub", "hub_id": HUB_ID,
                                             "sha256": meta["extra"]["base_weights"]["sha256"]}
    assert meta["extra"]["data"]["mean"] == [0.5, 0.5, 0.5]


def test_loader_keywords_in_model_kwargs_are_refused_before_training(tmp_path):
    config = _config(tmp_path, "bad", None)
    config.model.kwargs = {"pretrained": True}
    with pytest.raises(CheckpointError, match="model.pretrained"):
        fit(config)
    assert not (tmp_path / "bad" / "model.safetensors").exists()


def test_normalize_modes(offline_hub, tmp_path):
    dataset = build_run_datamodule(_config(tmp_path, "a", None))
    assert dataset.in_chans == 1 and dataset.mean != (0.5,)
    forced = _config(tmp_path, "b", None)
    forced.data.normalize = "model"  # the model's pretrained_cfg even without weights: RGB, so grey is repeated
    assert build_run_datamodule(forced).mean == (0.5, 0.5, 0.5)
    forced.model.kwargs = {"in_chans": 1}  # a 1-channel model: the RGB statistics averaged
    assert build_run_datamodule(forced).mean == (0.5,)
    weights_cfg = _config(tmp_path, "c", "timm")
    weights_cfg.data.normalize = "dataset"
    from vitlab.train.run import resolve_run_weights

    own = build_run_datamodule(weights_cfg, resolve_run_weights(weights_cfg))
    assert own.in_chans == 3 and own.mean == dataset.mean * 3
    weights_cfg.data.normalize = "imagenet"
    with pytest.raises(ValueError, match="auto, dataset, model"):
        build_run_datamodule(weights_cfg)
