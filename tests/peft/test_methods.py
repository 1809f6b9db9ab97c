"""Every fine-tuning method through ``build_peft_transform``.

Identity at init, frozen base, counts, merge, save/load.
"""

from __future__ import annotations

import copy

import pytest
import timm
import torch
import torch.nn.functional as F
from peft import PeftModel
from torch import nn

from vitlab.checkpoint import CheckpointError, read_metadata, save_checkpoint
from vitlab.data import few_shot_indices
from vitlab.peft import (
    build_peft_transform,
    count_parameters,
    disable_adapter,
    frozen_base_sha256,
    load_adapter,
    merge_adapters,
    save_adapter,
)

CASES = [  # (method, options, adaptation parameters on the tiny ViT below: width 48, depth 2, qkv 48 -> 144)
    ("full", {}, "all"),
    ("linear", {}, 0),
    ("kadaptation", {"n": 8}, 2 * (2 * 2 * 8 * 6 + 48) + 2 * 2 * 64),
    ("lora", {"r": 2}, 2 * 2 * (48 + 144)),
    ("lokr", {"r": 2}, None),
    ("lora_qv", {"r": 2}, 2 * 2 * 2 * (48 + 48)),
    ("adapter", {"bottleneck": 4}, 2 * (2 * 48 + 48 * 4 + 4 + 4 * 48 + 48)),
]
MERGEABLE = {"kadaptation", "lora", "lokr", "lora_qv"}  # the peft methods: each returns a peft.PeftModel


def plain_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The wrapped base model's tensors under their plain names (adapter layers and peft prefixes folded away)."""
    inner = model.get_base_model() if isinstance(model, PeftModel) else model
    return {k.replace(".base_layer.", "."): v for k, v in inner.state_dict().items()}


def tiny_vit(seed: int = 0, num_classes: int = 5, img_size: int = 16) -> nn.Module:
    torch.manual_seed(seed)
    return timm.create_model("vit_tiny_patch16_224", img_size=img_size, patch_size=8 if img_size == 16 else 2,
                             embed_dim=48, depth=2, num_heads=2, num_classes=num_classes).eval()


def train_steps(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, lr: float = 1e-2) -> None:
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()


@pytest.mark.parametrize("method,options,adaptation", CASES, ids=[c[0] for c in CASES])
def test_method_contract(method, options, adaptation, tmp_path):
    base = tiny_vit()
    x, y = torch.randn(6, 3, 16, 16), torch.randint(0, 5, (6,))
    reference, base_state = base(x), copy.deepcopy(base.state_dict())
    model = build_peft_transform(method, **options)(copy.deepcopy(base))
    torch.testing.assert_close(model(x), reference, rtol=0, atol=1e-6)  # identity at initialisation
    counts = count_parameters(model)
    assert counts["head"] == 48 * 5 + 5 and counts["trainable"] == counts["head"] + counts["adaptation"]
    if adaptation == "all":
        assert counts["adaptation"] == counts["total"] - counts["head"]
    elif adaptation is not None:
        assert counts["adaptation"] == adaptation
    else:
        assert 0 < counts["adaptation"] < counts["total"] // 20
    train_steps(model, x, y, steps=3)
    adapted = model(x)
    assert (adapted - reference).abs().max() > 1e-4  # training changed the function
    if method == "full":
        return
    frozen = plain_state(model)
    changed = [k for k, v in base_state.items() if not k.startswith("head.") and not torch.equal(frozen[k], v)]
    assert not changed, f"base weights changed by {method}: {changed[:3]}"
    assert isinstance(model, PeftModel) == (method in MERGEABLE)
    if method in MERGEABLE:  # peft: disabling also restores the original head; a peft adapter folder round trip
        with disable_adapter(model):
            torch.testing.assert_close(model(x), reference, rtol=0, atol=1e-5)
        model.save_pretrained(str(tmp_path / "adapter"))
        assert (tmp_path / "adapter" / "adapter_model.safetensors").stat().st_size < 64 * 1024
        restored = PeftModel.from_pretrained(tiny_vit(seed=0), str(tmp_path / "adapter"))
        torch.testing.assert_close(restored(x), adapted, rtol=0, atol=1e-6)
        merged = merge_adapters(model)
        assert sorted(merged.state_dict()) == sorted(base_state)
        torch.testing.assert_close(merged(x), adapted, rtol=0, atol=1e-5)
        return
    if method == "adapter":
        with disable_adapter(model):
            head_only = copy.deepcopy(base)
            head_only.head.load_state_dict(model.head.state_dict())
            torch.testing.assert_close(model(x), head_only(x), rtol=0, atol=1e-5)
    # save only the adaptation + trained head, reload onto a base whose head is freshly initialised
    path = save_adapter(tmp_path / "adapter.safetensors", model, model_name="vit_tiny_patch16_224")
    assert read_metadata(path)["base_sha256"] == frozen_base_sha256(base)
    assert path.stat().st_size < 64 * 1024
    restored = load_adapter(path, tiny_vit(seed=0).requires_grad_(True))
    torch.testing.assert_close(restored.eval()(x), adapted, rtol=0, atol=1e-6)


