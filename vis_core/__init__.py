"""vis_core: a compact plain-PyTorch library for video instance segmentation (VIS).

Subpackages: ``data`` (YouTube-VIS/OVIS json, synthetic data, clip samplers), ``modeling`` (backbones,
segmenters, heads, matchers, losses), ``methods`` (IDOL, MinVIS, ...), ``tracking`` (inference-time
association), ``engine`` (trainer, inference runner), ``eval`` (YouTube-VIS/OVIS evaluator), ``report``.
"""

__version__ = "0.1.0"
