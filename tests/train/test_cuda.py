"""``vitlab.train.fit`` on a GPU (``pytest -m cuda``): a bf16-mixed KAdaptation run with negative views, and a
float32 run whose losses equal the same run on the CPU (scikit-learn's digits, tiny ViT, a handful of steps).

``VITLAB_TEST_CUDA_DEVICE=cpu pytest -m cuda`` runs the same code on the CPU (CPU compared with itself).
"""

import copy
import math

import lightning as L
import pytest
import torch

from vitlab.checkpoint import load_model
from vitlab.data import build_datamodule
from vitlab.train import DataConfig, ModelConfig, NegativesConfig, OptimConfig, PeftConfig, RunConfig, fit
from vitlab.train.plots import read_metrics

pytestmark = pytest.mark.cuda

TINY = {"depth": 2, "embed_dim": 48, "num_heads": 2}
STEPS = 4



class Capture(L.Callback):
    """Keeps the weights when training starts, where and how it ran, and the trained task."""

    def on_train_start(self, trainer, task):
        self.start = {k: v.detach().cpu().clone() for k, v in task.model.state_dict().items()}
        self.trainable = {name for name, p in task.model.named_parameters() if p.requires_grad}
        self.device = next(task.model.parameters()).device
        self.precision = trainer.precision

    def on_train_end(self, trainer, task):
        self.task = task


def _config(tmp_path, name, device, precision, **sections):
    accelerator = "gpu" if device.type == "cuda" else "cpu"
    return RunConfig(
        name=name, seed=3, output_dir=str(tmp_path),
        model=ModelConfig(name="vit_vitlab_tiny_patch4_32", kwargs=dict(TINY)),
        data=DataConfig(name="digits", batch_size=32),
        optim=OptimConfig(lr=3e-3, warmup_epochs=0.0),
        trainer={"max_epochs": 1, "accelerator": accelerator, "devices": 1, "precision": precision,
                 "limit_train_batches": STEPS, "limit_val_batches": 2, "limit_test_batches": 2,
                 "log_every_n_steps": 1, "enable_progress_bar": False, "enable_model_summary": False},
        **sections,
    )


def _step_losses(run_dir):
    rows = read_metrics(run_dir / "metrics.csv")
    return [row["train/loss_step"] for row in rows if "train/loss_step" in row]


def test_bf16_kadaptation_run_with_negatives_trains_only_the_adapter_and_saves_a_cpu_model(cuda_device, tmp_path):
    capture = Capture()
    config = _config(tmp_path, "kadapt", cuda_device, "bf16-mixed",
                     negatives=NegativesConfig(enabled=True, kinds=["shuffle", "rotate"], patch_size=8),
                     peft=PeftConfig(method="kadaptation", options={"n": 8}))
    result = fit(config, callbacks=[capture])
    assert capture.device.type == cuda_device.type and capture.precision == "bf16-mixed"
    rows = read_metrics(result.run_dir / "metrics.csv")
    losses = _step_losses(result.run_dir)
    negative = [row["train/negatives/loss_epoch"] for row in rows if "train/negatives/loss_epoch" in row]
    assert len(losses) >= 1 and all(math.isfinite(v) for v in losses)
    assert len(negative) == 1 and negative[0] >= math.log(10) - 1e-3  # the uniform loss is >= ln K
    assert 0.0 <= result.metrics["test/acc"] <= 1.0 and math.isfinite(result.metrics["test/loss"])
    # only the adapter (and what KAdaptation trains) moved; every frozen tensor is bit-identical
    trained = capture.task.model
    final = {k: v.detach().cpu() for k, v in trained.state_dict().items()}
    assert final.keys() == capture.start.keys() and capture.trainable
    changed = {k for k in final if not torch.equal(final[k], capture.start[k])}
    assert changed == capture.trainable, (sorted(changed ^ capture.trainable))
    assert all(p.dtype == torch.float32 for p in trained.parameters())  # bf16-mixed keeps float32 weights
    # the saved model.safetensors is the merged model: on the CPU it predicts what the trained module predicts
    merged, meta = load_model(result.run_dir)
    assert meta["kind"] == "model" and next(merged.parameters()).device.type == "cpu"
    datamodule = build_datamodule("digits", img_size=32, batch_size=64)
    datamodule.setup("test")
    images, _ = next(iter(datamodule.test_dataloader()))
    trained_cpu = copy.deepcopy(trained).cpu().eval()
    with torch.no_grad():
        expected = merged(images)
        torch.testing.assert_close(trained_cpu(images), expected, rtol=1e-4, atol=1e-4)
        with torch.autocast(cuda_device.type, dtype=torch.bfloat16):
            on_device = trained.to(cuda_device).eval()(images.to(cuda_device)).float().cpu()  # fit ends on the CPU
    assert bool(torch.isfinite(on_device).all())
    scale = expected.abs().max().item()
    assert (on_device - expected).abs().max().item() <= 0.05 * max(1.0, scale)  # bf16 keeps ~3 significant digits
    assert (on_device.argmax(1) == expected.argmax(1)).float().mean() >= 0.9


