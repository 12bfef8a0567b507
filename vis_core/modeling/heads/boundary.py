"""Boundary branch of the YouTube-VIS 2022 long-video 1st place (report 000, Sec. 2.2, eq. 1-2) and the
OVIS 2022 2nd place (report 001, Sec. 2.1.4).

* Ground truth: the instance mask filtered by a 3x3 Laplacian, negative responses clamped to 0, binarised at
  ``T_b``: the inner edge of the mask (the standard boundary target of BMask R-CNN / STDC; the reports do not
  give the filter's details).
* Head: built like the mask head on the instance embeddings. Two kinds, both "kernel MLP + features":

  - ``"dot"`` (Mask2Former / MinVIS): an MLP maps each query embedding to a kernel of ``feat_dim``
    channels, dotted with the per-pixel mask features (as Mask2Former's ``mask_embed``).
  - ``"dynamic_conv"`` (IDOL / CondInst): the MLP outputs the weights and biases of a small stack of
    dynamic 1x1 convolutions (``dyn_channels`` wide, ``dyn_layers`` deep, ReLU between) applied to the
    features, as the CondInst mask head of IDOL does. Relative coordinates, if wanted, are the caller's
    business: pass per-instance features ``(N, F, H, W)`` that already contain them.

* Loss (eq. 1-2): squared-denominator dice + binary cross-entropy.

The head is training-only in both reports: its output is never used at test time, so it can only change the
model through the shared instance embeddings and mask features it reads.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vis_core.modeling.losses import sigmoid_ce_loss

__all__ = [
    "BoundaryConfig",
    "BoundaryHead",
    "boundary_targets",
    "dice_sq_loss",
    "boundary_loss",
    "build_boundary_head",
]

# The report does not give T_b. A binary mask's Laplacian is an integer in [-8, 8], so any threshold in (0, 1)
# gives the same map there; the threshold only matters for soft (e.g. resized) masks.
DEFAULT_BOUNDARY_THRESHOLD = 0.1


@dataclass
class BoundaryConfig:
    """Config keys of the boundary branch (``model.boundary`` in params.yaml)."""

    enabled: bool = False
    kind: str = "dot"  # "dot" (Mask2Former-style kernel) or "dynamic_conv" (CondInst-style, IDOL)
    num_layers: int = 3  # layers of the kernel MLP
    hidden_dim: int | None = None  # MLP width; None -> the embedding width
    dyn_channels: int = 8
    dyn_layers: int = 3
    threshold: float = DEFAULT_BOUNDARY_THRESHOLD  # T_b
    loss_weight: float = 1.0
    smooth: float = 1.0  # the smooth term of eq. 2 (report 001 writes it as +1)


def boundary_targets(masks: Tensor, threshold: float = DEFAULT_BOUNDARY_THRESHOLD) -> Tensor:
    """Boundary maps of instance masks: ``Laplacian(mask).clamp(min=0) > threshold``.

    The 3x3 kernel is ``[[-1, -1, -1], [-1, 8, -1], [-1, -1, -1]]`` with zero padding. Its response is positive
    only on object pixels with a background neighbour, so the band is the one-pixel inner edge of the mask
    (the absolute value would add the first pixels outside, a band about 2.7x as thick); object pixels on the
    image border count as boundary. Compute targets at the resolution the loss is taken at (resize the masks
    first, then take the boundary) so the band keeps its width.

    Args:
        masks: ``(N, H, W)`` bool or float masks (``(H, W)`` is accepted and treated as ``N = 1``).
        threshold: ``T_b``.
    Returns:
        ``(N, H, W)`` float tensor of 0/1 (same leading shape as ``masks``).
    """
    if masks.dim() not in (2, 3):
        raise ValueError(f"boundary_targets expects (N, H, W) masks, got shape {tuple(masks.shape)}")
    squeeze = masks.dim() == 2
    x = masks.reshape(-1, 1, *masks.shape[-2:])
    x = x.float() if not x.is_floating_point() else x
    kernel = torch.full((1, 1, 3, 3), -1.0, dtype=x.dtype, device=x.device)
    kernel[0, 0, 1, 1] = 8.0
    lap = F.conv2d(x, kernel, padding=1).clamp(min=0)
    out = (lap > threshold).to(x.dtype)[:, 0]
    return out[0] if squeeze else out


def dice_sq_loss(
    logits: Tensor, targets: Tensor, num_masks: float, smooth: float = 1.0, smooth_numerator: bool = True
) -> Tensor:
    """Dice loss with a squared-sum denominator (report 000 eq. 2).

    ``1 - (2 sum(p t) + s) / (sum p^2 + sum t^2 + s)`` per mask with ``p = sigmoid(logits)``. The reports
    write the smooth term in the denominator only; the issue puts it in the numerator too (default), which
    makes an empty prediction on an empty target a zero loss instead of 1. ``smooth_numerator=False`` gives
    the reports' literal form.

    Args:
        logits: ``(N, ...)`` logits (``(N, H, W)`` or point-sampled ``(N, P)``).
        targets: ``(N, ...)`` 0/1 (or soft) targets with as many elements per mask.
        num_masks: normaliser (the number of matched instances, averaged over processes).
    Returns:
        scalar: sum of per-mask losses / ``num_masks``.
    """
    p = logits.sigmoid().flatten(1)
    t = targets.flatten(1).to(p.dtype)
    num = 2 * (p * t).sum(-1) + (smooth if smooth_numerator else 0.0)
    den = (p * p).sum(-1) + (t * t).sum(-1) + smooth
    return (1 - num / den).sum() / num_masks


def boundary_loss(
    logits: Tensor,
    targets: Tensor,
    num_masks: float | None = None,
    smooth: float = 1.0,
    smooth_numerator: bool = True,
) -> Tensor:
    """Boundary loss ``L_b = L_dice_sq + L_bce`` (report 000 eq. 1).

    Args:
        logits: ``(N, H, W)`` or ``(N, P)`` boundary logits of the matched instances.
        targets: the same shape, from :func:`boundary_targets` (sampled at the same points if ``(N, P)``).
        num_masks: normaliser; ``None`` -> ``max(N, 1)``. BCE is averaged over the pixels of each mask,
            then both terms are summed over masks and divided by ``num_masks`` (Mask2Former convention).
    Returns:
        scalar loss.
    """
    if logits.shape != targets.shape:
        raise ValueError(
            f"boundary_loss: logits {tuple(logits.shape)} and targets {tuple(targets.shape)} differ; "
            "resize the masks (or sample the same points) before building the targets"
        )
    if num_masks is None:
        num_masks = max(logits.shape[0], 1)
    if logits.shape[0] == 0:  # no matched instance: a zero that still depends on the graph
        return logits.sum() * 0.0
    dice = dice_sq_loss(logits, targets, num_masks, smooth=smooth, smooth_numerator=smooth_numerator)
    return dice + sigmoid_ce_loss(logits, targets, num_masks)


class _MLP(nn.Module):
    """``num_layers`` linear layers with ReLU in between (DETR's MLP)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:], strict=True))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


class BoundaryHead(nn.Module):
    """Per-instance boundary logits from instance embeddings and mask features.

    Args:
        embed_dim: width ``C`` of the instance embeddings (decoder output queries).
        feat_dim: channels ``F`` of the mask features.
        num_layers: layers of the kernel MLP (Mask2Former's mask_embed uses 3).
        hidden_dim: MLP width (default ``embed_dim``).
        kind: ``"dot"`` or ``"dynamic_conv"`` (see the module docstring).
        dyn_channels, dyn_layers: width and depth of the dynamic 1x1 conv stack (CondInst: 8 and 3).

    Shapes accepted by :meth:`forward`:

    * embeddings ``(B, Q, C)`` + features ``(B, F, H, W)`` -> ``(B, Q, H, W)``;
    * embeddings ``(N, C)`` + per-instance features ``(N, F, H, W)`` -> ``(N, H, W)``;
    * embeddings ``(N, C)`` + features ``(B, F, H, W)`` + ``batch_index (N,)`` -> ``(N, H, W)``.
    """

    def __init__(
        self,
        embed_dim: int,
        feat_dim: int,
        num_layers: int = 3,
        hidden_dim: int | None = None,
        kind: str = "dot",
        dyn_channels: int = 8,
        dyn_layers: int = 3,
    ):
        super().__init__()
        if kind not in ("dot", "dynamic_conv"):
            raise ValueError(f"BoundaryHead: unknown kind {kind!r} (expected 'dot' or 'dynamic_conv')")
        self.kind = kind
        self.feat_dim = feat_dim
        if kind == "dot":
            out_dim = feat_dim
            self.dyn_shapes: list[tuple[int, int]] = []
        else:
            chans = [feat_dim] + [dyn_channels] * (dyn_layers - 1) + [1]
            self.dyn_shapes = list(zip(chans[1:], chans[:-1], strict=True))  # (out, in) per dynamic layer
            out_dim = sum(o * i + o for o, i in self.dyn_shapes)
        self.kernel_mlp = _MLP(embed_dim, hidden_dim or embed_dim, out_dim, num_layers)

    def forward(self, embeddings: Tensor, features: Tensor, batch_index: Tensor | None = None) -> Tensor:
        if features.dim() != 4 or features.shape[1] != self.feat_dim:
            raise ValueError(
                f"BoundaryHead: features must be (B, {self.feat_dim}, H, W), got {tuple(features.shape)}"
            )
        if embeddings.dim() == 3:
            b, q, _ = embeddings.shape
            if features.shape[0] != b:
                raise ValueError(f"BoundaryHead: {b} embedding sets but {features.shape[0]} feature maps")
            if self.kind == "dot":  # cheap path: no per-instance copy of the features
                return torch.einsum("bqc,bchw->bqhw", self.kernel_mlp(embeddings), features)
            idx = torch.arange(b, device=features.device).repeat_interleave(q)
            out = self.forward(embeddings.reshape(b * q, -1), features, idx)
            return out.reshape(b, q, *out.shape[-2:])
        if embeddings.dim() != 2:
            raise ValueError(
                f"BoundaryHead: embeddings must be (B, Q, C) or (N, C), got {tuple(embeddings.shape)}"
            )
        if batch_index is not None:
            features = features[batch_index]
        elif features.shape[0] != embeddings.shape[0]:
            raise ValueError(
                f"BoundaryHead: {embeddings.shape[0]} embeddings and {features.shape[0]} feature maps; "
                "pass batch_index to pick each instance's image"
            )
        params = self.kernel_mlp(embeddings)  # (N, out_dim)
        if self.kind == "dot":
            return torch.einsum("nc,nchw->nhw", params, features)
        return self._dynamic_conv(params, features)

    def _dynamic_conv(self, params: Tensor, features: Tensor) -> Tensor:
        n, _, h, w = features.shape
        x = features.flatten(2)  # (N, F, HW)
        offset = 0
        for k, (o, i) in enumerate(self.dyn_shapes):
            weight = params[:, offset : offset + o * i].reshape(n, o, i)
            offset += o * i
            bias = params[:, offset : offset + o]
            offset += o
            x = torch.einsum("noi,nip->nop", weight, x) + bias[:, :, None]
            if k < len(self.dyn_shapes) - 1:
                x = F.relu(x)
        return x.reshape(n, h, w)


def build_boundary_head(cfg: BoundaryConfig, embed_dim: int, feat_dim: int) -> BoundaryHead | None:
    """The head described by ``cfg``, or None when the branch is disabled."""
    if not cfg.enabled:
        return None
    return BoundaryHead(
        embed_dim,
        feat_dim,
        num_layers=cfg.num_layers,
        hidden_dim=cfg.hidden_dim,
        kind=cfg.kind,
        dyn_channels=cfg.dyn_channels,
        dyn_layers=cfg.dyn_layers,
    )
