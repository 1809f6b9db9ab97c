"""``vitlab demo``: train the small ViT on Fashion-MNIST on the CPU and write a short report."""

from __future__ import annotations

import platform
import time
from pathlib import Path

import torch

from vitlab import __version__

__all__ = ["DEMO_CONFIG", "run_demo", "write_report"]

DEMO_CONFIG = Path(__file__).resolve().parent / "demo.yaml"


def write_report(result, command: str, elapsed_s: float) -> Path:
    """Write ``<run>/report.md``: data, model, hardware, time, final metrics and the curves."""
    import json

    summary = json.loads((result.run_dir / "summary.json").read_text())
    metrics = result.metrics
    lines = [
        f"# vitlab demo report ({result.run_dir.name})",
        "",
        f"- command: `{command}`",
        f"- vitlab {__version__}, torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} CPU threads",
        f"- wall time: {elapsed_s / 60:.1f} min (training, validation, test and saving)",
        f"- parameters: {summary['parameters']:,}",
        "",
        "| metric | value |",
        "|---|---|",
        *[f"| {key} | {value:.4f} |" for key, value in sorted(metrics.items())],
        "",
        "![training curves](training_curves.png)",
        "",
        "Files: `metrics.csv` (every logged value), `model.safetensors` + `config.json` (weights and metadata), "
        "`checkpoints/last.ckpt` (resume), `config.yaml` (resolved config).",
    ]
    path = result.run_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def run_demo(config: str | Path = DEMO_CONFIG, output_dir: str = "runs", resume: bool = False) -> Path:
    """Run the demo config through ``vitlab fit`` machinery and write ``report.md``; returns the report path."""
    from vitlab.cli.fit import parse_run_config
    from vitlab.train.run import fit

    run_config, _ = parse_run_config(["--config", str(config), "--output_dir", output_dir])
    start = time.perf_counter()
    result = fit(run_config, resume=resume)
    report = write_report(result, "vitlab demo", time.perf_counter() - start)
    print(f"test accuracy {result.metrics.get('test/acc', float('nan')):.4f}; report: {report}")
    return report
