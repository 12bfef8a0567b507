"""The official-size IDOL Deformable-DETR (Swin-L, 300 queries, 6+6 layers, FFN 1024): parameters and one step.

Swin-L is too slow for a CPU unit test at full depth, so the forward/backward runs with a depth-reduced Swin-L that
keeps every width (embed 192, heads 6-48, window 12); the full model's parameters are counted on the meta device.
"""

import pytest
import torch

from vis_core.methods.detr_segmenter import DeformableDETRFrame
from vis_core.modeling.deformable_detr import DeformableDETR, DeformableDETRConfig


@pytest.fixture(autouse=True)
def _one_thread():
    # small tensors: intra-op threads mostly add synchronisation on a shared 2-core machine
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _count(module):
    return sum(p.numel() for p in module.parameters())


def test_full_config_layer_sizes_match_the_official_architecture():
    cfg = DeformableDETRConfig.full("ovis")
    with torch.device("meta"):
        model = DeformableDETR(cfg)
    c, ffn, heads, levels, points = 256, 1024, 8, 4, 4
    # hand count: MSDeformAttn = offsets + weights + value / output projections; FFN; LayerNorms
    deform = (c * heads * levels * points * 2 + heads * levels * points * 2) + (
        c * heads * levels * points + heads * levels * points) + 2 * (c * c + c)
    ffn_params = c * ffn + ffn + ffn * c + c
    enc_layer = deform + ffn_params + 2 * 2 * c
    dec_layer = deform + (4 * c * c + 4 * c) + ffn_params + 3 * 2 * c
    assert _count(model.transformer.encoder.layers[0]) == enc_layer
    assert _count(model.transformer.decoder.layers[0]) == dec_layer
    assert len(model.transformer.encoder.layers) == 6 and len(model.transformer.decoder.layers) == 6
    assert model.query_embed.weight.shape == (300, 512)
    assert len(model.input_proj) == 4 and model.input_proj[3][0].stride == (2, 2)  # extra stride-64 level
    assert model.class_embed[0].out_features == 25
    # IDOL's dynamic mask head: (8 + 2) * 8 + 8 * 8 + 8 * 1 weights and 8 + 8 + 1 biases = 169 parameters
    assert model.mask_head.num_gen_params == 169
    # everything outside the backbone, by hand: input projections (+GroupNorm), level / query embeddings,
    # reference-point linear, 6 class and 6 box heads, 6 + 6 layers, controller MLP and mask branch convs
    swin_l = {"res3": 384, "res4": 768, "res5": 1536}
    proj = sum(ch * c + c + 2 * c for ch in swin_l.values()) + (1536 * 9 * c + c + 2 * c)
    embeds = levels * c + 300 * 2 * c + (c * 2 + 2)
    heads_params = 6 * (c * 25 + 25) + 6 * (2 * (c * c + c) + c * 4 + 4)
    controller = 2 * (c * c + c) + c * 169 + 169
    branch = 3 * (9 * c * c + c) + (9 * c * 64 + 64) + (9 * 64 * 8 + 8)
    expected = proj + embeds + heads_params + 6 * enc_layer + 6 * dec_layer + controller + branch
    backbone = _count(model.backbone)
    assert 190e6 < backbone < 200e6  # Swin-L (embed 192, depths 2-2-18-2)
    assert _count(model) - backbone == expected
    assert DeformableDETRConfig.full("ytvis21").num_classes == 40


def test_full_width_model_trains_one_step_at_tiny_input():
    cfg = DeformableDETRConfig.full("ovis", backbone_kwargs={"overrides": {"depths": (1, 1, 1, 1)}})
    torch.manual_seed(0)
    method = DeformableDETRFrame(cfg)
    masks = torch.zeros(1, 64, 64, dtype=torch.bool)
    masks[0, 10:40, 16:50] = True
    target = {"labels": torch.tensor([3]), "boxes": torch.tensor([[33 / 64, 25 / 64, 34 / 64, 30 / 64]]),
              "masks": masks}
    batch = {"images": torch.rand(1, 1, 3, 64, 64) * 255, "targets": [[target]]}
    losses = method(batch)
    assert len(losses) == 5 * 6  # five losses on the last layer and on each of the 5 aux layers
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    grads = [p.grad for p in method.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    method.eval()
    with torch.no_grad():
        out = method(batch)
    assert out["pred_logits"].shape == (1, 300, 25)
    assert out["pred_masks"].shape == (1, 300, 16, 16)
    assert out["pred_embds"].shape == (1, 300, 256)
