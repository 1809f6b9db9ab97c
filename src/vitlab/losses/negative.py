"""The three negative losses of patch-based negative augmentation (Qin et al., NeurIPS 2022, Eqs. 2-4).

With clean logits ``z`` ``(B, K)``, negative-view logits ``z~`` ``(M, K)`` and pre-logits features ``g`` ``(B, D)`` /
``g~`` ``(M, D)``:

- `UniformNegativeLoss` (Eq. 2): cross-entropy of softmax(z~) against the uniform target 1/K, averaged over the
  negatives: ``mean_m [logsumexp(z~_m) - mean_k z~_mk]``. It is >= ln K, with equality iff the logits are equal.
- `L2NegativeLoss` (Eq. 3): ``-mean_b ||softmax(z_b) - softmax(z~_b)||_2`` (plain norm, probabilities, each clean
  image against its own negative); training maximises the distance. Bounded in [-sqrt(2), 0].
- `ContrastiveNegativeLoss` (Eq. 4): SupCon on cosine similarities ``s`` of the features, no projection head.
  For anchor i (clean), positives P_i = other clean images with the same label, candidates
  Q_i = (clean images except i) + all M negatives, so ``2B - |P_i| - 1`` negatives when M = B;
  ``L_i = -(1/|P_i|) sum_{p in P_i} log(exp(s_ip/T) / sum_{q in Q_i} exp(s_iq/T))``, averaged over anchors with
  ``|P_i| > 0`` (zero, with a gradient path and a warning, when no anchor has a positive). A clean image labelled
  ``IGNORE_INDEX`` (-100, the ``ignore_index`` default of ``F.cross_entropy``: an unlabelled image) is left out as
  anchor, positive and candidate; its negative view stays a candidate (a negative needs no label).

All three refuse an empty batch (0 rows) with a `vitlab.errors.ConfigError` (a ValueError) instead of returning NaN
or 0: a mean over no sample is undefined, and an empty batch is almost always a bug upstream (e.g. a filter that
dropped every sample).

Example:
    >>> import math, torch
    >>> round(UniformNegativeLoss()(torch.zeros(4, 10)).item(), 4) == round(math.log(10), 4)
    True
"""

from __future__ import annotations

import contextlib
import math
import numbers
import warnings

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from vitlab.errors import ConfigError

__all__ = ["IGNORE_INDEX", "ContrastiveNegativeLoss", "L2NegativeLoss", "UniformNegativeLoss", "supcon_masks"]

#: Label of an unlabelled image, as ``F.cross_entropy``'s default ``ignore_index``: the contrastive loss and the
#: negative-view accuracy leave it out, as the cross-entropy does.
IGNORE_INDEX = -100


def _check_logits(name: str, logits: Tensor) -> None:
    if not isinstance(logits, Tensor) or logits.ndim != 2 or not logits.dtype.is_floating_point:
        shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise ConfigError(f"{name} must be float logits (B, K), got {shape}")
    if logits.shape[1] < 2:
        raise ConfigError(f"{name} needs at least 2 classes, got K={logits.shape[1]}")
    _check_not_empty(name, logits)


def _check_not_empty(name: str, rows: Tensor) -> None:
    if rows.shape[0] == 0:
        raise ConfigError(f"{name} is an empty batch (0 rows {tuple(rows.shape)}): the loss of no sample is undefined; "
                          "skip empty batches before the loss (check the sampler / filtering that produced it)")


def _check_labels(labels: object, batch: int) -> None:
    if not isinstance(labels, Tensor):
        raise TypeError(f"labels must be a torch.Tensor of int class indices ({batch},), got "
                        f"{type(labels).__name__}; convert with torch.as_tensor(labels)")
    if labels.ndim != 1 or labels.shape[0] != batch or labels.dtype.is_floating_point or labels.dtype.is_complex:
        raise ConfigError(f"labels must be int class indices ({batch},), got {tuple(labels.shape)} {labels.dtype}; "
                          f"{_label_fix(labels)}")
    if labels.dtype == torch.bool:
        raise ConfigError(f"labels must be int class indices ({batch},), got torch.bool; convert with labels.long() "
                          "if True/False are really classes 1/0")
    if batch and bool(((labels < 0) & (labels != IGNORE_INDEX)).any()):
        raise ConfigError(f"labels must be class indices >= 0 or {IGNORE_INDEX} (an unlabelled image, as "
                          f"F.cross_entropy's ignore_index), got {sorted(set(labels[labels < 0].tolist()))}: map "
                          f"unlabelled images to {IGNORE_INDEX}")


def _label_fix(labels: Tensor) -> str:
    """How to turn ``labels`` of the wrong shape or dtype into int class indices ``(B,)``."""
    if labels.ndim == 2 and labels.shape[1] == 1:
        return "a column of class indices: flatten it with labels.squeeze(1) (argmax(1) would make every label 0)"
    if labels.ndim == 2:
        return "reduce one-hot or soft labels with labels.argmax(1)"
    if labels.ndim == 1 and (labels.dtype.is_floating_point or labels.dtype.is_complex):
        return "convert whole-number float labels with labels.long()"
    return "pass one int class index per clean image"


