"""What Lightning users bring to ``vitlab fit`` (round 2 of session 27's hunt): callbacks, trainer options and the
run folder's ``summary.json``."""

from __future__ import annotations

import json

import pytest

from vitlab.errors import ConfigError
from vitlab.train import fit
from vitlab.train.arguments import check_empty_mapping_keys, run_config_from_args
from vitlab.train.run import check_trainer_options

from .test_user_inputs_run import _config  # the same tiny digits run


@pytest.mark.parametrize("callback", ["EarlyStopping", "ModelCheckpoint"])
def test_a_run_that_ends_before_its_first_validation_finishes_validated_with_its_weights(tmp_path, callback):
    """``max_steps: 2`` (4 batches an epoch) + ``EarlyStopping(monitor=val/acc)`` crashed in Lightning's strict check
    ("metric `val/acc` ... not available") and lost the run; the run now finishes, its final weights validated once
    (val/ metrics in the summary), with a warning naming trainer.val_check_interval."""
    spec = {"class_path": callback, "init_args": {"monitor": "val/acc", "mode": "max"}}
    with pytest.warns(UserWarning, match="before its first validation.*trainer.val_check_interval"):
        result = fit(_config(tmp_path, callback, max_steps=2, callbacks=[spec]))
    assert (result.run_dir / "model.safetensors").is_file()
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert 0 <= summary["metrics"]["val/acc"] <= 1 and summary["metrics"]["val/loss"] > 0


@pytest.mark.parametrize("command", ["intrinsic-dim", "fit"])
def test_the_empty_mapping_error_names_the_command_that_was_run(command):
    """``vitlab intrinsic-dim --config`` with ``modle: {}`` advised `vitlab fit --print_config`."""
    args = [command, "--config", "{modle: {}}"]
    with pytest.raises(ConfigError, match=rf"did you mean 'model'\? \(`vitlab {command} --print_config` shows"):
        check_empty_mapping_keys(args, ["model.name", "data.name"])


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_a_non_finite_gradient_clip_val_is_refused_in_one_line_naming_the_fix(value):
    """``--trainer.gradient_clip_val nan`` was refused with jsonargparse's multi-line "Union subtypes" dump."""
    with pytest.raises(ConfigError) as caught:
        run_config_from_args([f"--trainer.gradient_clip_val={value}"])
    message = str(caught.value)
    assert "Union subtypes" not in message and "<class" not in message and "\n" not in message
    assert f"trainer.gradient_clip_val takes an integer, a number or null, got '{value}': give a finite number" \
        in message


@pytest.mark.parametrize("algorithm", ["bogus", 1, ""])
def test_an_unknown_gradient_clip_algorithm_is_refused_as_a_config_error(algorithm):
    """``--trainer.gradient_clip_algorithm bogus`` ended in Lightning's MisconfigurationException (not a config
    error: the CLI showed its class name)."""
    with pytest.raises(ConfigError, match="trainer.gradient_clip_algorithm must be 'norm' or 'value'"):
        check_trainer_options({"gradient_clip_algorithm": algorithm, "gradient_clip_val": 1.0})
    check_trainer_options({"gradient_clip_algorithm": "Value", "gradient_clip_val": 1.0})  # Lightning ignores case


@pytest.mark.parametrize(("options", "message"), [
    ({"num_sanity_val_steps": -2}, r"trainer.num_sanity_val_steps must be an integer >= 0 .* or -1"),
    ({"num_sanity_val_steps": 1.5}, r"trainer.num_sanity_val_steps must be an integer"),
    ({"log_every_n_steps": -5}, r"trainer.log_every_n_steps must be an integer >= 1, or 0"),
    ({"log_every_n_steps": 2.5}, r"trainer.log_every_n_steps must be an integer"),
])
def test_trainer_counts_lightning_would_misread_are_refused(options, message):
    """``num_sanity_val_steps: -2`` ran no sanity check and ``log_every_n_steps: -5`` logged every 5 steps, both
    without a word (Lightning only gives -1 / 0 a meaning)."""
    with pytest.raises(ConfigError, match=message):
        check_trainer_options(options)


