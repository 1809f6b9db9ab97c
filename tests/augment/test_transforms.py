"""PatchShuffle / PatchRotate / PatchInfill / NegativeViews: the contract of issue 5 and kornia-style checks."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch

from vitlab.augment import KINDS, NegativeViews, PatchInfill, PatchRotate, PatchShuffle, PatchTransform, remap_cells
from vitlab.errors import ConfigError

CASES = {
    "shuffle": lambda **kw: PatchShuffle(4, **kw),
    "rotate": lambda **kw: PatchRotate(4, **kw),
    "infill": lambda **kw: PatchInfill(4, 0.25, **kw),
    "views": lambda **kw: NegativeViews(KINDS, 4, **kw),
}


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def cells(x: torch.Tensor, ps: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, N, C, ps, ps)."""
    b, c, h, w = x.shape
    return x.view(b, c, h // ps, ps, w // ps, ps).permute(0, 2, 4, 1, 3, 5).reshape(b, -1, c, ps, ps)


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.uint8])
def test_new_tensor_same_shape_dtype_device_input_untouched(name, dtype):
    x = (torch.rand(4, 3, 16, 32) * 255).to(dtype)  # non-square: a 4x8 cell grid
    before = x.clone()
    y = CASES[name]()(x, generator=gen())
    assert y.shape == x.shape and y.dtype == dtype and y.device == x.device
    assert y.data_ptr() != x.data_ptr() and torch.equal(x, before)
    assert not any(torch.equal(y[i], x[i]) for i in range(4))  # never a silent no-op
    single = CASES[name]()(x[0], generator=gen())
    assert single.shape == x[0].shape and torch.equal(single, CASES[name]()(x[:1], generator=gen())[0])


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.uint8])
@pytest.mark.parametrize("p", [1.0, 0.5])
def test_fast_path_equals_reference_remap(name, dtype, p):
    x = (torch.rand(16, 3, 16, 32) * 255).to(dtype)  # non-square: a 4x8 cell grid
    t = CASES[name](p=p)
    y = t(x, generator=gen())
    params = t.last_params
    assert torch.equal(y, remap_cells(x, 4, params["source"], params["rotation"]))


@pytest.mark.parametrize("name", ["shuffle", "rotate"])
def test_pixel_multiset_preserved(name):
    x = torch.rand(6, 2, 16, 16)
    y = CASES[name]()(x, generator=gen())
    assert torch.equal(y.flatten(1).sort(dim=1).values, x.flatten(1).sort(dim=1).values)


def test_rotate_keeps_cells_in_place_and_inverse_restores():
    x = torch.rand(5, 3, 16, 16)
    rotate = PatchRotate(4)
    y = rotate(x, generator=gen())
    cx, cy = cells(x, 4), cells(y, 4)
    assert torch.equal(cx.flatten(2).sort(dim=2).values, cy.flatten(2).sort(dim=2).values)
    params = rotate.last_params
    assert torch.equal(params["source"], torch.arange(16).expand(5, 16))
    assert torch.equal(remap_cells(y, 4, params["source"], (4 - params["rotation"]) % 4), x)
    for k in range(4):  # exact rot90 of each cell, counter-clockwise
        chosen = params["rotation"] == k
        assert torch.equal(cy[chosen], torch.rot90(cx[chosen], k, (-2, -1)))


def test_shuffle_never_keeps_original_order():
    shuffle = PatchShuffle(8)
    x = torch.arange(16 * 8, dtype=torch.float).view(1, 1, 16, 8).repeat(3000, 1, 1, 1)  # 2 cells
    y = shuffle(x, generator=gen())
    assert torch.equal(y[:, :, :8], x[:, :, 8:]) and torch.equal(y[:, :, 8:], x[:, :, :8])
    shuffle4 = PatchShuffle(4)  # 2x2 grid: 1 draw in 24 would be the identity without the rejection step
    shuffle4(torch.rand(2000, 1, 8, 8), generator=gen())
    assert not bool((shuffle4.last_params["source"] == torch.arange(4)).all(dim=1).any())


