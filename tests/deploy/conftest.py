"""Fixtures of the deploy suite. The tools are installed by `make deploy-tools`; the tests install nothing."""

from __future__ import annotations

import pytest

from tests.deploy.render import SHARED_DIR, helm_bin


@pytest.fixture(scope="session")
def helm() -> str:
    path = helm_bin()
    if path is None:
        pytest.fail("helm not found: run `make deploy-tools` (installs helm into ./.tools/bin)")
    return path


@pytest.fixture(scope="session")
def shared_dir():
    if not (SHARED_DIR / "schemas").is_dir():
        pytest.fail(f"{SHARED_DIR}/schemas is missing: the deploy tests need ../shared beside the repository")
    return SHARED_DIR
