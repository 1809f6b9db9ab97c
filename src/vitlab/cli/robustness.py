"""``vitlab robustness``: common-corruption accuracy of a checkpoint, written as a markdown report and JSON.

Three sources of corrupted images (see `vitlab.eval.robustness` for the metrics and their formulas):

- generated (default): the first ``--n`` images of the dataset's official test set (default 1000, or the whole
  set when it is smaller; ``--n all`` for the whole set; the count is printed and reported) get the 15 common + 4
  extra ImageNet-C corruptions x 5 severities from ``imagecorruptions-imaug`` (``pip install 'vitlab[robustness]'``),
  in parallel, cached in the CIFAR-10-C layout under ``--cache_dir`` (default
  ``$VITLAB_DATA/corruptions/<data>_<H>x<W>x<C>_n<N>_seed<seed>``) and reused by later runs. The report calls it a
  generated set, never the published benchmark;
- ``--corruption_dir``: a published CIFAR-10-C / CIFAR-100-C folder (or any folder in that layout); every image
  unless ``--n`` is given;
- ``--imagenet_c``: a published ImageNet-C JPEG folder, with ``--alexnet_normalise`` for mCE and relative mCE;
  every image unless ``--n`` is given.

The model is rebuilt from the checkpoint (``model.safetensors`` or a run folder). Generated sets are normalised as
``vitlab eval`` normalises the test set; published folders with the checkpoint's data config. The report goes to
``<out>/robustness_<data>.md``, ``.json`` and ``.csv`` (``--out`` defaults to the checkpoint's folder; a report of
another checkpoint there is refused, not replaced).

Example (a shell command; needs a trained run folder)::

    vitlab robustness --checkpoint runs/vit_fashion_mnist --n 1000
"""

from __future__ import annotations

from typing import Any

from jsonargparse import ArgumentParser, Namespace

from vitlab.cli.main import CHECKPOINT_HELP, names_list
from vitlab.eval.defaults import DEFAULT_N

__all__ = ["add_checkpoint_arguments", "build_robustness_parser", "run_robustness"]


def add_checkpoint_arguments(parser: ArgumentParser, use: str, n_help: str) -> None:
    """Add ``--checkpoint``, ``--data``, ``--root`` and ``--n``, shared by the commands that evaluate a checkpoint.

    Args:
        parser: the subcommand's parser.
        use: what the command does with the test set, for ``--data``'s help ("corrupted", "used").
        n_help: ``--n``'s help text.
    """
    parser.add_argument("--checkpoint", type=str, required=True, help=CHECKPOINT_HELP)
    parser.add_argument("--data", type=str | None, default=None,
                        help=f"dataset whose test set is {use} (default: the checkpoint's training dataset)")
    parser.add_argument("--root", type=str | None, default=None, help="data folder (default: vitlab's cache)")
    parser.add_argument("--n", type=str | None, default=None, help=n_help)


def build_robustness_parser() -> ArgumentParser:
    """The ``vitlab robustness`` parser."""
    parser = ArgumentParser(
        prog="vitlab robustness",
        description="Accuracy of a checkpoint under the 15 common + 4 extra ImageNet-C corruptions x 5 severities, "
        "on a generated set (imagecorruptions-imaug, cached in the CIFAR-10-C layout), a published CIFAR-10-C/100-C "
        "folder or ImageNet-C. Writes <out>/robustness_<data>.md, .json and .csv.",
    )
    add_checkpoint_arguments(
        parser, "corrupted",
        "test images per corruption and severity: an int, or 'all' for the whole test set "
        f"(default: {DEFAULT_N} for generated sets, or all when the test set is smaller; all for "
        "--corruption_dir and --imagenet_c)",
    )
    parser.add_argument("--corruptions", type=list[str] | str | None, default=None,
                        help="subset of corruptions, e.g. '[fog, contrast]' (default: all 19)")
    parser.add_argument("--cache_dir", type=str | None, default=None,
                        help="folder of the generated set "
                        "(default: $VITLAB_DATA/corruptions/<data>_<HxWxC>_n<N>_seed<seed>)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated corruptions")
    parser.add_argument("--workers", type=int | None, default=None, help="processes for generation (default: all CPUs)")
    parser.add_argument("--corruption_dir", type=str | None, default=None,
                        help="a published CIFAR-10-C / CIFAR-100-C folder (<corruption>.npy + labels.npy) instead")
    parser.add_argument("--imagenet_c", type=str | None, default=None,
                        help="a published ImageNet-C folder <root>/<corruption>/<severity>/<wnid>/*.JPEG instead")
    parser.add_argument("--alexnet_normalise", "--alexnet-normalise", type=bool, nargs="?", const=True, default=False,
                        help="with --imagenet_c: AlexNet-normalised mCE and relative mCE")
    parser.add_argument("--clean_accuracy", type=float | None, default=None,
                        help="with --imagenet_c: the model's clean ImageNet accuracy (for the relative mCE)")
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--device", type=str | None, default=None, help="cpu or cuda (default: cuda if present)")
    parser.add_argument("--out", type=str | None, default=None, help="report folder (default: the checkpoint's)")
    return parser


def run_robustness(ns: Namespace) -> dict[str, Any]:
    """Run ``vitlab robustness`` from its parsed namespace (`vitlab.eval.robustness.robustness_report`)."""
    from vitlab.eval.evaluate import command_line, robustness_report

    options = ns.as_dict()
    options["corruptions"] = names_list(options["corruptions"])  # one name, or the older comma form
    command = command_line("vitlab robustness", options, build_robustness_parser().get_defaults())
    return robustness_report(options.pop("checkpoint"), **options, command=command)
