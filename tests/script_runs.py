"""The repository's scripts (train.py, benchmarks/*.py) run as a user runs them: a fresh interpreter, from the root."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_script(script: str, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
  """`python script args...` (script relative to the repository root) from the root; output captured, no raise."""
  return subprocess.run([sys.executable, os.path.join(ROOT, script), *args], cwd=ROOT, capture_output=True, text=True,
                        check=False, timeout=timeout)
