"""Seeded random projections P: R^d -> R^D with unit-norm columns, regenerated from a seed and never stored.

- ``DenseProjection``: P with N(0, 1) entries, each column divided by its norm (Li et al. 2018). O(D·d) memory.
  With ``blocks`` (per-tensor normalisation) each block of rows gets unit-norm columns instead.
- ``FastfoodProjection``: Li et al.'s global Fastfood transform. With ``LL = 2^ceil(log2 D)``, ±1 signs B, a random
  permutation Π and Gaussian gains G (all of length LL), ``P·θ = (H G Π H B pad(θ, LL))[:D] / sqrt(D · ΣG²)``, H the
  unnormalised Walsh–Hadamard matrix, so each column has unit norm in expectation. O(D) memory, O(D log D) time.
  Over the whole D-vector a tensor of D_i numbers gets column norms of about sqrt(D_i / D) (0.006 for a 192-number
  bias in a 5M-parameter ViT).
- ``PerTensorFastfoodProjection``: Aghajanyan et al.'s form (their SAID and whole-model reference code): one
  Fastfood transform per block (parameter tensor or row slice), each normalised by its own size, so the columns of
  every block have unit norm in expectation (exactly, when the block's size is a power of two at least d).

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
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .hadamard import fwht

__all__ = ["PROJECTION_NORMS", "DenseProjection", "FastfoodProjection", "PerTensorFastfoodProjection",
           "SubspaceProjection", "available_memory_bytes"]

#: Column normalisation of P: ``per_tensor`` (each block of the D-vector, Aghajanyan et al.) or ``global`` (Li et al.)
PROJECTION_NORMS = ("per_tensor", "global")


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
        device: where the ``seed`` and ``checksum`` buffers live (with the subclass's other buffers).
    """

    def __init__(self, num_params: int, dim: int, seed: int, device: torch.device | str | None = None) -> None:
        super().__init__()
        if num_params < 1 or dim < 1:
            raise ValueError(f"a projection needs D >= 1 and d >= 1, got D={num_params}, d={dim}")
        if dim > num_params:
            raise ValueError(f"d={dim} exceeds the D={num_params} numbers in the subspace: a subspace larger than the "
                             "parameter space is meaningless; lower dim or select more parameters")
        self.num_params, self.dim = num_params, dim
        # CPU copies of the two buffers: drawing P and checking a loaded state dict also work on the meta device
        self._reference = {"seed": torch.tensor([seed], dtype=torch.int64),
                           "checksum": torch.zeros(32, dtype=torch.uint8)}
        # shape [1], not a 0-d scalar: byte views for hashing (``vitlab.checkpoint.state_dict_sha256``) need a dimension
        self.register_buffer("seed", self._reference["seed"].to(device))
        self.register_buffer("checksum", self._reference["checksum"].to(device))

    def _set_checksum(self, digest: Tensor) -> None:
        self._reference["checksum"] = digest
        self.checksum.copy_(digest)

    def _generator(self) -> torch.Generator:
        return torch.Generator(device="cpu").manual_seed(int(self._reference["seed"]))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing, unexpected, errors):
        for key, what in (("seed", "seed"), ("checksum", "checksum of the regenerated projection")):
            stored = state_dict.get(prefix + key)
            mine = self._reference[key]
            if stored is not None and (stored.shape != mine.shape or not torch.equal(stored.cpu(), mine)):
                hint = (f"build the subspace with SubspaceConfig(seed={int(stored)})" if key == "seed" else
                        "the regenerated P differs from the one the checkpoint was trained with (another torch "
                        "version, a different model/target_modules, dim, projection or projection_norm; runs made "
                        "before projection_norm existed used projection_norm='global'); rebuild with the same "
                        "model, config and torch version")
                raise ValueError(f"subspace {what} mismatch while loading {prefix + key!r}: {hint}")
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing, unexpected, errors)

    def extra_repr(self) -> str:
        return f"num_params={self.num_params}, dim={self.dim}, seed={int(self._reference['seed'])}"