def test_reference_counts_of_baselines_on_vit_base():
    def count(method, **options):
        with torch.device("meta"):
            model = timm.create_model("vit_base_patch16_224", num_classes=10)
        return count_parameters(build_peft_transform(method, **options)(model))["adaptation"]

    assert count("lora_qv", r=4) == 147_456  # PEViT LoRA baseline (r=4 on Q and V)
    assert count("adapter", bottleneck=64) == 1_208_064  # PEViT adapter baseline


def test_load_adapter_refuses_other_base_and_names_the_converter_for_old_peft_method_files(tmp_path):
    model = build_peft_transform("adapter", bottleneck=2)(tiny_vit(seed=0))
    path = save_adapter(tmp_path / "a.safetensors", model)
    with pytest.raises(ValueError, match="base weights"):
        load_adapter(path, tiny_vit(seed=1))
    old = save_checkpoint(tmp_path / "old.safetensors", {"head.weight": torch.zeros(5, 48)}, kind="adapter",
                          model_name="vit_tiny_patch16_224", model_kwargs={}, base_sha256="0" * 64,
                          extra={"peft": {"method": "kadaptation", "target_modules": None, "options": {"n": 8}}})
    with pytest.raises(CheckpointError, match="vitlab peft convert"):
        load_adapter(old, tiny_vit(seed=0))
    with pytest.raises(ValueError, match="saved as a peft adapter folder.*pass the folder"):
        save_adapter(tmp_path / "b.safetensors", build_peft_transform("lora_qv", r=2)(tiny_vit(seed=0)))


def test_option_and_method_errors():
    with pytest.raises(ValueError, match=r"unknown peft method 'nope'.*kadaptation"):
        build_peft_transform("nope")
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['rank'\] for peft method 'lora'.*'r'"):
        build_peft_transform("lora", rank=4)
    with pytest.raises(ValueError, match="takes no target_modules"):
        build_peft_transform("linear", target_modules="qkv")
    with pytest.raises(ValueError, match=r"matched no nn.Linear.*blocks\.0\.attn\.qkv"):
        build_peft_transform("lora_qv", target_modules=["nothing_here"])(tiny_vit())
    with pytest.raises(ValueError, match="Candidate Linear modules"):
        build_peft_transform("lora", target_modules=["nothing_here"])(tiny_vit())
    for method in ("linear", "kadaptation", "full"):
        with pytest.raises(TypeError, match=f"the '{method}' transform adapts an nn.Module .*got str"):
            build_peft_transform(method)("model")
    with pytest.raises(TypeError, match="count_parameters needs an nn.Module, got str"):
        count_parameters("model")


def test_few_shot_run_learns_above_chance():
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32)[:, None].expand(-1, 3, -1, -1) / 16.0
    labels = torch.tensor(digits.target)
    train = few_shot_indices(labels[:1200], k=20, seed=0)

    def few_shot_accuracy(method: str, **options) -> float:
        model = build_peft_transform(method, **options)(tiny_vit(num_classes=10, img_size=8))
        generator = torch.Generator().manual_seed(0)
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
        model.train()
        for _ in range(150):
            batch = train[torch.randint(0, len(train), (32,), generator=generator)]
            opt.zero_grad()
            F.cross_entropy(model(images[batch]), labels[batch]).backward()
            opt.step()
        with torch.no_grad():
            return (model.eval()(images[1200:]).argmax(-1) == labels[1200:]).float().mean().item()

    # The backbone is randomly initialised (no pretrained weights offline), so its features are weak: the check is
    # that the Kronecker update itself learns, well beyond the head alone and far above chance (0.1).
    linear = few_shot_accuracy("linear")
    kadaptation = few_shot_accuracy("kadaptation", n=8, scale=10.0)
    assert kadaptation > 0.25 and kadaptation > linear + 0.05, (kadaptation, linear)


@pytest.mark.parametrize("method", ["linear", "kadaptation", "lora_qv"])
def test_frozen_batchnorm_uses_its_stored_statistics_in_training_and_merges_back(method):
    from vitlab.peft import build_peft_transform, merge_adapters

    torch.manual_seed(0)
    model = timm.create_model("inception_transformer_tiny", num_classes=4, in_chans=1).eval()
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms
    with torch.no_grad():  # stored statistics unlike any batch's, so train-mode batch statistics would show
        for m in norms:
            m.running_mean.normal_(0, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    options = {"n": 16} if method == "kadaptation" else {"r": 2} if method == "lora_qv" else {}
    adapted = build_peft_transform(method, **options)(model)
    x = torch.randn(3, 1, 32, 32)
    torch.testing.assert_close(adapted.train()(x), adapted.eval()(x))  # the frozen base: train computes as test
    after = {k: v for k, v in plain_state(adapted).items() if "running" in k}
    assert all(torch.equal(after[k], v) for k, v in before.items())
    if method != "linear":
        plain = merge_adapters(adapted)
        assert all(type(m) is nn.BatchNorm2d for m in plain.modules() if isinstance(m, nn.BatchNorm2d))
