"""Property tests of the parsers of upstream HTTP answers (forwarders) and of the notification
peers' answers (channels): Retry-After, JSON bodies, JWTs, webhook headers.

Whatever a peer answers (bytes that are not JSON, JSON of any shape, headers of any text), a
parser returns its "nothing usable" value or raises its documented error; any other exception
would crash an outbox batch. The bugs it found in them are regression tests at the end.
"""

from __future__ import annotations

import base64
import contextlib
import json
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.channels import sms, zalo
from gateway.channels.webhook import WebhookVerificationError, verify_webhook
from gateway.forwarders import edfi, openemis, relay
from gateway.forwarders._common import RETRY_AFTER_MAX_S, retry_after_s
from tests.fuzz.support import fuzz_settings

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["data", "token", "access_token", "id", "results", "error", "message",
                         "detail", "title", "errors", "validationErrors", "correlationId",
                         "absence_type_id", "status", "idempotency_key", "reason", "exp",
                         "description", "x"]), inner, max_size=5),
    max_leaves=12)


bodies = st.one_of(st.binary(max_size=80), json_values.map(
    lambda v: json.dumps(v, allow_nan=True).encode()))


def _response(body: bytes, status: int = 200) -> httpx.Response:
    return httpx.Response(status, content=body, headers={"content-type": "application/json"})


@fuzz_settings(300)
@given(st.one_of(st.none(), st.text(max_size=40),
                 st.from_regex(r"[A-Z][a-z]{2}, [0-9]{1,2} [A-Z][a-z]{2} [0-9]{1,5} "
                               r"[0-9]{2}:[0-9]{2}:[0-9]{2} ([+-][0-9]{4}|GMT)", fullmatch=True),
                 st.floats().map(repr)),
       st.integers(0, 2**42))
def test_retry_after_is_seconds_within_a_day_or_none(header: str | None, now_ms: int) -> None:
    seconds = retry_after_s(header, now_ms)
    assert seconds is None or 0.0 <= seconds <= RETRY_AFTER_MAX_S


@fuzz_settings(300)
@given(body=bodies, status=st.sampled_from([200, 201, 400, 401, 409, 422, 500]))
def test_json_answer_parsers_take_any_body(body: bytes, status: int) -> None:
    response = _response(body, status)
    try:
        value: Any = json.loads(body)
    except ValueError:
        value = None
    assert isinstance(edfi._problem(response), dict)
    ids = edfi._ids_in(response)
    assert ids is None or all(isinstance(i, str) for i in ids)
    assert isinstance(edfi._explain(edfi._problem(response), "0790100010"), str)
    token = openemis._token_in(response)
    assert token is None or isinstance(token, str)
    if token is not None:
        openemis._jwt_expiry_ms(token)
    absence = openemis._absence_type_in(response)
    assert absence is None or isinstance(absence, int)
    assert isinstance(openemis._explain(response, ["0790100010"]), str)
    assert isinstance(relay._explain(response), str)
    parsed = zalo._json(response)
    assert parsed is None or isinstance(parsed, dict)
    sms._field(value, ("data", "status"))


@fuzz_settings(200)
@given(claims=json_values, header=st.text(max_size=10))
def test_jwt_expiry_reads_any_payload(claims: Any, header: str) -> None:
    payload = base64.urlsafe_b64encode(json.dumps(claims, allow_nan=True).encode()).decode()
    payload = payload.rstrip("=")
    exp = openemis._jwt_expiry_ms(f"{header}.{payload}.sig")
    assert exp is None or isinstance(exp, int)


@fuzz_settings(200)
@given(data=st.binary(max_size=200))
def test_relay_batch_json_is_a_batch_error(data: bytes) -> None:
    with contextlib.suppress(relay.BatchError):
        relay._json_object(data, "the batch")


@fuzz_settings(300)
@given(headers=st.dictionaries(
    st.sampled_from(["webhook-id", "Webhook-Timestamp", "webhook-timestamp",
                     "webhook-signature", "x"]),
    st.one_of(st.text(max_size=30), st.integers(0, 2**40).map(str),
              st.just("v1,AAAA v2,BBBB")), max_size=4),
    body=st.binary(max_size=40))
def test_webhook_verification_refuses_with_its_error(headers: dict[str, str],
                                                     body: bytes) -> None:
    with contextlib.suppress(WebhookVerificationError):
        verify_webhook(headers, body, ["whsec_" + base64.b64encode(bytes(32)).decode()],
                       1_767_225_600.0)


# --- regressions: what this suite found, fixed ---------------------------------------------


@pytest.mark.parametrize("exp", ["1e999", "-1e999", "NaN"])
def test_regression_openemis_jwt_with_infinite_exp(exp: str) -> None:
    """Found by this suite: int(exp * 1000) of a JSON 1e999 (inf) or NaN exp claim raised."""
    payload = base64.urlsafe_b64encode(f'{{"exp": {exp}}}'.encode()).decode().rstrip("=")
    assert openemis._jwt_expiry_ms(f"h.{payload}.s") is None


@pytest.mark.parametrize("value", ["1" * 5000, "\u0661\u0662", "12345678901234567890"])
def test_regression_openemis_absence_type_of_many_or_foreign_digits(value: str) -> None:
    """Found by this suite: int() of a decimal string of more than 4300 digits raised, and
    other scripts' digits were taken."""
    response = _response(json.dumps({"data": {"absence_type_id": value}}).encode())
    assert openemis._absence_type_in(response) is None


@pytest.mark.parametrize("stamp", ["9" * 400, "-5", "1e9", "\u0661\u0662"])
def test_regression_webhook_timestamp_beyond_a_float(stamp: str) -> None:
    """Found by this suite: now - int(timestamp) with a 400-digit webhook-timestamp overflowed."""
    headers = {"webhook-id": "m1", "webhook-timestamp": stamp, "webhook-signature": "v1,x"}
    with pytest.raises(WebhookVerificationError) as info:
        verify_webhook(headers, b"", ["whsec_" + base64.b64encode(bytes(32)).decode()], 0.0)
    assert info.value.code == "bad_timestamp"
