"""The ``negatives`` section: its keys switch the term on, ``temperature`` reaches the contrastive loss, and a run's
saved ``enabled: true`` / ``false`` still resumes."""

from __future__ import annotations

from dataclasses import asdict

import lightning as L
import pytest
import yaml

from vitlab.errors import ConfigError
from vitlab.losses import ContrastiveNegativeLoss
from vitlab.train import NegativesConfig, fit
from vitlab.train.arguments import load_run_config_file
from vitlab.train.extensions import build_loss_terms
from vitlab.train.plots import read_metrics
from vitlab.train.run_folder import CONFIG_NAME, load_run_config, resume_config

TINY = {"depth": 1, "embed_dim": 32, "num_heads": 2}
SECTION = {"kinds": ["shuffle"], "patch_size": 8, "loss": "contrastive", "weight": 1.0, "temperature": 0.1}


def _write(tmp_path, negatives, name="neg"):
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({
        "name": name, "seed": 2, "output_dir": str(tmp_path),
        "model": {"name": "vit_vitlab_tiny_patch4_32", "kwargs": TINY},
        "data": {"name": "digits", "batch_size": 32},
        "negatives": negatives,
        "trainer": {"max_epochs": 1, "limit_train_batches": 3, "limit_val_batches": 1, "limit_test_batches": 1,
                    "accelerator": "cpu", "enable_progress_bar": False, "enable_model_summary": False},
    }))
    return path


class _Terms(L.Callback):
    def on_train_start(self, trainer, pl_module):
        self.terms = list(pl_module.loss_terms)


def test_keys_without_enabled_train_with_the_negative_term_and_its_temperature(tmp_path):
    config = load_run_config_file(_write(tmp_path, SECTION))
    assert config.negatives.enabled is True and config.negatives.temperature == 0.1
    seen = _Terms()
    result = fit(config, callbacks=[seen])
    (term,) = seen.terms
    assert isinstance(term.loss, ContrastiveNegativeLoss) and term.loss.temperature == 0.1 and term.weight == 1.0
    assert (term.views.kinds, term.views.patch_size) == (["shuffle"], 8)
    rows = read_metrics(result.run_dir / "metrics.csv")
    key = "train/negatives/loss_epoch"
    losses = [float(r[key]) for r in rows if r.get(key) not in (None, "")]
    assert len(losses) == 1 and losses[0] > 0  # the contrastive term ran (one epoch of 3 steps)
    saved = yaml.safe_load((result.run_dir / CONFIG_NAME).read_text())["negatives"]
    assert saved["enabled"] is True and saved["temperature"] == 0.1 and saved["options"]["temperature"] == 0.1


def test_top_level_temperature_builds_the_same_term_as_options_temperature():
    top = NegativesConfig(loss="contrastive", temperature=0.25)
    nested = NegativesConfig(loss="contrastive", options={"temperature": 0.25})
    assert asdict(top) == asdict(nested)
    (a,), (b,) = build_loss_terms(top), build_loss_terms(nested)
    assert a.loss.temperature == b.loss.temperature == 0.25


@pytest.mark.parametrize(("section", "enabled"), [({}, False), ({"enabled": True}, True), ({"weight": 0.5}, True),
                                                  ({"loss": "uniform"}, True), ({"options": {"seed": 3}}, True),
                                                  ({"enabled": False, "loss": "uniform", "patch_size": 8}, False)])
def test_enabled_resolves_to_a_plain_bool(section, enabled):
    config = NegativesConfig(**section)
    assert config.enabled is enabled
    assert (config.kinds, config.patch_size, config.loss) == (["shuffle"], 8, "uniform")
    assert len(build_loss_terms(config)) == int(enabled)


@pytest.mark.parametrize(("section", "match"), [
    ({"enabled": False, "kinds": ["rotate"]}, "negatives.kinds set but negatives.enabled is false"),
    ({"enabled": False, "temperature": 0.1}, "negatives.temperature set but negatives.enabled is false"),
    ({"loss": "uniform", "temperature": 0.1}, "applies only to loss: contrastive"),
    ({"temperature": 0.1}, "applies only to loss: contrastive, got loss: 'uniform'"),
    ({"loss": "l2", "temperature": 0.1}, "applies only to loss: contrastive"),
    ({"loss": "contrastive", "temperature": 0.1, "options": {"temperature": 0.2}}, "differ: give the temperature once"),
    ({"loss": "contrastive", "temperature": 0.0}, "negatives.temperature must be a finite number > 0"),
    ({"loss": "contrastive", "temperature": True}, "negatives.temperature must be a finite number > 0"),
    ({"loss": "contrastive", "options": {"temperature": "hot"}}, "negatives.options.temperature must be"),
    ({"enabled": "yes"}, "negatives.enabled must be true, false or null"),
])
def test_refusals(section, match):
    with pytest.raises(ConfigError, match=match):
        NegativesConfig(**section)


@pytest.mark.parametrize("enabled", [True, False])
def test_a_run_saved_before_the_change_resumes_with_its_enabled(tmp_path, enabled):
    """config.yaml as runs wrote it before: an explicit enabled, every key, temperature only under options."""
    old = {"enabled": enabled, "kinds": ["shuffle"], "patch_size": 8, "loss": "contrastive" if enabled else "uniform",
           "weight": 1.0, "options": {"temperature": 0.2} if enabled else {}}
    run_dir = tmp_path / "old"
    run_dir.mkdir()
    given = load_run_config_file(_write(tmp_path, old, name="old"))
    (run_dir / CONFIG_NAME).write_text(yaml.safe_dump(asdict(given) | {"negatives": old}))
    saved = load_run_config(run_dir)
    assert saved.negatives.enabled is enabled
    assert resume_config(run_dir, given, tmp_path).negatives == saved.negatives
    if enabled:  # the same run written with the new top-level key is the same config
        new = {k: v for k, v in old.items() if k not in ("enabled", "options")} | {"temperature": 0.2}
        assert resume_config(run_dir, load_run_config_file(_write(tmp_path, new, name="old")), tmp_path).negatives \
            == saved.negatives
