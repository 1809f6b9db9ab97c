"""Corruption sets: the CIFAR-10-C cache layout, generation, completion, and evaluation of a hand-made folder."""

import json

import imagecorruptions  # noqa: F401  (dev extra: corruption generation needs it)
import numpy as np
import pytest
import torch
from torch import nn

from vitlab.data.transforms import Normalize
from vitlab.eval import ALL_CORRUPTIONS, corrupt_images, evaluate_corruptions, generate_corruption_set
from vitlab.eval.corruptions import images_from_loader

from .off_cpu import OffCpu

CONTRAST = [0.4, 0.3, 0.2, 0.1, 0.05]  # imagecorruptions' contrast factor per severity


def grey_images(count: int, seed: int = 0) -> np.ndarray:
    """uint8 (count, 32, 32, 1): a vertical ramp plus a bright square, different per image."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(40, 200, 32)[:, None] * np.ones((1, 32))
    out = np.repeat(ramp[None], count, axis=0)
    for i in range(count):
        top, left = rng.integers(0, 20, 2)
        out[i, top : top + 10, left : left + 10] = rng.uniform(0, 255)
    return np.round(out).astype(np.uint8)[..., None]


class PixelClassifier(nn.Module):
    """Predicts class ``round(255 * x[:, 0, 0, 0])``: lets a test decide every prediction through one pixel."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.one_hot((x[:, 0, 0, 0] * 255).round().long(), self.num_classes).float()


def test_generated_set_has_the_cifar_c_layout(tmp_path):
    images, labels = grey_images(5), np.array([3, 1, 4, 1, 5])
    folder = generate_corruption_set(images, labels, tmp_path / "set", corruptions=["contrast", "gaussian_noise"],
                                     seed=0, workers=1, chunk_size=2, progress=False)
    assert sorted(p.name for p in folder.iterdir()) == ["clean.npy", "contrast.npy", "gaussian_noise.npy",
                                                       "labels.npy", "meta.json"]
    contrast = np.load(folder / "contrast.npy")
    assert contrast.shape == (25, 32, 32, 1) and contrast.dtype == np.uint8
    stored = np.load(folder / "labels.npy")
    assert stored.dtype == np.int64 and stored.tolist() == labels.tolist() * 5
    np.testing.assert_array_equal(np.load(folder / "clean.npy"), images)
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["generated"] is True and meta["n"] == 5 and meta["seed"] == 0 and meta["shape"] == [32, 32, 1]
    assert meta["corruptions"] == ["gaussian_noise", "contrast"]  # in ALL_CORRUPTIONS order
    assert meta["versions"]["imagecorruptions-imaug"] != "missing"
    # severity-major: rows [(s-1) N, s N) are severity s, in image order (contrast keeps each image's mean and scales
    # its spread by the severity's factor)
    clean = images.astype(np.float64)
    for severity, factor in enumerate(CONTRAST, start=1):
        block = contrast[(severity - 1) * 5 : severity * 5].astype(np.float64)
        np.testing.assert_allclose(block.mean(axis=(1, 2, 3)), clean.mean(axis=(1, 2, 3)), atol=1.0)
        np.testing.assert_allclose(block.std(axis=(1, 2, 3)) / clean.std(axis=(1, 2, 3)), factor, atol=0.02)
    noise = np.load(folder / "gaussian_noise.npy").astype(np.float64)
    deviation = [np.abs(noise[(s - 1) * 5 : s * 5] - clean).mean() for s in range(1, 6)]
    assert deviation == sorted(deviation) and deviation[0] > 5


@pytest.mark.slow  # spawns 2 worker processes, each importing torch
def test_the_number_of_workers_does_not_change_the_result(tmp_path):
    images, labels = grey_images(5, seed=1), np.arange(5)
    kwargs = {"corruptions": ["gaussian_noise", "glass_blur"], "seed": 4, "progress": False}
    one = generate_corruption_set(images, labels, tmp_path / "one", workers=1, chunk_size=2, **kwargs)
    two = generate_corruption_set(images, labels, tmp_path / "two", workers=2, chunk_size=2, **kwargs)
    other_seed = generate_corruption_set(images, labels, tmp_path / "seed", workers=1, chunk_size=2,
                                         **dict(kwargs, seed=5))
    for name in ("gaussian_noise.npy", "glass_blur.npy"):
        np.testing.assert_array_equal(np.load(one / name), np.load(two / name))
        assert not np.array_equal(np.load(one / name), np.load(other_seed / name))


