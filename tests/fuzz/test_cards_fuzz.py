"""Property tests of the card-format decoders: EM4100 UART frames, Wiegand bit strings, the
technician's ``attendance-card decode`` and roster card numbers (``gateway/cards.py``)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fuzz import fuzz_cards
from gateway import cards
from protocol import card
from tests.fuzz.support import fuzz_settings

hex_text = st.text("0123456789abcdefABCDEF", min_size=10, max_size=12)


@fuzz_settings(300)
@given(st.one_of(st.binary(max_size=20),
                 hex_text.map(lambda t: b"\x02" + t.encode() + b"\x03"),
                 st.binary(min_size=5, max_size=5).map(fuzz_cards.em4100_frame)))
def test_em4100_uart_frames(frame: bytes) -> None:
    fuzz_cards.em4100(frame)


@fuzz_settings(300)
@given(st.one_of(
    st.lists(st.integers(0, 1), max_size=40).map(bytes),
    st.tuples(st.sampled_from([card.WIEGAND26, card.WIEGAND34, card.WIEGAND37]),
              st.binary(min_size=5, max_size=5)).map(
        lambda t: fuzz_cards.wiegand_bits(
            t[0], bytes([t[1][0] & 0x07]) + t[1][1:] if t[0] == card.WIEGAND37
            else t[1][: (fuzz_cards.WIEGAND[t[0]][0] - 2 + 7) // 8]))))
def test_wiegand_bit_strings(bits: bytes) -> None:
    fuzz_cards.wiegand(bits)


@fuzz_settings(300)
@given(fmt=st.sampled_from(fuzz_cards.FORMATS), text=st.text(max_size=60))
def test_technician_decode_takes_any_text(fmt: str, text: str) -> None:
    fuzz_cards.technician(fmt, text)


card_text = st.one_of(
    st.text(max_size=40),
    st.text("0123456789,", max_size=30),
    st.text("0123456789ABCDEFabcdef:- .x", max_size=30),
    st.from_regex(r"[0-9\u0660-\u0669\uff10-\uff19]{1,12},[0-9\u0660-\u0669]{1,12}",
                  fullmatch=True))


@fuzz_settings(400)
@given(card_text)
def test_roster_card_numbers_normalise_idempotently(text: str) -> None:
    fuzz_cards.roster_number(text)


@fuzz_settings(200)
@given(tech=st.sampled_from(fuzz_cards.TECHS), data=st.data())
def test_every_accepted_printed_form_finds_the_card(tech: str, data: st.DataObject) -> None:
    size = data.draw(st.sampled_from(fuzz_cards.UID_LENGTHS[tech]))
    uid = bytearray(data.draw(st.binary(min_size=size, max_size=size)))
    if tech == "wiegand37":
        uid[0] &= 0x07
    fuzz_cards.printed(tech, bytes(uid))


@pytest.mark.parametrize(("text", "expected"), [
    ("1" * 5000 + ",1", "1" * 5000 + ",1"),
    ("044,09000", "44,9000"),
    ("000,00000", "0,0"),
    ("\u0660\u0664\u0664,\u0660\u0669", "\u0660\u0664\u0664,\u0660\u0669"),
])
def test_regression_normalize_number_on_huge_and_foreign_digit_pairs(text: str,
                                                                     expected: str) -> None:
    """Found by the roster oracle: a "facility,number" cell of more than 4300 digits made
    int() raise ValueError out of the roster import; digits of other scripts were converted
    by int() into a pair the roster's own rules (ASCII digits) reject everywhere else."""
    assert cards.normalize_number(text) == expected
