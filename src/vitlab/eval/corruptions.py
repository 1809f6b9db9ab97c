"""Common-corruption test sets: generate them with ``imagecorruptions-imaug`` or read a published CIFAR-C folder.

Layout (that of the published CIFAR-10-C / CIFAR-100-C, so both kinds of folder load the same way):
``<corruption>.npy`` uint8 ``(5 * N, H, W, C)``, severity-major (rows ``[(s - 1) N, s N)`` are severity ``s``),
and ``labels.npy`` int64 ``(5 * N,)``. A generated folder also holds ``clean.npy`` ``(N, H, W, C)`` (the source
images) and ``meta.json`` (``"generated": true``, package versions, seed, a hash of the source images); it is never
presented as the published benchmark. Note that imagecorruptions uses the ImageNet-C severities, so a generated
CIFAR set is *not* CIFAR-10-C.

Generation runs over processes (``workers``), in fixed-size chunks each seeded from ``(seed, corruption, severity,
chunk)``, so the result does not depend on the number of workers; finished corruptions are kept on disk and skipped
when the same images are generated again. Glass blur uses vitlab's vectorised `glass_blur`.

The worker processes are started with "spawn", which re-runs the top level of the calling script in each worker (as
DataLoader workers do on macOS / Windows): call these functions under ``if __name__ == "__main__":`` in a script. A
call from a script's top level outside that guard runs in one process instead, with a warning (same images);
interactive sessions, notebooks and ``python -c`` need no guard.

Example:
    >>> import tempfile
    >>> import numpy as np
    >>> images = np.zeros((2, 32, 32, 3), dtype=np.uint8)
    >>> folder = generate_corruption_set(images, np.array([0, 1]), Path(tempfile.mkdtemp()) / "set",
    ...                                  corruptions=["contrast"], workers=1, progress=False)
    >>> np.load(folder / "contrast.npy").shape
    (10, 32, 32, 3)
"""

from __future__ import annotations

import ast
import hashlib
import importlib.metadata
import inspect
import json
import multiprocessing
import os
import sys
import warnings
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from vitlab.errors import ConfigError, DataError
from vitlab.eval.defaults import SEVERITIES
from vitlab.eval.glass_blur import glass_blur

__all__ = [
    "ALL_CORRUPTIONS",
    "COMMON_CORRUPTIONS",
    "EXTRA_CORRUPTIONS",
    "SEVERITIES",
    "corrupt_images",
    "generate_corruption_set",
    "images_from_loader",
    "import_imagecorruptions",
]

#: The 15 ImageNet-C corruptions used for the headline numbers, in Hendrycks' order.
COMMON_CORRUPTIONS: tuple[str, ...] = (
    "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
    "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate", "jpeg_compression",
)
#: The 4 held-out ("validation") corruptions, reported separately.
EXTRA_CORRUPTIONS: tuple[str, ...] = ("speckle_noise", "gaussian_blur", "spatter", "saturate")
ALL_CORRUPTIONS: tuple[str, ...] = COMMON_CORRUPTIONS + EXTRA_CORRUPTIONS

_INSTALL = "pip install imagecorruptions-imaug"


def import_imagecorruptions():
    """Import the maintained fork ``imagecorruptions-imaug`` (module ``imagecorruptions``), or explain how."""
    try:
        import imagecorruptions
    except ImportError as error:
        raise ImportError(
            f"generating corruptions needs imagecorruptions-imaug: `{_INSTALL}` (the original imagecorruptions "
            "1.1.2 breaks on numpy 2)"
        ) from error
    return imagecorruptions


