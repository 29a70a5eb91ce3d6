"""Shared pytest configuration: hypothesis profiles and a headless matplotlib backend."""

from __future__ import annotations

import os

os.environ.setdefault("MPLBACKEND", "Agg")

from hypothesis import HealthCheck, settings

# "ci" is reproducible (derandomized) and bounded; "dev" keeps hypothesis's random search.
settings.register_profile(
    "ci",
    derandomize=True,
    deadline=None,
    max_examples=150,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_terminal_summary(terminalreporter: object) -> None:
    """The fuzz test's example counts and times (README, "Fuzzing"), when it ran."""
    import sys

    fuzz = sys.modules.get("test_fuzz")
    if fuzz is not None and fuzz.REPORT:
        terminalreporter.write_line(f"fuzz: {fuzz.report()}")  # type: ignore[attr-defined]
