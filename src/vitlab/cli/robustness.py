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
``<out>/robustness_<data>.md`` and ``.json`` (``--out`` defaults to the checkpoint's folder).

Example (a shell command; needs a trained run folder)::

    vitlab robustness --checkpoint runs/vit_fashion_mnist --n 1000
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jsonargparse import ArgumentParser, Namespace

if TYPE_CHECKING:
    from torch import nn

__all__ = [
    "DEFAULT_N",
    "build_robustness_parser",
    "command_line",
    "count_test_images",
    "load_checkpoint_and_test_data",
    "parse_n",
    "run_robustness",
]

#: Test images used by default for generated corruption sets and diagnostics (fewer when the test set is smaller).
DEFAULT_N = 1000


def add_checkpoint_arguments(parser: ArgumentParser, use: str, n_help: str) -> None:
    """Add ``--checkpoint``, ``--data``, ``--root`` and ``--n``, shared by the commands that evaluate a checkpoint.

    Args:
        parser: the subcommand's parser.
        use: what the command does with the test set, for ``--data``'s help ("corrupted", "used").
        n_help: ``--n``'s help text.
    """
    parser.add_argument("--checkpoint", type=str, required=True, help="model.safetensors or a run folder")
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
        "folder or ImageNet-C. Writes <out>/robustness_<data>.md and .json.",
    )
    add_checkpoint_arguments(
        parser, "corrupted",
        "test images per corruption and severity: an int, or 'all' for the whole test set "
        f"(default: {DEFAULT_N} for generated sets, or all when the test set is smaller; all for "
        "--corruption_dir and --imagenet_c)",
    )
    parser.add_argument("--corruptions", type=list[str] | None, default=None,
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
    parser.add_argument("--alexnet_normalise", "--alexnet-normalise", type=bool, default=False,
                        help="with --imagenet_c: AlexNet-normalised mCE and relative mCE")
    parser.add_argument("--clean_accuracy", type=float | None, default=None,
                        help="with --imagenet_c: the model's clean ImageNet accuracy (for the relative mCE)")
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--device", type=str | None, default=None, help="cpu or cuda (default: cuda if present)")
    parser.add_argument("--out", type=str | None, default=None, help="report folder (default: the checkpoint's)")
    return parser


def parse_n(value: str | int | None) -> int | None:
    """``"all"``/None -> None (every image); a positive int (or its string) -> that int.

    Example:
        >>> parse_n("1000"), parse_n("all")
        (1000, None)
    """
    if value is None or (isinstance(value, str) and value.strip().lower() == "all"):
        return None
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"--n must be a positive int or 'all', got {value!r}") from None
    if n < 1:
        raise ValueError(f"--n must be a positive int or 'all', got {value!r}")
    return n


def count_test_images(value: str | int | None, available: int, name: str = "the") -> int:
    """How many test images ``--n value`` means: None -> ``min(DEFAULT_N, available)``, ``"all"`` -> ``available``.

    Example:
        >>> count_test_images(None, 10000), count_test_images(None, 360), count_test_images("all", 360)
        (1000, 360, 360)
    """
    n = parse_n(value) if value is not None else min(DEFAULT_N, available)
    if n is None:
        return available
    if n > available:
        raise ValueError(f"--n {n} but {name} test set has {available} images: use --n all or less")
    return n


