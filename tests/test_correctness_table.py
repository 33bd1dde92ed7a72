"""`scripts/correctness_table.py` turns the suite's printed measured errors into the README's table."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "correctness_table.py"


def test_the_table_holds_what_a_pytest_run_measured():
    result = subprocess.run([sys.executable, str(SCRIPT), "--pytest-args",
                             "tests/training/test_losses.py -k release_formulation -p no:cacheprovider"],
                            cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert lines[:2] == ["| comparison | measured | tolerance |", "|---|---|---|"]
    assert len(lines) == 3 and lines[2].startswith("| attention loss vs release-style float64 loop | "), lines
    measured, tolerance = (float(cell) for cell in lines[2].strip("| ").split(" | ")[1:])
    assert 0 <= measured <= tolerance == 1e-6


def test_an_output_without_measurements_is_an_error(tmp_path):
    saved = tmp_path / "out.txt"
    saved.write_text("...\n1 passed in 0.1s\n")
    result = subprocess.run([sys.executable, str(SCRIPT), str(saved)], capture_output=True, text=True)
    assert result.returncode == 1 and "no 'measured errors' section" in result.stderr
