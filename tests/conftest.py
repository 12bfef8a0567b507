"""Shared fixtures."""

import pytest

from vis_core.eval import runs

try:
    from vis_core.eval import _rle_kernels
except ImportError:  # not built: the numpy path is all there is (test_eval_runs tells whether that is expected)
    _rle_kernels = None


@pytest.fixture(scope="session")
def tiny_idol_config():
    """A TrainConfig dict of a tiny IDOL on the synthetic stream (48 x 80, 5 categories), one iteration:
    enough to write a real run directory in seconds. Extend it with ``{**tiny_idol_config, ...}``."""
    return {
        "method": "idol",
        "model": {"preset": "tiny", "num_classes": 5, "num_queries": 8, "aux_masks": False},
        "data": {"kind": "synthetic", "synthetic": {"preset": "ovis", "seed": 0, "height": 48, "width": 80},
                 "min_sizes": [48], "max_size": 80},
        "solver": {"max_iter": 1, "batch_size": 1},
        "cpu_threads": 1,
    }


@pytest.fixture(params=["compiled", "numpy"], scope="module")
def eval_kernels(request):
    """Runs a module's tests once with the evaluator's compiled kernels and once with its numpy code."""
    if request.param == "compiled" and _rle_kernels is None:
        pytest.skip("the compiled kernels are not built (setup.py); the numpy run covers this module")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(runs, "_rle_kernels", _rle_kernels if request.param == "compiled" else None)
        yield request.param
