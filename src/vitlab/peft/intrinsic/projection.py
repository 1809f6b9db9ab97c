"""Seeded random projections P: R^d -> R^D with unit-norm columns, regenerated from a seed and never stored.

- ``DenseProjection``: P with N(0, 1) entries, each column divided by its norm (Li et al. 2018). O(D·d) memory.
- ``FastfoodProjection``: Li et al.'s global Fastfood transform. With ``LL = 2^ceil(log2 D)``, ±1 signs B, a random
  permutation Π and Gaussian gains G (all of length LL), ``P·θ = (H G Π H B pad(θ, LL))[:D] / sqrt(D · ΣG²)``, H the
  unnormalised Walsh–Hadamard matrix, so each column has unit norm in expectation. O(D) memory, O(D log D) time.

Both register buffers ``seed`` (int64, shape ``[1]``) and ``checksum`` (SHA-256 bytes of the regenerated B, Π, G,
or of the dense P, plus D, d and the layout digest), which go into the state dict; loading a state dict whose seed or
checksum differs from the regenerated ones raises, so another torch version or device cannot silently use another P.

Example:
    >>> import torch
    >>> proj = FastfoodProjection(num_params=100, dim=10, seed=0)
    >>> proj(torch.zeros(10)).shape
    torch.Size([100])
"""

from __future__ import annotations

import hashlib
import math
import os

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .hadamard import fwht

__all__ = ["DenseProjection", "FastfoodProjection", "SubspaceProjection", "available_memory_bytes"]


