"""ViT-Adapter without injectors around a frozen DINOv2 ViT (DVIS's ``D2VitAdapterDinoV2``).

Follows ``mask2former/modeling/backbones_vitAdapter/adapter.py`` of the DVIS code base with
``InteractionBlockWithCls_Efficient`` (the variant DVIS uses with a frozen ViT):

* SpatialPriorModule (SPM): a conv stem giving ``c1`` (stride 4 map) and query tokens ``c2, c3, c4`` at
  strides 8, 16, 32, each plus a learned ``level_embed``.
* The ViT runs frozen (``eval()``, ``no_grad``, ``requires_grad=False``) in 4 groups of blocks
  (ViT-L: [0-5], [6-11], [12-17], [18-23]); there is no injector, so the ViT tokens never see the SPM.
* After each group an Extractor updates the SPM tokens: ``c += MSDeformAttn(LN(c), ViT tokens at 1/16)``
  (16 heads, 4 points, value ratio 0.5), then ``c += ConvFFN(LN(c))`` (hidden ratio 0.25, depthwise 3x3 per
  level). The last group has 2 extra extractors.
* Outputs: ``c1 = ConvT(c2) + c1``; each level adds the matching ViT group output resized to its stride
  (group 1 -> 1/4, 2 -> 1/8, 3 -> 1/16, 4 -> 1/32); then a BatchNorm per level. ``res2..res5`` all have
  ``embed_dim`` channels at strides 4, 8, 16, 32.

Parameter names follow the official module (``vit_module.*``, ``spm.*``, ``level_embed``,
``interactions.{i}.extractor.*``, ``interactions.3.extra_extractors.{j}.*``, ``up``, ``norm1..norm4``), so a
DVIS checkpoint's backbone part maps one to one; a raw DINOv2 file given as backbone weights is recognised by
:meth:`ViTAdapter.remap_checkpoint_keys` (kernel / position grid resized, ``vit_module.`` prefix added).

Deviations from the official code:
* SyncBatchNorm -> ``nn.BatchNorm2d`` (``norm="BN"``, the default; DDP code may convert it with
  ``nn.SyncBatchNorm.convert_sync_batchnorm``) or ``nn.GroupNorm`` (``norm="GN"``, 32 groups or fewer for
  narrow maps) for tiny-batch CPU runs. Any other name (``FrozenBN``, ``SyncBN``) means BatchNorm2d;
* the depthwise conv of ConvFFN splits the tokens by the real level sizes instead of ``N // 21`` (identical
  for inputs that are multiples of 32, which are required anyway);
* MSDeformAttn is the pure-torch one (:mod:`vis_core.modeling.ms_deform_attn`) with the adapter's value
  ``ratio`` added here; no gradient checkpointing (``with_cp``) and no partial ViT fine-tuning.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vis_core.modeling.backbones.vit import VisionTransformer, build_vit, dinov2_state_to_model, load_dinov2_weights
from vis_core.modeling.ms_deform_attn import MSDeformAttn

__all__ = ["VIT_ADAPTER_SPECS", "ViTAdapter", "build_vit_adapter", "vit_adapter_factory"]

# DVIS ``get_adapter_args('vitl')``; the tiny variant keeps the topology (4 groups, last with 2 extra
# extractors) at a width that runs on CPU.
VIT_ADAPTER_SPECS: dict[str, dict] = {
    "vit_adapter_large": dict(
        vit="vit_large",
        interaction_indexes=((0, 5), (6, 11), (12, 17), (18, 23)),
        conv_inplane=64,
        deform_num_heads=16,
    ),
    "vit_adapter_tiny": dict(
        vit="vit_tiny",
        interaction_indexes=((0, 0), (1, 1), (2, 2), (3, 3)),
        conv_inplane=16,
        deform_num_heads=4,
    ),
}


def norm2d(kind: str, channels: int) -> nn.Module:
    """``GN`` -> GroupNorm (32 groups, fewer if ``channels`` is not a multiple); anything else -> BatchNorm2d."""
    if kind == "GN":
        return nn.GroupNorm(math.gcd(32, channels), channels)
    return nn.BatchNorm2d(channels)


def reference_points(shapes: Sequence[tuple[int, int]], device: torch.device) -> torch.Tensor:
    """Pixel centres of each level, normalised (x, y) in [0, 1]: ``(1, sum h*w, 1, 2)`` (one key level)."""
    refs = []
    for h, w in shapes:
        ys = (torch.arange(h, dtype=torch.float32, device=device) + 0.5) / h
        xs = (torch.arange(w, dtype=torch.float32, device=device) + 0.5) / w
        y, x = torch.meshgrid(ys, xs, indexing="ij")
        refs.append(torch.stack([x.reshape(-1), y.reshape(-1)], -1))
    return torch.cat(refs, 0)[None, :, None]


class DWConv(nn.Module):
    """Depthwise 3x3 conv applied per level to concatenated level tokens ``(B, sum h*w, C)``."""

    def __init__(self, dim: int):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim)

    def forward(self, x: torch.Tensor, shapes: Sequence[tuple[int, int]]) -> torch.Tensor:
        b, _, c = x.shape
        levels = x.split([h * w for h, w in shapes], dim=1)
        out = [
            self.dwconv(t.transpose(1, 2).reshape(b, c, h, w)).flatten(2).transpose(1, 2)
            for t, (h, w) in zip(levels, shapes, strict=True)
        ]
        return torch.cat(out, dim=1)


class ConvFFN(nn.Module):
    """Linear -> depthwise conv -> GELU -> Linear on level tokens ``(B, sum h*w, C)``."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = DWConv(hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, shapes: Sequence[tuple[int, int]]) -> torch.Tensor:
        return self.fc2(self.act(self.dwconv(self.fc1(x), shapes)))


