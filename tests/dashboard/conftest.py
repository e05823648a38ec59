"""The dashboard over a school's morning (tests/dashboard/school.py), served by aiohttp's test
server on loopback, with logged-in clients per role."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from gateway.config import GatewayConfig
from gateway.dashboard.app import create_app
from gateway.dashboard.auth import RateLimit
from gateway.dashboard.state import DashboardMetrics
from gateway.ingest import Ingest
from tests.dashboard.school import (
    FAST_KDF,
    PASSWORD,
    Clock,
    Morning,
    add_users,
    at,
    hidden,
    write_config,
)

LIMIT = RateLimit(window_ms=15 * 60_000, per_user=3, per_address=10)

MakeClient = Callable[..., Awaitable[TestClient[web.Request, web.Application]]]


@pytest.fixture
def clock() -> Clock:
    return Clock(at("09:00"))


@pytest.fixture
async def morning(tmp_path: Path, clock: Clock) -> AsyncIterator[Morning]:
    """The morning's database; its ingest keeps running for the live tests."""
    m = Morning(tmp_path, write_config(tmp_path), clock)
    await m.start()
    await m.morning()
    add_users(m.config, clock())
    try:
        yield m
    finally:
        await m.close()


@pytest.fixture
async def make_client(clock: Clock) -> AsyncIterator[MakeClient]:
    """``await make_client(config, ingest=None, registry=None)``: a client of a fresh app."""
    clients: list[TestClient[web.Request, web.Application]] = []

    async def make(config: GatewayConfig, *, ingest: Ingest | None = None,
                   registry: CollectorRegistry | None = None
                   ) -> TestClient[web.Request, web.Application]:
        metrics = DashboardMetrics(registry or CollectorRegistry())
        app = create_app(config, metrics, ingest=ingest, clock=clock, kdf=FAST_KDF, limit=LIMIT)
        client = TestClient(TestServer(app))
        await client.start_server()
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


async def login(client: TestClient[web.Request, web.Application], username: str,
                password: str = PASSWORD, next_path: str = "/") -> ClientResponse:
    """Log in through the form; returns the POST's response (not followed)."""
    form = await client.get("/login")
    token = hidden(await form.text(), "login_token")
    return await client.post("/login", data={
        "username": username, "password": password, "login_token": token, "next": next_path},
        allow_redirects=False)


async def csrf(client: TestClient[web.Request, web.Application], path: str = "/") -> str:
    page = await client.get(path)
    assert page.status == 200
    return hidden(await page.text(), "csrf")
