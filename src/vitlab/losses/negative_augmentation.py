"""``NegativeAugmentationLoss``: the training loss term of patch-based negative augmentation.

It implements the harness's loss-term protocol (``vitlab.train.extensions.LossTerm``): ``name = "negatives"``, a
``weight`` (the paper's lambda, swept over {0.5, 1, 1.5}), and ``term(task, batch, outputs) -> {"loss": L_neg}``;
the harness adds ``weight * L_neg`` to the cross-entropy, giving the paper's objective L = L_ce + lambda * L_neg.
Inside the training step it makes one negative view per image of the (positively augmented) batch on the batch's
device, runs ``task.model`` on them and applies the chosen negative loss. Only ``task.model`` is used, so any
object with a ``.model`` attribute works in a plain PyTorch loop.

The negative views never change a model's running statistics: during their forward pass every normalisation layer
that tracks them (BatchNorm, including timm's ``BatchNormAct2d``) normalises with the batch's own statistics, as in
training, but does not update ``running_mean`` / ``running_var`` / ``num_batches_tracked``; only the clean batch
does (see `frozen_running_statistics`).

The constructor takes the issue's ``NegativeAugmentationLoss(negative_loss, weight)`` (kinds and patch size by
keyword), and the ``negatives`` config section maps onto it directly::

    negatives: {kinds: [shuffle], patch_size: 8, loss: contrastive, weight: 1.0, temperature: 0.1}
    -> NegativeAugmentationLoss(kinds, patch_size, loss, weight, temperature=0.1, **options)

Example:
    >>> import timm, torch
    >>> from types import SimpleNamespace
    >>> model = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=48, depth=1,
    ...                           num_heads=2, num_classes=10)
    >>> term = NegativeAugmentationLoss(UniformNegativeLoss(), 1.0, kinds=["shuffle", "rotate"], patch_size=8)
    >>> same = NegativeAugmentationLoss(["shuffle", "rotate"], patch_size=8, loss="uniform", weight=1.0)
    >>> images, labels = torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    >>> out = term(SimpleNamespace(model=model), (images, labels), {"logits": model(images)})
    >>> sorted(out), sorted(term.last_metrics)
    (['loss'], ['neg_acc', 'neg_confidence'])
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from vitlab.augment import KINDS, NegativeViews
from vitlab.errors import ConfigError
from vitlab.losses.negative import IGNORE_INDEX, ContrastiveNegativeLoss, L2NegativeLoss, UniformNegativeLoss

__all__ = ["LOSSES", "NegativeAugmentationLoss", "frozen_running_statistics"]

#: Negative-loss names accepted by `NegativeAugmentationLoss` (the ``negatives.loss`` config key).
LOSSES: tuple[str, ...] = ("uniform", "l2", "contrastive")

_LOSS_CLASSES = {"uniform": UniformNegativeLoss, "l2": L2NegativeLoss, "contrastive": ContrastiveNegativeLoss}


@contextmanager
def frozen_running_statistics(model: nn.Module) -> Iterator[list[nn.Module]]:
    """Within the block, normalisation layers of ``model`` in training mode keep their running statistics.

    Each module with ``track_running_stats=True``, a ``running_mean`` buffer and ``training=True`` (``nn.BatchNorm*``,
    ``nn.SyncBatchNorm``, timm's ``BatchNormAct2d``, tracking ``InstanceNorm``) gets ``track_running_stats=False``
    for the block: it still normalises with the batch statistics (the training-mode computation, gradients included)
    but leaves ``running_mean``, ``running_var`` and ``num_batches_tracked`` as they are. The flag is restored on exit,
    also after an exception. Modules in eval mode already use (and keep) their running statistics and are untouched.

    Yields:
        The modules whose flag was switched off.

    Example:
        >>> bn = nn.BatchNorm1d(3)
        >>> with frozen_running_statistics(bn):
        ...     _ = bn(torch.randn(8, 3) + 5)
        >>> bn.running_mean.tolist(), int(bn.num_batches_tracked), bn.track_running_stats
        ([0.0, 0.0, 0.0], 0, True)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"frozen_running_statistics needs an nn.Module, got {type(model).__name__}")
    switched = [m for m in model.modules() if m.training and getattr(m, "track_running_stats", False) is True
                and getattr(m, "running_mean", None) is not None]
    for module in switched:
        module.track_running_stats = False
    try:
        yield switched
    finally:
        for module in switched:
            module.track_running_stats = True


