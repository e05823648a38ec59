"""Wiring tables, wiring diagrams and BOM totals, generated from the data they describe.

    python hardware/wiring.py            # rewrite hardware/wiring/ and the tables in bom.md
    python hardware/wiring.py --check    # exit 1 if a generated file is stale (as the test does)
    python hardware/wiring.py --out DIR  # write the wiring files into DIR instead

For every board profile in ``hardware/boards/`` it writes ``hardware/wiring/<profile>.md`` (the
wiring table) and ``hardware/wiring/<profile>.svg`` (the diagram). The profile is validated with the
firmware's own checker (``firmware/board.py``) first, so a profile the reader would refuse never
gets a diagram. The pins come from the profile; what each pin is wired to (module pin names, series
parts, wire colours) is decided here, once per reader type.

The block between the ``bom-totals`` markers in ``hardware/bom.md`` is generated from
``hardware/bom.csv``: one parts table per variant and the totals, so the totals quoted can never
disagree with the CSV. Plain Python standard library; no network; deterministic output.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

HARDWARE = Path(__file__).resolve().parent
REPO = HARDWARE.parent
BOARDS = HARDWARE / "boards"
WIRING = HARDWARE / "wiring"
BOM_CSV = HARDWARE / "bom.csv"
BOM_MD = HARDWARE / "bom.md"

if str(REPO) not in sys.path:  # run as a script: make firmware.board importable
    sys.path.insert(0, str(REPO))

from firmware.board import CHIPS, load_profile  # noqa: E402

Profile = dict[str, Any]

# Suggested wire colours: (English, Vietnamese, SVG colour). Power keeps the usual red/orange/black;
# on each board every signal wire has its own colour (tests/test_hardware_docs.py checks it).
COLOURS: dict[str, tuple[str, str, str]] = {
    "red": ("red", "đỏ", "#d62728"),
    "orange": ("orange", "cam", "#ff8c00"),
    "black": ("black", "đen", "#222222"),
    "yellow": ("yellow", "vàng", "#f0c000"),
    "blue": ("blue", "xanh dương", "#1f5fd6"),
    "purple": ("purple", "tím", "#8e44ad"),
    "white": ("white", "trắng", "#ffffff"),
    "grey": ("grey", "xám", "#8c8c8c"),
    "brown": ("brown", "nâu", "#8b5a2b"),
    "green": ("green", "xanh lá", "#2ca02c"),
    "pink": ("pink", "hồng", "#ff69b4"),
    "cyan": ("cyan", "xanh ngọc", "#17becf"),
}
POWER_COLOURS = ("red", "orange", "black")

# Olimex ESP32-POE: the UEXT connector's pins (Olimex's schematic), shown next to the GPIO so the
# technician finds them on the 10-pin connector.
_OLIMEX_UEXT = {"3V3": 1, "GND": 2, 4: 3, 36: 4, 16: 5, 13: 6, 15: 7, 2: 8, 14: 9, 5: 10}


@dataclass(frozen=True)
class Wire:
    """One connection. ``src`` is the pin on the ESP32 board (``GPIO18``, ``3V3``, ``5V``,
    ``GND``) or, when ``drawn`` is false, a point off the board (``12 V terminal``)."""

    group: str  # the part on the far side (a box in the diagram)
    src: str
    gpio: int | None
    key: str  # the profile key that names the GPIO ("reader.sck"), "" for power
    signal: str
    dst: str  # the pin on the far side
    colour: str  # a COLOURS key
    via: str = ""  # a part in series (resistor, level shifter, transistor)
    note: str = ""
    drawn: bool = True


@dataclass(frozen=True)
class Reserved:
    """A GPIO the board itself uses (or the firmware drives) that must stay unconnected."""

    gpio: int
    key: str
    use: str


@dataclass(frozen=True)
class Board:
    name: str
    profile: Profile
    warnings: list[str]
    module: str
    power: str
    wires: list[Wire]
    reserved: list[Reserved]
    groups: dict[str, list[str]]  # group -> note lines shown in its box
    notes: list[str]  # for the technician, in the Markdown


def _gpio(pin: int) -> str:
    return f"GPIO{pin}"


def _module(profile: Profile) -> str:
    if profile["name"].startswith("olimex-esp32-poe"):
        return "Olimex ESP32-POE (WROOM-32)"
    return "ESP32-DevKitC (WROOM-32)"


def _board_label(profile: Profile, src: str, gpio: int | None) -> str:
    """The pin's name on the board, with the UEXT pin where the board has one."""
    if profile["name"].startswith("olimex-esp32-poe"):
        uext = _OLIMEX_UEXT.get(src if gpio is None else gpio)
        if uext is not None:
            return f"{src} (UEXT {uext})"
    return src