def test_meaningful_sanity_and_logging_counts_are_accepted():
    for sanity in (-1, 0, 2):
        check_trainer_options({"num_sanity_val_steps": sanity})
    for every_n in (0, 1, 50):  # 0: epoch-level rows only (metrics.csv and the plots still work)
        check_trainer_options({"log_every_n_steps": every_n})


@pytest.mark.parametrize(("trainer", "record"), [
    ({"max_epochs": 1}, {"epochs_trained": 1, "global_step": 4, "stopped_early": False, "stop_reason": "max_epochs"}),
    ({"max_epochs": 3, "callbacks": [{"class_path": "EarlyStopping", "init_args": {
        "monitor": "val/loss", "patience": 0, "min_delta": 10.0}}]},
     {"epochs_trained": 2, "global_step": 8, "stopped_early": True, "stop_reason": "early_stopping"}),
    ({"max_epochs": 2, "max_steps": 3}, {"epochs_trained": 1, "global_step": 3, "stopped_early": False,
                                         "stop_reason": "max_steps"}),
])
def test_summary_says_how_far_training_got_and_why_it_stopped(tmp_path, trainer, record):
    """``summary.json`` of a run stopped by EarlyStopping did not say how many epochs / steps ran or why it stopped
    (4 batches an epoch; the EarlyStopping run cannot improve by min_delta 10, so it stops after its second epoch)."""
    result = fit(_config(tmp_path, "stop", **trainer))
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert {key: summary[key] for key in record} == record
    assert "test/acc" in summary["metrics"] and summary["wall_time_s"] > 0  # the earlier keys stay


def test_summary_of_a_run_stopped_by_max_time_says_so(tmp_path):
    result = fit(_config(tmp_path, "timed", max_epochs=10_000, max_time={"seconds": 1}))
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["stop_reason"] == "max_time" and summary["stopped_early"] is True
    assert 1 <= summary["epochs_trained"] < 10_000 and summary["global_step"] >= 1


def test_enable_checkpointing_false_is_refused_naming_the_option_not_vitlabs_callback(tmp_path):
    """``trainer.enable_checkpointing: false`` failed in Lightning: "found `ModelCheckpoint` in callbacks list" (a
    MisconfigurationException about a callback the user never added); it is refused up front, writing nothing."""
    with pytest.raises(ConfigError, match="trainer.enable_checkpointing: false turns off checkpoints/last.ckpt.*drop"):
        fit(_config(tmp_path, "nockpt", max_epochs=1, enable_checkpointing=False))
    assert not (tmp_path / "nockpt").exists()
    check_trainer_options({"enable_checkpointing": True})


def test_a_non_finite_loss_under_16_true_precision_advises_mixed_precision_not_a_lower_lr(tmp_path):
    """``trainer.precision: 16-true`` (float16 weights and AdamW moments: eps 1e-8 is 0 in float16) gave a NaN loss
    at step 1 with the advice to lower the lr and clip gradients, which fails the same way."""
    with pytest.raises(FloatingPointError) as caught:
        fit(_config(tmp_path, "half", max_epochs=1, precision="16-true"))
    message = str(caught.value)
    assert "trainer.precision 16-true keeps the weights and AdamW's moments in float16" in message
    assert "--trainer.precision 16-mixed" in message and "lower optim.lr" not in message


def test_a_max_time_lightning_cannot_read_is_a_config_error_naming_the_format(tmp_path):
    """``trainer.max_time: '00:00:01'`` (HH:MM:SS) ended in Lightning's MisconfigurationException about a
    ``Timer(duration=...)`` the user never made; it is now the trainer section's ConfigError, writing nothing."""
    with pytest.raises(ConfigError, match=r"trainer section was refused by lightning.Trainer.*DD:HH:MM:SS.*trainer\."):
        fit(_config(tmp_path, "timer", max_epochs=1, max_time="00:00:01"))
    assert not (tmp_path / "timer").exists()