class UniformNegativeLoss(nn.Module):
    """Cross-entropy of the negative views' predictions against the uniform distribution (no temperature).

    Call: ``loss(negative_logits)`` with ``negative_logits`` ``(M, K)`` -> scalar. Minimum ln K (at equal logits).

    Example:
        >>> import torch
        >>> UniformNegativeLoss()(torch.tensor([[0.0, 0.0], [2.0, 0.0]])).round(decimals=4)
        tensor(0.9100)
    """

    def forward(self, negative_logits: Tensor) -> Tensor:
        _check_logits("negative_logits", negative_logits)
        z = negative_logits.float()
        return (torch.logsumexp(z, dim=1) - z.mean(dim=1)).mean()


class L2NegativeLoss(nn.Module):
    """Minus the mean L2 distance between the softmax of each clean image and that of its own negative view.

    Args:
        detach_clean: stop the gradient through the clean branch (only the negative's prediction is pushed away).

    Call: ``loss(clean_logits, negative_logits)``, both ``(B, K)`` -> scalar in [-sqrt(2), 0].

    Example:
        >>> import torch
        >>> L2NegativeLoss()(torch.tensor([[9.0, -9.0]]), torch.tensor([[-9.0, 9.0]])).round(decimals=4)
        tensor(-1.4142)
    """

    def __init__(self, detach_clean: bool = False) -> None:
        super().__init__()
        if not isinstance(detach_clean, bool):
            raise ConfigError(f"detach_clean must be true or false, got {detach_clean!r}")
        self.detach_clean = detach_clean

    def forward(self, clean_logits: Tensor, negative_logits: Tensor) -> Tensor:
        _check_logits("clean_logits", clean_logits)
        _check_logits("negative_logits", negative_logits)
        if clean_logits.shape != negative_logits.shape:
            raise ConfigError(f"clean_logits {tuple(clean_logits.shape)} and negative_logits "
                              f"{tuple(negative_logits.shape)} must pair one negative per clean image")
        clean = clean_logits.detach() if self.detach_clean else clean_logits
        p, q = clean.float().softmax(dim=1), negative_logits.float().softmax(dim=1)
        return -torch.linalg.vector_norm(p - q, dim=1).mean()

    def extra_repr(self) -> str:
        return f"detach_clean={self.detach_clean}"


def supcon_masks(labels: Tensor, num_negatives: int) -> tuple[Tensor, Tensor]:
    """Positive and candidate masks of the contrastive loss for anchors = the B clean images.

    Columns are the B clean images followed by the ``num_negatives`` negative views.

    Returns:
        ``positives`` ``(B, B + M)`` bool (same label, not self, never a negative view) and ``candidates``
        ``(B, B + M)`` bool (Q_i: every column but the anchor itself). A clean image labelled ``IGNORE_INDEX``
        has no positive, is no one's positive and no clean image's candidate (its negative-view column stays).

    Example:
        >>> import torch
        >>> pos, cand = supcon_masks(torch.tensor([0, 0, 1]), num_negatives=3)
        >>> (cand.sum(1) - pos.sum(1)).tolist()  # negatives per anchor: 2B - |P_i| - 1
        [4, 4, 5]
        >>> pos, cand = supcon_masks(torch.tensor([0, 0, -100]), num_negatives=3)
        >>> pos.sum(1).tolist(), cand[:, 2].tolist()  # the unlabelled image: no positive, in no denominator
        ([1, 1, 0], [False, False, False])
    """
    _check_labels(labels, labels.shape[0] if isinstance(labels, Tensor) and labels.ndim >= 1 else 0)
    if isinstance(num_negatives, bool) or not isinstance(num_negatives, numbers.Integral) or num_negatives < 0:
        raise ConfigError(f"num_negatives must be an int >= 0 (the number of negative views M), got {num_negatives!r}")
    num_negatives = int(num_negatives)
    batch = labels.shape[0]
    eye = torch.eye(batch, dtype=torch.bool, device=labels.device)
    labelled = labels != IGNORE_INDEX
    same = (labels[:, None] == labels[None, :]) & ~eye & labelled[:, None] & labelled[None, :]
    none = torch.zeros(batch, num_negatives, dtype=torch.bool, device=labels.device)
    positives = torch.cat([same, none], dim=1)
    candidates = torch.cat([~eye & labelled[None, :], ~none], dim=1)
    return positives, candidates


def _gather_rows(local: Tensor) -> tuple[Tensor, int]:
    """All-gather ``(n_r, ...)`` tensors of every rank (sizes may differ); the local rows keep their gradient.

    Returns the concatenation and the offset of the local rows in it.
    """
    world, rank = dist.get_world_size(), dist.get_rank()
    sizes = [torch.zeros(1, dtype=torch.long, device=local.device) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor([local.shape[0]], device=local.device))
    counts = [int(s.item()) for s in sizes]
    padded = torch.zeros(max(counts), *local.shape[1:], dtype=local.dtype, device=local.device)
    padded[: local.shape[0]] = local.detach()
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    parts = [part[:count] for part, count in zip(parts, counts, strict=True)]
    parts[rank] = local
    return torch.cat(parts), sum(counts[:rank])