def test_numerical_seeded_values():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    y = PatchShuffle(2)(x, generator=gen(0))
    expected = torch.tensor([[8.0, 9.0, 10.0, 11.0], [12.0, 13.0, 14.0, 15.0], [0.0, 1.0, 2.0, 3.0],
                             [4.0, 5.0, 6.0, 7.0]])
    assert torch.equal(y[0, 0], expected)


@pytest.mark.parametrize("rate,block", [(0.25, (slice(8, 24), slice(8, 24))), (0.375, (slice(8, 24), slice(4, 28)))])
def test_infill_changes_only_centre_and_copies_border(rate, block):
    x = torch.rand(20, 3, 32, 32)
    infill = PatchInfill(4, rate)
    y = infill(x, generator=gen())
    centre = torch.zeros(32, 32, dtype=torch.bool)
    centre[block] = True
    assert torch.equal(y[..., ~centre], x[..., ~centre])  # non-centre cells bit-identical
    assert centre.sum() / centre.numel() == rate
    cx, cy = cells(x, 4), cells(y, 4)
    grid = torch.ones(8, 8, dtype=torch.bool)
    grid[1:-1, 1:-1] = False
    ring = grid.flatten().nonzero().flatten()
    centre_cells = cells(centre.view(1, 1, 32, 32), 4)[0].flatten(1).all(dim=1).nonzero().flatten()
    for b in range(20):
        for n in centre_cells:
            assert any(torch.equal(cy[b, n], cx[b, r]) for r in ring)


def test_infill_rate_error_lists_sizes():
    with pytest.raises(ValueError, match=r"4x4 cell grid: no centred block of 6 cells.*fit this 32x32 input: 2, 4$"):
        PatchInfill(8, 0.375)(torch.rand(1, 3, 32, 32))
    assert PatchInfill(8, 0.375).valid_patch_sizes(32, 32) == [2, 4]
    assert PatchInfill(4, None, centre_shape=(4, 6)).grid(32, 32) == (8, 8)
    with pytest.raises(ValueError, match="replace_rate"):
        PatchInfill(4, None)
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        PatchInfill(4, 1.0)


@pytest.mark.parametrize("name", CASES)
def test_commutes_with_per_channel_normalize(name):
    x = torch.rand(4, 3, 16, 16)
    mean, std = torch.tensor([0.4, 0.5, 0.6]).view(3, 1, 1), torch.tensor([0.2, 0.3, 0.25]).view(3, 1, 1)
    t = CASES[name]()
    after = (t(x, generator=gen()) - mean) / std
    before = t((x - mean) / std, params=t.last_params)
    assert torch.equal(after, before)


