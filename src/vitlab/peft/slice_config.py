"""Fields and checks shared by vitlab's row-slice peft methods (``KAdaptationConfig``, ``LoraQVConfig``).

Example:
    >>> from vitlab.peft import KAdaptationConfig
    >>> KAdaptationConfig(fused_slices=["q", "v"], modules_to_save=("head",)).fused_slices
    ('q', 'v')
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from peft import PeftConfig

from vitlab.peft.targets import FUSED_SLICES

__all__ = ["SliceAdapterConfig"]


@dataclass
class SliceAdapterConfig(PeftConfig):
    """What every row-slice adapter config has: its targets, the rows of a fused ``qkv``, the head, the seed.

    Args:
        target_modules: ``None`` (the method's default targets), a preset of ``vitlab.peft.TIMM_TARGET_PRESETS``, a
            list of module names or a regex.
        fused_slices: rows of a matched fused ``qkv`` Linear to adapt, subset of ``("q", "k", "v")``.
        train_head: train the classifier head (through peft's ``modules_to_save``); the base model is frozen.
        modules_to_save: modules trained and saved whole; ``None`` with ``train_head`` means the classifier.
        seed: seed of the adapter initialisation (a private ``torch.Generator``; global RNG untouched); ``None``
            uses the global RNG.
    """

    target_modules: str | list[str] | None = field(default=None, metadata={"help": "names, regex or preset"})
    fused_slices: tuple[str, ...] = field(default=("q", "v"), metadata={"help": "rows of a fused qkv to adapt"})
    train_head: bool = field(default=True, metadata={"help": "train the classifier head (modules_to_save)"})
    modules_to_save: list[str] | None = field(default=None, metadata={"help": "modules trained and saved whole"})
    seed: int | None = field(default=0, metadata={"help": "seed of the adapter initialisation"})

    def check_slice_fields(self) -> None:
        """Validate and normalise the shared fields (lists, tuples); raises ``ValueError`` naming the fix."""
        self.fused_slices = tuple(self.fused_slices)
        if not self.fused_slices or any(s not in FUSED_SLICES for s in self.fused_slices):
            raise ValueError(f"fused_slices must be a non-empty subset of {FUSED_SLICES}, got {self.fused_slices}")
        if isinstance(self.target_modules, Sequence) and not isinstance(self.target_modules, str):
            self.target_modules = list(self.target_modules)
        if self.modules_to_save is not None:
            self.modules_to_save = list(self.modules_to_save)
        if not isinstance(self.train_head, bool):
            raise ValueError(f"train_head must be true or false, got {self.train_head!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0):
            raise ValueError(f"seed must be None or an integer >= 0, got {self.seed!r}")
