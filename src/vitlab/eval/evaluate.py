"""Evaluations of a vitlab checkpoint (``model.safetensors`` or run folder): clean accuracy, predictions, and the
corruption-robustness and negative-view reports that ``vitlab robustness``, ``vitlab diagnose-negatives`` and
``vitlab study`` write into a run folder (`robustness_report`, `diagnose_checkpoint`).

Usage (with a run of ``vitlab fit --config configs/vit_fashion_mnist.yaml``; tests/eval/test_evaluate.py runs both
functions on a tiny checkpoint)::

    evaluate_checkpoint("runs/vit_fashion_mnist", data="fashion_mnist")  # {"acc": 0.89, "loss": ..., "samples": ...}
    predict_images("runs/vit_fashion_mnist", ["shoe.png"], topk=2)  # [{"image": "shoe.png", "predictions": [...]}]
"""

from __future__ import annotations

import json
import numbers
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from vitlab.checkpoint.lightning import checkpoint_weights, is_lightning_checkpoint, lightning_run_folder
from vitlab.errors import ConfigError, DataError
from vitlab.eval.defaults import DEFAULT_N
from vitlab.eval.device import resolve_device
from vitlab.metrics import evaluate_classifier
from vitlab.peft.export import load_run_model

__all__ = ["DEFAULT_N", "command_line", "count_test_images", "diagnose_checkpoint", "evaluate_checkpoint",
           "load_checkpoint_and_test_data", "parse_n", "predict_images", "robustness_report", "run_data_root"]


def evaluate_checkpoint(checkpoint: str | Path, data: str | None = None, root: str | None = None, split: str = "test",
                        batch_size: int = 256, device: str | None = None, **data_options: Any) -> dict[str, float]:
    """Evaluate a ``kind="model"`` checkpoint on a dataset split, with the checkpoint's input size and channels.

    Evaluating on a dataset other than the one recorded in the checkpoint (``extra.data.name``, written by
    ``vitlab fit``) is allowed (transfer) but warns with both names.

    Args:
        checkpoint: ``model.safetensors`` or a run folder.
        data: dataset name (see ``vitlab.data``); ``None`` uses the one the checkpoint was trained on.
        root: data folder; ``None``: the run's own ``data.root`` when evaluating on its dataset (`run_data_root`),
            else vitlab's cache (filled when missing).
        split: ``test`` (the official test set) or ``val`` (the seeded hold-out of the training set).
        batch_size: evaluation batch size.
        device: ``cpu``/``cuda``; default: CUDA when available.

    Returns:
        ``{"acc", "loss", "samples"}`` (see `vitlab.metrics.evaluate_classifier`).
    """
    from vitlab.data import build_datamodule

    if split not in ("test", "val"):
        raise ConfigError(f"split must be 'test' or 'val', got {split!r}")
    _check_checkpoint(checkpoint)
    with checkpoint_weights(checkpoint) as weights:  # a Lightning .ckpt: its weights as model.safetensors
        model, meta = load_run_model(weights)
        data_cfg = meta.get("extra", {}).get("data", {})
        kwargs = meta["model_kwargs"]
        data = data or data_cfg.get("name")
        if not data:
            raise ConfigError(f"{checkpoint} does not record its dataset (it was not written by `vitlab fit`): "
                              "pass --data NAME")
        if data_cfg.get("mean") and data_cfg.get("std") and "mean" not in data_options:  # the training normalisation
            data_options = {**data_options, "mean": list(data_cfg["mean"]), "std": list(data_cfg["std"])}
        _check_dataset_fits(data, kwargs, checkpoint)
        if split == "val" and data_cfg.get("name") == data:
            data_options = {**_run_val_split(checkpoint), **data_options}
        datamodule = build_datamodule(
            data, root=run_data_root(checkpoint, data, root),
            img_size=data_cfg.get("img_size", kwargs.get("img_size", 32)), in_chans=kwargs.get("in_chans"),
            batch_size=batch_size, **data_options,
        )
        if datamodule.num_classes != kwargs.get("num_classes", datamodule.num_classes):
            raise ConfigError(f"{data} has {datamodule.num_classes} classes but {checkpoint} predicts "
                              f"{kwargs['num_classes']}: evaluate it on a dataset with {kwargs['num_classes']} classes")
        trained_on = data_cfg.get("name")
        _check_class_names(data_cfg.get("class_names"), datamodule.class_names, data, trained_on, checkpoint)
        if trained_on is not None and trained_on != data:  # after the name and the class count are known to be valid
            warnings.warn(f"{checkpoint} was trained on {trained_on!r} but is evaluated on {data!r}: the accuracy is a "
                          f"transfer result (pass --data {trained_on} for the model's own test set)", stacklevel=2)
        datamodule.prepare_data()
        datamodule.setup("test" if split == "test" else "validate")
        loader: DataLoader = datamodule.test_dataloader() if split == "test" else datamodule.val_dataloader()
        device = resolve_device(device)
        return evaluate_classifier(model, loader, device=device, progress=f"{data}/{split}")