def _reader_wires(profile: Profile) -> tuple[list[Wire], dict[str, list[str]], list[Reserved]]:
    reader = profile["reader"]
    kind = reader["type"]
    groups: dict[str, list[str]] = {}
    reserved: list[Reserved] = []
    if kind == "mfrc522":
        g = "MFRC522 13.56 MHz (RC522 module)"
        groups[g] = ["3.3 V only: never 5 V", "IRQ: not connected", "antenna: behind plastic, "
                     "≥ 20 mm from metal"]
        wires = [
            Wire(g, "3V3", None, "", "power 3.3 V", "3.3V", "orange"),
            Wire(g, "GND", None, "", "ground", "GND", "black"),
            Wire(g, _gpio(reader["sck"]), reader["sck"], "reader.sck", "SPI SCK", "SCK", "yellow"),
            Wire(g, _gpio(reader["mosi"]), reader["mosi"], "reader.mosi", "SPI MOSI", "MOSI",
                 "blue"),
            Wire(g, _gpio(reader["miso"]), reader["miso"], "reader.miso", "SPI MISO", "MISO",
                 "purple"),
            Wire(g, _gpio(reader["cs"]), reader["cs"], "reader.cs", "SPI chip select", "SDA (NSS)",
                 "white", note="the module labels its chip select SDA"),
        ]
        if "rst" in reader:
            wires.append(Wire(g, _gpio(reader["rst"]), reader["rst"], "reader.rst", "reset",
                              "RST", "grey"))
        return wires, groups, reserved
    if kind == "rdm6300":
        g = "RDM6300 125 kHz (EM4100)"
        groups[g] = ["5 V module: its TX is 5 V logic", "RX pin of the module: not connected",
                     "antenna coil: ANT1/ANT2"]
        wires = [
            Wire(g, "5V", None, "", "power 5 V", "+5V", "red"),
            Wire(g, "GND", None, "", "ground", "GND", "black"),
            Wire(g, _gpio(reader["rx"]), reader["rx"], "reader.rx",
                 f"UART{reader['uart']} RX, {reader['baudrate']} 8N1", "TX",
                 "yellow", via="divider 1k/2k",
                 note="1 kΩ in series from the module's TX, 2 kΩ from the GPIO to GND: "
                      "5 V becomes 3.3 V"),
        ]
        if reader["uart"] == 2 and reader["rx"] != 17:  # UART 2's default TX pin
            reserved.append(Reserved(17, "(UART2 TX)", "UART2 TX, firmware-driven: leave free"))
        return wires, groups, reserved
    g = "Wiegand reader (12 V, commercial)"
    ls = "Level shifter (BSS138, 4 channels)"
    groups[ls] = ["HV side: the reader's D0/D1", "LV side: the ESP32"]
    groups[g] = ["+12 V (red), GND (black): from the", "12 V terminal, before the buck",
                 "LED (brown), beeper (yellow): unused"]
    wires = [
        Wire(ls, "3V3", None, "", "power 3.3 V (LV)", "LV", "orange"),
        Wire(ls, "5V", None, "", "power 5 V (HV)", "HV", "red"),
        Wire(ls, "GND", None, "", "ground", "GND", "black"),
        Wire(g, _gpio(reader["d0"]), reader["d0"], "reader.d0", "Wiegand D0",
             "D0 (green lead)", "green", via="level shifter ch 1",
             note="the reader's D0 lead is green by the Wiegand convention"),
        Wire(g, _gpio(reader["d1"]), reader["d1"], "reader.d1", "Wiegand D1",
             "D1 (white lead)", "white", via="level shifter ch 2",
             note="the reader's D1 lead is white by the Wiegand convention"),
        Wire(g, "GND", None, "", "ground (common)", "GND (black lead)", "black",
             note="one ground for the reader, the shifter and the ESP32"),
        Wire(g, "12 V terminal", None, "", "power 12 V", "+12V (red lead)", "red",
             note="from the 12 V terminal after the fuse, not from the buck's output",
             drawn=False),
    ]
    return wires, groups, reserved


