"""A fine-tuning run leaves a merged kind-model file every tool reads, plus the adaptation alone."""

import copy
import subprocess
import sys

import pytest
import timm
import torch
from peft import PeftConfig as PeftAdapterConfig
from peft import PeftModel
from safetensors import safe_open

from vitlab.checkpoint import CheckpointError, load_model, read_metadata, save_checkpoint, state_dict_sha256
from vitlab.eval.evaluate import evaluate_checkpoint
from vitlab.peft import build_peft_transform, count_parameters
from vitlab.peft.export import export_adapted_model, load_adapted_model, load_run_model
from vitlab.peft.io import frozen_base_sha256
from vitlab.train import DataConfig, ModelConfig, OptimConfig, PeftConfig, RunConfig, fit

KWARGS = {"img_size": 32, "patch_size": 8, "embed_dim": 48, "depth": 2, "num_heads": 2, "num_classes": 10,
          "in_chans": 1}
NAME = "vit_tiny_patch16_224"


def _trained(method, **options):
    """A base model, and the same base adapted with ``method`` and its adapter weights set to random values."""
    torch.manual_seed(0)
    base = timm.create_model(NAME, **KWARGS).eval()
    adapted = build_peft_transform(method, **options)(copy.deepcopy(base))
    with torch.no_grad():
        for p in adapted.parameters():
            if p.requires_grad:
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
                                 base_sha256=state_dict_sha256(base.state_dict()), base_weights=str(base_path))
    assert files[0].name == "model.safetensors"
    merged, meta = load_model(tmp_path / "run")
    assert meta["kind"] == "model" and meta["extra"]["base_weights"] == str(base_path)
    assert sorted(merged.state_dict()) == sorted(base.state_dict())  # exactly the base architecture
    torch.testing.assert_close(merged(x), expected, atol=1e-5, rtol=1e-5)
    side = files[1]
    peft_method = method in ("kadaptation", "lora_qv")
    plain_name = "adapter" if peft_method else "adapter.safetensors"
    assert side.name == {"subspace": "subspace.safetensors"}.get(method, plain_name)
    weights = side / "adapter_model.safetensors" if peft_method else side
    with safe_open(str(weights), framework="pt") as handle:
        stored = sum(handle.get_tensor(k).numel() for k in handle.keys())
    assert stored == count_parameters(adapted)["trainable"]  # the adaptation and head alone, nothing frozen
    if peft_method:  # a standard peft folder: plain peft loads it onto the base
        restored = PeftModel.from_pretrained(timm.create_model(NAME, **KWARGS), str(side))
        restored.base_model.model.load_state_dict(base.state_dict(), strict=False)
    else:
        assert read_metadata(side)["kind"] == ("subspace" if method == "subspace" else "adapter")
    restored, _ = load_adapted_model(side)  # base rebuilt from the recorded weights (subspace: P from its seed)
    torch.testing.assert_close(restored(x), expected, atol=1e-5, rtol=1e-5)