def load_checkpoint_and_test_data(
    checkpoint: str | Path, data: str | None = None, root: str | None = None, batch_size: int = 256
) -> tuple[nn.Module, dict[str, Any], Any]:
    """Load a ``kind="model"`` checkpoint and the test split of a dataset, prepared as the checkpoint expects.

    As in ``vitlab eval``: the model is rebuilt from the safetensors metadata alone, and the dataset is loaded at
    the checkpoint's input size and channel count.

    Args:
        checkpoint: ``model.safetensors`` or a run folder.
        data: dataset name; ``None`` uses the one the checkpoint was trained on (its metadata's data config).
        root: data folder; ``None`` uses (and fills) vitlab's cache.
        batch_size: test loader batch size.

    Returns:
        ``(model in eval mode, metadata, datamodule after setup("test"))``; the test loader yields normalised
        ``(B, C, H, W)`` float32 images and ``(B,)`` int64 labels.
    """
    from vitlab.data import build_datamodule
    from vitlab.peft.export import load_run_model

    model, meta = load_run_model(checkpoint)
    data_cfg = meta.get("extra", {}).get("data") or {}
    kwargs = meta["model_kwargs"]
    name = data or data_cfg.get("name")
    if not name:
        raise ValueError(f"{checkpoint} does not record its dataset (it was not written by `vitlab fit`): "
                         "pass --data NAME")
    stats = {"mean": list(data_cfg["mean"]), "std": list(data_cfg["std"])} if data_cfg.get("mean") else {}
    datamodule = build_datamodule(name, root=root, img_size=data_cfg.get("img_size", kwargs.get("img_size", 32)),
                                  in_chans=kwargs.get("in_chans"), batch_size=batch_size, **stats)
    if datamodule.num_classes != kwargs.get("num_classes", datamodule.num_classes):
        raise ValueError(f"{name} has {datamodule.num_classes} classes but the checkpoint predicts "
                         f"{kwargs['num_classes']}: pass the dataset it was trained on with --data")
    datamodule.prepare_data()
    datamodule.setup("test")
    return model, meta, datamodule


def _preprocess(data_config: dict[str, Any]) -> Any:
    """uint8 ``(B, C, H, W)`` with the data's own channels -> the model's normalised float input."""
    from vitlab.data.transforms import normalize_for

    return normalize_for(data_config)


def command_line(prog: str, ns: Namespace, parser: ArgumentParser) -> str:
    """The command that reproduces ``ns``: ``prog`` plus every option whose value differs from its default.

    Example:
        >>> parser = build_robustness_parser()
        >>> command_line("vitlab robustness", parser.parse_args(["--checkpoint", "runs/vit", "--n", "50"]), parser)
        'vitlab robustness --checkpoint runs/vit --n 50'
    """
    defaults = parser.get_defaults()
    words = prog.split()
    for key, value in ns.as_dict().items():
        if value is None or value == defaults.get(key) or key == "__path__":
            continue
        if isinstance(value, list):
            value = "[" + ", ".join(map(str, value)) + "]"
        words += [f"--{key}", str(value).lower() if isinstance(value, bool) else str(value)]
    return shlex.join(words)


def _check_geometry(folder: Path, data_config: dict[str, Any]) -> None:
    """A published folder's images must have the model's input size and the data's channel count."""
    import numpy as np

    files = sorted(p for p in folder.glob("*.npy") if p.name not in ("labels.npy", "clean.npy"))
    if not files:
        return  # evaluate_corruptions names what is missing
    shape = tuple(np.load(files[0], mmap_mode="r").shape[1:])
    size = int(data_config["img_size"])
    expected = (size, size, int(data_config.get("source_chans") or data_config["in_chans"]))
    if shape != expected:
        raise ValueError(f"{files[0]} holds {shape[0]}x{shape[1]}x{shape[2]} images but the checkpoint takes "
                         f"{expected[0]}x{expected[1]}x{expected[2]} (H x W x C): use a folder made for this model "
                         "or generate one (leave out --corruption_dir)")


def _generated_set(ns: Namespace, datamodule: Any) -> tuple[Path, str]:
    """Take the first ``n`` test images back to uint8, generate (or reuse) their corruption set; returns
    ``(folder, a sentence saying which test images were used)``."""
    from vitlab.data import default_cache_dir
    from vitlab.eval.corruptions import (
        ALL_CORRUPTIONS,
        generate_corruption_set,
        images_from_loader,
        import_imagecorruptions,
    )

    if any(c != "glass_blur" for c in ns.corruptions or ALL_CORRUPTIONS):
        try:
            import_imagecorruptions()
        except ImportError as error:  # a one-line, fixable error for the CLI
            raise ValueError(f"{error} (or `pip install 'vitlab[robustness]'`)") from error
    available = len(datamodule.test_dataset)
    count = count_test_images(ns.n, available, f"the {datamodule.name}")
    print(f"robustness: using {count} of {available} {datamodule.name} test images per corruption and severity "
          f"(--n {ns.n or 'default'}; --n all uses every one)")
    config = datamodule.data_config()
    images, labels = images_from_loader(datamodule.test_dataloader(), config["mean"], config["std"], n=count,
                                        channels=int(config.get("source_chans") or config["in_chans"]))
    height, width, channels = images.shape[1:]
    folder = Path(ns.cache_dir) if ns.cache_dir else (
        default_cache_dir() / "corruptions" / f"{datamodule.name}_{height}x{width}x{channels}_n{count}_seed{ns.seed}")
    print(f"robustness: corruption set in {folder} (generated once, then reused)")
    folder = generate_corruption_set(images, labels, folder, corruptions=ns.corruptions or ALL_CORRUPTIONS,
                                     seed=ns.seed, workers=ns.workers)
    used = f"Source images: the first {count} of the {available} {datamodule.name} test images (file order).\n\n"
    return folder, used


