"""User-supplied ``augment`` callables of the datasets (torchvision v2 pipelines): a float, PIL or resized output, or
a preset name instead of a callable, is refused naming the fix; a size- and dtype-keeping v2 pipeline works."""

from __future__ import annotations

import pytest
import torch
from torchvision.transforms import v2

from vitlab.data import TensorImageDataset
from vitlab.data.transforms import Normalize
from vitlab.errors import ConfigError

IMAGES = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
LABELS = torch.arange(4)


def _dataset(augment) -> TensorImageDataset:
    return TensorImageDataset(IMAGES, LABELS, Normalize([0.5] * 3, [0.5] * 3, 3), img_size=16, augment=augment)


@pytest.mark.parametrize(("augment", "got"), [
    # was: "Normalize expects uint8 images ...: convert with (x * 255).round()" (still float: the fix did not work)
    (v2.Compose([v2.RandomHorizontalFlip(), v2.ToDtype(torch.float32, scale=True)]), r"got torch\.float32"),
    # was: 12-px images yielded silently by a dataset built with img_size=16
    (v2.Resize(12), r"got torch\.uint8 \[3, 12, 12\]"),
    # was: torch.stack's "expected Tensor as element 0 in argument 0, but got Image"
    (v2.ToPILImage(), r"got Image"),
])
def test_augment_output_that_is_not_uint8_of_the_same_shape_is_refused(augment, got):
    with pytest.raises(ConfigError, match=rf"augment must map a uint8 image \[3, 16, 16\].*{got}.*v2\.ToDtype"):
        _dataset(augment)[0]


def test_augment_given_as_a_preset_name_names_build_augment():
    # was: accepted, then "'str' object is not callable" inside the DataLoader
    with pytest.raises(ConfigError, match=r"build_augment\('randaugment'\)"):
        _dataset("randaugment")
    with pytest.raises(ConfigError, match=r"augment must be a callable or None, got int"):
        _dataset(3)


def test_a_size_keeping_v2_pipeline_is_applied():
    flip = v2.Compose([v2.RandomHorizontalFlip(p=1.0), v2.RandomCrop(16, padding=0)])
    flipped, _ = _dataset(flip)[1]
    plain, _ = _dataset(None)[1]
    assert flipped.dtype == torch.float32 and flipped.shape == (3, 16, 16)
    assert torch.equal(flipped, plain.flip(-1))


def test_datamodule_augment_none_means_no_augmentation():
    # was: ConfigError "unknown augment None" for torchvision's spelling of "no transform"
    from vitlab.data import build_datamodule

    dm = build_datamodule("digits", augment=None, batch_size=4)
    assert dm.hparams.augment == "none"
    dm.setup("fit")
    assert dm.train_dataset.augment is None


def test_datamodule_augment_given_a_v2_transform_names_the_dataset_route():
    # was: "unknown augment Compose(...)" with no way named to use one's own transform
    from vitlab.data import build_datamodule

    flip = v2.Compose([v2.RandomHorizontalFlip(p=1.0)])
    with pytest.raises(ConfigError, match=r"got a Compose: .*datamodule\.train_dataset\.augment = transform"):
        build_datamodule("digits", augment=flip)
    dm = build_datamodule("digits", batch_size=4, val_fraction=0.0)
    dm.setup("fit")
    plain, _ = dm.train_dataset[0]
    dm.train_dataset.augment = flip  # the route the message names
    flipped, _ = dm.train_dataset[0]
    assert torch.equal(flipped, plain.flip(-1))


@pytest.mark.parametrize(("image", "fix"), [
    # was: "convert float images in [0, 1] with (x * 255).round().to(torch.uint8)" for images already uint8
    (torch.zeros(2, 3, 16, 16, dtype=torch.uint8), r"one image at a time: .*torch\.stack\(\[transform\(x\)"),
    (torch.zeros(16, 16, dtype=torch.uint8), r"image\.unsqueeze\(0\)"),
    (None, r"a NoneType is no image"),
])
def test_eval_transform_names_the_fix_for_batches_2d_tensors_and_non_images(image, fix):
    from vitlab.data import build_eval_transform

    transform = build_eval_transform({"img_size": 16, "in_chans": 3, "mean": [0.5] * 3, "std": [0.5] * 3})
    with pytest.raises(TypeError, match=fix) as info:
        transform(image)
    assert "convert float images" not in str(info.value)
    if isinstance(image, torch.Tensor):  # the named fix works
        fixed = (torch.stack([transform(x) for x in image]) if image.ndim == 4 else transform(image.unsqueeze(0)))
        assert fixed.shape[-3:] == (3, 16, 16) and torch.allclose(fixed, torch.full_like(fixed, -1.0))


def test_eval_transform_float_batch_names_both_fixes():
    from vitlab.data import build_eval_transform

    transform = build_eval_transform({"img_size": 16, "in_chans": 3, "mean": [0.5] * 3, "std": [0.5] * 3})
    with pytest.raises(TypeError, match=r"one image at a time.*\(x \* 255\)\.round\(\)\.to\(torch\.uint8\)"):
        transform(torch.rand(2, 3, 16, 16))


def test_normalize_float_input_names_a_conversion_that_gives_uint8():
    # was: "convert with (x * 255).round()", which is still float and refused again
    normalize = Normalize([0.5], [0.5], 1)
    x = torch.rand(2, 1, 4, 4)
    with pytest.raises(TypeError, match=r"\(x \* 255\)\.round\(\)\.to\(torch\.uint8\)"):
        normalize(x)
    out = normalize((x * 255).round().to(torch.uint8))
    assert torch.allclose(out, (x * 255).round() / 255 * 2 - 1, atol=1e-6)


def test_read_idx_of_a_folder_says_it_is_a_folder(tmp_path):
    # was: MissingFileError "IDX file not found: <folder>" for a folder that exists
    from vitlab.data import read_idx

    with pytest.raises(ConfigError, match=r"is a folder, not an IDX file: .*build_datamodule\('idx', root="):
        read_idx(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"IDX file not found"):
        read_idx(tmp_path / "missing-idx1-ubyte")


def test_a_huge_img_size_is_refused_when_the_module_is_built():
    # was: accepted, then torch's "DefaultCPUAllocator: can't allocate memory" inside the DataLoader
    from vitlab.data import build_datamodule

    with pytest.raises(ConfigError, match=r"img_size=1000000 makes .* above PIL's decompression-bomb limit"):
        build_datamodule("digits", img_size=10**6)
    assert build_datamodule("digits", img_size=9000).img_size == 9000  # large but real sizes stay valid
