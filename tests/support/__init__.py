"""Helpers the tests share: real parts (servers, proxies, receivers, bundles), never mocks of our stack."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]  # the repository root (tests/support -> tests -> repo)
TESTS = REPO / "tests"
