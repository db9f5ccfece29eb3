"""The layers of DESIGN.md's layout table, checked by import-linter (issue 21): the contracts
are in pyproject.toml's [tool.importlinter]; this runs `lint-imports` in `make test`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(LINT_IMPORTS), "--no-cache", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


def test_the_import_contracts_hold():
    out = _lint()
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert "0 broken" in out.stdout, out.stdout[-4000:]


def test_a_broken_contract_fails_the_run(tmp_path):
    """The checker itself can fail: a contract the code breaks (services imports features) is reported."""
    config = tmp_path / "broken.toml"
    config.write_text('[tool.importlinter]\nroot_packages = ["services", "features"]\n\n'
                      '[[tool.importlinter.contracts]]\nname = "services must not import features"\n'
                      'type = "forbidden"\nsource_modules = ["services"]\nforbidden_modules = ["features"]\n')
    out = _lint("--config", str(config))
    assert out.returncode != 0 and "BROKEN" in out.stdout, out.stdout[-4000:]
