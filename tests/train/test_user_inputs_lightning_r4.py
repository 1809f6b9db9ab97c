"""ClassificationTask with what Lightning / timm / transformers users hold: models whose forward returns a mapping or
an output object, soft (Mixup) targets in evaluation, ... (round 4 of trying users' workflows)."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from vitlab.train.module import ClassificationTask

TINY = {"depth": 1, "embed_dim": 32, "num_heads": 2}


def trainer(**kwargs) -> L.Trainer:
    options = dict(max_epochs=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                   enable_checkpointing=False, accelerator="cpu")
    return L.Trainer(**{**options, **kwargs})


class _Linear(nn.Module):
    """``(B, 1, 4, 4) -> (B, 3)`` logits, returned as ``kind`` says."""

    num_classes = 3

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind, self.linear = kind, nn.Linear(16, 3)

    def forward(self, images):
        logits = self.linear(images.flatten(1))
        return {"logits": logits} if self.kind == "dict" else (logits, logits) if self.kind == "tuple" else logits


def _loader(n: int = 6) -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(n, 1, 4, 4, generator=generator)
    return DataLoader(TensorDataset(images, torch.arange(n) % 3), batch_size=3)


def test_a_model_returning_a_logits_mapping_trains_and_predicts_its_logits():
    """Was: ``cross_entropy_loss(): argument 'input' must be Tensor, not dict`` from torch."""
    task = ClassificationTask(_Linear("dict"))
    trainer(max_steps=1).fit(task, _loader())
    images = next(iter(_loader()))[0]
    predicted = trainer().predict(task, _loader())[0]
    torch.testing.assert_close(predicted, task.model.linear(images.flatten(1)))
    torch.testing.assert_close(task(images), predicted)


def test_a_model_returning_a_tuple_is_refused_naming_the_fix():
    task = ClassificationTask(_Linear("tuple"))
    with pytest.raises(TypeError, match=r"returned a tuple, not a \(B, K\) logits tensor.*forward returns the logits"):
        trainer(max_steps=1).fit(task, _loader())


def test_a_transformers_vit_trains_with_its_num_labels():
    """A ``ViTForImageClassification`` returns an ``ImageClassifierOutput``; its ``config.num_labels`` gives K."""
    from transformers import ViTConfig, ViTForImageClassification

    config = ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16,
                       image_size=4, patch_size=2, num_channels=1, num_labels=3)
    model = ViTForImageClassification(config).eval()
    task = ClassificationTask(model)
    assert task.num_classes == 3
    images = next(iter(_loader()))[0]
    torch.testing.assert_close(task(images), model(images).logits)
    result = trainer().validate(task, _loader())[0]
    assert 0.0 <= result["val/acc"] <= 1.0 and result["val/loss"] > 0
