"""No adapter or channel follows a redirect: an upstream (or whoever answers in its place) that
answers ``302`` to another server never makes the gateway send attendance data, a token or a
parent's phone number there. The item is parked or retried, or the target is down, by the
adapter's own rules for a 3xx. Both servers are real HTTP servers on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from gateway.channels import ChannelConfig
from gateway.channels import sms as sms_channel
from gateway.channels import webhook as webhook_channel
from gateway.channels import zalo as zalo_channel
from gateway.forwarders import ForwardTarget, TargetDown
from gateway.forwarders import edfi as edfi_adapter
from gateway.forwarders import openemis as openemis_adapter
from gateway.forwarders import relay as relay_adapter
from sim.peers import LoopbackServer
from tests.gateway import test_channels, test_edfi, test_openemis, test_relay


@dataclass
class Elsewhere(LoopbackServer):
    """The server a redirect points to: it only counts what reaches it."""

    requests: list[str] = field(default_factory=list)

    def build_app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._seen)
        return app

    async def _seen(self, request: web.Request) -> web.Response:
        self.requests.append(f"{request.method} {request.path}")
        return web.json_response({"access_token": "t", "expires_in": 300,
                                  "data": {"token": "a.b.c"}, "error": 0})


@dataclass
class Redirector(LoopbackServer):
    """Answers every request with ``302`` to ``to``, except the ``canned`` paths (tokens)."""

    to: str = ""
    canned: dict[str, Any] = field(default_factory=dict)

    def build_app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._answer)
        return app

    async def _answer(self, request: web.Request) -> web.Response:
        await request.read()
        if request.path in self.canned:
            return web.json_response(self.canned[request.path])
        raise web.HTTPFound(self.to + request.path_qs)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@pytest.fixture
async def servers() -> AsyncIterator[tuple[Redirector, Elsewhere]]:
    elsewhere = await Elsewhere().start()
    try:
        async with Redirector(to=f"http://127.0.0.1:{elsewhere.port}") as redirector:
            yield redirector, elsewhere
    finally:
        await elsewhere.close()


async def test_no_adapter_follows_a_redirect(servers: tuple[Redirector, Elsewhere],
                                             tmp_path: Path) -> None:
    redirector, elsewhere = servers
    secret = tmp_path / "edfi.secret"
    secret.write_text("s3cr3t\n")
    secret.chmod(0o600)
    redirector.canned = {"/oauth/token": {"access_token": "t", "expires_in": 300},
                         "/api/login": {"data": {"token": "a.b.c"}}}
    edfi = edfi_adapter.build(test_edfi._target(redirector.url(""), secret),
                              clock=lambda: 1_772_411_400_000, timezone=test_edfi.ZONE)
    files = {"password_file": str(_secret(tmp_path, "oe.password")),
             "api_key_file": str(_secret(tmp_path, "oe.apikey")),
             "students_file": str(_students(tmp_path))}
    openemis = openemis_adapter.build(ForwardTarget("oe", "openemis", test_openemis.settings(
        redirector.url(""), files)), clock=lambda: 1_772_411_400_000)
    relay = relay_adapter.build(
        ForwardTarget("province", "relay", {"url": redirector.url("/relay"), "timeout_s": 2}),
        clock=lambda: test_relay.NOW_MS, master_key_file=tmp_path / "etc" / "master.key",
        school=test_relay.SCHOOL)
    try:
        [edfi_result] = await edfi.deliver([test_edfi.item()])
        assert edfi_result.outcome == "parked" and "302" in edfi_result.reason
        [oe_result] = await openemis.deliver([test_openemis.item(test_openemis.S0, "late")])
        assert oe_result.outcome == "parked" and "302" in oe_result.reason
        [relay_result] = await relay.deliver([test_relay.item()])
        assert relay_result.outcome == "retry" and "302" in relay_result.reason
        redirector.canned.clear()  # now the token endpoint and the login redirect too
        fresh_edfi = edfi_adapter.build(test_edfi._target(redirector.url(""), secret),
                                        clock=lambda: 1_772_411_400_000,
                                        timezone=test_edfi.ZONE)
        fresh_oe = openemis_adapter.build(ForwardTarget("oe", "openemis", test_openemis.settings(
            redirector.url(""), files)), clock=lambda: 1_772_411_400_000)
        try:
            with pytest.raises(TargetDown, match="302"):
                await fresh_edfi.deliver([test_edfi.item()])
            with pytest.raises(TargetDown, match="302"):
                await fresh_oe.deliver([test_openemis.item(test_openemis.S0, "late")])
        finally:
            await fresh_edfi.close()
            await fresh_oe.close()
    finally:
        await edfi.close()
        await openemis.close()
        await relay.close()
    assert elsewhere.requests == []


@pytest.mark.parametrize("kind", ["webhook", "sms", "zalo"])
async def test_no_channel_follows_a_redirect(servers: tuple[Redirector, Elsewhere],
                                             tmp_path: Path, kind: str) -> None:
    redirector, elsewhere = servers
    redirector.canned = {"/token": {"access_token": "a", "refresh_token": "r2",
                                    "expires_in": 3600}}
    clock = test_channels.FakeTime()
    config: ChannelConfig = {
        "webhook": lambda: test_channels.webhook_config(tmp_path, redirector.url("/hook")),
        "sms": lambda: test_channels.sms_config(tmp_path, redirector.url("/sms")),
        "zalo": lambda: ChannelConfig(name="zalo", type="zalo", settings={
            "api_url": redirector.url("/send"), "token_url": redirector.url("/token"),
            "app_id": "4321", "secret_key_file": test_channels.secret(tmp_path, "z.key", "k"),
            "refresh_token_file": test_channels.secret(tmp_path, "z.refresh", "r1"),
            "template_ids": {"check_in": "231133"}, "timeout_s": 2}),
    }[kind]()
    module = {"webhook": webhook_channel, "sms": sms_channel, "zalo": zalo_channel}[kind]
    channel = module.build(config, clock=clock.ms)
    try:
        if kind == "zalo":  # a ZNS answer without its error code: the channel is down
            with pytest.raises(TargetDown, match="302"):
                await channel.deliver([test_channels.message()])
        else:
            [result] = await channel.deliver([test_channels.message()])
            assert result.outcome == "parked" and "302" in result.reason
    finally:
        await channel.close()
    assert elsewhere.requests == []


def _secret(tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    path.write_text("secret-for-tests\n")
    path.chmod(0o600)
    return path


def _students(tmp_path: Path) -> Path:
    path = tmp_path / "students.csv"
    path.write_text("student_id,openemis_student_id\n" + "".join(
        f"{ours},{theirs}\n" for ours, theirs in test_openemis.STUDENTS.items()),
        encoding="utf-8")
    return path