def test_existing_set_is_completed_not_redone(tmp_path):
    images, labels = grey_images(3), np.array([0, 1, 2])
    folder = generate_corruption_set(images, labels, tmp_path / "set", corruptions=["contrast"], workers=1,
                                     progress=False)
    first = (folder / "contrast.npy").stat().st_mtime_ns
    generate_corruption_set(images, labels, folder, corruptions=["contrast", "pixelate"], workers=1, progress=False)
    assert (folder / "contrast.npy").stat().st_mtime_ns == first
    assert np.load(folder / "pixelate.npy").shape == (15, 32, 32, 1)
    assert json.loads((folder / "meta.json").read_text())["corruptions"] == ["contrast", "pixelate"]
    with pytest.raises(ValueError, match="other images or another seed"):
        generate_corruption_set(grey_images(3, seed=9), labels, folder, corruptions=["contrast"], progress=False)
    with pytest.raises(ValueError, match="other images or another seed"):
        generate_corruption_set(images, labels, folder, corruptions=["contrast"], seed=1, progress=False)


@pytest.mark.parametrize("corruption", ALL_CORRUPTIONS)
def test_every_corruption_runs_on_small_grey_and_rgb_images(corruption):
    grey = grey_images(2, seed=2)
    rgb = np.concatenate([grey, 255 - grey, grey // 2], axis=-1)
    for images in (grey, rgb):
        out = corrupt_images(images, corruption, 5, seed=3)
        assert out.shape == images.shape and out.dtype == np.uint8
        assert np.abs(out.astype(int) - images).mean() > 1.0  # severity 5 visibly changes the images
        np.testing.assert_array_equal(out, corrupt_images(images, corruption, 5, seed=3))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((np.zeros((2, 28, 28, 1), np.uint8), "contrast", 1), "img_size=32"),
        ((np.zeros((2, 32, 32, 2), np.uint8), "contrast", 1), "1 or 3 channels"),
        ((np.zeros((2, 32, 32, 3), np.float32), "contrast", 1), "uint8"),
        ((np.zeros((2, 32, 32, 3), np.uint8), "haze", 1), "unknown corruption 'haze'"),
        ((np.zeros((2, 32, 32, 3), np.uint8), "contrast", 0), "severity must be in 1..5"),
    ],
)
def test_bad_inputs_name_the_fix(args, message):
    with pytest.raises(ValueError, match=message):
        corrupt_images(*args, seed=0)


def _published_folder(tmp_path, count=4):
    """A CIFAR-10-C-layout folder whose pixel (0, 0) sets PixelClassifier's prediction: known accuracies."""
    labels = np.array([2, 7, 7, 1])[:count]
    folder = tmp_path / "published"
    folder.mkdir()
    np.save(folder / "labels.npy", np.tile(labels, 5))
    correct = {"gaussian_noise": [4, 3, 2, 1, 0], "fog": [4, 4, 2, 2, 0], "saturate": [1, 1, 1, 1, 1]}
    for name, per_severity in correct.items():
        data = np.zeros((5 * count, 32, 32, 3), dtype=np.uint8)
        for severity, right in enumerate(per_severity, start=1):
            rows = slice((severity - 1) * count, severity * count)
            data[rows, 0, 0, 0] = np.where(np.arange(count) < right, labels, (labels + 1) % 10)
        np.save(folder / f"{name}.npy", data)
    return folder


def test_evaluate_corruptions_on_a_published_layout_folder(tmp_path):
    folder = _published_folder(tmp_path)
    report = evaluate_corruptions(PixelClassifier(), folder, progress=False, batch_size=3)
    assert report["source"] == "published" and report["n"] == 4 and report["n_available"] == 4
    assert report["accuracy"] == {"gaussian_noise": {1: 1.0, 2: 0.75, 3: 0.5, 4: 0.25, 5: 0.0},
                                  "fog": {1: 1.0, 2: 1.0, 3: 0.5, 4: 0.5, 5: 0.0},
                                  "saturate": {s: 0.25 for s in range(1, 6)}}
    assert report["clean_accuracy"] is None
    metrics = report["metrics"]
    assert metrics["mean_accuracy"] == pytest.approx(5.5 / 10) and metrics["mce_unnormalised"] == pytest.approx(45.0)
    assert metrics["per_severity"] == pytest.approx({1: 1.0, 2: 0.875, 3: 0.5, 4: 0.375, 5: 0.0})
    assert metrics["extra_mean_accuracy"] == pytest.approx(0.25)
    # the first n images of every severity
    first_two = evaluate_corruptions(PixelClassifier(), folder, n=2, corruptions=["fog"], progress=False)
    assert first_two["n"] == 2 and first_two["accuracy"] == {"fog": {1: 1.0, 2: 1.0, 3: 1.0, 4: 1.0, 5: 0.0}}