class ContrastiveNegativeLoss(nn.Module):
    """Supervised contrastive loss with patch-based negative views added to every anchor's denominator.

    Args:
        temperature: softmax temperature T over cosine similarities (the paper does not state its value; 0.1 here).
        gather_distributed: under ``torch.distributed`` (DDP) gather features and labels from all ranks so that
            positives and negatives come from the global batch; gradients flow through the local part only, and
            the anchors are the local clean images.

    Call: ``loss(clean_features, negative_features, labels)`` with ``(B, D)``, ``(M, D)`` and int labels ``(B,)``
    (``IGNORE_INDEX`` = -100 for an unlabelled image, left out as in ``F.cross_entropy``) -> scalar (float32, also
    under ``torch.autocast``: the similarities are computed in float32). An empty batch (B = 0 or M = 0), bool
    labels and negative labels other than -100 are refused.

    Example:
        >>> import torch
        >>> f = torch.nn.functional.one_hot(torch.tensor([0, 0, 1, 1]), 4).float()
        >>> ContrastiveNegativeLoss(temperature=1.0)(f, torch.zeros(4, 4) + 0.5, torch.tensor([0, 0, 1, 1])).item() > 0
        True
    """

    def __init__(self, temperature: float = 0.1, gather_distributed: bool = True) -> None:
        super().__init__()
        if isinstance(temperature, (bool, np.bool_)) or not isinstance(temperature, numbers.Real) or not (
                math.isfinite(temperature) and temperature > 0):
            raise ConfigError(f"temperature must be a finite number > 0 (e.g. 0.1), got {temperature!r}")
        if not isinstance(gather_distributed, bool):
            raise ConfigError(f"gather_distributed must be true or false, got {gather_distributed!r}")
        self.temperature = float(temperature)
        self.gather_distributed = gather_distributed

    def forward(self, clean_features: Tensor, negative_features: Tensor, labels: Tensor) -> Tensor:
        for name, t in (("clean_features", clean_features), ("negative_features", negative_features)):
            if not isinstance(t, Tensor) or t.ndim != 2 or not t.dtype.is_floating_point:
                hint = ("; these are per-token features (N, T, D): pool them to one row per image (a model with a "
                        "global pool, timm's global_pool='token' or 'avg', or e.g. features.mean(1))"
                        if isinstance(t, Tensor) and t.ndim == 3 else "")
                raise ConfigError(f"{name} must be float features (N, D), e.g. model.forward_head(..., "
                                  f"pre_logits=True); got {tuple(t.shape) if isinstance(t, Tensor) else t!r}{hint}")
        if clean_features.shape[1] != negative_features.shape[1]:
            raise ConfigError(f"feature widths differ: {clean_features.shape[1]} vs {negative_features.shape[1]}; take "
                              "both from the same model's forward_head(..., pre_logits=True)")
        _check_not_empty("clean_features", clean_features)
        _check_not_empty("negative_features", negative_features)
        _check_labels(labels, clean_features.shape[0])
        device = clean_features.device.type
        # float32 similarities even under autocast: in bfloat16 (8 significant bits) s / T near 10 moves in 0.06 steps
        with (torch.autocast(device, enabled=False) if torch.amp.is_autocast_available(device)
              else contextlib.nullcontext()):
            return self._loss(clean_features, negative_features, labels)

    def _loss(self, clean_features: Tensor, negative_features: Tensor, labels: Tensor) -> Tensor:
        anchors = F.normalize(clean_features.float(), dim=1)
        negatives = F.normalize(negative_features.float(), dim=1)
        clean, all_labels, offset = anchors, labels, 0
        if self.gather_distributed and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            clean, offset = _gather_rows(anchors)
            negatives, _ = _gather_rows(negatives)
            all_labels, _ = _gather_rows(labels)
        positives, candidates = supcon_masks(all_labels, negatives.shape[0])
        rows = slice(offset, offset + anchors.shape[0])
        positives, candidates = positives[rows], candidates[rows]
        logits = anchors @ torch.cat([clean, negatives]).T / self.temperature  # (B, B_global + M_global)
        log_prob = logits - torch.logsumexp(logits.masked_fill(~candidates, float("-inf")), dim=1, keepdim=True)
        count = positives.sum(dim=1)
        has_positive = count > 0
        if not bool(has_positive.any()):
            warnings.warn(f"no anchor of this batch of {anchors.shape[0]} has a same-label positive, so the "
                          "contrastive loss is 0 and gives no gradient: use batches with several images per class "
                          "(a batch size well above the class count)", UserWarning, stacklevel=3)
            return logits.sum() * 0.0
        per_anchor = -(log_prob * positives).sum(dim=1)[has_positive] / count[has_positive]
        return per_anchor.mean()

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, gather_distributed={self.gather_distributed}"
