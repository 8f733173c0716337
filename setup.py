"""Build Tollgate: the Python packages plus the compiled forms of the fastpath modules.

Each ``fastpath/<name>.py`` that has a ``fastpath/<name>.pxd`` beside it is compiled with Cython
into ``fastpath._compiled.<name>``; each ``gateway/**/<name>.py`` with a ``.pxd`` beside it is
compiled in place (see gateway/__init__.py for how its interpreted form is chosen).  The build never fails for want of a compiler or of Cython:
Tollgate then runs on the interpreted forms (``fastpath.IMPLEMENTATION == "pure"``), and says so.
``TOLLGATE_NO_EXTENSIONS=1`` skips the compilation on purpose.
"""
import os
import shutil
import sys
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).parent


def fastpath_extensions():
    if os.environ.get("TOLLGATE_NO_EXTENSIONS", "").strip() not in ("", "0"):
        return []
    try:
        from Cython.Build import cythonize
        from setuptools import Extension
    except ImportError:
        print("tollgate: Cython is not installed; fastpath runs interpreted", file=sys.stderr)
        return []
    extensions = []
    for pxd in sorted((HERE / "fastpath").glob("*.pxd")):
        # Cython finds a module's .pxd by the module's name, not beside its source: the typing
        # of fastpath/<name>.pxd reaches fastpath._compiled.<name> only from a copy there.
        typed = HERE / "fastpath" / "_compiled" / pxd.name
        if not typed.exists() or typed.read_bytes() != pxd.read_bytes():
            shutil.copyfile(pxd, typed)
        extensions.append(Extension(f"fastpath._compiled.{pxd.stem}", [f"fastpath/{pxd.stem}.py"],
                                    extra_compile_args=["-O2"]))
    # The data plane's protocol and pipeline classes (they do I/O, so they are not fastpath)
    # compile in place; gateway/__init__.py loads their sources instead when running interpreted.
    for pxd in sorted((HERE / "gateway").rglob("*.pxd")):
        module = pxd.relative_to(HERE).with_suffix("")
        extensions.append(Extension(".".join(module.parts), [str(module) + ".py"],
                                    extra_compile_args=["-O2"]))
    try:
        return cythonize(extensions, language_level=3, quiet=True,
                         compiler_directives={"boundscheck": False, "wraparound": False,
                                              "cdivision": True, "embedsignature": True})
    except Exception as exc:  # a Cython error must not make Tollgate uninstallable
        print(f"tollgate: Cython failed ({exc}); everything runs interpreted", file=sys.stderr)
        return []


class OptionalBuildExt(build_ext):
    """Compile what can be compiled; a failure leaves the interpreted forms in charge."""

    def run(self):
        try:
            super().run()
        except Exception as exc:  # no compiler, no headers: still a working install
            print(f"tollgate: fastpath not compiled ({exc}); running interpreted", file=sys.stderr)

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:
            print(f"tollgate: {ext.name} not compiled ({exc})", file=sys.stderr)


setup(
    name="tollgate",
    version="0.1.0",
    description="A self-hosted API gateway with a compiled hot path",
    long_description=(HERE / "README.md").read_text(encoding="utf-8") if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["tollgate*", "gateway*", "fastpath*", "control_plane*", "device_bridge*"]),
    package_data={"fastpath": ["*.pxd"], "gateway": ["*.pxd", "*/*.pxd"], "tollgate": ["examples/*.yaml"]},
    ext_modules=fastpath_extensions(),
    cmdclass={"build_ext": OptionalBuildExt},
    install_requires=[
        "uvloop>=0.19",
        "httptools>=0.6",
        "msgspec>=0.18",
        "prometheus-client>=0.20",
        "PyYAML>=6.0",
    ],
    extras_require={
        "test": ["pytest>=8", "pytest-timeout>=2.3", "hypothesis>=6.100", "Cython>=3.0"],
    },
    entry_points={"console_scripts": ["tollgate = tollgate.cli:main"]},
    zip_safe=False,
)