@torch.no_grad()
def predict_images(checkpoint: str | Path, images: Sequence[str | Path], topk: int = 1) -> list[dict[str, Any]]:
    """Classify image files with a ``kind="model"`` checkpoint, preprocessed as in training.

    A folder in ``images`` stands for the image files directly inside it (sorted by name; files whose suffix is not
    an image format PIL knows, such as ``.txt``, are left out); a pattern with ``*``, ``?`` or ``[...]`` that names
    no existing file (one the shell did not expand: quoted, or from Python) stands for the files it matches, sorted
    (``**`` reaches into sub-folders, e.g. ``"photos/**/*.jpg"``). A file that is missing or cannot be decoded does not
    stop the others: its row carries an ``"error"`` (one line naming the file) and no predictions. 16-bit greyscale
    PNGs are scaled to 8 bits (see `vitlab.data.transforms.pil_to_uint8`), not clipped.

    Returns:
        One dict per image, in order: ``{"image": path, "predictions": [(class_name, probability), ...]}``
        (``topk`` long, at most the class count), or ``{"image": path, "predictions": [], "error": message}``.

    Raises:
        DataError: no image at all could be read (the message lists each file's problem).
    """
    from PIL import Image

    from vitlab.data import build_eval_transform

    if isinstance(images, str | Path) or not images:
        raise ConfigError("images must be a non-empty list of image files or folders, e.g. ['shoe.png', 'photos/']")
    images = _expand_folders(images)
    if isinstance(topk, bool) or not isinstance(topk, numbers.Integral) or topk < 1:  # numbers: NumPy ints too
        raise ConfigError(f"topk must be an int >= 1 (how many classes to list per image), got {topk!r}")
    _check_checkpoint(checkpoint)
    with checkpoint_weights(checkpoint) as weights:  # a Lightning .ckpt: its weights as model.safetensors
        model, meta = load_run_model(weights)
        model.eval()
        data_cfg = meta.get("extra", {}).get("data")
        if not data_cfg:
            raise ConfigError(f"{checkpoint} has no data config in its metadata: it was not written by `vitlab fit`; "
                              "predict with a run folder or model.safetensors that `vitlab fit` wrote")
        transform = build_eval_transform(data_cfg)
        names = data_cfg.get("class_names") or [str(i) for i in range(meta["model_kwargs"]["num_classes"])]
        topk = min(int(topk), len(names))
        results = []
        for path in images:
            try:
                if Path(path).is_dir():
                    folders = sorted(p.name for p in Path(path).iterdir() if p.is_dir())
                    inside = (f"; it holds the folders {', '.join(folders[:3])}{', ...' if len(folders) > 3 else ''}"
                              f": pass them, or a pattern such as '{Path(path) / '**' / '*.png'}'") if folders else ""
                    raise DataError(f"a folder without image files (PNG, JPEG, ...){inside}")
                if not Path(path).is_file():
                    raise DataError("no file matches this pattern" if _is_pattern(path) else "no such image file")
                with Image.open(path) as image:
                    batch = transform(image).unsqueeze(0)
            except (OSError, DataError, Image.DecompressionBombError) as err:  # UnidentifiedImageError is an OSError
                message = f"{path}: {err}" if isinstance(err, DataError) else f"{path}: not a readable image ({err})"
                results.append({"image": str(path), "predictions": [], "error": message})
                continue
            probs = model(batch).softmax(dim=1)[0]
            values, indices = probs.topk(topk)
            predictions = [(names[i], float(v)) for v, i in zip(values, indices, strict=True)]
            results.append({"image": str(path), "predictions": predictions})
        if all("error" in row for row in results):
            raise DataError("no image could be read: " + "; ".join(row["error"] for row in results))
        return results


def _check_checkpoint(checkpoint: object) -> None:
    """Refuse a ``checkpoint`` that is not a path (None, a number, a loaded model) before any file is looked up."""
    if not isinstance(checkpoint, str | Path) or not str(checkpoint).strip():
        raise ConfigError(f"checkpoint must be the path (str or pathlib.Path) of a run folder, its model.safetensors "
                          f"or a Lightning .ckpt, got {checkpoint!r}")
    text = str(checkpoint).strip()
    if not Path(text).expanduser().exists() and _is_pretrained_source(text):
        raise ConfigError(f"checkpoint {text!r} is a source of pretrained weights (`model.pretrained: timm | "
                          "hf-hub:ORG/NAME` with `model.name` in a run config), not a checkpoint: fine-tune them on "
                          "your data first, e.g. `vitlab fit --config configs/hub_vit_b16_kadaptation.yaml`, or any "
                          "run config with `--model.name <timm name> --model.pretrained timm` (README: \"Fine-tune a "
                          "pretrained ViT from the Hub\"), then evaluate its run folder: `--checkpoint runs/<name>`")
    _check_run_finished(Path(text).expanduser())
    _check_not_adapter_file(Path(text).expanduser())


