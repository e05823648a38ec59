"""The MQTT topic tree of SPEC.md section 8, shared by the reader and the gateway."""

from protocol.errors import ProtocolError

PREFIX = "att/v1/"
UP_LEAVES = ("batch", "status", "result")
DOWN_LEAVES = ("ack", "cmd")
_MAX_SCHOOL = 32
_MAX_READER_ID = 0xFFFFFFFE


def check_school(school: str) -> str:
    """Return ``school`` if it is a valid topic segment, else raise ``bad_topic``."""
    ok = 0 < len(school) <= _MAX_SCHOOL and school[0] != "-"
    for ch in school:
        if not ("a" <= ch <= "z" or "0" <= ch <= "9" or ch == "-"):
            ok = False
    if not ok:
        raise ProtocolError("bad_topic", "school must be 1-32 of a-z 0-9 - : " + repr(school))
    return school


def reader_segment(reader_id: int) -> str:
    if not 1 <= reader_id <= _MAX_READER_ID:
        raise ProtocolError("bad_topic", "reader_id " + str(reader_id) + " out of range")
    return str(reader_id)


def _check_leaf(direction: str, leaf: str) -> None:
    leaves = UP_LEAVES if direction == "up" else DOWN_LEAVES if direction == "down" else ()
    if leaf not in leaves:
        raise ProtocolError("bad_topic", "unknown topic leaf " + repr(direction + "/" + leaf))


def topic(school: str, reader_id: int, direction: str, leaf: str) -> str:
    """``att/v1/{school}/{reader}/{up|down}/{leaf}``."""
    _check_leaf(direction, leaf)
    base = PREFIX + check_school(school) + "/" + reader_segment(reader_id)
    return base + "/" + direction + "/" + leaf


def reader_filter(school: str, reader_id: int) -> str:
    """What a reader subscribes to: its own ``down`` topics."""
    return PREFIX + check_school(school) + "/" + reader_segment(reader_id) + "/down/#"


def gateway_filter(school: str) -> str:
    """What the gateway subscribes to: every reader's ``up`` topics of one school."""
    return PREFIX + check_school(school) + "/+/up/#"


def parse(name: str) -> "tuple[str, int, str, str]":
    """Split a topic into ``(school, reader_id, direction, leaf)`` or raise ``bad_topic``."""
    parts = name.split("/")
    if len(parts) != 6 or parts[0] + "/" + parts[1] + "/" != PREFIX:
        raise ProtocolError("bad_topic", "not a protocol v1 topic: " + repr(name))
    school, reader, direction, leaf = parts[2], parts[3], parts[4], parts[5]
    check_school(school)
    digits = len(reader) > 0 and len(reader) <= 10
    for ch in reader:
        if not "0" <= ch <= "9":
            digits = False
    if not digits or reader[0] == "0":
        raise ProtocolError("bad_topic", "reader segment must be a decimal id: " + repr(reader))
    reader_id = int(reader)
    reader_segment(reader_id)
    _check_leaf(direction, leaf)
    return school, reader_id, direction, leaf
