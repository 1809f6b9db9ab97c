"""A fine-tuning run leaves a merged kind-model file every tool reads, plus the adaptation alone."""

import pytest
import timm
import torch
from safetensors import safe_open

from vitlab.checkpoint import CheckpointError, load_model, read_metadata, save_checkpoint
from vitlab.eval.evaluate import evaluate_checkpoint
from vitlab.peft import build_peft_transform, count_parameters
from vitlab.peft.export import export_adapted_model, load_adapted_model
from vitlab.train import DataConfig, ModelConfig, OptimConfig, PeftConfig, RunConfig, fit

KWARGS = {"img_size": 32, "patch_size": 8, "embed_dim": 48, "depth": 2, "num_heads": 2, "num_classes": 10,
          "in_chans": 1}
NAME = "vit_tiny_patch16_224"


def _trained(method, **options):
    """A base model, and the same base adapted with ``method`` and its adapter weights set to random values."""
    torch.manual_seed(0)
    base = timm.create_model(NAME, **KWARGS).eval()
    adapted = build_peft_transform(method, **options)(timm.create_model(NAME, **KWARGS).eval())
    adapted.load_state_dict(base.state_dict(), strict=False)  # unwrapped names load; wrapped ones below
    with torch.no_grad():
        for name, p in adapted.named_parameters():
            if ".base_layer." in name:
                p.copy_(base.state_dict()[name.replace(".base_layer.", ".")])
            elif p.requires_grad:
                p.normal_(0, 0.05)
    return base, adapted


@pytest.mark.parametrize(("method", "options"), [("kadaptation", {"n": 8}), ("lora_qv", {"r": 2}), ("linear", {}),
                                                 ("subspace", {"dim": 50})])
def test_export_writes_a_merged_model_with_the_adapted_outputs(tmp_path, method, options):
    base, adapted = _trained(method, **options)
    x = torch.randn(3, 1, 32, 32)
    expected = adapted(x)
    base_path = save_checkpoint(tmp_path / "base" / "model.safetensors", base.state_dict(), kind="model",
                                model_name=NAME, model_kwargs=KWARGS)
    files = export_adapted_model(tmp_path / "run", adapted, model_name=NAME, model_kwargs=KWARGS,
                                 base_sha256="0" * 64, base_weights=str(base_path))
    assert files[0].name == "model.safetensors"
    merged, meta = load_model(tmp_path / "run")
    assert meta["kind"] == "model" and meta["extra"]["base_weights"] == str(base_path)
    assert sorted(merged.state_dict()) == sorted(base.state_dict())  # exactly the base architecture
    torch.testing.assert_close(merged(x), expected, atol=1e-5, rtol=1e-5)
    side = files[1]
    assert side.name == ("subspace.safetensors" if method == "subspace" else "adapter.safetensors")
    with safe_open(str(side), framework="pt") as handle:
        stored = sum(handle.get_tensor(k).numel() for k in handle.keys())
    assert stored == count_parameters(adapted)["trainable"]  # the adaptation and head alone, nothing frozen
    assert read_metadata(side)["kind"] == ("subspace" if method == "subspace" else "adapter")
    if method != "subspace":
        restored, _ = load_adapted_model(side)
        torch.testing.assert_close(restored(x), expected, atol=1e-5, rtol=1e-5)


def test_bottleneck_adapter_runs_keep_only_the_adapter_and_load_through_the_base(tmp_path):
    base, adapted = _trained("adapter", bottleneck=4)
    x = torch.randn(2, 1, 32, 32)
    base_path = save_checkpoint(tmp_path / "base.safetensors", base.state_dict(), kind="model", model_name=NAME,
                                model_kwargs=KWARGS)
    files = export_adapted_model(tmp_path / "run", adapted, model_name=NAME, model_kwargs=KWARGS,
                                 base_weights=str(base_path))
    assert [f.name for f in files] == ["adapter.safetensors"]
    model, meta = load_model(tmp_path / "run")  # the run folder resolves to adapter.safetensors
    assert meta["kind"] == "adapter"
    torch.testing.assert_close(model(x), adapted(x), atol=1e-5, rtol=1e-5)
    base_path.unlink()
    with pytest.raises(CheckpointError, match="needs its base weights"):
        load_model(tmp_path / "run")


def test_export_refuses_full_fine_tuning(tmp_path):
    model = build_peft_transform("full")(timm.create_model(NAME, **KWARGS))
    with pytest.raises(ValueError, match="save_checkpoint"):
        export_adapted_model(tmp_path, model, model_name=NAME, model_kwargs=KWARGS)


def test_a_peft_fit_run_is_read_by_vitlab_eval(tmp_path):
    tiny = {"depth": 2, "embed_dim": 48, "num_heads": 2}
    common = {"seed": 1, "output_dir": str(tmp_path), "data": DataConfig(name="digits", batch_size=64),
              "optim": OptimConfig(lr=3e-3, warmup_epochs=0),
              "trainer": {"max_epochs": 1, "accelerator": "cpu", "enable_progress_bar": False,
                          "enable_model_summary": False, "limit_train_batches": 3}}
    pre = fit(RunConfig(name="pre", model=ModelConfig(name="vitlab_vit_tiny_32", kwargs=tiny), **common))
    run = fit(RunConfig(name="kad", model=ModelConfig(name="vitlab_vit_tiny_32", kwargs=tiny,
                                                      pretrained=str(pre.run_dir)),
                        peft=PeftConfig(method="kadaptation", options={"n": 8}), **common))
    assert read_metadata(run.run_dir)["kind"] == "model"
    assert read_metadata(run.run_dir / "adapter.safetensors")["kind"] == "adapter"
    result = evaluate_checkpoint(run.run_dir, "digits", batch_size=100)
    assert result["acc"] == pytest.approx(run.metrics["test/acc"], abs=1e-6)