def _feedback_wires(profile: Profile) -> tuple[list[Wire], dict[str, list[str]]]:
    bz = "Buzzer (passive, 5 V) + S8050 NPN"
    leds = "LEDs (5 mm, panel bezel)"
    groups = {
        bz: ["buzzer between +5 V and the collector", "1N4148 across the buzzer",
             "PWM 2.7 kHz from the firmware"],
        leds: ["cathodes (short leg) to GND", "active high: GPIO 1 = on"],
    }
    wires = [
        Wire(bz, _gpio(profile["buzzer"]), profile["buzzer"], "buzzer", "buzzer PWM",
             "B (base)", "brown", via="1 kΩ",
             note="a GPIO cannot drive a magnetic buzzer (~30 mA) directly"),
        Wire(bz, "5V", None, "", "power 5 V", "buzzer +", "red"),
        Wire(bz, "GND", None, "", "ground", "E (emitter)", "black"),
        Wire(leds, _gpio(profile["led_ok"]), profile["led_ok"], "led_ok", "LED accepted",
             "green LED +", "cyan", via="220 Ω", note="≈ 5 mA"),
        Wire(leds, _gpio(profile["led_error"]), profile["led_error"], "led_error",
             "LED rejected / fault", "red LED +", "pink", via="220 Ω", note="≈ 6 mA"),
        Wire(leds, "GND", None, "", "ground", "LED \u2212", "black"),
    ]
    return wires, groups


def _rs485_wires(profile: Profile) -> tuple[list[Wire], dict[str, list[str]]]:
    bus = profile.get("rs485")
    if bus is None:
        return [], {}
    g = "RS-485 transceiver (MAX3485, 3.3 V)"
    groups = {g: ["A, B, GND → the bus: see rs485.md", "RE̅ tied to DE",
                  "10 kΩ DE → GND: bus free at reset"]}
    wires = [
        Wire(g, "3V3", None, "", "power 3.3 V", "VCC", "orange"),
        Wire(g, "GND", None, "", "ground", "GND", "black"),
        Wire(g, _gpio(bus["tx"]), bus["tx"], "rs485.tx",
             f"UART{bus['uart']} TX, {bus['baudrate']} 8N1", "DI", "blue"),
        Wire(g, _gpio(bus["rx"]), bus["rx"], "rs485.rx", f"UART{bus['uart']} RX", "RO",
             "yellow"),
        Wire(g, _gpio(bus["de"]), bus["de"], "rs485.de", "driver enable", "DE + RE̅", "grey",
             note="high only while this reader answers; 10 kΩ pull-down keeps it low at reset"),
    ]
    return wires, groups


def _power_wires(profile: Profile) -> tuple[list[Wire], dict[str, list[str]], str]:
    if profile["network"]["type"] == "ethernet":
        return [], {}, ("PoE (IEEE 802.3af) through the board's RJ45 socket; the board makes its "
                        "own 5 V and 3.3 V")
    g = "Power: 12 V → fuse → diode → buck 5 V"
    groups = {g: ["buck (MP1584) set to 5.0 V before", "connecting; 470 µF on its output",
                  "see power.md"]}
    wires = [
        Wire(g, "5V", None, "", "power 5 V in", "5V OUT", "red",
             note="the board's own regulator makes 3.3 V"),
        Wire(g, "GND", None, "", "ground", "GND OUT", "black"),
    ]
    return wires, groups, "12 V DC adapter → 1 A fuse → reverse-polarity diode → buck to 5 V"


