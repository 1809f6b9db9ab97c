"""``ClassificationTask``: the LightningModule that trains any timm model, with vitlab's extension points.

Example:
    >>> task = ClassificationTask("vit_vitlab_tiny_patch4_32", num_classes=10, in_chans=1)
    >>> task.model(torch.zeros(2, 1, 32, 32)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, fields
from typing import Any

import lightning as L
import numpy as np
import timm
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_warn
from timm.optim import param_groups_weight_decay
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

import vitlab.models  # noqa: F401  (registers vitlab's timm models)
from vitlab.checkpoint import LOADER_KEYWORDS, check_model_name
from vitlab.checks import check_int
from vitlab.errors import ConfigError
from vitlab.train.config import OptimConfig
from vitlab.train.extensions import LossTerm, ModelTransform

__all__ = ["ClassificationTask", "build_timm_model", "parameter_groups", "warmup_cosine_schedule"]


def build_timm_model(name: str, **kwargs: Any) -> nn.Module:
    """``timm.create_model(name, **kwargs)`` with an error that lists close model names when ``name`` is unknown
    (`vitlab.checkpoint.check_model_name`)."""
    check_model_name(name)
    return timm.create_model(name, pretrained=False, **kwargs)


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups from ``timm.optim.param_groups_weight_decay``: decay on trainable tensors with >= 2 dims, none on
    biases, 1-d tensors (norms) and the model's ``no_weight_decay()`` names (also when the model is wrapped, e.g.
    ``backbone.pos_embed``).

    Args:
        model: the model; only ``requires_grad`` parameters are returned.
        weight_decay: decay of the decayed group.

    Example:
        >>> groups = parameter_groups(nn.Linear(4, 2), weight_decay=0.05)
        >>> sorted((g["weight_decay"], [tuple(p.shape) for p in g["params"]]) for g in groups)
        [(0.0, [(2,)]), (0.05, [(2, 4)])]
    """
    if not weight_decay >= 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}: set optim.weight_decay to 0 or more")
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    patterns = [pattern for name in skip for pattern in (name, f"*.{name}", f"{name}.*", f"*.{name}.*")]
    groups = param_groups_weight_decay(model, weight_decay, no_weight_decay_list=patterns)
    if not groups:
        raise ValueError("the model has no trainable parameter: check the peft method / model transform")
    return groups