class Extractor(nn.Module):
    """SPM tokens (queries) read the ViT tokens (keys, one level at 1/16) by deformable attention + ConvFFN."""

    def __init__(self, dim: int, num_heads: int, n_points: int, deform_ratio: float, cffn_ratio: float):
        super().__init__()
        self.query_norm = nn.LayerNorm(dim, eps=1e-6)
        self.feat_norm = nn.LayerNorm(dim, eps=1e-6)
        self.attn = MSDeformAttn(dim, n_levels=1, n_heads=num_heads, n_points=n_points, ratio=deform_ratio)
        self.ffn = ConvFFN(dim, int(dim * cffn_ratio))
        self.ffn_norm = nn.LayerNorm(dim, eps=1e-6)

    def forward(
        self,
        query: torch.Tensor,
        refs: torch.Tensor,
        feat: torch.Tensor,
        feat_shape: torch.Tensor,
        query_shapes: Sequence[tuple[int, int]],
    ) -> torch.Tensor:
        """query ``(B, Lq, C)`` at ``query_shapes``; refs ``(1, Lq, 1, 2)``; feat ``(B, h*w, C)``;
        feat_shape ``(1, 2)`` long. Returns the updated query ``(B, Lq, C)``."""
        query = query + self.attn(self.query_norm(query), refs, self.feat_norm(feat), feat_shape)
        return query + self.ffn(self.ffn_norm(query), query_shapes)


class InteractionBlock(nn.Module):
    """``InteractionBlockWithCls_Efficient``: extractors only (the ViT blocks are run by the adapter)."""

    def __init__(
        self, dim: int, num_heads: int, n_points: int, deform_ratio: float, cffn_ratio: float, extra_extractor: bool
    ):
        super().__init__()
        args = (dim, num_heads, n_points, deform_ratio, cffn_ratio)
        self.extractor = Extractor(*args)
        self.extra_extractors = nn.Sequential(*[Extractor(*args) for _ in range(2)]) if extra_extractor else None

    def forward(
        self,
        c: torch.Tensor,
        feat: torch.Tensor,
        refs: torch.Tensor,
        feat_shape: torch.Tensor,
        query_shapes: Sequence[tuple[int, int]],
    ) -> torch.Tensor:
        """SPM tokens ``c (B, Lq, C)`` updated from ViT tokens ``feat (B, h*w, C)``."""
        c = self.extractor(c, refs, feat, feat_shape, query_shapes)
        for extractor in self.extra_extractors or ():
            c = extractor(c, refs, feat, feat_shape, query_shapes)
        return c