def _ethernet_reserved(profile: Profile) -> list[Reserved]:
    net = profile["network"]
    if net["type"] != "ethernet":
        return []
    out = [
        Reserved(net["mdc"], "network.mdc", "LAN8720 MDC (on the board)"),
        Reserved(net["mdio"], "network.mdio", "LAN8720 MDIO (on the board)"),
        Reserved(net["power"], "network.power", "LAN8720 power enable (on the board)"),
        Reserved(net["ref_clk"], "network.ref_clk",
                 f"RMII 50 MHz clock, {net['ref_clk_mode']} (on the board)"),
    ]
    out += [Reserved(p, "(RMII)", "Ethernet RMII data (on the board)")
            for p in CHIPS[profile["chip"]]["rmii"]]
    return sorted(out, key=lambda r: r.gpio)


def _board_notes(profile: Profile) -> list[str]:
    notes = []
    gpios = profile_gpios(profile)
    olimex = profile["name"].startswith("olimex-esp32-poe")
    if olimex:
        notes += [
            "This profile fits the ESP32-POE with a WROOM-32 module. WROVER variants use GPIO16 "
            "and GPIO17 for their PSRAM and GPIO0 for the Ethernet clock: they need a profile of "
            "their own.",
            "Leave the microSD slot empty: the card shares GPIO2, GPIO14 and GPIO15 with the "
            "reader's SPI.",
            "The ESP32-POE (not -ISO) is not galvanically isolated: unplug the PoE cable before "
            "plugging its USB into a laptop, or use the ESP32-POE-ISO.",
        ]
    elif {16, 17} & set(gpios):
        notes.append("Use a DevKitC with a WROOM-32 module, not a WROVER: on WROVER modules "
                     "GPIO16 and GPIO17 are wired to the PSRAM.")
    if profile["reader"]["type"] == "rdm6300":
        notes.append("The RDM6300 runs on 5 V and its TX idles at 5 V; ESP32 inputs are not 5 V "
                     "tolerant, hence the divider (1 kΩ from TX, 2 kΩ to GND; 3.3 V at the GPIO).")
    if profile["reader"]["type"] == "wiegand":
        notes.append("Wiegand D0/D1 are 5 V open-collector lines with pull-ups in most readers; "
                     "the BSS138 shifter brings them to 3.3 V. The firmware enables the ESP32's "
                     "own pull-ups too.")
    if "rs485" in profile:
        notes.append("The bus side of the transceiver (A, B, signal ground, termination, "
                     "biasing, address) is in [../rs485.md](../rs485.md).")
    notes.append("Power, current budget and brown-out: [../power.md](../power.md). Enclosure and "
                 "mounting: [../enclosure.md](../enclosure.md). Parts: [../bom.md](../bom.md).")
    return notes


def build_board(path: Path) -> Board:
    profile, warnings = load_profile(path.read_text(encoding="utf-8"))
    wires, groups, reserved = _reader_wires(profile)
    more, g2 = _rs485_wires(profile)
    wires += more
    groups.update(g2)
    more, g3 = _feedback_wires(profile)
    wires += more
    groups.update(g3)
    more, g4, power = _power_wires(profile)
    wires += more
    groups.update(g4)
    reserved = sorted(reserved + _ethernet_reserved(profile), key=lambda r: r.gpio)
    return Board(profile["name"], profile, warnings, _module(profile), power, wires, reserved,
                 groups, _board_notes(profile))


def load_boards(boards: Path = BOARDS) -> list[Board]:
    return [build_board(p) for p in sorted(boards.glob("*.json"))]


def profile_gpios(profile: Profile) -> dict[int, str]:
    """Every GPIO a profile names, with its key (independent of the firmware's checker)."""
    not_pins = {"profile", "spi", "uart", "baudrate", "phy_addr"}
    found: dict[int, str] = {}

    def walk(table: Profile, prefix: str) -> None:
        for key, value in table.items():
            if isinstance(value, dict):
                walk(value, prefix + key + ".")
            elif type(value) is int and key not in not_pins:
                found[value] = prefix + key

    walk(profile, "")
    return found