def warmup_cosine_schedule(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int, min_lr: float
) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-step schedule: linear warm-up then cosine decay to ``min_lr`` (torch ``LinearLR`` + ``CosineAnnealingLR``).

    With base rate ``lr`` and step ``t`` (0-based): ``lr * (t + 1) / (w + 1)`` for ``t < w = warmup_steps``, then
    ``min_lr + (lr - min_lr) * (1 + cos(pi * (t - w) / (total_steps - w))) / 2``.

    Args:
        optimizer: the optimizer; every group decays to the same ``min_lr``.
        total_steps: optimizer steps of the whole run (``>= 1``).
        warmup_steps: warm-up steps, ``0 <= warmup_steps < total_steps``.
        min_lr: final learning rate, ``>= 0``.

    Example:
        >>> opt = torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=1.0)
        >>> schedule = warmup_cosine_schedule(opt, total_steps=4, warmup_steps=1, min_lr=0.0)
        >>> rates = []
        >>> for _ in range(5):
        ...     rates.append(round(opt.param_groups[0]["lr"], 4)); opt.step(); schedule.step()
        >>> rates
        [0.5, 1.0, 0.75, 0.25, 0.0]
    """
    if total_steps < 1 or not 0 <= warmup_steps < total_steps:
        raise ValueError(f"need total_steps >= 1 and 0 <= warmup_steps < total_steps, got {total_steps} and "
                         f"{warmup_steps}: lower optim.warmup_epochs or train longer")
    rates = [group["lr"] for group in optimizer.param_groups]
    if not 0 <= min_lr <= min(rates):
        raise ValueError(f"min_lr must lie in [0, lr], got {min_lr} with lr {min(rates)}: lower optim.min_lr")
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps - warmup_steps, eta_min=min_lr)
    if warmup_steps == 0:
        return cosine
    warmup = torch.optim.lr_scheduler.LinearLR(
        optimizer, start_factor=1 / (warmup_steps + 1), end_factor=1.0, total_iters=warmup_steps
    )
    return torch.optim.lr_scheduler.SequentialLR(optimizer, [warmup, cosine], milestones=[warmup_steps])


class ClassificationTask(L.LightningModule):
    """Image classification with cross-entropy plus weighted loss terms (extension point A).

    Args:
        model: a timm model name, built with ``num_classes``/``in_chans``/``img_size``/``model_kwargs``, or a built
            ``nn.Module`` (mapping ``(B, C, H, W) -> (B, K)`` logits, or to a mapping / output object with a ``logits``
            tensor, e.g. a transformers ``ViTForImageClassification``, whose ``config.num_labels`` gives ``K``).
        num_classes: classes ``K`` (required with a name).
        in_chans: input channels ``C`` (with a name; ``None`` keeps the model's default).
        img_size: input size (with a name; passed only to models that take ``img_size``).
        model_kwargs: extra ``timm.create_model`` keywords.
        optim: optimizer and schedule settings (an ``OptimConfig``, or a mapping of its fields).
        loss_terms: extra loss terms, each ``term(task, batch, outputs) -> {key: scalar}``.
        model_transform: ``nn.Module -> nn.Module`` applied once after the model is built (extension point B).

    ``ClassificationTask.load_from_checkpoint(path)`` rebuilds a task made from a timm name (its hyper-parameters hold
    the name, sizes, ``model_kwargs`` and ``optim``); give ``model_transform=`` / ``loss_terms=`` again when it had
    them, and ``model=`` (the same architecture) for a task made from a module, e.g. a ``vitlab fit`` run's
    ``last.ckpt``. ``trainer.predict`` returns the logits ``(B, K)`` of each batch (``(images, labels)`` or images).
    Several validation / test loaders each log ``<stage>/loss`` and ``<stage>/acc`` with Lightning's
    ``/dataloader_idx_<i>`` suffix; one loader logs the plain names. A datamodule with more classes than
    ``num_classes`` is refused in ``setup``.
    """

    def __init__(
        self,
        model: str | nn.Module | None = None,
        num_classes: int | None = None,
        in_chans: int | None = None,
        img_size: int | None = None,
        model_kwargs: dict[str, Any] | None = None,
        optim: OptimConfig | None = None,
        loss_terms: Sequence[LossTerm] = (),
        model_transform: ModelTransform | None = None,
    ) -> None:
        super().__init__()
        if model is None:
            raise TypeError("ClassificationTask needs model= (a timm name or an nn.Module); a checkpoint of a task "
                            "made from a module does not hold it: ClassificationTask.load_from_checkpoint(path, "
                            "model=<the same architecture>, model_transform=<the same transform, if any>)")
        if isinstance(optim, Mapping):  # the form load_from_checkpoint passes back
            unknown = sorted(set(optim) - {f.name for f in fields(OptimConfig)})
            if unknown:
                raise ConfigError(f"optim: unknown key(s) {', '.join(map(str, unknown))}; OptimConfig's fields are "
                                  f"{', '.join(f.name for f in fields(OptimConfig))}")
            optim = OptimConfig(**optim)
        elif optim is not None and not isinstance(optim, OptimConfig):
            raise TypeError(f"optim must be an OptimConfig or a mapping of its fields, got {type(optim).__name__}")
        # plain Python numbers: they reach the optimizer's state and the hyper-parameters, which checkpoints store
        self.optim = OptimConfig(**_plain(asdict(optim))) if optim is not None else OptimConfig()
        if num_classes is not None:
            num_classes = check_int("num_classes", num_classes, minimum=1,
                                    fix="the number of classes of the data (the model's logits)")
        if in_chans is not None:
            in_chans = check_int("in_chans", in_chans, minimum=1, fix="the image channels, e.g. 1 or 3")
        if img_size is not None and not (isinstance(img_size, tuple | list) and len(img_size) == 2):
            img_size = check_int("img_size", img_size, minimum=1, fix="the input side in pixels, e.g. 32, or (H, W)")
        if model_kwargs is not None and not isinstance(model_kwargs, Mapping):
            raise TypeError(f"model_kwargs must be a mapping of timm.create_model keywords, got "
                            f"{type(model_kwargs).__name__}")
        loaders = sorted(set(model_kwargs or {}) & set(LOADER_KEYWORDS))
        if loaders:
            raise ConfigError(f"model_kwargs: {', '.join(loaders)} load weights and are not model options: build the "
                              "model and load its weights first, e.g. vitlab.checkpoint.load_pretrained("
                              "timm.create_model(name, ...), 'timm'), and pass it as model=")
        for key, value in (("num_classes", num_classes), ("in_chans", in_chans)):
            if value is not None and key in (model_kwargs or {}) and model_kwargs[key] != value:
                raise ConfigError(f"{key}={value} contradicts model_kwargs[{key!r}]={model_kwargs[key]!r}: give it "
                                  "once")
        loss_terms = () if loss_terms is None else loss_terms
        if callable(loss_terms) or isinstance(loss_terms, str) or not isinstance(loss_terms, Sequence):
            raise TypeError(f"loss_terms must be a list of loss terms, got {type(loss_terms).__name__}: wrap one "
                            "term in a list, loss_terms=[term]")
        for term in loss_terms:
            if not (callable(term) and isinstance(getattr(term, "name", None), str)
                    and isinstance(getattr(term, "weight", None), numbers.Real)
                    and not isinstance(term.weight, bool)):
                raise TypeError(f"each loss term is a callable with name: str and weight: float "
                                f"(vitlab.train.extensions.LossTerm), got {term!r}")
            if not math.isfinite(term.weight):
                raise ValueError(f"loss term {term.name!r} has weight {term.weight}: give a finite number")
            if not term.name or "/" in term.name:
                raise ValueError(f"loss term name {term.name!r} names its metrics train/<name>/<key>: give a "
                                 "non-empty name without '/'")
        names = [term.name for term in loss_terms]
        if len(set(names)) != len(names):
            raise ValueError(f"loss terms share a name ({', '.join(names)}): their metrics train/<name>/<key> would "
                             "mix; give each term its own name")
        if model_transform is not None and not callable(model_transform):
            raise TypeError(f"model_transform must be a callable nn.Module -> nn.Module, got "
                            f"{type(model_transform).__name__}")
        hparams: dict[str, Any] = {}
        if isinstance(model, str):
            model_kwargs = _plain(dict(model_kwargs or {}))  # checkpoints must load with weights_only=True
            hparams = {"model": model, "in_chans": in_chans, "img_size": _plain(img_size),
                       "model_kwargs": model_kwargs}
            if num_classes is None:
                raise ValueError("ClassificationTask(model=<name>) needs num_classes")
            kwargs = dict(model_kwargs or {}, num_classes=num_classes)
            if in_chans is not None:
                kwargs["in_chans"] = in_chans
            if img_size is not None:
                kwargs.setdefault("img_size", img_size)
            model = build_timm_model(model, **kwargs)
        elif not isinstance(model, nn.Module):
            raise TypeError(f"model must be a timm name or an nn.Module, got {type(model).__name__}")
        self._transformed = model_transform is not None  # recorded in checkpoints (see on_load_checkpoint)
        if model_transform is not None:
            model = model_transform(model)
            if not isinstance(model, nn.Module):
                raise TypeError("the model transform must return an nn.Module")
        self.model = model
        self.loss_terms = list(loss_terms)
        self.num_classes = num_classes or _infer_num_classes(model)
        self.ema = None
        if self.optim.ema_decay is not None:
            from timm.utils import ModelEmaV3

            self.ema = ModelEmaV3(self.model, decay=self.optim.ema_decay)
        self.val_acc = MulticlassAccuracy(self.num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(self.num_classes, average="micro")
        self.extra_accuracies = nn.ModuleDict()  # of further evaluation loaders, made on first use (no saved state)
        self.save_hyperparameters({**hparams, "optim": asdict(self.optim), "num_classes": self.num_classes})

    def forward(self, images: Tensor) -> Tensor:
        """``(B, C, H, W)`` images -> ``(B, K)`` logits of the trained model."""
        return _as_logits(self.model(images), self.num_classes)

    def monitorable_metrics(self) -> tuple[list[str], list[str]]:
        """``(names, prefixes)`` of what a callback's ``monitor`` can watch during training: the metrics this task
        logs every epoch (``val/acc``, ``val/loss``, ``train/loss`` with its ``_step``/``_epoch`` forms,
        ``train/loss_ce``, ``train/acc``), and each loss term's ``train/<term name>/`` family.

        Example:
            >>> ClassificationTask(nn.Linear(4, 2), num_classes=2).monitorable_metrics()[0][:2]
            ['val/acc', 'val/loss']
        """
        names = ["val/acc", "val/loss", "train/loss", "train/loss_step", "train/loss_epoch", "train/loss_ce",
                 "train/acc"]
        return names, [f"train/{term.name}/" for term in self.loss_terms]

    def eval_model(self) -> nn.Module:
        """The weights used for evaluation and saving: the EMA copy when enabled, else the model."""
        return self.ema.module if self.ema is not None else self.model

    def _logits_and_features(self, images: Tensor) -> dict[str, Tensor]:
        """``{"logits"}``, plus ``"features"`` (pre-logits ``(B, D)``) when a loss term sets ``needs_features`` and
        the model is timm-style: one pass through the backbone serves both."""
        model = self.model
        wanted = any(getattr(term, "needs_features", False) for term in self.loss_terms)
        if not (wanted and hasattr(model, "forward_features") and hasattr(model, "forward_head")):
            return {"logits": _as_logits(model(images), self.num_classes)}
        tokens = model.forward_features(images)
        logits = _as_logits(model.forward_head(tokens), self.num_classes)
        return {"logits": logits, "features": model.forward_head(tokens, pre_logits=True)}

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        images, targets = batch
        outputs = self._logits_and_features(images)
        logits = outputs["logits"]
        loss_ce = F.cross_entropy(logits, targets, label_smoothing=self.optim.label_smoothing)
        outputs["loss_ce"] = loss_ce
        loss = loss_ce
        for term in self.loss_terms:
            for key, value in _term_values(term, term(self, batch, outputs)).items():
                loss = loss + term.weight * value
                self.log(f"train/{term.name}/{key}", value.detach(), on_step=True, on_epoch=True)
            # optional diagnostics a term exposes after its call (negatives: neg_acc, neg_confidence)
            for key, value in getattr(term, "last_metrics", {}).items():
                self.log(f"train/{term.name}/{key}", value, on_step=False, on_epoch=True)
        if not torch.isfinite(loss):
            raise FloatingPointError(  # vitlab.train.run.fit adds what was kept and a command to start over
                f"non-finite training loss ({loss.item()}) at global step {self.global_step} "
                f"(epoch {self.current_epoch}, batch {batch_idx}): lower optim.lr, enable gradient clipping "
                "(trainer.gradient_clip_val) or check the data"
            )
        hard = targets.argmax(dim=1) if targets.ndim == 2 else targets
        acc = (logits.detach().argmax(dim=1) == hard).float().mean()
        self.log("train/loss", loss.detach(), on_step=True, on_epoch=True, prog_bar=True)
        self.log("train/loss_ce", loss_ce.detach(), on_step=False, on_epoch=True)
        self.log("train/acc", acc, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.ema is not None:
            self.ema.update(self.model, step=self.global_step)

    def _evaluate(self, batch: tuple[Tensor, Tensor], stage: str, dataloader_idx: int) -> None:
        images, targets = batch
        logits = _as_logits(self.eval_model()(images), self.num_classes)
        self.log(f"{stage}/loss", F.cross_entropy(logits, targets), on_epoch=True, sync_dist=True)
        metric, attribute = self._accuracy(stage, dataloader_idx)
        # soft (B, K) targets (timm's Mixup / label smoothing) count their top class, as train/acc does; torchmetrics
        # would read them as multi-dimensional labels and report 0
        metric.update(logits, targets.argmax(dim=1) if targets.ndim == 2 else targets)
        self.log(f"{stage}/acc", metric, on_epoch=True, prog_bar=True, metric_attribute=attribute)

    def _accuracy(self, stage: str, dataloader_idx: int) -> tuple[MulticlassAccuracy, str]:
        """The top-1 metric of one evaluation loader and its attribute name: ``val_acc`` / ``test_acc`` for the
        first, one more per further loader (several loaders each get their own ``<stage>/acc/dataloader_idx_<i>``)."""
        if dataloader_idx == 0:
            return (self.val_acc, "val_acc") if stage == "val" else (self.test_acc, "test_acc")
        key = f"{stage}_{dataloader_idx}"
        if key not in self.extra_accuracies:
            self.extra_accuracies[key] = MulticlassAccuracy(self.num_classes, average="micro").to(self.device)
        return self.extra_accuracies[key], f"extra_accuracies.{key}"

    def predict_step(self, batch: Tensor | Sequence[Tensor], batch_idx: int, dataloader_idx: int = 0) -> Tensor:
        """``(B, K)`` logits of the evaluation weights for a batch of images or ``(images, labels, ...)``."""
        images = batch if isinstance(batch, Tensor) else batch[0]
        return _as_logits(self.eval_model()(images), self.num_classes)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._evaluate(batch, "val", dataloader_idx)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._evaluate(batch, "test", dataloader_idx)

    def configure_optimizers(self) -> dict[str, Any]:
        cfg = self.optim
        optimizer = torch.optim.AdamW(parameter_groups(self.model, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        # optimiser steps of one epoch (set once estimated_stepping_batches has loaded the training data); not
        # total / max_epochs, which is shorter when trainer.max_steps ends the run before max_epochs
        batches = self.trainer.num_training_batches
        accumulate = self.trainer.accumulate_grad_batches
        per_epoch = math.ceil(batches / accumulate) if math.isfinite(batches) and batches > 0 \
            else total / max(1, self.trainer.max_epochs or 1)
        wanted = int(round(cfg.warmup_epochs * per_epoch)) if cfg.warmup_epochs > 0 else 0
        warmup = min(total - 1, wanted)
        if wanted > warmup:
            rank_zero_warn(f"optim.warmup_epochs={cfg.warmup_epochs} is as long as the whole run ({total} optimiser "
                           f"steps): warm-up cut to {warmup} steps; lower optim.warmup_epochs")
        scheduler = warmup_cosine_schedule(optimizer, total, warmup, cfg.min_lr)  # OptimConfig: min_lr <= lr
        # Saved with the scheduler's state (torch keeps its attributes), so a resume can tell the run was extended.
        scheduler.vitlab_total_steps = total  # type: ignore[attr-defined]
        self._schedule = (total, warmup)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_train_start(self) -> None:
        """A run resumed with a larger ``trainer.max_epochs`` follows the warm-up + cosine planned over its new
        length (as if planned so from the start) instead of the restored, shorter one, whose cosine, stepped past its
        end, climbs back to the peak rate and would end the run there."""
        configs = self.trainer.lr_scheduler_configs
        saved = getattr(configs[0].scheduler, "vitlab_total_steps", None) if len(configs) == 1 else None
        if saved is None or not hasattr(self, "_schedule") or saved == self._schedule[0]:
            return
        total, warmup = self._schedule
        optimizer = configs[0].scheduler.optimizer
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"]
        with warnings.catch_warnings():  # stepping the schedule with no optimizer step: torch warns of the order
            warnings.simplefilter("ignore", UserWarning)
            scheduler = warmup_cosine_schedule(optimizer, total, warmup, self.optim.min_lr)
            for _ in range(self.global_step):
                scheduler.step()
        scheduler.vitlab_total_steps = total  # type: ignore[attr-defined]
        configs[0].scheduler = scheduler
        rank_zero_warn(f"the run was extended: its learning-rate schedule was planned for {saved} steps and now runs "
                       f"over {total} (step {self.global_step}: lr {optimizer.param_groups[0]['lr']:.3g})")

    def _term_generators(self) -> dict[str, torch.Generator]:
        """The loss terms' own random streams (e.g. the negative views' ``generator``), keyed by position and name."""
        return {f"{i}:{term.name}": term.generator for i, term in enumerate(self.loss_terms)
                if isinstance(getattr(term, "generator", None), torch.Generator)}

    def _global_rank(self) -> int:
        return self._trainer.global_rank if self._trainer is not None else 0

    def setup(self, stage: str) -> None:
        self._check_datamodule_classes()
        # Under DDP every process builds the same loss terms from the same seed, so every process would draw the same
        # negative views (the same cell permutations, rotations, infill cells) for its own images. Process r > 0
        # reseeds its terms' generators from (seed, r); process 0, and so a single-process run, keeps the seed's
        # stream. Lightning calls setup before it restores a checkpoint, which then sets each process's own state.
        rank = self._global_rank()
        if stage != "fit" or rank == 0 or getattr(self, "_rank_streams", False):
            return
        for generator in self._term_generators().values():
            generator.manual_seed(rank_seed(generator.initial_seed(), rank))
        self._rank_streams = True

    def _check_datamodule_classes(self) -> None:
        """Refuse a datamodule (e.g. `vitlab.data.VitlabDataModule`) with more classes than the model's outputs,
        before its labels meet the cross-entropy as an 'out of bounds' error deep in torch."""
        datamodule = getattr(self._trainer, "datamodule", None)
        classes = getattr(datamodule, "num_classes", None) if datamodule is not None else None
        if isinstance(classes, int) and classes > self.num_classes:
            raise ValueError(f"the datamodule has {classes} classes but the task's model has {self.num_classes} "
                             f"outputs: build the task with num_classes={classes} (e.g. "
                             "ClassificationTask(name, num_classes=datamodule.num_classes))")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Lightning does not restore the global RNG on resume, nor the loss terms' own generators (they are not
        # modules); keeping both makes dropout, augmentation and negative views resume exactly. Every process runs
        # this hook (checkpointing is collective) and process 0 writes the file: under DDP the terms' states of all
        # processes are gathered into it, so each resumes its own stream.
        checkpoint["vitlab_model_transform"] = self._transformed
        terms = {k: g.get_state() for k, g in self._term_generators().items()}
        checkpoint["vitlab_rng"] = {"cpu": torch.get_rng_state(), "loss_terms": terms}
        if torch.cuda.is_available():
            checkpoint["vitlab_rng"]["cuda"] = torch.cuda.get_rng_state_all()
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        if terms and distributed and torch.distributed.get_world_size() > 1:
            per_rank: list[Any] = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(per_rank, terms)
            checkpoint["vitlab_rng"]["loss_terms_per_rank"] = per_rank

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if checkpoint.get("vitlab_model_transform") and not self._transformed:  # before the state dict is loaded
            raise TypeError("this checkpoint is of a task whose model went through a model_transform (e.g. a peft "
                            "method): pass the same one, ClassificationTask.load_from_checkpoint(path, "
                            "model_transform=...), e.g. vitlab.train.extensions.build_model_transform(peft_config)")
        saved_ema = any(key.startswith("ema.") for key in checkpoint.get("state_dict", {}))
        if saved_ema != (self.ema is not None):
            fix = ("set optim ema_decay (an optim= override replaces the saved optim whole: start from "
                   "torch.load(path, weights_only=True)['hyper_parameters']['optim'])") if saved_ema \
                else "leave optim ema_decay unset (None)"
            raise ValueError(f"this checkpoint {'holds' if saved_ema else 'has no'} EMA weights but the task was "
                             f"built {'without' if saved_ema else 'with'} them: {fix}")
        state = checkpoint.get("vitlab_rng")
        if state is not None:
            # RNG states are CPU byte tensors, also when load_from_checkpoint's map_location put them on a GPU
            torch.set_rng_state(state["cpu"].cpu())
            if "cuda" in state and torch.cuda.is_available():
                torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
            rank, per_rank = self._global_rank(), state.get("loss_terms_per_rank")
            if per_rank is not None:  # a DDP run's checkpoint: each process its own stream (a new one past its size)
                saved = per_rank[rank] if rank < len(per_rank) else {}
            else:  # one process's streams: process 0's; other processes keep the ones setup gave them
                saved = state.get("loss_terms", {}) if rank == 0 else {}
            for key, generator in self._term_generators().items():
                if key in saved:
                    generator.set_state(saved[key].cpu())


def rank_seed(seed: int, rank: int) -> int:
    """The seed of process ``rank`` of a distributed run derived from the run's ``seed`` (``rank`` 0 keeps it).

    Example:
        >>> rank_seed(7, 0), rank_seed(7, 1) == rank_seed(7, 1), rank_seed(7, 1) != rank_seed(7, 2)
        (7, True, True)
    """
    if rank == 0:
        return seed
    return int(np.random.SeedSequence([seed % 2**64, rank]).generate_state(1, np.uint64)[0])


def _plain(value: Any) -> Any:
    """``value`` with NumPy scalars / arrays as Python numbers / lists (in dicts, lists and tuples too), so the
    hyper-parameters a checkpoint stores load with ``torch.load(weights_only=True)``."""
    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_plain(item) for item in value)
    return value


def _term_values(term: LossTerm, values: Any) -> Mapping[str, Tensor]:
    """A loss term's ``{key: scalar tensor}``; anything else is refused naming the term and the protocol."""
    if isinstance(values, Mapping) and all(isinstance(k, str) and isinstance(v, Tensor) and v.numel() == 1
                                           for k, v in values.items()):
        return values
    got = {k: (tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__) for k, v in values.items()} \
        if isinstance(values, Mapping) else type(values).__name__
    raise TypeError(f"loss term {term.name!r} returned {got}: a term returns {{key: scalar tensor}}, e.g. "
                    "{'loss': value.mean()} (vitlab.train.extensions.LossTerm)")


