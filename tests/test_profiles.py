"""The hypothesis profile of tests/conftest.py: derandomized under CI=true, random otherwise and for ``make fuzz``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent


@pytest.mark.parametrize("env, derandomized", [
    ({"CI": "true"}, True),
    ({"CI": "true", "HYPOTHESIS_PROFILE": "fuzz"}, False),
    ({}, False),
])
def test_profile_follows_the_environment(env, derandomized):
    clean = {k: v for k, v in os.environ.items() if k not in ("CI", "HYPOTHESIS_PROFILE")}
    out = subprocess.run([sys.executable, "-c", "import conftest, hypothesis; "
                          "s = hypothesis.settings.default; print(s.derandomize, s.database is None)"],
                         cwd=TESTS, env={**clean, **env}, capture_output=True, text=True, check=True).stdout.split()
    assert out[0] == str(derandomized)
    if derandomized:
        assert out[1] == "True"   # no example database read or written