def _check_not_adapter_file(path: Path) -> None:
    """Refuse the weights file inside a peft adapter folder (its folder is what the evaluations take)."""
    from peft.utils import SAFETENSORS_WEIGHTS_NAME

    if path.name == SAFETENSORS_WEIGHTS_NAME and _peft_adapter_folder(path.parent) is not None:
        raise ConfigError(f"{path} is the weights file of the peft adapter folder {path.parent}, which cannot be read "
                          f"alone: pass the folder ({path.parent}) or its run folder ({path.parent.parent})")


def _check_run_finished(path: Path) -> None:
    """Refuse a run folder (or its ``model.safetensors``) of a run that has not written its weights yet, naming what
    to do: wait for a run still training (its ``.lock`` held), else finish it with ``--resume true``."""
    from vitlab.checkpoint.format import ADAPTER_NAME, WEIGHTS_NAME

    folder = path if path.is_dir() else path.parent if path.name == WEIGHTS_NAME and not path.exists() else None
    if (folder is None or not (folder / "config.yaml").is_file() or (folder / WEIGHTS_NAME).exists()
            or (folder / ADAPTER_NAME).exists()):
        return
    import shlex

    words = ["vitlab", "fit", "--name", folder.name, "--output_dir", str(folder.parent), "--resume", "true"]
    resume = f"`{shlex.join(words)}`"
    if (folder / ".lock").exists():
        raise ConfigError(f"{folder} is a run still being trained (its .lock is held; {WEIGHTS_NAME} is written when "
                          f"training ends): wait for `vitlab fit` to finish, or if it was killed, finish the run with "
                          f"{resume}; then evaluate it")
    raise ConfigError(f"{folder} is a run that has not finished (no {WEIGHTS_NAME}, written when training ends): "
                      f"finish it with {resume}, then evaluate it")


def _is_pretrained_source(text: str) -> bool:
    """Whether ``text`` names pretrained weights the way ``model.pretrained`` / ``model.name`` do (``timm``,
    ``hf-hub:ORG/NAME``, ``local-dir:FOLDER``, a timm model name with or without its tag)."""
    import timm

    return text == "timm" or text.startswith(("hf-hub:", "local-dir:")) or timm.is_model(text)


def _check_dataset_fits(name: str, model_kwargs: dict[str, Any], checkpoint: str | Path) -> None:
    """Refuse a registered dataset whose class count or channels the checkpoint cannot take, before reading it."""
    from vitlab.data import check_name, get_spec

    spec = get_spec(check_name(name))
    classes, channels = model_kwargs.get("num_classes"), model_kwargs.get("in_chans")
    if spec.num_classes is not None and classes is not None and spec.num_classes != classes:
        raise ConfigError(f"{name} has {spec.num_classes} classes but {checkpoint} predicts {classes}: evaluate it "
                          f"on a dataset with {classes} classes (e.g. the one it was trained on)")
    if spec.channels == 3 and channels == 1:
        raise ConfigError(f"{checkpoint} takes 1-channel images but {name} has 3-channel (RGB) images: evaluate it "
                          "on a 1-channel dataset (e.g. the one it was trained on)")


def _check_class_names(recorded: Sequence[str] | None, found: Sequence[str], data: str, trained_on: str | None,
                       checkpoint: str | Path) -> None:
    """Refuse data whose label indices mean other classes than the model's: the same class names in another order
    (any dataset), or other names in an image folder when the model was trained on one (the classes of a registered
    dataset are fixed). Another dataset with other names is a transfer evaluation (warned by the caller); no
    recorded names: no check."""
    if not recorded or list(recorded) == list(found):
        return
    if sorted(recorded) == sorted(found):
        raise ConfigError(f"{data} has the classes of {checkpoint} in another order ({list(found)} vs the model's "
                          f"{list(recorded)}): its label indices would mean other classes; name the class folders so "
                          "they sort as the model's do")
    if trained_on == data == "imagefolder":
        extra, missing = sorted(set(found) - set(recorded)), sorted(set(recorded) - set(found))
        raise ConfigError(f"{data} holds other classes than {checkpoint} was trained on (not in the model: {extra}; "
                          f"missing: {missing}; the model's classes in index order: {list(recorded)}): evaluate it "
                          "on data with the model's classes")


def _peft_adapter_folder(checkpoint: str | Path) -> Path | None:
    """``checkpoint`` (``~`` expanded) when it is a peft adapter folder (a run's ``adapter/``), else None."""
    from peft.utils import CONFIG_NAME

    path = Path(checkpoint).expanduser()
    return path if path.is_dir() and (path / CONFIG_NAME).is_file() else None


def _named_weights(checkpoint: str | Path) -> Path:
    """The file a report names for ``checkpoint`` (and whose folder it goes to by default): a Lightning ``.ckpt``
    itself, a peft adapter folder's weights file, else the ``model.safetensors`` a run folder or file resolves to."""
    from peft.utils import SAFETENSORS_WEIGHTS_NAME

    from vitlab.checkpoint import resolve_weights_path

    if (adapter := _peft_adapter_folder(checkpoint)) is not None:
        return adapter / SAFETENSORS_WEIGHTS_NAME
    return Path(checkpoint).expanduser() if is_lightning_checkpoint(checkpoint) else resolve_weights_path(checkpoint)


