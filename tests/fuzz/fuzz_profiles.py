"""Hypothesis settings shared by the fuzz targets.

In the normal suite each target runs a bounded number of examples (fast);
`make fuzz` sets PYSMTPD_FUZZ=long for a release-sized run.  Profiles are
applied per test (never loaded globally) so they do not change other tests.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

_COMMON = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow],
           "derandomize": False}
settings.register_profile("pysmtpd-suite", max_examples=150, **_COMMON)  # type: ignore[arg-type]
settings.register_profile("pysmtpd-long", max_examples=20000, **_COMMON)  # type: ignore[arg-type]


def fuzz_settings(scale: float = 1.0) -> settings:
    """The settings for one target; `scale` weights a slow target down."""
    name = "pysmtpd-long" if os.environ.get("PYSMTPD_FUZZ") == "long" else "pysmtpd-suite"
    profile = settings.get_profile(name)
    return settings(profile, max_examples=max(10, int(profile.max_examples * scale)))
