"""bench/report.py (``make bench``): every DESIGN.md target gets its row, verdicts follow the
figures, a missed target says what limits it, and the command recorded reproduces the run."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench import report, results
from bench.results import Figure

ROOT = Path(__file__).resolve().parents[2]


def _documents(ratio: float) -> tuple[dict[str, dict], dict[str, Figure], dict[str, str]]:
    figures = {
        "ingest_ratio": Figure("ingest_ratio", "Gateway ingest ratio", ratio, "x", ">= 0.7x",
                               ratio >= 0.7, "gateway 5,000 acked/s"),
        "heap_per_tap": Figure("heap_per_tap", "Heap per tap", 620, "B", "<= 2 KB", True),
    }
    documents = {
        "gateway_ingest": {"command": ".venv/bin/python bench/gateway_ingest.py",
                           "figures": [], "comparisons": {
                               "bare_paho_msg_s": 10_000.0, "gateway_acked_s": ratio * 10_000,
                               "ingest_only_acked_s": 6_000.0, "raw_sqlite_rows_s": 90_000.0,
                               "gateway_batched_records_s": 30_000.0, "relay_acked_s": 4_000.0}},
        "firmware_heap": {"command": ".venv/bin/python bench/firmware_heap.py", "figures": []},
    }
    sources = {"ingest_ratio": "gateway_ingest", "heap_per_tap": "firmware_heap"}
    return documents, figures, sources


def _render(ratio: float) -> str:
    documents, figures, sources = _documents(ratio)
    return report.render(documents, figures, sources, generated="now", commit="abc",
                         elapsed_s=60, plot=None, quick=False)


def test_every_design_target_has_a_row_and_unmeasured_ones_say_so() -> None:
    text = _render(0.5)
    rows = [line for line in text.splitlines() if line.startswith("| ") and "Reproduce" not in line]
    for _, words in report.TARGETS:
        assert any(line.startswith(f"| {words} |") for line in rows), words
    assert re.search(r"^\| Gateway ingest when readers batch.*\| not measured \| — \| — \|$",
                     text, re.M)
    assert "`batched_rate`" in text  # listed as not measured


def test_a_missed_target_is_marked_and_explained() -> None:
    text = _render(0.46)
    row = next(line for line in text.splitlines() if line.startswith("| Gateway ingest, single"))
    assert "| 0.46x | **not met** | `.venv/bin/python bench/gateway_ingest.py` |" in row
    assert "### Where a target is not met" in text
    assert report.LIMITS["ingest_ratio"] in text
    side_by_side = text.split("## Side by side")[1]
    assert "| 0.46x |" in side_by_side
    relay = next(line for line in side_by_side.splitlines() if "raw Mosquitto relay" in line)
    assert "| 4,000 acks/s (0.40x the bare subscriber) |" in relay and relay.endswith("| 1.15x |")


def test_a_met_target_is_not_explained() -> None:
    text = _render(0.8)
    assert "| 0.80x | met |" in text
    assert "Where a target is not met" not in text
    assert report.LIMITS["ingest_ratio"] not in text


def test_command_line_drops_the_json_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", [str(ROOT / "bench" / "latency.py"), "--rates", "50",
                                      "--json", "/tmp/x.json", "--seconds", "2"])
    assert results.command_line() == ".venv/bin/python bench/latency.py --rates 50 --seconds 2"
    monkeypatch.setattr(sys, "argv", ["bench/outage.py", "--json=/tmp/y.json", "--quick"])
    assert results.command_line().endswith("bench/outage.py --quick")


def test_written_figures_load_back(tmp_path: Path) -> None:
    figure = Figure("k", "label", 1.5, "ms", "<= 25 ms", True, "note")
    results.write(tmp_path / "f.json", "latency", [figure], sweep={"rates": [50]})
    document, figures = results.load(tmp_path / "f.json")
    assert figures == [figure]
    assert document["bench"] == "latency" and document["sweep"] == {"rates": [50]}
    assert document["machine"]["cpus"].split()[0].isdigit()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_make_bench_quick_writes_the_report(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "bench/report.py", "--quick", "--only",
                          "firmware_heap", "flash_per_tap", "latency", "--out", str(tmp_path)],
                         cwd=ROOT, capture_output=True, text=True, timeout=280)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    text = (tmp_path / "BENCHMARKS.md").read_text(encoding="utf-8")
    assert "Smoke sizes" in text
    assert re.search(r"^\| Reader firmware on the MicroPython VM: <= 2 KB heap allocated per tap "
                     r"\| \d+ B \| (met|\*\*not met\*\*) \|", text, re.M), text
    assert (tmp_path / "bench" / "latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for name in ("firmware_heap", "flash_per_tap", "latency"):
        assert (tmp_path / "bench" / f"{name}.txt").stat().st_size > 0