def _check_images(images: np.ndarray) -> None:
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4:
        kind = (f"{images.dtype} array of shape {images.shape}" if isinstance(images, np.ndarray)
                else type(images).__name__)
        raise ConfigError(f"images must be a uint8 numpy array (N, H, W, C), got a {kind}: convert float images in "
                          "[0, 1] with (x * 255).round().astype('uint8'), add a batch axis with x[None] (see "
                          "vitlab.eval.corruptions.images_from_loader)")
    if images.shape[-1] not in (1, 3):
        hint = " (channels-first? use images.transpose(0, 2, 3, 1))" if images.shape[1] in (1, 3) else ""
        raise ConfigError(f"images must have 1 or 3 channels on the last axis (N, H, W, C), got shape "
                          f"{images.shape}{hint}")
    if min(images.shape[1:3]) < 32:
        raise ConfigError(f"imagecorruptions needs images of at least 32x32 px, got {images.shape[1]}x"
                          f"{images.shape[2]}; build the test set with img_size=32 (MNIST-family data is padded to "
                          "32)")


def _is_int(value: object) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _check_seed(seed: object) -> None:
    if not _is_int(seed) or seed < 0:
        raise ConfigError(f"seed must be an int >= 0, got {seed!r}: pass e.g. seed=0")


def _check_corruption_names(corruptions: object) -> list[str]:
    """A list of known, distinct corruption names (a lone string is refused, not split into letters)."""
    if isinstance(corruptions, str):
        raise ConfigError(f"corruptions must be a list of names, got the string {corruptions!r}: pass "
                          f"[{corruptions!r}]")
    names = list(corruptions)
    unknown = [c for c in names if c not in ALL_CORRUPTIONS]
    if unknown:
        raise ConfigError(f"unknown corruptions {unknown}; valid: {', '.join(ALL_CORRUPTIONS)}")
    if not names:
        raise ConfigError(f"corruptions is empty: name at least one of {', '.join(ALL_CORRUPTIONS)}")
    if len(set(names)) != len(names):
        raise ConfigError(f"corruptions lists a name twice: {names}; give each corruption once")
    return names


def corrupt_images(images: np.ndarray, corruption: str, severity: int, seed: int) -> np.ndarray:
    """Apply one corruption at one severity to a batch ``(N, H, W, C)`` uint8 (C = 1 or 3) -> same shape.

    1-channel images are repeated to 3 channels for the corruption and averaged back. The global NumPy RNG (which
    imagecorruptions reads) is seeded from ``seed`` for the call and restored after it, so the output is a function of
    the arguments and the caller's global NumPy stream is left as it was.
    """
    _check_images(images)
    if not isinstance(corruption, str) or corruption not in ALL_CORRUPTIONS:
        raise ConfigError(f"unknown corruption {corruption!r}; valid: {', '.join(ALL_CORRUPTIONS)}")
    if not _is_int(severity) or severity not in SEVERITIES:
        raise ConfigError(f"severity must be in 1..5 (an int), got {severity!r}")
    _check_seed(seed)
    if images.shape[0] == 0:
        return images.copy()
    grey = images.shape[-1] == 1
    rgb = np.repeat(images, 3, axis=-1) if grey else images
    rng = np.random.default_rng(seed)
    if corruption == "glass_blur":
        out = glass_blur(rgb, severity, rng=rng)
    else:
        module = import_imagecorruptions()
        function = module.corruption_dict[corruption]
        takes_seed = "seed" in inspect.signature(function).parameters
        global_state = np.random.get_state()  # imagecorruptions draws from the global RNG: seed it, then put it back
        try:
            np.random.seed(int(rng.integers(2**31)))
            out = np.stack([
                module.corrupt(image, severity=severity, corruption_name=corruption,
                               **({"seed": int(rng.integers(2**31))} if takes_seed else {}))
                for image in rgb
            ])
        finally:
            np.random.set_state(global_state)
    return np.round(out.mean(axis=-1, keepdims=True)).astype(np.uint8) if grey else out


def _task(images: np.ndarray, corruption: str, severity: int, seed: int) -> np.ndarray:
    try:
        import cv2

        cv2.setNumThreads(1)
    except ImportError:
        pass
    return corrupt_images(images, corruption, severity, seed)


