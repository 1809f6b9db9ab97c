"""``KAdaptationConfig``: every hyperparameter of Kronecker Adaptation (He et al., AAAI 2023; PEViT code).

Defaults reproduce the reference structure — n = 32 Kronecker terms, rank-1 ``B_i``, rank-1 ``A_i`` shared by all
layers (one set for queries, one for values), one bias per layer shared by the query and value deltas, targets the
query and value projections — which gives exactly 50,176 trainable adaptation parameters on a 12-layer, width-768 ViT.
They differ from the reference code in three documented places:

* **Initialisation** (``init``): the reference zero-initialises both ``u_i`` and ``v_i``, so ΔW sits at a saddle
  and never receives gradient. Here only ``u_i`` is zero (ΔW = 0 at start, as LoRA zeroes ``B``); ``v_i`` is
  Kaiming-uniform like LoRA's ``A`` and the shared factors are N(0, 1/n), so every factor trains from the 2nd step on.
* **Scale** (``scale`` = 1): the reference multiplies by α/r·5 = 160 because its shared factors start at
  U(±0.01), i.e. ``A_i`` entries ~1e-5. With the N(0, 1/n) init above ``A_i`` entries are ~1/n, so s = 1 gives
  per-step weight changes of the same order as LoRA with α = r under Adam; raise it for plain SGD.
* **Dropout** (``dropout`` = 0): the reference applies dropout p = 0.5 to the dense ΔW. Dropout on a dense ΔW
  forces materialising it every step; with p = 0 the update is applied as a Kronecker–vector product that never forms
  the ``d × d`` matrix (``path="auto"``). ``dropout > 0`` is supported and switches to the dense path.

It is a ``peft.PeftConfig`` of ``peft_type="KADAPTATION"`` (registered with peft when ``vitlab.peft`` is imported):
``peft.get_peft_model(model, KAdaptationConfig())``, ``save_pretrained`` and ``PeftModel.from_pretrained`` work.

Example:
    >>> cfg = KAdaptationConfig(n=16, target_modules=r".*\\.attn\\.qkv")
    >>> cfg.rank, cfg.a_rank, cfg.scale, cfg.peft_type
    (1, 1, 1.0, 'KADAPTATION')
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Literal

from vitlab.checks import check_bool, check_float, check_int
from vitlab.errors import ConfigError
from vitlab.peft.registration import PeftTypeName
from vitlab.peft.slice_config import SliceAdapterConfig, refuse_keywords

__all__ = ["KADAPTATION", "RENAMED_KEYWORDS", "KAdaptationConfig"]

KADAPTATION = PeftTypeName("KADAPTATION")  # peft_type (a str: peft's PeftType enum is closed to other packages)
PATHS = ("auto", "factored", "dense")


@dataclass
class KAdaptationConfig(SliceAdapterConfig):
    """Configuration of KAdaptation: ΔW = s · Σ_{i=1..n} A_i ⊗ (u_i v_iᵀ) on each targeted weight block.

    Args:
        n: number of Kronecker terms and size of each ``A_i`` (n × n). Must divide both dimensions of every targeted
            weight block; ``B_i`` is ``(out/n) × (in/n)``.
        rank: rank ``r`` of each ``B_i = u_i v_iᵀ``.
        a_rank: rank of each shared ``A_i = a_i c_iᵀ``; ``None`` keeps ``A_i`` a full n × n matrix.
        share_a: share the ``A`` factors ("slow weights") across layers, one set per role (``q``, ``v``, or a Linear's
            last name component such as ``fc1`` or ``q_proj``); ``False`` gives every targeted block its own ``A``.
        delta_bias: one trainable bias per adapted Linear, added to every adapted slice (shared by Q and V of a
            fused ``qkv``, as in the reference); needs the base Linear to have a bias so that merging can fold it.
            A model with separate projections (transformers' ``ViTForImageClassification``: ``q_proj`` / ``v_proj``)
            gets one bias per projection, so ViT-B/16 counts 59,392 adaptation parameters there (50,176 + 12 × 768)
            against timm's 50,176. (Called ``bias`` in vitlab 0.1; peft reserves ``bias`` for its ``"none"/"all"``
            option.)
        scale: the constant ``s`` multiplying ΔW (see the module docstring for why 1 and not the reference's 160).
        dropout: dropout probability on the dense ΔW during training (reference 0.5); 0 keeps the cheap path.
        path: ``"factored"`` (two small GEMMs, no dense ΔW), ``"dense"`` (materialise ΔW each forward), or ``"auto"``
            (factored unless dropout > 0 or the dense product is cheaper for the layer shape).
        target_modules: ``None`` (attention query and value projections: the Q and V rows of fused ``qkv`` Linears,
            Linears named ``q``/``q_proj``/``query``/``v``/``v_proj``/``value``), a preset of
            ``vitlab.peft.TIMM_TARGET_PRESETS``, a list of module names, a regex, or ``"auto"`` (read
            ``intrinsic_table``; replaced by the chosen module names when the adapter is created).
        fused_slices: rows of a matched fused ``qkv`` Linear to adapt, subset of ``("q", "k", "v")``; only a fused
            ``qkv`` has them, so a model with separate projections refuses anything but the default ``("q", "v")``
            (choose its projections with ``target_modules``, e.g. ``["q_proj", "k_proj", "v_proj"]``; ``query`` /
            ``key`` / ``value`` in older transformers).
        intrinsic_table: CSV written by ``vitlab intrinsic-dim --per-module`` (columns ``module,d90``), read when
            ``target_modules == "auto"``.
        auto_top_k: ``auto`` adapts the ``auto_top_k`` module kinds with the smallest d90 that this model has.
        train_head: train the classifier head (through peft's ``modules_to_save``); the base model is frozen.
        modules_to_save: modules trained and saved whole; ``None`` with ``train_head`` means the classifier
            (timm's ``get_classifier()``, or a top-level ``classifier`` / ``head`` Linear as in transformers).
        seed: seed of the factor initialisation (a private ``torch.Generator``; global RNG untouched); ``None`` uses
            the global RNG.
        exclude_modules, layers_to_transform, layers_pattern: peft's target selection on top of ``target_modules``
            (e.g. ``layers_to_transform=[10, 11]`` adapts the last two blocks of a ViT-B only).
    """

    n: int = field(default=32, metadata={"help": "Kronecker terms; A_i is n x n"})
    rank: int = field(default=1, metadata={"help": "rank of B_i = u_i v_i^T"})
    a_rank: int | None = field(default=1, metadata={"help": "rank of the shared A_i (None: full n x n)"})
    share_a: bool = field(default=True, metadata={"help": "share A across layers, one set per role (q, v, ...)"})
    delta_bias: bool = field(default=True, metadata={"help": "one bias per layer shared by its adapted slices"})
    scale: float = field(default=1.0, metadata={"help": "constant s multiplying Delta W"})
    dropout: float = field(default=0.0, metadata={"help": "dropout on the dense Delta W (forces the dense path)"})
    path: Literal["auto", "factored", "dense"] = field(default="auto", metadata={"help": "how Delta W is applied"})
    intrinsic_table: str | None = field(default=None, metadata={"help": "per-module d90 CSV for target 'auto'"})
    auto_top_k: int = field(default=2, metadata={"help": "module kinds chosen by 'auto'"})

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = KADAPTATION
        self.n = check_int("n", self.n, minimum=1)
        self.rank = check_int("rank", self.rank, minimum=1)
        if self.a_rank is not None:
            self.a_rank = check_int("a_rank", self.a_rank, minimum=1, maximum=self.n,
                                    fix=f"a_rank <= n={self.n}; None keeps each A_i a full n x n matrix")
        self.dropout = check_float("dropout", self.dropout, minimum=0.0, maximum=1.0, below_maximum=True,
                                   fix="0 switches it off")
        if self.path not in PATHS:
            raise ConfigError(f"path must be one of {PATHS}, got {self.path!r}")
        if self.path == "factored" and self.dropout > 0:
            raise ConfigError("dropout on Delta W needs the dense Delta W: use path='dense' or 'auto', or dropout=0")
        if isinstance(self.scale, bool) or not isinstance(self.scale, int | float) or not math.isfinite(self.scale) \
                or self.scale == 0:
            raise ConfigError(f"scale must be a finite non-zero number, got {self.scale!r}")
        self.delta_bias = check_bool("delta_bias", self.delta_bias)
        self.share_a = check_bool("share_a", self.share_a)
        self.check_slice_fields(allow_auto=True)
        if self.intrinsic_table is not None:
            if not isinstance(self.intrinsic_table, str | os.PathLike):
                raise ConfigError(f"intrinsic_table must be the path of a CSV file, got {self.intrinsic_table!r}")
            self.intrinsic_table = os.fspath(self.intrinsic_table)  # a plain str, as adapter_config.json stores it
        if self.target_modules == "auto" and not self.intrinsic_table:
            raise ConfigError("target_modules='auto' reads the per-module intrinsic-dimension table: set "
                              "intrinsic_table to the CSV written by `vitlab intrinsic-dim --per-module`")
        self.auto_top_k = check_int("auto_top_k", self.auto_top_k, minimum=1)


#: vitlab 0.1 keyword names of ``KAdaptationConfig`` -> current ones (peft reserves ``bias``; the head is peft's
#: ``modules_to_save``).
RENAMED_KEYWORDS = {"bias": "delta_bias", "head_modules": "modules_to_save"}


refuse_keywords(KAdaptationConfig, RENAMED_KEYWORDS, lambda given, _: (
    f"KAdaptationConfig: vitlab 0.1's keyword(s) {sorted(given)} are no longer accepted: "
    + ", ".join(f"{old!r} is now {new!r}" for old, new in given.items())
    + " (e.g. KAdaptationConfig(delta_bias=False))"))
