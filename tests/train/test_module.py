import math

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from vitlab.train import ClassificationTask, OptimConfig, parameter_groups
from vitlab.train.module import warmup_cosine_schedule


def _by_decay(groups):
    assert sorted(g["weight_decay"] for g in groups) == [0.0, 0.05]
    return {g["weight_decay"]: g["params"] for g in groups}


def test_weight_decay_only_on_matrices_and_never_on_no_weight_decay_names(tiny_vit):
    groups = _by_decay(parameter_groups(tiny_vit, 0.05))
    names = {id(p): n for n, p in tiny_vit.named_parameters()}
    decayed = {names[id(p)] for p in groups[0.05]}
    plain = {names[id(p)] for p in groups[0.0]}
    assert "pos_embed" in plain and "cls_token" in plain  # 3-D, but named by no_weight_decay()
    assert all(tiny_vit.get_parameter(n).ndim >= 2 for n in decayed)
    assert all(n.endswith("bias") or "norm" in n or n in ("pos_embed", "cls_token") for n in plain)
    assert "blocks.0.attn.qkv.weight" in decayed
    assert decayed | plain == {n for n, _ in tiny_vit.named_parameters()} and not decayed & plain


def test_no_weight_decay_names_still_apply_inside_a_wrapper(tiny_vit):
    wrapper = torch.nn.Module()
    wrapper.backbone = tiny_vit
    wrapper.no_weight_decay = tiny_vit.no_weight_decay
    groups = _by_decay(parameter_groups(wrapper, 0.05))
    plain = {n for n, p in wrapper.named_parameters() if any(p is q for q in groups[0.0])}
    assert {"backbone.pos_embed", "backbone.cls_token"} <= plain
    with pytest.raises(ValueError, match="weight_decay must be >= 0"):
        parameter_groups(tiny_vit, -1.0)


def _reference_lr(step, lr, min_lr, total, warmup):
    """The schedule written out independently: linear warm-up, then half a cosine from lr to min_lr."""
    if step < warmup:
        return lr * (step + 1) / (warmup + 1)
    return min_lr + (lr - min_lr) * 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))


@pytest.mark.parametrize(("total", "warmup"), [(20, 5), (7, 0), (2, 1)])
def test_warmup_cosine_schedule_matches_the_formula(total, warmup):
    optimizer = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1)
    schedule = warmup_cosine_schedule(optimizer, total, warmup, min_lr=1e-3)
    rates = []
    for _ in range(total + 1):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert rates == pytest.approx([_reference_lr(t, 0.1, 1e-3, total, warmup) for t in range(total + 1)], rel=1e-9)
    with pytest.raises(ValueError, match="warmup_steps < total_steps"):
        warmup_cosine_schedule(optimizer, 4, 4, 0.0)
    with pytest.raises(ValueError, match="min_lr must lie in"):
        warmup_cosine_schedule(torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1), 4, 0, 0.2)


def test_frozen_parameters_are_left_out(tiny_vit):
    for name, p in tiny_vit.named_parameters():
        p.requires_grad_(name.startswith("head"))
    groups = parameter_groups(tiny_vit, 0.1)
    assert sum(p.numel() for g in groups for p in g["params"]) == sum(p.numel() for p in tiny_vit.head.parameters())
    tiny_vit.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameter"):
        parameter_groups(tiny_vit, 0.1)


def _fit(task, steps=12, max_epochs=2):
    x = torch.randn(64, 1, 32, 32)
    y = torch.randint(0, 10, (64,))
    loader = DataLoader(TensorDataset(x, y), batch_size=16)
    trainer = L.Trainer(max_epochs=max_epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu")
    trainer.fit(task, loader)
    return trainer


def _learning_rates(model, **trainer_options) -> list[float]:
    """The learning rate at each training step of a 1-epoch-warm-up cosine run on 32 images in batches of 8."""
    task = ClassificationTask(model, optim=OptimConfig(lr=1e-2, min_lr=1e-4, warmup_epochs=1))
    lrs = []

    class Record(L.Callback):
        def on_train_batch_start(self, trainer, *args):
            lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[Record()], **trainer_options)
    loader = DataLoader(TensorDataset(torch.randn(32, 1, 32, 32), torch.randint(0, 10, (32,))), batch_size=8)
    trainer.fit(task, loader)
    return lrs


def test_harness_steps_the_schedule_once_per_optimizer_step(tiny_vit):
    lrs = _learning_rates(tiny_vit, max_epochs=2)
    # 2 epochs x 4 steps; warm-up = 1 epoch = 4 steps
    assert lrs == pytest.approx([_reference_lr(t, 1e-2, 1e-4, 8, 4) for t in range(8)], rel=1e-9)


