"""``vitlab diagnose-negatives``: how much a checkpoint still "sees" in patch-shuffled, -rotated, -infilled images.

For each negative-view kind, on the first ``--n`` images of the test set (default 1000, or all of a smaller test
set; ``--n all`` for every one; the count is printed): accuracy against the *original* label and mean max-softmax
confidence, beside chance (1/K) and the clean images (the paper's Figure 2 / Table 11 measurement; see
`vitlab.eval.diagnostics.diagnose_checkpoint`). The views are made with ``--patch_size`` cells (default: the model's
own patch size) from a seeded generator, so the numbers are reproducible. The table goes to
``<out>/diagnose_negatives_<data>.md`` and ``.json`` (``--out`` defaults to the checkpoint's folder).

Example (a shell command; needs a trained run folder)::

    vitlab diagnose-negatives --checkpoint runs/vit_fashion_mnist --n all
"""

from __future__ import annotations

from typing import Any

from jsonargparse import ArgumentParser, Namespace

from vitlab.cli.main import names_list
from vitlab.cli.robustness import add_checkpoint_arguments
from vitlab.eval.defaults import DEFAULT_N

__all__ = ["build_diagnose_parser", "run_diagnose"]


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
    parser.add_argument("--kinds", type=list[str] | str | None, default=None,
                        help="view kinds, e.g. '[shuffle, rotate]' (default: every kind of vitlab.augment.KINDS)")
    parser.add_argument("--replace_rate", type=float, default=0.25, help="P-Infill replace rate")
    parser.add_argument("--seed", type=int, default=0, help="seed of the views")
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--device", type=str | None, default=None, help="cpu or cuda (default: cuda if present)")
    parser.add_argument("--out", type=str | None, default=None, help="report folder (default: the checkpoint's)")
    return parser


def run_diagnose(ns: Namespace) -> dict[str, Any]:
    """Run ``vitlab diagnose-negatives`` from its parsed namespace (`vitlab.eval.diagnostics.diagnose_checkpoint`)."""
    from vitlab.eval.evaluate import command_line, diagnose_checkpoint

    options = ns.as_dict()
    options["kinds"] = names_list(options["kinds"])  # one name, or the older comma form
    command = command_line("vitlab diagnose-negatives", options, build_diagnose_parser().get_defaults())
    return diagnose_checkpoint(options.pop("checkpoint"), **options, command=command)