def _run_config(checkpoint: str | Path) -> dict[str, Any] | None:
    """The run's ``config.yaml`` (beside the weights, or in a ``.ckpt``'s run folder) as a mapping, or None."""
    from vitlab.checkpoint import resolve_weights_path
    from vitlab.yaml_loader import load_yaml_file

    if (adapter := _peft_adapter_folder(checkpoint)) is not None:  # a run's adapter/ folder: the run is above it
        folder = adapter.parent
    elif is_lightning_checkpoint(checkpoint):
        folder = lightning_run_folder(Path(checkpoint).expanduser())
    else:
        folder = resolve_weights_path(checkpoint).parent
    config = load_yaml_file(folder / "config.yaml") if (folder / "config.yaml").is_file() else None
    return config if isinstance(config, dict) and isinstance(config.get("data"), dict) else None


def run_data_root(checkpoint: str | Path, data: str | None, root: str | None) -> str | None:
    """``root``, or when it is None and ``data`` is the run's own dataset (or None), the ``data.root`` the run trained
    from (its ``config.yaml``), so a run on an image folder or a dataset copy of its own is evaluated on that data
    without ``--root`` again; None (vitlab's cache) otherwise.

    Example:
        >>> run_data_root("runs/any", "digits", "/data/digits")  # a given root wins
        '/data/digits'
    """
    if root is not None:
        return root
    config = _run_config(checkpoint)
    if config is None or data not in (None, config["data"].get("name")):
        return None
    recorded = config["data"].get("root")
    return recorded if isinstance(recorded, str) and recorded else None


def _run_val_split(checkpoint: str | Path) -> dict[str, Any]:
    """The run's hold-out settings (``val_fraction`` and ``seed`` of the ``config.yaml`` beside the weights), so that
    ``--split val`` is the run's own validation set; a bare weights file warns that the default split is used."""
    config = _run_config(checkpoint)
    if config is None:
        warnings.warn(f"{checkpoint} has no run config.yaml beside it: --split val is the default hold-out (10 % of "
                      "the training set, seed 0), the run's own only if it trained with those settings", stacklevel=3)
        return {}
    split = {"val_fraction": config["data"].get("val_fraction"), "seed": config.get("seed")}
    return {key: value for key, value in split.items() if value is not None}


def _is_pattern(path: str | Path) -> bool:
    """Whether ``path`` is a glob pattern (holds ``*``, ``?`` or ``[``) rather than an existing file or folder."""
    return not Path(path).exists() and any(char in str(path) for char in "*?[")


def _expand_folders(paths: Sequence[str | Path]) -> list[str | Path]:
    """``paths`` (``~`` expanded) with each glob pattern replaced by the files it matches and each folder by the image
    files directly inside it (both sorted); an empty folder or a pattern matching nothing stays, so that its row says
    so."""
    import glob

    from PIL import Image

    suffixes = {suffix.lower() for suffix in Image.registered_extensions()}
    expanded: list[str | Path] = []
    for path in paths:
        if not isinstance(path, str | Path) or not str(path).strip():
            raise ConfigError(f"images must be paths (str or pathlib.Path) of image files or folders, got {path!r}")
        if str(path).startswith("~"):  # a quoted ~ (or one from Python / YAML): the home folder, as the shell reads it
            path = str(Path(path).expanduser())
        if _is_pattern(path):  # a pattern the shell did not expand (quoted, or from Python)
            matches = sorted(match for match in glob.glob(str(path), recursive=True) if Path(match).is_file())
            expanded += matches or [path]
            continue
        if not Path(path).is_dir():
            expanded.append(path)
            continue
        files = sorted(p for p in Path(path).iterdir() if p.is_file() and p.suffix.lower() in suffixes)
        expanded += [str(p) for p in files] or [path]
    return expanded


def parse_n(value: str | int | None) -> int | None:
    """``"all"``/None -> None (every image); a positive int (or its string) -> that int.

    Example:
        >>> parse_n("1000"), parse_n("all")
        (1000, None)
    """
    if value is None or (isinstance(value, str) and value.strip().lower() == "all"):
        return None
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise ConfigError(f"--n must be a positive int or 'all', got {value!r}")
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"--n must be a positive int or 'all', got {value!r}") from None
    if n < 1:
        raise ConfigError(f"--n must be a positive int or 'all', got {value!r}")
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
        raise ConfigError(f"--n {n} but {name} test set has {available} images: use --n all or less")
    return n


