"""Exact, fast YouTube-VIS / OVIS evaluation (``vis eval``).

``evaluate(gt, results)`` gives the official numbers (``ytvoseval.py`` / ``oviseval.py``, |diff| <= 1e-6) from
paths or parsed inputs and refuses malformed input with a :class:`~vis_core.data.ytvis.VISFormatError`.
"""

from vis_core.eval.codalab import write_codalab_zip
from vis_core.eval.evaluator import EvalOutput, evaluate, run_evaluation
from vis_core.eval.params import EvalParams, build_params
from vis_core.eval.summarize import challenge_2022_map

__all__ = [
    "EvalOutput",
    "EvalParams",
    "build_params",
    "challenge_2022_map",
    "evaluate",
    "run_evaluation",
    "write_codalab_zip",
]
