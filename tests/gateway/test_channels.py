"""The parent-notification channels against real local peers (sim/peers/webhook.py, zalo.py,
tests/peers/sms.py) and a real hook executable.

Time is injected: the channels' clock (Unix ms) and the peers' clocks (seconds) are one
FakeTime, moved by the tests. Every test also checks that nothing it logged holds a phone
number or a student's name.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import sys
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import httpx
import pytest

from gateway.channels import ChannelConfig, Message, NotificationKind
from gateway.channels import command as command_channel
from gateway.channels import sms as sms_channel
from gateway.channels import webhook as webhook_channel
from gateway.channels import zalo as zalo_channel
from gateway.channels.webhook import WebhookVerificationError, sign, verify_webhook
from gateway.config import ConfigError
from gateway.forwarders import DeliveryResult, TargetDown
from sim.peers.webhook import Fault as HookFault
from sim.peers.webhook import WebhookPeer
from sim.peers.zalo import Fault as ZaloFault
from sim.peers.zalo import ZaloPeer
from tests.gateway.oversized import OversizedPeer
from tests.log_text import logged_text
from tests.peers.sms import SmsPeer

NAME = "Nguyễn Văn An"
PHONE = "84912345678"
LOCAL_PHONE = "0912 345 678"  # the same number as a parent types it
SECRET_A = "whsec_" + base64.b64encode(b"A" * 32).decode()
SECRET_B = "whsec_" + base64.b64encode(b"B" * 32).decode()


class FakeTime:
    def __init__(self) -> None:
        self.now_ms = 1_772_411_400_000  # 2026-03-02 07:30 +07

    def ms(self) -> int:
        return self.now_ms

    def s(self) -> float:
        return self.now_ms / 1000

    def advance(self, seconds: float) -> None:
        self.now_ms += int(seconds * 1000)


class Closable(Protocol):
    async def close(self) -> None: ...


@pytest.fixture
def clock() -> FakeTime:
    return FakeTime()


@pytest.fixture(autouse=True)
def no_personal_data_logged(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    caplog.set_level(logging.DEBUG)
    yield
    text = logged_text(caplog.records)
    for secret in (NAME, PHONE, "912345678", "912 345 678", SECRET_A[6:], "sms-token"):
        assert secret not in text


@pytest.fixture
async def closing() -> AsyncIterator[list[Closable]]:
    made: list[Closable] = []
    yield made
    for channel in made:
        await channel.close()


def secret(tmp_path: Path, name: str, value: str, mode: int = 0o600) -> str:
    path = tmp_path / name
    path.write_text(value + "\n", encoding="utf-8")
    path.chmod(mode)
    return str(path)


_ids = iter(range(1, 1_000_000))


def message(*, phone: str | None = PHONE, kind: NotificationKind = "check_in",
            template_id: str | None = None, event: dict[str, Any] | None = None) -> Message:
    n = next(_ids)
    return Message(
        item_id=n, message_id=f"m{n:06d}deadbeef", kind=kind, locale="vi",
        text=f"Em {NAME} đã đến trường lúc 07:02 (cổng chính).", phone=phone,
        template_id=template_id,
        template_data={"student_name": NAME, "time": "07:02", "gate": "cổng chính"},
        event=event or {"kind": kind, "at": "2026-03-02T07:02:00+07:00", "gate": "main"})


def outcomes(results: Sequence[DeliveryResult]) -> list[str]:
    return [r.outcome for r in results]


# --- webhook -------------------------------------------------------------------------------------

def webhook_config(tmp_path: Path, url: str, **settings: Any) -> ChannelConfig:
    base: dict[str, Any] = {"url": url, "secret_file": secret(tmp_path, "hook.key", SECRET_A),
                            "timeout_s": 2}
    base.update(settings)
    return ChannelConfig(name="hook", type="webhook", settings=base)


async def test_webhook_signed_verified_and_rotated(tmp_path: Path, clock: FakeTime,
                                                   closing: list[Closable]) -> None:
    async with WebhookPeer(secrets=[SECRET_B], clock=clock.s) as peer:
        # The channel signs with the old and the new secret; the receiver knows the new only.
        config = webhook_config(tmp_path, peer.url,
                                extra_secret_files=[secret(tmp_path, "new.key", SECRET_B)])
        channel = webhook_channel.build(config, clock=clock.ms)
        closing.append(channel)
        batch = [message() for _ in range(3)]
        results = await channel.deliver(batch)
        assert outcomes(results) == ["delivered"] * 3
        assert set(peer.stored) == {m.message_id for m in batch}
        stored = peer.stored[batch[0].message_id]
        assert stored["kind"] == "check_in" and stored["text"] == batch[0].text
        assert stored["event"]["gate"] == "main" and "phone" not in stored  # off by default

        trusted = webhook_channel.build(
            webhook_config(tmp_path, peer.url, secret_file=secret(tmp_path, "b", SECRET_B),
                           include_phone=True), clock=clock.ms)
        closing.append(trusted)
        one = message()
        assert outcomes(await trusted.deliver([one])) == ["delivered"]
        assert peer.stored[one.message_id]["phone"] == PHONE

        # A retry of a delivered message: the receiver dedups on webhook-id.
        assert outcomes(await channel.deliver([batch[0]])) == ["delivered"]
        assert peer.duplicates == 1 and len(peer.stored) == 4


async def test_webhook_receiver_refuses_stale_and_tampered(tmp_path: Path, clock: FakeTime,
                                                           closing: list[Closable]) -> None:
    async with WebhookPeer(secrets=[SECRET_A], clock=clock.s) as peer:
        key = webhook_channel.secret_key(SECRET_A)
        body = b'{"message_id":"m1","text":"hello"}'
        now = int(clock.s())
        async with httpx.AsyncClient() as http:
            async def post(stamp: int, content: bytes, signed: bytes = body) -> int:
                headers = {"webhook-id": "m1", "webhook-timestamp": str(stamp),
                           "webhook-signature": sign([key], "m1", stamp, signed)}
                response = await http.post(peer.url, content=content, headers=headers)
                return response.status_code

            assert await post(now - 600, body) == 401  # stale (replayed) timestamp
            assert await post(now + 600, body) == 401  # from the future
            assert await post(now, body.replace(b"hello", b"hel1o")) == 401  # tampered body
            assert await post(now, body) == 200
            missing = await http.post(peer.url, content=body, headers={"webhook-id": "m2"})
            assert missing.status_code == 401
        assert peer.refused() == ["stale_timestamp", "stale_timestamp",
                                  "no_matching_signature", "missing_header"]
        assert list(peer.stored) == ["m1"]

        # A sender whose clock is 10 minutes off is refused: parked with the status.
        skewed = FakeTime()
        skewed.now_ms = clock.now_ms - 600_000
        channel = webhook_channel.build(webhook_config(tmp_path, peer.url), clock=skewed.ms)
        closing.append(channel)
        [result] = await channel.deliver([message()])
        assert result.outcome == "parked" and "401" in result.reason


def test_verify_webhook_function() -> None:
    key = webhook_channel.secret_key(SECRET_A)
    body = b"{}"
    headers = {"Webhook-Id": "msg_1", "Webhook-Timestamp": "1000",
               "Webhook-Signature": "v1,bm90LWEtc2lnbmF0dXJl " + sign([key], "msg_1", 1000, body)}
    assert verify_webhook(headers, body, [SECRET_B, SECRET_A], now=1100) == "msg_1"
    with pytest.raises(WebhookVerificationError) as info:
        verify_webhook(headers, body, [SECRET_B], now=1100)
    assert info.value.code == "no_matching_signature"
    with pytest.raises(WebhookVerificationError) as info:
        verify_webhook(headers, body, [SECRET_A], now=1000 + 301)
    assert info.value.code == "stale_timestamp"
    assert verify_webhook(headers, body, [SECRET_A], now=1500, tolerance_s=600) == "msg_1"
    with pytest.raises(WebhookVerificationError) as info:
        verify_webhook({**headers, "Webhook-Timestamp": "soon"}, body, [SECRET_A], now=1000)
    assert info.value.code == "bad_timestamp"


async def test_webhook_faults(tmp_path: Path, clock: FakeTime,
                              closing: list[Closable]) -> None:
    async with WebhookPeer(secrets=[SECRET_A], clock=clock.s) as peer:
        channel = webhook_channel.build(webhook_config(tmp_path, peer.url, parallel=1),
                                        clock=clock.ms)
        closing.append(channel)
        for fault in (HookFault(status=500), HookFault(kind="drop"),
                      HookFault(status=503)):
            peer.inject(fault)
            with pytest.raises(TargetDown):
                await channel.deliver([message()])
        peer.inject(HookFault(status=429, retry_after="7"))
        results = await channel.deliver([message(), message()])
        assert outcomes(results) == ["retry", "retry"]  # the rest of the batch waits too
        assert [r.retry_after_s for r in results] == [7.0, 7.0]
        peer.inject(HookFault(status=408))
        peer.inject(HookFault(status=400))
        results = await channel.deliver([message(), message(), message()])
        assert outcomes(results) == ["retry", "parked", "delivered"]
        assert "400" in results[1].reason
        assert len(peer.stored) == 1


# --- Zalo ZNS ------------------------------------------------------------------------------------

def zalo_config(tmp_path: Path, peer: ZaloPeer, **settings: Any) -> ChannelConfig:
    base: dict[str, Any] = {
        "api_url": peer.api_url, "token_url": peer.token_url, "app_id": peer.app_id,
        "secret_key_file": secret(tmp_path, "zalo.key", peer.secret_key),
        "refresh_token_file": secret(tmp_path, "zalo.refresh", peer.refresh_token),
        "template_ids": {"check_in": "231133"}, "timeout_s": 2,
    }
    base.update(settings)
    return ChannelConfig(name="zalo", type="zalo", settings=base)


@pytest.fixture
async def zalo_peer(clock: FakeTime) -> AsyncIterator[ZaloPeer]:
    async with ZaloPeer(clock=clock.s, token_ttl_s=3600, unapproved={"999"},
                        not_on_zalo={"84987654321"}) as peer:
        yield peer


async def test_zalo_delivers_and_refreshes_tokens(tmp_path: Path, clock: FakeTime,
                                                  zalo_peer: ZaloPeer,
                                                  closing: list[Closable]) -> None:
    config = zalo_config(tmp_path, zalo_peer)
    refresh_file = Path(config.settings["refresh_token_file"])
    channel = zalo_channel.build(config, clock=clock.ms)
    closing.append(channel)
    first = message(phone=LOCAL_PHONE)
    [result] = await channel.deliver([first])
    assert result.outcome == "delivered" and result.upstream_id
    sent = zalo_peer.sent[first.message_id]
    assert sent["phone"] == PHONE and sent["template_id"] == "231133"
    assert sent["tracking_id"] == first.message_id
    assert sent["template_data"]["student_name"] == NAME
    # The single-use refresh token was rotated and the new one saved (mode 600).
    assert refresh_file.read_text().strip() == zalo_peer.refresh_token
    assert refresh_file.stat().st_mode & 0o777 == 0o600
    assert channel.tokens_refreshed == zalo_peer.refreshes == 1

    # The API says the token is invalid: refreshed once, the message sent once more.
    zalo_peer.expire_tokens()
    assert outcomes(await channel.deliver([message()])) == ["delivered"]
    assert zalo_peer.refreshes == 2 and -124 in zalo_peer.codes

    # Close to its expiry the token is refreshed before use (no -124 this time).
    clock.advance(3500)
    before = zalo_peer.codes.count(-124)
    assert outcomes(await channel.deliver([message()])) == ["delivered"]
    assert zalo_peer.refreshes == 3 and zalo_peer.codes.count(-124) == before

    # A restart reads the saved refresh token; a retry never sends twice (tracking_id).
    again = zalo_channel.build(config, clock=clock.ms)
    closing.append(again)
    assert outcomes(await again.deliver([first])) == ["delivered"]
    assert zalo_peer.duplicates == 1 and len(zalo_peer.sent) == 3


async def test_zalo_parks_invalid_phone_and_rejected_template(
        tmp_path: Path, clock: FakeTime, zalo_peer: ZaloPeer, closing: list[Closable]) -> None:
    channel = zalo_channel.build(zalo_config(tmp_path, zalo_peer), clock=clock.ms)
    closing.append(channel)
    batch = [
        message(phone="842838123456"),  # a Ho Chi Minh City landline
        message(phone="14155550100"),  # not Vietnamese
        message(phone=None),
        message(phone="84987654321"),  # no Zalo account
        message(template_id="999"),  # not approved
        message(template_id="12345"),  # unknown
        message(kind="late"),  # no template configured for it
        message(),
    ]
    results = await channel.deliver(batch)
    assert outcomes(results) == ["parked"] * 7 + ["delivered"]
    reasons = [r.reason for r in results]
    assert all(r.startswith("invalid phone") for r in reasons[:3])
    assert "-118" in reasons[3] and "not on Zalo" in reasons[3]
    assert "template rejected" in reasons[4] and "template rejected" in reasons[5]
    assert "no ZNS template for late" in reasons[6]
    assert all("912345678" not in r and "987654321" not in r for r in reasons)
    assert len(zalo_peer.sent) == 1


async def test_zalo_quota_errors_and_refused_refresh(
        tmp_path: Path, clock: FakeTime, zalo_peer: ZaloPeer, closing: list[Closable]) -> None:
    channel = zalo_channel.build(zalo_config(tmp_path, zalo_peer, quota_retry_s=120,
                                             parallel=1), clock=clock.ms)
    closing.append(channel)
    zalo_peer.inject(ZaloFault(error=-144))
    results = await channel.deliver([message(), message()])
    assert outcomes(results) == ["retry", "retry"]
    assert results[0].retry_after_s == 120 and "-144" in results[0].reason
    for fault in (ZaloFault(error=-100), ZaloFault(kind="status", status=502),
                  ZaloFault(kind="drop")):
        zalo_peer.inject(fault)
        with pytest.raises(TargetDown):
            await channel.deliver([message()])
    # An operator's override: treat -100 as a permanent refusal.
    overridden = zalo_channel.build(zalo_config(tmp_path, zalo_peer,
                                                error_codes={"-100": "park"}), clock=clock.ms)
    closing.append(overridden)
    zalo_peer.inject(ZaloFault(error=-100))
    [result] = await overridden.deliver([message()])
    assert result.outcome == "parked" and "-100" in result.reason

    # A spent refresh token (another gateway used it): the channel is down, and says why.
    Path(tmp_path / "zalo.refresh").write_text("spent-token\n")
    fresh = zalo_channel.build(zalo_config(tmp_path, zalo_peer,
                                           refresh_token_file=str(tmp_path / "zalo.refresh")),
                               clock=clock.ms)
    closing.append(fresh)
    Path(tmp_path / "zalo.refresh").write_text("spent-token\n")
    with pytest.raises(TargetDown, match="refresh_token_file"):
        await fresh.deliver([message()])


# --- SMS -----------------------------------------------------------------------------------------

def sms_config(tmp_path: Path, url: str, **settings: Any) -> ChannelConfig:
    base: dict[str, Any] = {
        "url": url,
        "auth": {"type": "bearer", "token_file": secret(tmp_path, "sms.token",
                                                        "sms-token-for-tests")},
        "body": {"Phone": "{phone}", "Content": "{text}", "RequestId": "{message_id}",
                 "Brandname": "THCS-A", "SmsType": 2},
        "success_field": "CodeResult", "success_values": ["100"], "id_field": "SMSID",
        "timeout_s": 2,
    }
    base.update(settings)
    return ChannelConfig(name="sms", type="sms", settings=base)


async def test_sms_intermittent_failures_delivered_exactly_once(
        tmp_path: Path, clock: FakeTime, closing: list[Closable]) -> None:
    async with SmsPeer(seed=20260302, failure_rate=0.35) as peer:
        channel = sms_channel.build(sms_config(tmp_path, peer.url), clock=clock.ms)
        closing.append(channel)
        pending = {m.item_id: m for m in (message() for _ in range(40))}
        delivered: dict[int, int] = {}
        for _round in range(40):
            if not pending:
                break
            batch = list(pending.values())[:10]
            try:
                results = await channel.deliver(batch)
            except TargetDown:
                continue  # the outbox retries the whole batch
            for result in results:
                assert result.outcome in ("delivered", "retry"), result.reason
                if result.outcome == "delivered":
                    delivered[result.item_id] = delivered.get(result.item_id, 0) + 1
                    del pending[result.item_id]
        assert not pending and len(delivered) == 40
        assert set(peer.sent) == {f"m{i:06d}deadbeef" for i in delivered}
        assert peer.failures > 5  # the peer did fail, and nothing was sent twice
        sent = next(iter(peer.sent.values()))
        assert sent["Phone"] == PHONE and sent["Brandname"] == "THCS-A" and sent["SmsType"] == 2


async def test_sms_form_body_and_answers(tmp_path: Path, clock: FakeTime,
                                         closing: list[Closable]) -> None:
    async with SmsPeer(blocked={"0912345678"}) as peer:
        channel = sms_channel.build(
            sms_config(tmp_path, peer.url, body_format="form", phone_format="0",
                       body={"Phone": "{phone}", "Content": "SMS: {text}",
                             "RequestId": "{message_id}"}), clock=clock.ms)
        closing.append(channel)
        results = await channel.deliver([message(), message(phone="84123"),
                                         message(phone="84987654321")])
        assert outcomes(results) == ["parked", "parked", "delivered"]
        assert results[0].reason == "the SMS gateway answered CodeResult=99"
        assert results[1].reason.startswith("invalid phone")
        assert results[2].upstream_id
        [sent] = peer.sent.values()
        assert sent["Phone"] == "0987654321" and sent["Content"].startswith("SMS: Em ")

        retrying = sms_channel.build(
            sms_config(tmp_path, peer.url, retry_values=["99"]), clock=clock.ms)
        closing.append(retrying)
        peer.blocked = {PHONE}
        assert outcomes(await retrying.deliver([message()])) == ["retry"]

        wrong = sms_channel.build(sms_config(tmp_path, peer.url, auth={
            "type": "bearer", "token_file": secret(tmp_path, "wrong", "nope")}), clock=clock.ms)
        closing.append(wrong)
        [result] = await wrong.deliver([message()])
        assert result.outcome == "parked" and "401" in result.reason


# --- every HTTP channel: an answer too large to read --------------------------------------------

@pytest.mark.parametrize("kind", ["webhook", "zalo", "sms"])
async def test_an_oversized_answer_takes_the_channel_down(
        kind: str, tmp_path: Path, clock: FakeTime, closing: list[Closable]) -> None:
    """A 32 MiB answer is read to 1 MiB and no further (a webhook's body is read too, even
    though nothing in it is used): TargetDown, so the message stays pending for a retry."""
    token = {"access_token": "zalo-access", "refresh_token": "zalo-refresh-2",
             "expires_in": 3600}
    async with OversizedPeer(canned={"/token": token}) as hostile:
        config = {
            "webhook": lambda: webhook_config(tmp_path, hostile.url("/hook")),
            "sms": lambda: sms_config(tmp_path, hostile.url("/sms")),
            "zalo": lambda: ChannelConfig(name="zalo", type="zalo", settings={
                "api_url": hostile.url("/send"), "token_url": hostile.url("/token"),
                "app_id": "4321", "secret_key_file": secret(tmp_path, "zalo.key", "k"),
                "refresh_token_file": secret(tmp_path, "zalo.refresh", "zalo-refresh-1"),
                "template_ids": {"check_in": "231133"}, "timeout_s": 2}),
        }[kind]()
        module = {"webhook": webhook_channel, "zalo": zalo_channel, "sms": sms_channel}[kind]
        channel = module.build(config, clock=clock.ms)
        closing.append(channel)
        with pytest.raises(TargetDown, match="failed: AnswerTooLarge") as caught:
            await channel.deliver([message()])
        assert "127.0.0.1" not in caught.value.reason  # never the URL (an SMS query's phone)
        if kind == "zalo":  # and the token refresh's answer
            hostile.canned.clear()
            fresh = module.build(config, clock=clock.ms)
            closing.append(fresh)
            with pytest.raises(TargetDown, match="token refresh failed: AnswerTooLarge"):
                await fresh.deliver([message()])
    assert hostile.bodies == (2 if kind == "zalo" else 1) and hostile.unread()


@pytest.mark.parametrize("expires_in", [float("inf"), float("nan"), "-1", "1e400"])
async def test_a_zalo_token_with_an_unusable_lifetime_gets_the_default(
        expires_in: object, tmp_path: Path, clock: FakeTime, closing: list[Closable]) -> None:
    """Found by fuzzing: an ``expires_in`` of infinity made ``int(expires_s * 1000)`` raise out
    of the refresh; now such a lifetime is the documented default, and the send goes on."""
    token = {"access_token": "zalo-access", "refresh_token": "zalo-refresh-2",
             "expires_in": expires_in}
    async with OversizedPeer(canned={"/token": token}) as hostile:
        channel = zalo_channel.build(ChannelConfig(name="zalo", type="zalo", settings={
            "api_url": hostile.url("/send"), "token_url": hostile.url("/token"),
            "app_id": "4321", "secret_key_file": secret(tmp_path, "zalo.key", "k"),
            "refresh_token_file": secret(tmp_path, "zalo.refresh", "zalo-refresh-1"),
            "template_ids": {"check_in": "231133"}, "timeout_s": 2}), clock=clock.ms)
        closing.append(channel)
        with pytest.raises(TargetDown, match="Zalo ZNS failed: AnswerTooLarge"):
            await channel.deliver([message()])
        assert hostile.requests[0][1] == "/token" and hostile.requests[1][1] == "/send"


# --- command hook --------------------------------------------------------------------------------

HOOK = """#!{python}
import json, os, sys, time
message = json.load(sys.stdin)
out = sys.argv[1]
with open(os.path.join(out, message["message_id"] + ".json"), "w") as f:
    json.dump({{"message": message, "env": dict(os.environ), "pid": os.getpid()}}, f)
