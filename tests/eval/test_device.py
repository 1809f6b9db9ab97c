import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from vitlab.errors import ConfigError
from vitlab.eval import diagnose_negatives, evaluate_corruptions, evaluate_imagenet_c
from vitlab.eval.corruptions import SEVERITIES
from vitlab.eval.device import model_device, resolve_device

from ..meta_probe import MetaProbe, Ran


def test_a_device_name_becomes_a_torch_device_and_none_picks_what_is_there(monkeypatch):
    assert resolve_device("cpu") == torch.device("cpu") == resolve_device(torch.device("cpu"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device(None) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device(None) == torch.device("cuda")


@pytest.mark.parametrize("bad", ["gpu", "", 3.5])
def test_a_name_torch_does_not_know_is_refused(bad):
    with pytest.raises(ConfigError, match="device must be cpu, cuda or cuda:N"):
        resolve_device(bad)


def test_a_cuda_device_the_machine_lacks_is_refused_naming_the_fix(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="no CUDA GPU that torch can use; pass --device cpu"):
        resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(ConfigError, match=r"has 2 CUDA GPU\(s\), cuda:0..cuda:1"):
        resolve_device("cuda:2")



def test_model_device_defaults_to_where_the_model_is():
    assert model_device(nn.Linear(2, 2, device="meta"), None) == torch.device("meta")
    buffers_only = nn.BatchNorm1d(2, affine=False).to("meta")
    assert model_device(buffers_only, None) == torch.device("meta")
    assert model_device(nn.Identity(), None) == torch.device("cpu")  # no tensor: the CPU
    assert model_device(nn.Linear(2, 2, device="meta"), "cpu") == torch.device("cpu")
    with pytest.raises(ConfigError, match="device must be cpu, cuda or cuda:N"):
        model_device(nn.Identity(), "gpu")


def _cifar_c_folder(path):
    path.mkdir()
    np.save(path / "labels.npy", np.zeros(5 * 2, np.int64))
    np.save(path / "gaussian_noise.npy", np.zeros((5 * 2, 8, 8, 3), np.uint8))
    return path


def _imagenet_c_folder(path):
    for severity in SEVERITIES:
        folder = path / "gaussian_noise" / str(severity) / "n0"
        folder.mkdir(parents=True)
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / "a.png")
    return path


EVALUATIONS = {
    "diagnose_negatives": lambda model, tmp_path: diagnose_negatives(
        model, [(torch.rand(2, 3, 16, 16), torch.tensor([0, 1]))], patch_size=8),
    "evaluate_corruptions": lambda model, tmp_path: evaluate_corruptions(
        model, _cifar_c_folder(tmp_path / "c"), progress=False),
    "evaluate_imagenet_c": lambda model, tmp_path: evaluate_imagenet_c(
        model, _imagenet_c_folder(tmp_path / "inc"), lambda image: torch.zeros(3, 8, 8),
        corruptions=["gaussian_noise"], alexnet_normalise=False, progress=False),
}


@pytest.mark.parametrize("name", sorted(EVALUATIONS))
def test_an_evaluation_without_a_device_runs_where_the_model_is(name, tmp_path):
    # the default was device="cpu": a model on a GPU was silently moved to the CPU, in place, and left there
    model = MetaProbe()
    with pytest.raises(Ran) as ran:
        EVALUATIONS[name](model, tmp_path)
    assert str(ran.value) == "meta" and model.weight.is_meta