def _as_logits(output: Any, num_classes: int) -> Tensor:
    """The ``(B, K)`` logits of a model's output: a tensor, or the ``logits`` of a mapping / output object (e.g.
    transformers' ``ImageClassifierOutput``); anything else (a tuple, e.g. a distilled model's two heads), or logits
    of another width than ``num_classes``, is refused."""
    logits = output if isinstance(output, Tensor) else output.get("logits") if isinstance(output, Mapping) \
        else getattr(output, "logits", None)
    if isinstance(logits, Tensor):
        if logits.ndim != 2 or logits.shape[1] != num_classes:
            raise ValueError(f"the model's logits have shape {tuple(logits.shape)}, not (B, {num_classes}): give the "
                             f"task the model's number of classes (num_classes=) or a model with {num_classes} "
                             "outputs (B, K)")
        return logits
    raise TypeError(f"the model returned a {type(output).__name__}, not a (B, K) logits tensor (nor an output with "
                    "a 'logits' tensor): wrap it in an nn.Module whose forward returns the logits, and pass that as "
                    "model=")


def _infer_num_classes(model: nn.Module) -> int:
    classes = getattr(model, "num_classes", None)
    if classes is None:  # a transformers model: its config's num_labels
        classes = getattr(getattr(model, "config", None), "num_labels", None)
    if not isinstance(classes, int) or classes <= 0:
        raise ValueError("pass num_classes=: it cannot be read from this model (no positive .num_classes)")
    return classes
