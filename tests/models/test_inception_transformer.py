"""Inception Transformer: equivalence with the official code, checkpoint compatibility, sizes and FLOPs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from timm.layers import Mlp

from tests.models.conftest import small_model
from vitlab.models.cpu_linear import onednn_linear
from vitlab.models.inception_transformer import ChunkedMlp, InceptionTransformer, Mixer, load_official_checkpoint

FIXTURE = "iformer_official_reference_tiny.safetensors"
SHAPES = "iformer_official_state_dict_shapes.json"
FIXTURES = Path(__file__).parents[1] / "fixtures"


def _fixture_path(name: str) -> Path:
    """A fixture made with the official code (tests/fixtures/, part of the repository): missing is a failure."""
    path = FIXTURES / name
    if not path.is_file():
        pytest.fail(f"fixture {path} is missing: it is part of the repository, restore it with `git checkout {path}`")
    return path


@pytest.fixture(scope="module")
def reference():
    with safe_open(str(_fixture_path(FIXTURE)), "pt") as f:
        config = json.loads(f.metadata()["config"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    return config, tensors


@pytest.mark.parametrize("dtype, atol", [(torch.float64, 1e-9), (torch.float32, 1e-5)])
@pytest.mark.parametrize("res", [64, 96])  # 96 != img_size: exercises the forward-time pos-embed interpolation
def test_matches_official_outputs(reference, dtype, atol, res):
    config, tensors = reference
    model = InceptionTransformer(**config)
    load_official_checkpoint(model, {k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")})
    model = model.to(dtype).eval()
    x = tensors[f"input_{res}"].to(dtype)
    with torch.no_grad():
        pooled = model.forward_head(model.forward_features(x), pre_logits=True)
        logits = model(x)
    torch.testing.assert_close(pooled.double(), tensors[f"pooled_features_{res}"], rtol=0, atol=atol)
    torch.testing.assert_close(logits.double(), tensors[f"logits_{res}"], rtol=0, atol=atol)


OFFICIAL = {  # timm name -> (official name in the shapes JSON, parameter count in millions)
    "inception_transformer_small": ("iformer_small", 19.866),
    "inception_transformer_base": ("iformer_base", 47.866),
    "inception_transformer_large": ("iformer_large", 86.637),
    "inception_transformer_small_384": ("iformer_small_384", 20.900),
}


@pytest.mark.parametrize("name", list(OFFICIAL))
def test_state_dict_and_param_count_match_official(name):
    official, millions = OFFICIAL[name]
    expected = json.loads(_fixture_path(SHAPES).read_text())[official]
    with torch.device("meta"):
        model = timm.create_model(name)
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert list(shapes) == list(expected)  # same names in the same order
    assert shapes == expected
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 3) == millions


@pytest.mark.parametrize(
    "name, gflops", [("inception_transformer_small", 4.85), ("inception_transformer_base", 9.38),
                     ("inception_transformer_large", 14.05)],
)
def test_flops_match_official_readme(name, gflops):
    from vitlab.models.flops import count_flops

    flops = count_flops(timm.create_model(name), (3, 224, 224))
    assert abs(flops / 1e9 - gflops) / gflops < 0.02


def test_sdpa_flops_are_counted():
    from vitlab.models.flops import count_flops

    class Attention(torch.nn.Module):
        def forward(self, x):
            return F.scaled_dot_product_attention(x, x, x)

    # q @ k^T and attn @ v on (batch 3, 2 heads, 16 tokens, dim 8)
    assert count_flops(Attention(), (2, 16, 8), batch_size=3) == 3 * 2 * 16 * 16 * (8 + 8)


def test_load_official_checkpoint_unwraps_and_strips_module_prefix(tmp_path):
    source, target = small_model(), small_model()
    path = tmp_path / "iformer.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}, "epoch": 3}, path)
    load_official_checkpoint(target, path)
    for k, v in source.state_dict().items():
        torch.testing.assert_close(target.state_dict()[k], v, rtol=0, atol=0)


@pytest.mark.parametrize(("content", "error", "message"), [
    (None, FileNotFoundError, "no weights file at"),
    (b"not a checkpoint at all", ValueError, "not a readable weights file: corrupt, truncated or not a checkpoint"),
    (b"", ValueError, "not a readable weights file"),
    ("tensor", ValueError, "does not hold a state dict of tensors"),
    ("code", ValueError, "refused: it holds pickled Python objects"),
])
def test_load_official_checkpoint_refuses_a_bad_file_naming_it_without_unsafe_advice(tmp_path, content, error, message):
    path = tmp_path / "iformer.pth"
    if content == "tensor":
        torch.save(torch.zeros(3), path)
    elif content == "code":
        torch.save({"model": {}, "trap": print}, path)  # a pickled function: loading it could run code
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(error, match=message) as info:
        load_official_checkpoint(small_model(), path)
    assert "weights_only=False" not in str(info.value) and str(path) in str(info.value)


def test_safetensors_round_trip(tmp_path):
    source, target = small_model().eval(), small_model().eval()
    save_file(source.state_dict(), str(tmp_path / "weights.safetensors"))
    load_official_checkpoint(target, tmp_path / "weights.safetensors")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(target(x), source(x), rtol=0, atol=0)


def test_vitlab_checkpoint_round_trip(tmp_path):
    from vitlab import checkpoint
    kwargs = dict(num_classes=4, in_chans=1)
    model = timm.create_model("inception_transformer_tiny", **kwargs).eval()
    path = checkpoint.save_checkpoint(
        tmp_path / "model.safetensors", model.state_dict(), kind="model", model_name="inception_transformer_tiny",
        model_kwargs=kwargs,
    )
    rebuilt, _ = checkpoint.load_model(path)
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), model(x), rtol=0, atol=0)


def test_resizes_position_embeddings_like_the_forward_pass():
    # the 224 -> 384 case in miniature: 32-px weights into a 64-px model
    source = small_model().eval()
    target = small_model(img_size=64).eval()
    load_official_checkpoint(target, source.state_dict())
    expected = F.interpolate(source.pos_embed1.permute(0, 3, 1, 2), size=(16, 16), mode="bilinear")
    torch.testing.assert_close(target.pos_embed1, expected.permute(0, 2, 3, 1))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():  # the source interpolates at forward time with the same rule
        torch.testing.assert_close(target(x), source(x), rtol=0, atol=1e-6)


def test_load_errors_name_the_offending_keys(tmp_path):
    model = small_model()
    state = dict(model.state_dict())
    del state["blocks2.0.attn.low_mixer.qkv.weight"]
    state["blocks9.0.extra"] = torch.zeros(1)
    state["head.weight"] = torch.zeros(1000, 128)
    with pytest.raises(ValueError) as err:
        load_official_checkpoint(model, state)
    message = str(err.value)
    assert "missing (1): blocks2.0.attn.low_mixer.qkv.weight" in message
    assert "unexpected (1): blocks9.0.extra" in message
    assert "head.weight: checkpoint (1000, 128) vs model (5, 128)" in message
    with pytest.raises(FileNotFoundError, match="no weights file at"):
        load_official_checkpoint(model, tmp_path / "absent.pth")
    with pytest.raises(TypeError, match="path or a state dict"):
        load_official_checkpoint(model, 3)


def test_timm_pretrained_loads_a_local_official_file(tmp_path):
    source = timm.create_model("inception_transformer_tiny")
    path = tmp_path / "iformer_tiny.pth"
    torch.save({"model": source.state_dict()}, path)
    model = timm.create_model("inception_transformer_tiny", pretrained=True,
                              pretrained_cfg_overlay=dict(file=str(path)))
    for k, v in source.state_dict().items():
        torch.testing.assert_close(model.state_dict()[k], v, rtol=0, atol=0)


@pytest.mark.parametrize("dtype, atol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_fast_mixer_matches_the_plain_formulation(dtype, atol):
    """The mixer's speed-ups (1x1 convs as matrix products, one concatenation, ``x + conv_fuse(x)`` folded into the
    depthwise kernel) against the textbook form with the same modules, in training mode for the gradients too."""
    torch.manual_seed(0)
    mixer = Mixer(dim=64, num_heads=4, attention_heads=2, pool_size=2).to(dtype)
    for p in mixer.parameters():
        torch.nn.init.normal_(p, std=0.2)
    x = torch.randn(2, 8, 8, 64, dtype=dtype, requires_grad=True)

    def plain(x):
        y = x.permute(0, 3, 1, 2)
        high, h = mixer.high_mixer, mixer.high_dim
        cx = high.act1(high.proj1(high.conv1(y[:, : high.half].contiguous())))
        px = high.act2(high.proj2(high.pool(y[:, high.half : h].contiguous())))
        y = torch.cat((torch.cat((cx, px), dim=1), mixer.low_mixer(y[:, h:].contiguous())), dim=1)
        y = y + mixer.conv_fuse(y)
        return mixer.proj(y).permute(0, 2, 3, 1)

    fast, expected = mixer(x), plain(x)
    torch.testing.assert_close(fast, expected, rtol=0, atol=atol)
    grads = [torch.autograd.grad(out.square().sum(), [x, *mixer.parameters()]) for out in (fast, expected)]
    for g_fast, g_plain in zip(*grads, strict=True):
        torch.testing.assert_close(g_fast, g_plain, rtol=1e-5, atol=atol * 10)


@pytest.mark.parametrize("dtype, atol", [(torch.float64, 1e-12), (torch.float32, 1e-6)])
def test_chunked_mlp_equals_timm_mlp(dtype, atol):
    """At inference, row chunks (7 rows of 64 hidden values, 50 tokens: an uneven last chunk) give timm's Mlp
    outputs; in training, or with autograd on, or with dropout, the module is timm's Mlp itself."""
    torch.manual_seed(0)
    chunked = ChunkedMlp(16, 64, hidden_budget=7 * 64).to(dtype)
    assert chunked.rows == 7
    plain = Mlp(16, 64).to(dtype)
    with torch.no_grad():
        for p in chunked.parameters():
            p.normal_(std=0.3)
    plain.load_state_dict(chunked.state_dict())
    x = torch.randn(2, 5, 5, 16, dtype=dtype)
    with torch.inference_mode(), torch.profiler.profile() as prof:
        torch.testing.assert_close(chunked.eval()(x), plain.eval()(x), rtol=0, atol=atol)
    products = sum(e.count for e in prof.key_averages() if e.key in ("aten::addmm", "mkldnn::_linear_pointwise"))
    assert products == 2 * 8 + 2  # two per chunk (ceil(50 / 7) = 8), then timm's Mlp: two for the whole batch
    for mode in (True, False):  # training, and eval with autograd on: timm's Mlp, gradients flow
        out = chunked.train(mode)(x.requires_grad_(True))
        torch.testing.assert_close(out, plain.train(mode)(x), rtol=0, atol=atol)
        with onednn_linear(False):  # with PyTorch's own matrix-product kernel: bit-identical
            torch.testing.assert_close(chunked(x), plain(x), rtol=0, atol=0)
        assert out.requires_grad
    with torch.inference_mode():
        assert chunked.eval()(x[:0]).shape == (0, 5, 5, 16)  # an empty batch
    assert ChunkedMlp(16, 64, drop=0.1).approximate == ""  # dropout: timm's path
    with pytest.raises(ValueError, match="hidden_budget must be >= 1"):
        ChunkedMlp(16, 64, hidden_budget=0)


