"""Data-loading throughput: vitlab's batched pipeline beside the per-sample torchvision pipeline, in one run.

Both produce the same tensors for Fashion-MNIST (28 px zero-padded to 32, normalised, float32 [B, 1, 32, 32]):

- ``vitlab``: ``build_datamodule("fashion_mnist").train_dataloader()``; the dataset implements ``__getitems__``, so
  padding and normalisation run once per batch as tensor ops;
- ``per-sample``: the usual torchvision style, a map-style dataset whose ``__getitem__`` converts one uint8 image
  with ``v2.Pad`` + ``v2.ToDtype`` + ``v2.Normalize`` and the default collate stacks them;
- ``+ randaugment``: both with the ImageNet-C-disjoint RandAugment preset (per sample in both pipelines).

Prints a table (images/s and the ratio to the per-sample pipeline) and writes JSON. Ratios, not absolute times,
are the result: they hold across machines.

Usage:
    python benchmarks/bench_data.py [--batches 60] [--batch-size 128] [--out benchmarks/results/bench_data.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
from _args import check_out, check_positive
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from vitlab.data import build_augment, build_datamodule


class PerSampleDataset(Dataset):
    """uint8 [N, 1, 28, 28] images transformed one at a time (the torchvision-dataset style)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean: float, std: float, augment=None) -> None:
        self.images, self.labels, self.augment = images, labels, augment
        self.transform = v2.Compose([v2.Pad(2), v2.ToDtype(torch.float32, scale=True), v2.Normalize([mean], [std])])

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.images[index]
        if self.augment is not None:
            image = self.augment(v2.functional.pad(image, [2]))[..., 2:-2, 2:-2]
        return self.transform(image), self.labels[index]


def images_per_second(loader: DataLoader, batches: int) -> float:
    """Images/s over ``batches`` batches, after one warm-up batch."""
    iterator = iter(loader)
    next(iterator)
    count, start = 0, time.perf_counter()
    for _ in range(batches):
        images, _ = next(iterator)
        count += images.shape[0]
    return count / (time.perf_counter() - start)


def build_parser() -> argparse.ArgumentParser:
    """The command line of this script (its options are those of the module docstring's Usage)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=60, help="timed batches per pipeline (after one warm-up)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/bench_data.json"))
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parsed and checked arguments; a bad one exits with status 2 and a line naming the fix."""
    parser = build_parser()
    args = parser.parse_args(argv)
    check_positive(parser, batches=args.batches, batch_size=args.batch_size)
    check_out(parser, args.out)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)

    rows = []
    for augment in ("none", "randaugment"):
        dm = build_datamodule("fashion_mnist", batch_size=args.batch_size, augment=augment)
        dm.prepare_data()
        dm.setup("fit")
        config = dm.data_config()
        available = len(dm.train_dataloader()) - 1
        if args.batches > available:  # one warm-up batch, then --batches timed ones, from one pass over the data
            build_parser().error(f"--batches {args.batches}: one pass over the training set has only {available} "
                                 f"batches of {args.batch_size} after the warm-up; pass --batches {available} or less")
        train = dm.train_dataloader().dataset
        reference = PerSampleDataset(train.images, train.labels, config["mean"][0], config["std"][0],
                                     build_augment(augment))
        if augment == "none":  # both pipelines give the same tensors
            torch.testing.assert_close(reference[0][0], train[0][0])
        per_sample = images_per_second(DataLoader(reference, batch_size=args.batch_size, shuffle=True),
                                       args.batches)
        batched = images_per_second(dm.train_dataloader(), args.batches)
        rows.append({"augment": augment, "per_sample_img_s": per_sample, "vitlab_img_s": batched,
                     "speedup": batched / per_sample})

    print(f"{'augment':<12} {'per-sample img/s':>17} {'vitlab img/s':>13} {'vitlab / per-sample':>20}")
    for row in rows:
        print(f"{row['augment']:<12} {row['per_sample_img_s']:>17.0f} {row['vitlab_img_s']:>13.0f} "
              f"{row['speedup']:>19.1f}x")
    env = {"torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.machine(),
           "batch_size": args.batch_size, "batches": args.batches}
    args.out.write_text(json.dumps({"env": env, "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
