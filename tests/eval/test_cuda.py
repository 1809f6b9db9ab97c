"""Evaluation on a CUDA device (``pytest -m cuda``): clean accuracy, corruption robustness and negative-view
diagnostics give the CPU's results for the same tiny model and data (scikit-learn's digits; a synthetic
CIFAR-C-layout folder: nothing downloads).

``VITLAB_TEST_CUDA_DEVICE=cpu pytest -m cuda`` runs the same code on the CPU (CPU compared with itself).
"""

import copy

import numpy as np
import pytest
import torch

from vitlab.checkpoint import load_model
from vitlab.eval import diagnose_checkpoint, diagnose_negatives, evaluate_corruptions
from vitlab.eval.device import resolve_device
from vitlab.eval.evaluate import evaluate_checkpoint
from vitlab.metrics import evaluate_classifier, tensor_batches

pytestmark = pytest.mark.cuda



def _top2_gaps_and_differences(model, device, batches):
    """Per image: the CPU logits' top-2 gap and the largest |device - CPU| logit difference. A prediction can only
    differ between the devices where the difference reaches the gap."""
    on_device = copy.deepcopy(model).to(device).eval()
    gaps, differences = [], []
    with torch.no_grad():
        for images, _ in batches:
            logits = model(images)
            top = logits.topk(2, dim=1).values
            gaps.append(top[:, 0] - top[:, 1])
            differences.append((on_device(images.to(device)).cpu() - logits).abs().amax(dim=1))
    return torch.cat(gaps), torch.cat(differences)


def test_evaluate_classifier_on_device_equals_the_cpu(cuda_device, exact_float32, checkpoint, digits):
    model, _ = load_model(checkpoint)
    gaps, differences = _top2_gaps_and_differences(model, cuda_device, digits.test_dataloader())
    assert differences.max() < 1e-4
    assert bool((gaps > 10 * differences).all())  # no near-tie: the predictions must be the same on both devices
    expected = evaluate_classifier(copy.deepcopy(model), digits.test_dataloader(), device="cpu")
    trained = copy.deepcopy(model).train()
    device = resolve_device(str(cuda_device))
    result = evaluate_classifier(trained, digits.test_dataloader(), device=device)
    assert trained.training  # put back into its previous mode, and left on the device it ran on
    assert {p.device.type for p in trained.parameters()} == {cuda_device.type}
    assert result["samples"] == expected["samples"] == 360
    assert result["acc"] == expected["acc"]
    assert result["loss"] == pytest.approx(expected["loss"], rel=1e-5)
    assert evaluate_checkpoint(checkpoint, batch_size=100, device=str(cuda_device)) == pytest.approx(
        evaluate_checkpoint(checkpoint, batch_size=100, device="cpu"), rel=1e-5)


def test_evaluate_classifier_keeps_a_device_model_on_its_device(cuda_device, exact_float32, checkpoint):
    """``device=None`` runs where the model is; CPU batches are moved there."""
    model, _ = load_model(checkpoint)
    g = torch.Generator().manual_seed(0)
    images, labels = torch.rand(40, 1, 32, 32, generator=g), torch.randint(0, 10, (40,), generator=g)
    expected = evaluate_classifier(copy.deepcopy(model), tensor_batches(images, labels, batch_size=16))
    on_device = copy.deepcopy(model).to(cuda_device)
    result = evaluate_classifier(on_device, tensor_batches(images, labels, batch_size=16))
    assert next(on_device.parameters()).device.type == cuda_device.type
    assert result["acc"] == expected["acc"] and result["samples"] == 40
    assert result["loss"] == pytest.approx(expected["loss"], rel=1e-5)


def _corruption_folder(path, per_severity=24):
    """A published-layout (no meta.json) CIFAR-C folder of random 1-channel 32x32 uint8 images, two corruptions."""
    rng = np.random.default_rng(0)
    path.mkdir()
    np.save(path / "labels.npy", rng.integers(0, 10, 5 * per_severity).astype(np.int64))
    for name in ("gaussian_noise", "fog"):
        np.save(path / f"{name}.npy", rng.integers(0, 256, (5 * per_severity, 32, 32, 1), dtype=np.uint8))
    return path


