"""The pure-torch multi-scale deformable attention against an explicit bilinear loop, plus gradcheck."""

import torch

from vis_core.modeling.ms_deform_attn import MSDeformAttn, ms_deform_attn_core, ms_deform_attn_naive


def _random_inputs(dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = torch.tensor([[6, 8], [3, 4], [2, 2]])
    n, m, d, lq, p = 2, 2, 3, 5, 3
    s = int((shapes[:, 0] * shapes[:, 1]).sum())
    value = torch.randn(n, s, m, d, generator=g, dtype=dtype)
    # include locations slightly outside [0, 1] to exercise the zero padding
    loc = torch.rand(n, lq, m, len(shapes), p, 2, generator=g, dtype=dtype) * 1.2 - 0.1
    w = torch.rand(n, lq, m, len(shapes), p, generator=g, dtype=dtype)
    w = w / w.flatten(-2).sum(-1)[..., None, None]
    return value, shapes, loc, w


def test_core_matches_naive_loop():
    value, shapes, loc, w = _random_inputs()
    fast = ms_deform_attn_core(value, shapes, loc, w)
    slow = ms_deform_attn_naive(value, shapes, loc, w)
    assert fast.shape == (2, 5, 6)
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-5)


def test_sampling_exactly_at_pixel_centre_reads_that_pixel():
    # One level 4x4, one head, one point, located at the centre of pixel (row 2, col 1).
    value = torch.arange(16, dtype=torch.float32).view(1, 16, 1, 1)
    loc = torch.tensor([(1 + 0.5) / 4, (2 + 0.5) / 4]).view(1, 1, 1, 1, 1, 2)
    out = ms_deform_attn_core(value, torch.tensor([[4, 4]]), loc, torch.ones(1, 1, 1, 1, 1))
    assert out.item() == 2 * 4 + 1


def test_gradcheck_tiny():
    value, shapes, loc, w = _random_inputs(dtype=torch.float64, seed=1)
    # keep points away from the exact pixel grid where bilinear interpolation is not differentiable
    inputs = (value.requires_grad_(), shapes, loc.clamp(0.05, 0.95).requires_grad_(), w.requires_grad_())
    assert torch.autograd.gradcheck(ms_deform_attn_core, inputs, eps=1e-6, atol=1e-4)


def test_module_ignores_padded_values_and_checks_shapes():
    torch.manual_seed(0)
    attn = MSDeformAttn(d_model=8, n_levels=2, n_heads=2, n_points=2)
    shapes = torch.tensor([[4, 4], [2, 2]])
    x = torch.randn(1, 20, 8)
    q = torch.randn(1, 3, 8)
    ref = torch.rand(1, 3, 2, 2)
    pad = torch.zeros(1, 20, dtype=torch.bool)
    pad[0, 16:] = True
    out1 = attn(q, ref, x, shapes, None, pad)
    x2 = x.clone()
    x2[0, 16:] = 1e3  # changing padded positions must not change the output
    out2 = attn(q, ref, x2, shapes, None, pad)
    torch.testing.assert_close(out1, out2)
    try:
        attn(q, ref, x[:, :19], shapes)
    except ValueError as e:
        assert "19 positions" in str(e)
    else:
        raise AssertionError("shape mismatch not detected")
