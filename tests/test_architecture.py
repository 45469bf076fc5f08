"""The package dependency order of DESIGN.md, enforced by import-linter; tests stay out of the wheel."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_hold():
    exe = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
    if not Path(exe).exists():
        pytest.fail("import-linter is not installed: pip install -e '.[dev]'")
    res = subprocess.run([exe, "--config", str(ROOT / "pyproject.toml")], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    kept = re.search(r"Contracts: (\d+) kept, 0 broken", res.stdout)
    assert kept and int(kept.group(1)) >= 4, res.stdout  # layering, independence, probe.testing, leaf modules


def test_probe_never_imports_other_packages_at_runtime():
    code = "import sys, probe, probe.capture, probe.store, probe.analysis; " \
           "print(sorted(m for m in ('interventions', 'train', 'apps', 'tests') if m in sys.modules))"
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "[]"
