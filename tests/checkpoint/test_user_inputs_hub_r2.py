"""A Hugging Face Hub cache as users leave it: damaged files, caches named by HF_HOME / TRANSFORMERS_CACHE (offline)."""

from __future__ import annotations

import huggingface_hub.constants as constants
import pytest

from vitlab.checkpoint import CheckpointError, MissingWeightsError, create_model, resolve_pretrained

from ..hub_cache import HUB_ID, HUB_MODEL, REVISION, make_hub_cache

SMALL = dict(img_size=32, num_classes=10)


def _use_cache(monkeypatch, cache):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))


@pytest.fixture
def damaged_cache(tmp_path, monkeypatch):
    """A private cache (the session one must stay intact) and its snapshot folder."""
    make_hub_cache(tmp_path)
    _use_cache(monkeypatch, tmp_path)
    return tmp_path / f"models--{HUB_ID.replace('/', '--')}" / "snapshots" / REVISION


@pytest.mark.parametrize("spec", ["timm", f"hf-hub:{HUB_ID}"])
@pytest.mark.parametrize("keep", [0.5, 0.0])
def test_a_truncated_or_empty_cached_weights_file_is_named_with_what_to_do(damaged_cache, spec, keep):
    weights = damaged_cache / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: int(len(data) * keep)])  # an interrupted download / a full disk
    # was safetensors' own "SafetensorError: Error while deserializing header ..." from inside timm's loader
    with pytest.raises(CheckpointError, match=rf"cache's copy .* \({weights}\) is corrupt or truncated "
                                              rf"\(SafetensorError.*delete it, then fetch .*hf download {HUB_ID}"):
        create_model(HUB_MODEL, resolve_pretrained(spec, HUB_MODEL), **SMALL)


def test_a_corrupt_cached_hub_config_is_named_with_what_to_do(damaged_cache):
    config = damaged_cache / "config.json"
    config.write_text("{not json")
    # was json's "JSONDecodeError: Expecting property name enclosed in double quotes" from inside timm
    with pytest.raises(CheckpointError, match=rf"\({config}\) is corrupt or truncated \(JSONDecodeError"):
        create_model(HUB_MODEL, resolve_pretrained(f"hf-hub:{HUB_ID}", HUB_MODEL), **SMALL)


def test_a_missing_cache_names_the_folder_huggingface_hub_reads_not_hf_home(tmp_path, monkeypatch):
    home = tmp_path / "hf home"
    monkeypatch.setenv("HF_HOME", str(home))  # huggingface_hub reads HF_HOME/hub
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_CACHE", raising=False)
    _use_cache(monkeypatch, home / "hub")
    with pytest.raises(MissingWeightsError, match=rf"not in the Hugging Face cache \({home / 'hub'}\) and"):
        create_model(HUB_MODEL, resolve_pretrained("timm", HUB_MODEL), **SMALL)  # was "(.../hf home)"


def test_a_transformers_cache_is_named_as_not_read_by_timm(tmp_path, monkeypatch):
    make_hub_cache(tmp_path / "tf")
    monkeypatch.setenv("TRANSFORMERS_CACHE", str(tmp_path / "tf"))  # transformers' variable: huggingface_hub ignores it
    _use_cache(monkeypatch, tmp_path / "hub")
    with pytest.raises(MissingWeightsError, match=rf"TRANSFORMERS_CACHE={tmp_path / 'tf'} is read by transformers "
                                                  rf"only.*set HF_HUB_CACHE={tmp_path / 'tf'} instead"):
        create_model(HUB_MODEL, resolve_pretrained(f"hf-hub:{HUB_ID}", HUB_MODEL), **SMALL)
    _use_cache(monkeypatch, tmp_path / "tf")  # what the message says to do
    model, _, _ = create_model(HUB_MODEL, resolve_pretrained(f"hf-hub:{HUB_ID}", HUB_MODEL), **SMALL)
    assert model.head.out_features == 10


@pytest.mark.parametrize("spec", ["timm", f"hf-hub:{HUB_ID}"])
def test_uncached_weights_with_the_hub_unreachable_fail_at_once_naming_hf_hub_offline(tmp_path, monkeypatch, spec):
    import timm.models._hub as timm_hub

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # refused at once: nothing leaves the machine
    downloads = []  # timm's download calls: each retried 5 times, up to 8 s apart, with the Hub unreachable
    real_download = timm_hub.hf_hub_download
    monkeypatch.setattr(timm_hub, "hf_hub_download", lambda *a, **k: downloads.append(a) or real_download(*a, **k))
    # was ~45 s of huggingface_hub's retries, then "not in the Hugging Face cache"
    with pytest.raises(MissingWeightsError, match=r"the Hub \(http://127.0.0.1:9\) cannot be reached "
                                                  r"\(ConnectError\).*hf download.*then set HF_HUB_OFFLINE=1"):
        create_model(HUB_MODEL, resolve_pretrained(spec, HUB_MODEL), **SMALL)
    assert downloads == []  # refused before timm tried (and retried) a download
    make_hub_cache(tmp_path)  # cached: loads with the Hub unreachable, as huggingface_hub falls back to the cache
    model, _, _ = create_model(HUB_MODEL, resolve_pretrained(spec, HUB_MODEL), **SMALL)
    assert model.head.out_features == 10
    assert downloads  # timm's loader went through the watched function (so the check above can fail)


def test_a_hub_id_with_a_space_after_the_prefix_loads(offline_hub):
    weights = resolve_pretrained(f"hf-hub: {HUB_ID}", HUB_MODEL)  # YAML users space it; was location " timm/..."
    assert weights.location == HUB_ID
    model, _, _ = create_model(HUB_MODEL, weights, **SMALL)
    assert model.head.out_features == 10


@pytest.mark.parametrize("spec", [HUB_ID, f"hf_hub:{HUB_ID}", f"HF-HUB: {HUB_ID}"])
def test_a_bare_or_misspelt_hub_id_is_named_with_the_hf_hub_spelling(spec, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(MissingWeightsError, match=rf"no file or folder at .*\(a Hub model id\? write hf-hub:{HUB_ID}"):
        resolve_pretrained(spec, HUB_MODEL)
    (tmp_path / "runs").mkdir()  # a missing run folder under an existing folder is not taken for a Hub id
    with pytest.raises(MissingWeightsError, match=r"no file or folder at runs/x; pass"):
        resolve_pretrained("runs/x", HUB_MODEL)


def test_a_truncated_cached_pytorch_model_bin_is_named_as_corrupt_not_as_another_architecture(damaged_cache):
    import torch
    from safetensors.torch import load_file

    weights = damaged_cache / "model.safetensors"  # a repo that ships only pytorch_model.bin (timm reads it next)
    torch.save(load_file(str(weights)), damaged_cache / "pytorch_model.bin")
    weights.unlink()
    data = (damaged_cache / "pytorch_model.bin").read_bytes()
    (damaged_cache / "pytorch_model.bin").write_bytes(data[: len(data) // 2])
    # was "weights ... do not fit vit_tiny_patch16_224: PytorchStreamReader failed reading zip archive ..."
    with pytest.raises(CheckpointError, match=r"pytorch_model.bin\) is corrupt or truncated \(RuntimeError"):
        create_model(HUB_MODEL, resolve_pretrained("timm", HUB_MODEL), **SMALL)
