"""DVIS temporal refiner (Zhang et al. 2023), the offline stage on top of the referring tracker.

Follows ``TemporalRefiner`` in ``dvis/video_dvis_modules.py`` of zhang-tao-whu/DVIS (read at commit
``5cad4d9``). Every layer runs, on the tracker-aligned instance queries:

1. ``transformer_time_self_attention_layers``: self-attention along T, separately for every (video, object),
   **without** positional encodings (``query_pos=None``);
2. ``conv_short_aggregate_layers`` + ``conv_norms``: ``Conv1d(k=5) -> ReLU -> Conv1d(k=3)`` along T with
   ``padding='same', padding_mode='replicate'``, a residual and a LayerNorm;
3. ``transformer_obj_self_attention_layers``: self-attention over the objects of one frame;
4. ``transformer_cross_attention_layers``: cross-attention from the objects of a frame to the same frame's
   ``tracker.frame_forward(frame_embds)`` queries (no positional encodings);
5. ``transformer_ffn_layers``.

All attention / FFN layers are post-norm with dropout 0. Heads (``prediction`` / ``pred_class``): the
``decoder_norm``-ed output of every layer is (a) weighted-averaged over T with ``activation_proj(x).softmax(T)``
and classified by ``class_embed`` (K + 1 logits, one per video object), and (b) fed to the 3-layer
``mask_embed`` MLP whose dot product with each frame's mask features gives the mask logits. Deep supervision:
every layer is predicted, the last one is the output and the others are ``aux_outputs`` (``num_layers - 1``
entries; unlike Mask2Former there is no prediction on the input queries).

Offline inference score (``DVIS_offline.post_processing`` + ``inference_video_vis`` in
``dvis/meta_architecture.py``): ``max(softmax(refiner logits), softmax(mean_T online logits))`` with the
no-object column dropped, see :func:`refined_scores`.

Module and parameter names mirror the official ones (the project's ``SelfAttentionLayer``,
``CrossAttentionLayer``, ``FFNLayer`` and ``MLP`` use the official sub-module names too), so the state-dict
keys equal the official ones (checked against the source, not against a released checkpoint).

Deviations from the official code:

* ``pred_logits`` is ``(B, Q, K+1)``; the official repeats the fused class logits T times into
  ``(B, T, Q, K+1)`` only "to unify the output format", and its training reshape takes ``[:, 0]`` again.
* The official eval path (``windows_prediction``) computes the mask logits in windows of
  ``TEST.WINDOW_SIZE`` frames and moves them to the CPU to save GPU memory; this module computes all frames at
  once (same numbers). Callers chunk long videos themselves.
* The conv kernel sizes are configurable (official: fixed 5 then 3, with a ReLU between); they must be odd so
  that ``'same'`` padding is symmetric.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from vis_core.modeling.mask2former import MLP, CrossAttentionLayer, FFNLayer, SelfAttentionLayer


@dataclass
class TemporalRefinerConfig:
    """Refiner sizes; defaults are the official ones (``MODEL.REFINER.DECODER_LAYERS: 6``, hidden 256,
    8 heads, FFN 2048, OVIS' 25 classes, ``mask_dim`` = hidden)."""

    hidden_dim: int = 256
    num_layers: int = 6
    nheads: int = 8
    dim_feedforward: int = 2048
    num_classes: int = 25
    mask_dim: int = 256
    conv_kernel_sizes: tuple[int, ...] = (5, 3)

    def __post_init__(self) -> None:
        self.conv_kernel_sizes = tuple(self.conv_kernel_sizes)
        if not self.conv_kernel_sizes or any(k < 1 or k % 2 == 0 for k in self.conv_kernel_sizes):
            # an even kernel makes 'same' padding asymmetric (one more frame on the right)
            raise ValueError(f"conv_kernel_sizes must be odd and non-empty, got {self.conv_kernel_sizes}")
        if self.hidden_dim % self.nheads:
            raise ValueError(f"hidden_dim {self.hidden_dim} is not divisible by nheads {self.nheads}")

    @classmethod
    def tiny(cls, num_classes: int = 10, **overrides) -> TemporalRefinerConfig:
        """CPU smoke scale (matches ``Mask2FormerConfig.tiny``'s hidden 32): 2 layers, 4 heads, FFN 64."""
        cfg = cls(hidden_dim=32, num_layers=2, nheads=4, dim_feedforward=64, num_classes=num_classes, mask_dim=32)
        return replace(cfg, **overrides)


def short_temporal_conv(dim: int, kernel_sizes: tuple[int, ...]) -> nn.Sequential:
    """The official ``conv_short_aggregate_layers`` entry: odd-kernel ``Conv1d``s along T with ReLUs between.

    Replicate padding (not zeros) so the first and last frames see copies of themselves rather than a fake
    all-zero neighbour. Input / output ``(N, C, T)``. Indices 0 and 2 are the convs, as in the official state
    dict for the default two kernels.
    """
    layers: list[nn.Module] = []
    for i, k in enumerate(kernel_sizes):
        if i:
            layers.append(nn.ReLU())
        layers.append(nn.Conv1d(dim, dim, kernel_size=k, stride=1, padding="same", padding_mode="replicate"))
    return nn.Sequential(*layers)


def _no_pos(x: torch.Tensor) -> torch.Tensor:
    # the official refiner passes pos / query_pos = None everywhere; the project's layers want a tensor
    return x.new_zeros(())


class TemporalRefiner(nn.Module):
    """DVIS' offline temporal refiner.

    Layouts follow the official module: the instance and frame queries are ``(B, C, T, Q)`` (the layout of
    ``ReferringTracker``'s ``pred_embds`` and ``frame_forward`` output), the mask features
    ``(B, T, C_m, h, w)``.
    """

    def __init__(self, cfg: TemporalRefinerConfig):
        super().__init__()
        self.cfg = cfg
        c, n = cfg.hidden_dim, cfg.num_layers
        self.num_layers = n
        self.transformer_time_self_attention_layers = nn.ModuleList(
            SelfAttentionLayer(c, cfg.nheads) for _ in range(n)
        )
        self.conv_short_aggregate_layers = nn.ModuleList(
            short_temporal_conv(c, cfg.conv_kernel_sizes) for _ in range(n)
        )
        self.conv_norms = nn.ModuleList(nn.LayerNorm(c) for _ in range(n))
        self.transformer_obj_self_attention_layers = nn.ModuleList(
            SelfAttentionLayer(c, cfg.nheads) for _ in range(n)
        )
        self.transformer_cross_attention_layers = nn.ModuleList(
            CrossAttentionLayer(c, cfg.nheads) for _ in range(n)
        )
        self.transformer_ffn_layers = nn.ModuleList(FFNLayer(c, cfg.dim_feedforward) for _ in range(n))
        self.decoder_norm = nn.LayerNorm(c)
        self.class_embed = nn.Linear(c, cfg.num_classes + 1)
        self.mask_embed = MLP(c, c, cfg.mask_dim, 3)
        self.activation_proj = nn.Linear(c, 1)

    # --- per-layer blocks -------------------------------------------------------------------------------

    def short_conv(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """Layer ``i``'s conv block with residual + LayerNorm: ``(N, T, C)`` -> ``(N, T, C)``."""
        y = self.conv_short_aggregate_layers[i](x.transpose(1, 2)).transpose(1, 2)
        return self.conv_norms[i](y + x)

    def temporal_mix(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """Time self-attention then the short conv, each object of each video on its own.

        ``x``: ``(B, Q, T, C)`` -> ``(B, Q, T, C)``; mixes along T only.
        """
        b, q, t, c = x.shape
        y = x.reshape(b * q, t, c)
        y = self.transformer_time_self_attention_layers[i](y, _no_pos(y))
        return self.short_conv(i, y).reshape(b, q, t, c)

    def object_mix(self, i: int, x: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        """Object self-attention, cross-attention to the frame's queries, FFN; each frame on its own.

        Args:
            x: ``(B, Q, T, C)`` instance queries.
            memory: ``(B * T, Q_f, C)`` the ``frame_forward`` queries, frame-major within each video.
        Returns:
            ``(B, Q, T, C)``.
        """
        b, q, t, c = x.shape
        y = x.transpose(1, 2).reshape(b * t, q, c)
        y = self.transformer_obj_self_attention_layers[i](y, _no_pos(y))
        y = self.transformer_cross_attention_layers[i](y, memory, None, _no_pos(y), _no_pos(y))
        y = self.transformer_ffn_layers[i](y)
        return y.reshape(b, t, q, c).transpose(1, 2)

    # --- heads --------------------------------------------------------------------------------------------

    def pred_class(self, hidden: torch.Tensor) -> torch.Tensor:
        """Video-level class logits from a learned softmax-over-T weighted mean (official ``pred_class``).

        ``hidden``: ``(L, B, Q, T, C)`` ``decoder_norm``-ed queries -> ``(L, B, Q, K+1)``.
        """
        weights = self.activation_proj(hidden).softmax(dim=3)  # (L, B, Q, T, 1)
        return self.class_embed((hidden * weights).sum(dim=3))

    def pred_masks(self, hidden: torch.Tensor, mask_features: torch.Tensor) -> torch.Tensor:
        """Per-frame mask logits: ``(L, B, Q, T, C)`` and ``(B, T, C_m, h, w)`` -> ``(L, B, Q, T, h, w)``."""
        return torch.einsum("lbqtc,btchw->lbqthw", self.mask_embed(hidden), mask_features)

    # --- forward ------------------------------------------------------------------------------------------

    def forward(
        self, instance_embeds: torch.Tensor, frame_embeds: torch.Tensor, mask_features: torch.Tensor
    ) -> dict:
        """
        Args:
            instance_embeds: ``(B, C, T, Q)`` tracker-aligned instance queries (the tracker's ``pred_embds``).
            frame_embeds: ``(B, C, T, Q_f)`` ``tracker.frame_forward(segmenter pred_embds)``.
            mask_features: ``(B, T, C_m, h, w)`` the segmenter's mask features.
        Returns:
            dict(pred_logits ``(B, Q, K+1)``, pred_masks ``(B, Q, T, h, w)``, pred_embds ``(B, C, T, Q)``
            (final ``decoder_norm``-ed queries), aux_outputs: ``num_layers - 1`` dicts with pred_logits and
            pred_masks of the earlier layers, first layer first).
        """
        b, c, t, _ = instance_embeds.shape
        if frame_embeds.shape[:3] != (b, c, t):
            raise ValueError(f"frame_embeds {tuple(frame_embeds.shape)} does not match (B, C, T) = {(b, c, t)}")
        memory = frame_embeds.permute(0, 2, 3, 1).flatten(0, 1)  # (B*T, Q_f, C)
        x = instance_embeds.permute(0, 3, 2, 1)  # (B, Q, T, C)
        per_layer = []
        for i in range(self.num_layers):
            x = self.object_mix(i, self.temporal_mix(i, x), memory)
            per_layer.append(x)
        hidden = self.decoder_norm(torch.stack(per_layer))  # (L, B, Q, T, C)
        logits = self.pred_class(hidden)
        masks = self.pred_masks(hidden, mask_features)
        return {
            "pred_logits": logits[-1],
            "pred_masks": masks[-1],
            "pred_embds": hidden[-1].permute(0, 3, 2, 1),
            "aux_outputs": [
                {"pred_logits": a, "pred_masks": m} for a, m in zip(logits[:-1], masks[:-1], strict=True)
            ],
        }


def refined_scores(refiner_logits: torch.Tensor, online_logits_mean: torch.Tensor) -> torch.Tensor:
    """Offline DVIS scores: element-wise max of the refiner's and the online tracker's class probabilities.

    As ``inference_video_vis`` in ``dvis/meta_architecture.py``: ``softmax(pred_cls)[:, :-1]`` maxed with
    ``softmax(aux_pred_cls)[:, :-1]``, where ``aux_pred_cls`` is the tracker's logits averaged over T *before*
    the softmax (``post_processing``).

    Args:
        refiner_logits: ``(Q, K+1)`` the refiner's video-level logits.
        online_logits_mean: ``(Q, K+1)`` the tracker's per-frame logits averaged over T.
    Returns:
        ``(Q, K)`` scores, the no-object column dropped.
    """
    if refiner_logits.shape != online_logits_mean.shape or refiner_logits.dim() != 2:
        raise ValueError(
            f"expected two (Q, K+1) tensors, got {tuple(refiner_logits.shape)} and {tuple(online_logits_mean.shape)}"
        )
    refined = F.softmax(refiner_logits, dim=-1)[:, :-1]
    online = F.softmax(online_logits_mean.to(refined), dim=-1)[:, :-1]
    return torch.maximum(refined, online)
