"""NegativeAugmentationLoss: the loss-term protocol, each negative loss on a tiny ViT, config mapping, training."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import timm
import torch
import torch.nn.functional as F

from vitlab.augment import NegativeViews
from vitlab.errors import ConfigError
from vitlab.losses import ContrastiveNegativeLoss, L2NegativeLoss, NegativeAugmentationLoss, UniformNegativeLoss
from vitlab.losses.negative_augmentation import frozen_running_statistics


def tiny_vit() -> torch.nn.Module:
    return timm.create_model("vit_tiny_patch16_224", img_size=16, patch_size=4, embed_dim=32, depth=1, num_heads=2,
                             num_classes=5)


def batch(size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.rand(size, 3, 16, 16, generator=g), torch.arange(size) % 5


def test_protocol_attributes_and_config_mapping():
    from vitlab.train.extensions import LossTerm

    section = {"kinds": ["shuffle", "infill"], "patch_size": 4, "loss": "contrastive", "weight": 1.5,
               "options": {"temperature": 0.2}}
    term = NegativeAugmentationLoss(section["kinds"], section["patch_size"], section["loss"], section["weight"],
                                    **section["options"])
    assert isinstance(term, LossTerm) and term.name == "negatives" and term.weight == 1.5
    assert isinstance(term.loss, ContrastiveNegativeLoss) and term.loss.temperature == 0.2
    assert term.views.kinds == ["shuffle", "infill"] and term.views.patch_size == 4


@pytest.mark.parametrize(
    "kwargs,match",
    [({"loss": "hinge"}, "unknown negative loss"), ({"loss": "uniform", "temperature": 0.1}, "do not apply"),
     ({"loss": "l2", "temperature": 0.1}, "do not apply"), ({"kinds": ["jigsaw"]}, "kinds must be"),
     ({"weight": -1.0}, "weight"), ({"loss": UniformNegativeLoss(), "detach_clean": True}, "loss object"),
     ({"weight": float("nan")}, "finite number >= 0"), ({"weight": float("inf")}, "finite number >= 0"),
     ({"patch_size": 1}, "patch_size=1 makes 1-pixel cells"), ({"loss": "l2", "detach_clean": "no"}, "true or false"),
     ({"loss": "contrastive", "temperature": float("inf")}, "finite number > 0"), ({"seed": 1.5}, "seed must be")],
)
def test_bad_configuration(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        NegativeAugmentationLoss(**{"patch_size": 4, **kwargs})


def test_views_come_from_the_terms_own_seeded_generator_not_the_global_rng():
    model, (images, labels) = tiny_vit(), batch()
    task, outputs = SimpleNamespace(model=model), {"logits": model(images)}
    torch.manual_seed(0)
    before = torch.get_rng_state()
    first = NegativeAugmentationLoss(["shuffle", "rotate"], 4, seed=7)
    first(task, (images, labels), outputs)
    assert torch.equal(torch.get_rng_state(), before)  # the global RNG was neither drawn from nor reseeded
    torch.manual_seed(123)  # a different global state does not change the views
    second = NegativeAugmentationLoss(["shuffle", "rotate"], 4, seed=7)
    second(task, (images, labels), outputs)
    assert all(torch.equal(first.views.last_params[k], second.views.last_params[k]) for k in ("source", "rotation"))
    other = NegativeAugmentationLoss(["shuffle", "rotate"], 4, seed=8)
    other(task, (images, labels), outputs)
    assert not torch.equal(first.views.last_params["source"], other.views.last_params["source"])


def test_uniform_term_value_is_the_loss_on_the_drawn_views():
    model = tiny_vit()
    images, labels = batch()
    term = NegativeAugmentationLoss(["shuffle", "rotate"], 4, "uniform", weight=0.5)
    out = term(SimpleNamespace(model=model), (images, labels), {"logits": model(images)})
    replay = NegativeViews(["shuffle", "rotate"], 4)(images, params=term.views.last_params)
    expected = UniformNegativeLoss()(model(replay))
    assert set(out) == {"loss"} and torch.allclose(out["loss"], expected)
    metrics = term.last_metrics
    assert set(metrics) == {"neg_acc", "neg_confidence"}
    negative_pred = model(replay).argmax(1)
    assert metrics["neg_acc"].item() == pytest.approx((negative_pred == labels).float().mean().item())
    assert 1 / 5 <= metrics["neg_confidence"].item() <= 1


@pytest.mark.parametrize("loss", ["uniform", "l2", "contrastive"])
def test_each_loss_backpropagates_into_the_model(loss):
    model = tiny_vit()
    images, labels = batch()
    term = NegativeAugmentationLoss(["shuffle", "rotate", "infill"], 4, loss)
    value = term(SimpleNamespace(model=model), (images, labels), {"logits": model(images)})["loss"]
    assert value.ndim == 0 and torch.isfinite(value)
    value.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and sum(g.abs().sum() for g in grads) > 0


def test_l2_term_uses_the_clean_logits_and_soft_labels():
    model = tiny_vit()
    images, labels = batch()
    soft = F.one_hot(labels, 5).float() * 0.9 + 0.02
    clean_logits = model(images)
    term = NegativeAugmentationLoss(["rotate"], 4, "l2", detach_clean=True)
    torch.manual_seed(0)
    value = term(SimpleNamespace(model=model), (images, soft), {"logits": clean_logits})["loss"]
    negative = NegativeViews(["rotate"], 4)(images, params=term.views.last_params)
    assert torch.allclose(value, L2NegativeLoss()(clean_logits, model(negative)))
    assert -2**0.5 <= value.item() <= 0


def test_contrastive_term_uses_harness_features_when_given():
    model = tiny_vit()
    images, labels = batch()
    features = model.forward_head(model.forward_features(images), pre_logits=True).detach().requires_grad_()
    term = NegativeAugmentationLoss(["shuffle"], 4, ContrastiveNegativeLoss(temperature=0.5))
    value = term(SimpleNamespace(model=model), (images, labels), {"logits": model(images), "features": features})
    value["loss"].backward()
    assert features.grad is not None and features.grad.abs().sum() > 0


def _train(weight: float, steps: int = 80) -> tuple[float, float, dict]:
    """Plain PyTorch loop: CE + weight * L_neg; returns final CE, L_neg and the term's metrics."""
    torch.manual_seed(0)
    model = tiny_vit()
    images, labels = batch(32)
    term = NegativeAugmentationLoss(["shuffle"], 4, "uniform", weight=weight)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    task = SimpleNamespace(model=model, training=True)
    for _ in range(steps):
        logits = model(images)
        outputs = {"logits": logits, "loss_ce": F.cross_entropy(logits, labels)}
        loss = outputs["loss_ce"] + term.weight * term(task, (images, labels), outputs)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return outputs["loss_ce"].item(), term(task, (images, labels), outputs)["loss"].item(), term.last_metrics


