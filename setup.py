"""Build the native audio hot path (``agentic_fast._audio``) from ``ext/_audio.pyx``.

Environment switches (mirroring aiohttp's ``AIOHTTP_NO_EXTENSIONS``):

* ``AGENTIC_FAST_NO_EXT=1`` - do not build the extension; the numpy twin is used.
* ``AGENTIC_FAST_REQUIRE_EXT=1`` - a failed build is an error (CI sets it), otherwise a
  failed build only warns and the package installs without the extension.
"""

from __future__ import annotations

import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

NO_EXT = os.environ.get("AGENTIC_FAST_NO_EXT") == "1"
REQUIRE_EXT = os.environ.get("AGENTIC_FAST_REQUIRE_EXT") == "1"


class OptionalBuildExt(build_ext):
    """build_ext that degrades to the pure-Python package unless the extension is required."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - setuptools raises assorted types
            self._fail(exc)

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001
            self._fail(exc)

    def _fail(self, exc: BaseException) -> None:
        if REQUIRE_EXT:
            raise
        print(
            f"WARNING: agentic_fast._audio was not built ({exc!r}); "
            "the pure-Python audio path will be used",
            file=sys.stderr,
        )


def extensions() -> list[Extension]:
    if NO_EXT:
        return []
    try:
        import numpy
        from Cython.Build import cythonize
    except ImportError as exc:
        if REQUIRE_EXT:
            raise
        print(f"WARNING: cannot build the extension: {exc}", file=sys.stderr)
        return []
    ext = Extension(
        "agentic_fast._audio",
        ["ext/_audio.pyx"],
        include_dirs=[numpy.get_include()],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        extra_compile_args=["-O3"],
    )
    return cythonize(
        [ext],
        language_level=3,
        compiler_directives={
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
        },
    )


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
