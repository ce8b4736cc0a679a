"""The built wheel: signed_bus only, one version, the console script, the bench extra.

The wheel is built from a copy of the sources in a temporary directory (setuptools reuses a
build/ directory it finds, which could carry files of an earlier build into the wheel).
"""

from __future__ import annotations

import email.parser
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import signed_bus

REPO = Path(__file__).resolve().parents[2]
# what the wheel is built from, plus the reference agents that must stay out of it
SOURCES = ("pyproject.toml", "README.md", "LICENSE", "signed_bus", "producers", "consumers")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    root = tmp_path_factory.mktemp("wheel")
    source, out = root / "src", root / "dist"
    source.mkdir()
    for name in SOURCES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(path, source / name)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--disable-pip-version-check",
            "-q",
            "-w",
            str(out),
            str(source),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    (path,) = out.glob("signed_bus-*.whl")
    return zipfile.ZipFile(path)


def dist_info(wheel: zipfile.ZipFile) -> str:
    return f"signed_bus-{signed_bus.__version__}.dist-info/"


def test_the_wheel_holds_signed_bus_only(wheel: zipfile.ZipFile) -> None:
    names = wheel.namelist()
    strays = [name for name in names if not name.startswith(("signed_bus/", dist_info(wheel)))]
    assert strays == []
    assert (REPO / "producers").is_dir() and (REPO / "consumers").is_dir()  # still in the repo
    for required in (
        "signed_bus/__init__.py",
        "signed_bus/__main__.py",
        "signed_bus/_cli/__init__.py",
        "signed_bus/_keyfile.py",
        "signed_bus/bench/command.py",
        "signed_bus/py.typed",
    ):
        assert required in names


def test_the_version_is_written_once(wheel: zipfile.ZipFile) -> None:
    metadata = email.parser.Parser().parsestr(wheel.read(dist_info(wheel) + "METADATA").decode())
    assert metadata["Version"] == signed_bus.__version__
    pyproject = (REPO / "pyproject.toml").read_text()
    assert f'"{signed_bus.__version__}"' not in pyproject


def test_metadata_entry_point_and_bench_extra(wheel: zipfile.ZipFile) -> None:
    metadata = email.parser.Parser().parsestr(wheel.read(dist_info(wheel) + "METADATA").decode())
    assert metadata["Author"] == "signed-bus developers"
    assert metadata["License-Expression"] == "Apache-2.0"
    assert metadata.get_all("Classifier") and metadata["Keywords"]
    assert "bench" in (metadata.get_all("Provides-Extra") or [])
    requires = metadata.get_all("Requires-Dist") or []
    for name in ("matplotlib", "standardwebhooks", "pyinstrument"):
        (line,) = [line for line in requires if line.startswith(name)]
        assert 'extra == "bench"' in line  # never a runtime dependency
    entry_points = wheel.read(dist_info(wheel) + "entry_points.txt").decode()
    assert "signed-bus = signed_bus._cli:main" in entry_points