class DenseProjection(SubspaceProjection):
    """Dense Gaussian P ``[D, d]`` with exactly unit-norm columns (Li et al.), or per block of rows.

    Args:
        num_params: D.
        dim: d.
        seed: projection seed.
        layout: bytes identifying the parameter layout (goes into the checksum).
        max_bytes: refuse when ``4·D·d`` bytes exceed this (default: half of the free memory on ``device``).
        device: where P is created and kept.
        blocks: sizes of consecutive row blocks summing to D (per-tensor normalisation: the columns of each block
            ``P[offset:offset + size]`` have unit norm); ``None``: the columns of the whole P have unit norm. The
            Gaussian draws are the same either way.

    Raises:
        MemoryError: P would not fit; the message gives the estimate and suggests ``projection="fastfood"``.
    """

    def __init__(self, num_params: int, dim: int, seed: int = 0, layout: bytes = b"", max_bytes: int | None = None,
                 device: torch.device | str = "cpu", blocks: Sequence[int] | None = None) -> None:
        device = torch.device(device)
        super().__init__(num_params, dim, seed, device)
        if blocks is not None:
            blocks = _check_blocks(blocks, num_params)
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
        for rows in [matrix] if blocks is None else matrix.split(blocks):
            rows /= rows.norm(dim=0, keepdim=True)  # in place: ``split`` gives views of ``matrix``
        kind = "dense" if blocks is None else "dense/per_tensor"
        self._set_checksum(_digest(_header(kind, num_params, dim, seed, layout), matrix))
        self.blocks = None if blocks is None else len(blocks)
        self.register_buffer("matrix", matrix.to(device), persistent=False)

    def forward(self, theta: Tensor) -> Tensor:
        """``[..., d] -> [..., D]``."""
        return theta @ self.matrix.T

    def extra_repr(self) -> str:
        return super().extra_repr() + ("" if self.blocks is None else f", blocks={self.blocks}")


def _check_blocks(blocks: Sequence[int], num_params: int | None = None) -> list[int]:
    blocks = list(blocks)
    if not blocks or not all(isinstance(b, int) and not isinstance(b, bool) and b >= 1 for b in blocks):
        raise ValueError(f"blocks must be a non-empty list of positive block sizes, got {blocks!r}")
    if num_params is not None and sum(blocks) != num_params:
        raise ValueError(f"the blocks add up to {sum(blocks)} numbers but D={num_params}; pass one size per segment "
                         "of the D-vector")
    return blocks


