"""A longer, random fuzz run of the API: the property tests with many more examples.

    python -m bench.fuzz [--examples 3000] [pytest arguments...]

The test suite's Hypothesis profile is derandomised and small (the same 100 examples on every
run, so CI cannot pass or fail by luck); this runs the same tests (`tests/test_fuzz.py` and the
OpenAI facade's property test) under the `fuzz` profile: fresh random examples, 3,000 per test
by default. Prints the pytest summary; a failure shows the shrunk example and how to replay it.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TESTS = [
    "tests/test_fuzz.py",
    "tests/test_openai_facade.py::test_random_requests_never_fail_the_server",
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=3000, help="examples per test")
    args, rest = parser.parse_known_args()
    env = {
        **os.environ,
        "HYPOTHESIS_PROFILE": "fuzz",
        "REELSERVE_FUZZ_EXAMPLES": str(args.examples),
    }
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *TESTS, *rest]
    return subprocess.call(command, cwd=ROOT, env=env)


if __name__ == "__main__":
    sys.exit(main())