def _digest(images: np.ndarray, labels: np.ndarray) -> str:
    digest = hashlib.sha256(np.ascontiguousarray(images).tobytes())
    digest.update(np.ascontiguousarray(labels.astype(np.int64)).tobytes())
    return digest.hexdigest()


def _versions() -> dict[str, str]:
    versions = {}
    for package in ("imagecorruptions-imaug", "numpy", "scipy", "scikit-image", "opencv-python"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "missing"
    return versions


def generate_corruption_set(
    images: np.ndarray,
    labels: np.ndarray,
    folder: str | Path,
    corruptions: Sequence[str] | None = ALL_CORRUPTIONS,
    seed: int = 0,
    workers: int | None = None,
    chunk_size: int = 64,
    progress: bool = True,
    on_progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Generate (or complete) a corruption set for ``images`` in the CIFAR-C layout; returns the folder.

    Args:
        images: uint8 ``(N, H, W, C)``, C = 1 or 3, H and W >= 32 (the test images, un-normalised).
        labels: int ``(N,)`` labels.
        folder: output folder (created); an existing generated set of the same images is completed, not redone.
        corruptions: names from `ALL_CORRUPTIONS` (default, or ``None``: all 19).
        seed: base seed; each (corruption, severity, chunk) gets its own stream.
        workers: processes (default ``os.cpu_count()``); 1 runs in this process, as does a call from a script's
            top level outside ``if __name__ == "__main__":`` (the spawned workers would re-run that script; warns).
        chunk_size: images per task (fixed so the output does not depend on ``workers``).
        progress: show a tqdm bar.
        on_progress: optional callback ``(done_tasks, total_tasks)``.
    """
    _check_images(images)
    labels = np.asarray(labels)
    if labels.shape != (images.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise ConfigError(f"labels must be ints of shape ({images.shape[0]},), got {labels.shape} {labels.dtype}")
    if images.shape[0] == 0:
        raise ConfigError("images is empty (N = 0): pass at least one image")
    corruptions = _check_corruption_names(ALL_CORRUPTIONS if corruptions is None else corruptions)
    _check_seed(seed)
    if not _is_int(chunk_size) or chunk_size < 1:
        raise ConfigError(f"chunk_size must be an int >= 1, got {chunk_size!r}")
    if workers is not None and (not _is_int(workers) or workers < 1):
        raise ConfigError(f"workers must be an int >= 1 or None (one per CPU), got {workers!r}")
    folder = Path(folder).expanduser()
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{folder} is a file, not a folder: give a folder path for the corruption set")
    folder.mkdir(parents=True, exist_ok=True)
    digest = _digest(images, labels)
    meta_path = folder / "meta.json"
    if any(c != "glass_blur" for c in corruptions):
        import_imagecorruptions()
    if meta_path.exists():
        meta = _read_meta(meta_path)
        if meta.get("images_sha256") != digest or meta.get("seed") != seed:
            raise ConfigError(f"{folder} holds a corruption set of other images or another seed; use a new folder "
                             "or delete this one")
    else:
        meta = {"generated": True, "generator": "imagecorruptions-imaug (glass_blur: vitlab.eval.glass_blur)",
                "images_sha256": digest, "seed": seed, "n": int(images.shape[0]), "shape": list(images.shape[1:]),
                "severities": list(SEVERITIES), "versions": _versions(), "corruptions": []}
        meta_path.write_text(json.dumps(meta, indent=2))
    if not (folder / "clean.npy").is_file():  # also restores a set whose clean.npy / labels.npy were deleted
        np.save(folder / "clean.npy", images)
    if not (folder / "labels.npy").is_file():
        np.save(folder / "labels.npy", np.tile(labels.astype(np.int64), len(SEVERITIES)))
    todo = [c for c in corruptions if not (folder / f"{c}.npy").exists()]
    if todo:
        _generate(images, folder, todo, seed, workers, chunk_size, progress, on_progress)
    meta["corruptions"] = [c for c in ALL_CORRUPTIONS if (folder / f"{c}.npy").exists()]
    meta_path.write_text(json.dumps(meta, indent=2))
    return folder


def _read_meta(path: Path) -> dict:
    """A corruption set's ``meta.json`` as a dict; an unreadable one is a one-line `DataError`."""
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{path}: not a readable JSON file ({err}); delete the folder and generate the set "
                        "again") from None
    if not isinstance(meta, dict):
        raise DataError(f"{path} holds a {type(meta).__name__}, not a JSON object; delete the folder and generate "
                        "the set again")
    return meta


def _generate(images: np.ndarray, folder: Path, corruptions: Sequence[str], seed: int, workers: int | None,
              chunk_size: int, progress: bool, on_progress: Callable[[int, int], None] | None) -> None:
    from tqdm.auto import tqdm

    count = images.shape[0]
    starts = range(0, count, chunk_size)
    tasks = [(c, s, start) for c in corruptions for s in SEVERITIES for start in starts]
    outputs = {}
    for corruption in corruptions:
        path = folder / f"{corruption}.npy.partial"
        outputs[corruption] = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8,
                                                        shape=(len(SEVERITIES) * count, *images.shape[1:]))
    remaining = {c: len(SEVERITIES) * len(starts) for c in corruptions}
    bar = tqdm(total=len(tasks), desc="corruptions", unit="chunk", disable=not progress)

    def store(task: tuple[str, int, int], result: np.ndarray) -> None:
        corruption, severity, start = task
        row = (severity - 1) * count + start
        outputs[corruption][row : row + result.shape[0]] = result
        remaining[corruption] -= 1
        if remaining[corruption] == 0:
            outputs[corruption].flush()
            del outputs[corruption]
            os.replace(folder / f"{corruption}.npy.partial", folder / f"{corruption}.npy")
        bar.update(1)
        if on_progress is not None:
            on_progress(bar.n, len(tasks))

    def task_seed(task: tuple[str, int, int]) -> int:
        corruption, severity, start = task
        sequence = np.random.SeedSequence([seed, ALL_CORRUPTIONS.index(corruption), severity, start // chunk_size])
        return int(sequence.generate_state(1)[0])

    workers = (os.cpu_count() or 1) if workers is None else workers
    script = _unguarded_main_script() if workers > 1 else None
    if script is not None:
        warnings.warn(f"generating corruptions in one process, not {workers}: the call runs at the top level of "
                      f"{script} outside an `if __name__ == \"__main__\":` block, which each spawned worker would "
                      "re-run; put the call under that guard to use the workers", stacklevel=3)
        workers = 1
    if workers <= 1:
        for task in tasks:
            store(task, _task(images[task[2] : task[2] + chunk_size], task[0], task[1], task_seed(task)))
    else:
        # spawn, not fork: a process that already ran torch/tqdm threads (e.g. `vitlab study`) can fork children
        # that deadlock on a lock some thread held at fork time
        with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {pool.submit(_task, images[t[2] : t[2] + chunk_size], t[0], t[1], task_seed(t)): t
                       for t in tasks}
            for future in as_completed(futures):
                store(futures[future], future.result())
    bar.close()


def _is_main_guard(node: ast.stmt) -> bool:
    """Whether ``node`` is ``if __name__ == "__main__":`` (either operand order)."""
    if not isinstance(node, ast.If) or not isinstance(node.test, ast.Compare) or len(node.test.ops) != 1:
        return False
    operands = [node.test.left, *node.test.comparators]
    return (isinstance(node.test.ops[0], ast.Eq)
            and any(isinstance(o, ast.Name) and o.id == "__name__" for o in operands)
            and any(isinstance(o, ast.Constant) and o.value == "__main__" for o in operands))


def _unguarded_main_script() -> str | None:
    """The ``__main__`` script whose top level runs this call outside ``if __name__ == "__main__":`` (the code
    "spawn" workers re-run), or ``None``: a guarded call, an interactive session / notebook / ``python -c`` (no
    script to re-run), or a package's ``__main__`` (spawn does not re-run those)."""
    main = sys.modules.get("__main__")
    if not getattr(main, "__file__", None) or getattr(getattr(main, "__spec__", None), "name", "").endswith("__main__"):
        return None
    frame = inspect.currentframe()
    while frame is not None and not (frame.f_globals is vars(main) and frame.f_code.co_name == "<module>"):
        frame = frame.f_back
    if frame is None:  # e.g. a thread or an atexit hook: not the script's top level
        return None
    script, line = frame.f_code.co_filename, frame.f_lineno
    try:
        tree = ast.parse(Path(script).read_text())
    except (OSError, UnicodeDecodeError, SyntaxError, ValueError):
        return script  # cannot tell: one process is the safe side
    guarded = any(_is_main_guard(node) and node.body[0].lineno <= line <= node.body[-1].end_lineno
                  for node in tree.body)
    return None if guarded else script


@torch.no_grad()
def images_from_loader(
    loader: Iterable[tuple[Tensor, Tensor]],
    mean: Sequence[float],
    std: Sequence[float],
    n: int | None = None,
    channels: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Undo ``Normalize(mean, std)`` on a test loader: the first ``n`` images as uint8 ``(N, H, W, C)`` + labels.

    Args:
        loader: batches ``(images (B, C, H, W) normalised float, labels (B,))``, in a fixed order (no shuffling).
        mean: per-channel mean used by the loader's normalisation (fractions of 255).
        std: per-channel std.
        n: images to take (``None``: all).
        channels: keep only the first ``channels`` channels (1 for grey data repeated to 3 for the model).
    """
    if n is not None and (not _is_int(n) or n < 1):
        raise ConfigError(f"n must be an int >= 1 (images to take) or None for all of them, got {n!r}")
    if isinstance(mean, str | int | float) or isinstance(std, str | int | float) or len(mean) != len(std):
        raise ConfigError(f"mean and std must be sequences with one value per channel, got mean={mean!r}, "
                          f"std={std!r}: e.g. mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5]")
    if channels is not None and (not _is_int(channels) or not 1 <= channels <= len(mean)):
        raise ConfigError(f"channels must be an int in 1..{len(mean)} (channels to keep) or None, got {channels!r}")
    mean_t = torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1)
    std_t = torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1)
    images, labels, taken = [], [], 0
    for batch, target in loader:
        if not isinstance(batch, Tensor) or batch.ndim != 4:
            shape = tuple(batch.shape) if isinstance(batch, Tensor) else type(batch).__name__
            raise DataError(f"loader images must be tensors (B, C, H, W), got {shape}: the loader must yield "
                            "(images, labels) batches, channels first")
        if batch.shape[1] != mean_t.shape[1]:
            raise ConfigError(f"loader images have {batch.shape[1]} channels but mean has {mean_t.shape[1]} "
                              "entries: pass the mean and std the loader normalised with")
        # the statistics and the numpy result live on the CPU: a loader may yield batches on any device (CUDA)
        batch = batch.detach().to("cpu", torch.float32)
        pixels = ((batch * std_t + mean_t) * 255.0).round().clamp(0, 255).to(torch.uint8)
        if channels is not None:
            pixels = pixels[:, :channels]
        take = batch.shape[0] if n is None else min(batch.shape[0], n - taken)
        images.append(pixels[:take].permute(0, 2, 3, 1).numpy())
        labels.append(torch.as_tensor(target)[:take].detach().cpu().numpy())
        taken += take
        if n is not None and taken >= n:
            break
    if not images:
        raise DataError("the loader yielded no image: pass a loader of the (non-empty) test set")
    if n is not None and taken < n:
        raise ConfigError(f"asked for n={n} images but the loader has only {taken}: pass n <= {taken} or None")
    return np.concatenate(images), np.concatenate(labels).astype(np.int64)