# ---------------------------------------------------------------------------------------------
# Markdown


def _colour_text(name: str) -> str:
    en, vi, _ = COLOURS[name]
    return f"{en} / {vi}"


def _short(group: str) -> str:
    return group.split(" (")[0].split(":")[0]


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render_markdown(board: Board) -> str:
    p = board.profile
    lines = [
        f"# {board.name}: wiring / sơ đồ đấu dây",
        "",
        "<!-- Generated by hardware/wiring.py from hardware/boards/"
        f"{board.name}.json. Do not edit: change the profile or the script and run "
        "`python hardware/wiring.py`. -->",
        "",
        f"{p['description']}.",
        "",
        f"![Wiring diagram of {board.name}]({board.name}.svg)",
        "",
        "| | |",
        "|---|---|",
        f"| board / mạch | {board.module} |",
        f"| reader / đầu đọc | `{p['reader']['type']}` |",
        f"| link / kết nối | `{p['network']['type']}` |",
        f"| power / nguồn | {board.power} |",
        "",
        "## Wiring table / Bảng đấu dây",
        "",
        "| # | from (ESP32) / từ | GPIO | profile key / khóa | signal / tín hiệu | to / đến "
        "| via / qua | wire colour / màu dây | notes / ghi chú |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for n, w in enumerate(board.wires, 1):
        gpio = str(w.gpio) if w.gpio is not None else "—"
        key = f"`{w.key}`" if w.key else "—"
        src = _board_label(p, w.src, w.gpio)
        lines.append(
            f"| {n} | {_cell(src)} | {gpio} | {key} | {_cell(w.signal)} | "
            f"{_cell(_short(w.group))}: {_cell(w.dst)} | {_cell(w.via) or '—'} | "
            f"{_colour_text(w.colour)} | {_cell(w.note)} |"
        )
    lines += ["", "GND pins of the board are all the same net: use any of them."]
    if board.reserved:
        lines += [
            "",
            "## Pins the board keeps / Chân dành riêng (do not connect / không nối)",
            "",
            "| GPIO | profile key / khóa | use / dùng cho |",
            "|---|---|---|",
        ]
        for r in board.reserved:
            key = r.key if r.key.startswith("(") else f"`{r.key}`"
            lines.append(f"| {r.gpio} | {key} | {_cell(r.use)} |")
    lines += ["", "## Notes / Lưu ý", ""]
    lines += [f"- {note}" for note in board.notes]
    lines += ["", "## Checks / Kiểm tra", ""]
    lines.append("The profile passes `firmware/board.py` (the reader's own check at boot).")
    for warning in board.warnings:
        lines.append(f"- {warning}.")
    lines += [""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# SVG

_W = 1180
_MOD_X0, _MOD_X1 = 20, 340
_PER_X0, _PER_X1 = 820, 1160
_ROW = 32
_HEAD = 26
_NOTE = 15
_GAP = 22
_TOP = 96


def _text(x: float, y: float, s: str, size: int = 13, anchor: str = "start",
          weight: str = "normal", fill: str = "#111111") -> str:
    return (f'<text x="{x:g}" y="{y:g}" font-size="{size}" text-anchor="{anchor}" '
            f'font-weight="{weight}" fill="{fill}">{escape(s)}</text>')


def _width(s: str, size: int) -> float:
    """A generous estimate of a text's width in DejaVu Sans (0.58 em per character)."""
    return 0.58 * size * len(s)


def render_svg(board: Board) -> str:
    p = board.profile
    drawn = [w for w in board.wires if w.drawn]
    order: list[str] = []
    for w in drawn:
        if w.group not in order:
            order.append(w.group)
    body: list[str] = []
    y = _TOP
    boxes: list[tuple[str, int, int, list[str]]] = []
    rows: list[tuple[Wire, int]] = []
    for group in order:
        notes = board.groups.get(group, [])
        top = y
        y += _HEAD - 6
        for w in (w for w in drawn if w.group == group):
            y += _ROW
            rows.append((w, y))
        y += 12 + _NOTE * len(notes) + 8
        boxes.append((group, top, y, notes))
        y += _GAP
    reserved_h = (24 + _NOTE * len(board.reserved)) if board.reserved else 0
    mod_bottom = max(y - _GAP, _TOP + 60) + reserved_h
    height = mod_bottom + 80

    # the ESP32 board
    body.append(f'<rect x="{_MOD_X0}" y="{_TOP - 40}" width="{_MOD_X1 - _MOD_X0}" '
                f'height="{mod_bottom - _TOP + 50}" rx="10" fill="#e8f0e8" stroke="#2f5d2f" '
                'stroke-width="2"/>')
    body.append(_text(_MOD_X0 + 12, _TOP - 18, board.module, 15, weight="bold"))
    body.append(_text(_MOD_X0 + 12, _TOP - 2, f"chip {p['chip']} · profile {board.name}", 11,
                      fill="#444444"))
    for w, wy in rows:
        body.append(_text(_MOD_X1 - 10, wy + 4, _board_label(p, w.src, w.gpio), 13, "end",
                          "bold"))
        body.append(f'<circle cx="{_MOD_X1}" cy="{wy}" r="4" fill="#111111"/>')
    if board.reserved:
        ry = mod_bottom - reserved_h + 20
        body.append(_text(_MOD_X0 + 12, ry, "On the board, do not connect / không nối:", 12,
                          weight="bold"))
        for r in board.reserved:
            ry += _NOTE
            line = f"GPIO{r.gpio}: {r.use}"
            if _width(line, 11) > _MOD_X1 - _MOD_X0 - 20:
                raise ValueError(f"{board.name}: reserved-pin text too long: {line}")
            body.append(_text(_MOD_X0 + 12, ry, line, 11, fill="#444444"))

    # the parts on the far side
    for group, top, bottom, notes in boxes:
        body.append(f'<rect x="{_PER_X0}" y="{top}" width="{_PER_X1 - _PER_X0}" '
                    f'height="{bottom - top}" rx="8" fill="#eef2fa" stroke="#2f3f6f" '
                    'stroke-width="2"/>')
        body.append(_text(_PER_X0 + 10, top + 20, group, 13, weight="bold"))
        ny = bottom - 8 - _NOTE * len(notes)
        for line in notes:
            ny += _NOTE
            body.append(_text(_PER_X0 + 10, ny - 3, line, 11, fill="#444444"))

    # the wires: straight, each at its own height, labelled above
    for w, wy in rows:
        _, _, hexc = COLOURS[w.colour]
        body.append(f'<line x1="{_MOD_X1}" y1="{wy}" x2="{_PER_X0}" y2="{wy}" '
                    'stroke="#222222" stroke-width="6" stroke-linecap="round"/>')
        body.append(f'<line x1="{_MOD_X1}" y1="{wy}" x2="{_PER_X0}" y2="{wy}" '
                    f'stroke="{hexc}" stroke-width="4" stroke-linecap="round"/>')
        body.append(f'<circle cx="{_PER_X0}" cy="{wy}" r="4" fill="#111111"/>')
        body.append(_text(_PER_X0 + 10, wy + 4, w.dst, 13, weight="bold"))
        label = f"{w.signal} · {_colour_text(w.colour)}"
        if w.gpio is not None:
            label = f"GPIO{w.gpio} · {label}"
        body.append(_text(_MOD_X1 + 12, wy - 7, label, 12))
        if w.via:
            width = round(10 + 6.5 * len(w.via))
            cx = _PER_X0 - 14 - width / 2
            if _MOD_X1 + 12 + _width(label, 12) > cx - width / 2 - 6:
                raise ValueError(f"{board.name}: wire label overlaps its series part: {label}")
            body.append(f'<rect x="{cx - width / 2:g}" y="{wy - 10}" width="{width}" height="20" '
                        'rx="3" fill="#fffbe6" stroke="#555555"/>')
            body.append(_text(cx, wy + 4, w.via, 11, "middle"))

    title = f"{board.name} — sơ đồ đấu dây / wiring diagram"
    head = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_W}" height="{height}" '
        f'viewBox="0 0 {_W} {height}" font-family="DejaVu Sans, Arial, Helvetica, sans-serif">',
        f"<title>{escape(title)}</title>",
        f'<rect x="0" y="0" width="{_W}" height="{height}" fill="#ffffff"/>',
        _text(20, 28, title, 18, weight="bold"),
        _text(20, 46, f"Power / nguồn: {board.power}", 12, fill="#333333"),
    ]
    foot = [
        _text(20, height - 34, "Labels: GPIO · signal · suggested wire colour. Series parts sit on "
              "the wire. All GND pins are one net.", 11, fill="#444444"),
        _text(20, height - 16, f"Generated from hardware/boards/{board.name}.json by "
              "hardware/wiring.py — do not edit by hand.", 11, fill="#444444"),
    ]
    return "\n".join([*head, *body, *foot, "</svg>", ""])