def test_float32_run_on_device_follows_the_cpu_run(cuda_device, exact_float32, tmp_path):
    """Same seed, data order, initial weights and negative views (the term's CPU generator): the step losses of the
    GPU run equal the CPU run's to float32 accuracy, and the final weights agree to the Adam step size."""
    negatives = NegativesConfig(enabled=True, kinds=["shuffle", "infill"], patch_size=8, loss="l2")
    captures = {"device": Capture(), "cpu": Capture()}
    device_run = fit(_config(tmp_path, "device", cuda_device, "32-true", negatives=negatives),
                     callbacks=[captures["device"]])
    cpu_run = fit(_config(tmp_path, "cpu", torch.device("cpu"), "32-true", negatives=negatives),
                  callbacks=[captures["cpu"]])
    assert captures["device"].device.type == cuda_device.type and captures["cpu"].device.type == "cpu"
    for key, value in captures["cpu"].start.items():  # both start from the same seeded CPU initialisation
        assert torch.equal(captures["device"].start[key], value), key
    losses, expected = _step_losses(device_run.run_dir), _step_losses(cpu_run.run_dir)
    assert len(losses) == len(expected) >= 1
    assert losses == pytest.approx(expected, rel=1e-3)
    device_weights = captures["device"].task.model.state_dict()
    lr_bound = 2 * 3e-3 * STEPS  # Adam moves each weight by at most ~lr per step, whatever its gradient's size
    for key, value in captures["cpu"].task.model.state_dict().items():
        difference = (device_weights[key].cpu() - value).abs().max().item()
        assert difference <= lr_bound, (key, difference)
    assert device_run.metrics["test/loss"] == pytest.approx(cpu_run.metrics["test/loss"], rel=1e-2)


def test_a_checkpoint_mapped_to_the_device_restores_the_random_streams(cuda_device, tiny_vit):
    from vitlab.losses import NegativeAugmentationLoss
    from vitlab.train import ClassificationTask

    def task_and_generator():
        term = NegativeAugmentationLoss(["shuffle"], 8, seed=3)
        return ClassificationTask(copy.deepcopy(tiny_vit), loss_terms=[term], num_classes=10), term.generator

    saved_task, saved_generator = task_and_generator()
    torch.randperm(10, generator=saved_generator)  # move the stream on
    checkpoint = {}
    saved_task.on_save_checkpoint(checkpoint)
    # what load_from_checkpoint(map_location="cuda") hands the hook: every tensor on the device
    mapped = {"vitlab_rng": {key: [s.to(cuda_device) for s in value] if key == "cuda" else
                             ({k: v.to(cuda_device) for k, v in value.items()} if isinstance(value, dict)
                              else value.to(cuda_device))
                             for key, value in checkpoint["vitlab_rng"].items()}}
    task, generator = task_and_generator()
    task.on_load_checkpoint(mapped)  # torch.set_rng_state / Generator.set_state take CPU byte tensors only
    assert torch.equal(generator.get_state(), saved_generator.get_state())
    assert torch.equal(torch.get_rng_state(), checkpoint["vitlab_rng"]["cpu"])