def test_loss_terms_are_weighted_added_and_logged(tiny_vit):
    class Const:
        name, weight = "const", 0.5

        def __call__(self, task, batch, outputs):
            assert outputs["logits"].shape == (16, 10) and task.model is tiny_vit
            return {"value": torch.tensor(2.0)}

    seen = []

    class Capture(L.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            seen.append((outputs["loss"].item(), trainer.callback_metrics["train/loss_ce"].item()
                         if "train/loss_ce" in trainer.callback_metrics else None))

    task = ClassificationTask(tiny_vit, loss_terms=[Const()])
    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[Capture()])
    x, y = torch.randn(16, 1, 32, 32), torch.randint(0, 10, (16,))
    ce = torch.nn.functional.cross_entropy(tiny_vit(x), y).item()
    trainer.fit(task, DataLoader(TensorDataset(x, y), batch_size=16))
    assert seen[0][0] == pytest.approx(ce + 0.5 * 2.0, rel=1e-4)
    assert trainer.callback_metrics["train/const/value_epoch"].item() == pytest.approx(2.0)


def test_non_finite_loss_stops_and_names_the_step(tiny_vit):
    class Explode:
        name, weight = "explode", 1.0

        def __call__(self, task, batch, outputs):
            return {"value": torch.tensor(float("nan") if task.global_step == 3 else 0.0)}

    with pytest.raises(FloatingPointError, match="at global step 3"):
        _fit(ClassificationTask(tiny_vit, loss_terms=[Explode()]))


def test_soft_targets_and_ema(tiny_vit):
    task = ClassificationTask(tiny_vit, optim=OptimConfig(ema_decay=0.5))
    x = torch.randn(16, 1, 32, 32)
    soft = torch.softmax(torch.randn(16, 10), dim=1)
    loss = task.training_step((x, soft), 0)
    assert loss.ndim == 0 and torch.isfinite(loss)
    before = [p.clone() for p in task.ema.module.parameters()]
    _fit(task, max_epochs=1)
    after = list(task.ema.module.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))
    assert task.eval_model() is task.ema.module
    # the EMA lies between its start and the trained weights, so it differs from both
    assert not torch.equal(after[0], task.model.patch_embed.proj.weight)


def test_builds_timm_model_by_name_and_rejects_unknown():
    task = ClassificationTask("vit_vitlab_tiny_patch8_32", num_classes=7, in_chans=3)
    assert task.model(torch.zeros(1, 3, 32, 32)).shape == (1, 7)
    with pytest.raises(ValueError, match="unknown model 'vit_vitlab_tiny_99'.*vit_vitlab_tiny_patch8_32"):
        ClassificationTask("vit_vitlab_tiny_99", num_classes=7)
    with pytest.raises(ValueError, match="needs num_classes"):
        ClassificationTask("vit_vitlab_tiny_patch8_32")


def test_reserved_sections_build_the_builtin_extensions(tiny_vit):
    from vitlab.losses import NegativeAugmentationLoss
    from vitlab.train.config import NegativesConfig, PeftConfig
    from vitlab.train.extensions import build_loss_terms, build_model_transform

    assert build_loss_terms(NegativesConfig()) == []  # disabled by default
    (term,) = build_loss_terms(NegativesConfig(enabled=True, kinds=["rotate"], patch_size=8, loss="l2", weight=0.5))
    assert isinstance(term, NegativeAugmentationLoss) and term.weight == 0.5 and term.name == "negatives"
    assert build_model_transform(PeftConfig()) is None
    model = build_model_transform(PeftConfig(method="linear"))(tiny_vit)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"head.weight", "head.bias"}
    with pytest.raises(ValueError, match="registered methods: .*kadaptation"):
        build_model_transform(PeftConfig(method="no_such_method"))


def test_peft_methods_registered_later_reach_the_harness(tiny_vit):
    from vitlab.peft.methods import PEFT_METHODS, register_method
    from vitlab.train.config import PeftConfig
    from vitlab.train.extensions import MODEL_TRANSFORMS, build_model_transform

    def freeze_all(target_modules=None, **options):
        return lambda model: model.requires_grad_(False)

    register_method("freeze_all_for_test", freeze_all)
    try:
        model = build_model_transform(PeftConfig(method="freeze_all_for_test"))(tiny_vit)
        assert not any(p.requires_grad for p in model.parameters())
    finally:
        PEFT_METHODS.pop("freeze_all_for_test")
        MODEL_TRANSFORMS.pop("freeze_all_for_test", None)


