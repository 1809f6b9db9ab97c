"""Users' bad inputs to vitlab.eval's public functions: each is refused with an error that names the fix."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from vitlab.errors import ConfigError, DataError
from vitlab.eval import (
    COMMON_CORRUPTIONS,
    corrupt_images,
    corruption_metrics,
    evaluate_corruptions,
    format_robustness_report,
    generate_corruption_set,
    glass_blur,
)

IMAGES = np.zeros((2, 32, 32, 3), np.uint8)
LABELS = np.array([0, 1])


def _model() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10))


@pytest.fixture
def corruption_set(tmp_path: Path) -> Path:
    """A generated set of 2 images with contrast and brightness (fast corruptions)."""
    return generate_corruption_set(IMAGES, LABELS, tmp_path / "set", corruptions=["contrast", "brightness"],
                                   workers=1, progress=False)


@pytest.mark.parametrize(
    ("images", "kwargs", "message"),
    [
        (IMAGES, {"severity": 3.0}, r"severity must be in 1..5 \(an int\), got 3.0"),
        (IMAGES, {"severity": True}, "severity must be in 1..5 .*got True"),
        (IMAGES, {"severity": 6}, "severity must be in 1..5"),
        (IMAGES, {"seed": -1}, "seed must be an int >= 0, got -1"),
        (IMAGES, {"seed": None}, "seed must be an int >= 0, got None"),
        (IMAGES, {"corruption": ["contrast"]}, "unknown corruption"),
        (np.zeros((2, 3, 32, 32), np.uint8), {}, r"channels-first\? use images.transpose\(0, 2, 3, 1\)"),
        (np.zeros((32, 32, 3), np.uint8), {}, r"add a batch axis with x\[None\]"),
        (np.zeros((2, 32, 32, 3), np.float32), {}, r"\(x \* 255\).round\(\).astype\('uint8'\)"),
        (np.zeros((2, 1, 1, 3), np.uint8), {}, "at least 32x32 px, got 1x1"),
    ],
)
def test_corrupt_images_refuses_bad_arguments(images, kwargs, message):
    args = {"corruption": "contrast", "severity": 1, "seed": 0, **kwargs}
    with pytest.raises(ConfigError, match=message):
        corrupt_images(images, **args)


def test_corrupt_images_of_no_image_is_empty():
    assert corrupt_images(np.zeros((0, 32, 32, 3), np.uint8), "contrast", 1, seed=0).shape == (0, 32, 32, 3)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"corruptions": "contrast"}, r"got the string 'contrast': pass \['contrast'\]"),
        ({"corruptions": []}, "corruptions is empty"),
        ({"corruptions": ["contrast", "contrast"]}, "lists a name twice"),
        ({"corruptions": ["haze"]}, r"unknown corruptions \['haze'\]"),
        ({"seed": None}, "seed must be an int >= 0"),
        ({"workers": 0}, r"workers must be an int >= 1 or None"),
        ({"workers": 2.0}, r"workers must be an int >= 1 or None"),
        ({"chunk_size": 0}, "chunk_size must be an int >= 1, got 0"),
    ],
)
def test_generate_corruption_set_refuses_bad_arguments(tmp_path, kwargs, message):
    args = {"corruptions": ["contrast"], "workers": 1, "progress": False, **kwargs}
    with pytest.raises(ConfigError, match=message):
        generate_corruption_set(IMAGES, LABELS, tmp_path / "set", **args)


def test_generate_corruption_set_refuses_no_image_and_a_file(tmp_path):
    with pytest.raises(ConfigError, match=r"images is empty \(N = 0\)"):
        generate_corruption_set(IMAGES[:0], LABELS[:0], tmp_path / "set", corruptions=["contrast"], progress=False)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        generate_corruption_set(IMAGES, LABELS, tmp_path / "file", corruptions=["contrast"], progress=False)


@pytest.mark.parametrize(("text", "message"), [("{bad", "not a readable JSON file"), ("[1]", "holds a list")])
def test_corrupt_meta_json_is_a_data_error(corruption_set, text, message):
    (corruption_set / "meta.json").write_text(text)
    with pytest.raises(DataError, match=message + ".*generate the set again"):
        generate_corruption_set(IMAGES, LABELS, corruption_set, corruptions=["contrast"], progress=False)
    with pytest.raises(DataError, match=message):
        evaluate_corruptions(_model(), corruption_set, progress=False)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n": 0}, r"n must be an int >= 1 \(images per severity\) or None"),
        ({"n": 1.5}, "n must be an int >= 1"),
        ({"n": True}, "n must be an int >= 1"),
        ({"n": "all"}, "n must be an int >= 1 .* or None for all of them"),
        ({"n": 5}, "n=5 but .* has 2 images per severity: pass n <= 2 or None"),
        ({"batch_size": 0}, "batch_size must be an int >= 1, got 0"),
        ({"corruptions": "contrast"}, "got the string 'contrast'"),
        ({"corruptions": ["haze"]}, r"unknown corruptions \['haze'\]"),
        ({"corruptions": ["saturate"]}, "none of the 15 common corruptions"),
    ],
)
def test_evaluate_corruptions_refuses_bad_arguments(corruption_set, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        evaluate_corruptions(_model(), corruption_set, progress=False, **kwargs)


def test_evaluate_corruptions_refuses_a_non_module():
    with pytest.raises(ConfigError, match="model must be a torch.nn.Module, got function"):
        evaluate_corruptions(lambda x: x, "anywhere", progress=False)


@pytest.mark.parametrize(
    ("name", "array", "message"),
    [
        ("contrast.npy", np.zeros((10, 32, 32, 3), np.float32), r"contrast.npy holds float32 .*not uint8 images"),
        ("contrast.npy", np.zeros((10, 32, 32), np.uint8), r"contrast.npy holds uint8 \(10, 32, 32\)"),
        ("labels.npy", np.full(10, 0.5, np.float32), "labels.npy holds float32 .*not int class indices"),
        ("labels.npy", np.zeros((10, 2), np.int64), r"labels.npy holds int64 \(10, 2\)"),
        ("labels.npy", np.zeros(0, np.int64), "labels.npy is empty"),
        ("clean.npy", np.zeros((1, 32, 32, 3), np.uint8), r"clean.npy holds uint8 \(1, 32, 32, 3\)"),
        ("clean.npy", np.zeros((2, 16, 16, 3), np.uint8), r"clean.npy holds .*like the corruption files"),
    ],
)
def test_evaluate_corruptions_refuses_bad_files(corruption_set, name, array, message):
    np.save(corruption_set / name, array)
    with pytest.raises(DataError, match=message):
        evaluate_corruptions(_model(), corruption_set, progress=False)


def _full(value: float = 0.5) -> dict[str, dict[int, float]]:
    return {c: {s: value for s in range(1, 6)} for c in COMMON_CORRUPTIONS}


@pytest.mark.parametrize(
    ("accuracy", "message"),
    [
        (None, r"accuracy must be a dict \{corruption: \{severity: fraction\}\}, got NoneType"),
        ({"contrast": {}}, r"accuracy\['contrast'\] must be a non-empty dict"),
        ({"contrast": [0.5] * 5}, r"accuracy\['contrast'\] must be a non-empty dict"),
        ({"contrast": {6: 0.5}}, r"has severity 6: severities are the ints 1..5"),
        ({"contrast": {"1": 0.5}}, r"has severity '1'"),
        ({"contrast": {1: 50.0}}, r"accuracy\['contrast'\]\[1\] = 50.0: accuracies are fractions in \[0, 1\]"),
        ({"contrast": {1: None}}, "= None: accuracies are fractions"),
        ({"contrast": {1: float("nan")}}, "= nan: accuracies are fractions"),
    ],
)
def test_corruption_metrics_refuses_bad_accuracies(accuracy, message):
    with pytest.raises(ConfigError, match=message):
        corruption_metrics(accuracy)


def test_corruption_metrics_refuses_a_percent_clean_accuracy():
    with pytest.raises(ConfigError, match=r"clean_accuracy must be a fraction in \[0, 1\] \(e.g. 0.81, not 81\)"):
        corruption_metrics(_full(), clean_accuracy=80, alexnet_normalise=True)


def test_corruption_metrics_with_missing_severities_still_summarises():
    accuracy = {"contrast": {1: 0.5}, "fog": {1: 0.3, 2: 0.1}}
    metrics = corruption_metrics(accuracy)
    assert metrics["per_severity"] == pytest.approx({1: 0.4, 2: 0.1})
    with pytest.raises(ValueError, match="needs all 15 common corruptions at severities 1-5"):
        corruption_metrics(accuracy, alexnet_normalise=True)


@pytest.mark.parametrize(
    ("report", "message"),
    [(None, "got NoneType"), ({}, r"report lacks \['source', 'folder', 'n', 'accuracy', 'metrics'\]"),
     ({"source": "published", "accuracy": {}, "metrics": {}}, r"report lacks \['folder', 'n'\]")],
)
def test_format_robustness_report_refuses_other_dicts(report, message):
    with pytest.raises(ConfigError, match=message):
        format_robustness_report(report)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rng": 0}, r"rng must be a numpy.random.Generator, got int: pass rng=np.random.default_rng\(seed\)"),
        ({"offsets": np.zeros((1, 2, 2, 2), int)}, r"offsets must be ints of shape \(1, 784, 2, 2\)"),
        ({"offsets": np.full((1, 784, 2, 2), 5)}, r"offsets must lie in \[-2, 1\] at severity 2"),
    ],
)
def test_glass_blur_refuses_bad_rng_and_offsets(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        glass_blur(IMAGES, 2, **kwargs)


def test_glass_blur_refuses_zero_channels():
    with pytest.raises(ConfigError, match=r"1 <= C <= 4"):
        glass_blur(np.zeros((2, 32, 32, 0), np.uint8), 2)


def test_meta_json_written_is_an_object(corruption_set):
    assert isinstance(json.loads((corruption_set / "meta.json").read_text()), dict)


def _vit() -> torch.nn.Module:
    import timm

    import vitlab  # noqa: F401  (registers vit_vitlab_tiny_patch4_32)

    return timm.create_model("vit_vitlab_tiny_patch4_32", num_classes=10, in_chans=3, img_size=32, patch_size=8,
                             depth=1, embed_dim=32, num_heads=2)


LOADER = [(torch.rand(4, 3, 32, 32), torch.arange(4))]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kinds": "shuffle"}, r"got the string 'shuffle': pass \['shuffle'\]"),
        ({"kinds": []}, r"non-empty list of distinct view kinds .*got \[\]"),
        ({"kinds": ["shuffle", "shuffle"]}, "non-empty list of distinct view kinds"),
        ({"n": 0}, r"n must be an int >= 1 \(images to use\) or None"),
        ({"n": 2.5}, "n must be an int >= 1"),
        ({"n": "all"}, "n must be an int >= 1 .*got 'all'"),
        ({"n": 10}, "asked for n=10 images but the loader has only 4: pass n <= 4 or None"),
        ({"seed": None}, r"seed must be an int in 0..2\*\*63 - 1, got None"),
        ({"seed": -1}, r"seed must be an int in 0..2\*\*63 - 1, got -1"),  # robustness refused it, this took it
    ],
)
def test_diagnose_negatives_refuses_bad_arguments(kwargs, message):
    from vitlab.eval import diagnose_negatives

    with pytest.raises(ConfigError, match=message):
        diagnose_negatives(_vit(), LOADER, 8, **kwargs)


@pytest.mark.parametrize(
    ("loader", "message"),
    [
        (torch.rand(2, 3, 32, 32), r"batch 0 is not a pair \(images, labels\)"),
        ([(np.zeros((2, 3, 32, 32), np.float32), np.arange(2))], r"must be torch tensors \(torch.from_numpy"),
        ([(torch.rand(3, 32, 32), torch.arange(3))], r"float32 \(3, 32, 32\): pass float images \(B, C, H, W\)"),
        ([(torch.zeros(2, 3, 32, 32, dtype=torch.uint8), torch.arange(2))], r"torch.uint8 .*x.float\(\) / 255"),
        ([(torch.rand(2, 3, 32, 32), torch.arange(3))], r"2 images but labels of shape \(3,\)"),
        ([(torch.rand(2, 3, 32, 32), torch.tensor([1.0, 2.0]))], "labels are torch.float32: pass int64 class indices"),
    ],
)
def test_diagnose_negatives_refuses_bad_batches(loader, message):
    from vitlab.eval import diagnose_negatives

    with pytest.raises(DataError, match=message):
        diagnose_negatives(_vit(), loader, 8)


@pytest.mark.parametrize(
    "model",
    [torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10), torch.nn.Flatten(0)),
     torch.nn.Conv2d(3, 10, 1)],
)
def test_diagnose_negatives_refuses_a_model_without_logits(model):
    from vitlab.eval import diagnose_negatives

    with pytest.raises(ConfigError, match=r"the model must return class logits \(B, K\) = \(4, K\)"):
        diagnose_negatives(model, LOADER, 8)
    with pytest.raises(ConfigError, match="model must be a torch.nn.Module, got function"):
        diagnose_negatives(lambda x: x, LOADER, 8)


def test_format_negative_diagnostics_refuses_other_dicts():
    from vitlab.eval import format_negative_diagnostics

    with pytest.raises(ConfigError, match=r"result lacks \['n', .*pass the dict that diagnose_negatives returns"):
        format_negative_diagnostics({})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"corruptions": "contrast"}, "got the string 'contrast'"),
        ({"corruptions": ["haze"]}, r"unknown corruptions \['haze'\]"),
        ({"corruptions": ["contrast"]}, "alexnet_normalise needs all 15 common corruptions.*alexnet_normalise=False"),
        ({"corruptions": ["saturate"], "alexnet_normalise": False}, "none of the 15 common corruptions"),
        ({"clean_accuracy": 81}, r"clean_accuracy must be a fraction in \[0, 1\]"),
        ({"n": 0}, "n must be an int >= 1"),
        ({"batch_size": 0}, "batch_size must be an int >= 1"),
    ],
)
def test_evaluate_imagenet_c_refuses_bad_arguments_before_reading(tmp_path, kwargs, message):
    from vitlab.eval import evaluate_imagenet_c

    with pytest.raises(ConfigError, match=message):
        evaluate_imagenet_c(_model(), tmp_path, lambda image: image, progress=False, **kwargs)


@pytest.mark.parametrize("value", [0, -3, 1.5, True, "abc", "1.5"])
def test_parse_n_refuses_what_is_not_a_positive_int(value):
    from vitlab.eval.evaluate import parse_n

    with pytest.raises(ConfigError, match=r"--n must be a positive int or 'all', got "):
        parse_n(value)


def test_parse_n_keeps_whole_numbers_and_all():
    from vitlab.eval.evaluate import count_test_images, parse_n

    assert (parse_n(4), parse_n("4"), parse_n(4.0), parse_n(" ALL ")) == (4, 4, 4, None)
    with pytest.raises(ConfigError, match="--n 500 but the test set has 360 images: use --n all or less"):
        count_test_images(500, 360)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n": 2.5}, "--n must be a positive int or 'all', got 2.5"),
        ({"n": 0}, "--n must be a positive int or 'all', got 0"),
        ({"n": 99999}, "--n 99999 but the digits test set has 360 images"),
        ({"patch_size": 0}, r"patch_size must be an int >= 1 .*or None for the model's own, got 0"),
        ({"patch_size": "8"}, "patch_size must be an int >= 1 .*got '8'"),
        ({"kinds": "shuffle"}, r"pass \['shuffle'\]"),
        ({"kinds": []}, r"kinds must be a non-empty list"),  # was taken as every kind (--kinds '[]')
    ],
)
def test_diagnose_checkpoint_refuses_bad_arguments(checkpoint, tmp_path, kwargs, message):
    from vitlab.eval import diagnose_checkpoint

    with pytest.raises(ConfigError, match=message):
        diagnose_checkpoint(checkpoint, out=tmp_path, **{"n": 4, **kwargs})
    assert not list(tmp_path.iterdir())  # nothing written


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n": True}, "--n must be a positive int or 'all', got True"),
        ({"corruptions": []}, "corruptions is empty"),
        ({"corruptions": "contrast"}, r"pass \['contrast'\]"),
        ({"corruptions": ["saturate"]}, "none of the 15 common corruptions"),
        ({"corruptions": ["contrast"], "alexnet_normalise": True}, "apply to ImageNet-C only"),
    ],
)
def test_robustness_report_refuses_bad_arguments_before_generating(checkpoint, tmp_path, kwargs, message):
    from vitlab.eval import robustness_report

    with pytest.raises(ConfigError, match=message):
        robustness_report(checkpoint, out=tmp_path / "out", cache_dir=str(tmp_path / "set"), workers=1,
                          **{"n": 4, **kwargs})
    assert not (tmp_path / "set").exists() and not (tmp_path / "out").exists()


def test_format_robustness_report_reads_a_report_back_from_json(corruption_set):
    report = evaluate_corruptions(_model(), corruption_set, progress=False)
    again = json.loads(json.dumps(report))  # severities become "1".."5"
    assert format_robustness_report(again) == format_robustness_report(report)
    assert "| contrast | -" not in format_robustness_report(again)


def test_evaluate_corruptions_refuses_a_preprocess_that_is_not_callable(corruption_set):
    with pytest.raises(ConfigError, match="preprocess must be a callable uint8 .*got int"):
        evaluate_corruptions(_model(), corruption_set, preprocess=1, progress=False)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n": 0}, r"n must be an int >= 1 \(images to take\) or None"),
        ({"n": -1}, "n must be an int >= 1"),
        ({"std": [0.5, 0.5]}, "mean and std must be sequences with one value per channel"),
        ({"mean": 0.5, "std": 0.5}, r"got mean=0.5, std=0.5: e.g. mean=\[0.5, 0.5, 0.5\]"),
        ({"channels": 0}, r"channels must be an int in 1..3"),
    ],
)
def test_images_from_loader_refuses_bad_arguments(kwargs, message):
    from vitlab.eval import images_from_loader

    with pytest.raises(ConfigError, match=message):
        images_from_loader(LOADER, **{"mean": [0.5] * 3, "std": [0.5] * 3, **kwargs})


def test_images_from_loader_refuses_unbatched_images():
    from vitlab.eval import images_from_loader

    with pytest.raises(DataError, match=r"loader images must be tensors \(B, C, H, W\), got \(3, 32, 32\)"):
        images_from_loader([(torch.rand(3, 32, 32), torch.arange(3))], [0.5] * 3, [0.5] * 3)


@pytest.mark.parametrize("name", ["labels.npy", "clean.npy"])
def test_generating_again_restores_a_deleted_labels_or_clean_file(corruption_set, name):
    before = evaluate_corruptions(_model(), corruption_set, progress=False)
    (corruption_set / name).unlink()
    generate_corruption_set(IMAGES, LABELS, corruption_set, corruptions=["contrast"], workers=1, progress=False)
    assert (corruption_set / name).is_file()
    assert evaluate_corruptions(_model(), corruption_set, progress=False)["accuracy"] == before["accuracy"]


def test_evaluate_imagenet_c_refuses_a_transform_that_is_not_callable(tmp_path):
    from vitlab.eval import evaluate_imagenet_c

    with pytest.raises(ConfigError, match="transform must be a callable PIL image"):
        evaluate_imagenet_c(_model(), tmp_path, None, progress=False)


@pytest.mark.parametrize(("content", "message"), [(b"garbage", "not a readable .npy array"),
                                                  (None, r"per image, not \(H, W, C\) images")])
def test_robustness_report_refuses_a_bad_published_folder(checkpoint, tmp_path, content, message):
    from vitlab.eval import robustness_report

    folder = tmp_path / "published"
    folder.mkdir()
    np.save(folder / "labels.npy", np.zeros(10, np.int64))
    if content is None:
        np.save(folder / "fog.npy", np.zeros((10, 32, 32), np.uint8))
    else:
        (folder / "fog.npy").write_bytes(content)
    with pytest.raises(DataError, match=message):
        robustness_report(checkpoint, corruption_dir=str(folder), out=tmp_path / "out")


def test_an_empty_loader_is_a_data_error():
    from vitlab.eval import diagnose_negatives, images_from_loader

    with pytest.raises(DataError, match="the loader yielded no image: pass a loader of the"):
        images_from_loader([], [0.5] * 3, [0.5] * 3)
    with pytest.raises(DataError, match="the loader yielded no image: pass a loader of the"):
        diagnose_negatives(_vit(), [], 8)
