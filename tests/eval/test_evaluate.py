"""Clean evaluation and `predict`: the shared top-1 function, unreadable and 16-bit images, a dataset mismatch."""

import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from vitlab.checkpoint import load_model, read_metadata, save_checkpoint
from vitlab.data.transforms import pil_to_uint8
from vitlab.errors import ConfigError, DataError, VitlabError
from vitlab.eval import evaluate_corruptions
from vitlab.eval.evaluate import evaluate_checkpoint, predict_images
from vitlab.metrics import evaluate_classifier, tensor_batches


def _png(path, array):
    Image.fromarray(array).save(path)
    return path


def test_evaluate_classifier_matches_argmax_and_cross_entropy_by_hand():
    torch.manual_seed(0)
    model, x, y = nn.Linear(6, 4), torch.randn(37, 6), torch.randint(0, 4, (37,))
    model.train()
    result = evaluate_classifier(model, tensor_batches(x, y, batch_size=8))
    with torch.no_grad():
        logits = model(x)
    assert result["samples"] == 37
    assert result["acc"] == pytest.approx((logits.argmax(1) == y).float().mean().item())
    assert result["loss"] == pytest.approx(nn.functional.cross_entropy(logits, y).item(), rel=1e-6)
    assert model.training  # mode restored
    with pytest.raises(ValueError, match="outside the model's 4 classes"):
        evaluate_classifier(model, [(x, torch.full((37,), 4))])
    with pytest.raises(ValueError, match="held no sample"):
        evaluate_classifier(model, [])
    with pytest.raises(TypeError, match="needs the classifier as an nn.Module, got str"):
        evaluate_classifier("model", [])



def test_evaluate_classifier_takes_transformers_models_dict_batches_and_low_precision_models():
    """A transformers classifier (output with .logits), dict batches ({"pixel_values", "labels"}), extra batch items
    and a bfloat16 model fed a loader's float32 images: all gave AttributeError / ValueError / RuntimeError before."""
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    hf = ViTForImageClassification(ViTConfig(image_size=16, patch_size=8, hidden_size=32, num_hidden_layers=1,
                                             num_attention_heads=2, intermediate_size=64, num_labels=3)).eval()
    x, y = torch.randn(6, 3, 16, 16), torch.tensor([0, 1, 2, 2, 1, 0])
    with torch.no_grad():
        logits = hf(pixel_values=x).logits
    expected_acc = (logits.argmax(1) == y).float().mean().item()
    expected_loss = nn.functional.cross_entropy(logits, y).item()
    for batches in ([(x[:4], y[:4]), (x[4:], y[4:])], [{"pixel_values": x, "labels": y}],
                    [(x, y, torch.arange(6))]):
        result = evaluate_classifier(hf, batches)
        assert result["samples"] == 6
        assert result["acc"] == pytest.approx(expected_acc)
        assert result["loss"] == pytest.approx(expected_loss, rel=1e-5)
    with pytest.raises(ValueError, match="needs an image entry"):
        evaluate_classifier(hf, [{"img": x, "labels": y}])
    with pytest.raises(ValueError, match=r"without logits"):
        evaluate_classifier(_NoLogits(), [(x, y)])
    low = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 3)).to(torch.bfloat16)
    with torch.no_grad():
        low_logits = low(x.bfloat16()).float()
    result = evaluate_classifier(low, tensor_batches(x, y, batch_size=4))
    assert result["acc"] == pytest.approx((low_logits.argmax(1) == y).float().mean().item())
    assert result["loss"] == pytest.approx(nn.functional.cross_entropy(low_logits, y).item(), rel=1e-5)


class _NoLogits(nn.Module):
    def forward(self, x):
        return {"scores": x.flatten(1)[:, :3]}


def test_predict_reports_an_unreadable_file_and_predicts_the_others(checkpoint, tmp_path):
    good = _png(tmp_path / "good.png", np.random.default_rng(0).integers(0, 256, (8, 8), dtype=np.uint8))
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    missing = tmp_path / "missing.png"
    rows = predict_images(checkpoint, [good, broken, missing], topk=3)
    assert [row["image"] for row in rows] == [str(good), str(broken), str(missing)]
    assert rows[0]["predictions"] == predict_images(checkpoint, [good], topk=3)[0]["predictions"]
    assert "error" not in rows[0] and len(rows[0]["predictions"]) == 3
    assert rows[1]["predictions"] == [] and rows[1]["error"].startswith(f"{broken}: not a readable image")
    assert rows[2] == {"image": str(missing), "predictions": [], "error": f"{missing}: no such image file"}
    assert all("\n" not in row["error"] for row in rows[1:])
    with pytest.raises(DataError, match=f"no image could be read: {broken}: not a readable image"):
        predict_images(checkpoint, [broken])


