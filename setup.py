"""
Build of the optional C fast path (faketcp_twisted.io._fastpath).

Everything else about the package is declared in setup.cfg.  The extension
is optional: without a compiler or Python's headers the install still
succeeds, with a warning, and faketcp_twisted.io.fastpath uses its pure-Python
implementation (same semantics, slower).
"""

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):  # type: ignore[misc]  # setuptools is untyped
    """
    build_ext that turns any failure into a warning: C{optional=True}
    already covers compiler errors, this covers a missing or broken
    toolchain that fails before any compiling starts.
    """

    def run(self) -> None:
        try:
            super().run()
        except Exception as failure:  # noqa: BLE001 - any failure means "no extension"
            self.warn(f"the C fast path was not built ({failure}); the pure-Python one will be used")

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as failure:  # noqa: BLE001
            self.warn(f"the C fast path was not built ({failure}); the pure-Python one will be used")


setup(
    ext_modules=[
        Extension(
            "faketcp_twisted.io._fastpath",
            sources=["faketcp_twisted/io/_fastpath.c"],
            extra_compile_args=["-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Wno-missing-field-initializers"],
            optional=True,
        )
    ],
    cmdclass={"build_ext": OptionalBuildExt},
)
