"""Builds the optional compiled kernels of the fast evaluator; everything else is configured in pyproject.toml.

``optional=True``: without a C compiler the package still installs, and ``vis_core.eval.runs`` uses its numpy
implementation of the same kernels (same numbers, slower).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "vis_core.eval._rle_kernels",
            ["vis_core/eval/_rle_kernels.c"],
            extra_compile_args=["-O3"],
            optional=True,
        )
    ]
)