@pytest.mark.parametrize("targets", [["qkv"], ["fc1", "fc2"], ["conv1", "proj2", "proj"]])
def test_wrapped_layers_run_their_own_forward(targets):
    """A peft LoRA adapter on the qkv Linear, the MLP Linears or the 1x1 convs (which the model runs as matrix
    products) is applied in training and at inference (chunked MLP path): outputs equal the merged model's."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model = timm.create_model("inception_transformer_tiny", num_classes=4).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        base = model(x)
    adapted = get_peft_model(model, LoraConfig(r=2, target_modules=targets, init_lora_weights=False)).eval()
    with torch.no_grad():
        inference = adapted(x)
    with_grad = adapted(x)
    merged = adapted.merge_and_unload()
    with torch.no_grad():
        reference = merged(x)
    assert (inference - base).abs().max() > 1e-3  # the adapter changes the outputs
    torch.testing.assert_close(inference, reference, rtol=0, atol=1e-5)
    torch.testing.assert_close(with_grad.detach(), reference, rtol=0, atol=1e-5)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"in_chans": 0}, "in_chans must be an int >= 1, got 0"), ({"in_chans": True}, "in_chans must be an int"),
    ({"num_classes": -1}, "num_classes must be an int >= 0"), ({"img_size": "a"}, "img_size must be an int or"),
    ({"img_size": (32, 32, 3)}, r"\(height, width\) ints"), ({"img_size": 0}, "cannot take a 0x0 input"),
])
def test_constructor_refuses_bad_sizes_and_counts_naming_them(kwargs, message):
    with pytest.raises(ValueError, match=message):
        timm.create_model("inception_transformer_tiny", **kwargs)


def test_an_empty_image_is_refused_by_the_size_check_not_a_convolution():
    model = timm.create_model("inception_transformer_tiny").eval()
    with pytest.raises(ValueError, match="cannot take a 0x0 input: give images of at least 16x16 pixels"):
        model(torch.randn(1, 3, 0, 0))