def test_contrastive_negatives_reuse_the_clean_features_of_the_training_step(tiny_vit):
    from vitlab.losses import NegativeAugmentationLoss

    term = NegativeAugmentationLoss(["rotate"], 8, "contrastive", temperature=0.1)
    task = ClassificationTask(tiny_vit, loss_terms=[term], num_classes=10)
    seen = []
    original = tiny_vit.forward_features
    tiny_vit.forward_features = lambda x, **kw: seen.append(x.shape[0]) or original(x, **kw)
    images, labels = torch.randn(6, 1, 32, 32), torch.tensor([0, 0, 1, 1, 2, 2])
    loss = task.training_step((images, labels), 0)
    assert seen == [6, 6]  # the clean batch once (logits and features), the negative views once
    loss.backward()
    assert tiny_vit.patch_embed.proj.weight.grad.abs().sum() > 0
    term.needs_features = False  # the fallback: the term runs clean + negatives itself
    seen.clear()
    task.training_step((images, labels), 0)
    assert seen == [6, 12]


@pytest.mark.parametrize(("section", "message"), [
    ({"method": "lora_qv", "options": {"target_modules": ["qkv"]}}, "move it there"),
    ({"method": 3}, "peft.method must be null or a registered method name"),
    ({"method": "lora", "options": ["r"]}, "peft.options must be a mapping"),
])
def test_a_misplaced_or_mistyped_peft_section_is_refused_naming_the_fix(section, message):
    from vitlab.errors import ConfigError
    from vitlab.train.config import PeftConfig

    with pytest.raises(ConfigError, match=message):
        PeftConfig(**section)


@pytest.mark.parametrize(("section", "message"), [
    ({"kinds": ["nosuch"]}, r"negatives.kinds must be a non-empty list of distinct names from \['shuffle'"),
    ({"kinds": []}, "negatives.kinds must be a non-empty list"),
    ({"loss": "foo"}, r"negatives.loss must be one of \['uniform', 'l2', 'contrastive'\], got 'foo'"),
])
def test_negatives_section_names_its_keys_in_errors(section, message):
    from vitlab.errors import ConfigError
    from vitlab.train.config import NegativesConfig

    with pytest.raises(ConfigError, match=message):
        NegativesConfig(enabled=True, **section)


def _negatives_task(tiny_vit, seed: int = 5):
    from vitlab.losses import NegativeAugmentationLoss

    term = NegativeAugmentationLoss(["shuffle"], 8, seed=seed)
    return ClassificationTask(tiny_vit, loss_terms=[term], num_classes=10), term.generator


class _FakeTrainer:
    def __init__(self, global_rank: int):
        self.global_rank = global_rank


@pytest.mark.parametrize("rank", [0, 1, 3])
def test_each_ddp_process_draws_negative_views_from_its_own_seed(tiny_vit, rank):
    from vitlab.train.module import rank_seed

    task, generator = _negatives_task(tiny_vit)
    task._trainer = _FakeTrainer(rank)
    task.setup("fit")
    task.setup("fit")  # Lightning calls setup again for a second fit: the stream is not reseeded twice
    expected = torch.Generator().manual_seed(5 if rank == 0 else rank_seed(5, rank))
    assert torch.equal(generator.get_state(), expected.get_state())
    assert len({rank_seed(5, r) for r in range(8)}) == 8


def test_a_ddp_checkpoint_gives_each_process_its_own_stream_of_views(tiny_vit):
    streams = [torch.Generator().manual_seed(seed).get_state() for seed in (11, 12)]
    checkpoint = {"vitlab_rng": {"cpu": torch.get_rng_state(), "loss_terms": {"0:negatives": streams[0]},
                                 "loss_terms_per_rank": [{"0:negatives": s} for s in streams]}}
    for rank in (0, 1):
        task, generator = _negatives_task(tiny_vit)
        task._trainer = _FakeTrainer(rank)
        task.on_load_checkpoint(checkpoint)
        assert torch.equal(generator.get_state(), streams[rank])  # was: every process got process 0's stream
    task, generator = _negatives_task(tiny_vit)
    task._trainer = _FakeTrainer(2)  # resumed on more processes: the new one keeps the stream setup gave it
    before = generator.get_state()
    task.on_load_checkpoint(checkpoint)
    assert torch.equal(generator.get_state(), before)


