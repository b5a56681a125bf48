"""Hypothesis profiles: `ci` replays the same examples on every run (a red CI is reproducible
and a green one does not turn red by chance); the default explores new examples each run.

Choose one with SKMM_HYPOTHESIS_PROFILE (`.ci/run` sets `ci`); `make fuzz` explores with
fresh seeds.
"""

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, print_blob=True)
settings.load_profile(os.environ.get("SKMM_HYPOTHESIS_PROFILE", "default"))