def load_checkpoint_and_test_data(
    checkpoint: str | Path, data: str | None = None, root: str | None = None, batch_size: int = 256
) -> tuple[torch.nn.Module, dict[str, Any], Any]:
    """Load a ``kind="model"`` checkpoint and the test split of a dataset, prepared as the checkpoint expects.

    As in ``vitlab eval``: the model is rebuilt from the safetensors metadata alone, and the dataset is loaded at
    the checkpoint's input size and channel count.

    Args:
        checkpoint: ``model.safetensors`` or a run folder.
        data: dataset name; ``None`` uses the one the checkpoint was trained on (its metadata's data config).
        root: data folder; ``None``: the run's own ``data.root`` when evaluating on its dataset (`run_data_root`),
            else vitlab's cache (filled when missing).
        batch_size: test loader batch size.

    Returns:
        ``(model in eval mode, metadata, datamodule after setup("test"))``; the test loader yields normalised
        ``(B, C, H, W)`` float32 images and ``(B,)`` int64 labels.
    """
    from vitlab.data import build_datamodule

    _check_checkpoint(checkpoint)
    model, meta = load_run_model(checkpoint)
    data_cfg = meta.get("extra", {}).get("data") or {}
    kwargs = meta["model_kwargs"]
    name = data or data_cfg.get("name")
    if not name:
        raise ConfigError(f"{checkpoint} does not record its dataset (it was not written by `vitlab fit`): "
                         "pass --data NAME")
    _check_dataset_fits(name, kwargs, checkpoint)
    stats = {"mean": list(data_cfg["mean"]), "std": list(data_cfg["std"])} if data_cfg.get("mean") else {}
    datamodule = build_datamodule(name, root=run_data_root(checkpoint, name, root),
                                  img_size=data_cfg.get("img_size", kwargs.get("img_size", 32)),
                                  in_chans=kwargs.get("in_chans"), batch_size=batch_size, **stats)
    if datamodule.num_classes != kwargs.get("num_classes", datamodule.num_classes):
        raise ConfigError(f"{name} has {datamodule.num_classes} classes but the checkpoint predicts "
                         f"{kwargs['num_classes']}: pass the dataset it was trained on with --data")
    _check_class_names(data_cfg.get("class_names"), datamodule.class_names, name, data_cfg.get("name"), checkpoint)
    datamodule.prepare_data()
    datamodule.setup("test")
    return model, meta, datamodule


def command_line(prog: str, values: dict[str, Any], defaults: dict[str, Any] | None = None) -> str:
    """The command that reproduces an evaluation: ``prog`` plus ``--key value`` for every value that is set and
    differs from its default (recorded in the evaluation's JSON and report).

    Example:
        >>> command_line("vitlab robustness", {"checkpoint": "runs/vit", "n": "50", "root": None, "seed": 0},
        ...              {"seed": 0})
        'vitlab robustness --checkpoint runs/vit --n 50'
    """
    import shlex

    defaults = defaults or {}
    words = prog.split()
    for key, value in values.items():
        if value is None or value == defaults.get(key) or key == "__path__":
            continue
        if isinstance(value, list):
            value = "[" + ", ".join(map(str, value)) + "]"
        words += [f"--{key}", str(value).lower() if isinstance(value, bool) else str(value)]
    return shlex.join(words)


def _check_geometry(folder: Path, data_config: dict[str, Any]) -> None:
    """A published folder's images must have the model's input size and the data's channel count."""
    files = sorted(p for p in folder.glob("*.npy") if p.name not in ("labels.npy", "clean.npy"))
    if not files:
        return  # evaluate_corruptions names what is missing
    from vitlab.eval.robustness import _load_npy

    shape = tuple(_load_npy(files[0], mmap_mode="r").shape[1:])
    if len(shape) != 3:
        raise DataError(f"{files[0]} holds arrays of shape {shape} per image, not (H, W, C) images: use a "
                        "CIFAR-C-layout folder (uint8 (5 * N, H, W, C))")
    size, chans = int(data_config["img_size"]), int(data_config.get("source_chans") or data_config["in_chans"])
    native = data_config.get("native_size")
    accepted = [(size, size, chans)] + ([(int(native), int(native), chans)] if native else [])
    if shape not in accepted:
        also = f" (or its dataset's native {native}x{native}x{chans}, resized as in training)" if native else ""
        raise ConfigError(f"{files[0]} holds {shape[0]}x{shape[1]}x{shape[2]} images but the checkpoint takes "
                         f"{size}x{size}x{chans}{also} (H x W x C): use a folder made for this model or its dataset, "
                         "or generate one (leave out --corruption_dir)")


def _published_preprocess(data_config: dict[str, Any]) -> Callable[[torch.Tensor], torch.Tensor]:
    """uint8 ``(B, C, h, w)`` images of a published folder -> the model's input: the training geometry (a
    dataset-size image padded / resized to ``img_size`` as `vitlab.data.transforms.fit_geometry` does), then the
    run's normalisation. CIFAR-10-C's 32-px images thus reach a ViT fine-tuned at 224 px as its training data did."""
    from vitlab.data.transforms import fit_geometry, normalize_for

    normalize, size, pad_to = normalize_for(data_config), int(data_config["img_size"]), data_config.get("pad_to")
    return lambda images: normalize(fit_geometry(images, size, pad_to))


