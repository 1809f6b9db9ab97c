"""``target_modules: auto``: the module kinds of the per-module table, their Linear targets, the selection rule."""

import json

import pytest
import timm
import torch
from torch import nn

from vitlab.peft import auto
from vitlab.peft.auto import auto_targets, kind_targets
from vitlab.peft.intrinsic.per_module import MODULE_KINDS, ModuleRecord, write_module_table


def _vit() -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=2,
                             num_classes=10)


def _names(targets) -> list[str]:
    return [f"{t.module_name}@{t.slice_name}" if t.slice_name else t.module_name for t in targets]


def test_every_module_kind_has_a_linear_rule_and_finds_its_modules():
    assert set(auto._SEPARATE) | set(auto._PATTERNS) == set(MODULE_KINDS)  # one list of kinds
    vit = _vit()
    found = {kind: _names(kind_targets(vit, kind)) for kind in MODULE_KINDS}
    assert found == {"attn.q": ["blocks.0.attn.qkv@q", "blocks.1.attn.qkv@q"],
                     "attn.k": ["blocks.0.attn.qkv@k", "blocks.1.attn.qkv@k"],
                     "attn.v": ["blocks.0.attn.qkv@v", "blocks.1.attn.qkv@v"],
                     "attn.proj": ["blocks.0.attn.proj", "blocks.1.attn.proj"],
                     "mlp.fc1": ["blocks.0.mlp.fc1", "blocks.1.mlp.fc1"],
                     "mlp.fc2": ["blocks.0.mlp.fc2", "blocks.1.mlp.fc2"],
                     "high_mixer": []}
    q = kind_targets(vit, "attn.q")[0]
    assert q.rows == (0, 48)  # the query third of qkv's 144 rows
    with pytest.raises(ValueError, match=r"unknown module kind 'attn_q'; known kinds are \['attn.q'"):
        kind_targets(vit, "attn_q")


def test_auto_follows_the_table_rank_and_skips_what_the_model_lacks(tmp_path):
    # raw d90 (grid points) would put mlp.fc1 first; the rank (interpolated d90) puts attn.v first
    def record(rank, module, d90, interpolated, reached=True):
        return ModuleRecord(rank=rank, module=module, d90=d90, d90_interpolated=interpolated, reached=reached,
                            num_params=100, best_accuracy=0.8, reference_accuracy=0.85, threshold=0.765,
                            targets=(module, "head"))

    records = [record(1, "high_mixer", 64, 40.0), record(2, "attn.v", 512, 260.0), record(3, "mlp.fc1", 300, 290.0),
               record(4, "attn.q", 512, 500.0), record(5, "attn.k", None, None, reached=False)]
    csv_path, json_path = write_module_table(records, tmp_path)
    vit = _vit()
    for table in (csv_path, json_path, tmp_path):
        kinds, targets = auto_targets(vit, table)
        assert kinds == ["attn.v", "mlp.fc1"]  # high_mixer: no Linear in a ViT; attn.k: not reached
        assert _names(targets) == ["blocks.0.attn.qkv@v", "blocks.1.attn.qkv@v", "blocks.0.mlp.fc1",
                                   "blocks.1.mlp.fc1"]
    assert auto_targets(vit, tmp_path, top_k=3)[0] == ["attn.v", "mlp.fc1", "attn.q"]
    payload = json.loads(json_path.read_text())
    payload["modules"][1]["module"] = "attn_v"  # a table of an earlier version
    json_path.write_text(json.dumps(payload))
    assert auto_targets(vit, json_path)[0] == ["attn.v", "mlp.fc1"]


def test_auto_reads_a_hand_written_table_and_says_what_is_missing(tmp_path):
    table = tmp_path / "d90.csv"
    table.write_text("module,d90\nattn.q,120\nmlp.fc1,90\nattn.v,120\nhigh_mixer,10\n")
    assert auto_targets(_vit(), table, top_k=2)[0] == ["mlp.fc1", "attn.q"]  # ties: table order
    table.write_text("module,d90\nattn.q,\nhigh_mixer,10\n")
    with pytest.raises(ValueError, match=r"adaptable: \['attn.q'"):
        auto_targets(_vit(), table)
    with pytest.raises(FileNotFoundError, match="intrinsic-dim --per_module true"):
        auto_targets(_vit(), tmp_path / "absent.csv")