@pytest.mark.parametrize("name", CASES)
def test_generator_determinism_and_replay(name):
    x = torch.rand(8, 3, 16, 16)
    t = CASES[name]()
    a, b, c = t(x, generator=gen(3)), t(x, generator=gen(3)), t(x, generator=gen(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(t(x, params=t.last_params), c)
    torch.manual_seed(5)
    d = t(x)
    torch.manual_seed(5)
    assert torch.equal(t(x), d)  # generator=None: torch's default generator
    with pytest.raises(ValueError, match="replay params only on a batch of the same size"):
        t(x[:4], params=t.last_params)


@pytest.mark.parametrize("name", CASES)
def test_p_and_same_on_batch(name):
    x = torch.rand(64, 3, 16, 16)
    t = CASES[name](p=0.0)
    y = t(x, generator=gen())
    assert torch.equal(y, x) and y.data_ptr() != x.data_ptr() and not bool(t.last_params["applied"].any())
    half = CASES[name](p=0.5)
    y = half(x, generator=gen())
    applied = half.last_params["applied"]
    assert 10 < int(applied.sum()) < 54
    assert torch.equal(y[~applied], x[~applied])
    assert not any(torch.equal(y[i], x[i]) for i in applied.nonzero().flatten())
    same = CASES[name](same_on_batch=True)
    y = same(x[:1].expand(5, -1, -1, -1), generator=gen())
    assert all(torch.equal(y[0], y[i]) for i in range(5))
    with pytest.raises(ValueError, match="probability"):
        CASES[name](p=1.5)


def test_alignment_rule_with_model_patch_size():
    with pytest.raises(ValueError, match="not a multiple of model_patch_size=4"):
        PatchShuffle(6, model_patch_size=4)
    with pytest.raises(ValueError, match=r"does not divide the 28x28 input.*model_patch_size=4\): 4$"):
        PatchShuffle(8, model_patch_size=4)(torch.rand(1, 1, 28, 28))
    # a 1x1 grid (224-px cells) is refused by P-Rotate as by P-Shuffle: it turns the whole image, no patches
    assert PatchRotate(16, model_patch_size=16).valid_patch_sizes(224, 224) == [16, 32, 112]
    assert PatchShuffle(16, model_patch_size=16).valid_patch_sizes(224, 224) == [16, 32, 112]


def test_bad_inputs():
    with pytest.raises(ValueError, match="does not divide the 32x32 input.*: 2, 4, 8, 16$"):
        PatchShuffle(5)(torch.rand(2, 3, 32, 32))
    with pytest.raises(TypeError, match="float or uint8"):
        PatchShuffle(4)(torch.zeros(1, 3, 8, 8, dtype=torch.int32))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\) or \(C, H, W\)"):
        PatchShuffle(4)(torch.rand(8, 8))
    with pytest.raises(TypeError, match="torch.Tensor"):
        PatchShuffle(4)([[0.0]])
    with pytest.raises(ConfigError, match="int >= 2, got 0"):
        PatchRotate(0)
    assert PatchShuffle(4)(torch.rand(0, 3, 8, 8), generator=gen()).shape == (0, 3, 8, 8)


@pytest.mark.parametrize("make", [lambda: PatchRotate(1), lambda: PatchShuffle(1), lambda: PatchInfill(1),
                                  lambda: NegativeViews(["rotate"], 1)])
def test_one_pixel_cells_are_refused_as_a_silent_no_op(make):
    # a 1-pixel cell turned in place is the input itself: the negative view would not differ from the image
    x = torch.rand(1, 1, 4, 4)
    rotated = remap_cells(x, 1, torch.arange(16).view(1, 16), torch.full((1, 16), 1))
    assert torch.equal(rotated, x)
    with pytest.raises(ConfigError, match="patch_size=1 makes 1-pixel cells"):
        make()


@pytest.mark.parametrize(("kwargs", "message"), [({"p": float("nan")}, "probability"), ({"p": True}, "probability"),
                                                 ({"same_on_batch": "no"}, "same_on_batch must be true or false")])
def test_constructor_arguments_are_validated(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        PatchShuffle(4, **kwargs)


def test_two_cell_rotate_never_identity():
    x = torch.arange(128.0).view(1, 1, 8, 16).repeat(200, 1, 1, 1)
    y = PatchRotate(8)(x, generator=gen())
    assert not any(torch.equal(y[i], x[i]) for i in range(200))


def test_single_cell_rotate_is_refused_like_shuffle():
    # one cell = the whole image turned: no patch-based negative (P-Shuffle refuses it too)
    with pytest.raises(ConfigError, match=r"1x1 cell grid: P-Rotate needs at least 2 cells.*fit this 8x8 input: 2, 4$"):
        PatchRotate(8)(torch.rand(2, 1, 8, 8), generator=gen())
    with pytest.raises(ConfigError, match="P-Rotate needs at least 2 cells"):
        NegativeViews(["rotate"], 8)(torch.rand(2, 1, 8, 8))
    assert PatchRotate(2).valid_patch_sizes(8, 8) == PatchShuffle(2).valid_patch_sizes(8, 8) == [2, 4]


def test_negative_views_draws_each_kind_and_applies_it():
    views = NegativeViews(KINDS, 4)
    x = torch.rand(300, 3, 16, 16)
    y = views(x, generator=gen())
    params = views.last_params
    kind = params["kind"]
    assert set(kind.tolist()) == {0, 1, 2}
    identity = torch.arange(16).expand(300, 16)
    is_shuffle, is_rotate, is_infill = kind == 0, kind == 1, kind == 2
    assert bool((params["rotation"][is_shuffle | is_infill] == 0).all())
    assert torch.equal(params["source"][is_rotate], identity[is_rotate])
    assert torch.equal(y[is_infill][..., :4, :], x[is_infill][..., :4, :])  # border row of an infilled image
    assert torch.equal(params["source"][is_shuffle].sort(dim=1).values, identity[is_shuffle])
    with pytest.raises(ValueError, match="kinds must be"):
        NegativeViews(["shuffle", "jigsaw"], 4)
    with pytest.raises(ValueError, match="kind 'infill'"):
        NegativeViews(["rotate", "infill"], 8)(torch.rand(1, 3, 16, 16))


def _vit(pos_embed: str) -> torch.nn.Module:
    model = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=2,
                              num_classes=10, pos_embed=pos_embed).eval()
    for param in model.parameters():  # large weights: far from the near-linear regime of the default init
        torch.nn.init.normal_(param, std=0.3)
    return model


@torch.no_grad()
def test_shuffle_at_model_patch_size_leaves_position_free_vit_unchanged():
    x = torch.rand(4, 3, 32, 32)
    y = PatchShuffle(8, model_patch_size=8)(x, generator=gen())
    free = _vit("none")
    assert torch.allclose(free(x), free(y), atol=1e-5)
    learned = _vit("learn")
    assert not torch.allclose(learned(x), learned(y), atol=1e-2)


@pytest.mark.cuda  # deselected by default (pyproject addopts); on a GPU machine: pytest -m cuda
def test_cuda_input_with_cpu_and_cuda_generator(cuda_device):
    x = torch.rand(4, 3, 16, 16, device=cuda_device)
    views = NegativeViews(KINDS, 4)
    y = views(x, generator=gen())
    assert y.device == x.device and torch.equal(y.cpu(), views(x.cpu(), params=views.last_params))
    cuda_gen = torch.Generator(device=cuda_device).manual_seed(0)
    assert views(x, generator=cuda_gen).device == x.device


@pytest.mark.parametrize("bad", [0, "cuda", np.random.default_rng(0)])
@pytest.mark.parametrize("make", [lambda: PatchShuffle(4), lambda: PatchRotate(4), lambda: PatchInfill(2),
                                  lambda: NegativeViews(KINDS, 4)])
def test_generator_of_the_wrong_type_is_refused(make, bad):
    with pytest.raises(TypeError, match=r"generator must be a torch.Generator \(e.g. torch.Generator\(\)"):
        make()(torch.rand(2, 3, 8, 8), generator=bad)


def test_replayed_params_are_checked():
    x = torch.rand(2, 3, 16, 16)
    src, turns = torch.arange(16).repeat(2, 1), torch.zeros(2, 16, dtype=torch.long)
    for bad_src, message in [(torch.full((2, 16), 99), r"source holds values in \[99, 99\].*\[0, 16\)"),
                             (torch.full((2, 16), -1), r"source holds values in \[-1, -1\]"),
                             (src.float(), "integer cell indices.*source.long()")]:
        with pytest.raises(ConfigError, match=message):
            PatchShuffle(4)(x, params={"source": bad_src, "rotation": turns})
    for grad in (False, True):  # the fast path and the gradient (reference) path agree: both refuse
        with pytest.raises(ConfigError, match=r"rotation holds values in \[7, 7\].*0, 1, 2 or 3"):
            PatchRotate(4)(x.clone().requires_grad_(grad), params={"source": src, "rotation": torch.full((2, 16), 7)})
    with pytest.raises(TypeError, match="params must be the dict a call of this transform left in .last_params"):
        PatchShuffle(4)(x, params=[1, 2])
    with pytest.raises(ConfigError, match=r"params lacks \['rotation'\]"):
        PatchShuffle(4)(x, params={"source": src})


@pytest.mark.parametrize(("make", "message"), [
    (lambda: NegativeViews(None, 8), r"kinds must be a non-empty list.*got None"),
    (lambda: NegativeViews(["shuffle"], 8, replace_rate=5), r"replace_rate must be a number in \(0, 1\)"),
    (lambda: NegativeViews(["shuffle"], 8, source="zzz"), "source must be 'random' or 'distinct', got 'zzz'"),
    (lambda: PatchInfill(4, None, centre_shape=2), r"centre_shape must be a pair \(rows, cols\) of ints"),
    (lambda: PatchInfill(4, None, centre_shape=(2, 2, 2)), r"centre_shape must be a pair"),
    (lambda: PatchInfill(4, "0.25"), r"replace_rate must be a number in \(0, 1\).*got '0.25'"),
    (lambda: PatchShuffle(4, p="0.5"), r"p must be a probability in \[0, 1\]"),
])
def test_constructor_options_refused_with_the_fix(make, message):
    with pytest.raises(ConfigError, match=message):
        make()


def test_numpy_scalars_are_accepted():
    x = torch.rand(2, 3, 32, 32)
    assert PatchShuffle(np.int64(8), p=np.float32(0.5))(x, generator=gen()).shape == x.shape
    t = PatchInfill(np.int64(4), None, centre_shape=(np.int64(2), np.int64(2)), model_patch_size=np.int32(2))
    assert t.patch_size == 4 and type(t.patch_size) is int and t.centre_shape == (2, 2)
    assert PatchInfill(4, np.float64(0.25)).replace_rate == 0.25
    with pytest.raises(ConfigError, match="p must be a probability"):
        PatchShuffle(8, p=torch.tensor(0.5))


def test_channels_last_input_hints_at_the_layout():
    with pytest.raises(ConfigError, match=r"looks channels-last \(B, H, W, C\).*expect \(B, C, H, W\).*permute"):
        PatchShuffle(8)(torch.rand(2, 32, 32, 3))
    # no hint for a (B, C, H, W) batch
    with pytest.raises(ConfigError, match=r"does not divide the 32x32 input.*: 2, 4, 8, 16$"):
        PatchShuffle(5)(torch.rand(2, 3, 32, 32))


def test_generator_in_dataset_workers_is_documented():
    import vitlab.augment.transforms as transforms

    for doc in (PatchTransform.forward.__doc__, NegativeViews.__doc__, transforms.__doc__):
        text = " ".join(doc.split()).replace("every", "each")
        assert "copied into each ``DataLoader`` worker" in text and "generator=None" in text


# ---- torchvision v2 / kornia users ----


def test_tv_tensors_image_stays_an_image_inside_v2_compose():
    from torchvision import tv_tensors
    from torchvision.transforms import v2

    raw = torch.randint(0, 256, (3, 16, 16), dtype=torch.uint8)
    t = PatchShuffle(4)
    pipeline = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True), t, v2.Normalize([0.5] * 3, [0.5] * 3)])
    out = pipeline(raw)
    assert type(out) is tv_tensors.Image and out.shape == (3, 16, 16)  # as torchvision's own transforms keep it
    expected = v2.functional.normalize(t(v2.functional.to_dtype(raw, scale=True), params=t.last_params), [0.5] * 3,
                                       [0.5] * 3)
    assert torch.equal(out.as_subclass(torch.Tensor), expected)
    batch = tv_tensors.Image(torch.rand(2, 3, 16, 16))
    assert type(PatchRotate(4)(batch, generator=gen())) is tv_tensors.Image