def test_evaluate_corruptions_on_device_equals_the_cpu(cuda_device, exact_float32, checkpoint, tmp_path):
    model, _ = load_model(checkpoint)
    folder = _corruption_folder(tmp_path / "cifar_c")
    stacked = np.concatenate([np.load(folder / f"{c}.npy") for c in ("gaussian_noise", "fog")])
    images = torch.from_numpy(stacked).permute(0, 3, 1, 2).float() / 255
    batches = tensor_batches(images, torch.zeros(len(images)), batch_size=64)
    gaps, differences = _top2_gaps_and_differences(model, cuda_device, batches)
    assert bool((gaps > 10 * differences).all())
    expected = evaluate_corruptions(copy.deepcopy(model), folder, batch_size=16, device="cpu", progress=False)
    on_device = copy.deepcopy(model)
    result = evaluate_corruptions(on_device, folder, batch_size=16, device=str(cuda_device), progress=False)
    assert next(on_device.parameters()).device.type == cuda_device.type
    assert result["source"] == "published" and result["n"] == 24
    assert result["accuracy"] == expected["accuracy"]
    assert sorted(result["accuracy"]) == ["fog", "gaussian_noise"]
    assert all(sorted(per) == [1, 2, 3, 4, 5] for per in result["accuracy"].values())
    assert result["metrics"] == expected["metrics"]


def test_diagnose_negatives_on_device_equals_the_cpu(cuda_device, exact_float32, checkpoint, digits, tmp_path):
    """The views come from the seeded CPU generator whatever the device, so both runs see the same views."""
    model, _ = load_model(checkpoint)
    expected = diagnose_negatives(copy.deepcopy(model), digits.test_dataloader(), patch_size=8, n=100, device="cpu",
                                  seed=5)
    result = diagnose_negatives(copy.deepcopy(model), digits.test_dataloader(), patch_size=8, n=100,
                                device=str(cuda_device), seed=5)
    assert result.keys() == expected.keys() and result["n"] == 100 and result["chance"] == 0.1
    assert sorted(result["views"]) == ["clean", "infill", "rotate", "shuffle"]
    for name, values in expected["views"].items():
        got = result["views"][name]
        assert got.keys() == values.keys()
        assert got["accuracy"] == values["accuracy"], name
        assert got.get("agreement") == values.get("agreement"), name
        assert got["confidence"] == pytest.approx(values["confidence"], rel=1e-5), name
    written = diagnose_checkpoint(checkpoint, n=100, seed=5, device=str(cuda_device), out=tmp_path / "device")
    reference = diagnose_checkpoint(checkpoint, n=100, seed=5, device="cpu", out=tmp_path / "cpu")
    for name in ("clean", "infill", "rotate", "shuffle"):
        assert written["views"][name]["accuracy"] == reference["views"][name]["accuracy"], name
    assert (tmp_path / "device" / "diagnose_negatives_digits.json").is_file()


def test_evaluations_without_a_device_keep_a_device_model_there(cuda_device, exact_float32, checkpoint, digits,
                                                                 tmp_path):
    """``device=None`` (the default) runs where the model is; it was ``"cpu"``, which moved a GPU model off the GPU."""
    model, _ = load_model(checkpoint)
    on_device = copy.deepcopy(model).to(cuda_device)
    result = diagnose_negatives(on_device, digits.test_dataloader(), patch_size=8, n=50, seed=5)
    assert next(on_device.parameters()).device.type == cuda_device.type
    expected = diagnose_negatives(copy.deepcopy(model), digits.test_dataloader(), patch_size=8, n=50, seed=5,
                                  device="cpu")
    assert {k: v["accuracy"] for k, v in result["views"].items()} == \
        {k: v["accuracy"] for k, v in expected["views"].items()}
    folder = _corruption_folder(tmp_path / "cifar_c")
    report = evaluate_corruptions(on_device, folder, batch_size=16, progress=False)
    assert next(on_device.parameters()).device.type == cuda_device.type
    assert report["accuracy"] == evaluate_corruptions(copy.deepcopy(model), folder, batch_size=16, device="cpu",
                                                      progress=False)["accuracy"]
