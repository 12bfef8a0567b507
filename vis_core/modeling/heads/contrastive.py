"""IDOL's contrastive instance embedding: the reid head and its two losses (``idol/models/pos_neg_select.py``
and ``SetCriterion.loss_reid`` of VNext ``projects/IDOL``).

Training uses a key frame and a reference frame of one video. For every ground-truth instance of the key frame
that is also visible in the reference frame:

* anchor ``v``: the reid embedding of the key frame's best matched query (the cheapest query SimOTA gave the
  instance on the last decoder layer);
* positives ``k+``: the reference frame queries that SimOTA's dynamic-k assignment gives the instance
  (``n_candidate_k = 10``, the detection matcher's own setting);
* negatives ``k-``: every reference query *outside* the instance's dynamic-k set computed with the top-100
  IoU candidates (``n_candidate_k = 100``, clamped to the number of queries): queries that are clearly not it.

Losses, per anchor, averaged over anchors:

* ``loss_reid = log(1 + sum_{k+} sum_{k-} exp(v.k- - v.k+))`` on raw dot products (the embeddings are not
  normalised, which is why the tracker matches them with a bi-softmax of dot products);
* ``loss_reid_aux = mean((cos(v, k) - label)^2)`` over the positives and a random subset of at most
  ``10 x #positives`` negatives (label 1 for positives, 0 for negatives).

Official weights: ``loss_reid`` 2 (``REID_WEIGHT``), ``loss_reid_aux`` 1.5 x 2 = 3.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vis_core.modeling.deformable_transformer import MLP
from vis_core.modeling.simota_matcher import dynamic_k_matching, simota_cost

__all__ = [
    "ContrastiveEmbedHead",
    "contrastive_loss",
    "aux_cosine_loss",
    "num_aux_negatives",
    "contrastive_candidates",
    "pair_instances",
    "IDOLContrastiveLoss",
]


class ContrastiveEmbedHead(nn.Module):
    """IDOL's ``reid_embed_head``: a 3-layer MLP ``(..., C) -> (..., D)`` on decoder query embeddings."""

    def __init__(self, in_dim: int, hidden_dim: int | None = None, out_dim: int | None = None,
                 num_layers: int = 3):
        super().__init__()
        hidden_dim = hidden_dim or in_dim
        self.mlp = MLP(in_dim, hidden_dim, out_dim or hidden_dim, num_layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.mlp(x)


def contrastive_loss(anchor: Tensor, positives: Tensor, negatives: Tensor) -> Tensor:
    """``log(1 + sum_i sum_j exp(v.n_j - v.p_i))`` for one anchor.

    Args:
        anchor: ``(C,)`` key-frame embedding ``v``. positives: ``(P, C)``. negatives: ``(N, C)``.
    Returns:
        scalar; computed as a logsumexp over the ``P * N`` differences plus a zero (numerically stable). With
        no positive or no negative the sum is empty and the loss is 0 (still attached to the graph).
    """
    pos = positives @ anchor  # (P,)
    neg = negatives @ anchor  # (N,)
    diffs = (neg[None, :] - pos[:, None]).flatten()
    return torch.logsumexp(F.pad(diffs, (0, 1)), dim=0)


def aux_cosine_loss(anchor: Tensor, positives: Tensor, negatives: Tensor) -> Tensor:
    """``mean((cos(v, k) - label)^2)`` over positives (label 1) and the given negatives (label 0).

    Args:
        anchor: ``(C,)``. positives: ``(P, C)``. negatives: ``(N, C)`` (already sub-sampled).
    """
    keys = torch.cat([positives, negatives]).float()
    labels = torch.cat([keys.new_ones(len(positives)), keys.new_zeros(len(negatives))])
    cosine = F.normalize(keys, dim=1) @ F.normalize(anchor.float(), dim=0)
    if cosine.numel() == 0:
        return anchor.sum() * 0.0
    return ((cosine - labels) ** 2).mean()


def num_aux_negatives(num_pos: int, num_neg: int, ratio: int = 10) -> int:
    """How many negatives the auxiliary loss samples (official rule): all of them when there are at most
    ``ratio`` per positive, else ``ratio * num_pos``; ``ratio`` when there is no positive (at most
    ``num_neg``)."""
    if num_pos == 0:
        return min(ratio, num_neg)
    return num_neg if num_pos * ratio >= num_neg else num_pos * ratio


@torch.no_grad()
def contrastive_candidates(
    ref_logits: Tensor, ref_boxes: Tensor, gt_labels: Tensor, gt_boxes: Tensor,
    pos_candidates: int = 10, neg_candidates: int = 100,
) -> tuple[Tensor, Tensor]:
    """Positive and negative reference queries of every instance (``get_pos_idx``).

    Args:
        ref_logits: ``(Q, K)`` reference-frame class logits (last layer). ref_boxes: ``(Q, 4)`` cxcywh.
        gt_labels: ``(G,)``, gt_boxes: ``(G, 4)`` cxcywh: the key-frame instances visible in the reference
            frame.
        pos_candidates / neg_candidates: SimOTA ``n_candidate_k`` of the positive set (10) and of the set
            whose complement gives the negatives (100; clamped to Q).
    Returns:
        ``positive (Q, G)`` and ``negative (Q, G)`` bool; a query is never both for one instance.
    """
    cost, ious = simota_cost(ref_logits.float(), ref_boxes.float(), gt_labels, gt_boxes.float())
    positive = dynamic_k_matching(cost, ious, pos_candidates)
    near = dynamic_k_matching(cost, ious, neg_candidates)
    return positive, ~(near | positive)


def pair_instances(key_ids: Tensor, ref_ids: Tensor) -> tuple[Tensor, Tensor]:
    """Instances present in both frames: ``(key_idx, ref_idx)`` int64 with ``key_ids[key_idx] ==
    ref_ids[ref_idx]``, in key-frame order."""
    same = key_ids[:, None] == ref_ids[None, :]
    key_idx, ref_idx = same.nonzero(as_tuple=True)
    return key_idx, ref_idx


class IDOLContrastiveLoss(nn.Module):
    """Selects anchors / positives / negatives for key-reference frame pairs and returns both reid losses.

    Args:
        pos_candidates, neg_candidates: see :func:`contrastive_candidates` (10 and 100 in IDOL).
        aux_neg_ratio: negatives per positive in the auxiliary cosine loss (10).
    """

    def __init__(self, pos_candidates: int = 10, neg_candidates: int = 100, aux_neg_ratio: int = 10):
        super().__init__()
        if pos_candidates < 1 or neg_candidates < 1:
            raise ValueError(f"candidate counts must be >= 1, got {pos_candidates} and {neg_candidates}")
        self.pos_candidates, self.neg_candidates = pos_candidates, neg_candidates
        self.aux_neg_ratio = aux_neg_ratio

    def forward(
        self,
        key_embeds: Tensor,
        ref_embeds: Tensor,
        anchors: list[Tensor],
        key_targets: list[dict],
        ref_targets: list[dict],
        ref_logits: Tensor,
        ref_boxes: Tensor,
    ) -> dict[str, Tensor]:
        """
        Args:
            key_embeds, ref_embeds: ``(B, Q, D)`` reid embeddings of the key and reference frames.
            anchors: B tensors ``(G_b,)``: the best matched key query of every key-frame GT (-1: unmatched).
            key_targets, ref_targets: B dicts with ``labels``, ``boxes`` (cxcywh) and ``instance_ids``.
            ref_logits: ``(B, Q, K)``; ref_boxes: ``(B, Q, 4)`` cxcywh (reference frame, last decoder layer).
        Returns:
            ``{"loss_reid", "loss_reid_aux"}`` averaged over anchors (zeros attached to the graph if none).
        """
        reid, aux, count = [], [], 0
        for b, (key_t, ref_t) in enumerate(zip(key_targets, ref_targets, strict=True)):
            key_idx, ref_idx = pair_instances(key_t["instance_ids"], ref_t["instance_ids"])
            best = anchors[b][key_idx] if len(key_idx) else key_idx
            keep = best >= 0
            key_idx, ref_idx, best = key_idx[keep], ref_idx[keep], best[keep]
            if len(key_idx) == 0:
                continue
            # the official code matches against the key-frame instances that the reference frame shows
            positive, negative = contrastive_candidates(
                ref_logits[b], ref_boxes[b], ref_t["labels"][ref_idx], ref_t["boxes"][ref_idx],
                self.pos_candidates, self.neg_candidates,
            )
            for g in range(len(key_idx)):
                v = key_embeds[b, best[g]]
                pos = ref_embeds[b][positive[:, g]]
                neg = ref_embeds[b][negative[:, g]]
                reid.append(contrastive_loss(v, pos, neg))
                n_aux = num_aux_negatives(len(pos), len(neg), self.aux_neg_ratio)
                pick = torch.randperm(len(neg), device=neg.device)[:n_aux]
                aux.append(aux_cosine_loss(v, pos, neg[pick]))
                count += 1
        if count == 0:
            zero = key_embeds.sum() * 0.0 + ref_embeds.sum() * 0.0
            return {"loss_reid": zero, "loss_reid_aux": zero}
        return {"loss_reid": torch.stack(reid).sum() / count, "loss_reid_aux": torch.stack(aux).sum() / count}