class SpatialPriorModule(nn.Module):
    """Conv stem: image ``(B, 3, H, W)`` -> ``c1 (B, D, H/4, W/4)`` and tokens ``c2, c3, c4 (B, h*w, D)``
    at strides 8, 16, 32."""

    def __init__(self, inplanes: int, embed_dim: int, norm: str = "BN"):
        super().__init__()

        def conv(cin: int, cout: int, stride: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), norm2d(norm, cout), nn.ReLU(inplace=True)]

        self.stem = nn.Sequential(
            *conv(3, inplanes, 2),
            *conv(inplanes, inplanes, 1),
            *conv(inplanes, inplanes, 1),
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
        )
        self.conv2 = nn.Sequential(*conv(inplanes, 2 * inplanes, 2))
        self.conv3 = nn.Sequential(*conv(2 * inplanes, 4 * inplanes, 2))
        self.conv4 = nn.Sequential(*conv(4 * inplanes, 4 * inplanes, 2))
        self.fc1 = nn.Conv2d(inplanes, embed_dim, 1)
        self.fc2 = nn.Conv2d(2 * inplanes, embed_dim, 1)
        self.fc3 = nn.Conv2d(4 * inplanes, embed_dim, 1)
        self.fc4 = nn.Conv2d(4 * inplanes, embed_dim, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        c1 = self.stem(x)
        c2 = self.conv2(c1)
        c3 = self.conv3(c2)
        c4 = self.conv4(c3)
        tokens = [fc(c).flatten(2).transpose(1, 2) for fc, c in ((self.fc2, c2), (self.fc3, c3), (self.fc4, c4))]
        return (self.fc1(c1), *tokens)


class ViTAdapter(nn.Module):
    """Frozen ViT + injector-free adapter; ``(N, 3, H, W)`` with H, W multiples of 32 -> ``dict(res2..res5)``,
    each ``(N, D, H/s, W/s)`` for s = 4, 8, 16, 32.

    Args:
        vit: the DINOv2 trunk (frozen here); its patch size must be 16.
        interaction_indexes: inclusive (first, last) ViT block of each group.
        conv_inplane: SPM width. deform_num_heads, n_points, deform_ratio: extractor attention.
        cffn_ratio: ConvFFN hidden ratio. add_vit_feature: add the resized ViT outputs to each level.
        use_extra_extractor: 2 more extractors after the last group. norm: ``BN`` or ``GN`` (module docstring).
        out_features: returned subset of res2..res5.
    """

    def __init__(
        self,
        vit: VisionTransformer,
        interaction_indexes: Sequence[tuple[int, int]],
        conv_inplane: int = 64,
        deform_num_heads: int = 16,
        n_points: int = 4,
        deform_ratio: float = 0.5,
        cffn_ratio: float = 0.25,
        add_vit_feature: bool = True,
        use_extra_extractor: bool = True,
        norm: str = "BN",
        out_features: Sequence[str] = ("res2", "res3", "res4", "res5"),
    ):
        super().__init__()
        if vit.patch_size != 16:
            raise ValueError(f"the adapter reads ViT tokens at stride 16; got patch size {vit.patch_size}")
        last = interaction_indexes[-1][1]
        if last != len(vit.blocks) - 1:
            raise ValueError(f"interaction groups end at block {last}, the ViT has {len(vit.blocks)} blocks")
        dim = vit.embed_dim
        self.interaction_indexes = [tuple(ix) for ix in interaction_indexes]
        self.add_vit_feature = add_vit_feature
        self.level_embed = nn.Parameter(torch.zeros(3, dim))
        self.spm = SpatialPriorModule(conv_inplane, dim, norm)
        n = len(self.interaction_indexes)
        self.interactions = nn.ModuleList(
            InteractionBlock(
                dim,
                deform_num_heads,
                n_points,
                deform_ratio,
                cffn_ratio,
                extra_extractor=use_extra_extractor and i == n - 1,
            )
            for i in range(n)
        )
        self.up = nn.ConvTranspose2d(dim, dim, 2, 2)
        self.norm1, self.norm2, self.norm3, self.norm4 = (norm2d(norm, dim) for _ in range(4))
        self._init_weights()
        self.vit_module = vit
        self.vit_module.requires_grad_(False)  # frozen trunk: DVIS FREEZE_VIT
        self.vit_module.eval()
        names = ("res2", "res3", "res4", "res5")
        unknown = set(out_features) - set(names)
        if unknown:
            raise ValueError(f"unknown out_features {sorted(unknown)}; known: {names}")
        self.out_features = tuple(out_features)
        self.out_channels = {k: dim for k in self.out_features}
        self.out_strides = {k: s for k, s in zip(names, (4, 8, 16, 32), strict=True) if k in self.out_features}
        self.size_divisibility = 32

    def _init_weights(self) -> None:
        """Official init: trunc-normal linears, He-style convs (fan-out), unit norms; deform attention reset
        last (its own init); ``level_embed`` ~ N(0, 1)."""
        for module in (self.up, self.spm, self.interactions):
            for m in module.modules():
                if isinstance(m, nn.Linear):
                    nn.init.trunc_normal_(m.weight, std=0.02)
                    nn.init.zeros_(m.bias)
                elif isinstance(m, (nn.LayerNorm, nn.BatchNorm2d, nn.GroupNorm)):
                    nn.init.ones_(m.weight)
                    nn.init.zeros_(m.bias)
                elif isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                    fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
                    nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)
        for m in self.modules():
            if isinstance(m, MSDeformAttn):
                m._reset_parameters()
        nn.init.normal_(self.level_embed)

    def train(self, mode: bool = True) -> ViTAdapter:
        """Switch the adapter; the frozen ViT always stays in eval mode."""
        super().train(mode)
        self.vit_module.eval()
        return self

    def _run_vit_group(self, tokens: torch.Tensor, first: int, last: int) -> torch.Tensor:
        """Frozen ViT blocks ``first..last`` on ``(B, 1 + h*w, D)`` tokens (cls first), without autograd."""
        with torch.no_grad():
            for blk in self.vit_module.blocks[first : last + 1]:
                tokens = blk(tokens)
        return tokens

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        b, _, height, width = x.shape
        if height % 32 or width % 32:
            raise ValueError(f"ViTAdapter needs H, W multiples of 32, got {height}x{width} (pad the batch)")
        shapes = [(height // s, width // s) for s in (8, 16, 32)]
        refs = reference_points(shapes, x.device)
        feat_shape = torch.as_tensor([shapes[1]], dtype=torch.long, device=x.device)

        c1, c2, c3, c4 = self.spm(x)
        c = torch.cat([c2 + self.level_embed[0], c3 + self.level_embed[1], c4 + self.level_embed[2]], dim=1)
        with torch.no_grad():
            tokens, h, w = self.vit_module.prepare_tokens(x)

        vit_maps = []
        for (first, last), layer in zip(self.interaction_indexes, self.interactions, strict=True):
            tokens = self._run_vit_group(tokens, first, last)
            patches = tokens[:, 1:]  # (B, h*w, D); the cls token only travels through the ViT
            c = layer(c, patches, refs, feat_shape, shapes)
            vit_maps.append(patches.transpose(1, 2).reshape(b, -1, h, w))

        dim = c.shape[-1]
        sizes = [hh * ww for hh, ww in shapes]
        c2, c3, c4 = (
            t.transpose(1, 2).reshape(b, dim, hh, ww) for t, (hh, ww) in zip(c.split(sizes, dim=1), shapes, strict=True)
        )
        c1 = self.up(c2) + c1
        maps = [c1, c2, c3, c4]
        if self.add_vit_feature:
            # group k's ViT output, resized from stride 16 to the level's stride (official scale factors)
            for i, scale in enumerate((4.0, 2.0, 1.0, 0.5)):
                v = vit_maps[i]
                if scale != 1.0:
                    v = F.interpolate(v, scale_factor=scale, mode="bilinear", align_corners=False)
                maps[i] = maps[i] + v
        norms = (self.norm1, self.norm2, self.norm3, self.norm4)
        outs = {name: norm(m) for name, norm, m in zip(("res2", "res3", "res4", "res5"), norms, maps, strict=True)}
        return {k: outs[k] for k in self.out_features}

    def remap_checkpoint_keys(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A raw DINOv2 state dict (``cls_token``, ``blocks.0...``) becomes ``vit_module.*`` with the patch kernel
        and position grid resized; an adapter / DVIS checkpoint passes unchanged."""
        if "cls_token" in state and not any(k.startswith("vit_module.") for k in state):
            state = dinov2_state_to_model(state, self.vit_module)
            return {f"vit_module.{k}": v for k, v in state.items()}
        return state


def build_vit_adapter(
    name: str = "vit_adapter_large",
    out_features: Sequence[str] = ("res2", "res3", "res4", "res5"),
    norm: str = "BN",
    vit_weights: str = "",
    vit_overrides: dict | None = None,
    **overrides,
) -> ViTAdapter:
    """Adapter variant by name (``VIT_ADAPTER_SPECS``).

    Args:
        vit_weights: a local DINOv2 checkpoint loaded strictly into the ViT (:func:`load_dinov2_weights`).
        vit_overrides: constructor arguments of the ViT (e.g. ``{"depth": 8}``).
        overrides: constructor arguments of :class:`ViTAdapter`.
    """
    if name not in VIT_ADAPTER_SPECS:
        raise KeyError(f"unknown ViT-Adapter variant {name!r}; known: {sorted(VIT_ADAPTER_SPECS)}")
    spec = dict(VIT_ADAPTER_SPECS[name])
    vit = build_vit(spec.pop("vit"), **(vit_overrides or {}))
    if vit_weights:
        load_dinov2_weights(vit, vit_weights)
    return ViTAdapter(vit, **{**spec, **overrides}, norm=norm, out_features=tuple(out_features))


def vit_adapter_factory(name: str) -> Callable:
    """Registry factory: ``cfg`` (a ``BackboneConfig``) -> :class:`ViTAdapter`; ``cfg.norm`` ``GN`` selects
    GroupNorm, anything else BatchNorm2d; ``cfg.overrides`` go to :func:`build_vit_adapter`."""

    def factory(cfg) -> ViTAdapter:
        return build_vit_adapter(name, out_features=cfg.out_features, norm=cfg.norm, **cfg.overrides)

    return factory
