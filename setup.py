"""Builds the optional C accelerator of the task classifier (router.classify._features).

Everything else is declared in pyproject.toml. The extension is optional: without a C compiler the
install still succeeds and the classifier runs its pure-Python path, with the same results.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension("router.classify._features", ["src/router/classify/_features.c"], optional=True, extra_compile_args=["-O2"]),
    ]
)
