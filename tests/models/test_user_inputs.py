"""What users of timm pass to vitlab's models by mistake: each is refused with a message naming the fix, never a
traceback from inside timm or torch, and never a silently different model."""

from __future__ import annotations

import re

import pytest
import timm
import torch

import vitlab.models  # noqa: F401  (registers the models)

VIT = "vit_vitlab_tiny_patch8_32"


@pytest.mark.parametrize(("kwargs", "match"), [
    (dict(num_classes=-1), "num_classes must be an int >= 0, got -1"),
    (dict(num_classes="10"), "num_classes must be an int >= 0, got '10'"),
    (dict(num_classes=1.5), "num_classes must be an int >= 0, got 1.5"),
    (dict(in_chans=0), "in_chans must be an int >= 1, got 0"),
    (dict(patch_size=0), "patch_size must be an int >= 1, got 0"),
    (dict(patch_size=(8, 0)), "patch_size must be an int >= 1, got 0"),
])
def test_vit_refuses_bad_sizes_at_construction(kwargs, match):
    # timm builds no head for num_classes=-1 (a silent (B, 128) output) and fails deep in torch on the others
    with pytest.raises(ValueError, match=match):
        timm.create_model(VIT, **kwargs)


def test_vit_reset_classifier_refuses_a_bad_class_count_and_keeps_its_head():
    model = timm.create_model(VIT, num_classes=10)
    for bad in (-3, "3", 2.0):
        with pytest.raises(ValueError, match="num_classes must be an int >= 0"):
            model.reset_classifier(bad)
    assert model.num_classes == 10 and model.get_classifier().out_features == 10
    model.reset_classifier(4)
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 4)


@pytest.mark.parametrize(("images", "error", "match"), [
    (torch.zeros(2, 3, 40, 40), ValueError, "this ViT takes 32x32 images, got 40x40"),
    (torch.zeros(2, 3, 32, 32, dtype=torch.uint8), TypeError, "expected floating-point images"),
    (torch.zeros(2, 1, 32, 32), ValueError, r"expected input \(B, 3, H, W\)"),
])
def test_vit_forward_features_checks_its_images_as_forward_does(images, error, match):
    model = timm.create_model(VIT).eval()
    with pytest.raises(error, match=match):
        model.forward_features(images)


def test_vit_forward_features_of_good_images_is_timms():
    model = timm.create_model(VIT).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        tokens = model.forward_features(x)
        expected = timm.models.vision_transformer.VisionTransformer.forward_features(model, x)
        assert torch.equal(tokens, expected) and tokens.shape == (2, 16, 128)
        assert torch.equal(model(x), model.forward_head(tokens))


@pytest.mark.parametrize("name", ["inception_transformer_tiny", VIT])
@pytest.mark.parametrize("kind", ["truncated.pth", "empty.pth", "truncated.safetensors", "code.pth"])
@pytest.mark.parametrize("features_only", [False, True])
def test_timm_pretrained_from_an_unreadable_local_file_names_the_file(tmp_path, name, kind, features_only):
    from safetensors.torch import save_file

    from vitlab.checkpoint import CheckpointError

    state = timm.create_model(name).state_dict()
    path = tmp_path / kind
    if kind == "truncated.pth":
        torch.save(state, path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif kind == "truncated.safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif kind == "empty.pth":
        path.write_bytes(b"")
    else:
        marker = tmp_path / "ran"
        torch.save({"model": _RunsCode(str(marker))}, path)
    kwargs = dict(features_only=True) if features_only else {}
    with pytest.raises(CheckpointError) as info:
        timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **kwargs)
    message = str(info.value)
    assert str(path) in message and name in message and "weights_only=False" not in message
    assert not (tmp_path / "ran").exists()