# ---------------------------------------------------------------------------------------------
# Bill of materials

BOM_COLUMNS = ("variant", "role", "part", "quantity", "unit_price_vnd", "alternative", "notes")
# A commercial RFID/fingerprint attendance terminal (ZKTeco-class, card model) at retail in
# Vietnam, 2026: typical range, VND. Face-recognition models cost more.
COMMERCIAL_LOW = 2_500_000
COMMERCIAL_HIGH = 4_500_000
BOM_BEGIN = "<!-- bom-totals:begin (generated by hardware/wiring.py from bom.csv: do not edit) -->"
BOM_END = "<!-- bom-totals:end -->"
_DASH = "\u2013"  # en dash, for ranges


def required_roles(profile: Profile) -> set[str]:
    """The BOM roles a reader built to this profile cannot do without."""
    roles = {"board", "reader", "buzzer", "buzzer_driver", "led_ok", "led_error", "resistors",
             "enclosure", "cable_gland", "wiring", "mounting"}
    kind = profile["reader"]["type"]
    if kind in ("rdm6300", "wiegand"):
        roles.add("level_shift")  # 5 V logic from the reader into a 3.3 V GPIO
    if "rs485" in profile:
        roles |= {"rs485_transceiver", "rs485_protection"}
    if profile["network"]["type"] == "ethernet":
        roles.add("poe_source")
    else:
        roles |= {"power_supply", "regulator", "fuse", "reverse_polarity", "bulk_capacitor"}
    return roles


