"""DVIS referring tracker (Zhang et al. 2023; ``dvis/video_dvis_modules.py`` ``ReferringTracker``).

The tracker runs frame by frame on the frozen segmenter's query embeddings ``E_t (Q, C)`` (``pred_embds``,
decoder-normed). Per frame, ``L`` layers of ReferringCrossAttn -> SelfAttn -> FFN (post-norm):

* ReferringCrossAttn: ``LN(identity + MHA(q = query, k = v = E_t))``; the **query** is the previous frame's
  final tracker output, the same in every layer;
* layer-0 identity: ``E_t`` in Hungarian order (cost ``1 - cos`` against the previous frame's *matched*
  embeddings), or, in training, the :class:`~vis_core.tracking.noiser.Noiser`'s noised version; layer ``j > 0``
  identity: layer ``j - 1``'s output;
* frame 0 (or a new video): identity = query = ``E_0`` at layer 0, then identity = query = the previous
  layer's output (the official ``i == 0 and resume is False`` branch);
* heads on ``decoder_norm(output)``: ``Linear(C, K+1)`` class logits and a 3-layer MLP mask embedding dotted
  with the frozen segmenter's ``mask_features``; every layer is predicted (deep supervision).

The streaming state is the previous frame's final output and matched embeddings (the official keeps all
``L + 1`` layer outputs in ``last_outputs`` but reads only ``[-1]``). Batch-first tensors throughout; a
batch of ``B`` videos is tracked independently (Hungarian / noise per video).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from vis_core.modeling.mask2former import MLP, FFNLayer, SelfAttentionLayer
from vis_core.tracking.noiser import Noiser

__all__ = ["TrackerState", "ReferringCrossAttentionLayer", "ReferringTracker"]


@dataclass
class TrackerState:
    """Per-video memory between frames: ``last_output (B, Q, C)`` the previous frame's final-layer output
    (the next query) and ``last_embeds (B, Q, C)`` its matched segmenter embeddings (the next reference)."""

    last_output: Tensor
    last_embeds: Tensor


class ReferringCrossAttentionLayer(nn.Module):
    """``LN(identity + MHA(query, key, value))`` (post-norm; the residual is the identity, not the query)."""

    def __init__(self, d_model: int, nhead: int, dropout: float = 0.0):
        super().__init__()
        self.attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout, batch_first=True)
        self.norm = nn.LayerNorm(d_model)
        for p in self.parameters():  # xavier on the matrices, as Mask2Former's / DVIS's layers
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, identity: Tensor, query: Tensor, key: Tensor, value: Tensor) -> Tensor:
        """All ``(B, Q, C)``: identity (residual), query (previous frame), key = value (current embeds)."""
        out, _ = self.attn(query, key, value, need_weights=False)
        return self.norm(identity + out)


class ReferringTracker(nn.Module):
    """DVIS online tracker.

    Args:
        hidden_dim: C, the segmenter's query width. num_classes: K. mask_dim: C_m of ``mask_features``.
        num_layers: L (official 6). nheads: attention heads (official 8). dim_feedforward: FFN width (2048).
    """

    def __init__(
        self, hidden_dim: int, num_classes: int, mask_dim: int, num_layers: int = 3, nheads: int = 4,
        dim_feedforward: int = 256,
    ):
        super().__init__()
        self.num_layers = num_layers
        self.cross_layers = nn.ModuleList(
            ReferringCrossAttentionLayer(hidden_dim, nheads) for _ in range(num_layers)
        )
        # Mask2Former's layers (post-norm with normalize_before=False); no positional embeddings, as DVIS
        self.self_layers = nn.ModuleList(SelfAttentionLayer(hidden_dim, nheads) for _ in range(num_layers))
        self.ffn_layers = nn.ModuleList(FFNLayer(hidden_dim, dim_feedforward) for _ in range(num_layers))
        self.decoder_norm = nn.LayerNorm(hidden_dim)
        self.class_embed = nn.Linear(hidden_dim, num_classes + 1)
        self.mask_embed = MLP(hidden_dim, hidden_dim, mask_dim, 3)

    def _layer(self, j: int, identity: Tensor, query: Tensor, embeds: Tensor) -> Tensor:
        out = self.cross_layers[j](identity, query, embeds, embeds)
        out = self.self_layers[j](out, query_pos=torch.zeros_like(out))
        return self.ffn_layers[j](out)

    @torch.no_grad()
    def match(
        self, embeds: Tensor, state: TrackerState | None, noiser: Noiser | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Layer-0 identity of every video: ``embeds (B, Q, C)`` -> ``indices (B, Q)`` long and identity
        ``(B, Q, C)``. Hungarian on 1 - cos to ``state.last_embeds``; the noiser (training) may replace it."""
        noiser = noiser or Noiser()
        activate = self.training and noiser.cfg.mode != "none"
        pairs = [
            noiser(None if state is None else state.last_embeds[b], embeds[b], activate, generator)
            for b in range(embeds.shape[0])
        ]
        return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])

    def frame_forward(
        self, embeds: Tensor, state: TrackerState | None = None, noiser: Noiser | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor, TrackerState]:
        """One frame.

        Args:
            embeds: ``(B, Q, C)`` the frame's segmenter embeddings. state: None on frame 0.
            noiser, generator: the training noise at layer 0 (only in train mode, never on frame 0).
        Returns:
            ``outputs (L, B, Q, C)`` every layer's output, ``indices (B, Q)`` the layer-0 order of the
            current queries (slot i took query ``indices[b, i]``'s identity) and the new state.
        """
        indices, identity = self.match(embeds, state, noiser, generator)
        outputs = []
        for j in range(self.num_layers):
            if state is None:  # frame 0: identity = query (E_0 at layer 0, then the previous layer)
                out = self._layer(j, identity, identity, embeds)
            else:
                out = self._layer(j, identity, state.last_output, embeds)
            outputs.append(out)
            identity = out
        matched = torch.gather(embeds, 1, indices[..., None].expand_as(embeds))
        return torch.stack(outputs), indices, TrackerState(outputs[-1], matched)

    def predict(self, outputs: Tensor, mask_features: Tensor) -> tuple[Tensor, Tensor]:
        """Heads: ``outputs (..., B, Q, C)`` and ``mask_features (B, C_m, h, w)`` -> class logits
        ``(..., B, Q, K+1)`` and mask logits ``(..., B, Q, h, w)``."""
        normed = self.decoder_norm(outputs)
        masks = torch.einsum("...bqc,bchw->...bqhw", self.mask_embed(normed), mask_features)
        return self.class_embed(normed), masks

    def forward(
        self, embeds: Tensor, mask_features: Tensor, noiser: Noiser | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        """A clip, frame by frame.

        Args:
            embeds: ``(B, T, Q, C)``. mask_features: ``(B, T, C_m, h, w)`` (frozen).
        Returns:
            dict(pred_logits ``(L, B, T, Q, K+1)``, pred_masks ``(L, B, T, Q, h, w)``, indices ``(B, T, Q)``).
        """
        state, logits, masks, indices = None, [], [], []
        for t in range(embeds.shape[1]):
            outputs, idx, state = self.frame_forward(embeds[:, t], state, noiser, generator)
            cls, msk = self.predict(outputs, mask_features[:, t])
            logits.append(cls)
            masks.append(msk)
            indices.append(idx)
        return {"pred_logits": torch.stack(logits, 2), "pred_masks": torch.stack(masks, 2),
                "indices": torch.stack(indices, 1)}
