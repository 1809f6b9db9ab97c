"""`predict_images` on the image paths users pass: a glob pattern the shell did not expand (quoted, or from Python)
said "no such image file"; a folder of class folders (the ImageFolder layout) said only that it holds no image."""

import numpy as np
import pytest
from PIL import Image

from vitlab.errors import DataError
from vitlab.eval.evaluate import predict_images


@pytest.fixture
def photos(tmp_path):
    """photos/{a.png, b.png, notes.txt, cat/c.png}, three different grey images."""
    rng = np.random.default_rng(0)
    (tmp_path / "photos" / "cat").mkdir(parents=True)
    for name in ("a.png", "b.png", "cat/c.png"):
        Image.fromarray(rng.integers(0, 256, (32, 32), dtype=np.uint8)).save(tmp_path / "photos" / name)
    (tmp_path / "photos" / "notes.txt").write_text("not an image")
    return tmp_path / "photos"


def test_a_pattern_stands_for_the_files_it_matches(checkpoint, photos):
    rows = predict_images(checkpoint, [str(photos / "*.png")], topk=2)
    assert [row["image"] for row in rows] == [str(photos / "a.png"), str(photos / "b.png")]
    assert rows == predict_images(checkpoint, [photos / "a.png", photos / "b.png"], topk=2)


def test_a_recursive_pattern_reaches_into_sub_folders(checkpoint, photos):
    rows = predict_images(checkpoint, [str(photos / "**" / "*.png")])
    assert sorted(row["image"] for row in rows) == sorted(str(photos / n) for n in ("a.png", "b.png", "cat/c.png"))


def test_a_pattern_matching_nothing_is_reported_and_the_others_predicted(checkpoint, photos):
    rows = predict_images(checkpoint, [str(photos / "*.jpg"), photos / "a.png"])
    assert rows[0] == {"image": str(photos / "*.jpg"), "predictions": [],
                       "error": f"{photos / '*.jpg'}: no file matches this pattern"}
    assert len(rows[1]["predictions"]) == 1


def test_an_existing_file_with_brackets_is_read_as_itself(checkpoint, photos):
    (photos / "a.png").rename(photos / "a[1].png")
    rows = predict_images(checkpoint, [photos / "a[1].png"])
    assert rows[0]["image"] == str(photos / "a[1].png") and rows[0]["predictions"]


def test_a_folder_of_class_folders_names_them_and_a_pattern(checkpoint, tmp_path, photos):
    root = tmp_path / "dataset"
    (root / "dog").mkdir(parents=True)
    (photos / "cat").rename(root / "cat")
    with pytest.raises(DataError, match=r"holds the folders cat, dog: pass them, or a pattern such as '.*/\*\*/"):
        predict_images(checkpoint, [root])


@pytest.mark.parametrize("image", [None, 3, ""])
def test_an_image_that_is_not_a_path_is_refused(checkpoint, photos, image):
    """None among the images failed with pathlib's 'expected str, bytes or os.PathLike object'."""
    from vitlab.errors import ConfigError

    with pytest.raises(ConfigError, match=r"images must be paths \(str or pathlib.Path\)"):
        predict_images(checkpoint, [photos / "a.png", image])


@pytest.mark.parametrize("function", ["evaluate_checkpoint", "predict_images", "robustness_report",
                                      "diagnose_checkpoint", "load_checkpoint_and_test_data"])
@pytest.mark.parametrize("checkpoint", [None, 5, ""])
def test_a_checkpoint_that_is_not_a_path_is_refused(function, checkpoint, photos):
    """None or a number failed with pathlib's TypeError; '' looked for ./model.safetensors."""
    from vitlab.errors import ConfigError
    from vitlab.eval import evaluate

    args = ([photos / "a.png"],) if function == "predict_images" else ()
    with pytest.raises(ConfigError, match="checkpoint must be the path"):
        getattr(evaluate, function)(checkpoint, *args)


def test_topk_may_be_a_numpy_int(checkpoint, photos):
    """np.int64(2) (e.g. read from an array of settings) was refused as 'not an int >= 1'."""
    rows = predict_images(checkpoint, [photos / "a.png"], topk=np.int64(2))
    assert rows == predict_images(checkpoint, [photos / "a.png"], topk=2)
    assert len(rows[0]["predictions"]) == 2
