"""Only the extension modules; metadata lives in pyproject.toml.

``INFRAKIT_INSTANCE_NO_EXTENSIONS=1`` builds a pure-Python package.  Otherwise
the Cython hot path must build: a missing compiler is an error, not a silent
fallback (set the variable to opt out).
"""

import os

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext as _build_ext

NO_EXTENSIONS = os.environ.get("INFRAKIT_INSTANCE_NO_EXTENSIONS", "").strip().lower() not in ("", "0", "false", "no")

EXTENSIONS = [
    # -g0: no debug info in shipped modules (Python's own CFLAGS carry -g), a
    # quarter of their size; INFRAKIT_INSTANCE_DEBUG_BUILD=1 keeps it for gdb.
    Extension(
        f"infrakit_instance.{name}",
        [f"ext/infrakit_instance/{name}.pyx"],
        extra_compile_args=[] if os.environ.get("INFRAKIT_INSTANCE_DEBUG_BUILD") else ["-g0"],
    )
    for name in ("_http_c", "_rpc_c", "_codec_c", "_conn_c", "_batch_c", "_state_c")
]


class build_ext(_build_ext):
    """Cythonizes at build time (as uvloop does), so Cython is only a build requirement."""

    def finalize_options(self) -> None:
        from Cython.Build import cythonize

        self.distribution.ext_modules[:] = cythonize(
            self.distribution.ext_modules,
            compiler_directives={"language_level": "3"},
            include_path=["ext"],
            annotate=bool(os.environ.get("INFRAKIT_INSTANCE_ANNOTATE")),
        )
        super().finalize_options()


setup(
    ext_modules=[] if NO_EXTENSIONS else EXTENSIONS,
    cmdclass={} if NO_EXTENSIONS else {"build_ext": build_ext},
)
