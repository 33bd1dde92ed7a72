"""The README's "Correctness" table, from the measured errors the test suite prints.

    python scripts/correctness_table.py                      # runs `pytest` (the default suite), then prints the table
    python scripts/correctness_table.py pytest-output.txt    # reads a saved `pytest` output instead
    COMFYUI_PATH=/path/to/ComfyUI python scripts/correctness_table.py   # adds the comparisons inside ComfyUI

Every numeric comparison in the tests records `(name, measured, tolerance)` (`tests/support.measured`), and
`pytest` prints them at the end under "measured errors". The table is made from those lines, so the README
quotes what the suite measured, not numbers copied by hand.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SECTION = re.compile(r"^=+ measured errors .*=+$")
NUMBER = r"[-+]?\d+(?:\.\d+)?(?:e[-+]\d+)?"
ROW = re.compile(rf"^(?P<name>.+?)\s+(?P<value>{NUMBER})\s+\(tolerance (?P<tolerance>{NUMBER})\)$")


def measured_rows(text: str) -> list:
    """(name, measured, tolerance) for every line of pytest's "measured errors" section, in suite order."""
    rows, inside = [], False
    for line in text.splitlines():
        if SECTION.match(line.strip()):
            inside = True
            continue
        if inside:
            if line.startswith("="):  # the next section
                break
            match = ROW.match(line.strip())
            if match:
                rows.append((match["name"], float(match["value"]), float(match["tolerance"])))
    return rows


def tolerance_text(tolerance: float) -> str:
    """`1e-05` for powers of ten below 0.01, `0.85` otherwise (never a rounded-off tolerance)."""
    short = f"{tolerance:.0e}"
    return short if tolerance <= 1e-3 and float(short) == tolerance else f"{tolerance:g}"


def markdown_table(rows: list) -> str:
    lines = ["| comparison | measured | tolerance |", "|---|---|---|"]
    lines += [f"| {name.replace('|', '/')} | {value:.1e} | {tolerance_text(tolerance)} |"
              for name, value, tolerance in rows]
    return "\n".join(lines)


def run_pytest(extra: list) -> str:
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", *extra], cwd=REPO, capture_output=True, text=True)
    if result.returncode != 0:
        sys.stderr.write(result.stdout[-4000:] + result.stderr[-2000:])
        raise SystemExit(f"pytest failed (exit {result.returncode}): no table from a failing suite")
    return result.stdout


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", nargs="?", help="a saved pytest output (default: run pytest now)")
    parser.add_argument("--pytest-args", default="", help="extra pytest arguments, e.g. '-m \"slow or not slow\"'")
    args = parser.parse_args(argv)
    import shlex

    text = Path(args.output).read_text() if args.output else run_pytest(shlex.split(args.pytest_args))
    rows = measured_rows(text)
    if not rows:
        print("error: no 'measured errors' section in the pytest output", file=sys.stderr)
        return 1
    print(markdown_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
