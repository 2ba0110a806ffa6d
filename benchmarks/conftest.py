"""The implementation fixture for the benchmark suites: the same selection as the
tests' (``tests/impls.py``), so compiled and pure are timed side by side and a pure
install skips the compiled cases visibly.

``pytest --benchmark-only`` from the repository root runs these suites; plain
``pytest`` (the test run) leaves them out (see ``pytest_ignore_collect``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

import impls  # noqa: E402


def pytest_addoption(parser: pytest.Parser) -> None:
    impls.add_option(parser)


def pytest_configure(config: pytest.Config) -> None:
    impls.configure(config)


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    return True if impls.leave_out(config, benchmarks=True) else None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    impls.skip_compiled_items(config, items)


@pytest.fixture(scope="session", params=impls.impl_params())
def impl(request: pytest.FixtureRequest) -> SimpleNamespace:
    """``http``, ``rpc`` and ``codec`` of one implementation; compiled imports fail loudly."""
    return impls.load_impl(request.param)
