"""What users pass to the evaluation API that earlier versions mishandled: integer labels other than int64, float or
bool labels, an empty batch, a CUDA device on a CPU-only machine, a device name torch does not know, a non-int batch
size, a boolean progress flag."""

import pytest
import torch
from torch import nn

from vitlab.metrics import evaluate_classifier, tensor_batches


def _model() -> nn.Module:
    """A 4-class linear classifier on 3 features whose logits are the features plus a zero fourth class."""
    model = nn.Linear(3, 4)
    with torch.no_grad():
        model.weight.copy_(torch.cat([torch.eye(3), torch.zeros(1, 3)]))
        model.bias.zero_()
    return model


_X = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
_Y = torch.tensor([0, 1, 1, 0])  # three of four right


@pytest.mark.parametrize("dtype", [torch.int32, torch.int16, torch.uint8])
def test_integer_labels_of_any_width_are_class_indices(dtype):
    """int32 labels (numpy's default on some platforms, a labels.npy) gave torch's 'expected target dtype Long'."""
    expected = evaluate_classifier(_model(), [(_X, _Y)])
    assert expected["acc"] == pytest.approx(0.75)
    assert evaluate_classifier(_model(), [(_X, _Y.to(dtype))]) == expected


@pytest.mark.parametrize("dtype", [torch.float32, torch.bool])
def test_float_or_bool_labels_are_refused_naming_the_fix(dtype):
    with pytest.raises(ValueError, match=r"labels are class indices.*labels\.long\(\)"):
        evaluate_classifier(_model(), [(_X, _Y.to(dtype))])


def test_an_empty_batch_is_skipped():
    """A 0-sample batch (a filtering collate) reached the model, which raised from deep inside torch / timm."""
    result = evaluate_classifier(_model(), [(_X[:0], _Y[:0]), (_X, _Y)])
    assert result["samples"] == 4
    assert result["acc"] == pytest.approx(0.75)


def test_only_empty_batches_still_say_no_sample():
    with pytest.raises(ValueError, match="held no sample"):
        evaluate_classifier(_model(), [(_X[:0], _Y[:0])])


def test_cuda_without_a_gpu_is_refused_naming_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a CPU-only machine, also where a GPU is lent
    with pytest.raises(ValueError, match="no CUDA GPU.*device='cpu'"):
        evaluate_classifier(_model(), [(_X, _Y)], device="cuda")


def test_unknown_device_name_is_refused_naming_valid_ones():
    with pytest.raises(ValueError, match="'cpu', 'cuda' or 'cuda:0', got 'gpu'"):
        evaluate_classifier(_model(), [(_X, _Y)], device="gpu")


def test_progress_must_be_a_description():
    with pytest.raises(TypeError, match="progress is the progress bar's description"):
        evaluate_classifier(_model(), [(_X, _Y)], progress=True)


@pytest.mark.parametrize("batch_size", [2.5, "2", True, 0])
def test_tensor_batches_refuses_a_non_int_batch_size(batch_size):
    with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
        list(tensor_batches(_X, _Y, batch_size=batch_size))


def test_corruption_labels_outside_the_classes_name_the_files(tmp_path):
    """A labels.npy with class 10 for a 10-class model said only 'labels 0..10 lie outside' (no file named)."""
    import numpy as np

    from vitlab.errors import DataError
    from vitlab.eval.robustness import evaluate_corruptions

    np.save(tmp_path / "labels.npy", np.array([0, 1, 2, 3, 10]))  # one image per severity; severity 5's label is 10
    np.save(tmp_path / "fog.npy", np.zeros((5, 4, 4, 1), dtype=np.uint8))
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 10))
    with pytest.raises(DataError, match=r"fog\.npy \(severity 5\) with its labels\.npy: labels 10\.\.10 lie outside"):
        evaluate_corruptions(model, tmp_path, progress=False)


def test_diagnose_negatives_skips_an_empty_batch():
    """A 0-image batch failed inside torch ('min(): Expected reduction dim to be specified')."""
    from vitlab.eval.diagnostics import diagnose_negatives

    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 4))
    images = torch.rand(6, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 2, 3, 0, 1])
    expected = diagnose_negatives(model, [(images, labels)], kinds=["shuffle"], patch_size=2)
    result = diagnose_negatives(model, [(images[:0], labels[:0]), (images, labels)], kinds=["shuffle"], patch_size=2)
    assert result == expected
    assert result["n"] == 6