class _TileGather(torch.autograd.Function):
    """z = tile(h, LL/m)[perm] via one gather; backward gathers with the inverse permutation and sums the tiles.

    ``rows`` > 1: ``h`` is ``rows`` vectors of length m laid end to end (``[..., rows·m]``) and the indices address
    the flattened ``[..., rows·LL]`` output, each row gathering only from its own vector.
    """

    generate_vmap_rule = True  # with setup_context apart from forward: every torch.func transform runs through it

    @staticmethod
    def forward(h: Tensor, gather_index: Tensor, inverse_index: Tensor, rows: int) -> Tensor:
        return h.index_select(-1, gather_index)

    @staticmethod
    def setup_context(ctx, inputs: tuple[Tensor, Tensor, Tensor, int], output: Tensor) -> None:
        h, gather_index, inverse_index, rows = inputs
        ctx.save_for_backward(inverse_index)
        ctx.gather_index = gather_index
        ctx.block, ctx.rows = h.shape[-1] // rows, rows

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None, None]:
        (inverse_index,) = ctx.saved_tensors
        tiles = grad.index_select(-1, inverse_index)
        if ctx.rows == 1:
            return tiles.unflatten(-1, (-1, ctx.block)).sum(-2), None, None, None
        return tiles.unflatten(-1, (ctx.rows, -1, ctx.block)).sum(-2).flatten(-2), None, None, None

    @staticmethod
    def jvp(ctx, tangent: Tensor, *_: None) -> Tensor:
        return tangent.index_select(-1, ctx.gather_index)


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
        device = torch.device(device)
        super().__init__(num_params, dim, seed, device)
        self.padded = 1 << max(0, (num_params - 1).bit_length())
        self.block = 1 << max(0, (dim - 1).bit_length())
        gen = self._generator()
        signs = torch.randint(0, 2, (self.padded,), generator=gen, dtype=torch.int8) * 2 - 1
        perm = torch.randperm(self.padded, generator=gen)
        gains = torch.randn(self.padded, generator=gen)
        self._set_checksum(_digest(_header("fastfood", num_params, dim, seed, layout), signs, perm, gains))
        scale = 1.0 / math.sqrt(num_params * gains.double().square().sum().item())
        index_dtype = torch.int32 if self.padded < 2**31 else torch.int64
        inverse = torch.empty_like(perm).scatter_(0, perm, torch.arange(self.padded))
        self.register_buffer("sign", signs[:dim].float().to(device), persistent=False)
        self.register_buffer("gather_index", (perm % self.block).to(index_dtype).to(device), persistent=False)
        self.register_buffer("inverse_index", inverse.to(index_dtype).to(device), persistent=False)
        self.register_buffer("gain", (gains.double() * scale).float().to(device), persistent=False)

    def forward(self, theta: Tensor) -> Tensor:
        """``[..., d] -> [..., D]``."""
        x = F.pad(theta * self.sign, (0, self.block - self.dim))
        z = _TileGather.apply(fwht(x), self.gather_index, self.inverse_index, 1) * self.gain
        return fwht(z)[..., : self.num_params]

    def extra_repr(self) -> str:
        return super().extra_repr() + f", padded={self.padded}"


class _FastfoodGroup(nn.Module):
    """The blocks of a ``PerTensorFastfoodProjection`` that share one padded length LL (batched together)."""

    def __init__(self, members: list[int], sizes: list[int], padded: int, gather: Tensor, inverse: Tensor,
                 gain: Tensor) -> None:
        super().__init__()
        self.members, self.sizes, self.padded = members, sizes, padded
        self.register_buffer("member_index", torch.tensor(members, dtype=torch.int64, device=gather.device),
                             persistent=False)  # on the device of the other buffers (a projection built on a GPU)
        self.register_buffer("gather_index", gather, persistent=False)
        self.register_buffer("inverse_index", inverse, persistent=False)
        self.register_buffer("gain", gain, persistent=False)

    def forward(self, h: Tensor) -> list[Tensor]:
        """``h`` ``[..., T, m]`` (every block's ``H_m B θ``) -> this group's block outputs ``[..., D_i]``."""
        rows = len(self.members)
        mine = h.index_select(-2, self.member_index).flatten(-2)
        z = _TileGather.apply(mine, self.gather_index, self.inverse_index, rows).unflatten(-1, (rows, self.padded))
        y = fwht(z * self.gain)
        return [y[..., i, :size] for i, size in enumerate(self.sizes)]


