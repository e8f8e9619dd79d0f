"""The compiled decode runtime (src/stentor/infer/_kernels.c); everything else is in pyproject.toml.

The extension is optional: where it cannot be built (no C compiler), stentor installs without it
and runs on its torch engine, saying so once.
"""

import sys

from setuptools import Extension, setup

# -fno-wrapv: Python's own CFLAGS carry -fwrapv, which keeps GCC from vectorizing the sampler's index loops (2x slower)
flags = [] if sys.platform == "win32" else ["-O3", "-std=c11", "-fno-math-errno", "-fno-wrapv", "-pthread"]
setup(
    ext_modules=[
        Extension(
            "stentor.infer._kernels",
            sources=["src/stentor/infer/_kernels.c"],
            extra_compile_args=flags,
            extra_link_args=[] if sys.platform == "win32" else ["-pthread", "-lm"],
            optional=True,
        )
    ]
)
