"""Build Tollgate: the Python packages plus the compiled forms of the fastpath modules.

Each ``fastpath/<name>.pxd`` names a module compiled with Cython into
``fastpath._compiled.<name>``: from ``fastpath/<name>.pyx`` when there is one (C-level code; the
``.py`` beside it is its interpreted twin), else from ``fastpath/<name>.py`` itself (pure-Python
mode).  Each ``gateway/**/<name>.py`` with a ``.pxd`` beside it is compiled in place (see
gateway/__init__.py for how its interpreted form is chosen).

``fastpath.http1`` is compiled with llhttp's C sources, the very version httptools (its
interpreted twin) ships: they are taken from httptools' source distribution on PyPI, fetched
with pip into ``build/`` and checked against a pinned SHA-256; nothing of llhttp is kept in this
repository.

The build never fails for want of a compiler, of Cython or of llhttp's sources: Tollgate then
runs on the interpreted forms (``fastpath.IMPLEMENTATION == "pure"``), and says so.
``TOLLGATE_NO_EXTENSIONS=1`` skips the compilation on purpose.
"""
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).parent

#: llhttp comes from this source distribution (the version httptools, the twin, is pinned to)
LLHTTP_FROM = ("httptools", "0.9.0", "d484ebb7e3a3f3597b0f645fbd1b85633674ca808c1f5ba11c2caf7c66f5c8b6")
LLHTTP_DIR = HERE / "build" / f"llhttp-from-{LLHTTP_FROM[0]}-{LLHTTP_FROM[1]}"
LLHTTP_SOURCES = ("api.c", "http.c", "llhttp.c")


def llhttp():
    """The include directory and C sources of llhttp, fetched once into build/; or None."""
    include, src = LLHTTP_DIR / "include", LLHTTP_DIR / "src"
    if not (include / "llhttp.h").exists() or not all((src / n).exists() for n in LLHTTP_SOURCES):
        try:
            _fetch_llhttp()
        except Exception as exc:   # offline, no pip...: the interpreted forms serve
            print(f"tollgate: llhttp's sources are not available ({exc}); fastpath runs "
                  "interpreted", file=sys.stderr)
            return None
    return include, [str((src / n).relative_to(HERE)) for n in LLHTTP_SOURCES]


