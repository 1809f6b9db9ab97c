"""``vitlab intrinsic-dim``: d90 sweeps of random-subspace training (Li et al. 2018), whole model or per module kind.

The command parses a run config (as ``vitlab fit``, with ``peft.method: subspace`` and ``peft.options.sweep``) and
calls `vitlab.study.intrinsic.run_intrinsic_dim`, whose docstring describes the sweep, its settings and the files it
writes into ``<output_dir>/<name>/``; a rerun resumes where it stopped.

Example (a shell command)::

    vitlab intrinsic-dim --config configs/intrinsic_dim_vit_digits.yaml --per_module true
"""

from __future__ import annotations

from jsonargparse import ArgumentParser, Namespace

from vitlab.train.arguments import add_run_arguments, namespace_to_run_config

__all__ = ["build_intrinsic_dim_parser", "run_cli"]


def build_intrinsic_dim_parser(help_only: bool = False) -> ArgumentParser:
    """The ``vitlab intrinsic-dim`` parser: the ``vitlab fit`` arguments plus ``--per_module`` and ``--dims``
    (``help_only``: a parser for ``--help`` only, see `vitlab.train.arguments.add_run_arguments`)."""
    parser = ArgumentParser(
        prog="vitlab intrinsic-dim",
        description="Measure d90, the smallest random-subspace dimension reaching 90 % of the reference accuracy: "
        "trains the reference, then subspace runs over a log-spaced d grid (peft.options.sweep). Writes "
        "<output_dir>/<name>/intrinsic_dim.{csv,png,json}; --per_module true sweeps each module kind instead and "
        "writes the ranked table intrinsic_dim_per_module.{csv,json,png}. Rerunning resumes.",
    )
    add_run_arguments(parser, help_only)
    parser.add_argument("--per_module", "--per-module", type=bool, nargs="?", const=True, default=False,
                        help="true: sweep each module kind (attention q/k/v/proj, MLP fc1/fc2, high mixer) alone, "
                        "instead of the whole model, and write the ranked table")
    parser.add_argument("--reuse_cached_as_is", type=bool, nargs="?", const=True, default=False,
                        help="resume the sweep folder even if another configuration made its runs (default: refused, "
                        "naming the differing keys)")
    parser.add_argument("--dims", type=list[int] | int | None, default=None,
                        help="override the d grid, e.g. --dims '[10, 100, 1000]' (one point: --dims 1000)")
    return parser


def run_cli(ns: Namespace) -> None:
    """Run the subcommand from its parsed namespace and print the result."""
    from vitlab.study.intrinsic import run_intrinsic_dim

    dims = [ns.dims] if isinstance(ns.dims, int) else ns.dims
    summary = run_intrinsic_dim(namespace_to_run_config(ns), per_module=ns.per_module, dims=dims,
                                reuse_cached_as_is=ns.reuse_cached_as_is)
    print(f"reference {summary['reference']:.4f}, threshold {summary['threshold']:.4f}")
    for d, acc in sorted(summary.get("points", {}).items()):
        print(f"  d={d:<8} accuracy {acc:.4f}")
    if "d90" in summary:
        published = summary["published_d90"]
        print(f"d90: {_fmt(summary['d90'])} (grid), {_fmt(summary['d90_interpolated'])} (interpolated)"
              + (f"; published: {published:g}" if published else ""))
    for row in summary.get("per_module", []):
        print(f"  rank {row['rank']}: {row['module']:<10} d90 {_fmt(row['d90'])} ({_fmt(row['d90_interpolated'])}), "
              f"best accuracy {row['best_accuracy']:.4f}")
    print(f"results: {summary['folder']}")


def _fmt(value: float | None) -> str:
    return "not reached" if value is None else f"{value:.0f}"
