"""The wheel: licence file, one version source, classifiers and runtime dependencies."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Iterator
from email.message import Message
from email.parser import Parser
from importlib import metadata
from pathlib import Path

import pytest

import eventmp

ROOT = Path(__file__).resolve().parent.parent

# What the build reads. The build runs on a copy of these, so it leaves no build/ or
# *.egg-info in the work tree and cannot race another build there.
SOURCES = ["pyproject.toml", "README.md", "LICENSE", "eventmp"]


def _setuptools_can_build() -> bool:
    """Whether this environment's setuptools is new enough (PEP 639 needs 77) to build offline."""
    try:
        major = int(metadata.version("setuptools").split(".")[0])
    except (metadata.PackageNotFoundError, ValueError):
        return False
    return major >= 77


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[zipfile.ZipFile]:
    """Build the wheel from a copy of the sources, as `pip wheel . --no-deps` does."""
    source = tmp_path_factory.mktemp("source")
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(path, source / name)
    out = tmp_path_factory.mktemp("wheel")
    command = [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "-q", "-w", str(out)]
    if _setuptools_can_build():
        command.append("--no-build-isolation")  # else pip fetches setuptools for the build
    result = subprocess.run(command, capture_output=True, text=True, timeout=280, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    [path] = out.glob("eventmp-*.whl")
    with zipfile.ZipFile(path) as archive:
        yield archive


def _metadata(wheel: zipfile.ZipFile) -> Message:
    [name] = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
    return Parser().parsestr(wheel.read(name).decode("utf-8"))


@pytest.mark.timeout(300)
def test_wheel_contains_the_licence(wheel: zipfile.ZipFile) -> None:
    """The wheel carries the LICENSE file, byte for byte, and names it in its metadata."""
    [name] = [n for n in wheel.namelist() if n.endswith(".dist-info/licenses/LICENSE")]
    assert wheel.read(name) == (ROOT / "LICENSE").read_bytes()
    meta = _metadata(wheel)
    assert meta["License-Expression"] == "MIT"
    assert meta.get_all("License-File") == ["LICENSE"]


@pytest.mark.timeout(300)
def test_wheel_version_is_eventmp_version(wheel: zipfile.ZipFile) -> None:
    """The metadata's Version is eventmp.__version__, the one place the version is written."""
    assert _metadata(wheel)["Version"] == eventmp.__version__
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert "version" not in pyproject["project"]
    assert "version" in pyproject["project"]["dynamic"]
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "eventmp.__version__"}


@pytest.mark.timeout(300)
def test_wheel_has_classifiers_and_urls(wheel: zipfile.ZipFile) -> None:
    """The classifiers name the Python versions, POSIX platforms and topics; no licence one."""
    meta = _metadata(wheel)
    classifiers = set(meta.get_all("Classifier") or [])
    assert {
        "Development Status :: 3 - Alpha",
        "Operating System :: POSIX",
        "Operating System :: POSIX :: Linux",
        "Operating System :: MacOS",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Programming Language :: Python :: 3.13",
        "Topic :: System :: Logging",
        "Topic :: System :: Monitoring",
        "Topic :: Software Development :: Libraries",
    } <= classifiers
    assert not [c for c in classifiers if c.startswith("License ::")]
    urls = {url.split(",")[0] for url in meta.get_all("Project-URL") or []}
    assert {"Homepage", "Source", "Changelog", "Documentation"} <= urls
    assert meta["Keywords"]


@pytest.mark.timeout(300)
def test_wheel_requires_dill_and_psutil(wheel: zipfile.ZipFile) -> None:
    """The runtime dependencies are dill and psutil, outside any extra."""
    runtime = [r for r in _metadata(wheel).get_all("Requires-Dist") or [] if "extra ==" not in r]
    assert sorted(r.split(">")[0].split("=")[0].strip() for r in runtime) == ["dill", "psutil"]
