"""``vitlab demo``: each advance's headline effect with its spread, in a few minutes on 2 CPU cores (a small study).

It runs `vitlab.study.config.DEMO_CONFIG` (``src/vitlab/study/configs/demo_study.yaml``; ``configs/demo_study.yaml``
links to it): the small ViT and the tiny Inception Transformer pretrained on MNIST for 2 epochs each, fine-tuned on 20
Fashion-MNIST images per class with seeds 0 and 1: both fully (architecture), the ViT with P-Rotate/contrastive
negative views (data), with LoRA and with KAdaptation (training); clean, generated-corruption (N = 100) and
negative-view accuracy and confidence; a short intrinsic-dimension curve. Output: ``runs/demo/report.md`` and
``report.html``, opening with the headline effects (difference, spread over the seeds, verdict) and what the demo does
not show. Rerunning resumes.

Example:
    vitlab demo                      # what `make demo` runs
    vitlab demo --estimate_only true # the measured time estimate per stage only
"""

from __future__ import annotations

from typing import Any

from jsonargparse import ArgumentParser, Namespace

__all__ = ["build_demo_parser", "run_demo"]


def build_demo_parser() -> ArgumentParser:
    """The ``vitlab demo`` parser: ``vitlab study``'s options with the demo's config as default."""
    from vitlab.cli.study import build_study_parser
    from vitlab.study.config import DEMO_CONFIG

    return build_study_parser(prog="vitlab demo", default_config=str(DEMO_CONFIG))


def run_demo(ns: Namespace, argv: list[str] | None = None) -> dict[str, Any]:
    """Run the demo study from its parsed namespace; returns the report paths."""
    from vitlab.cli.study import run_study_cli

    return run_study_cli(ns, prog="vitlab demo", argv=argv)
