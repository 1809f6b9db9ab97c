"""``vitlab diagnose-negatives``: how much a checkpoint still "sees" in patch-shuffled, -rotated, -infilled images.

For each negative-view kind, on the first ``--n`` images of the test set (default 1000, or all of a smaller test
set; ``--n all`` for every one; the count is printed): accuracy against the *original* label and mean max-softmax
confidence, beside chance (1/K) and the clean images (the paper's Figure 2 / Table 11 measurement; see
`vitlab.eval.diagnostics`). The views are made with ``--patch_size`` cells (default: the model's own patch size)
from a seeded generator, so the numbers are reproducible. The table goes to ``<out>/diagnose_negatives_<data>.md``
and ``.json`` (``--out`` defaults to the checkpoint's folder).

Example (a shell command; needs a trained run folder)::

    vitlab diagnose-negatives --checkpoint runs/vit_fashion_mnist --n all
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jsonargparse import ArgumentParser, Namespace

from vitlab.cli.robustness import (
    DEFAULT_N,
    add_checkpoint_arguments,
    command_line,
    count_test_images,
    load_checkpoint_and_test_data,
)

if TYPE_CHECKING:
    from torch import nn

__all__ = ["build_diagnose_parser", "model_patch_size", "run_diagnose"]


def build_diagnose_parser() -> ArgumentParser:
    """The ``vitlab diagnose-negatives`` parser."""
    parser = ArgumentParser(
        prog="vitlab diagnose-negatives",
        description="Accuracy against the original label and mean max-softmax confidence of a checkpoint on "
        "patch-shuffled, -rotated and -infilled test images, beside chance and the clean images. Writes "
        "<out>/diagnose_negatives_<data>.md and .json.",
    )
    add_checkpoint_arguments(parser, "used", f"test images: an int, or 'all' for the whole test set (default: "
                             f"{DEFAULT_N}, or all when the test set is smaller)")
    parser.add_argument("--patch_size", type=int | None, default=None,
                        help="cell size of the views in pixels (default: the model's patch size)")
    parser.add_argument("--kinds", type=list[str] | None, default=None,
                        help="view kinds, e.g. '[shuffle, rotate]' (default: every kind of vitlab.augment.KINDS)")
    parser.add_argument("--replace_rate", type=float, default=0.25, help="P-Infill replace rate")
    parser.add_argument("--seed", type=int, default=0, help="seed of the views")
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--device", type=str | None, default=None, help="cpu or cuda (default: cuda if present)")
    parser.add_argument("--out", type=str | None, default=None, help="report folder (default: the checkpoint's)")
    return parser


def model_patch_size(model: nn.Module) -> int | None:
    """The square patch size of a ViT-style model (``model.patch_embed.patch_size``), or None if it has none.

    Example:
        >>> import timm, vitlab
        >>> model_patch_size(timm.create_model("vit_vitlab_tiny_patch4_32", patch_size=8))
        8
    """
    size = getattr(getattr(model, "patch_embed", None), "patch_size", None)
    if isinstance(size, int):
        return size
    if isinstance(size, (tuple, list)) and len(size) == 2 and size[0] == size[1]:
        return int(size[0])
    return None


def run_diagnose(ns: Namespace) -> dict[str, Any]:
    """Run ``vitlab diagnose-negatives`` from its parsed namespace; prints and writes the table, returns its dict."""
    import torch

    from vitlab.augment import KINDS
    from vitlab.checkpoint import resolve_weights_path
    from vitlab.eval.diagnostics import diagnose_negatives, format_negative_diagnostics

    model, _, datamodule = load_checkpoint_and_test_data(ns.checkpoint, ns.data, ns.root, ns.batch_size)
    own = model_patch_size(model)
    patch_size = ns.patch_size or own
    if patch_size is None:
        raise ValueError(f"{type(model).__name__} has no patch_embed.patch_size: give the cell size with --patch_size")
    available = len(datamodule.test_dataset)
    n = count_test_images(ns.n, available, f"the {datamodule.name}")
    aligned = "" if own is None else (f"; model patch size {own} px, "
                                      f"{'aligned' if patch_size % own == 0 else 'NOT aligned (not a multiple)'}")
    print(f"diagnose-negatives: {n} of {available} {datamodule.name} test images (--n {ns.n or 'default'}), "
          f"views with {patch_size}-px cells{aligned}")
    device = torch.device(ns.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    result = diagnose_negatives(model, datamodule.test_dataloader(), patch_size, kinds=ns.kinds or list(KINDS), n=n,
                                device=device,
                                seed=ns.seed, replace_rate=ns.replace_rate)
    command = command_line("vitlab diagnose-negatives", ns, build_diagnose_parser())
    result.update({"checkpoint": str(resolve_weights_path(ns.checkpoint)), "data": datamodule.name,
                   "model_patch_size": own, "seed": ns.seed, "command": command})
    markdown = (f"# Negative-view diagnostics: {result['checkpoint']} on {datamodule.name}\n\nCommand: `{command}`\n\n"
                + format_negative_diagnostics(result))
    out = Path(ns.out) if ns.out else resolve_weights_path(ns.checkpoint).parent
    out.mkdir(parents=True, exist_ok=True)
    stem = f"diagnose_negatives_{datamodule.name}"
    (out / f"{stem}.md").write_text(markdown)
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(markdown)
    print(f"wrote {out / stem}.md and .json")
    return result