def test_a_single_process_checkpoint_resumes_process_0s_stream_only(tiny_vit):
    saved = torch.Generator().manual_seed(11).get_state()
    checkpoint = {"vitlab_rng": {"cpu": torch.get_rng_state(), "loss_terms": {"0:negatives": saved}}}
    task, generator = _negatives_task(tiny_vit)
    task.on_load_checkpoint(checkpoint)  # no trainer: process 0
    assert torch.equal(generator.get_state(), saved)
    task, generator = _negatives_task(tiny_vit)
    task._trainer = _FakeTrainer(1)
    before = generator.get_state()
    task.on_load_checkpoint(checkpoint)
    assert torch.equal(generator.get_state(), before)


def _fit_one_step(task, tmp_path):
    data = TensorDataset(torch.randn(8, 1, 32, 32), torch.randint(0, 10, (8,)))
    trainer = L.Trainer(max_steps=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False, default_root_dir=tmp_path, limit_val_batches=0)
    trainer.fit(task, DataLoader(data, batch_size=4))
    trainer.save_checkpoint(tmp_path / "task.ckpt")
    return trainer, DataLoader(data, batch_size=4)


def test_load_from_checkpoint_rebuilds_a_task_made_from_a_timm_name(tmp_path):
    from vitlab.train.config import OptimConfig

    task = ClassificationTask("vit_vitlab_tiny_patch4_32", num_classes=10, in_chans=1,
                              model_kwargs={"depth": 1, "embed_dim": 32, "num_heads": 2}, optim=OptimConfig(lr=1e-3))
    _fit_one_step(task, tmp_path)
    loaded = ClassificationTask.load_from_checkpoint(tmp_path / "task.ckpt")  # was: missing argument 'model'
    assert loaded.optim == task.optim and loaded.num_classes == 10
    x = torch.randn(2, 1, 32, 32)
    assert torch.equal(loaded.eval()(x), task.eval()(x))


def test_load_from_checkpoint_of_a_task_made_from_a_module_asks_for_the_module(tmp_path, tiny_vit):
    import copy

    task = ClassificationTask(copy.deepcopy(tiny_vit), num_classes=10)
    _fit_one_step(task, tmp_path)
    with pytest.raises(TypeError, match=r"load_from_checkpoint\(path, model=<the same architecture>"):
        ClassificationTask.load_from_checkpoint(tmp_path / "task.ckpt")
    loaded = ClassificationTask.load_from_checkpoint(tmp_path / "task.ckpt", model=tiny_vit)
    x = torch.randn(2, 1, 32, 32)
    assert torch.equal(loaded.eval()(x), task.eval()(x))


def test_trainer_predict_returns_the_logits_of_each_batch(tmp_path, tiny_vit):
    task = ClassificationTask(tiny_vit, num_classes=10)
    trainer, loader = _fit_one_step(task, tmp_path)
    predictions = trainer.predict(task, loader)  # (images, labels) batches; was: the list went into the model
    images = torch.cat([batch[0] for batch in loader])
    assert [p.shape for p in predictions] == [(4, 10), (4, 10)]
    with torch.no_grad():
        assert torch.allclose(torch.cat(predictions), task.eval()(images), atol=1e-6)
    assert torch.equal(task.predict_step(images[:2], 0), task.predict_step((images[:2],), 0))


def test_load_from_checkpoint_of_an_adapted_task_asks_for_its_model_transform(tmp_path):
    from vitlab.train.config import PeftConfig
    from vitlab.train.extensions import build_model_transform

    transform = build_model_transform(PeftConfig(method="lora_qv", options={"r": 2}))
    task = ClassificationTask("vit_vitlab_tiny_patch4_32", num_classes=10, in_chans=1,
                              model_kwargs={"depth": 1, "embed_dim": 32, "num_heads": 2}, model_transform=transform)
    _fit_one_step(task, tmp_path)
    with pytest.raises(TypeError, match=r"went through a model_transform .*load_from_checkpoint\(path, "
                                         r"model_transform=\.\.\.\)"):
        ClassificationTask.load_from_checkpoint(tmp_path / "task.ckpt")  # was: a list of unexpected lora keys
    loaded = ClassificationTask.load_from_checkpoint(tmp_path / "task.ckpt", model_transform=transform)
    x = torch.randn(2, 1, 32, 32)
    assert torch.equal(loaded.eval()(x), task.eval()(x))


def test_warmup_epochs_count_epochs_when_max_steps_ends_the_run_first(tiny_vit):
    lrs = _learning_rates(tiny_vit, max_epochs=10, max_steps=8)
    # 8 steps in all (max_steps), an epoch is 4 steps: warm-up = 4 steps (total / max_epochs gave 8 / 10 -> 1)
    assert lrs == pytest.approx([_reference_lr(t, 1e-2, 1e-4, 8, 4) for t in range(8)], rel=1e-9)