KNOWN_ROLES = {"board", "reader", "level_shift", "buzzer", "buzzer_driver", "led_ok", "led_error",
               "resistors", "rs485_transceiver", "rs485_protection", "poe_source",
               "power_supply", "regulator", "fuse", "reverse_polarity", "bulk_capacitor",
               "enclosure", "cable_gland", "wiring", "mounting", "label"}


@dataclass(frozen=True)
class BomRow:
    variant: str
    role: str
    part: str
    quantity: int
    unit_price_vnd: int
    alternative: str
    notes: str

    @property
    def line_vnd(self) -> int:
        return self.quantity * self.unit_price_vnd


def read_bom(text: str) -> list[BomRow]:
    """Parse bom.csv; raise ValueError naming the line for anything malformed."""
    reader = csv.DictReader(io.StringIO(text))
    if tuple(reader.fieldnames or ()) != BOM_COLUMNS:
        raise ValueError(f"bom.csv: columns must be {', '.join(BOM_COLUMNS)}")
    rows = []
    for n, raw in enumerate(reader, 2):
        if None in raw or any(v is None for v in raw.values()):
            raise ValueError(f"bom.csv line {n}: wrong number of fields")
        try:
            qty = int(raw["quantity"])
            price = int(raw["unit_price_vnd"])
        except ValueError:
            raise ValueError(f"bom.csv line {n}: quantity and unit_price_vnd must be integers")\
                from None
        if qty < 1 or price < 0:
            raise ValueError(f"bom.csv line {n}: quantity ≥ 1 and price ≥ 0")
        if raw["role"] not in KNOWN_ROLES:
            raise ValueError(f"bom.csv line {n}: unknown role {raw['role']!r}")
        if not raw["part"].strip() or not raw["variant"].strip():
            raise ValueError(f"bom.csv line {n}: variant and part are required")
        rows.append(BomRow(raw["variant"], raw["role"], raw["part"], qty, price,
                           raw["alternative"], raw["notes"]))
    return rows