def available_memory_bytes(device: torch.device) -> int:
    """Free memory on ``device``: ``torch.cuda.mem_get_info`` for CUDA, ``MemAvailable`` of /proc/meminfo otherwise."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def _digest(*parts: Tensor | bytes) -> Tensor:
    h = hashlib.sha256()
    for part in parts:
        h.update(part if isinstance(part, bytes) else memoryview(part.contiguous().numpy()).cast("B"))
    return torch.frombuffer(bytearray(h.digest()), dtype=torch.uint8)


def _header(kind: str, num_params: int, dim: int, seed: int, layout: bytes) -> bytes:
    return f"{kind}:D={num_params}:d={dim}:seed={seed}:".encode() + layout


class SubspaceProjection(nn.Module):
    """Base class: maps θ_d ``[..., dim]`` to the D-vector ``[..., num_params]``; holds the seed and checksum.

    Args:
        num_params: D, the length of the output.
        dim: d, the length of the input.
        seed: seed of the ``torch.Generator`` (on the CPU, so every device regenerates the same P).
    """

    def __init__(self, num_params: int, dim: int, seed: int) -> None:
        super().__init__()
        if num_params < 1 or dim < 1:
            raise ValueError(f"a projection needs D >= 1 and d >= 1, got D={num_params}, d={dim}")
        if dim > num_params:
            raise ValueError(f"d={dim} exceeds the D={num_params} numbers in the subspace: a subspace larger than the "
                             "parameter space is meaningless; lower dim or select more parameters")
        self.num_params, self.dim = num_params, dim
        # shape [1], not a 0-d scalar: byte views for hashing (``vitlab.checkpoint.state_dict_sha256``) need a dimension
        self.register_buffer("seed", torch.tensor([seed], dtype=torch.int64))
        self.register_buffer("checksum", torch.zeros(32, dtype=torch.uint8))

    def _generator(self) -> torch.Generator:
        return torch.Generator(device="cpu").manual_seed(int(self.seed))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing, unexpected, errors):
        for key, what in (("seed", "seed"), ("checksum", "checksum of the regenerated projection")):
            stored = state_dict.get(prefix + key)
            mine = getattr(self, key)
            if stored is not None and (stored.shape != mine.shape or not torch.equal(stored.cpu(), mine.cpu())):
                hint = (f"build the subspace with SubspaceConfig(seed={int(stored)})" if key == "seed" else
                        "the regenerated P differs from the one the checkpoint was trained with (another torch "
                        "version, a different model/target_modules, dim or projection); rebuild with the same "
                        "model, config and torch version")
                raise ValueError(f"subspace {what} mismatch while loading {prefix + key!r}: {hint}")
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing, unexpected, errors)

    def extra_repr(self) -> str:
        return f"num_params={self.num_params}, dim={self.dim}, seed={int(self.seed)}"


class DenseProjection(SubspaceProjection):
    """Dense Gaussian P ``[D, d]`` with exactly unit-norm columns (Li et al.).

    Args:
        num_params: D.
        dim: d.
        seed: projection seed.
        layout: bytes identifying the parameter layout (goes into the checksum).
        max_bytes: refuse when ``4·D·d`` bytes exceed this (default: half of the free memory on ``device``).
        device: where P is created and kept.

    Raises:
        MemoryError: P would not fit; the message gives the estimate and suggests ``projection="fastfood"``.
    """

    def __init__(self, num_params: int, dim: int, seed: int = 0, layout: bytes = b"", max_bytes: int | None = None,
                 device: torch.device | str = "cpu") -> None:
        super().__init__(num_params, dim, seed)
        device = torch.device(device)
        need = 4 * num_params * dim
        limit = max_bytes if max_bytes is not None else available_memory_bytes(device) // 2
        if need > limit:
            raise MemoryError(
                f"a dense projection for D={num_params:,} parameters and d={dim:,} needs {need / 2**30:.2f} GiB "
                f"(D·d float32), above the limit of {limit / 2**30:.2f} GiB on {device}; use "
                f"projection='fastfood' (O(D) memory: about {12 * 2 ** math.ceil(math.log2(num_params)) / 2**30:.2f} "
                "GiB here) or raise max_dense_bytes"
            )
        matrix = torch.randn(num_params, dim, generator=self._generator())
        matrix /= matrix.norm(dim=0, keepdim=True)
        self.checksum.copy_(_digest(_header("dense", num_params, dim, seed, layout), matrix))
        self.register_buffer("matrix", matrix.to(device), persistent=False)

    def forward(self, theta: Tensor) -> Tensor:
        """``[..., d] -> [..., D]``."""
        return theta @ self.matrix.T


class _TileGather(torch.autograd.Function):
    """z = tile(h, LL/m)[perm] via one gather; backward gathers with the inverse permutation and sums the tiles."""

    @staticmethod
    def forward(ctx, h: Tensor, gather_index: Tensor, inverse_index: Tensor) -> Tensor:
        ctx.save_for_backward(inverse_index)
        ctx.block = h.shape[-1]
        return h.index_select(-1, gather_index)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:
        (inverse_index,) = ctx.saved_tensors
        tiles = grad.index_select(-1, inverse_index)
        return tiles.unflatten(-1, (-1, ctx.block)).sum(-2), None, None


class FastfoodProjection(SubspaceProjection):
    """Li et al.'s global Fastfood transform, ``P·θ = (H G Π H B pad(θ))[:D] / sqrt(D ΣG²)``.

    θ only fills the first ``m = 2^ceil(log2 d)`` entries of the padded vector, and in Sylvester order
    ``H_LL = H_{LL/m} ⊗ H_m``, so ``H B pad(θ)`` is ``H_m B θ`` tiled LL/m times; the tiling and Π are fused into a
    single gather. Per call: one FWHT of size m, one gather and one FWHT of size LL.

    Buffers (not saved): ``sign`` [d] (B restricted to where θ lives), ``gather_index`` [LL] (Π mod m),
    ``inverse_index`` [LL] (Π⁻¹), both int32, and ``gain`` [LL] (G / sqrt(D ΣG²)): 12·LL bytes in all.

    Args:
        num_params: D.
        dim: d (at most D).
        seed: projection seed; B, Π, G are drawn in that order from one CPU generator.
        layout: bytes identifying the parameter layout (goes into the checksum).
        device: where the buffers live.
    """

    def __init__(self, num_params: int, dim: int, seed: int = 0, layout: bytes = b"",
                 device: torch.device | str = "cpu") -> None:
        super().__init__(num_params, dim, seed)
        self.padded = 1 << max(0, (num_params - 1).bit_length())
        self.block = 1 << max(0, (dim - 1).bit_length())
        gen = self._generator()
        signs = torch.randint(0, 2, (self.padded,), generator=gen, dtype=torch.int8) * 2 - 1
        perm = torch.randperm(self.padded, generator=gen)
        gains = torch.randn(self.padded, generator=gen)
        self.checksum.copy_(_digest(_header("fastfood", num_params, dim, seed, layout), signs, perm, gains))
        scale = 1.0 / math.sqrt(num_params * gains.double().square().sum().item())
        index_dtype = torch.int32 if self.padded < 2**31 else torch.int64
        inverse = torch.empty_like(perm).scatter_(0, perm, torch.arange(self.padded))
        device = torch.device(device)
        self.register_buffer("sign", signs[:dim].float().to(device), persistent=False)
        self.register_buffer("gather_index", (perm % self.block).to(index_dtype).to(device), persistent=False)
        self.register_buffer("inverse_index", inverse.to(index_dtype).to(device), persistent=False)
        self.register_buffer("gain", (gains.double() * scale).float().to(device), persistent=False)

    def forward(self, theta: Tensor) -> Tensor:
        """``[..., d] -> [..., D]``."""
        x = F.pad(theta * self.sign, (0, self.block - self.dim))
        z = _TileGather.apply(fwht(x), self.gather_index, self.inverse_index) * self.gain
        return fwht(z)[..., : self.num_params]

    def extra_repr(self) -> str:
        return super().extra_repr() + f", padded={self.padded}"
