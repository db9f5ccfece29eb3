"""deploy/local/bootstrap.sh (issue 9, defect 5 and 7's python3.11-venv check), run for real in a
scratch checkout with stand-ins for uv, java, mvn and redis-server, and a pyenv-style shim."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]


def _exe(path: Path, body: str) -> Path:
    path.write_text("#!/usr/bin/env bash\n" + body)
    path.chmod(0o755)
    return path


@pytest.fixture
def checkout(tmp_path):
    """A scratch checkout: the script, a lock file, fake system tools and a fake uv that records
    its calls and makes a .venv whose python is this test's interpreter."""
    root = tmp_path / "repo"
    (root / "deploy" / "local").mkdir(parents=True)
    shutil.copy(REPO / "deploy" / "local" / "bootstrap.sh", root / "deploy" / "local" / "bootstrap.sh")
    (root / "uv.lock").write_text("version = 1\n")
    (root / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _exe(bin_dir / "java", 'echo \'openjdk version "17.0.15"\' >&2\n')
    _exe(bin_dir / "mvn", "exit 0\n")
    _exe(bin_dir / "redis-server", 'echo "Redis server v=7.0.15 sha=0"\n')
    # pyenv's shim: a script that execs the real interpreter
    shim = _exe(bin_dir / "python3.11", f'exec {sys.executable} "$@"\n')
    uv_log = tmp_path / "uv.log"
    (root / ".cache" / "bootstrap" / "bin").mkdir(parents=True)
    _exe(root / ".cache" / "bootstrap" / "bin" / "uv", f"""
if [ "$1" = --version ]; then echo "uv 0.13.9"; exit 0; fi
echo "$*" >> {uv_log}
mkdir -p .venv/bin && ln -sf {sys.executable} .venv/bin/python
""")
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "RECSTREAM_PYTHON": str(shim),
           "RECSTREAM_BOOTSTRAP_APT": "0"}
    return root, env, uv_log


def _run(root: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "deploy/local/bootstrap.sh"], cwd=root, env=env, capture_output=True, text=True,
                          timeout=120)


def _syncs(uv_log: Path) -> list[str]:
    return uv_log.read_text().splitlines() if uv_log.exists() else []


def test_a_second_run_with_nothing_changed_does_not_sync(checkout):
    root, env, uv_log = checkout
    first = _run(root, env)
    assert first.returncode == 0, first.stderr
    assert len(_syncs(uv_log)) == 1
    second = _run(root, env)
    assert second.returncode == 0, second.stderr
    assert len(_syncs(uv_log)) == 1, "synced again although uv.lock and pyproject.toml did not change"
    assert "up to date" in second.stdout


def test_uv_gets_the_real_interpreter_not_the_shim(checkout):
    """uv compared the shim's path with the venv's base interpreter, found no match and deleted
    and recreated .venv on every make target."""
    root, env, uv_log = checkout
    assert _run(root, env).returncode == 0
    [call] = _syncs(uv_log)
    assert f"--python {sys.executable}" in call and env["RECSTREAM_PYTHON"] not in call


@pytest.mark.parametrize("change", ["uv.lock", "pyproject.toml", "venv removed"])
def test_a_changed_lock_or_a_missing_venv_syncs_again(checkout, change):
    root, env, uv_log = checkout
    assert _run(root, env).returncode == 0
    if change == "venv removed":
        shutil.rmtree(root / ".venv")
    else:
        (root / change).write_text((root / change).read_text() + "# changed\n")
    assert _run(root, env).returncode == 0
    assert len(_syncs(uv_log)) == 2


def test_a_python_without_ensurepip_gets_the_debian_package_named(checkout, tmp_path):
    root, env, _ = checkout
    shutil.rmtree(root / ".cache")  # uv not installed yet: the script must make its own venv
    # Debian's python3.11 without python3.11-venv: a real interpreter (it is its own
    # sys.executable) that has no ensurepip module
    no_venv = _exe(tmp_path / "bin" / "python3.11-noensurepip", f"""
for a in "$@"; do case "$a" in
  *sys.executable*) echo "$0"; exit 0;;
  *ensurepip*) echo "ModuleNotFoundError: No module named 'ensurepip'" >&2; exit 1;;
esac; done
exec {sys.executable} "$@"
""")
    out = _run(root, {**env, "RECSTREAM_PYTHON": str(no_venv)})
    assert out.returncode != 0
    assert "apt-get install python3.11-venv" in out.stderr
    assert not (root / ".cache" / "bootstrap").exists()


def test_a_wrong_python_version_is_named(checkout, tmp_path):
    root, env, _ = checkout
    py39 = _exe(tmp_path / "bin" / "python3.9", "exit 1\n")
    out = _run(root, {**env, "RECSTREAM_PYTHON": str(py39)})
    assert out.returncode != 0 and "needs Python 3.11" in out.stderr
