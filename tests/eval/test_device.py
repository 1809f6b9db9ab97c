import pytest
import torch

from vitlab.errors import ConfigError
from vitlab.eval.device import resolve_device


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
