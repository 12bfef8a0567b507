import pytest
import torch

from vis_core.modeling.heads.quality import (
    QualityConfig,
    QualityHead,
    build_quality_head,
    mask_iou_targets,
    quality_loss,
    rescore,
)


def test_iou_targets_hand_computed_and_detached():
    logits = torch.full((3, 2, 3), -5.0, requires_grad=True)
    gt = torch.zeros(3, 2, 3)
    with torch.no_grad():
        logits[0, 0, :] = 5.0  # predicts 3 pixels
        logits[1, :, 0] = 5.0  # predicts 2 pixels
    gt[0, 0, :2] = 1  # 2 of the 3 -> IoU 2/3
    gt[1, 0, 1:] = 1  # disjoint with the prediction: IoU 0
    v = mask_iou_targets(logits, gt)  # mask 2: empty prediction on empty target -> 1
    torch.testing.assert_close(v, torch.tensor([2 / 3, 0.0, 1.0]))
    assert not v.requires_grad
    with pytest.raises(ValueError, match="differ"):
        mask_iou_targets(torch.zeros(2, 4), torch.zeros(3, 4))


def test_mask_threshold_is_on_probabilities():
    logits = torch.tensor([[0.5, -0.5]])  # sigmoid 0.62 and 0.38
    gt = torch.tensor([[1.0, 1.0]])
    assert mask_iou_targets(logits, gt).item() == pytest.approx(0.5)
    assert mask_iou_targets(logits, gt, mask_threshold=0.3).item() == pytest.approx(1.0)


def test_quality_loss_is_mean_squared_error_with_detached_target():
    s = torch.tensor([0.5, 1.0, 0.0], requires_grad=True)
    v = torch.tensor([1.0, 1.0, 0.5], requires_grad=True)
    loss = quality_loss(s, v)
    assert loss.item() == pytest.approx((0.25 + 0 + 0.25) / 3)
    loss.backward()
    assert v.grad is None
    torch.testing.assert_close(s.grad, torch.tensor([-1.0, 0.0, -1.0]) / 3)  # 2 (S - V) / N
    assert quality_loss(s, v, num_masks=1.0).item() == pytest.approx(0.5)


def test_head_is_two_ffn_layers_with_sigmoid_output():
    torch.manual_seed(0)
    head = QualityHead(16, hidden_dim=8)
    assert [type(m).__name__ for m in head.children()] == ["Linear", "Linear"]
    s = head(torch.randn(2, 5, 16) * 10)
    assert s.shape == (2, 5) and bool(((s > 0) & (s < 1)).all())


def test_rescore_only_when_used_at_test():
    cls = torch.tensor([[0.8, 0.1], [0.4, 0.4]])
    q = torch.tensor([0.5, 1.0])
    assert QualityConfig().use_at_test is False  # the reports: training only
    assert rescore(cls, q, use_at_test=False) is cls
    torch.testing.assert_close(rescore(cls, q, use_at_test=True), torch.tensor([[0.4, 0.05], [0.4, 0.4]]))
    torch.testing.assert_close(rescore(torch.tensor([0.8, 0.4]), q, True), torch.tensor([0.4, 0.4]))


def test_head_learns_to_predict_mask_quality():
    """Embeddings that encode a quality level: the head regresses the IoU targets (loss -> ~0)."""
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        iou = torch.linspace(0.05, 0.95, 16)
        emb = torch.stack([iou, 1 - iou, torch.ones_like(iou)], dim=1) + 0.01 * torch.randn(16, 3)
        head = build_quality_head(QualityConfig(enabled=True, hidden_dim=16), embed_dim=3)
        opt = torch.optim.Adam(head.parameters(), lr=0.05)
        for _ in range(300):
            loss = quality_loss(head(emb), iou)
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    assert loss.item() < 1e-3
    assert build_quality_head(QualityConfig(enabled=False), 3) is None
