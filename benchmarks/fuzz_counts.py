"""Run the fuzz targets (tests/test_fuzz.py) with more cases than CI does, and report how many
cases each target tried, how they ended, and how long the run took.

CI runs a moderate number of cases per target so that the file stays under a minute and a
half; this script is for the README's figures and for a deeper search before a release:

    python benchmarks/fuzz_counts.py [--examples N] [--seed S] [--json FILE]

It runs pytest on tests/test_fuzz.py in a child process with COOLCTL_FUZZ_EXAMPLES=N (cases
per target) and reads back the per-target counts the test module writes. Exit status is
pytest's: non-zero if any target found a problem (hypothesis prints the falsifying input).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=1000, help="cases per target")
    parser.add_argument("--seed", type=int, help="hypothesis seed (default: random)")
    parser.add_argument("--json", type=Path, help="also write the counts here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        report = Path(folder) / "counts.json"
        env = {
            **os.environ,
            "COOLCTL_FUZZ_EXAMPLES": str(args.examples),
            "COOLCTL_FUZZ_REPORT": str(report),
        }
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
        if args.seed is not None:
            command.append(f"--hypothesis-seed={args.seed}")
        command += [str(REPO / "tests" / "test_fuzz.py"), "-k", "test_fuzz_"]
        started = time.monotonic()
        # Not from the repository: `python -m` puts the working directory first on sys.path,
        # where coolctl/ would hide the installed package's drivers and simulators.
        result = subprocess.run(command, cwd=folder, env=env, check=False)
        elapsed = time.monotonic() - started
        counts = json.loads(report.read_text()) if report.exists() else {}

    print(f"\nfuzz targets, {args.examples} cases asked per target, {elapsed:.0f} s in all:")
    print(f"| {'target':<36} | {'cases':>6} | outcomes |")
    print(f"|{'-' * 38}|{'-' * 8}|----------|")
    for target, entry in counts.items():
        outcomes = ", ".join(
            f"{name} {count}"
            for name, count in sorted(entry["outcomes"].items(), key=lambda item: -item[1])[:6]
        )
        print(f"| {target:<36} | {entry['cases']:>6} | {outcomes} |")
    total = sum(entry["cases"] for entry in counts.values())
    print(f"| {'total':<36} | {total:>6} | |")
    if args.json:
        args.json.write_text(json.dumps(counts, indent=2))
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