class PerTensorFastfoodProjection(SubspaceProjection):
    """One Fastfood transform per block of the D-vector (Aghajanyan et al.), each with unit-norm columns.

    Block i (a parameter tensor, or a row slice of one) of D_i numbers gets its own B_i, Π_i, G_i of length
    ``LL_i = max(2^ceil(log2 D_i), m)`` with ``m = 2^ceil(log2 d)``, and ``P_i·θ = (H G_i Π_i H B_i pad(θ))[:D_i] /
    sqrt(D_i ΣG_i²)``: every column of every block has unit norm in expectation (exactly when D_i is a power of two
    and at least d), however small the tensor. A block smaller than d is fine (its P_i is D_i × d, wide). The output
    is the blocks in order, ``[..., D]`` with ``D = sum(blocks)``. Blocks of equal LL run as one batched transform.

    Memory: ``4·T·d`` bytes of signs plus 20 bytes per padded entry (``Σ LL_i``); per call one batched FWHT of size m
    over the T blocks and one of size LL per group.

    Args:
        blocks: the sizes D_i of the consecutive blocks (e.g. ``[s.numel for s in segments]``).
        dim: d (at most D).
        seed: projection seed; B_i, Π_i, G_i are drawn block after block, in that order, from one CPU generator.
        layout: bytes identifying the parameter layout (goes into the checksum).
        device: where the buffers live.

    Example:
        >>> proj = PerTensorFastfoodProjection([64, 192, 8], dim=16, seed=0)
        >>> matrix = proj(torch.eye(16)).T  # P [D, d], materialised
        >>> [round(float(block.norm(dim=0).square().mean()), 2) for block in matrix.split([64, 192, 8])]
        [1.0, 1.0, 1.0]
    """

    def __init__(self, blocks: Sequence[int], dim: int, seed: int = 0, layout: bytes = b"",
                 device: torch.device | str = "cpu") -> None:
        blocks = _check_blocks(blocks)
        device = torch.device(device)
        super().__init__(sum(blocks), dim, seed, device)
        self.sizes = blocks
        self.block = 1 << max(0, (dim - 1).bit_length())
        gen = self._generator()
        digest = hashlib.sha256(_header("fastfood/per_tensor", self.num_params, dim, seed, layout))
        signs, by_padded = [], {}
        for i, size in enumerate(blocks):
            padded = max(1 << max(0, (size - 1).bit_length()), self.block)
            sign = torch.randint(0, 2, (padded,), generator=gen, dtype=torch.int8) * 2 - 1
            perm = torch.randperm(padded, generator=gen)
            gains = torch.randn(padded, generator=gen)
            for part in (sign, perm, gains):
                digest.update(memoryview(part.contiguous().numpy()).cast("B"))
            signs.append(sign[:dim].float())
            scale = 1.0 / math.sqrt(size * gains.double().square().sum().item())
            by_padded.setdefault(padded, []).append((i, perm, (gains.double() * scale).float()))
        self._set_checksum(torch.frombuffer(bytearray(digest.digest()), dtype=torch.uint8))
        self.register_buffer("sign", torch.stack(signs).to(device), persistent=False)
        groups = []
        for padded, members in sorted(by_padded.items()):
            rows = len(members)
            index_dtype = torch.int32 if rows * padded < 2**31 else torch.int64
            offsets = torch.arange(rows).unsqueeze(1)
            perms = torch.stack([perm for _, perm, _ in members])
            gather = perms % self.block + offsets * self.block
            inverse = torch.empty_like(perms).scatter_(1, perms, torch.arange(padded).expand(rows, -1))
            inverse += offsets * padded
            groups.append(_FastfoodGroup(
                [i for i, _, _ in members], [blocks[i] for i, _, _ in members], padded,
                gather.flatten().to(index_dtype).to(device), inverse.flatten().to(index_dtype).to(device),
                torch.stack([gain for _, _, gain in members]).to(device)))
        self.groups = nn.ModuleList(groups)

    def forward(self, theta: Tensor) -> Tensor:
        """``[..., d] -> [..., D]``."""
        x = F.pad(theta.unsqueeze(-2) * self.sign, (0, self.block - self.dim))
        h = fwht(x)
        out: list[Tensor | None] = [None] * len(self.sizes)
        for group in self.groups:
            for i, piece in zip(group.members, group(h), strict=True):
                out[i] = piece
        return torch.cat(out, dim=-1)

    def extra_repr(self) -> str:
        padded = sum(g.padded * len(g.members) for g in self.groups)
        return super().extra_repr() + f", blocks={len(self.sizes)}, padded={padded}"
