"""Multi-adapter and round-trip workflows of peft users on vitlab's adapters (session 27): each test once failed
(a traceback from deep inside torch / peft, or a message naming the wrong fix)."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from peft import get_peft_model
from torch import nn

from vitlab.checkpoint import CheckpointError
from vitlab.peft import KAdaptationConfig, load_adapter

KWARGS = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2, "num_classes": 3}


def tiny_vit() -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", **KWARGS).eval()


class _Payload:
    def __reduce__(self) -> tuple:
        return (print, ("code ran",))


@pytest.mark.parametrize("content", [b"", b"garbage", "truncated", "code"])
def test_a_damaged_or_unsafe_pickle_adapter_is_refused_without_torchs_weights_only_false_advice(
        tmp_path: Path, content: object) -> None:
    """``save_pretrained(folder, safe_serialization=False)`` writes ``adapter_model.bin``; a damaged one gave torch's
    EOFError / OSError / UnpicklingError, the last advising ``weights_only=False`` (arbitrary code execution)."""
    get_peft_model(tiny_vit(), KAdaptationConfig(n=8)).save_pretrained(tmp_path, safe_serialization=False)
    weights = tmp_path / "adapter_model.bin"
    if content == "truncated":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif content == "code":
        torch.save({"x": _Payload()}, weights)
    else:
        weights.write_bytes(content)
    with pytest.raises(CheckpointError, match=r"adapter_model\.bin is not a readable weights-only torch file") as err:
        load_adapter(tmp_path, tiny_vit())
    assert "likely succeed" not in str(err.value) and "trust the source" not in str(err.value)


def test_a_pickle_adapter_folder_still_loads(tmp_path: Path) -> None:
    model = get_peft_model(tiny_vit(), KAdaptationConfig(n=8))
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.1)
    model.save_pretrained(tmp_path, safe_serialization=False)
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(load_adapter(tmp_path, tiny_vit())(x), model(x))


def _trainable_adapters(model: nn.Module) -> dict[str, int]:
    """Number of trainable parameters per adapter name (``default`` / ``c``; the base has none)."""
    counts: dict[str, int] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            adapter = next(a for a in ("default", "c") if f".{a}." in f"{name}.")
            counts[adapter] = counts.get(adapter, 0) + 1
    return counts


# 11 trainable tensors per adapter: 4 shared A factors, u / v of Q and V and the delta bias of one layer, the head
@pytest.mark.parametrize(("is_trainable", "second", "expected"), [
    (True, "load", {"default": 11}),  # was 7: loading c for inference froze default's shared A factors
    (False, "load_trainable", {"c": 11}),  # was default's 4 shared A factors trainable too
    (False, "add", {}),  # was default's 4 shared A factors trainable (add_adapter un-froze them)
])
def test_a_second_adapter_keeps_the_first_ones_trainability_shared_factors_included(
        tmp_path: Path, is_trainable: bool, second: str, expected: dict[str, int]) -> None:
    """``PeftModel.from_pretrained(base, folder, is_trainable=...)`` then ``load_adapter(folder, "c", ...)``
    or ``add_adapter('c', config)``: peft keeps the existing adapter's trainability and leaves an inactive new one
    frozen unless loaded trainable; KAdaptation's shared ``A`` factors (held by the tuner) now follow the same rule."""
    from peft import PeftModel

    get_peft_model(tiny_vit(), KAdaptationConfig(n=8)).save_pretrained(tmp_path)
    model = PeftModel.from_pretrained(tiny_vit(), tmp_path, is_trainable=is_trainable)
    assert _trainable_adapters(model) == ({"default": 11} if is_trainable else {})
    if second == "add":
        model.add_adapter("c", KAdaptationConfig(n=8))
    else:
        model.load_adapter(tmp_path, adapter_name="c", is_trainable=second == "load_trainable")
    assert _trainable_adapters(model) == expected


def test_disable_adapter_freezes_the_shared_factors_too_and_restores_them() -> None:
    """Inside ``with model.disable_adapter():`` peft freezes every adapter weight; KAdaptation's shared ``A`` factors
    stayed trainable (an optimiser built there would take them)."""
    model = get_peft_model(tiny_vit(), KAdaptationConfig(n=8))
    before = [name for name, p in model.named_parameters() if p.requires_grad]
    with model.disable_adapter():
        assert [name for name, p in model.named_parameters() if p.requires_grad] == []
    assert [name for name, p in model.named_parameters() if p.requires_grad] == before
    assert sum(".kadaptation_A." in name for name in before) == 4