def test_predict_topk_is_at_least_one_and_at_most_the_class_count(checkpoint, tmp_path):
    good = _png(tmp_path / "good.png", np.random.default_rng(0).integers(0, 256, (8, 8), dtype=np.uint8))
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ConfigError, match="topk must be an int >= 1"):
            predict_images(checkpoint, [good], topk=bad)
    everything = predict_images(checkpoint, [good], topk=999)[0]["predictions"]
    assert len(everything) == len(read_metadata(checkpoint)["extra"]["data"].get("class_names") or range(
        read_metadata(checkpoint)["model_kwargs"]["num_classes"]))
    assert abs(sum(p for _, p in everything) - 1) < 1e-5  # every class, probabilities summing to one


def test_16_bit_png_is_predicted_on_scaled_pixels_not_clipped(checkpoint, tmp_path):
    eight = np.random.default_rng(1).integers(0, 256, (8, 8), dtype=np.uint8)
    sixteen = _png(tmp_path / "sixteen.png", eight.astype(np.uint16) * 257)  # 257 * v8 is v8 in 16 bits
    with Image.open(sixteen) as image:
        assert image.mode == "I;16"  # really a 16-bit file
        assert pil_to_uint8(image, "L")[0].numpy().tolist() == eight.tolist()
    rows = predict_images(checkpoint, [_png(tmp_path / "eight.png", eight), sixteen], topk=10)
    assert rows[0]["predictions"] == rows[1]["predictions"]
    clipped = predict_images(checkpoint, [_png(tmp_path / "clipped.png", np.where(eight > 0, 255, 0).astype(np.uint8))],
                             topk=10)
    assert clipped[0]["predictions"] != rows[1]["predictions"]  # what PIL's convert("L") would have fed the model


def test_pil_to_uint8_rounds_16_bit_values_and_refuses_unbounded_modes():
    values = np.random.default_rng(2).integers(0, 65536, (5, 7)).astype(np.uint16)
    got = pil_to_uint8(Image.fromarray(values), "RGB")
    expected = np.round(values.astype(np.float64) * 255 / 65535).astype(np.uint8)
    assert got.shape == (3, 5, 7) and all(np.array_equal(c.numpy(), expected) for c in got)
    with pytest.raises(DataError, match="save the image as 8- or 16-bit"):
        pil_to_uint8(Image.fromarray(np.ones((2, 2), dtype=np.float32)), "L")


def test_eval_on_another_dataset_warns_with_both_names(checkpoint, digits, tmp_path):
    model, meta = load_model(checkpoint)
    run = tmp_path / "run"
    save_checkpoint(run, model.state_dict(), kind="model", model_name=meta["model_name"],
                    model_kwargs=meta["model_kwargs"], extra={"data": dict(digits.data_config(), name="mnist")})
    with pytest.warns(UserWarning, match="trained on 'mnist' but is evaluated on 'digits'"):
        result = evaluate_checkpoint(run, "digits", device="cpu")
    images, labels = map(torch.stack, zip(*[digits.test_dataset[i] for i in range(len(digits.test_dataset))],
                                          strict=True))
    with torch.no_grad():
        expected = (model.eval()(images).argmax(1) == labels).float().mean().item()
    assert result["samples"] == len(labels) == 360 and result["acc"] == pytest.approx(expected)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the dataset it was trained on: no warning
        assert evaluate_checkpoint(checkpoint, "digits", device="cpu")["acc"] == pytest.approx(expected)