def test_other_tv_tensors_are_refused():
    from torchvision import tv_tensors

    with pytest.raises(TypeError, match=r"got a tv_tensors.Mask: pass a tv_tensors.Image or a plain tensor"):
        PatchShuffle(4)(tv_tensors.Mask(torch.zeros(1, 16, 16, dtype=torch.uint8)))


def test_v2_compose_on_image_and_label_names_the_fix():
    from torchvision.transforms import v2

    pipeline = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True), PatchShuffle(4)])
    with pytest.raises(TypeError, match=r"passes the label here: transform the image alone"):
        pipeline(torch.randint(0, 256, (3, 16, 16), dtype=torch.uint8), 3)


@pytest.mark.parametrize("name", ["shuffle", "rotate", "shuffle+rotate"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.uint8])
def test_inverse_undoes_the_last_call_bit_for_bit(name, dtype):
    make = {"shuffle": lambda: PatchShuffle(4, p=0.5), "rotate": lambda: PatchRotate(4),
            "shuffle+rotate": lambda: NegativeViews(["shuffle", "rotate"], 4)}[name]
    t = make()
    x = (torch.rand(5, 3, 8, 16) * 255).to(dtype)
    y = t(x, generator=gen(1))
    assert not torch.equal(y, x)
    assert torch.equal(t.inverse(y), x)
    params = t.last_params
    single = t(x[0], generator=gen(2))
    assert torch.equal(t.inverse(single), x[0])
    assert torch.equal(t.inverse(y, params=params), x)  # explicit params of an earlier call


