"""What an installed copy holds: one top-level import name, the shipped weights, and a
command line that does not depend on the current directory."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    out = tmp_path_factory.mktemp("wheel")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (path,) = out.glob("harstream-*.whl")
    return zipfile.ZipFile(path)


def test_the_wheel_installs_only_the_harstream_package(wheel):
    tops = {name.split("/")[0] for name in wheel.namelist()}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"harstream"}
    names = set(wheel.namelist())
    for package in ("models", "stream", "replay", "dashboard"):
        assert f"harstream/{package}/__init__.py" in names
    assert any(n.startswith("harstream/models/weights/har-cnn/") for n in names)
    for page in (ROOT / "dashboard" / "static").iterdir():  # the page works from an install
        assert f"harstream/dashboard/static/{page.name}" in names


def test_every_source_package_is_in_the_wheel(wheel):
    names = set(wheel.namelist())
    for folder, package in (
        ("harstream", "harstream"),
        ("models", "harstream/models"),
        ("stream", "harstream/stream"),
        ("replay", "harstream/replay"),
        ("dashboard", "harstream/dashboard"),
    ):
        for init in (ROOT / folder).rglob("__init__.py"):
            inner = init.relative_to(ROOT / folder).as_posix()
            assert f"{package}/{inner}" in names, f"{folder}/{inner} is not packaged"


def test_help_lists_every_command_beside_files_named_like_the_folders(tmp_path):
    for name in ("stream.py", "models.py", "replay.py", "dashboard.py"):
        (tmp_path / name).write_text("raise SystemExit('the wrong module was imported')\n")
    done = subprocess.run(
        [sys.executable, "-m", "harstream", "--help"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    for command in (
        "train",
        "evaluate",
        "serve",
        "summary",
        "replay",
        "simulate",
        "demo",
        "dashboard",
        "bench",
    ):
        assert f"    {command} " in done.stdout, command