def _report_folder(out: str | Path | None, weights: Path, stem: str) -> Path:
    """The folder ``<stem>.md`` / ``.json`` go to (``out``, default the checkpoint's folder), refused when it is a file
    or already holds that report of another checkpoint (a different run evaluated into the same ``--out``)."""
    folder = Path(out).expanduser() if out else weights.parent  # `--out=~/reports`: the shell leaves that ~
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"--out {folder} is a file: give a folder for the report files")
    previous = folder / f"{stem}.json"
    try:
        recorded = json.loads(previous.read_text()).get("checkpoint") if previous.is_file() else None
    except (ValueError, OSError, AttributeError):
        recorded = None  # not a report of vitlab's: replaced
    # in the checkpoint's own folder, a report naming a file of its name is its own: the run folder was moved or
    # copied, or the command ran from another directory (a relative path recorded)
    own = (isinstance(recorded, str) and Path(recorded).name == weights.name
           and folder.resolve() == weights.parent.resolve())
    if isinstance(recorded, str) and not own and Path(recorded).resolve() != weights.resolve():
        raise ConfigError(f"{previous} is the report of another checkpoint ({recorded}): pass another --out, or "
                          f"delete {stem}.json and {stem}.md there to replace them")
    return folder


def _generated_set(datamodule: Any, n: str | int | None, corruptions: Sequence[str] | None, cache_dir: str | None,
                   seed: int, workers: int | None) -> tuple[Path, str]:
    """Take the first ``n`` test images back to uint8, generate (or reuse) their corruption set; returns
    ``(folder, a sentence saying which test images were used)``."""
    from vitlab.data import default_cache_dir
    from vitlab.eval.corruptions import (
        ALL_CORRUPTIONS,
        generate_corruption_set,
        images_from_loader,
        import_imagecorruptions,
    )

    if any(c != "glass_blur" for c in corruptions or ALL_CORRUPTIONS):
        try:
            import_imagecorruptions()
        except ImportError as error:  # a one-line, fixable error for the CLI
            raise ConfigError(f"{error} (or `pip install 'vitlab[robustness]'`)") from error
    size = int(datamodule.data_config()["img_size"])
    if size < 32:
        raise ConfigError(f"this checkpoint takes {size}x{size} images, smaller than the 32x32 px that "
                          "imagecorruptions corrupts: evaluate it on a corrupted folder of its size "
                          "(--corruption_dir) instead")
    available = len(datamodule.test_dataset)
    count = count_test_images(n, available, f"the {datamodule.name}")
    print(f"robustness: using {count} of {available} {datamodule.name} test images per corruption and severity "
          f"(--n {n or 'default'}; --n all uses every one)")
    config = datamodule.data_config()
    images, labels = images_from_loader(datamodule.test_dataloader(), config["mean"], config["std"], n=count,
                                        channels=int(config.get("source_chans") or config["in_chans"]))
    height, width, channels = images.shape[1:]
    folder = Path(cache_dir).expanduser() if cache_dir else (
        default_cache_dir() / "corruptions" / f"{datamodule.name}_{height}x{width}x{channels}_n{count}_seed{seed}")
    print(f"robustness: corruption set in {folder} (generated once, then reused)")
    folder = generate_corruption_set(images, labels, folder, corruptions=corruptions or ALL_CORRUPTIONS,
                                     seed=seed, workers=workers)
    used = f"Source images: the first {count} of the {available} {datamodule.name} test images (file order).\n\n"
    return folder, used


