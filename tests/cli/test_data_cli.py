"""``vitlab data list`` / ``vitlab data install``: --root, --json for scripts, a cache folder that cannot work."""

import json

import pytest

from vitlab.cli.main import main
from vitlab.data.registry import IDX_FILE_STEMS


def _fake_mnist(cache):
    folder = cache / "mnist"
    folder.mkdir(parents=True)
    for stem in IDX_FILE_STEMS.values():
        (folder / stem).write_bytes(b"")  # presence is all `is_installed` looks at
    return folder


def test_list_json_reads_the_root_given(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("VITLAB_DATA", str(tmp_path / "elsewhere"))
    folder = _fake_mnist(tmp_path / "cache")
    assert main(["data", "list", "--root", str(tmp_path / "cache"), "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows["mnist"] == {**rows["mnist"], "present": True, "path": str(folder)}
    assert not rows["cifar10"]["present"] and rows["cifar10"]["path"] == str(tmp_path / "cache" / "cifar10")
    assert main(["data", "list", "--json"]) == 0  # without --root: $VITLAB_DATA
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert not rows["mnist"]["present"] and rows["mnist"]["path"] == str(tmp_path / "elsewhere" / "mnist")


def test_install_of_an_installed_dataset_says_so_and_prints_json(tmp_path, capsys):
    folder = _fake_mnist(tmp_path)
    assert main(["data", "install", "mnist", "--root", str(tmp_path), "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out) == {"name": "mnist", "path": str(folder), "already_installed": True}
    assert "already installed" in captured.err
    assert main(["data", "install", "mnist", "--root", str(tmp_path)]) == 0
    assert capsys.readouterr().out == f"mnist: {folder}\n"


@pytest.mark.parametrize("where", ["root", "env"])
def test_a_file_as_the_cache_folder_is_one_line_naming_the_fix(tmp_path, capsys, monkeypatch, where):
    afile = tmp_path / "mnist.tar.gz"
    afile.write_bytes(b"x")
    args = ["--root", str(afile / "sub")] if where == "root" else []
    if where == "env":
        monkeypatch.setenv("VITLAB_DATA", str(afile))
    for command in (["data", "install", "mnist"], ["data", "list"]):
        assert main(command + args) == 1
        err = capsys.readouterr().err
        # was a FileExistsError from mkdir (install), or a listing of 'missing' datasets under the file (list)
        assert f"{afile} is a file, not a folder; pass --root FOLDER" in err and len(err.strip().splitlines()) == 1


def test_an_unwritable_cache_folder_and_an_empty_root_are_refused(tmp_path, capsys, monkeypatch):
    import os

    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: False if str(path) == str(tmp_path) else
                        real_access(path, mode))  # tests may run as root, for whom chmod does not bite
    assert main(["data", "install", "mnist", "--root", str(tmp_path / "cache")]) == 1
    assert f"cannot create or write {tmp_path / 'cache'} ({tmp_path} is not writable)" in capsys.readouterr().err
    assert main(["data", "install", "mnist", "--root", ""]) == 1
    assert "--root is empty" in capsys.readouterr().err
    assert main(["data", "install", "nosuch", "--root", str(tmp_path)]) == 1
    assert "unknown dataset 'nosuch'" in capsys.readouterr().err