def _features_and_logits(model: nn.Module, images: Tensor) -> tuple[Tensor, Tensor]:
    """Pre-logits features ``(N, D)`` (the paper's penultimate g(x), no projection head) and logits ``(N, K)``."""
    if not (hasattr(model, "forward_features") and hasattr(model, "forward_head")):
        raise TypeError(f"loss='contrastive' needs a timm-style model with forward_features() and "
                        f"forward_head(x, pre_logits=True); {type(model).__name__} has not")
    tokens = model.forward_features(images)
    return model.forward_head(tokens, pre_logits=True), model.forward_head(tokens)


def _check_call(
    task: Any, batch: Any, outputs: Any, needs_logits: bool
) -> tuple[nn.Module, Tensor, Tensor, Mapping[str, Tensor]]:
    """``(model, images, int labels (B,), outputs)`` of a loss-term call, or an error naming the fix.

    Only O(1) checks (types, shapes); the label range is checked by `_check_label_range` once K is known.
    """
    model = getattr(task, "model", None)
    if not isinstance(model, nn.Module):
        hint = (f" (got the model {type(task).__name__} itself: pass SimpleNamespace(model=model) or the "
                "LightningModule)" if isinstance(task, nn.Module) else "")
        raise TypeError(f"task must be an object whose .model is the nn.Module to train (the harness passes its "
                        f"LightningModule; in a plain loop use SimpleNamespace(model=model)), got "
                        f"{type(task).__name__}{hint}")
    if not isinstance(batch, (tuple, list)):
        raise TypeError(f"batch must be a tuple (images (B, C, H, W), targets (B,) or (B, K), ...), got "
                        f"{type(batch).__name__}")
    if len(batch) < 2:
        raise ConfigError(f"batch must hold at least (images, targets), got {len(batch)} item(s): the labels are "
                          "needed for the negative metrics and the contrastive loss")
    images, targets = batch[0], batch[1]
    if not isinstance(images, Tensor) or images.ndim != 4:
        got = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ConfigError(f"images must be a batch (B, C, H, W), got {got}")
    if not images.dtype.is_floating_point:
        raise ConfigError(f"images must be the float batch the model takes, got {images.dtype}: convert as for the "
                          "model, e.g. torchvision's v2.ToDtype(torch.float32, scale=True) (or x.float() / 255) and "
                          "the same normalisation")
    size = images.shape[0]
    if size == 0:
        raise ConfigError("empty batch (0 images): the negative loss of no sample is undefined; skip empty batches "
                          "(e.g. drop_last=True or fix the filtering that produced it)")
    if not isinstance(targets, Tensor):
        raise TypeError(f"targets must be a torch.Tensor: int labels ({size},) or soft targets ({size}, K), got "
                        f"{type(targets).__name__}; convert with torch.as_tensor(targets)")
    if targets.ndim == 2 and targets.dtype.is_floating_point:
        labels = targets.argmax(dim=1)
    elif targets.ndim == 1 and not (targets.dtype.is_floating_point or targets.dtype.is_complex
                                    or targets.dtype == torch.bool):
        labels = targets
    else:
        if targets.ndim == 2 and targets.shape[1] == 1:
            fix = "a column of class indices: flatten it with targets.squeeze(1) (argmax(1) would make every label 0)"
        elif targets.ndim == 2 and not targets.dtype.is_complex:
            fix = "int one-hot targets: pass targets.argmax(1) (class indices) or targets.float() (soft targets)"
        else:
            fix = "convert class indices with targets.long()"
        raise ConfigError(f"targets must be int labels ({size},) or float soft targets ({size}, K), got "
                          f"{tuple(targets.shape)} {targets.dtype}; {fix}")
    if labels.shape[0] != size:
        raise ConfigError(f"targets hold {labels.shape[0]} labels but the batch has {size} images: pass the labels "
                          "of the same batch")
    if outputs is None:
        outputs = {}
    if not isinstance(outputs, Mapping):
        raise TypeError(f"outputs must be a dict such as {{'logits': (B, K)}}, got {type(outputs).__name__}")
    if needs_logits and "logits" not in outputs:
        raise ConfigError("loss='l2' needs outputs['logits'] (B, K), the clean logits of the batch: call "
                          "term(task, batch, {'logits': model(images)})")
    return model, images, labels, outputs