def bom_totals(rows: list[BomRow]) -> dict[str, int]:
    totals: dict[str, int] = {}
    for row in rows:
        totals[row.variant] = totals.get(row.variant, 0) + row.line_vnd
    return totals


def _vnd(amount: int) -> str:
    return f"{amount:,}".replace(",", ".")  # Vietnamese grouping: 1.234.000


def render_bom_block(rows: list[BomRow]) -> str:
    totals = bom_totals(rows)
    out = [BOM_BEGIN, ""]
    for variant in totals:
        out += [f"### {variant}", "",
                "| part / linh kiện | qty / SL | unit / đơn giá (VND) | line / thành tiền (VND) "
                "| alternative / thay thế |",
                "|---|---:|---:|---:|---|"]
        for r in (r for r in rows if r.variant == variant):
            out.append(f"| {_cell(r.part)} | {r.quantity} | {_vnd(r.unit_price_vnd)} | "
                       f"{_vnd(r.line_vnd)} | {_cell(r.alternative)} |")
        out += [f"| **total / tổng** | | | **{_vnd(totals[variant])}** | |", ""]
    out += ["### Totals per reader / Tổng mỗi đầu đọc", "",
            "| variant / loại | total / tổng (VND) | share of a commercial terminal "
            f"({_vnd(COMMERCIAL_LOW)}{_DASH}{_vnd(COMMERCIAL_HIGH)} VND) |",
            "|---|---:|---:|"]
    for variant, total in totals.items():
        low = round(100 * total / COMMERCIAL_HIGH)
        high = round(100 * total / COMMERCIAL_LOW)
        out.append(f"| {variant} | {_vnd(total)} | {low}{_DASH}{high} % |")
    out += ["", BOM_END]
    return "\n".join(out)


def apply_bom_block(markdown: str, block: str) -> str:
    start = markdown.find(BOM_BEGIN)
    end = markdown.find(BOM_END)
    if start < 0 or end < start:
        raise ValueError("bom.md: the bom-totals markers are missing")
    return markdown[:start] + block + markdown[end + len(BOM_END):]


# ---------------------------------------------------------------------------------------------


def wiring_files(boards: Path = BOARDS) -> dict[str, str]:
    """Every file of hardware/wiring/, by name."""
    files: dict[str, str] = {}
    for board in load_boards(boards):
        files[board.name + ".md"] = render_markdown(board)
        files[board.name + ".svg"] = render_svg(board)
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="report stale files, write nothing")
    parser.add_argument("--out", type=Path, default=WIRING, help="where the wiring files go")
    args = parser.parse_args(argv)
    files = wiring_files()
    bom_md = BOM_MD.read_text(encoding="utf-8")
    new_bom_md = apply_bom_block(bom_md, render_bom_block(read_bom(BOM_CSV.read_text("utf-8"))))
    if args.check:
        stale = [name for name, text in files.items()
                 if not (args.out / name).is_file()
                 or (args.out / name).read_text(encoding="utf-8") != text]
        extra = sorted(p.name for p in args.out.glob("*") if p.name not in files)
        if new_bom_md != bom_md:
            stale.append(str(BOM_MD.relative_to(REPO)))
        for name in stale:
            print(f"stale: {name}")
        for name in extra:
            print(f"not generated (remove it): {name}")
        return 1 if stale or extra else 0
    args.out.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (args.out / name).write_text(text, encoding="utf-8")
    if args.out == WIRING:
        BOM_MD.write_text(new_bom_md, encoding="utf-8")
    print(f"wrote {len(files)} files into {args.out}" + (" and the totals in hardware/bom.md"
                                                          if args.out == WIRING else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
