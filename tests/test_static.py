"""Names that do not exist fail here, not in production: a helper lost in a
refactor once turned a GPU fault handler into a NameError that killed the
engine's step thread (and hung a test until CI's limit)."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# undefined names, redefinitions, assigned-but-unused locals, syntax errors, misused comparisons and statements
RULES = "F821,F811,F823,F841,E9,F63,F7"


def test_no_undefined_names_or_syntax_errors():
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if ruff is None:
        pytest.fail("ruff is not installed (it is in the dev extra: pip install -e '.[dev]')")
    proc = subprocess.run([ruff, "check", "--no-cache", "--output-format", "concise", "--select", RULES,
                           "swiftinfer_core", "deployments", "tests", "cluster"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
