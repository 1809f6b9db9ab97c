"""ClassificationTask with what Lightning / timm / transformers users hold: models whose forward returns a mapping or
an output object, soft (Mixup) targets in evaluation, ... (round 4 of trying users' workflows)."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from timm.data import Mixup
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


def test_soft_mixup_targets_in_validation_count_their_top_class():
    """Was: val/acc 0.0 for perfect predictions (torchmetrics read the (B, K) targets as multi-dimensional labels)."""
    images, labels = torch.randn(4, 1, 4, 4), torch.tensor([0, 1, 2, 1])
    soft = Mixup(mixup_alpha=0.0, cutmix_alpha=0.0, prob=0.0, label_smoothing=0.1, num_classes=3)(images, labels)[1]
    assert soft.shape == (4, 3) and torch.equal(soft.argmax(dim=1), labels)
    task = ClassificationTask(_LabelEcho(labels))
    result = trainer().validate(task, DataLoader([(images, soft)], batch_size=None))[0]
    assert result["val/acc"] == 1.0


class _LabelEcho(nn.Module):
    """Logits with the top class at ``labels`` (a fixed batch): a perfect classifier of that batch."""

    num_classes = 3

    def __init__(self, labels: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("labels", labels)
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, images):
        return nn.functional.one_hot(self.labels, 3).float() * 5 * self.scale


class _Term:
    """A user's loss term returning ``make(outputs)``."""

    def __init__(self, make, name: str = "mine", weight: float = 0.5) -> None:
        self.make, self.name, self.weight = make, name, weight

    def __call__(self, task, batch, outputs):
        return self.make(outputs)


@pytest.mark.parametrize(("make", "got"), [
    (lambda outputs: {"x": 1.0}, r"\{'x': 'float'\}"),
    (lambda outputs: {"x": outputs["logits"].mean(dim=1)}, r"\{'x': \(3,\)\}"),
    (lambda outputs: outputs["logits"].mean(), "Tensor"),
    (lambda outputs: None, "NoneType"),
])
def test_a_loss_term_returning_no_mapping_of_scalars_is_refused_naming_the_protocol(make, got):
    """Was: AttributeError ('float' has no 'detach', 'Tensor' has no 'items') or Lightning's self.log error."""
    task = ClassificationTask(_Linear("tensor"), loss_terms=[_Term(make)])
    with pytest.raises(TypeError, match=rf"loss term 'mine' returned {got}: a term returns \{{key: scalar tensor\}}"):
        trainer(max_steps=1).fit(task, _loader())


@pytest.mark.parametrize(("terms", "error", "match"), [
    ([_Term(dict, weight=float("nan"))], ValueError, "weight nan: give a finite number"),
    ([_Term(dict, weight=True)], TypeError, "weight: float"),
    ([_Term(dict, name="")], ValueError, "non-empty name without '/'"),
    ([_Term(dict, name="a/b")], ValueError, "non-empty name without '/'"),
    ([_Term(dict), _Term(dict)], ValueError, "share a name .mine, mine.*its own name"),
])
def test_bad_loss_term_names_and_weights_are_refused(terms, error, match):
    """Was: accepted; a NaN weight ended in 'non-finite training loss: lower optim.lr', two same-named terms mixed
    their metrics."""
    with pytest.raises(error, match=match):
        ClassificationTask(_Linear("tensor"), loss_terms=terms)



def test_logits_wider_than_num_classes_are_refused_naming_both():
    """Was: torchmetrics' 'preds.shape[1] should be equal to number of classes' at the first validation batch."""
    task = ClassificationTask(nn.Sequential(nn.Flatten(), nn.Linear(16, 5)), num_classes=3)
    with pytest.raises(ValueError, match=r"logits have shape \(3, 5\), not \(B, 3\)"):
        trainer().validate(task, _loader())


@pytest.mark.parametrize("run_dir", [None, "", 3])
def test_build_loggers_names_its_run_dir_argument(run_dir):
    """build_loggers(None, None) raised Path(None)'s 'expected str, bytes or os.PathLike object'."""
    from vitlab.train.callbacks import build_loggers

    with pytest.raises(TypeError, match=r"run_dir takes the run folder's path"):
        build_loggers(None, run_dir)