event = message["event"]
time.sleep(event.get("sleep", 0))
print("noise on stdout with", message.get("phone"))
sys.exit(event.get("exit", 0))
"""


@pytest.fixture
def hook(tmp_path: Path) -> Path:
    path = tmp_path / "hook.py"
    path.write_text(HOOK.format(python=sys.executable), encoding="utf-8")
    path.chmod(0o700)
    (tmp_path / "out").mkdir()
    return path


def command_config(hook: Path, **settings: Any) -> ChannelConfig:
    base: dict[str, Any] = {"path": str(hook), "args": [str(hook.parent / "out")],
                            "timeout_s": 5, "env": {"SCHOOL": "THCS A"}}
    base.update(settings)
    concurrency = base.pop("concurrency", 2)
    return ChannelConfig(name="hook", type="command", settings=base, concurrency=concurrency)


def seen(hook: Path, m: Message) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((hook.parent / "out" / f"{m.message_id}.json").read_text())
    return data


async def test_command_hook_exit_codes(hook: Path, clock: FakeTime) -> None:
    channel = command_channel.build(command_config(hook), clock=clock.ms)
    batch = [message(event={"exit": 0}), message(event={"exit": 75}),
             message(event={"exit": 3})]
    results = await channel.deliver(batch)
    assert outcomes(results) == ["delivered", "retry", "parked"]
    assert "75" in results[1].reason and results[2].reason == "the hook exited with 3"
    got = seen(hook, batch[0])
    assert got["message"]["text"] == batch[0].text and "phone" not in got["message"]
    env = got["env"]
    assert env["NOTIFY_MESSAGE_ID"] == batch[0].message_id and env["SCHOOL"] == "THCS A"
    assert env["PATH"] == "/usr/bin:/bin" and "HOME" not in env
    assert not any(k.startswith(("PYTEST", "VIRTUAL_ENV")) for k in env)

    trusted = command_channel.build(command_config(hook, include_phone=True), clock=clock.ms)
    one = message()
    assert outcomes(await trusted.deliver([one])) == ["delivered"]
    assert seen(hook, one)["message"]["phone"] == PHONE


async def test_command_hook_timeout_kills(hook: Path, clock: FakeTime) -> None:
    channel = command_channel.build(command_config(hook, timeout_s=0.5), clock=clock.ms)
    slow = message(event={"sleep": 30})
    started = time.monotonic()
    [result] = await channel.deliver([slow])
    assert time.monotonic() - started < 5
    assert result.outcome == "retry" and "killed" in result.reason
    pid = seen(hook, slow)["pid"]
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


async def test_command_hook_concurrency_bound(hook: Path, clock: FakeTime) -> None:
    channel = command_channel.build(command_config(hook, concurrency=2), clock=clock.ms)
    batches = [[message(event={"sleep": 0.2}) for _ in range(3)] for _ in range(3)]
    results = await asyncio.gather(*(channel.deliver(b) for b in batches))
    assert all(outcomes(r) == ["delivered"] * 3 for r in results)
    assert channel.most_running == 2 and channel.running == 0


async def test_command_hook_gone_is_target_down(hook: Path, clock: FakeTime) -> None:
    channel = command_channel.build(command_config(hook), clock=clock.ms)
    hook.unlink()
    with pytest.raises(TargetDown, match="cannot be started"):
        await channel.deliver([message()])


# --- configuration -------------------------------------------------------------------------------

def _bad_configs(tmp_path: Path, hook: Path) -> list[tuple[ChannelConfig, str]]:
    def hook_cfg(**s: Any) -> ChannelConfig:
        return webhook_config(tmp_path, "http://127.0.0.1:9/hook", **s)

    def sms_cfg(**s: Any) -> ChannelConfig:
        return sms_config(tmp_path, "http://127.0.0.1:9/sms", **s)

    zalo = {"app_id": "4318", "secret_key_file": secret(tmp_path, "zk", "k"),
            "refresh_token_file": secret(tmp_path, "zr", "r")}
    return [
        (hook_cfg(secret_file=secret(tmp_path, "plain", "not-a-whsec")),
         "notify.channel.hook.secret_file"),
        (hook_cfg(secret_file=secret(tmp_path, "open", SECRET_A, mode=0o644)),
         "notify.channel.hook.secret_file"),
        (hook_cfg(extra_secret_files=[str(tmp_path / "missing")]),
         "notify.channel.hook.extra_secret_files[0]"),
        (webhook_config(tmp_path, "http://school.example/hook"), "notify.channel.hook.url"),
        (hook_cfg(colour="blue"), "notify.channel.hook.colour"),
        (ChannelConfig("zalo", "zalo", {**zalo, "app_id": "my-app"}), "notify.channel.zalo.app_id"),
        (ChannelConfig("zalo", "zalo", {**zalo, "error_codes": {"-124": "ignore"}}),
         "notify.channel.zalo.error_codes.-124"),
        (ChannelConfig("zalo", "zalo", {**zalo, "template_ids": {"lunch": "1"}}),
         "notify.channel.zalo.template_ids.lunch"),
        (sms_cfg(body={"to": "{phone}"}), "notify.channel.sms.body"),
        (sms_cfg(body={"to": "{phone}", "msg": "{text} {student_name}"}),
         "notify.channel.sms.body.msg"),
        (sms_cfg(auth={"type": "digest"}), "notify.channel.sms.auth.type"),
        (sms_cfg(method="DELETE"), "notify.channel.sms.method"),
        (sms_cfg(success_values=None, success_field="code"),
         "notify.channel.sms.success_values"),
        (command_config(Path("hook.py")), "notify.channel.hook.path"),
        (command_config(tmp_path / "nope"), "notify.channel.hook.path"),
        (command_config(hook, timeout_s=0), "notify.channel.hook.timeout_s"),
    ]


async def test_config_errors_name_the_key(tmp_path: Path, hook: Path, clock: FakeTime) -> None:
    builders = {"webhook": webhook_channel.build, "zalo": zalo_channel.build,
                "sms": sms_channel.build, "command": command_channel.build}
    for config, key in _bad_configs(tmp_path, hook):
        settings = {k: v for k, v in config.settings.items() if v is not None}
        config = ChannelConfig(config.name, config.type, settings)
        with pytest.raises(ConfigError) as info:
            builders[config.type](config, clock=clock.ms)
        assert info.value.key == key, (key, info.value)
        assert SECRET_A[6:] not in str(info.value)