def _check_classifier(model: nn.Module) -> None:
    """Refuse a timm model built without a classifier (``num_classes=0``): its pooled features are no logits."""
    if getattr(model, "num_classes", None) == 0:
        raise ConfigError(f"task.model ({type(model).__name__}) has no classifier head (num_classes=0), so it returns "
                          "pooled features, not class logits: the negative losses need logits; build the model with "
                          "num_classes=K (or model.reset_classifier(K))")


def _check_per_image(source: str, output: object, expected: str) -> None:
    """Refuse a model output that is not one row per image (e.g. per-token outputs of ``global_pool=''``)."""
    if isinstance(output, Tensor) and output.ndim == 2:
        return
    got = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
    hint = ("; it returned one row per token: build the model with a global pool (timm's global_pool='token' or "
            "'avg', not '')" if isinstance(output, Tensor) and output.ndim == 3 else "")
    raise ConfigError(f"{source} returned {got} for the negative views, but the negative losses need {expected}, one "
                      f"row per image{hint}")


def _check_label_range(labels: Tensor, classes: int) -> None:
    """Refuse labels outside ``[0, classes)`` other than ``IGNORE_INDEX`` (one min/max read of the small ``(B,)``
    label tensor)."""
    labelled = labels[labels != IGNORE_INDEX]
    if labelled.numel() == 0:
        return
    low, high = torch.stack(labelled.aminmax()).tolist()
    if low < 0 or high >= classes:
        raise ConfigError(f"labels hold values in [{low}, {high}] but the model has {classes} classes: labels must "
                          f"be in [0, {classes}) (or {IGNORE_INDEX} for an unlabelled image); check the dataset's "
                          "labels and the model's num_classes")


_CALL_FORMS = ("NegativeAugmentationLoss(negative_loss, weight, kinds=..., patch_size=...) or "
               "NegativeAugmentationLoss(kinds, patch_size, loss, weight)")


def _positional(args: tuple[Any, ...], keywords: dict[str, Any]) -> dict[str, Any]:
    """``kinds``, ``patch_size``, ``loss`` and ``weight`` of a `NegativeAugmentationLoss` call, defaults filled in.

    Positional arguments are ``(negative_loss, weight)`` when the first is a loss (a name from ``LOSSES`` or an
    ``nn.Module``), else ``(kinds, patch_size, loss, weight)``. ``loss`` and ``negative_loss`` are the same argument.
    """
    if args and isinstance(args[0], type) and issubclass(args[0], nn.Module):
        raise ConfigError(f"NegativeAugmentationLoss got the class {args[0].__name__}, not a loss object: pass an "
                          f"instance, e.g. {args[0].__name__}(), or a name from {list(LOSSES)}")
    if args and isinstance(args[0], str) and args[0] not in LOSSES and args[0] not in KINDS:
        raise ConfigError(f"NegativeAugmentationLoss: {args[0]!r} is neither a negative loss {list(LOSSES)} (the "
                          f"issue's form, loss first) nor a view kind {list(KINDS)} (the config's form, kinds first); "
                          f"call {_CALL_FORMS}")
    loss_first = bool(args) and (isinstance(args[0], nn.Module) or (isinstance(args[0], str) and args[0] in LOSSES))
    names = ("negative_loss", "weight") if loss_first else ("kinds", "patch_size", "loss", "weight")
    if len(args) > len(names):
        raise TypeError(f"NegativeAugmentationLoss takes at most {len(names)} positional arguments "
                        f"({', '.join(names)}) here, got {len(args)}: call {_CALL_FORMS}")
    for name, value in zip(names, args, strict=False):
        if keywords[name] is not None:
            raise TypeError(f"NegativeAugmentationLoss got two values for {name!r} (positional and keyword): give it "
                            f"once; call {_CALL_FORMS}")
        keywords[name] = value
    if keywords["loss"] is not None and keywords["negative_loss"] is not None:
        raise ConfigError(f"NegativeAugmentationLoss got both loss={keywords['loss']!r} and negative_loss="
                          f"{keywords['negative_loss']!r}: they are the same argument, give one")
    if keywords["loss"] is None:
        keywords["loss"] = keywords["negative_loss"]
    defaults = {"kinds": ("shuffle",), "patch_size": 8, "loss": "uniform", "weight": 1.0}
    return {key: default if keywords[key] is None else keywords[key] for key, default in defaults.items()}


