"""Builds the optional C accelerators: the task classifier's (router.classify._features) and the OTLP
span encoder's and export thread's (router.metering._otlp).

Everything else is declared in pyproject.toml. The extension is optional: without a C compiler the
install still succeeds and both run their pure-Python paths, with the same results.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension("router.classify._features", ["src/router/classify/_features.c"], optional=True, extra_compile_args=["-O2"]),
        # the OTLP protobuf encoder of router.metering.tracing, same bytes as its Python path, and its
        # export queue and thread (Sender: POSTs off the GIL; Linux)
        Extension("router.metering._otlp", ["src/router/metering/_otlp.c", "src/router/metering/_otlp_sender.c"],
                  optional=True, extra_compile_args=["-O2"]),
    ]
)
