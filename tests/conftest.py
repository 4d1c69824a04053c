"""Shared by every suite: root-only suites refuse to run (rather than skip) without root, and
lab namespaces left by an earlier run that was killed are swept away first."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

HERE = Path(__file__).parent
NEEDS_ROOT = ("netns", "e2e", "container")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        suite = Path(str(item.fspath)).relative_to(HERE).parts[0]
        if suite in NEEDS_ROOT:
            item.add_marker(pytest.mark.root)
            if suite in ("e2e", "container"):
                item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session", autouse=True)
def _lab_hygiene(request: pytest.FixtureRequest) -> None:
    roots = [item for item in request.session.items if item.get_closest_marker("root")]
    if not roots:
        return
    if os.geteuid() != 0:
        pytest.exit(
            f"{len(roots)} tests need root (network namespaces): run them as root, "
            "or only the unit tests: pytest tests/unit tests/integration",
            returncode=2,
        )
    from podlab.netns import sweep_stale

    sweep_stale()