def test_deleting_the_active_adapter_makes_the_next_one_trainable_shared_factors_included() -> None:
    """``add_adapter('b')``, ``set_adapter('b')``, ``delete_adapter('b')``: peft activates ``default`` again and makes
    its layer weights trainable; its shared ``A`` factors stayed frozen (they would not train)."""
    model = get_peft_model(tiny_vit(), KAdaptationConfig(n=8))
    before = [name for name, p in model.named_parameters() if p.requires_grad]
    model.add_adapter("b", KAdaptationConfig(n=8))
    model.set_adapter("b")
    with pytest.warns(UserWarning, match="Setting active adapter to default"):
        model.delete_adapter("b")
    assert model.active_adapters == ["default"]
    assert [name for name, p in model.named_parameters() if p.requires_grad] == before


@pytest.mark.parametrize(("kwargs", "fix"), [
    ({"lora_alpha": 16}, r"write LoraQVConfig\(alpha=16\)"),
    ({"lora_dropout": 0.1}, r"write LoraQVConfig\(dropout=0\.1\)"),
])
def test_lora_qv_config_names_alpha_and_dropout_for_peft_loras_keywords(kwargs: dict, fix: str) -> None:
    """A peft LoRA user writes ``LoraQVConfig(r=8, lora_alpha=16)``: that was Python's 'unexpected keyword'."""
    from vitlab.errors import ConfigError
    from vitlab.peft import LoraQVConfig

    with pytest.raises(ConfigError, match=fix):
        LoraQVConfig(r=8, **kwargs)
    assert LoraQVConfig(r=8, alpha=16).alpha == 16.0


def test_save_adapter_of_a_model_whose_adapter_is_not_named_default_loads_back(tmp_path: Path) -> None:
    """``apply_kadaptation(m, cfg, adapter_name='x')`` (or ``PeftModel.from_pretrained(..., adapter_name='x')``) then
    ``save_adapter``: peft writes the adapter into ``folder/x``; ``load_adapter(folder, base)`` said the folder was
    incomplete and to save it again (which wrote the same folder)."""
    from vitlab.peft import apply_kadaptation, save_adapter

    model = apply_kadaptation(tiny_vit(), KAdaptationConfig(n=8), adapter_name="x")
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.1)
    folder = save_adapter(tmp_path / "adapter", model)
    x = torch.rand(2, 3, 32, 32)
    loaded = load_adapter(folder, tiny_vit())
    assert loaded.active_adapters == ["x"]
    torch.testing.assert_close(loaded(x), model(x))
    other = tiny_vit()
    with torch.no_grad():
        other.head.weight.add_(1.0)
        other.blocks[0].mlp.fc1.weight.add_(1.0)
    with pytest.raises(CheckpointError, match="was made for base weights"):  # vitlab.json's base hash still checked
        load_adapter(folder, other)


def test_a_folder_of_several_named_adapters_names_the_peft_calls(tmp_path: Path) -> None:
    model = get_peft_model(tiny_vit(), KAdaptationConfig(n=8), adapter_name="x")
    model.add_adapter("y", KAdaptationConfig(n=8))
    from vitlab.peft import save_adapter

    folder = save_adapter(tmp_path / "adapter", model)
    with pytest.raises(CheckpointError, match=r"subfolders \['x', 'y'\].*adapter_name='x'.*load_adapter\(.*y'"):
        load_adapter(folder, tiny_vit())


@pytest.mark.filterwarnings("ignore:Adapter name .* should not be contained in the prefix:UserWarning")  # peft, for ""
@pytest.mark.parametrize("name", ["a.b", ""])
def test_add_adapter_refuses_a_name_modules_cannot_be_keyed_by(name: str) -> None:
    """``peft_model.add_adapter('a.b', KAdaptationConfig())`` was torch's KeyError 'module name can't contain "."'."""
    model = get_peft_model(tiny_vit(), KAdaptationConfig(n=8))
    with pytest.raises(ValueError, match="adapter_name must be a non-empty name without '.'"):
        model.add_adapter(name, KAdaptationConfig(n=8))
    assert list(model.peft_config) == ["default"] and list(model.base_model.kadaptation_A) == ["default"]
