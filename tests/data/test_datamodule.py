"""build_datamodule / VitlabDataModule: splits, batches, geometry, channels, errors, augmentation, Lightning wiring."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image

from vitlab.data import DATASET_NAMES, EpochRandomSampler, build_datamodule, build_eval_transform, few_shot_indices
from vitlab.data import datamodule as dm_mod
from vitlab.data.readers import read_digits

from .conftest import STEMS, write_cifar, write_idx, write_image_folder


def ready(*args, **kwargs):
    dm = build_datamodule(*args, **kwargs)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def unnormalize(x: torch.Tensor, dm) -> torch.Tensor:
    mean, std = torch.tensor(dm.mean).view(-1, 1, 1), torch.tensor(dm.std).view(-1, 1, 1)
    return ((x * std + mean) * 255).round()


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError) as err:
        build_datamodule("svhn")
    assert "svhn" in str(err.value) and "valid names: " + ", ".join(DATASET_NAMES) in str(err.value)


@pytest.mark.parametrize("kwargs,match", [
    ({"img_size": 2}, "img_size"), ({"in_chans": 2}, "in_chans"), ({"val_fraction": 1.0}, "val_fraction"),
    ({"augment": "autoaugment"}, "valid presets"), ({"mixup": 0.8, "batch_size": 7}, "even batch_size"),
    ({"random_erasing": 1.5}, "probability"), ({"train_images": "x"}, "name='idx' only"),
    ({"mean": [0.5]}, "both mean and std"),
    ({"root": "/somewhere"}, r"leave root unset \(root=None; data.root: null\)"),
])
def test_bad_arguments_fail_with_the_fix(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ready("digits", **kwargs)


def test_digits_batches_shapes_dtypes_and_normalisation():
    dm = ready("digits", img_size=8, batch_size=64, val_fraction=0.1)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (64, 1, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert (dm.num_classes, dm.in_chans, dm.img_size, dm.class_names[9]) == (10, 1, 8, "9")
    everything = torch.cat([b[0] for b in dm.train_dataloader()])
    assert abs(everything.mean().item()) < 0.05 and abs(everything.std().item() - 1) < 0.05  # constants fit the data
    tx, ty = next(iter(dm.test_dataloader()))
    _, test = read_digits()
    assert torch.equal(unnormalize(tx, dm), test.images[: len(tx)].float())  # exact inverse, file order
    assert torch.equal(ty, test.labels[: len(ty)])


def test_validation_split_is_deterministic_disjoint_and_complete(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (40, 28, 28), dtype=np.uint8)
    for key, arr in {"train_images": images, "train_labels": np.arange(40) % 10,
                     "test_images": images[:4], "test_labels": np.arange(4)}.items():
        write_idx(tmp_path / STEMS[key], np.asarray(arr, dtype=np.uint8))

    def split(seed):
        dm = ready("idx", root=tmp_path, val_fraction=0.25, seed=seed)
        return dm.train_dataset.images, dm.val_dataset.images

    train0, val0 = split(0)
    assert len(val0) == 10 and len(train0) == 30
    rows = {bytes(img.numpy()) for img in torch.cat([train0, val0])}
    assert rows == {bytes(img[None]) for img in images}  # disjoint and together the full training set
    assert torch.equal(split(0)[1], val0) and not torch.equal(split(1)[1], val0)
    assert len(ready("idx", root=tmp_path, val_fraction=0.25, limit_train=7).train_dataset) == 7


@pytest.mark.parametrize("img_size", [28, 32, 48])
def test_mnist_family_padding_rule_and_eval_transform_agree(mnist_dir, img_size):
    root, arrays = mnist_dir
    dm = ready("idx", root=root, img_size=img_size, in_chans=3)
    x, y = dm.test_dataset[5]
    assert x.shape == (3, img_size, img_size) and torch.equal(x[0], x[2]) and int(y) == arrays["test_labels"][5]
    pixels = unnormalize(x, dm)[0]
    if img_size == 28:
        assert torch.equal(pixels, torch.from_numpy(arrays["test_images"][5]).float())
    elif img_size == 32:
        assert torch.equal(pixels[2:30, 2:30], torch.from_numpy(arrays["test_images"][5]).float())
        assert pixels[:2].abs().sum() == 0 and pixels[:, 30:].abs().sum() == 0  # zero padding, not resizing
    config = dm.data_config()
    assert config["mean"] == list(dm.mean) and len(config["mean"]) == 3 and config["pad_to"] == 32
    assert torch.allclose(build_eval_transform(config)(arrays["test_images"][5]), x, atol=1e-5)


def test_idx_explicit_paths_and_missing_file_error(tmp_path, mnist_dir):
    root, arrays = mnist_dir
    gz = tmp_path / "gz"
    for key, stem in STEMS.items():
        write_idx(gz / f"{stem}.gz", arrays[key], gz=True)
    dm = ready("idx", root=gz, train_images=f"{STEMS['train_images']}.gz",
               test_labels=str(gz / f"{STEMS['test_labels']}.gz"))
    assert dm.test_dataset.labels.tolist() == arrays["test_labels"].tolist()
    with pytest.raises(FileNotFoundError, match="train_labels: no path given"):
        ready("idx", train_images=str(gz / f"{STEMS['train_images']}.gz"))


@pytest.mark.parametrize("name,k", [("cifar10", 10), ("cifar100", 100)])
def test_cifar_datamodule(tmp_path, name, k):
    written = write_cifar(tmp_path, name)
    dm = ready(name, root=tmp_path, batch_size=4, val_fraction=0.2)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 3, 32, 32) and dm.num_classes == k and list(dm.class_names) == written["class_names"]
    assert dm.test_dataset.labels.tolist() == written["test_labels"]
    with pytest.raises(ValueError, match="build the model with in_chans=3"):
        build_datamodule(name, root=tmp_path, in_chans=1).setup()


def test_imagefolder_datamodule(tmp_path):
    root = write_image_folder(tmp_path / "imgs")
    dm = ready("imagefolder", root=root, img_size=16, batch_size=3, val_fraction=0.2)
    assert dm.class_names == ("cat", "dog", "eel") and dm.in_chans == 3 and len(dm.val_dataset) == 2
    assert [label for _, label in dm.test_dataset.samples] == [0, 0, 2]  # test/ lacks dog: labels follow train/
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (3, 3, 16, 16) and y.dtype == torch.int64
    first = dm.test_dataset[0][0]
    with Image.open(dm.test_dataset.samples[0][0]) as img:
        assert torch.allclose(build_eval_transform(dm.data_config())(img), first, atol=1e-5)
    assert ready("imagefolder", root=root, img_size=16, in_chans=1).test_dataset[0][0].shape == (1, 16, 16)
    (root / "test" / "fox").mkdir()
    Image.new("RGB", (4, 4)).save(root / "test" / "fox" / "a.png")
    with pytest.raises(ValueError, match=r"class folders \['fox'\]"):
        ready("imagefolder", root=root)
    with pytest.raises(ValueError, match="train/<class>"):
        _ = build_datamodule("imagefolder").num_classes


def test_missing_data_errors_name_the_fix(tmp_path, monkeypatch):
    user_root = tmp_path / "my_data"
    user_root.mkdir()
    dm = build_datamodule("fashion_mnist", root=user_root)
    dm.prepare_data()  # must not install into a user's root
    assert list(user_root.iterdir()) == []
    with pytest.raises(FileNotFoundError) as err:
        dm.setup()
    msg = str(err.value)
    assert str(user_root) in msg and "train-images-idx3-ubyte[.gz]" in msg
    assert "vitlab data install fashion_mnist" in msg
    with pytest.raises(FileNotFoundError, match="not installed in vitlab's cache.*vitlab data install mnist"):
        build_datamodule("mnist").setup()
    with pytest.raises(FileNotFoundError, match="data_batch_1"):
        build_datamodule("cifar10", root=user_root).setup()


def test_prepare_data_installs_into_cache_only_without_root(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(dm_mod, "install_dataset", lambda *a, **k: calls.append((a, k)))
    build_datamodule("mnist", root=tmp_path).prepare_data()
    assert calls == []
    build_datamodule("mnist", cache_dir=tmp_path / "c").prepare_data()
    assert calls == [(("mnist", str(tmp_path / "c")), {"progress": True})]


def test_mixup_gives_soft_labels_only_while_training():
    dm = ready("digits", batch_size=32, mixup=0.8, cutmix=1.0)
    batch = next(iter(dm.train_dataloader()))
    dm.trainer = SimpleNamespace(training=False)
    assert dm.on_after_batch_transfer(batch, 0)[1].dtype == torch.int64
    dm.trainer = SimpleNamespace(training=True)
    x, y = dm.on_after_batch_transfer((batch[0].clone(), batch[1]), 0)
    assert y.shape == (32, 10) and y.dtype == torch.float32
    assert torch.allclose(y.sum(1), torch.ones(32)) and (y.max(1).values < 1).any()
    assert all(len(b[1]) == 32 for b in dm.train_dataloader())  # last odd batch dropped


class _Recorder(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(1, 1)
        self.seen = {}

    def training_step(self, batch, _):
        self.seen["train"] = (batch[1].dtype, tuple(batch[1].shape))
        return self.layer(batch[0].mean().view(1, 1)).sum()

    def validation_step(self, batch, _):
        self.seen["val"] = (batch[1].dtype, tuple(batch[1].shape))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_mixup_inside_lightning_fit():
    module = _Recorder()
    trainer = L.Trainer(fast_dev_run=1, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False)
    trainer.fit(module, datamodule=build_datamodule("digits", batch_size=16, mixup=0.5))
    assert module.seen == {"train": (torch.float32, (16, 10)), "val": (torch.int64, (16,))}


def test_random_erasing_and_augment_touch_only_training_images():
    plain = ready("digits", batch_size=16, seed=3)
    erased = ready("digits", batch_size=16, seed=3, random_erasing=1.0, augment="randaugment")
    (xa, ya), (xb, yb) = next(iter(plain.train_dataloader())), next(iter(erased.train_dataloader()))
    assert torch.equal(ya, yb) and all(not torch.equal(a, b) for a, b in zip(xa, xb, strict=True))
    assert torch.equal(next(iter(plain.test_dataloader()))[0], next(iter(erased.test_dataloader()))[0])
    assert torch.equal(plain.val_dataset[0][0], erased.val_dataset[0][0])


def test_epoch_sampler_is_seeded_per_epoch():
    def order(seed, epoch=None):
        sampler = EpochRandomSampler(range(50), seed=seed)
        if epoch is not None:
            sampler.set_epoch(epoch)
        return list(sampler)

    assert order(0) == order(0) == order(0, 0) and sorted(order(0)) == list(range(50))
    assert order(0, 1) != order(0, 0) and order(1) != order(0)
    sampler = EpochRandomSampler(range(50), seed=0)
    assert [list(sampler), list(sampler)] == [order(0, 0), order(0, 1)]  # without set_epoch: advances itself


def test_val_fraction_zero_disables_validation():
    dm = ready("digits", val_fraction=0.0)
    assert dm.val_dataloader() == [] and len(dm.train_dataset) == 1437


@pytest.mark.parametrize("name", ["fashion_mnist", "mnist"])
def test_real_dataset_datamodule(real_data_dir, name):
    if not (Path(real_data_dir) / name).is_dir():
        pytest.fail(f"{name} is not installed in {real_data_dir}: `make test` installs it first (`make data`), or run "
                    f"`vitlab data install {name}`")
    dm = ready(name, cache_dir=real_data_dir, batch_size=500)
    assert (len(dm.train_dataset), len(dm.val_dataset), len(dm.test_dataset)) == (54000, 6000, 10000)
    x, y = next(iter(dm.test_dataloader()))
    assert x.shape == (500, 1, 32, 32) and x[:, :, :2].eq(x[0, 0, 0, 0]).all()  # padded border = normalised zero
    assert dm.test_dataset.labels.bincount().tolist() == ([1000] * 10 if name == "fashion_mnist" else
                                                          [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009])


def _labelled_idx(root: Path, labels: np.ndarray) -> None:
    """An idx dataset whose image i is filled with the value i (so a subset's indices can be read off its images)."""
    images = np.repeat(np.arange(len(labels), dtype=np.uint8)[:, None, None], 28, axis=1).repeat(28, axis=2)
    for key, arr in {"train_images": images, "train_labels": labels, "test_images": images[:4],
                     "test_labels": labels[:4]}.items():
        write_idx(root / STEMS[key], np.asarray(arr, dtype=np.uint8))


def test_few_shot_keeps_k_per_class_of_the_training_split_deterministically(tmp_path):
    labels = np.arange(60) % 3  # 3 classes, 20 images each
    _labelled_idx(tmp_path, labels)

    def few_shot(shots, seed, val_fraction=0.25):
        dm = ready("idx", root=tmp_path, val_fraction=val_fraction, few_shot={"shots": shots, "seed": seed})
        return dm, dm.train_dataset.labels.tolist()

    dm, picked = few_shot(4, 0)
    assert len(dm.train_dataset) == 12 and sorted(np.bincount(picked).tolist()) == [4, 4, 4]  # class balance
    full = ready("idx", root=tmp_path, val_fraction=0.25)
    # the subset comes from the training split only (never a validation image), and validation is untouched
    assert set(dm.train_dataset.images[:, 0, 0, 0].tolist()) <= set(full.train_dataset.images[:, 0, 0, 0].tolist())
    assert torch.equal(dm.val_dataset.images, full.val_dataset.images)
    assert torch.equal(few_shot(4, 0)[0].train_dataset.images, dm.train_dataset.images)  # same seed, same subset
    assert not torch.equal(few_shot(4, 1)[0].train_dataset.images, dm.train_dataset.images)
    # the same images as few_shot_indices drawn on the training split's labels (what peft-study used to patch in)
    expected = full.train_dataset.images[few_shot_indices(full.train_dataset.labels, 4, 0)]
    assert torch.equal(dm.train_dataset.images, expected)


@pytest.mark.parametrize("few_shot,match", [
    ({"shots": 0, "seed": 0}, "shots must be an int >= 1"), ({"shots": 2.5, "seed": 0}, "shots must be an int"),
    ({"shots": 2, "seed": -1}, r"seed must be an int in 0\.\.2\*\*63 - 1"),
    ({"k": 2, "seed": 0}, "exactly the keys shots and seed"),
    (5, "exactly the keys shots and seed"), ({"shots": True, "seed": 0}, "shots must be an int"),
])
def test_few_shot_refuses_bad_values_naming_the_fix(few_shot, match):
    with pytest.raises(ValueError, match=match):
        build_datamodule("digits", few_shot=few_shot)


def test_few_shot_refuses_more_shots_than_a_class_has(tmp_path):
    _labelled_idx(tmp_path, np.arange(20) % 2)
    with pytest.raises(ValueError, match="fewer than k=9"):
        ready("idx", root=tmp_path, val_fraction=0.25, few_shot={"shots": 9, "seed": 0})


def test_few_shot_indices_is_balanced_seeded_and_leaves_the_global_rng_alone():
    labels = torch.arange(100) % 5
    state = torch.random.get_rng_state()
    picked = few_shot_indices(labels, 3, seed=7)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.bincount(labels[picked]).tolist() == [3] * 5 and torch.equal(picked, picked.sort().values)
    assert torch.equal(few_shot_indices(labels, 3, seed=7), picked)
    with pytest.raises(ValueError, match="1-D integer"):
        few_shot_indices(torch.zeros(4), 1, 0)


class _Predictor(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Linear(64, 10)

    def predict_step(self, batch, batch_idx):
        images, labels = batch
        return self.net(images.flatten(1)).argmax(1), labels


def test_plain_trainer_predict_runs_on_the_test_split_in_file_order():
    dm = build_datamodule("digits", img_size=8, batch_size=100, eval_batch_size=128)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    batches = trainer.predict(_Predictor(), datamodule=dm)
    labels = torch.cat([labels for _, labels in batches])
    assert [len(b[0]) for b in batches] == [128, 128, 104]
    assert torch.equal(labels, torch.as_tensor(read_digits()[1].labels, dtype=torch.int64))


def test_persistent_workers_option():
    assert ready("digits", num_workers=1, persistent_workers=False).train_dataloader().persistent_workers is False
    assert ready("digits", num_workers=1).val_dataloader().persistent_workers is True  # default: with workers
    assert ready("digits").test_dataloader().persistent_workers is False
    with pytest.raises(ValueError, match=r"num_workers=0 starts none: set num_workers >= 1"):
        build_datamodule("digits", persistent_workers=True)
    with pytest.raises(ValueError, match=r"persistent_workers must be True or False"):
        build_datamodule("digits", num_workers=1, persistent_workers="yes")


def test_val_fraction_that_rounds_to_no_image_warns_and_one_names_the_fix(tmp_path):
    root = write_image_folder(tmp_path / "images")  # 10 training images
    with pytest.warns(UserWarning, match=r"val_fraction=0.04 of 10 training images rounds to 0 validation images"):
        dm = ready("imagefolder", root=root, img_size=8, val_fraction=0.04)
    assert len(dm.val_dataset) == 0 and len(dm.train_dataset) == 10
    with pytest.raises(ValueError, match=r"1 would leave no training image; 0 disables validation"):
        build_datamodule("digits", val_fraction=1)


@pytest.mark.parametrize("name,kwargs,match", [
    ("cifar10", {"in_chans": 1}, r"cifar10 images have 3 channels but in_chans=1 was requested; build the model"),
    ("cifar100", {"mean": [0.5, 0.5], "std": [0.5, 0.5]}, r"mean/std need one value per data channel \(3\)"),
    ("mnist", {"mean": [0.5, 0.5], "std": [0.5, 0.5], "in_chans": 3}, r"per model input channel \(3\), got"),
])
def test_channel_misfits_of_known_datasets_are_refused_when_built_not_in_setup(tmp_path, name, kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_datamodule(name, root=tmp_path / "no_files_needed", **kwargs)


@pytest.mark.parametrize("name,kwargs,match", [
    ("imagefolder", {}, r"imagefolder reads your own images: pass root=PATH laid out as root/train/<class>"),
    ("idx", {}, r"(?s)train_images: no path given .*\nPass root=FOLDER holding the four MNIST-layout files"),
    ("idx", {"train_images": "a", "train_labels": "b"}, r"(?s)test_images: no path given .*or the paths train_images="),
])
def test_user_file_datasets_without_root_are_refused_when_built(name, kwargs, match):
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        build_datamodule(name, **kwargs)


@pytest.mark.parametrize("name,guess", [("MNIST", "mnist"), ("fashion-mnist", "fashion_mnist"),
                                        ("cifar-10", "cifar10")])
def test_a_misspelt_dataset_name_suggests_the_valid_one(name, guess):
    with pytest.raises(ValueError, match=rf"unknown dataset '{name}' \(did you mean '{guess}'\?\); valid names: mnist"):
        build_datamodule(name)


@pytest.mark.parametrize("name", ["cifar10", "mnist", "imagefolder", "idx"])
def test_a_root_that_is_a_file_says_to_pass_the_folder(tmp_path, name):
    archive = tmp_path / "cifar-10-python.tar.gz"
    archive.write_bytes(b"\x1f\x8b")
    with pytest.raises(ValueError, match=r"is a file, not a folder: pass the folder .*unpack an archive first"):
        build_datamodule(name, root=archive)
