"""Shared fixtures."""

import pytest

from vis_core.eval import runs

try:
    from vis_core.eval import _rle_kernels
except ImportError:  # not built: the numpy path is all there is (test_eval_runs tells whether that is expected)
    _rle_kernels = None


@pytest.fixture(params=["compiled", "numpy"], scope="module")
def eval_kernels(request):
    """Runs a module's tests once with the evaluator's compiled kernels and once with its numpy code."""
    if request.param == "compiled" and _rle_kernels is None:
        pytest.skip("the compiled kernels are not built (setup.py); the numpy run covers this module")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(runs, "_rle_kernels", _rle_kernels if request.param == "compiled" else None)
        yield request.param