class NegativeAugmentationLoss(nn.Module):
    """Loss term ``L_neg`` on one patch-based negative view per training image.

    Two call forms build the same term (the harness adds ``weight * L_neg`` to the cross-entropy, L = CE + lambda *
    L_neg):

    - ``NegativeAugmentationLoss(negative_loss, weight, kinds=..., patch_size=..., ...)``: the issue's form; the
      first positional argument is a loss (a name or a loss object), the second lambda;
    - ``NegativeAugmentationLoss(kinds, patch_size, loss, weight, ...)``: the ``negatives`` config section's order.

    Every argument may also be given by keyword. Omitted ones take the defaults below. A loss given twice
    (``loss=`` and ``negative_loss=``) is refused (ConfigError); an argument given both positionally and by keyword,
    or too many positional arguments, raise TypeError naming both forms.

    Args:
        negative_loss: ``"uniform"`` (`UniformNegativeLoss`), ``"l2"`` (`L2NegativeLoss`), ``"contrastive"``
            (`ContrastiveNegativeLoss`), or an instance of one of these classes (default ``"uniform"``).
        weight: lambda, the factor the harness applies before adding the term to the cross-entropy (default 1.0).
        kinds: negative-view kinds, one drawn per image (``shuffle``, ``rotate``, ``infill``; default ``shuffle``).
        patch_size: cell size in pixels (default 8); must divide the training image size (ideally a multiple of the
            model's patch size, which ``model_patch_size`` enforces).
        loss: the same argument as ``negative_loss`` (the config section's name for it).
        temperature: contrastive temperature (default 0.1); only with ``loss="contrastive"``.
        detach_clean: stop the gradient through the clean branch (default False); only with ``loss="l2"``.
        gather_distributed: contrastive negatives from the global batch under DDP (default True).
        model_patch_size: require ``patch_size`` to be a multiple of it (the paper's alignment rule).
        replace_rate: P-Infill replace rate (default 0.25).
        centre_shape: P-Infill centre block ``(rows, cols)`` instead of the rate's default shape.
        source: P-Infill border-cell rule, ``"random"`` or ``"distinct"``.
        seed: seed of the term's own ``torch.Generator`` (CPU) that draws the views; the global RNG is never used,
            so the views do not depend on (or disturb) other random draws. Give each run its own (e.g. the run's
            seed).

    Call: ``term(task, (images (B, C, H, W), targets (B,) or soft (B, K)), {"logits": (B, K), ...})``
    -> ``{"loss": scalar}``. For ``"contrastive"``, ``outputs["features"]`` ``(B, D)`` (pre-logits of the clean batch)
    is used when the harness provides it; otherwise the clean batch is run through the model again with the
    negatives. Bad calls are refused with a message naming the fix: an empty batch, labels of another batch size
    (before the model runs) or outside ``[0, K)`` (after it, once K is known) raise `vitlab.errors.ConfigError` (a
    ValueError); a ``task`` without a ``.model`` or labels that are not a tensor raise TypeError. After each call
    ``last_metrics`` holds detached ``neg_acc`` (accuracy of the negative views against the original labels; chance
    is 1/K) and ``neg_confidence`` (mean max-softmax) for logging. Images labelled ``IGNORE_INDEX`` (-100, ignored
    by the harness's ``F.cross_entropy`` too) still give negative views for the uniform and L2 losses, but count in
    neither ``neg_acc`` (left out of the metrics when the whole batch is unlabelled) nor the contrastive anchors.

    ``state_dict()`` holds the generator's state (``_extra_state``), so a plain PyTorch loop that saves and reloads
    it (``torch.save`` / ``torch.load(weights_only=True)`` / ``load_state_dict``) resumes the same stream of views.
    """

    name = "negatives"

    def __init__(
        self,
        *args: Any,
        kinds: Sequence[str] | None = None,
        patch_size: int | None = None,
        loss: str | nn.Module | None = None,
        negative_loss: str | nn.Module | None = None,
        weight: float | None = None,
        temperature: float | None = None,
        detach_clean: bool | None = None,
        gather_distributed: bool | None = None,
        model_patch_size: int | None = None,
        replace_rate: float | None = 0.25,
        centre_shape: tuple[int, int] | None = None,
        source: str = "random",
        seed: int = 0,
    ) -> None:
        given = _positional(args, {"kinds": kinds, "patch_size": patch_size, "loss": loss,
                                   "negative_loss": negative_loss, "weight": weight})
        kinds, patch_size, loss, weight = given["kinds"], given["patch_size"], given["loss"], given["weight"]
        super().__init__()
        if isinstance(weight, (bool, np.bool_)) or not isinstance(weight, numbers.Real) or not (
                math.isfinite(weight) and weight >= 0):
            raise ConfigError(f"negatives weight (lambda) must be a finite number >= 0 (the paper sweeps 0.5, 1, "
                              f"1.5), got {weight!r}")
        if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, numbers.Integral) or not -(2**63) <= seed < 2**64:
            raise ConfigError(f"seed must be an int in [-2**63, 2**64) (torch.Generator.manual_seed), got {seed!r}")
        self.weight = float(weight)
        self.seed = int(seed)
        self.generator = torch.Generator().manual_seed(self.seed)
        self.loss = self._build_loss(loss, temperature, detach_clean, gather_distributed)
        self.views = NegativeViews(kinds, patch_size, model_patch_size=model_patch_size, replace_rate=replace_rate,
                                   centre_shape=centre_shape, source=source)
        self.last_metrics: dict[str, Tensor] = {}
        # asks the training step for the clean batch's pre-logits features (outputs["features"]), so the contrastive
        # loss does not run the clean images through the model a second time
        self.needs_features = isinstance(self.loss, ContrastiveNegativeLoss)

    @staticmethod
    def _build_loss(loss: str | nn.Module, temperature: float | None, detach_clean: bool | None,
                    gather_distributed: bool | None) -> nn.Module:
        options = {"temperature": temperature, "detach_clean": detach_clean, "gather_distributed": gather_distributed}
        given = {key for key, value in options.items() if value is not None}
        if isinstance(loss, tuple(_LOSS_CLASSES.values())):
            if given:
                raise ConfigError(f"options {sorted(given)} apply only with a loss name; set them on the loss object")
            return loss
        if loss not in _LOSS_CLASSES:
            raise ConfigError(f"unknown negative loss {loss!r}; use one of {list(LOSSES)} or a loss instance")
        allowed = {"uniform": set(), "l2": {"detach_clean"}, "contrastive": {"temperature", "gather_distributed"}}
        wrong = given - allowed[loss]
        if wrong:
            raise ConfigError(f"options {sorted(wrong)} do not apply to loss={loss!r} "
                             f"(it accepts {sorted(allowed[loss]) or 'none'})")
        return _LOSS_CLASSES[loss](**{key: options[key] for key in given})

    def get_extra_state(self) -> dict[str, Tensor]:
        """``{"generator": uint8 state}`` of the views' generator, saved in ``state_dict()``."""
        return {"generator": self.generator.get_state()}

    def set_extra_state(self, state: Any) -> None:
        """Restore the generator from ``get_extra_state``'s dict (checked: a wrong one names the fix)."""
        expected = self.generator.get_state()
        saved = state.get("generator") if isinstance(state, Mapping) else None
        if not (isinstance(saved, Tensor) and saved.dtype == torch.uint8 and saved.shape == expected.shape):
            got = (f"{saved.dtype} {tuple(saved.shape)}" if isinstance(saved, Tensor) else type(saved).__name__)
            raise ConfigError(f"NegativeAugmentationLoss state: 'generator' must be a CPU torch.Generator state, uint8 "
                              f"{tuple(expected.shape)}, got {got}; load the state_dict() of a "
                              "NegativeAugmentationLoss")
        self.generator.set_state(saved.cpu())

    def forward(self, task: Any, batch: Sequence[Tensor], outputs: Mapping[str, Tensor] | None) -> dict[str, Tensor]:
        """``{"loss": L_neg}`` for ``batch = (images, targets, ...)``; see the class docstring."""
        model, images, labels, outputs = _check_call(task, batch, outputs, isinstance(self.loss, L2NegativeLoss))
        _check_classifier(model)
        try:
            self.views.grid(images.shape[-2], images.shape[-1])
        except ConfigError as err:  # say which patch_size: the run config has the model's too
            raise ConfigError(f"negative views (NegativeAugmentationLoss patch_size; negatives.patch_size in a run "
                              f"config) on the {images.shape[-2]}x{images.shape[-1]} training images: {err}") from None
        with torch.no_grad():
            negatives = self.views(images, generator=self.generator)
        with frozen_running_statistics(model):  # the negatives must not move BatchNorm's running statistics
            value, negative_logits = self._negative_loss(model, images, negatives, labels, outputs)
        _check_label_range(labels, negative_logits.shape[1])
        targets = batch[1]
        if targets.ndim == 2 and targets.shape[1] != negative_logits.shape[1]:
            raise ConfigError(f"soft targets {tuple(targets.shape)} have {targets.shape[1]} classes but the model has "
                              f"{negative_logits.shape[1]}: make them with the model's num_classes (e.g. timm's "
                              f"Mixup(num_classes={negative_logits.shape[1]}))")
        with torch.no_grad():
            probs = negative_logits.detach().float().softmax(dim=1)
            labelled = labels != IGNORE_INDEX  # accuracy over labelled images only, as the cross-entropy's
            self.last_metrics = {"neg_confidence": probs.max(dim=1).values.mean()}
            if bool(labelled.any()):
                self.last_metrics["neg_acc"] = (probs.argmax(dim=1) == labels)[labelled].float().mean()
        return {"loss": value}

    def _negative_loss(self, model: nn.Module, images: Tensor, negatives: Tensor, labels: Tensor,
                       outputs: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        """``(L_neg, negative logits (B, K))`` of the views ``negatives`` (B, C, H, W) of ``images``."""
        if isinstance(self.loss, ContrastiveNegativeLoss):
            clean_features = outputs.get("features")
            if clean_features is not None:
                if not isinstance(clean_features, Tensor) or clean_features.ndim != 2 \
                        or clean_features.shape[0] != images.shape[0]:
                    got = tuple(clean_features.shape) if isinstance(clean_features, Tensor) else clean_features
                    raise ConfigError(f"outputs['features'] must be the clean batch's pre-logits features "
                                      f"({images.shape[0]}, D), got {got}: pass model.forward_head(tokens, "
                                      "pre_logits=True) of the same batch, or leave 'features' out")
                negative_features, negative_logits = _features_and_logits(model, negatives)
            else:
                features, logits = _features_and_logits(model, torch.cat([images, negatives]))
                clean_features, negative_features = features.split(images.shape[0])
                negative_logits = logits[images.shape[0]:]
            _check_per_image("forward_head(tokens, pre_logits=True)", negative_features, "features (B, D)")
            _check_per_image("forward_head(tokens)", negative_logits, "logits (B, K)")
            return self.loss(clean_features, negative_features, labels), negative_logits
        negative_logits = model(negatives)
        _check_per_image("the model", negative_logits, "logits (B, K)")
        if isinstance(self.loss, L2NegativeLoss):
            return self.loss(outputs["logits"], negative_logits), negative_logits
        return self.loss(negative_logits), negative_logits

    def extra_repr(self) -> str:
        return f"name={self.name!r}, weight={self.weight}, seed={self.seed}"