def test_inverse_refuses_infill_and_a_transform_never_called():
    t = NegativeViews(["shuffle", "infill"], 4)
    x = torch.rand(6, 3, 16, 16)
    y = t(x, generator=gen(0))
    infilled = (t.last_params["kind"] == 1).nonzero().flatten().tolist()
    assert infilled
    with pytest.raises(ConfigError, match=r"NegativeViews.inverse: sample\(s\) .* copy some cells over") as info:
        t.inverse(y)
    assert f"sample(s) {infilled} copy" in str(info.value)
    with pytest.raises(ConfigError, match=r"call the transform first .* or pass params="):
        PatchRotate(4).inverse(x)


def test_a_pil_image_or_array_names_the_v2_conversion():
    from PIL import Image

    for image in (Image.new("RGB", (16, 16)), np.zeros((16, 16, 3), dtype=np.uint8)):
        with pytest.raises(TypeError, match=r"got (Image|ndarray): convert .* v2.ToImage\(\) then v2.ToDtype"):
            PatchShuffle(4)(image)
    sample = {"image": torch.rand(3, 16, 16), "label": 1}  # what a v2.Compose over a dict sample hands on
    with pytest.raises(TypeError, match=r"got a dict: .* transform the image alone \(e.g. sample\['image'\]"):
        PatchShuffle(4)(sample)


