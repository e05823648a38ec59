"""The MQTT topic tree (SPEC.md section 8)."""

import pytest

from protocol import topics
from protocol.errors import ProtocolError


def test_topics_round_trip() -> None:
    for direction, leaves in (("up", topics.UP_LEAVES), ("down", topics.DOWN_LEAVES)):
        for leaf in leaves:
            name = topics.topic("thcs-kon-tum-1", 4_000_000_001, direction, leaf)
            assert name == f"att/v1/thcs-kon-tum-1/4000000001/{direction}/{leaf}"
            assert topics.parse(name) == ("thcs-kon-tum-1", 4_000_000_001, direction, leaf)


def test_filters() -> None:
    assert topics.gateway_filter("s1") == "att/v1/s1/+/up/#"
    assert topics.reader_filter("s1", 7) == "att/v1/s1/7/down/#"


@pytest.mark.parametrize(
    "name",
    [
        "att/v1/s1/7/up",  # too short
        "att/v1/s1/7/up/batch/x",  # too long
        "att/v2/s1/7/up/batch",  # other version
        "att/v1/S1/7/up/batch",  # upper case school
        "att/v1/-s/7/up/batch",  # leading dash
        "att/v1/" + "a" * 33 + "/7/up/batch",  # school too long
        "att/v1/s1/07/up/batch",  # leading zero
        "att/v1/s1/0/up/batch",  # reserved id
        "att/v1/s1/4294967295/up/batch",  # reserved id
        "att/v1/s1/99999999999/up/batch",  # more than 10 digits
        "att/v1/s1/+/up/batch",  # wildcard
        "att/v1/s1/7/up/ack",  # ack goes down, not up
        "att/v1/s1/7/down/batch",
        "att/v1/s1/7/sideways/batch",
    ],
)
def test_parse_rejects_topics_outside_the_tree(name: str) -> None:
    with pytest.raises(ProtocolError) as info:
        topics.parse(name)
    assert info.value.code == "bad_topic"


def test_builders_reject_bad_segments() -> None:
    for school, reader_id, leaf in (("", 1, "batch"), ("ok", 0, "batch"), ("ok", 1, "nope")):
        with pytest.raises(ProtocolError):
            topics.topic(school, reader_id, "up", leaf)
