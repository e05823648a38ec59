"""The hardware docs agree with the data they describe.

``hardware/wiring.py`` generates the wiring tables and diagrams from the board profiles and the BOM
tables and totals from ``hardware/bom.csv``. Here: the committed files are what the script makes
now, every GPIO of every profile is in its wiring table and diagram, the BOM parses and covers what
each profile needs, and the totals quoted equal the CSV's sums (computed here independently).
"""

from __future__ import annotations

import csv
import importlib.util
import json
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from firmware.board import BoardError
from tests.project_files import REPO_ROOT

HARDWARE = REPO_ROOT / "hardware"
WIRING = HARDWARE / "wiring"
PROFILES = sorted((HARDWARE / "boards").glob("*.json"))
NAMES = [p.stem for p in PROFILES]


def _load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("hardware_wiring", HARDWARE / "wiring.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


wiring = _load_script()


def _profile(name: str) -> dict[str, Any]:
    return json.loads((HARDWARE / "boards" / f"{name}.json").read_text())  # type: ignore[no-any-return]


def _pins(table: dict[str, Any], prefix: str = "") -> dict[str, int]:
    """Every GPIO a profile names (any integer that is not a bus number, rate or address)."""
    out: dict[str, int] = {}
    for key, value in table.items():
        if isinstance(value, dict):
            out.update(_pins(value, prefix + key + "."))
        elif type(value) is int and key not in ("profile", "spi", "uart", "baudrate", "phy_addr"):
            out[prefix + key] = value
    return out


def _table_rows(markdown: str, header_start: str) -> list[list[str]]:
    """The body rows of the first Markdown table whose header line starts with ``header_start``."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]])
    return rows


# ---------------------------------------------------------------------------------------------
# wiring tables and diagrams


def test_committed_wiring_files_are_what_the_script_generates(tmp_path: Path) -> None:
    assert wiring.main(["--out", str(tmp_path)]) == 0
    generated = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    committed = {p.name: p.read_bytes() for p in WIRING.iterdir()}
    assert sorted(generated) == sorted(committed) == sorted(
        f"{n}.{ext}" for n in NAMES for ext in ("md", "svg"))
    stale = [name for name in generated if generated[name] != committed[name]]
    assert not stale, f"stale (run python hardware/wiring.py): {stale}"
    assert wiring.main(["--check"]) == 0  # bom.md's generated block included


def test_check_mode_reports_a_stale_or_stray_file(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert wiring.main(["--out", str(tmp_path)]) == 0
    victim = tmp_path / f"{NAMES[0]}.md"
    victim.write_text(victim.read_text().replace("GPIO", "IO", 1))
    (tmp_path / "notes.txt").write_text("hand-made\n")
    assert wiring.main(["--check", "--out", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert f"stale: {NAMES[0]}.md" in out
    assert "not generated (remove it): notes.txt" in out


@pytest.mark.parametrize("name", NAMES)
def test_every_gpio_of_the_profile_is_in_the_wiring_table(name: str) -> None:
    markdown = (WIRING / f"{name}.md").read_text()
    wired = _table_rows(markdown, "| # | from (ESP32)")
    listed = {(int(r[2]), r[3].strip("`")) for r in wired if r[2] != "—"}
    if "\n| GPIO | profile key" in markdown:  # the reserved-pins table
        reserved = _table_rows(markdown, "| GPIO | profile key")
        listed |= {(int(r[0]), r[1].strip("`")) for r in reserved}
    for key, pin in _pins(_profile(name)).items():
        assert (pin, key) in listed, f"{name}: {key} = GPIO{pin} missing from the wiring table"
    gpios = [pin for pin, _ in listed]
    assert len(gpios) == len(set(gpios)), f"{name}: a GPIO is listed twice"


@pytest.mark.parametrize("name", NAMES)
def test_the_diagram_draws_every_wire_of_the_table(name: str) -> None:
    svg = ET.parse(WIRING / f"{name}.svg").getroot()  # well-formed XML
    texts = [t.text or "" for t in svg.iter("{http://www.w3.org/2000/svg}text")]
    markdown = (WIRING / f"{name}.md").read_text()
    for row in _table_rows(markdown, "| # | from (ESP32)"):
        if row[2] == "—":
            continue
        gpio, signal, colour = row[2], row[4], row[7]
        # each wire is labelled with its GPIO, signal and suggested colour
        assert any(t.startswith(f"GPIO{gpio} · {signal} · {colour}") for t in texts), (name, row)
    reserved = set(_pins(_profile(name)).values()) - {
        int(r[2]) for r in _table_rows(markdown, "| # | from (ESP32)") if r[2] != "—"}
    for pin in reserved:  # on-board pins are listed in the module box
        assert any(t.startswith(f"GPIO{pin}: ") for t in texts), (name, pin)


@pytest.mark.parametrize("name", NAMES)
def test_signal_wires_of_one_board_have_distinct_colours(name: str) -> None:
    board = wiring.build_board(HARDWARE / "boards" / f"{name}.json")
    colours = [w.colour for w in board.wires if w.gpio is not None]
    assert len(colours) == len(set(colours))
    assert not set(colours) & set(wiring.POWER_COLOURS)


def test_a_profile_the_firmware_refuses_gets_no_diagram(tmp_path: Path) -> None:
    profile = _profile("esp32-devkitc-mfrc522")
    profile["buzzer"] = profile["reader"]["cs"]
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(profile))
    with pytest.raises(BoardError, match=r"buzzer: GPIO5 is already used by reader\.cs"):
        wiring.build_board(path)


# ---------------------------------------------------------------------------------------------
# bill of materials


def _bom() -> list[dict[str, str]]:
    with (HARDWARE / "bom.csv").open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_bom_csv_parses_with_the_expected_columns() -> None:
    rows = _bom()
    assert rows and list(rows[0]) == ["variant", "role", "part", "quantity", "unit_price_vnd",
                                      "alternative", "notes"]
    for row in rows:
        assert int(row["quantity"]) >= 1 and int(row["unit_price_vnd"]) > 0, row
        assert row["part"].strip() and row["role"] in wiring.KNOWN_ROLES, row
    assert len(wiring.read_bom((HARDWARE / "bom.csv").read_text(encoding="utf-8"))) == len(rows)


def test_bom_rejects_a_malformed_line() -> None:
    header = ",".join(wiring.BOM_COLUMNS) + "\n"
    with pytest.raises(ValueError, match="line 2: quantity and unit_price_vnd"):
        wiring.read_bom(header + "v,board,ESP32,one,100,,\n")
    with pytest.raises(ValueError, match="line 2: unknown role 'gizmo'"):
        wiring.read_bom(header + "v,gizmo,ESP32,1,100,,\n")


@pytest.mark.parametrize("name", NAMES)
def test_every_variant_has_the_parts_its_profile_needs(name: str) -> None:
    profile = _profile(name)
    rows = [r for r in _bom() if r["variant"] == name]
    roles = {r["role"] for r in rows}
    assert wiring.required_roles(profile) <= roles, wiring.required_roles(profile) - roles
    # independent of the script: the parts match the profile's hardware
    reader = next(r["part"] for r in rows if r["role"] == "reader")
    assert {"mfrc522": "MFRC522", "rdm6300": "RDM6300", "wiegand": "Wiegand"}[
        profile["reader"]["type"]] in reader
    board = next(r["part"] for r in rows if r["role"] == "board")
    assert ("ESP32-POE" if name.startswith("olimex") else "ESP32-DevKitC") in board
    if "rs485" in profile:
        assert "rs485_transceiver" in roles
    if profile["network"]["type"] == "ethernet":
        assert "poe_source" in roles and "regulator" not in roles


def test_bom_variants_are_exactly_the_board_profiles() -> None:
    assert {r["variant"] for r in _bom()} == set(NAMES)


def test_totals_in_bom_md_equal_the_csv_sums() -> None:
    sums: dict[str, int] = {}
    for row in _bom():
        sums[row["variant"]] = (sums.get(row["variant"], 0)
                                + int(row["quantity"]) * int(row["unit_price_vnd"]))
    markdown = (HARDWARE / "bom.md").read_text(encoding="utf-8")
    quoted = {r[0]: int(r[1].replace(".", ""))
              for r in _table_rows(markdown, "| variant / loại | total")}
    assert quoted == sums
    total_row = r"\| \*\*total / tổng\*\* \| \| \| \*\*([\d.]+)\*\*"
    per_variant = re.findall(r"^### (\S+)\n(?:.*\n)*?" + total_row, markdown, re.M)
    assert {v: int(t.replace(".", "")) for v, t in per_variant} == sums


# ---------------------------------------------------------------------------------------------


def test_relative_links_in_the_hardware_docs_resolve() -> None:
    docs = [*HARDWARE.glob("*.md"), *WIRING.glob("*.md")]
    for doc in docs:
        for target in re.findall(r"\]\(([^)#\s]+)\)", doc.read_text(encoding="utf-8")):
            if "://" in target:
                continue
            assert (doc.parent / target).exists(), f"{doc.relative_to(REPO_ROOT)}: {target}"