def test_subspace_file_has_a_real_base_hash_and_a_reader_that_checks_it(tmp_path):
    """The subspace checkpoint was write-only with base_sha256 'not recorded' (issue 17): it now records the frozen
    base's hash when none is given, load_adapted_model rebuilds the unmerged model, and another base is refused."""
    base, adapted = _trained("subspace", dim=50, said=True, train_head=True)
    base_path = save_checkpoint(tmp_path / "base" / "model.safetensors", base.state_dict(), kind="model",
                                model_name=NAME, model_kwargs=KWARGS)
    side = export_adapted_model(tmp_path / "run", adapted, model_name=NAME, model_kwargs=KWARGS,
                                base_weights=str(base_path))[1]
    assert read_metadata(side)["base_sha256"] == frozen_base_sha256(base)  # was "not recorded"
    restored, meta = load_adapted_model(side)
    x = torch.randn(2, 1, 32, 32)
    torch.testing.assert_close(restored(x), adapted(x), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(load_run_model(side)[0](x), adapted(x), atol=1e-6, rtol=1e-6)  # eval's reader
    assert meta["kind"] == "subspace" and restored.said_scales is not None
    assert [n for n, p in restored.named_parameters() if p.requires_grad] == [
        n for n, p in adapted.named_parameters() if p.requires_grad]
    torch.manual_seed(1)  # the recorded base file now holds other weights
    save_checkpoint(base_path, timm.create_model(NAME, **KWARGS).state_dict(), kind="model", model_name=NAME,
                    model_kwargs=KWARGS)
    with pytest.raises(CheckpointError, match="trained on other base weights"):
        load_adapted_model(side)
    with pytest.raises(CheckpointError, match="load_adapted_model"):
        load_model(side)  # a whole-model reader names the subspace reader


def test_a_subspace_file_trained_from_random_init_names_the_run_folder_not_peft(tmp_path):
    """`vitlab eval --checkpoint RUN/subspace.safetensors` of a run from random init advised
    PeftModel.from_pretrained, which cannot read it; the run's merged model.safetensors holds the model."""
    _, adapted = _trained("subspace", dim=50)
    side = export_adapted_model(tmp_path / "run", adapted, model_name=NAME, model_kwargs=KWARGS)[1]
    with pytest.raises(CheckpointError, match=r"not recorded: trained from random init\): evaluate the run's merged "
                                              r"model instead: pass the run folder") as info:
        load_adapted_model(side)
    assert "PeftModel" not in str(info.value)
    merged, _ = load_model(tmp_path / "run")  # what the message points to holds the adapted outputs
    x = torch.randn(2, 1, 32, 32)
    torch.testing.assert_close(merged(x), adapted(x), atol=1e-5, rtol=1e-5)


def test_bottleneck_adapter_runs_keep_only_the_adapter_and_load_through_the_base(tmp_path):
    base, adapted = _trained("adapter", bottleneck=4)
    x = torch.randn(2, 1, 32, 32)
    base_path = save_checkpoint(tmp_path / "base.safetensors", base.state_dict(), kind="model", model_name=NAME,
                                model_kwargs=KWARGS)
    files = export_adapted_model(tmp_path / "run", adapted, model_name=NAME, model_kwargs=KWARGS,
                                 base_weights=str(base_path))
    assert [f.name for f in files] == ["adapter.safetensors"]
    model, meta = load_adapted_model(files[0])
    assert meta["kind"] == "adapter"
    torch.testing.assert_close(model(x), adapted(x), atol=1e-5, rtol=1e-5)
    from vitlab.peft import load_run_model  # what eval / robustness use on the run folder

    torch.testing.assert_close(load_run_model(tmp_path / "run")[0](x), adapted(x), atol=1e-5, rtol=1e-5)
    base_path.unlink()
    with pytest.raises(CheckpointError, match="needs its base weights"):
        load_adapted_model(files[0])


def test_export_refuses_full_fine_tuning(tmp_path):
    model = build_peft_transform("full")(timm.create_model(NAME, **KWARGS))
    with pytest.raises(ValueError, match="save_checkpoint"):
        export_adapted_model(tmp_path, model, model_name=NAME, model_kwargs=KWARGS)


@pytest.fixture(scope="module")
def pretrained_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("runs")
    return fit(RunConfig(name="pre", model=ModelConfig(name="vit_vitlab_tiny_patch4_32", kwargs=TINY), **_common(tmp)))


TINY = {"depth": 2, "embed_dim": 48, "num_heads": 2}


def _common(tmp_path):
    return {"seed": 1, "output_dir": str(tmp_path), "data": DataConfig(name="digits", batch_size=64),
            "optim": OptimConfig(lr=3e-3, warmup_epochs=0),
            "trainer": {"max_epochs": 1, "accelerator": "cpu", "enable_progress_bar": False,
                        "enable_model_summary": False, "limit_train_batches": 2, "limit_val_batches": 1}}


@pytest.mark.parametrize(("method", "options"), [("kadaptation", {"n": 8}), ("lora_qv", {"r": 2}), ("lora", {"r": 2}),
                                                 ("lokr", {"r": 2})])
def test_a_fit_runs_adapter_folder_loads_with_plain_peft(pretrained_run, tmp_path, method, options):
    run = fit(RunConfig(name=method, model=ModelConfig(name="vit_vitlab_tiny_patch4_32", kwargs=TINY,
                                                       pretrained=str(pretrained_run.run_dir)),
                        peft=PeftConfig(method=method, options=options), **_common(tmp_path)))
    assert read_metadata(run.run_dir)["kind"] == "model"  # the merged model.safetensors stays
    assert (run.run_dir / "adapter" / "adapter_config.json").is_file()
    rebuilt, meta = load_adapted_model(run.run_dir / "adapter")  # base rebuilt from vitlab.json's base_weights
    merged, _ = load_model(run.run_dir)
    x = torch.randn(2, 1, 32, 32)
    torch.testing.assert_close(rebuilt(x), merged(x), rtol=1e-4, atol=1e-4)
    via_run_loader, _ = load_run_model(run.run_dir / "adapter")  # the adapter folder, given where a run is expected
    torch.testing.assert_close(via_run_loader(x), merged(x), rtol=1e-4, atol=1e-4)
    assert PeftAdapterConfig.from_pretrained(str(run.run_dir / "adapter")).base_model_name_or_path.endswith(
        "model.safetensors")
    if method == "kadaptation":
        result = evaluate_checkpoint(run.run_dir, "digits", batch_size=100)
        assert result["acc"] == pytest.approx(run.metrics["test/acc"], abs=1e-6)
    # a plain Python session: only `import vitlab` and peft's own API
    script = (
        "import sys, torch, timm, vitlab\n"
        "from peft import PeftModel\n"
        "from vitlab.checkpoint import load_model, load_pretrained\n"
        "base = timm.create_model('vit_vitlab_tiny_patch4_32', num_classes=10, in_chans=1, img_size=32, "
        f"**{TINY!r})\n"
        f"load_pretrained(base, {str(pretrained_run.run_dir / 'model.safetensors')!r})\n"
        f"model = PeftModel.from_pretrained(base, {str(run.run_dir / 'adapter')!r}).eval()\n"
        f"merged, _ = load_model({str(run.run_dir)!r})\n"
        "x = torch.randn(3, 1, 32, 32)\n"
        "err = (model(x) - merged(x)).abs().max().item()\n"
        "sys.exit(0 if err < 1e-4 else f'outputs differ by {err}')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


def _legacy_names(method: str, peft_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The names vitlab 0.1 gave the same tensors (written out by hand, independently of vitlab.peft.convert)."""
    legacy = {}
    for part in ("weight", "bias"):
        legacy[f"head.{part}"] = peft_state[f"base_model.model.head.modules_to_save.default.{part}"]
    for i in range(2):
        qkv = f"base_model.model.blocks.{i}.attn.qkv"
        if method == "kadaptation":
            for s in ("q", "v"):
                for part in ("u", "v"):
                    legacy[f"blocks.{i}.attn.qkv.adapters.{s}.{part}"] = \
                        peft_state[f"{qkv}.kadaptation_{part}.default.{s}"]
            legacy[f"blocks.{i}.attn.qkv.adapter_bias"] = peft_state[f"{qkv}.kadaptation_bias.default"]
        elif method == "lora_qv":
            for s in ("q", "v"):
                for part in ("A", "B"):
                    legacy[f"blocks.{i}.attn.qkv.adapters.{s}.lora_{part}"] = \
                        peft_state[f"{qkv}.qvlora_{part}.default.{s}"]
        else:  # peft's own LoRA, injected in place by vitlab 0.1: peft names with the adapter name
            for part in ("A", "B"):
                legacy[f"blocks.{i}.attn.qkv.lora_{part}.default.weight"] = \
                    peft_state[f"{qkv}.lora_{part}.default.weight"]
    if method == "kadaptation":
        for role in ("q", "v"):
            for part in ("left", "right"):
                legacy[f"kadaptation_rules.{role}.{part}"] = \
                    peft_state[f"base_model.kadaptation_A.default.{role}_{part}"]
    return legacy


@pytest.mark.parametrize(("method", "options", "old_options"), [
    ("kadaptation", {"n": 8}, {"n": 8, "bias": True, "head_modules": None}),
    ("lora_qv", {"r": 2}, {"r": 2}),
    ("lora", {"r": 2}, {"r": 2}),
])
def test_vitlab_01_adapter_files_convert_to_peft_folders(tmp_path, method, options, old_options):
    from vitlab.peft import convert_adapter

    base, adapted = _trained(method, **options)
    legacy = _legacy_names(method, adapted.state_dict())
    old = save_checkpoint(tmp_path / "adapter.safetensors", legacy, kind="adapter", model_name=NAME,
                          model_kwargs=KWARGS, base_sha256="0" * 64,
                          extra={"peft": {"method": method, "target_modules": None, "options": old_options}})
    folder = convert_adapter(old, tmp_path / "converted")
    restored = PeftModel.from_pretrained(copy.deepcopy(base), str(folder))
    x = torch.randn(2, 1, 32, 32)
    torch.testing.assert_close(restored(x), adapted(x), rtol=0, atol=1e-6)
    from vitlab.cli.main import main  # the same through `vitlab peft convert`

    assert main(["peft", "convert", str(old), "--out", str(tmp_path / "by_cli")]) == 0
    by_cli = PeftModel.from_pretrained(copy.deepcopy(base), str(tmp_path / "by_cli"))
    torch.testing.assert_close(by_cli(x), adapted(x), rtol=0, atol=1e-6)
    with pytest.raises(CheckpointError, match="nothing to convert"):
        convert_adapter(save_checkpoint(tmp_path / "lin.safetensors", {"head.weight": torch.zeros(1)},
                                        kind="adapter", model_name=NAME, model_kwargs=KWARGS, base_sha256="0" * 64,
                                        extra={"peft": {"method": "linear", "target_modules": None, "options": {}}}),
                        tmp_path / "x")