def run_robustness(ns: Namespace) -> dict[str, Any]:
    """Run ``vitlab robustness`` from its parsed namespace; prints and writes the report, returns its dict."""
    import torch

    from vitlab.checkpoint import resolve_weights_path
    from vitlab.eval.imagenet_c import evaluate_imagenet_c
    from vitlab.eval.robustness import evaluate_corruptions, format_robustness_report
    from vitlab.peft.export import load_run_model

    n = parse_n(ns.n)  # published folders: None (all) unless given; generated sets: see count_test_images
    if ns.corruption_dir and ns.imagenet_c:
        raise ValueError("give either --corruption_dir or --imagenet_c, not both")
    if (ns.alexnet_normalise or ns.clean_accuracy is not None) and not ns.imagenet_c:
        raise ValueError("--alexnet_normalise and --clean_accuracy apply to ImageNet-C only: add --imagenet_c ROOT")
    device = torch.device(ns.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    source = ""
    if ns.corruption_dir or ns.imagenet_c:
        model, meta = load_run_model(ns.checkpoint)
        data_config = meta.get("extra", {}).get("data")
        if not data_config:
            raise ValueError(f"{ns.checkpoint} has no data config in its metadata: it was not written by `vitlab fit`")
        name = ns.data or data_config.get("name", "data")
    else:
        model, meta, datamodule = load_checkpoint_and_test_data(ns.checkpoint, ns.data, ns.root, ns.batch_size)
        data_config, name = datamodule.data_config(), datamodule.name  # the normalisation `vitlab eval` applies
    if ns.imagenet_c:
        from vitlab.data import build_eval_transform
        from vitlab.eval.corruptions import COMMON_CORRUPTIONS

        report = evaluate_imagenet_c(model, ns.imagenet_c, build_eval_transform(data_config),
                                     clean_accuracy=ns.clean_accuracy, n=n, batch_size=ns.batch_size, device=device,
                                     corruptions=ns.corruptions or COMMON_CORRUPTIONS,
                                     alexnet_normalise=ns.alexnet_normalise)
        stem = f"robustness_{name}_imagenet_c"
    else:
        if ns.corruption_dir:
            folder, stem = Path(ns.corruption_dir), f"robustness_{name}_published"
            _check_geometry(folder, data_config)
            print(f"robustness: published-layout folder {folder}, "
                  f"{'all' if n is None else n} images per corruption and severity")
        else:
            (folder, source), stem, n = _generated_set(ns, datamodule), f"robustness_{name}", None
        report = evaluate_corruptions(model, folder, preprocess=_preprocess(data_config), n=n,
                                      corruptions=ns.corruptions, batch_size=ns.batch_size, device=device)
    command = command_line("vitlab robustness", ns, build_robustness_parser())
    report.update({"checkpoint": str(resolve_weights_path(ns.checkpoint)), "data": name, "command": command})
    markdown = (f"# Corruption robustness: {report['checkpoint']} on {name}\n\nCommand: `{command}`\n\n{source}"
                + format_robustness_report(report))
    out = Path(ns.out) if ns.out else resolve_weights_path(ns.checkpoint).parent
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.md").write_text(markdown)
    (out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    print(markdown)
    print(f"wrote {out / stem}.md and .json")
    return report
