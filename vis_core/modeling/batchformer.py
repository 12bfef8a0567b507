"""BatchFormerV2 (Hou et al. 2022), as combined with IDOL and MinVIS in report 001 Sec. 2.1.3.

A transformer encoder layer whose tokens are the samples of the batch: for every position of a dense token
map the feature vectors of the ``B`` samples attend to each other (no positional encoding), so each
sample's representation is informed by the others.

Placement, faithful to the official Deformable-DETR code (zhihou7/BatchFormer, ``batchformer-v2``,
``DeformableTransformerEncoder``): the block runs on the *output* of the encoder layers listed in
``insert_idx`` (the README's recipe: ``--bf 1 --insert_idx 0 --share_bf 0``, after the first layer). Here
both models take it in a deformable (MSDeformAttn) encoder: IDOL's Deformable-DETR encoder and, for MinVIS,
Mask2Former's pixel-decoder encoder (the dense tokens the official code mixes; its transformer decoder has
object queries, which at the first layer are the same learned vectors for every sample).

Report vs code: report 001 says the block "takes the same input as the Transformer block before it" (Sec.
2.1.3, MinVIS), i.e. it would run on the *input* of layer ``i``. The code's placement is the default
(``placement: after``); ``placement: before`` is the report's reading (the only new position it adds is the
encoder's input, before layer 0).

Two-stream training (official): at the first insertion point the module returns ``cat([x, bf(x)])`` along
the batch; everything after it (later encoder layers, decoder, heads, losses) runs on ``2B`` samples with
shared weights, so both streams are supervised, and the caller repeats its targets (``targets * 2``). At
later insertion points the input already holds both streams: the first half passes unchanged and only the
second (BatchFormer) half goes through the block again. At test time the module is removed: ``forward`` is
the identity and the batch is not doubled.

Which samples attend to each other: the batch is clip-major (``B`` clips of ``T`` frames); with
``frames_per_clip = T`` only frame ``t`` of the different clips attend to each other. IDOL uses ``T = 2``:
its official code runs the key frames and the reference frames through the transformer as two separate
forward passes, so the block never mixes a key frame with its own reference frame. MinVIS uses ``T = 1``:
it trains image-level, every frame of the ``B * T`` is an independent sample of the segmenter, as the
images of an official Deformable-DETR batch are (there is no cross-frame loss that mixing could shortcut).

Defaults follow the official code: 4 heads, feed-forward width = ``dim``, dropout 0.5, one block shared by
the insertion points (argparse default ``--share_bf 1``; moot for the README's single insertion point).

The models take the blocks as generic encoder hooks keyed by depth (``{d: module}`` runs on the tokens
after the first ``d`` encoder layers, see :class:`vis_core.modeling.deformable_transformer.EncoderHooks`):
:func:`batchformer_hooks` builds them from the config, so the two-stream bookkeeping (which insertion
point starts the streams) lives here and neither model knows about BatchFormer.
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
    "insertion_depths",
    "batchformer_hooks",
]

PLACEMENTS = ("after", "before")


@dataclass
class BatchFormerConfig:
    """Config keys of BatchFormerV2 (``model.batchformer`` in params.yaml).

    ``insert_idx``: encoder layers (0-based; negative counts from the end, -1 = the last layer) whose output
    the block mixes (``placement: after``, the official code) or whose input it mixes (``placement: before``,
    the report's "same input as the Transformer block"). The default ``[0]`` is the official README's
    recipe; MinVIS, whose block sits in the pixel decoder, defaults to ``[-1]`` (see ``MinVISConfig``).
    """

    enabled: bool = False
    num_heads: int = 4
    dim_feedforward: int | None = None  # None -> the model width (official code)
    dropout: float = 0.5
    insert_idx: list[int] = field(default_factory=lambda: [0])
    placement: str = "after"  # "after" encoder layer i (official code) or "before" it (report 001)
    shared: bool = True  # one module for every insertion point (argparse default) or one per point

    def __post_init__(self):
        if self.placement not in PLACEMENTS:
            raise ValueError(f"batchformer.placement must be one of {PLACEMENTS}, got {self.placement!r}")


class BatchFormerV2(nn.Module):
    """Attention across the batch dimension, two-stream in training, identity in eval mode.

    Args:
        dim: feature width ``C``.
        num_heads: attention heads.
        dim_feedforward: FFN width (default ``dim``).
        dropout: dropout of attention and FFN.
        frames_per_clip: ``T``; the batch is ``B`` clips of ``T`` frames, clip-major, and only frame ``t``
            of different clips attend to each other (1: every sample attends to every other).
    """

    def __init__(self, dim: int, num_heads: int = 4, dim_feedforward: int | None = None, dropout: float = 0.5,
                 frames_per_clip: int = 1):
        super().__init__()
        if frames_per_clip < 1:
            raise ValueError(f"BatchFormerV2: frames_per_clip must be >= 1, got {frames_per_clip}")
        self.frames_per_clip = frames_per_clip
        # batch_first=False: the layer attends over dim 0 and treats dim 1 as its batch. With the samples on
        # dim 0 the "sequence" is the batch, which is the whole idea (the official code relies on the same).
        self.layer = nn.TransformerEncoderLayer(
            dim, num_heads, dim_feedforward or dim, dropout=dropout, batch_first=False
        )

    def mix(self, x: Tensor) -> Tensor:
        """The BatchFormer stream alone: ``(N, L, C)`` -> ``(N, L, C)``, ``N = B * T`` clip-major.

        Viewing ``x`` as ``(B, T * L, C)`` makes the layer attend over the ``B`` clips separately for every
        (frame index, position) pair, so frames of one clip never see each other (and nothing is copied).
        """
        if x.dim() != 3:
            raise ValueError(f"BatchFormerV2 expects a (N, L, C) tensor, got shape {tuple(x.shape)}")
        n, length, c = x.shape
        t = self.frames_per_clip
        if n % t:
            raise ValueError(f"BatchFormerV2: a batch of {n} samples is not made of clips of {t} frames")
        return self.layer(x.reshape(n // t, t * length, c)).reshape(n, length, c)

    def forward(self, x: Tensor, tiled: bool = False) -> Tensor:
        """Training: ``cat([x, mix(x)])`` along the batch (or, when ``tiled``, ``cat([x1, mix(x2)])`` for the
        two halves ``x1, x2`` of an already doubled batch). Eval: ``x`` itself."""
        if not self.training:
            return x
        if not tiled:
            return torch.cat([x, self.mix(x)])
        if x.shape[0] % 2:
            raise ValueError(f"BatchFormerV2: tiled input needs an even batch, got {x.shape[0]}")
        plain, bf = x.chunk(2)
        return torch.cat([plain, self.mix(bf)])


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


def build_batchformer(cfg: BatchFormerConfig, dim: int, frames_per_clip: int = 1) -> nn.ModuleList | None:
    """One module per insertion point in ``cfg.insert_idx`` (the same module repeated when ``cfg.shared``);
    None when disabled. Entry ``k`` belongs to insertion point ``cfg.insert_idx[k]``."""
    if not cfg.enabled:
        return None

    def make() -> BatchFormerV2:
        return BatchFormerV2(dim, cfg.num_heads, cfg.dim_feedforward, cfg.dropout, frames_per_clip)

    if cfg.shared:
        module = make()
        return nn.ModuleList([module] * len(cfg.insert_idx))
    return nn.ModuleList(make() for _ in cfg.insert_idx)


def insertion_depths(cfg: BatchFormerConfig, num_layers: int) -> list[int]:
    """Encoder depth of every point of ``cfg.insert_idx`` (config order): the number of encoder layers that
    run before the block, ``i + 1`` after layer ``i`` (official), ``i`` before it (report)."""
    depths = []
    for idx in cfg.insert_idx:
        if not -num_layers <= idx < num_layers:
            raise ValueError(f"batchformer.insert_idx {idx} is not a layer of a {num_layers}-layer encoder")
        layer = idx % num_layers  # -1 -> the last layer
        depths.append(layer + 1 if cfg.placement == "after" else layer)
    if len(set(depths)) != len(depths):
        raise ValueError(f"batchformer.insert_idx has repeated layers: {cfg.insert_idx}")
    return depths


class BatchFormerHook(nn.Module):
    """One insertion point of BatchFormerV2 as an encoder hook.

    The first insertion point (in layer order) starts the two streams (``cat([x, bf(x)])``: the encoder tiles
    the rest); a later one receives both streams and runs the block on the BatchFormer half only. Keyword
    context the encoder passes to its hooks (positions, reference points, padding mask) is unused: the
    official block sees the tokens alone.

    Args:
        block: the :class:`BatchFormerV2` (possibly shared with other insertion points).
        first: whether this is the first insertion point.
    """

    def __init__(self, block: BatchFormerV2, first: bool):
        super().__init__()
        self.block, self.first = block, first

    def forward(self, x: Tensor, **context: Any) -> Tensor:
        """``(N, L, C)`` -> ``(2N, L, C)`` when first (training), else the same shape."""
        return self.block(x, tiled=not self.first)


def batchformer_hooks(cfg: BatchFormerConfig, dim: int, num_layers: int,
                      frames_per_clip: int = 1) -> dict[int, BatchFormerHook] | None:
    """``{encoder depth: hook}`` for every point of ``cfg.insert_idx`` (config order) of a ``num_layers``-layer
    encoder on ``(N, L, C)`` tokens (see :func:`insertion_depths`), or None when disabled.
    ``frames_per_clip``: see :class:`BatchFormerV2`."""
    if not cfg.enabled:
        return None
    depths = insertion_depths(cfg, num_layers)
    blocks = build_batchformer(cfg, dim, frames_per_clip)
    first = min(depths)
    return {d: BatchFormerHook(block, d == first) for d, block in zip(depths, blocks, strict=True)}