class _RunsCode:
    """A pickle that would create ``path`` when unpickled without ``weights_only``."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("name", ["inception_transformer_tiny", VIT])
def test_timm_pretrained_file_under_home_is_found(tmp_path, monkeypatch, name):
    source = timm.create_model(name).eval()
    torch.save(source.state_dict(), tmp_path / "w.pth")
    monkeypatch.setenv("HOME", str(tmp_path))
    model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file="~/w.pth")).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), source(x))


def test_a_shape_error_from_a_readable_pretrained_file_stays_the_models_own(tmp_path):
    torch.save(timm.create_model(VIT).state_dict(), tmp_path / "vit.pth")
    with pytest.raises(ValueError, match="does not fit this InceptionTransformer"):
        timm.create_model("inception_transformer_tiny", pretrained=True,
                          pretrained_cfg_overlay=dict(file=str(tmp_path / "vit.pth")))


@pytest.mark.parametrize("fmt", [None, "nchw", 1])
def test_iformer_forward_intermediates_names_a_bad_output_fmt(fmt):
    model = timm.create_model("inception_transformer_tiny").eval()
    with pytest.raises(ValueError, match=f"output_fmt must be 'NCHW' or 'NHWC', got {fmt!r}"):
        model.forward_intermediates(torch.zeros(2, 3, 32, 32), output_fmt=fmt)


@pytest.mark.parametrize(("args", "kwargs", "error", "match"), [
    ((None,), {}, TypeError, "path must be the .onnx file to write .*got None"),
    ((5,), {}, TypeError, "path must be the .onnx file to write .*got 5"),
    (("m.onnx",), dict(atol="1e-4"), ValueError, "atol must be a finite number"),
    (("m.onnx",), dict(atol=float("nan")), ValueError, "atol must be a finite number"),
    (("m.onnx",), dict(atol=0.0), ValueError, "atol must be > 0"),
    (("m.onnx",), dict(check="no"), ValueError, "check must be True or False, got 'no'"),
    (("m.onnx",), dict(max_batch=2.5), ValueError, "max_batch must be an int >= 3, got 2.5"),
])
def test_export_onnx_refuses_bad_arguments_before_exporting(tmp_path, monkeypatch, args, kwargs, error, match):
    from vitlab.models import export_onnx

    monkeypatch.chdir(tmp_path)
    model = timm.create_model("inception_transformer_tiny").eval()
    with pytest.raises(error, match=match):
        export_onnx(model, *args, **kwargs)
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_export_onnx_expands_a_home_path_and_takes_a_model_without_parameters(tmp_path, monkeypatch):
    import onnxruntime

    from vitlab.models import export_onnx

    monkeypatch.setenv("HOME", str(tmp_path))
    model = torch.nn.Flatten().eval()  # no parameters: traced on the CPU in float32
    path = export_onnx(model, "~/flat.onnx", (2, 3, 4))
    assert path == tmp_path / "flat.onnx" and path.is_file()
    x = torch.randn(5, 2, 3, 4)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {"images": x.numpy()})
    assert torch.equal(torch.from_numpy(out), x.flatten(1))


def _iformer(**changes):
    from vitlab.models import InceptionTransformer

    config = dict(depths=(1, 1, 1, 1), embed_dims=(32, 64, 96, 128), num_heads=(2, 4, 6, 8),
                  attention_heads=(1, 2, 3, 4), num_classes=5, img_size=32)
    return InceptionTransformer(**{**config, **changes})


@pytest.mark.parametrize(("changes", "match"), [
    (dict(depths=None), r"depths must be a sequence of positive ints .*got None"),
    (dict(depths="1111"), r"depths must be a sequence of positive ints .*got '1111'"),
    (dict(depths=(1.0, 1, 1, 1)), r"depths must be a sequence of positive ints"),
    (dict(embed_dims=(32.0, 64, 96, 128)), r"embed_dims must be a sequence of positive ints"),
    (dict(embed_dims=(-32, 64, 96, 128)), r"embed_dims must be a sequence of positive ints"),
    (dict(num_heads=(2.0, 4, 6, 8)), r"num_heads must be a sequence of positive ints"),
    (dict(attention_heads=(1.0, 2, 3, 4)), r"attention_heads must be a sequence of positive ints"),
    (dict(attention_heads=(True, 2, 3, 4)), r"attention_heads must be a sequence of positive ints"),
    (dict(mlp_ratio=float("inf")), "mlp_ratio must be a positive number"),
    (dict(layer_scale_init_value=float("nan")), r"layer_scale_init_value must be a number \(a finite one"),
])
def test_iformer_constructor_names_the_bad_architecture_argument(changes, match):
    # each used to fail inside torch (zeros(), Conv2d, int(inf)), or build a model (True heads, NaN LayerScale)
    with pytest.raises(ValueError, match=match):
        _iformer(**changes)


def test_iformer_constructor_still_takes_lists_from_a_json_config():
    model = _iformer(depths=[1, 1, 1, 1], embed_dims=[32, 64, 96, 128], num_heads=[2, 4, 6, 8],
                     attention_heads=[1, 2, 3, 4], layer_scale_init_value=None).eval()
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 5) and model.embed_dims == [32, 64, 96, 128]


@pytest.mark.parametrize(("args", "kwargs", "error", "match"), [
    ((None, (3, 32, 32)), {}, TypeError, "count_flops needs an nn.Module"),
    (("model", 32), {}, ValueError, "input_size must give the per-sample input shape as positive ints"),
    (("model", "3,32,32"), {}, ValueError, "input_size must give the per-sample input shape as positive ints"),
    (("model", (3, 32.0, 32)), {}, ValueError, "input_size must give the per-sample input shape as positive ints"),
    (("model", (3, 32, 32)), dict(batch_size=0), ValueError, "batch_size must be an int >= 1, got 0"),
    (("model", (3, 32, 32)), dict(batch_size=2.0), ValueError, "batch_size must be an int >= 1, got 2.0"),
    (("meta", (3, 32, 32)), {}, ValueError, "on the meta device .*to_empty"),
])
def test_count_flops_refuses_bad_arguments(args, kwargs, error, match):
    from vitlab.models.flops import count_flops

    models = {"model": timm.create_model("inception_transformer_tiny"),
              "meta": timm.create_model("inception_transformer_tiny", device="meta")}
    model = models.get(args[0]) if isinstance(args[0], str) else args[0]
    with pytest.raises(error, match=match):
        count_flops(model, args[1], **kwargs)


def test_timm_pretrained_file_that_is_a_folder_says_so(tmp_path):
    from vitlab.errors import MissingFileError

    with pytest.raises(MissingFileError, match=f"{tmp_path} is a folder, not a file; pass the path of a local"):
        timm.create_model(VIT, pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp_path)))


@pytest.mark.parametrize("name", ["inception_transformer_tiny", VIT])
@pytest.mark.parametrize(("out_indices", "fix"), [((0, 0), r"\(0,\)"), ((2, 1), r"\(1, 2\)"), ((-1, 0), r"\(0, \d\)")])
def test_features_only_refuses_repeated_or_reordered_out_indices(name, out_indices, fix):
    # the maps come out in network order, one per stage, but feature_info followed out_indices: (2, 1) paired the
    # stage-1 map with stage 2's channel count, (0, 0) listed two features for one map
    with pytest.raises(ValueError, match=f"in increasing order .*got {re.escape(str(out_indices))}: pass {fix}"):
        timm.create_model(name, features_only=True, out_indices=out_indices)


@pytest.mark.parametrize("name", ["inception_transformer_tiny", VIT])
def test_features_only_maps_match_feature_info_for_increasing_out_indices(name):
    model = timm.create_model(name, features_only=True, out_indices=(1, -1)).eval()
    maps = model(torch.randn(2, 3, 32, 32))
    assert [m.shape[1] for m in maps] == model.feature_info.channels() and len(maps) == 2


def test_export_onnx_checks_a_float16_model_with_float16_inputs(tmp_path):
    # the check fed float32 images to the float16 graph (onnxruntime: "Unexpected input data type")
    from vitlab.models import export_onnx

    model = timm.create_model(VIT).eval().half()
    with pytest.raises(ValueError, match="float16 kernels round differently .*pass atol=1e-2"):
        export_onnx(model, tmp_path / "half.onnx", atol=1e-7)
    assert export_onnx(model, tmp_path / "half.onnx", atol=1e-2).is_file()


def test_export_onnx_of_a_model_onnxruntime_cannot_run_names_the_fix(tmp_path):
    from vitlab.models import export_onnx

    model = timm.create_model(VIT).eval().double()  # onnxruntime's CPU provider has no float64 Conv
    with pytest.raises(ValueError, match=r"onnxruntime cannot run it .*torch.float64.*model.float\(\).*check=False"):
        export_onnx(model, tmp_path / "double.onnx")
    assert export_onnx(model, tmp_path / "double.onnx", check=False).is_file()
