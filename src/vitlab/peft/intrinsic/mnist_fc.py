"""Li et al.'s anchor: the fully connected 784-200-200-10 MNIST network (D = 199,210; paper: d_int90 ≈ 750).

``MnistFC`` uses Keras' default initialisation (Glorot-uniform weights, zero biases), as the original code does.
``mnist_anchor_sweep`` trains the direct (100 %) reference and a Fastfood subspace sweep with ``fit_classifier``,
with Li et al.'s global projection normalisation by default (``projection_norm="global"``, as their code);
run it as ``python -m vitlab.peft.intrinsic.mnist_fc --data <folder with the MNIST IDX files> --out <run folder>``.

Example:
    >>> model = MnistFC()
    >>> sum(p.numel() for p in model.parameters())
    199210
    >>> model(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from .config import SubspaceConfig
from .model import wrap_in_subspace
from .sweep import SweepResult, run_sweep
from .trainer import FitSettings, fit_classifier

__all__ = ["ANCHOR_DIMS", "MnistFC", "load_mnist", "mnist_anchor_sweep"]

ANCHOR_DIMS = (100, 200, 300, 400, 500, 600, 750, 1000, 1500)


class MnistFC(nn.Module):
    """784-200-200-10 ReLU network on flattened images ``[B, 1, 28, 28]`` (or ``[B, 784]``) -> logits ``[B, 10]``.

    Args:
        in_features: flattened input size.
        hidden: hidden widths.
        num_classes: outputs.
        seed: seed of the Glorot-uniform initialisation (biases start at zero).
    """

    def __init__(self, in_features: int = 784, hidden: Sequence[int] = (200, 200), num_classes: int = 10,
                 seed: int = 0) -> None:
        super().__init__()
        widths = [in_features, *hidden]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:], strict=True))
        self.head = nn.Linear(widths[-1], num_classes)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for layer in [*self.layers, self.head]:
                bound = (6.0 / (layer.in_features + layer.out_features)) ** 0.5
                layer.weight.uniform_(-bound, bound, generator=gen)
                layer.bias.zero_()

    def get_classifier(self) -> nn.Module:
        """The output layer (timm's interface, used by ``train_head`` and the per-module head)."""
        return self.head

    def forward(self, x: Tensor) -> Tensor:
        x = x.flatten(1)
        for layer in self.layers:
            x = torch.relu(layer(x))
        return self.head(x)


def load_mnist(folder: str | Path) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """MNIST train/test from the IDX files in ``folder`` as ``(images [N, 784] float in [0, 1], labels [N])``."""
    from vitlab.data.readers import find_idx_files, read_idx_split

    found, missing = find_idx_files(folder)
    if missing:
        raise FileNotFoundError(f"{folder} lacks the MNIST files {missing}; install them with "
                                "vitlab.data.install_dataset('mnist') and pass that folder")
    train, test = read_idx_split(found)
    return tuple((s.images.flatten(1).float() / 255.0, s.labels) for s in (train, test))


def mnist_anchor_sweep(
    data: tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]],
    out_dir: str | Path,
    dims: Sequence[int] = ANCHOR_DIMS,
    *,
    subspace: FitSettings | None = None,
    direct: FitSettings | None = None,
    projection: str = "fastfood",
    projection_norm: str = "global",
    seed: int = 0,
) -> SweepResult:
    """Reference + subspace sweep of ``MnistFC`` on MNIST; writes ``sweep.csv`` and ``sweep.png`` in ``out_dir``.

    Args:
        data: ``(train, test)`` as returned by ``load_mnist``.
        out_dir: run folder (the sweep resumes from its CSV).
        dims: the d grid.
        subspace: training settings of the subspace runs (default: 6 epochs, batch 256, lr 0.1, cosine).
        direct: settings of the direct reference run (default: 6 epochs, batch 256, lr 1e-3, cosine).
        projection: ``"fastfood"`` or ``"dense"``.
        projection_norm: ``"global"`` (Li et al., whose d90 this reproduces) or ``"per_tensor"``.
        seed: seed of the network initialisation and of P (one θ₀ for every run).
    """
    train, test = data
    subspace = subspace or FitSettings(epochs=6, batch_size=256, lr=0.1, seed=seed)
    direct = direct or FitSettings(epochs=6, batch_size=256, lr=1e-3, seed=seed)

    def reference() -> float:
        return fit_classifier(MnistFC(seed=seed), train, test, direct).accuracy

    def train_and_eval(dim: int) -> float:
        model = wrap_in_subspace(MnistFC(seed=seed), SubspaceConfig(dim=dim, projection=projection, seed=seed,
                                                                    projection_norm=projection_norm))
        return fit_classifier(model, train, test, subspace).accuracy

    out = Path(out_dir)
    return run_sweep(train_and_eval, dims, out / "sweep.csv", reference=reference, plot_path=out / "sweep.png")


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: run the anchor sweep and print d90 as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="folder with the MNIST IDX files")
    parser.add_argument("--out", required=True, help="run folder (resumable)")
    parser.add_argument("--dims", type=int, nargs="+", default=list(ANCHOR_DIMS))
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=0.1, help="Adam lr of the subspace runs (cosine decay)")
    parser.add_argument("--direct-lr", type=float, default=1e-3, help="Adam lr of the direct reference run")
    parser.add_argument("--projection", choices=("fastfood", "dense"), default="fastfood")
    parser.add_argument("--projection-norm", choices=("global", "per_tensor"), default="global",
                        help="column normalisation of P: over the whole network (Li et al.) or per tensor")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    result = mnist_anchor_sweep(
        load_mnist(args.data), args.out, args.dims, projection=args.projection, seed=args.seed,
        projection_norm=args.projection_norm,
        subspace=FitSettings(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed),
        direct=FitSettings(epochs=args.epochs, batch_size=args.batch_size, lr=args.direct_lr, seed=args.seed),
    )
    d90 = result.d90
    print(json.dumps(dict(reference=result.reference, points=result.points, threshold=d90 and d90.threshold,
                          d90=d90 and d90.raw, d90_interpolated=d90 and d90.interpolated), indent=2))


if __name__ == "__main__":
    main()
