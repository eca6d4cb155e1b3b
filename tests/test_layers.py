"""The architecture's layering, enforced by import-linter (contracts in .importlinter)."""

import shutil
import subprocess

from .conftest import ROOT


def test_import_contracts_hold():
    exe = shutil.which("lint-imports")
    assert exe, "import-linter is part of the test extra: pip install -e '.[test]'"
    r = subprocess.run([exe, "--no-cache"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 kept, 0 broken" in r.stdout
