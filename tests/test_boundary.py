import math

import pytest
import torch
import torch.nn.functional as F

from vis_core.modeling.heads.boundary import (
    BoundaryConfig,
    BoundaryHead,
    boundary_loss,
    boundary_targets,
    build_boundary_head,
    dice_sq_loss,
)


def test_boundary_of_a_square_is_its_inner_edge_only():
    mask = torch.zeros(1, 9, 9, dtype=torch.bool)
    mask[0, 2:7, 2:7] = True  # 5x5 square
    b = boundary_targets(mask)
    # the one-pixel ring of the square's own pixels: |Laplacian| would add the ring outside it too (16 + 24)
    expected = torch.zeros(9, 9)
    expected[2:7, 2:7] = 1
    expected[3:6, 3:6] = 0
    assert torch.equal(b[0], expected)
    assert b.sum() == 16 and bool((b[0].bool() & ~mask[0]).sum() == 0)
    assert b.dtype == torch.float32


def test_boundary_touching_image_border_counts_border_pixels():
    b = boundary_targets(torch.ones(5, 6))  # 2-D input, zero padding outside
    expected = torch.ones(5, 6)
    expected[1:4, 1:5] = 0
    assert torch.equal(b, expected)
    assert boundary_targets(torch.zeros(2, 4, 4)).sum() == 0


def test_threshold_matters_for_soft_masks():
    m = torch.zeros(1, 5, 5)
    m[0, 2, 2] = 0.05  # Laplacian: 0.4 at the centre, -0.05 at the 8 neighbours
    b = boundary_targets(m, threshold=0.1)
    assert b.sum() == 1 and b[0, 2, 2] == 1
    assert boundary_targets(m, threshold=0.01).sum() == 1  # the neighbours' responses are negative: no band
    assert boundary_targets(m, threshold=0.5).sum() == 0


def test_dice_sq_hand_computed():
    logits = torch.zeros(1, 4)  # p = 0.5 everywhere
    t = torch.tensor([[1.0, 0.0, 1.0, 0.0]])
    # sum(pt) = 1, sum p^2 = 1, sum t^2 = 2
    assert dice_sq_loss(logits, t, 1) == pytest.approx(1 - 3 / 4)
    assert dice_sq_loss(logits, t, 1, smooth_numerator=False) == pytest.approx(1 - 2 / 4)
    assert dice_sq_loss(logits, t, 1, smooth=0.0) == pytest.approx(1 - 2 / 3)
    # empty target, confident empty prediction: ~0 with the issue's form, ~1 with the reports' literal form
    neg = torch.full((1, 4), -30.0)
    assert dice_sq_loss(neg, torch.zeros(1, 4), 1) == pytest.approx(0.0, abs=1e-6)
    assert dice_sq_loss(neg, torch.zeros(1, 4), 1, smooth_numerator=False) == pytest.approx(1.0)


def test_boundary_loss_is_dice_plus_bce_normalised_by_num_masks():
    logits = torch.zeros(2, 2, 2)
    t = torch.tensor([[[1.0, 0.0], [1.0, 0.0]], [[1.0, 0.0], [1.0, 0.0]]])
    per_mask = (1 - 3 / 4) + math.log(2)
    assert boundary_loss(logits, t) == pytest.approx(per_mask)  # default normaliser: N = 2
    assert boundary_loss(logits, t, num_masks=4) == pytest.approx(per_mask / 2)
    with pytest.raises(ValueError, match="differ"):
        boundary_loss(torch.zeros(2, 4, 4), torch.zeros(2, 8, 8))
    empty = torch.zeros(0, 4, 4, requires_grad=True)
    loss = boundary_loss(empty, torch.zeros(0, 4, 4))
    loss.backward()
    assert loss.item() == 0.0