def test_a_corrupt_checkpoint_is_a_one_line_vitlab_error(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(VitlabError) as caught:
        evaluate_checkpoint(tmp_path, "digits")
    assert str(tmp_path / "model.safetensors") in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize("content", ["truncated", "pickled objects"])
def test_a_corrupt_corruption_file_is_a_one_line_data_error(tmp_path, content):
    np.save(tmp_path / "labels.npy", np.zeros(10, dtype=np.int64))
    if content == "truncated":
        (tmp_path / "fog.npy").write_bytes(b"\x93NUMPY\x01\x00truncated")
    else:
        np.save(tmp_path / "fog.npy", np.array([{"x": 1}] * 10, dtype=object), allow_pickle=True)
    with pytest.raises(DataError) as caught:
        evaluate_corruptions(nn.Flatten(), tmp_path, progress=False)
    message = str(caught.value)
    assert message.startswith(f"{tmp_path / 'fog.npy'}: not a readable .npy array") and "\n" not in message


def _image_folder(root, classes):
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for name in classes:
            (root / split / name).mkdir(parents=True)
            for i in range(2):
                _png(root / split / name / f"{i}.png", rng.integers(0, 255, (8, 8, 3), dtype=np.uint8))
    return root


def _image_folder_run(tmp_path, folder):
    """An image folder of cat / dog / fish and a run folder of an untrained 16-px ViT saved on its data config."""
    import timm

    from vitlab.data import build_datamodule

    trained = _image_folder(tmp_path / folder, ["cat", "dog", "fish"])
    datamodule = build_datamodule("imagefolder", root=trained, img_size=16)
    kwargs = dict(depth=1, img_size=16, patch_size=8, embed_dim=16, num_heads=2, num_classes=3)
    run = tmp_path / "run"
    save_checkpoint(run, timm.create_model("vit_tiny_patch16_224", **kwargs).state_dict(), kind="model",
                    model_name="vit_tiny_patch16_224", model_kwargs=kwargs, extra={"data": datamodule.data_config()})
    return trained, datamodule, kwargs, run


def test_an_image_folder_with_other_classes_of_the_same_count_is_refused(tmp_path):
    import timm

    from vitlab.eval.evaluate import load_checkpoint_and_test_data

    trained, datamodule, kwargs, run = _image_folder_run(tmp_path, "a")
    assert evaluate_checkpoint(run, root=trained)["samples"] == 6  # its own classes: evaluated
    # 3 classes again, but label 0 is now "bird" (the model's 0 is "cat"): was scored silently against wrong labels
    other = _image_folder(tmp_path / "b", ["bird", "cat", "dog"])
    with pytest.raises(ConfigError, match=r"other classes .*not in the model: \['bird'\]; missing: \['fish'\]"):
        evaluate_checkpoint(run, root=other)
    with pytest.raises(ConfigError, match="other classes"):  # robustness / diagnose-negatives read the data so
        load_checkpoint_and_test_data(run, root=other)
    # a model whose classes are these names in another order (e.g. trained on a dataset that lists them unsorted)
    config = {**datamodule.data_config(), "class_names": ["dog", "cat", "fish"]}
    save_checkpoint(run, timm.create_model("vit_tiny_patch16_224", **kwargs).state_dict(), kind="model",
                    model_name="vit_tiny_patch16_224", model_kwargs=kwargs, extra={"data": config})
    with pytest.raises(ConfigError, match=r"in another order \(\['cat', 'dog', 'fish'\] vs the model's"):
        evaluate_checkpoint(run, root=trained)


def test_a_run_on_its_own_data_folder_is_evaluated_without_root_again(tmp_path, capsys):
    """`vitlab eval --checkpoint runs/x` of a run trained on an image folder said the data was missing unless --root
    was given again; the run's config.yaml records it (a given --root, or another dataset, still wins)."""

    from vitlab.cli.main import main
    from vitlab.eval.evaluate import load_checkpoint_and_test_data, run_data_root

    trained, _, _, run = _image_folder_run(tmp_path, "photos")
    (run / "config.yaml").write_text(f"name: run\nseed: 0\ndata:\n  name: imagefolder\n  root: {trained}\n")
    expected = evaluate_checkpoint(run, root=trained)
    assert evaluate_checkpoint(run) == expected and expected["samples"] == 6
    assert load_checkpoint_and_test_data(run)[2].root == str(trained)
    assert main(["eval", "--checkpoint", str(run)]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1]) == expected
    assert run_data_root(run, "imagefolder", str(tmp_path / "other")) == str(tmp_path / "other")
    assert run_data_root(run, "digits", None) is None  # another dataset: vitlab's cache, not the run's folder
    assert run_data_root(run, None, None) == str(trained)
