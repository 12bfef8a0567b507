"""MinVIS association: Hungarian frame-to-frame matching, permutation invariance, top-k selection."""

import numpy as np
import torch
import torch.nn.functional as F
from pycocotools import mask as mask_util

from vis_core.tracking.minvis_matching import (
    MinVISAssociator,
    associate_sequence,
    match_from_embeds,
    softmax_drop_no_object,
)

Q, C, K, H, W = 12, 16, 3, 8, 12


def synth_queries(num_frames, seed, noise=0.15, drift=0.1):
    """Q identities whose embeddings drift slowly; each frame's queries come in a random order.

    Returns per frame (embeds (Q, C), logits (Q, K+1), mask logits (Q, H, W), identity of each query (Q,)).
    Identity q has a fixed mask (pixel q of a raster, shifted by t) and fixed logits, so the true track of a
    slot can be read back from the outputs.
    """
    g = torch.Generator().manual_seed(seed)
    ident = F.normalize(torch.randn(Q, C, generator=g), dim=1)
    logits = torch.randn(Q, K + 1, generator=g) * 2
    frames = []
    for t in range(num_frames):
        ident = F.normalize(ident + drift * torch.randn(Q, C, generator=g) / C**0.5, dim=1)
        perm = torch.randperm(Q, generator=g)
        emb = ident + noise * torch.randn(Q, C, generator=g) / C**0.5
        masks = torch.full((Q, H, W), -3.0)
        for q in range(Q):
            masks[q].view(-1)[(q * 7 + t) % (H * W)] = 3.0
        frames.append((emb[perm], logits[perm] + 0.1 * t, masks[perm], perm))
    return frames


def test_match_from_embeds_inverts_a_shuffle():
    g = torch.Generator().manual_seed(0)
    prev = torch.randn(Q, C, generator=g)
    shuffle = torch.randperm(Q, generator=g)
    cur = prev[shuffle] * 3 + 0.05 * torch.randn(Q, C, generator=g)  # scale must not matter (cosine)
    perm = match_from_embeds(prev, cur)
    assert torch.equal(shuffle[perm], torch.arange(Q))


def test_associator_recovers_identities_from_embeddings():
    frames = synth_queries(20, seed=1)
    assoc = MinVISAssociator(Q)
    for emb, logits, masks, ident in frames:
        perm = assoc.update(emb, logits, masks)
        # slot j follows the identity that was in slot j at frame 0
        assert torch.equal(ident[perm], frames[0][3])
    perms = associate_sequence(torch.stack([f[0] for f in frames]))
    for (_, _, _, ident), perm in zip(frames, perms, strict=True):
        assert torch.equal(ident[perm], frames[0][3])


def test_results_are_invariant_to_query_order():
    frames = synth_queries(6, seed=2)
    g = torch.Generator().manual_seed(3)

    def run(frames):
        assoc = MinVISAssociator(Q)
        for emb, logits, masks, _ in frames:
            assoc.update(emb, logits, masks)
        return assoc.finalize(5, [1, 2, 3])

    reference = run(frames)
    for t in (0, 3, 5):  # shuffling frame 0 changes slot numbers only; other frames change nothing
        shuffled = list(frames)
        p = torch.randperm(Q, generator=g)
        emb, logits, masks, ident = frames[t]
        shuffled[t] = (emb[p], logits[p], masks[p], ident[p])
        got = run(shuffled)
        key = lambda r: (r["category_id"], round(r["score"], 9))  # noqa: E731
        assert sorted(map(key, got)) == sorted(map(key, reference))
        for a, b in zip(sorted(got, key=key), sorted(reference, key=key), strict=True):
            assert a["segmentations"] == b["segmentations"]


def test_topk_selection_matches_hand_computation():
    # averaged logits = log p, so the class probabilities are p exactly (rows sum to 1; last = no object)
    p = np.array([
        [0.50, 0.10, 0.10, 0.30],
        [0.05, 0.70, 0.05, 0.20],
        [0.30, 0.29, 0.36, 0.05],
        [0.01, 0.01, 0.01, 0.97],
    ])
    q = p.shape[0]
    mean_logits = torch.tensor(np.log(p), dtype=torch.float32)
    delta = torch.randn(q, 4)
    emb = torch.eye(q, 8)
    masks = torch.zeros(q, 4, 4)
    masks[:, 0, 0] = torch.arange(q, dtype=torch.float) - 1.5  # slots 2 and 3 have pixel (0, 0) on
    assoc = MinVISAssociator(q, topk=4)
    assoc.update(emb, mean_logits + delta, masks)
    assoc.update(emb, mean_logits - delta, masks)
    results = assoc.finalize(9, [101, 102, 103])
    # flattened (slot, class) probabilities without the no-object column, best four:
    # (1, 1) 0.70, (0, 0) 0.50, (2, 2) 0.36, (2, 0) 0.30; not (2, 1) 0.29 nor any no-object entry (0.97)
    assert [(r["category_id"], round(r["score"], 6)) for r in results] == [
        (102, 0.7), (101, 0.5), (103, 0.36), (101, 0.3)]
    slot_of = [1, 0, 2, 2]
    for r, slot in zip(results, slot_of, strict=True):
        assert r["video_id"] == 9 and len(r["segmentations"]) == 2
        decoded = mask_util.decode(r["segmentations"][0])
        assert decoded[0, 0] == (slot >= 2) and decoded.sum() == (slot >= 2)
    assert np.allclose(softmax_drop_no_object(np.log(p)), p[:, :3])


def test_default_keeps_ten_and_every_frame_has_a_mask():
    frames = synth_queries(4, seed=4)
    assoc = MinVISAssociator(Q)
    for emb, logits, masks, _ in frames:
        assoc.update(emb, logits, masks)
    results = assoc.finalize(1, [7, 8, 9])
    assert len(results) == 10
    for r in results:
        assert len(r["segmentations"]) == 4 and all(s is not None for s in r["segmentations"])
    scores = [r["score"] for r in results]
    assert scores == sorted(scores, reverse=True)