def test_dot_head_is_mlp_kernel_dotted_with_features():
    torch.manual_seed(0)
    head = BoundaryHead(embed_dim=6, feat_dim=5, num_layers=2)
    emb = torch.randn(2, 3, 6)
    feats = torch.randn(2, 5, 4, 4)
    out = head(emb, feats)
    kernel = head.kernel_mlp.layers[1](F.relu(head.kernel_mlp.layers[0](emb)))
    manual = (kernel[:, :, :, None, None] * feats[:, None]).sum(2)
    torch.testing.assert_close(out, manual)
    # (N, C) + batch_index picks each instance's image and gives the same logits
    idx = torch.tensor([1, 0])
    sel = head(torch.stack([emb[1, 2], emb[0, 1]]), feats, batch_index=idx)
    torch.testing.assert_close(sel, torch.stack([out[1, 2], out[0, 1]]))


def test_dynamic_conv_head_matches_conv2d_with_generated_params():
    torch.manual_seed(0)
    head = BoundaryHead(embed_dim=8, feat_dim=4, kind="dynamic_conv", dyn_channels=3, dyn_layers=2)
    emb = torch.randn(1, 2, 8)
    feats = torch.randn(1, 4, 5, 5)
    out = head(emb, feats)
    for q in range(2):
        p = head.kernel_mlp(emb[0, q])
        w1, b1 = p[:12].reshape(3, 4, 1, 1), p[12:15]
        w2, b2 = p[15:18].reshape(1, 3, 1, 1), p[18:19]
        ref = F.conv2d(F.relu(F.conv2d(feats, w1, b1)), w2, b2)[0, 0]
        torch.testing.assert_close(out[0, q], ref)
    # per-instance features (N, F, H, W) without batch_index
    torch.testing.assert_close(head(emb[0], feats.expand(2, -1, -1, -1)), out[0])


def test_head_errors_name_the_problem():
    head = BoundaryHead(4, 3)
    with pytest.raises(ValueError, match="features must be"):
        head(torch.randn(2, 4), torch.randn(2, 5, 4, 4))
    with pytest.raises(ValueError, match="batch_index"):
        head(torch.randn(3, 4), torch.randn(2, 3, 4, 4))
    with pytest.raises(ValueError, match="unknown kind"):
        BoundaryHead(4, 3, kind="conv")
    assert build_boundary_head(BoundaryConfig(enabled=False), 4, 3) is None
    assert build_boundary_head(BoundaryConfig(enabled=True, kind="dynamic_conv"), 4, 3).kind == "dynamic_conv"


def test_boundary_loss_reaches_embeddings_and_features():
    """The head is training-only, so the loss can change the model only through what it reads."""
    torch.manual_seed(0)
    head = BoundaryHead(embed_dim=8, feat_dim=5, num_layers=2)
    emb = torch.randn(1, 2, 8, requires_grad=True)
    feats = torch.randn(1, 5, 6, 6, requires_grad=True)
    target = boundary_targets(torch.rand(2, 6, 6) > 0.5)
    boundary_loss(head(emb, feats)[0], target).backward()
    assert emb.grad.abs().sum() > 0 and feats.grad.abs().sum() > 0


def test_overfits_boundary_maps():
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: thread start-up dominates on a shared machine
    try:
        masks = torch.zeros(2, 12, 12)
        masks[0, 2:7, 2:8] = 1
        masks[1, 5:11, 4:10] = 1
        target = boundary_targets(masks)
        yy, xx = torch.meshgrid(torch.linspace(-1, 1, 12), torch.linspace(-1, 1, 12), indexing="ij")
        feats = torch.stack([target[0] * 2 - 1, target[1] * 2 - 1, xx, yy, torch.ones_like(xx)])[None]
        head = BoundaryHead(embed_dim=8, feat_dim=5, num_layers=2)
        emb = torch.randn(1, 2, 8, requires_grad=True)
        opt = torch.optim.Adam([emb, *head.parameters()], lr=0.05)
        losses = []
        for _ in range(60):
            loss = boundary_loss(head(emb, feats)[0], target)
            losses.append(loss.item())
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    assert losses[-1] < 0.05 * losses[0]
    assert torch.equal(head(emb, feats)[0] > 0, target.bool())
