"""Grey data normalised with an RGB model's per-channel statistics (pretrained weights' mean/std)."""

from __future__ import annotations

import torch

from vitlab.data import build_datamodule, build_eval_transform
from vitlab.data.transforms import Normalize

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def test_normalize_repeats_grey_before_applying_rgb_statistics():
    grey = torch.randint(0, 256, (2, 1, 4, 4), dtype=torch.uint8)
    out = Normalize(MEAN, STD, 3)(grey)
    expected = (grey.float().div(255).expand(2, 3, 4, 4) - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(
        3, 1, 1)
    torch.testing.assert_close(out, expected)
    # repeated source statistics give the old path's result exactly
    torch.testing.assert_close(Normalize((0.5,) * 3, (0.25,) * 3, 3)(grey), Normalize((0.5,), (0.25,), 3)(grey))


def test_datamodule_and_eval_transform_apply_the_same_model_statistics():
    dm = build_datamodule("digits", img_size=32, in_chans=3, batch_size=8, mean=list(MEAN), std=list(STD))
    assert dm.mean == MEAN and dm.std == STD and dm.data_config()["mean"] == list(MEAN)
    dm.setup("test")
    images, _ = next(iter(dm.test_dataloader()))
    assert images.shape[1] == 3
    # every channel of a grey image normalised with its own statistics: x_c * std_c + mean_c is the same grey
    pixels = images * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1)
    torch.testing.assert_close(pixels[:, 0], pixels[:, 1], rtol=0, atol=1e-5)
    config = dict(dm.data_config(), native_size=None, pad_to=None, img_size=8)
    grey = torch.randint(0, 256, (1, 8, 8), dtype=torch.uint8)
    torch.testing.assert_close(build_eval_transform(config)(grey), Normalize(MEAN, STD, 3)(grey[None])[0])


def test_recorded_statistics_rebuild_the_training_normalisation():
    from vitlab.data.transforms import normalize_for

    grey = torch.randint(0, 256, (2, 1, 4, 4), dtype=torch.uint8)
    per_channel = normalize_for({"in_chans": 3, "source_chans": 1, "mean": list(MEAN), "std": list(STD)})
    torch.testing.assert_close(per_channel(grey), Normalize(MEAN, STD, 3)(grey))
    repeated = normalize_for({"in_chans": 3, "source_chans": 1, "mean": [0.2] * 3, "std": [0.3] * 3})
    assert repeated.mean == [0.2]  # the source channel is normalised once, then repeated
    torch.testing.assert_close(repeated(grey), Normalize((0.2,), (0.3,), 3)(grey))
