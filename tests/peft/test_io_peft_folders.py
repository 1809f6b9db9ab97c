"""save_adapter / load_adapter / frozen_base_sha256 for the peft methods (``PeftModel``s, saved as peft folders)."""

from __future__ import annotations

import json

import pytest
import timm
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn

from vitlab.checkpoint import CheckpointError, state_dict_sha256
from vitlab.peft import (
    build_peft_transform,
    export_adapted_model,
    frozen_base_sha256,
    load_adapter,
    save_adapter,
)

NAME = "vit_tiny_patch16_224"
KWARGS = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2, "num_classes": 4}
METHODS = [("kadaptation", {"n": 8}), ("lora", {"r": 2}), ("lokr", {"r": 2}), ("lora_qv", {"r": 2})]
IDS = [m for m, _ in METHODS]


def tiny_vit(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return timm.create_model(NAME, **KWARGS).eval()


def adapted(method: str, options: dict, seed: int = 0) -> PeftModel:
    """The method on a seeded base, its trainable tensors (adapter + head) moved off their initial values."""
    model = build_peft_transform(method, **options)(tiny_vit(seed))
    generator = torch.Generator().manual_seed(123)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn(p.shape, generator=generator))
    return model.eval()


def headless_base_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Independent reference: the plain model's state dict without its timm head."""
    return {k: v for k, v in model.state_dict().items() if not k.startswith("head.")}


@pytest.mark.parametrize(("method", "options"), METHODS, ids=IDS)
def test_frozen_base_hash_of_a_peft_model_is_the_hash_of_its_base(method, options):
    base_hash = frozen_base_sha256(tiny_vit())
    assert base_hash == state_dict_sha256(headless_base_state(tiny_vit()))
    model = adapted(method, options)  # adapter tensors, shared tuner tensors and the trained head all moved
    assert frozen_base_sha256(model) == base_hash
    assert frozen_base_sha256(model) != frozen_base_sha256(tiny_vit(seed=1))
    with torch.no_grad():  # one frozen base weight of a targeted (wrapped) layer
        model.get_base_model().blocks[0].attn.qkv.base_layer.weight[0, 0] += 1.0
    assert frozen_base_sha256(model) != base_hash
    other = adapted(method, options)
    with torch.no_grad():  # one frozen weight of a layer that is not wrapped
        other.get_base_model().blocks[1].mlp.fc1.weight[0, 0] += 1.0
    assert frozen_base_sha256(other) != base_hash


@pytest.mark.parametrize(("method", "options"), METHODS, ids=IDS)
def test_save_adapter_writes_a_peft_folder_that_load_adapter_restores_exactly(method, options, tmp_path):
    model = adapted(method, options)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
    folder = save_adapter(tmp_path / "adapter", model, model_name=NAME, model_kwargs=KWARGS,
                          extra={"run": "r1"})
    assert folder == tmp_path / "adapter"
    assert {"adapter_config.json", "adapter_model.safetensors", "vitlab.json"} <= {p.name for p in folder.iterdir()}
    meta = json.loads((folder / "vitlab.json").read_text())
    assert meta["frozen_base_sha256"] == frozen_base_sha256(tiny_vit())
    assert (meta["model_name"], meta["model_kwargs"], meta["extra"]) == (NAME, KWARGS, {"run": "r1"})
    assert meta["peft"]["method"] == method
    restored = load_adapter(folder, tiny_vit(seed=0))  # a fresh base: its head is the untrained one
    assert isinstance(restored, PeftModel)
    with torch.no_grad():
        torch.testing.assert_close(restored.eval()(x), expected, rtol=0, atol=0)
    with pytest.raises(CheckpointError, match=rf"base weights {meta['frozen_base_sha256']}.*hashes to "
                                              rf"{frozen_base_sha256(tiny_vit(seed=1))}"):
        load_adapter(folder, tiny_vit(seed=1))
    unchecked = load_adapter(folder, tiny_vit(seed=1), check_base=False)
    assert isinstance(unchecked, PeftModel)


def test_save_adapter_records_the_given_base_hash_and_refuses_a_file_path_or_a_merged_model(tmp_path):
    model = adapted("lora_qv", {"r": 2})
    with pytest.raises(ValueError, match=r"peft adapter folder.*pass the folder, e.g. save_adapter\('.*/a', model\)"):
        save_adapter(tmp_path / "a.safetensors", model)
    assert not (tmp_path / "a.safetensors").exists()
    folder = save_adapter(tmp_path / "given", model, base_sha256="ab" * 32)
    assert json.loads((folder / "vitlab.json").read_text())["frozen_base_sha256"] == "ab" * 32
    with pytest.raises(CheckpointError, match="abab"):
        load_adapter(folder, tiny_vit())
    model.merge_adapter()
    with pytest.raises(ValueError, match=r"merged adapter layers.*unmerge"):
        save_adapter(tmp_path / "merged", model)


def test_a_plain_peft_folder_loads_without_the_check_and_files_inside_a_folder_name_the_folder(tmp_path):
    torch.manual_seed(5)
    model = get_peft_model(tiny_vit(seed=0), LoraConfig(r=2, target_modules=["qkv"], init_lora_weights=False))
    model.save_pretrained(str(tmp_path))
    x = torch.randn(2, 3, 32, 32)
    other_base = tiny_vit(seed=1)  # no vitlab.json: nothing to check, loads like PeftModel.from_pretrained
    with torch.no_grad():
        reference = PeftModel.from_pretrained(tiny_vit(seed=1), str(tmp_path))(x)
        torch.testing.assert_close(load_adapter(tmp_path, other_base)(x), reference, rtol=0, atol=0)
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        with pytest.raises(CheckpointError, match=r"one file of the peft adapter folder .*pass the folder"):
            load_adapter(tmp_path / name, tiny_vit())


def test_export_records_the_frozen_base_hash_so_load_adapter_checks_a_runs_adapter(tmp_path):
    model = adapted("kadaptation", {"n": 8})
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
    export_adapted_model(tmp_path / "run", model, model_name=NAME, model_kwargs=KWARGS, base_sha256="0" * 64)
    meta = json.loads((tmp_path / "run" / "adapter" / "vitlab.json").read_text())
    assert meta["frozen_base_sha256"] == frozen_base_sha256(tiny_vit())
    assert meta["base_sha256"] == "0" * 64  # the run's own record is kept
    with torch.no_grad():
        torch.testing.assert_close(load_adapter(tmp_path / "run" / "adapter", tiny_vit())(x), expected,
                                   rtol=0, atol=0)
    with pytest.raises(CheckpointError, match="was made for base weights"):
        load_adapter(tmp_path / "run" / "adapter", tiny_vit(seed=2))


def test_a_damaged_hash_record_is_a_checkpoint_error(tmp_path):
    folder = save_adapter(tmp_path / "adapter", adapted("lora", {"r": 2}))
    meta = json.loads((folder / "vitlab.json").read_text())
    (folder / "vitlab.json").write_text(json.dumps({**meta, "frozen_base_sha256": 7}))
    with pytest.raises(CheckpointError, match="records frozen_base_sha256 7, not a hex string"):
        load_adapter(folder, tiny_vit())
