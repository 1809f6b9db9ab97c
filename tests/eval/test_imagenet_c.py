"""`evaluate_imagenet_c` on tiny ImageNet-C-layout folders: class folders matched to the model's classes by name or
count, and layouts a user may have (flat, an archive, a missing root) refused before anything is evaluated."""

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torchvision.transforms.functional import pil_to_tensor

from vitlab.errors import ConfigError, DataError, MissingFileError
from vitlab.eval import COMMON_CORRUPTIONS, evaluate_imagenet_c
from vitlab.eval.corruptions import SEVERITIES

LEVELS = (0, 128, 255)  # the brightness of the images of model class 0, 1, 2


class Brightness(nn.Module):
    """Predicts the class whose level in LEVELS is nearest the image's mean pixel value."""

    def forward(self, x):
        centres = torch.tensor(LEVELS, dtype=x.dtype) / 255
        return -(x.mean(dim=(1, 2, 3))[:, None] - centres) ** 2


def _transform(image):
    return pil_to_tensor(image).float() / 255


def _folder(root, classes, flat=False):
    """One 4x4 image per class folder in every common corruption and severity; folder ``name`` holds images of
    brightness ``LEVELS[index]``; ``classes`` maps folder name -> model class index."""
    for corruption in COMMON_CORRUPTIONS:
        for severity in SEVERITIES:
            for name, index in classes.items():
                folder = root / corruption / str(severity) / ("" if flat else name)
                folder.mkdir(parents=True, exist_ok=True)
                Image.fromarray(np.full((4, 4), LEVELS[index], np.uint8)).save(folder / f"{name}.png")
    return root


def _evaluate(root, **kwargs):
    return evaluate_imagenet_c(Brightness(), root, _transform, progress=False, alexnet_normalise=False, **kwargs)


def test_class_folders_are_labelled_by_the_model_class_names(tmp_path):
    # model classes in index order: "bee", "ant", "cat"; the folder holds a subset in another (sorted) order
    root = _folder(tmp_path / "c", {"ant": 1, "cat": 2})
    report = _evaluate(root, class_names=["bee", "ant", "cat"])
    assert report["metrics"]["mean_accuracy"] == 1.0


def test_class_folders_that_do_not_match_the_model_outputs_are_refused(tmp_path):
    root = _folder(tmp_path / "c", {"ant": 1, "cat": 2})  # 2 folders, 3 model outputs, no names to go by
    with pytest.raises(ConfigError, match="has 2 class folders .* but the model predicts 3 classes"):
        _evaluate(root)
    with pytest.raises(ConfigError, match=r"or name the folders by the model's class names \(0, 1, 2"):
        _evaluate(root, class_names=["0", "1", "2"])


def test_one_folder_per_output_in_sorted_order_is_the_standard_labelling(tmp_path):
    root = _folder(tmp_path / "c", {"n01": 0, "n02": 1, "n03": 2})  # wnid-like names, not the class names
    assert _evaluate(root, class_names=["a", "b", "c"])["metrics"]["mean_accuracy"] == 1.0


def test_different_class_folders_in_one_severity_are_refused(tmp_path):
    root = _folder(tmp_path / "c", {"n01": 0, "n02": 1, "n03": 2})
    (root / "fog" / "3" / "n04").mkdir()
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(root / "fog" / "3" / "n04" / "x.png")
    with pytest.raises(DataError, match=r"fog/3 has other class folders .*differing: \['n04'\]"):
        _evaluate(root)


def test_flat_archive_and_missing_layouts_name_the_fix(tmp_path):
    with pytest.raises(DataError, match="holds no class folders: .*one folder per class"):
        _evaluate(_folder(tmp_path / "flat", {"a": 0}, flat=True))
    archive = tmp_path / "ImageNet-C.tar"
    archive.write_bytes(b"\0" * 512)
    with pytest.raises(DataError, match=r"is a file, not a folder: unpack it first \(e.g. `tar -xf"):
        _evaluate(archive)
    with pytest.raises(MissingFileError, match="does not exist: pass the ImageNet-C folder"):
        _evaluate(tmp_path / "nowhere")


def test_n_larger_than_a_folder_is_refused_before_evaluating(tmp_path, monkeypatch):
    root = _folder(tmp_path / "c", {"n01": 0, "n02": 1, "n03": 2})
    calls = []
    monkeypatch.setattr("vitlab.eval.imagenet_c.evaluate_classifier", lambda *a, **k: calls.append(1))
    with pytest.raises(ConfigError, match="n=4 but gaussian_noise/1 has 3 images"):
        _evaluate(root, n=4)
    assert calls == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"num_workers": -1}, "num_workers must be an int >= 0"), ({"num_workers": 1.5}, "num_workers must be an int"),
     ({"class_names": "abc"}, "class_names must be a list of the model's class names"),
     ({"class_names": [0, 1, 2]}, "class_names must be a list")],
)
def test_bad_loader_and_class_name_arguments_are_refused_before_reading(tmp_path, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        _evaluate(tmp_path / "nowhere", **kwargs)


def test_a_transform_that_gives_no_image_tensor_is_refused(tmp_path):
    root = _folder(tmp_path / "c", {"n01": 0, "n02": 1, "n03": 2})
    with pytest.raises(ConfigError, match="transform must turn a PIL image into a .C, H, W. tensor, it gave Image"):
        evaluate_imagenet_c(Brightness(), root, lambda image: image, progress=False, alexnet_normalise=False)