def robustness_report(checkpoint: str | Path, *, data: str | None = None, root: str | None = None,
                      n: str | int | None = None, corruptions: Sequence[str] | None = None,
                      cache_dir: str | None = None, seed: int = 0, workers: int | None = None,
                      corruption_dir: str | None = None, imagenet_c: str | None = None,
                      alexnet_normalise: bool = False, clean_accuracy: float | None = None, batch_size: int = 256,
                      device: str | None = None, out: str | Path | None = None, command: str = "") -> dict[str, Any]:
    """Corruption accuracy of a checkpoint (``model.safetensors`` or a run folder), written as
    ``<out>/robustness_<data>[_published|_imagenet_c].md``, ``.json`` and ``.csv`` (``corruption,severity,accuracy``
    rows; ``out`` default: the checkpoint's folder; a report of another checkpoint there is refused, not replaced).

    The corrupted images come from a generated set (default: the first ``n`` test images, see
    `count_test_images`, corrupted once and cached), a published CIFAR-C-layout folder
    (``corruption_dir``) or ImageNet-C (``imagenet_c``); the arguments are those of ``vitlab robustness --help``.
    ``command`` (the command line that reproduces it) is recorded in both files. Returns the report dict
    (`vitlab.eval.robustness.evaluate_corruptions`' plus ``checkpoint``, ``data`` and ``command``).

    Usage (with a trained run folder)::

        report = robustness_report("runs/vit_fashion_mnist", n=100)
        report["metrics"]["mean_accuracy"]
    """
    _check_checkpoint(checkpoint)
    _command_line(command)  # a non-str command is refused now, not after the (long) evaluation
    from vitlab.data.transforms import normalize_for
    from vitlab.eval.corruptions import COMMON_CORRUPTIONS
    from vitlab.eval.imagenet_c import evaluate_imagenet_c
    from vitlab.eval.robustness import evaluate_corruptions, format_robustness_report

    count = parse_n(n)  # published folders: None (all) unless given; generated sets: see count_test_images
    if corruptions is not None:  # before the (long) generation of a set that evaluate_corruptions would refuse
        from vitlab.eval.corruptions import _check_corruption_names

        corruptions = _check_corruption_names(corruptions)
        if not any(c in COMMON_CORRUPTIONS for c in corruptions):
            raise ConfigError(f"corruptions {corruptions} holds none of the 15 common corruptions the summary is "
                              f"over: add at least one of {', '.join(COMMON_CORRUPTIONS)}")
    if corruption_dir and imagenet_c:
        raise ConfigError("give either --corruption_dir or --imagenet_c, not both")
    if (alexnet_normalise or clean_accuracy is not None) and not imagenet_c:
        raise ConfigError("--alexnet_normalise and --clean_accuracy apply to ImageNet-C only: add --imagenet_c ROOT")
    generation_only = [name for name, value in (("--cache_dir", cache_dir), ("--workers", workers),
                                                ("--seed", None if seed == 0 else seed)) if value is not None]
    if (corruption_dir or imagenet_c) and generation_only:
        raise ConfigError(f"{', '.join(generation_only)} apply to generated sets only, not to "
                          f"{'--corruption_dir' if corruption_dir else '--imagenet_c'}: drop them")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"--seed must be an int >= 0 (the seed of the generated corruptions), got {seed!r}")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ConfigError(f"--workers must be an int >= 1 (processes generating corruptions) or unset for one per "
                          f"CPU, got {workers!r}")
    root = run_data_root(checkpoint, data, root)
    with checkpoint_weights(checkpoint) as weights_file:  # a Lightning .ckpt: its weights as model.safetensors
        chosen = resolve_device(device)
        source = ""
        if corruption_dir or imagenet_c:
            model, meta = load_run_model(weights_file)
            data_config = meta.get("extra", {}).get("data")
            if not data_config:
                raise ConfigError(f"{checkpoint} has no data config in its metadata: it was not written by "
                                  "`vitlab fit`")
            name = data or data_config.get("name", "data")
        else:
            model, meta, datamodule = load_checkpoint_and_test_data(weights_file, data, root, batch_size)
            data_config, name = datamodule.data_config(), datamodule.name  # the normalisation `vitlab eval` applies
        stem = f"robustness_{name}" + ("_imagenet_c" if imagenet_c else "_published" if corruption_dir else "")
        weights = _named_weights(checkpoint)
        folder_out = _report_folder(out, weights, stem)
        if imagenet_c:
            from vitlab.data import build_eval_transform

            report = evaluate_imagenet_c(model, imagenet_c, build_eval_transform(data_config),
                                         clean_accuracy=clean_accuracy, n=count, batch_size=batch_size, device=chosen,
                                         corruptions=corruptions or COMMON_CORRUPTIONS,
                                         alexnet_normalise=alexnet_normalise,
                                         class_names=data_config.get("class_names"))
        else:
            if corruption_dir:
                folder = Path(corruption_dir)
                _check_geometry(folder, data_config)
                print(f"robustness: published-layout folder {folder}, "
                      f"{'all' if count is None else count} images per corruption and severity")
            else:
                folder, source = _generated_set(datamodule, n, corruptions, cache_dir, seed, workers)
                count = None
            preprocess = _published_preprocess(data_config) if corruption_dir else normalize_for(data_config)
            report = evaluate_corruptions(model, folder, preprocess=preprocess, n=count,
                                          corruptions=corruptions, batch_size=batch_size, device=chosen)
        report.update({"checkpoint": str(weights), "data": name, "command": command})
        markdown = (f"# Corruption robustness: {report['checkpoint']} on {name}\n\n{_command_line(command)}{source}"
                    + format_robustness_report(report))
        folder_out.mkdir(parents=True, exist_ok=True)
        (folder_out / f"{stem}.md").write_text(markdown)
        (folder_out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
        _write_accuracy_csv(folder_out / f"{stem}.csv", report["accuracy"])
        print(markdown)
        print(f"wrote {folder_out / stem}.md, .json and .csv")
        return report


def _command_line(command: str) -> str:
    """The report's ``Command:`` paragraph; none for a report written from Python (``command=""``)."""
    if not isinstance(command, str):
        raise ConfigError(f"command must be the command line that reproduces the report (a str, '' for none), got "
                          f"{command!r}")
    return f"Command: `{command}`\n\n" if command.strip() else ""


def _write_accuracy_csv(path: Path, accuracy: dict[str, dict[int, float]]) -> None:
    """``corruption,severity,accuracy`` rows (accuracy a fraction), one per evaluated set, for spreadsheets and
    pandas (``pd.read_csv(path).pivot(index="corruption", columns="severity", values="accuracy")``)."""
    import csv

    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["corruption", "severity", "accuracy"])
        for corruption, per_severity in accuracy.items():
            writer.writerows([corruption, severity, repr(float(value))] for severity, value in per_severity.items())