@pytest.mark.parametrize("name", CASES)
def test_channels_last_and_strided_inputs_give_the_same_values_and_keep_channels_last(name):
    t = CASES[name]()
    x = torch.rand(3, 3, 16, 16)
    y = t(x, generator=gen(4))
    last = t(x.to(memory_format=torch.channels_last), params=t.last_params)
    assert torch.equal(last, y) and last.is_contiguous(memory_format=torch.channels_last)
    strided = torch.rand(3, 3, 16, 32)[..., ::2]
    assert torch.equal(t(strided, params=t.last_params), t(strided.contiguous(), params=t.last_params))


def test_generate_parameters_needs_a_batch_shape_and_its_draw_replays_on_one_image():
    t = PatchRotate(4)
    image = torch.rand(3, 16, 16)
    with pytest.raises(ConfigError, match=r"must be a batch shape \(B, C, H, W\), got torch.Size\(\[3, 16, 16\]\)"):
        t.generate_parameters(image.shape)
    params = t.generate_parameters((1, *image.shape), gen(0))
    assert torch.equal(t(image, params=params), t(image[None], params=params)[0])


@pytest.mark.parametrize("name", CASES)
def test_torch_compile_gives_the_eager_views_for_every_batch_size_and_seed(name):
    torch._dynamo.reset()
    t = CASES[name]()
    compiled = torch.compile(t, backend="aot_eager")
    for size in (4, 2, 5):  # new sizes make dynamo recompile with a symbolic batch size
        x = torch.rand(size, 3, 16, 16)
        assert torch.equal(compiled(x, generator=gen(size)), t(x, generator=gen(size)))
        torch.manual_seed(size)
        drawn = compiled(x)
        torch.manual_seed(size)
        assert torch.equal(drawn, t(x))


@pytest.mark.parametrize("cls", [PatchShuffle, PatchRotate, PatchInfill])
def test_the_one_pixel_refusal_names_the_view_it_refuses(cls):
    with pytest.raises(ConfigError, match=rf"^{cls.__name__}: patch_size=1 makes 1-pixel cells, which are no patches"):
        cls(1)
