"""Hypothesis profiles for the whole suite.

- ``derandomized``: loaded when the environment says ``CI=true`` (as the CI runner does): every
  property test draws the same examples on every run and machine, and no example database is
  read or written, so a CI result does not depend on earlier runs;
- ``random``: loaded otherwise, and for the long campaign (``HYPOTHESIS_PROFILE=fuzz``, ``make
  fuzz``): new examples each run, so running the suite keeps exploring.

``HYPOTHESIS_PROFILE`` names the fuzz tests' case count (tests/test_fuzz.py); it does not switch
randomness on under CI unless it is ``fuzz``.
"""

from __future__ import annotations

import os

from hypothesis import settings

CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
FUZZ = os.environ.get("HYPOTHESIS_PROFILE") == "fuzz"
DERANDOMIZE = CI and not FUZZ

settings.register_profile("derandomized", derandomize=True, database=None)
settings.register_profile("random", derandomize=False)
settings.load_profile("derandomized" if DERANDOMIZE else "random")
