"""The evaluation commands on a run's ``adapter/`` folder (peft format), which ``vitlab.peft.load_run_model`` reads:
``eval`` / ``robustness`` / ``diagnose-negatives`` looked for ``adapter/model.safetensors`` to find the run's config
or the report's folder and refused with "no weights at .../adapter/model.safetensors"."""

import json

import pytest
import timm
import torch

from tests.eval.conftest import TINY_VIT
from vitlab.checkpoint import save_checkpoint, state_dict_sha256
from vitlab.eval.evaluate import diagnose_checkpoint, evaluate_checkpoint
from vitlab.peft import build_peft_transform
from vitlab.peft.export import export_adapted_model

NAME = "vit_vitlab_tiny_patch4_32"


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, digits):
    """A run folder as `vitlab fit` with peft.method lora writes it: merged model.safetensors, adapter/, config.yaml
    (with a val split other than the default, to show that the run's own config is read)."""
    run = tmp_path_factory.mktemp("lora_run")
    torch.manual_seed(0)
    base = timm.create_model(NAME, **TINY_VIT)
    base_path = save_checkpoint(tmp_path_factory.mktemp("base") / "model.safetensors", base.state_dict(), kind="model",
                                model_name=NAME, model_kwargs=TINY_VIT, extra={"data": digits.data_config()})
    adapted = build_peft_transform("lora", r=2)(base)
    with torch.no_grad():
        for name, param in adapted.named_parameters():
            if "lora_B" in name:  # a non-zero update, so that the adapter changes the logits
                param.normal_(0, 0.5)
    export_adapted_model(run, adapted, model_name=NAME, model_kwargs=TINY_VIT,
                         base_sha256=state_dict_sha256(base.state_dict()), base_weights=str(base_path),
                         extra={"data": digits.data_config()})
    (run / "config.yaml").write_text("seed: 3\ndata: {name: digits, val_fraction: 0.2}\n")
    return run


def test_eval_of_the_adapter_folder_equals_the_merged_run(lora_run):
    merged = evaluate_checkpoint(lora_run, batch_size=100)
    assert evaluate_checkpoint(lora_run / "adapter", batch_size=100) == pytest.approx(merged, rel=1e-4)


def test_val_split_of_the_adapter_folder_is_the_runs_own(lora_run):
    """The run's config.yaml (val_fraction 0.2) is read from the folder above adapter/: 20 % of 1437 = 287 images."""
    result = evaluate_checkpoint(lora_run / "adapter", split="val", batch_size=100)
    assert result["samples"] == evaluate_checkpoint(lora_run, split="val", batch_size=100)["samples"] == 287


def test_diagnose_reports_into_the_adapter_folder(lora_run):
    diagnose_checkpoint(lora_run / "adapter", n="20", kinds=["shuffle"], batch_size=20)
    report = json.loads((lora_run / "adapter" / "diagnose_negatives_digits.json").read_text())
    assert report["checkpoint"] == str(lora_run / "adapter" / "adapter_model.safetensors")
