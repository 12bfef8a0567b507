"""BatchFormerV2 (Hou et al. 2022), as combined with IDOL and MinVIS in report 001 Sec. 2.1.2-2.1.3.

A transformer encoder layer whose tokens are the samples of the batch: for every spatial position (or query)
the ``B`` feature vectors attend to each other, so each sample's representation is informed by the others.

Two-stream training (the official Deformable-DETR code): at the first insertion point the module returns
``cat([x, bf(x)], dim=batch_dim)``; everything after it (decoder, heads, losses) runs on a batch of ``2B``
with shared weights, so both streams are supervised, and the caller repeats the other per-sample tensors and
the targets with :func:`tile_batch`. At later insertion points the input already holds both streams
(``tiled=True``): the first half passes unchanged and only the second (BatchFormer) half goes through the
module again. At test time the module is removed: ``forward`` is the identity and the batch is not doubled.

Where to insert is the caller's choice: Deformable-DETR encoder layers for IDOL (the official code inserts
after chosen encoder layers); for MinVIS the block "takes the same input as the Transformer block before
it" (001 Sec. 2.1.3), i.e. it is applied to the queries right before a transformer-decoder block. Defaults
follow the official code: 4 heads, feed-forward width = ``dim``, dropout 0.5.

Both models take the blocks as generic pre-layer hooks (``{layer index: module}``, ``module(x, **context)``
on batch-first ``(B, L, C)`` input, which may return ``k * B`` samples; the model tiles its other per-sample
tensors to match): :func:`batchformer_hooks` builds them, so the two-stream bookkeeping (which insertion
point starts the streams) lives here and neither model knows about BatchFormer.

Layouts: ``batch_dim=0`` for batch-first ``(B, L, C)`` (deformable encoder tokens) and ``batch_dim=1`` for
sequence-first ``(L, B, C)`` (Mask2Former decoder queries).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "BatchFormerConfig",
    "BatchFormerV2",
    "BatchFormerHook",
    "tile_batch",
    "build_batchformer",
    "batchformer_hooks",
]


@dataclass
class BatchFormerConfig:
    """Config keys of BatchFormerV2 (``model.batchformer`` in params.yaml)."""

    enabled: bool = False
    num_heads: int = 4
    dim_feedforward: int | None = None  # None -> the model width (official code)
    dropout: float = 0.5
    insert_idx: list[int] = field(default_factory=lambda: [0])  # encoder/decoder layers it follows/precedes
    shared: bool = True  # one module for every insertion point (official default) or one per point


class BatchFormerV2(nn.Module):
    """Attention across the batch dimension, two-stream in training, identity in eval mode.

    Args:
        dim: feature width ``C``.
        num_heads: attention heads.
        dim_feedforward: FFN width (default ``dim``).
        dropout: dropout of attention and FFN.
        batch_dim: 0 for ``(B, L, C)`` inputs, 1 for ``(L, B, C)``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 4,
        dim_feedforward: int | None = None,
        dropout: float = 0.5,
        batch_dim: int = 0,
    ):
        super().__init__()
        if batch_dim not in (0, 1):
            raise ValueError(f"BatchFormerV2: batch_dim must be 0 (B, L, C) or 1 (L, B, C), got {batch_dim}")
        self.batch_dim = batch_dim
        # batch_first=False: the layer attends over dim 0 and treats dim 1 as its batch. With the samples on
        # dim 0 the "sequence" is the batch, which is the whole idea.
        self.layer = nn.TransformerEncoderLayer(
            dim, num_heads, dim_feedforward or dim, dropout=dropout, batch_first=False
        )

    def mix(self, x: Tensor) -> Tensor:
        """The BatchFormer stream alone: ``x`` in the module's layout -> same shape, samples mixed."""
        if x.dim() != 3:
            raise ValueError(f"BatchFormerV2 expects a 3-D tensor, got shape {tuple(x.shape)}")
        samples_first = x if self.batch_dim == 0 else x.transpose(0, 1)
        out = self.layer(samples_first)
        return out if self.batch_dim == 0 else out.transpose(0, 1)

    def forward(self, x: Tensor, tiled: bool = False) -> Tensor:
        """Training: ``cat([x, mix(x)])`` along the batch (or, when ``tiled``, ``cat([x1, mix(x2)])`` for the
        two halves ``x1, x2`` of an already doubled batch). Eval: ``x`` itself."""
        if not self.training:
            return x
        if tiled:
            b2 = x.shape[self.batch_dim]
            if b2 % 2:
                raise ValueError(f"BatchFormerV2: tiled input needs an even batch, got {b2}")
            plain, bf = x.split(b2 // 2, dim=self.batch_dim)
            return torch.cat([plain, self.mix(bf)], dim=self.batch_dim)
        return torch.cat([x, self.mix(x)], dim=self.batch_dim)


def tile_batch(x: Any, n: int = 2, dim: int = 0) -> Any:
    """Repeat a per-sample batch ``n`` times the way :class:`BatchFormerV2` doubles its input.

    * Tensor: ``torch.cat([x] * n, dim)`` (``[x0..xB-1, x0..xB-1]``).
    * list / tuple of per-sample items (e.g. target dicts): the sequence repeated (items shared, not copied).
    * None: None.
    """
    if x is None:
        return None
    if isinstance(x, Tensor):
        return torch.cat([x] * n, dim=dim)
    if isinstance(x, (list, tuple)):
        return type(x)(list(x) * n)
    raise TypeError(f"tile_batch: expected a Tensor, list, tuple or None, got {type(x).__name__}")


def build_batchformer(cfg: BatchFormerConfig, dim: int, batch_dim: int = 0) -> nn.ModuleList | None:
    """One module per insertion point in ``cfg.insert_idx`` (the same module repeated when ``cfg.shared``);
    None when disabled. Entry ``k`` belongs to insertion point ``cfg.insert_idx[k]``."""
    if not cfg.enabled:
        return None

    def make() -> BatchFormerV2:
        return BatchFormerV2(dim, cfg.num_heads, cfg.dim_feedforward, cfg.dropout, batch_dim=batch_dim)

    if cfg.shared:
        module = make()
        return nn.ModuleList([module] * len(cfg.insert_idx))
    return nn.ModuleList(make() for _ in cfg.insert_idx)


class BatchFormerHook(nn.Module):
    """One insertion point of BatchFormerV2 as a model's pre-layer hook.

    The first insertion point (in layer order) starts the two streams (``cat([x, bf(x)])``: the model tiles
    the rest); a later one receives both streams and runs the block on the BatchFormer half only. Keyword
    context the model passes to its hooks (the deformable encoder's ``pos`` and ``padding_mask``) is unused.

    Args:
        block: the :class:`BatchFormerV2` (possibly shared with other insertion points).
        first: whether this is the first insertion point.
    """

    def __init__(self, block: BatchFormerV2, first: bool):
        super().__init__()
        self.block, self.first = block, first

    def forward(self, x: Tensor, **context: Any) -> Tensor:
        """``(B, L, C)`` -> ``(2B, L, C)`` when first (training), else the same shape."""
        return self.block(x, tiled=not self.first)


def batchformer_hooks(cfg: BatchFormerConfig, dim: int) -> dict[int, BatchFormerHook] | None:
    """``{layer index: hook}`` for every point of ``cfg.insert_idx`` (in config order) on batch-first
    ``(B, L, C)`` input, or None when disabled."""
    if not cfg.enabled:
        return None
    if len(set(cfg.insert_idx)) != len(cfg.insert_idx):
        raise ValueError(f"batchformer.insert_idx has repeated layers: {cfg.insert_idx}")
    blocks = build_batchformer(cfg, dim, batch_dim=0)
    first = min(cfg.insert_idx, default=None)
    return {idx: BatchFormerHook(block, idx == first) for idx, block in zip(cfg.insert_idx, blocks, strict=True)}
