"""Shared fixtures: the real MicroPython VM (``mpvm``) and real Mosquitto brokers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from sim.broker import MosquittoBroker, find_mosquitto
from tests.mpvm import MPVM, MPVMError


@pytest.fixture(scope="session")
def mpvm() -> Iterator[MPVM]:
    """Session-wide MicroPython runner: ``mpvm.run(code, files=..., heapsize=..., timeout=...)``.

    Every run gets a fresh VM with protocol/ and firmware/ copied in; see tests/mpvm/__init__.py.
    """
    vm = MPVM()
    try:
        vm.start()
    except MPVMError as exc:
        pytest.fail(f"cannot start the MicroPython VM: {exc}", pytrace=False)
    yield vm
    vm.close()


def _require_mosquitto() -> None:
    if find_mosquitto() is None:
        pytest.fail("mosquitto is not installed: run `make setup`", pytrace=False)


@pytest.fixture
def mosquitto_broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    """A fresh anonymous broker on a free 127.0.0.1 port for one test (``.host``, ``.port``)."""
    _require_mosquitto()
    with MosquittoBroker(tmp_path / "mosquitto") as broker:
        yield broker


@pytest.fixture(scope="session")
def mosquitto_broker_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MosquittoBroker]:
    """One anonymous broker shared by the whole session (use unique topics per test)."""
    _require_mosquitto()
    with MosquittoBroker(tmp_path_factory.mktemp("mosquitto")) as broker:
        yield broker