def test_evaluate_corruptions_errors_name_the_fix(tmp_path):
    folder = _published_folder(tmp_path)
    with pytest.raises(FileNotFoundError, match="no labels.npy"):
        evaluate_corruptions(PixelClassifier(), tmp_path, progress=False)
    with pytest.raises(ValueError, match="n=5 but .* has 4 images per severity"):
        evaluate_corruptions(PixelClassifier(), folder, n=5, progress=False)
    with pytest.raises(ValueError, match=r"lacks corruption files for \['snow'\]"):
        evaluate_corruptions(PixelClassifier(), folder, corruptions=["snow"], progress=False)
    np.save(folder / "fog.npy", np.zeros((10, 32, 32, 3), np.uint8))
    with pytest.raises(ValueError, match="fog.npy has 10 rows but labels.npy has 20"):
        evaluate_corruptions(PixelClassifier(), folder, progress=False)


def test_generated_set_is_labelled_generated_with_its_clean_accuracy(tmp_path):
    images, labels = grey_images(4), np.array([0, 3, 3, 5])
    folder = generate_corruption_set(images, labels, tmp_path / "gen", corruptions=["contrast"], workers=1,
                                     progress=False)

    class Constant(nn.Module):  # always class 3 of 6
        def forward(self, x):
            return torch.tensor([0.0, 0.0, 0.0, 1.0, 0.0, 0.0]).expand(x.shape[0], 6)

    report = evaluate_corruptions(Constant(), folder, progress=False)
    assert report["source"] == "generated" and report["meta"]["generated"] is True
    assert report["clean_accuracy"] == 0.5 and report["accuracy"]["contrast"] == {s: 0.5 for s in range(1, 6)}


def test_images_from_loader_undoes_the_normalisation(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (10, 32, 32, 1), dtype=np.uint8)
    labels = torch.arange(10) % 3
    normalize = Normalize([0.286], [0.353], 3)  # grey repeated to 3 channels, as for a 3-channel model
    batches = [(normalize(torch.from_numpy(images[i : i + 4]).permute(0, 3, 1, 2)), labels[i : i + 4])
               for i in range(0, 10, 4)]
    got, got_labels = images_from_loader(batches, [0.286] * 3, [0.353] * 3, n=7, channels=1)
    np.testing.assert_array_equal(got, images[:7])
    assert got_labels.dtype == np.int64 and got_labels.tolist() == labels[:7].tolist()
    assert images_from_loader(batches, [0.286] * 3, [0.353] * 3)[0].shape == (10, 32, 32, 3)
    with pytest.raises(ValueError, match="asked for n=11 images but the loader has only 10"):
        images_from_loader(batches, [0.286] * 3, [0.353] * 3, n=11)
    with pytest.raises(ValueError, match="3 channels but mean has 1"):
        images_from_loader(batches, [0.286], [0.353])


def test_images_from_loader_takes_batches_on_another_device_than_the_cpu():
    """A loader yielding GPU batches (here `OffCpu`, which fails as a CUDA tensor does when it meets a CPU tensor or
    numpy) gives the same images and labels as the same batches on the CPU."""
    images = torch.rand(6, 3, 8, 8)
    labels = torch.arange(6) % 4
    on_cpu = [(images[:4], labels[:4]), (images[4:], labels[4:])]
    off_cpu = [(x.as_subclass(OffCpu), y.as_subclass(OffCpu)) for x, y in on_cpu]
    want, want_labels = images_from_loader(on_cpu, [0.5] * 3, [0.25] * 3, n=5)
    got, got_labels = images_from_loader(off_cpu, [0.5] * 3, [0.25] * 3, n=5)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(got_labels, want_labels)


def test_corrupting_leaves_the_global_numpy_stream_as_it_was():
    """corrupt_images seeded the global NumPy RNG (imagecorruptions reads it) and left it changed (issue 17: nothing
    reseeds the global RNG); the caller's stream now continues as if nothing ran, and the output is still seeded."""
    images = grey_images(2)
    np.random.seed(123)
    expected = np.random.rand(3)
    np.random.seed(123)
    first = corrupt_images(images, "gaussian_noise", 3, seed=0)
    np.testing.assert_array_equal(np.random.rand(3), expected)
    np.testing.assert_array_equal(corrupt_images(images, "gaussian_noise", 3, seed=0), first)
