"""Challenge-scale configs build and run one training step at a tiny input size on the CPU.

Mask2Former part: ``Mask2FormerConfig.full()`` (Swin-L, window 12, 200 queries, hidden 256, 6 encoder / 9
decoder layers). Its exact parameter count comes from a build on the meta device (no memory, no init). The
real forward/backward runs with the Swin stages cut to 2 blocks each (``depths=(2, 2, 2, 2)``; widths, heads,
window, every other module at full size): the 18-block third stage alone would take the CPU step well past the
time budget of a unit test.
"""

from __future__ import annotations

import pytest
import torch

from vis_core.modeling.criterion import build_criterion
from vis_core.modeling.mask2former import Mask2FormerConfig, build_mask2former


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a shared 2-core machine: contention makes 2 OpenMP threads much slower
    yield
    torch.set_num_threads(threads)


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_mask2former_full_parameter_count():
    cfg = Mask2FormerConfig.full("ovis")
    with torch.device("meta"):
        model = build_mask2former(cfg)
    # Mask2Former's model zoo lists 216M parameters for Swin-L with 200 queries
    assert 214e6 < _count(model) < 217e6
    assert 194e6 < _count(model.backbone) < 196.5e6
    assert model.backbone.out_channels == {"res2": 192, "res3": 384, "res4": 768, "res5": 1536}
    assert [len(layer.blocks) for layer in model.backbone.layers] == [2, 2, 18, 2]
    assert model.backbone.layers[0].window_size == 12
    assert len(model.pixel_decoder.transformer.encoder.layers) == 6
    assert model.pixel_decoder.transformer.encoder.layers[0].linear1.out_features == 1024
    assert model.predictor.num_layers == 9 and model.predictor.num_queries == 200
    assert model.predictor.transformer_ffn_layers[0].linear1.out_features == 2048
    assert model.predictor.class_embed.out_features == 26  # 25 OVIS classes + no object


def test_mask2former_full_widths_train_step_64x64():
    cfg = Mask2FormerConfig.full("ovis", backbone_overrides={"depths": (2, 2, 2, 2)})
    torch.manual_seed(0)
    model = build_mask2former(cfg).train()
    images = torch.rand(1, 3, 64, 64) * 255
    out = model(images)
    assert out["pred_logits"].shape == (1, 200, 26)
    assert out["pred_masks"].shape == (1, 200, 16, 16) and out["pred_embds"].shape == (1, 200, 256)
    assert len(out["aux_outputs"]) == 9
    masks = torch.zeros(2, 64, 64, dtype=torch.bool)
    masks[0, 8:40, 8:30] = True
    masks[1, 30:60, 20:60] = True
    criterion = build_criterion(25, num_points=1024)
    losses = criterion(out, [{"labels": torch.tensor([3, 17]), "masks": masks}])
    loss = sum(losses.values())
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