def test_training_with_negatives_pushes_negative_views_to_uniform():
    ce_plain, neg_plain, metrics_plain = _train(weight=0.0)
    ce_neg, neg_neg, metrics_neg = _train(weight=1.0)
    assert ce_plain < 1.0 and ce_neg < 1.0  # both fit the clean batch
    # ln 5 is the minimum of the uniform loss; without the term the memorised batch stays recognisable when shuffled
    assert neg_neg < 0.5 * neg_plain and neg_neg < 1.609 + 0.2
    assert metrics_neg["neg_confidence"] < metrics_plain["neg_confidence"]


def test_one_lightning_training_step_with_the_term():
    import lightning as L
    from torch.utils.data import DataLoader, TensorDataset

    from vitlab.train.module import ClassificationTask

    images, labels = batch(16)
    term = NegativeAugmentationLoss(["shuffle", "rotate"], 4, "contrastive", weight=1.0)
    task = ClassificationTask(tiny_vit(), num_classes=5, loss_terms=[term])
    before = [p.detach().clone() for p in task.model.parameters()]
    trainer = L.Trainer(fast_dev_run=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    loader = DataLoader(TensorDataset(images, labels), batch_size=8)
    trainer.fit(task, loader, loader)
    assert "train/negatives/loss" in trainer.callback_metrics
    for key in ("neg_acc", "neg_confidence"):  # the accuracy on negative views is logged too
        value = trainer.callback_metrics[f"train/negatives/{key}"].item()
        assert 0.0 <= value <= 1.0
    assert any(not torch.equal(a, b) for a, b in zip(before, task.model.parameters(), strict=True))


class _TinyConvBN(torch.nn.Module):
    """conv -> BatchNorm -> ReLU -> pool -> linear, with timm's forward_features / forward_head (for contrastive)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.BatchNorm2d(6)
        self.head = torch.nn.Linear(6, 5)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn(self.conv(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        pooled = x.mean(dim=(2, 3))
        return pooled if pre_logits else self.head(pooled)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@pytest.mark.parametrize("loss", ["uniform", "l2", "contrastive"])
def test_negative_views_leave_batchnorm_running_statistics_unchanged(loss):
    torch.manual_seed(0)
    model, (images, labels) = _TinyConvBN().train(), batch()
    stats = lambda: [t.clone() for t in (model.bn.running_mean, model.bn.running_var, model.bn.num_batches_tracked)]  # noqa: E731
    start = stats()
    outputs = {"logits": model(images)}  # the clean forward updates the statistics, as before
    after_clean = stats()
    assert not torch.allclose(after_clean[0], start[0]) and not torch.allclose(after_clean[1], start[1])
    assert int(after_clean[2]) == 1
    term = NegativeAugmentationLoss(["shuffle", "rotate"], 4, loss=loss, seed=3)
    value = term(SimpleNamespace(model=model), (images, labels), outputs)["loss"]
    for before, now in zip(after_clean, stats(), strict=True):
        assert torch.equal(before, now)
    assert model.bn.track_running_stats and model.bn.training  # the flags are restored
    value.backward()  # the negative pass still normalised with batch statistics, in the autograd graph
    assert model.bn.weight.grad is not None and model.bn.weight.grad.abs().sum() > 0


def test_frozen_statistics_normalise_with_the_batch_own_statistics():
    torch.manual_seed(0)
    model = _TinyConvBN().train()
    features = model.conv(batch()[0]).detach() * 3 + 2
    expected = F.batch_norm(features, None, None, model.bn.weight, model.bn.bias, training=True, eps=model.bn.eps)
    with torch.no_grad(), frozen_running_statistics(model):
        assert torch.allclose(model.bn(features), expected, atol=1e-5)
        assert torch.equal(model.bn.running_mean, torch.zeros(6))


def test_frozen_running_statistics_restores_flags_after_an_error_and_checks_its_input():
    model = _TinyConvBN().train()
    with pytest.raises(RuntimeError, match="boom"), frozen_running_statistics(model) as switched:
        assert switched == [model.bn] and not model.bn.track_running_stats
        raise RuntimeError("boom")
    assert model.bn.track_running_stats
    model.eval()
    with frozen_running_statistics(model) as switched:
        assert switched == []  # eval mode already keeps (and uses) the running statistics
    with pytest.raises(TypeError, match="nn.Module"):
        with frozen_running_statistics("model"):
            pass


def _bad_call_cases() -> list[tuple[str, object, type[Exception], str]]:
    return [
        ("labels of another batch size", lambda t, m, x, y, lg: t(SimpleNamespace(model=m), (x, y[:2]), {"logits": lg}),
         ConfigError, "targets hold 2 labels but the batch has 8 images"),
        ("batch of one item", lambda t, m, x, y, lg: t(SimpleNamespace(model=m), (x,), {"logits": lg}),
         ConfigError, r"batch must hold at least \(images, targets\)"),
        ("labels as a list", lambda t, m, x, y, lg: t(SimpleNamespace(model=m), (x, y.tolist()), {"logits": lg}),
         TypeError, "targets must be a torch.Tensor.*torch.as_tensor"),
        ("model instead of task", lambda t, m, x, y, lg: t(m, (x, y), {"logits": lg}),
         TypeError, r"task must be an object whose .model is the nn.Module.*SimpleNamespace\(model=model\)"),
        ("labels outside [0, K)", lambda t, m, x, y, lg: t(SimpleNamespace(model=m), (x, y + 3), {"logits": lg}),
         ConfigError, r"labels hold values in \[3, 7\] but the model has 5 classes.*\[0, 5\)"),
        ("1-D float labels", lambda t, m, x, y, lg: t(SimpleNamespace(model=m), (x, y.float()), {"logits": lg}),
         ConfigError, r"targets must be int labels \(8,\) or float soft targets"),
        ("empty batch", lambda t, m, x, y, lg: t(SimpleNamespace(model=m), (x[:0], y[:0]), {"logits": lg[:0]}),
         ConfigError, "empty batch"),
    ]


@pytest.mark.parametrize(("label", "call", "error", "message"), _bad_call_cases(),
                         ids=[case[0] for case in _bad_call_cases()])
def test_bad_calls_raise_errors_that_name_the_fix(label, call, error, message):
    model = tiny_vit()
    images, labels = batch()
    term = NegativeAugmentationLoss(["shuffle", "rotate"], 4, "uniform")
    with pytest.raises(error, match=message):
        call(term, model, images, labels, model(images).detach())


def test_l2_without_clean_logits_is_a_value_error_naming_the_fix():
    model = tiny_vit()
    images, labels = batch()
    term = NegativeAugmentationLoss(["shuffle"], 4, "l2")
    for outputs in ({}, None):
        with pytest.raises(ValueError, match=r"loss='l2' needs outputs\['logits'\] \(B, K\)"):
            term(SimpleNamespace(model=model), (images, labels), outputs)


def test_contrastive_refuses_features_of_another_batch_size():
    model = tiny_vit()
    images, labels = batch()
    term = NegativeAugmentationLoss(["shuffle"], 4, "contrastive")
    with pytest.raises(ConfigError, match=r"outputs\['features'\] must be the clean batch's pre-logits .* \(8, D\)"):
        term(SimpleNamespace(model=model), (images, labels), {"logits": model(images), "features": torch.randn(3, 32)})


def test_centre_shape_is_validated_through_the_term():
    with pytest.raises(ConfigError, match=r"centre_shape must be a pair \(rows, cols\)"):
        NegativeAugmentationLoss(["infill"], 4, centre_shape=2)


def test_seed_out_of_the_generator_range_is_refused():
    with pytest.raises(ConfigError, match=r"seed must be an int in \[-2\*\*63, 2\*\*64\)"):
        NegativeAugmentationLoss(seed=2**70)


def test_state_dict_holds_the_view_stream_for_a_plain_loop_resume(tmp_path):
    import io

    model, (images, labels) = tiny_vit(), batch()
    task = SimpleNamespace(model=model)
    term = NegativeAugmentationLoss(["shuffle", "rotate"], 4, seed=3)
    term(task, (images, labels), None)
    buffer = io.BytesIO()
    torch.save(term.state_dict(), buffer)
    term(task, (images, labels), None)
    continued = term.views.last_params
    resumed = NegativeAugmentationLoss(["shuffle", "rotate"], 4, seed=99)
    buffer.seek(0)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    resumed(task, (images, labels), None)
    assert all(torch.equal(resumed.views.last_params[k], continued[k]) for k in ("source", "rotation", "kind"))


def test_bad_extra_state_and_integer_images_are_refused():
    term = NegativeAugmentationLoss(["shuffle"], 4)
    with pytest.raises(ConfigError, match=r"'generator' must be a CPU torch.Generator state, uint8"):
        term.load_state_dict({"_extra_state": {"generator": torch.zeros(3)}})
    images, labels = batch(4)
    with pytest.raises(ConfigError, match=r"images must be the float batch the model takes, got torch.uint8"):
        term(SimpleNamespace(model=tiny_vit()), ((images * 255).to(torch.uint8), labels), None)


def test_numpy_numbers_are_accepted_as_plain_python_values():
    import numpy as np

    term = NegativeAugmentationLoss(["shuffle"], np.int64(4), "contrastive", weight=np.float32(0.5), seed=np.int64(7),
                                    temperature=np.float32(0.25))
    assert (term.weight, term.seed, term.loss.temperature) == (0.5, 7, 0.25)
    assert type(term.seed) is int and type(term.weight) is float and type(term.loss.temperature) is float
    assert torch.equal(term.generator.get_state(), torch.Generator().manual_seed(7).get_state())
    with pytest.raises(ConfigError, match="seed must be an int"):
        NegativeAugmentationLoss(seed=np.bool_(True))


@pytest.mark.parametrize("loss", ["uniform", "contrastive"])
def test_unlabelled_images_are_left_out_of_the_negative_accuracy_as_cross_entropy_does(loss):
    """A batch with -100 labels (unlabelled; the harness's F.cross_entropy ignores them) was refused as labels
    outside [0, K); the term now runs and ``neg_acc`` counts the labelled images only."""
    model = tiny_vit()
    images, labels = batch()
    labels[[1, 4, 6]] = -100
    term = NegativeAugmentationLoss(["shuffle"], 4, loss)
    out = term(SimpleNamespace(model=model), (images, labels), {"logits": model(images)})
    assert torch.isfinite(out["loss"])
    predicted = model(NegativeViews(["shuffle"], 4)(images, params=term.views.last_params)).argmax(1)
    kept = labels != -100
    assert term.last_metrics["neg_acc"].item() == pytest.approx((predicted[kept] == labels[kept]).float().mean().item())
    term(SimpleNamespace(model=model), (images, torch.full_like(labels, -100)), {"logits": model(images)})
    assert set(term.last_metrics) == {"neg_confidence"}  # no labelled image: no accuracy, not a made-up 0
