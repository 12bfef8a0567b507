"""DVIS++ Noiser: the training-time noise on the referring tracker's layer-0 identity (report 002, eqs. 1-3).

Re-implements DVIS_Plus ``dvis_Plus/noiser.py`` (``Noiser.__call__``), as the ``ReferringTracker_noiser`` uses it:

* training only, never on frame 0 (there is no reference to match), only for the tracker's layer-0 identity;
* one Bernoulli draw per frame (``random.random() < noise_ratio``) decides for *every* query of that frame;
  when it fires, the noise **replaces** the Hungarian match: it works on the raw segmenter order, and the
  returned indices are what the tracker keeps as the next frame's reference (``last_frame_embeds``) and what
  reorders the guidance outputs, so a noisy frame also corrupts the next frame's match (as the official);
* modes, with ``perm`` a random permutation of the ``Q`` queries:

  - ``rs`` (random shuffle): ``Q'_i = Q_perm(i)``, identity ``perm(i)``;
  - ``wa`` (weighted average, eq. 2): ``Q'_i = a_i Q_i + (1 - a_i) Q_perm(i)``, ``a_i ~ U(0, 1)`` per query;
    the identity is ``perm(i)`` when ``a_i < 0.5``, else ``i``;
  - ``cc`` (channel cut, eq. 3): ``Q'_i = [Q_i[:k_i], Q_perm(i)[k_i:]]``, ``k_i ~ randint(0, C)`` per query;
    the identity is ``perm(i)`` when ``k_i < C // 2``, else ``i``.

Deviation switch ``partner``: the official code draws the partner from one permutation (``permutation``, the
default); the report's eq. 1 draws it with ``randint(0, Q)`` per query (``randint``: partners may repeat).

Randomness: the official uses Python's / NumPy's global RNGs; here every draw takes the ``torch.Generator``
passed in (None: torch's global generator), so tests are deterministic. With a batch of ``B`` videos the
tracker calls the noiser once per (video, frame): the official trains one video per GPU, so a frame's draw
is per video there too.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from vis_core.tracking.minvis_matching import match_from_embeds

__all__ = ["NOISE_MODES", "NoiseConfig", "Noiser"]

NOISE_MODES = ("none", "rs", "wa", "cc")


@dataclass
class NoiseConfig:
    """``mode`` (none / rs / wa / cc), ``ratio`` (per-frame probability; DVIS++ default ``wa`` at 0.5) and
    ``partner`` (``permutation``: the official code; ``randint``: the report's eq. 1)."""

    mode: str = "none"
    ratio: float = 0.5
    partner: str = "permutation"

    def __post_init__(self) -> None:
        if self.mode not in NOISE_MODES:
            raise ValueError(f"noise.mode must be one of {NOISE_MODES}, got {self.mode!r}")
        if not 0.0 <= self.ratio <= 1.0:
            raise ValueError(f"noise.ratio must be in [0, 1], got {self.ratio}")
        if self.partner not in ("permutation", "randint"):
            raise ValueError(f"noise.partner must be 'permutation' or 'randint', got {self.partner!r}")


class Noiser:
    """Hungarian match of the current embeddings to the reference, or (training, by chance) a noised one.

    Args:
        cfg: :class:`NoiseConfig`.
    """

    def __init__(self, cfg: NoiseConfig | None = None):
        self.cfg = cfg or NoiseConfig()

    def __call__(
        self, ref_embeds: Tensor | None, cur_embeds: Tensor, activate: bool = False,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor]:
        """One video's frame.

        Args:
            ref_embeds: ``(Q, C)`` the previous frame's matched embeddings (None on frame 0).
            cur_embeds: ``(Q, C)`` the current frame's segmenter embeddings (raw query order).
            activate: True in training (the noise may fire). generator: the RNG of every draw.
        Returns:
            ``indices (Q,)`` long: slot ``i`` takes the identity of current query ``indices[i]`` (the next
            frame's reference is ``cur_embeds[indices]``), and ``embeds (Q, C)``: the layer-0 identity.
        """
        q = cur_embeds.shape[0]
        if ref_embeds is None:  # frame 0: nothing to match, never noised
            return torch.arange(q, device=cur_embeds.device), cur_embeds
        # the official matches first (one Hungarian per frame even when the noise then fires)
        matched = match_from_embeds(ref_embeds, cur_embeds)
        if not (activate and self.cfg.mode != "none" and self.fires(generator)):
            return matched, cur_embeds[matched]
        return self.noise(cur_embeds, generator)

    def fires(self, generator: torch.Generator | None = None) -> bool:
        """The frame's Bernoulli draw: ``U(0, 1) < ratio``."""
        return bool(torch.rand((), generator=generator) < self.cfg.ratio)

    def partners(self, q: int, generator: torch.Generator | None = None, device=None) -> Tensor:
        """``(Q,)`` long partner index of every query: a permutation (official) or ``randint(0, Q)`` (eq. 1)."""
        if self.cfg.partner == "randint":
            return torch.randint(0, q, (q,), generator=generator).to(device)
        return torch.randperm(q, generator=generator).to(device)

    def noise(self, cur: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """The noised identity of ``cur (Q, C)`` under ``cfg.mode`` -> ``(indices (Q,), embeds (Q, C))``."""
        q, c = cur.shape
        perm = self.partners(q, generator, cur.device)
        keep = torch.arange(q, device=cur.device)
        if self.cfg.mode == "rs":
            return perm, cur[perm]
        if self.cfg.mode == "wa":
            alpha = torch.rand(q, generator=generator).to(cur)  # (Q,) per-query weight, U(0, 1)
            embeds = alpha[:, None] * cur + (1 - alpha[:, None]) * cur[perm]
            return torch.where(alpha < 0.5, perm, keep), embeds
        if self.cfg.mode == "cc":
            k = torch.randint(0, c, (q,), generator=generator).to(cur.device)  # (Q,) cut channel per query
            first = (torch.arange(c, device=cur.device)[None] < k[:, None]).to(cur)  # (Q, C) 1 on [:k]
            embeds = first * cur + (1 - first) * cur[perm]
            return torch.where(k < c // 2, perm, keep), embeds
        raise ValueError(f"Noiser: mode {self.cfg.mode!r} has no noise")