def _fetch_llhttp():
    name, version, sha256 = LLHTTP_FROM
    downloads = HERE / "build" / "sdists"
    downloads.mkdir(parents=True, exist_ok=True)
    archive = downloads / f"{name}-{version}.tar.gz"
    if not archive.exists():
        # pip honours the machine's index configuration (mirrors, certificates)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary",
                        ":all:", "-d", str(downloads), f"{name}=={version}"],
                       check=True, stdout=subprocess.DEVNULL)
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    if digest != sha256:
        archive.unlink()
        raise RuntimeError(f"{archive.name}: sha256 {digest}, expected {sha256}")
    prefix = f"{name}-{version}/vendor/llhttp/"
    staging = LLHTTP_DIR.with_name(LLHTTP_DIR.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            if member.isfile() and member.name.startswith(prefix):
                relative = member.name[len(prefix):]
                if relative.startswith(("include/", "src/")) or relative.startswith("LICENSE"):
                    target = staging / relative
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(tar.extractfile(member).read())
    shutil.rmtree(LLHTTP_DIR, ignore_errors=True)
    staging.rename(LLHTTP_DIR)


def fastpath_extensions():
    if os.environ.get("TOLLGATE_NO_EXTENSIONS", "").strip() not in ("", "0"):
        return []
    try:
        from Cython.Build import cythonize
        from setuptools import Extension
    except ImportError:
        print("tollgate: Cython is not installed; fastpath runs interpreted", file=sys.stderr)
        return []
    found = llhttp()
    if found is None:
        return []
    include, llhttp_sources = found
    options = {"include_dirs": [str(include.relative_to(HERE))], "extra_compile_args": ["-O2"]}
    extensions = []
    for pxd in sorted((HERE / "fastpath").glob("*.pxd")):
        # Cython finds a module's .pxd by the module's name, not beside its source: the typing
        # of fastpath/<name>.pxd reaches fastpath._compiled.<name> only from a copy there.
        typed = HERE / "fastpath" / "_compiled" / pxd.name
        if not typed.exists() or typed.read_bytes() != pxd.read_bytes():
            shutil.copyfile(pxd, typed)
        pyx = pxd.with_suffix(".pyx")
        if pyx.exists():      # C-level code with an interpreted twin (fastpath.http1: llhttp)
            sources = [f"fastpath/{pyx.name}"] + (llhttp_sources if pxd.stem == "http1" else [])
        else:
            sources = [f"fastpath/{pxd.stem}.py"]
        extensions.append(Extension(f"fastpath._compiled.{pxd.stem}", sources, **options))
    # The data plane's protocol and pipeline classes (they do I/O, so they are not fastpath)
    # compile in place; gateway/__init__.py loads their sources instead when running interpreted.
    for pxd in sorted((HERE / "gateway").rglob("*.pxd")):
        module = pxd.relative_to(HERE).with_suffix("")
        extensions.append(Extension(".".join(module.parts), [str(module) + ".py"], **options))
    if _all_c_current(extensions):
        # nothing to translate: cythonize would translate most modules again anyway, because
        # pip's fresh build environment gives Cython's own .pxd files new times on each install
        for ext in extensions:
            ext.sources[0] = str(Path(ext.sources[0]).with_suffix(".c"))
        return extensions
    try:
        return cythonize(extensions, language_level=3, quiet=True,
                         compiler_directives={"boundscheck": False, "wraparound": False,
                                              "cdivision": True, "embedsignature": True})
    except Exception as exc:  # a Cython error must not make Tollgate uninstallable
        print(f"tollgate: Cython failed ({exc}); everything runs interpreted", file=sys.stderr)
        return []


def _all_c_current(extensions):
    """Every C file was made by this Cython after its source and the .pxd files of ours it
    depends on (Cython's dependency tree, without Cython's own files) last changed."""
    import Cython
    from Cython.Build.Dependencies import create_dependency_tree
    tree = create_dependency_tree()
    root = HERE.resolve()
    for ext in extensions:
        source = ext.sources[0]
        c_file = HERE / Path(source).with_suffix(".c")
        if not c_file.exists():
            return False
        with open(c_file, "rb") as f:
            if f"Generated by Cython {Cython.__version__} ".encode() not in f.readline():
                return False
        ours = [Path(d) for d in tree.all_dependencies(source)
                if Path(d).resolve().is_relative_to(root)]
        if c_file.stat().st_mtime < max(p.stat().st_mtime for p in [HERE / source, *ours]):
            return False
    return True


class OptionalBuildExt(build_ext):
    """Compile what can be compiled; a failure leaves the interpreted forms in charge."""

    def run(self):
        try:
            super().run()
        except Exception as exc:  # no compiler, no headers: still a working install
            print(f"tollgate: fastpath not compiled ({exc}); running interpreted", file=sys.stderr)

    def build_extension(self, ext):
        built = _built_in_tree(ext)
        if built is not None:
            # an unchanged tree is not compiled again (pip runs the whole build on every
            # `pip install -e .`): the module built in place is newer than its C source, which
            # cythonize regenerated above if the .py or any .pxd it depends on changed
            target = Path(self.get_ext_fullpath(ext.name))
            if target.resolve() != built.resolve():
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(built, target)
            return
        try:
            super().build_extension(ext)
        except Exception as exc:
            print(f"tollgate: {ext.name} not compiled ({exc})", file=sys.stderr)


def _built_in_tree(ext):
    """The compiled module of ``ext`` already in the source tree, if it is newer than its C
    source and that C source is newer than its Cython source; else None."""
    from importlib.machinery import EXTENSION_SUFFIXES
    c_source = HERE / ext.sources[0]
    stem = HERE / ext.name.replace("._compiled.", ".").replace(".", "/")
    py_source = stem.with_suffix(".pyx") if stem.with_suffix(".pyx").exists() else stem.with_suffix(".py")
    if c_source.suffix != ".c" or not c_source.exists() or not py_source.exists():
        return None
    base = HERE / ext.name.replace(".", "/")
    for suffix in EXTENSION_SUFFIXES[:1]:      # the interpreter's own ABI tag
        built = base.with_name(base.name + suffix)
        if (built.exists() and built.stat().st_mtime >= c_source.stat().st_mtime
                and c_source.stat().st_mtime >= py_source.stat().st_mtime):
            return built
    return None


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
        "httptools==0.9.0",     # the interpreted twin of fastpath.http1: the same llhttp
        "msgspec>=0.18",
        "prometheus-client>=0.20",
        "PyYAML>=6.0",
        "cryptography>=41",     # certificates: expiry, key/certificate match, errors by field
        "pyjwt>=2.8",           # IAM tokens (X-Auth-Token): JWT decoding and claim checks
        # custom authorizers over HTTP and JWK set fetches: an async client with pools and
        # timeouts (h11 parses; the proxy's own upstream code is built for streaming, not calls)
        "httpx>=0.27",
        # throttles shared by the gateways of a cluster: asyncio client, EVALSHA scripts
        "redis>=5",
        # the control plane's store on PostgreSQL (several control planes on one database):
        # asyncio-native, pools, LISTEN/NOTIFY for publishes
        "asyncpg>=0.29",
        # the control plane's REST admin: an ASGI app (routing, streaming request bodies,
        # lifespan) served by uvicorn on uvloop, the event loop the data plane already uses
        "starlette>=0.37",
        "uvicorn>=0.29",
    ],
    extras_require={
        # websockets: the WebSocket client and backend of the tunnel tests
        "test": ["pytest>=8", "pytest-timeout>=2.3", "hypothesis>=6.100", "Cython>=3.0",
                 "locust>=2.20", "websockets>=13",
                 # the control plane's OpenAPI document is checked against its own resources
                 "jsonschema>=4.18",
                 # fuzzing the control plane's REST app from its own OpenAPI document
                 "schemathesis>=3.30",
                 # the vendor's signer: clients of APP-auth APIs sign with it (the reference)
                 "huaweicloudsdkcore>=3.1.219"],
        "load": ["locust>=2.20"],
    },
    entry_points={"console_scripts": ["tollgate = tollgate.cli:main"]},
    zip_safe=False,
)