def diagnose_checkpoint(checkpoint: str | Path, *, data: str | None = None, root: str | None = None,
                        n: str | int | None = None, patch_size: int | None = None, kinds: Sequence[str] | None = None,
                        replace_rate: float = 0.25, seed: int = 0, batch_size: int = 256, device: str | None = None,
                        out: str | Path | None = None, command: str = "") -> dict[str, Any]:
    """`vitlab.eval.diagnostics.diagnose_negatives` of a checkpoint (``model.safetensors`` or a run folder) on the
    first ``n`` test images (see `count_test_images`), written as ``<out>/diagnose_negatives_<data>.md`` and ``.json``
    (``out`` default: the checkpoint's folder); the arguments are those of ``vitlab diagnose-negatives --help``.

    ``patch_size`` defaults to the model's own (`vitlab.eval.diagnostics.model_patch_size`); ``command`` (the command
    line that reproduces it) is recorded in both files. Returns the result dict (``diagnose_negatives``' plus
    ``checkpoint``, ``data``, ``model_patch_size``, ``seed`` and ``command``).

    Usage (with a trained run folder)::

        result = diagnose_checkpoint("runs/vit_fashion_mnist", n=500, kinds=["shuffle"])
        result["views"]["shuffle"]["accuracy"]
    """
    _check_checkpoint(checkpoint)
    _command_line(command)  # a non-str command is refused now, not after the evaluation
    from vitlab.augment import KINDS, NegativeViews
    from vitlab.eval.diagnostics import diagnose_negatives, format_negative_diagnostics, model_patch_size

    if patch_size is not None and (isinstance(patch_size, bool) or not isinstance(patch_size, int) or patch_size < 1):
        raise ConfigError(f"patch_size must be an int >= 1 (the views' cell size in px) or None for the model's own, "
                          f"got {patch_size!r}")
    parse_n(n)  # refuse a bad --n before loading the model and data
    if kinds is not None and "infill" not in kinds and replace_rate != 0.25:
        raise ConfigError(f"--replace_rate {replace_rate} applies to the infill view only, which --kinds {list(kinds)} "
                          "leaves out: add infill to --kinds or drop --replace_rate")
    root = run_data_root(checkpoint, data, root)
    with checkpoint_weights(checkpoint) as weights_file:  # a Lightning .ckpt: its weights as model.safetensors
        model, _, datamodule = load_checkpoint_and_test_data(weights_file, data, root, batch_size)
        stem, weights = f"diagnose_negatives_{datamodule.name}", _named_weights(checkpoint)
        folder = _report_folder(out, weights, stem)
        own = model_patch_size(model)
        cell = own if patch_size is None else patch_size
        if cell is None:
            raise ConfigError(f"{type(model).__name__} has no patch_embed.patch_size: give the cell size with "
                              "--patch_size")
        available = len(datamodule.test_dataset)
        count = count_test_images(n, available, f"the {datamodule.name}")
        aligned = "" if own is None else (f"; model patch size {own} px, "
                                          f"{'aligned' if cell % own == 0 else 'NOT aligned (not a multiple)'}")
        print(f"diagnose-negatives: {count} of {available} {datamodule.name} test images (--n {n or 'default'}), "
              f"views with {cell}-px cells{aligned}")
        chosen = resolve_device(device)
        if kinds is None and "infill" in KINDS:  # every kind by default: say how to leave out one the grid cannot make
            config = datamodule.data_config()
            probe = torch.zeros(1, int(config["in_chans"]), int(config["img_size"]), int(config["img_size"]))
            try:
                NegativeViews(["infill"], cell, replace_rate=replace_rate)(probe)
            except ConfigError as err:
                others = [kind for kind in KINDS if kind != "infill"]
                raise ConfigError(f"{err}; or leave the infill view out: --kinds '[{', '.join(others)}]'") from None
        kinds = list(KINDS) if kinds is None else kinds  # [] is refused by diagnose_negatives, not taken as "all"
        result = diagnose_negatives(model, datamodule.test_dataloader(), cell, kinds=kinds, n=count, device=chosen,
                                    seed=seed, replace_rate=replace_rate)
        result.update({"checkpoint": str(weights), "data": datamodule.name,
                       "model_patch_size": own, "seed": seed, "command": command})
        markdown = (f"# Negative-view diagnostics: {result['checkpoint']} on {datamodule.name}\n\n"
                    f"{_command_line(command)}"
                    + (f"Views with {cell}-px cells{aligned}.\n\n" if aligned else "")
                    + format_negative_diagnostics(result))
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{stem}.md").write_text(markdown)
        (folder / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
        print(markdown)
        print(f"wrote {folder / stem}.md and .json")
        return result
