"""`make run` (python -m sim.demo) and the gateway command, as a user starts them.

The demo runs in its own process, as `make run` starts it, with a small school, a fast morning
and ``--summary``: the JSON ground truth it writes (taps per reader, the records each reader's
firmware made and which of them the gateway stored, events, what the Ed-Fi and Zalo peers hold)
is checked here against an independent regeneration of the school from the same seed.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from sim.broker import MosquittoBroker
from sim.school import generate_school

ROOT = Path(__file__).resolve().parents[2]


def _summary(path: Path) -> dict[str, Any]:
    summary: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return summary


def _nothing_lost(s: dict[str, Any]) -> None:
    """Every record each reader's firmware made is stored once, none is left in a queue."""
    assert s["nothing_lost"]
    for reader in s["readers"].values():
        assert reader["records_made"] == reader["stored"] > 0, reader
        assert reader["missing"] == reader["unexpected"] == reader["doubled"] == 0, reader
        assert reader["queue_left"] == 0 and reader["crashed"] is None, reader
    assert s["records_made"] == s["scans_stored"]
    assert not Path(s["workdir"]).exists(), "the temporary directory is removed"


@pytest.mark.slow
def test_demo_plays_a_morning_through_the_whole_gateway(tmp_path: Path) -> None:
    summary_file = tmp_path / "summary.json"
    out = subprocess.run(
        [sys.executable, "-m", "sim.demo", "--readers", "3", "--speed", "300",
         "--class-size", "5", "--duration", "16", "--summary", str(summary_file)],
        cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    s = _summary(summary_file)
    assert not s["interrupted"]
    _nothing_lost(s)
    # every tap the script made became a record (the script never taps one card twice at one
    # reader within the firmware's debounce), so every tap is stored exactly once
    assert all(r["taps"] == r["records_made"] for r in s["readers"].values())
    assert s["taps"] == s["scans_stored"]
    assert s["repeats"]["same_reader"] >= 1 and s["repeats"]["other_reader"] >= 1
    events = s["events"]
    # repeats made no second event: one check-in per student who came
    assert events["check_in"] == len(s["arrived_students"])
    assert events["check_in"] + s["school"]["absent_planned"] == s["school"]["students"]
    assert events["late"] >= 1 and set(s["late_students"]) <= set(s["arrived_students"])
    assert events["unknown_card"] == s["unknown_card_taps"] == 1
    assert s["quarantined"] == 1  # the forged batch
    off = s["offline"]
    assert off["cut"] and off["back"] and off["drained"] and off["seen_offline_by_gateway"]
    assert off["taps_while_offline"] >= 1 and off["queued_at_return"] >= 1
    # Ed-Fi holds every event once: In Attendance per check-in, Tardy per late arrival
    edfi = s["edfi"]
    assert edfi["records"] == edfi["expected"] == events["check_in"] + events["late"] \
        + events.get("absent", 0)
    assert edfi["by_category"]["In Attendance"] == events["check_in"]
    assert edfi["by_category"]["Tardy"] == events["late"]
    assert set(s["outbox"]) == {"delivered"}  # nothing pending, nothing parked
    # one Zalo message per consenting guardian of each student who came, none to the others
    school = generate_school(s["seed"], s["class_size"])
    came = set(s["arrived_students"])
    assert s["zalo"]["phones"] == sorted(g.phone for st in school.students if st.student_id in came
                                         for g in st.guardians if g.consent)
    assert not set(s["zalo"]["phones"]) & school.guardian_phones(consent=False)
    assert s["zalo"]["duplicates"] == 0
    assert s["staff_webhook"]["kinds"] == ["unknown_card"]
    # the story as printed
    assert s["dashboard"] in out.stdout
    for text in ("Roster import", "readers connected", "loses its Wi-Fi",
                 "the gateway shows reader", "drained its backlog", "unknown card",
                 "forged batch", "late:", "a sample Zalo message", "quẹt/taps",
                 "nothing lost, nothing doubled"):
        assert text in out.stdout, text
    assert re.search(r"^   6A1 +5 ", out.stdout, re.MULTILINE), "the per-class table"


def _log_in(base: str, username: str, password: str) -> tuple[int, str]:
    """Log in to the dashboard as a browser does; the status and path of the page reached."""
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
    with opener.open(base + "login", timeout=10) as page:
        form = page.read().decode()
    token = re.search(r'name="login_token" value="([^"]+)"', form)
    assert token is not None, form[:2000]
    body = urllib.parse.urlencode({"login_token": token[1], "username": username,
                                   "password": password, "next": "/"}).encode()
    with opener.open(base + "login", data=body, timeout=10) as landed:
        return landed.status, urllib.parse.urlsplit(landed.url).path


@pytest.mark.slow
def test_demo_stops_on_sigint_mid_morning_with_nothing_lost(tmp_path: Path) -> None:
    summary_file = tmp_path / "summary.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "sim.demo", "--readers", "2", "--speed", "100",
         "--class-size", "8", "--summary", str(summary_file)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 30
        seen = []
        for line in proc.stdout:  # a progress line at least every 2 s
            seen.append(line)
            if "loses its Wi-Fi" in line or time.monotonic() > deadline:
                break
        assert "loses its Wi-Fi" in seen[-1], "".join(seen)
        # the dashboard is up, with the logins printed
        header = "".join(seen)
        url = re.search(r"dashboard: (http://127\.0\.0\.1:\d+/)", header)
        viewer = re.search(r"viewer / (\S+),", header)
        assert url is not None and viewer is not None, header
        assert _log_in(url[1], "viewer", viewer[1]) == (200, "/")
        time.sleep(2)  # taps queue at the offline reader
        proc.send_signal(signal.SIGINT)
        rest, err = proc.communicate(timeout=40)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    output = "".join(seen) + rest
    assert proc.returncode == 0, output + err
    assert "stopping" in output and "nothing lost, nothing doubled" in output
    s = _summary(summary_file)
    assert s["interrupted"]
    _nothing_lost(s)
    off = s["offline"]
    # stopped while the reader was offline: it got its link back and drained before the end
    assert off["cut"] and off["back"] and off["drained"] and off["taps_while_offline"] >= 1
    assert s["readers"][str(off["reader"])]["stored"] >= off["taps_while_offline"]


def test_gateway_command_reports_a_bad_config(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text('[gateway]\nschool = "s"\n[mqtt]\nport = 0\n')
    out = subprocess.run([sys.executable, "-m", "gateway.cli", "run", "--config", str(config)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    assert "Configuration error" in out.stderr and "mqtt.port" in out.stderr


def test_gateway_command_runs_and_stops_cleanly_on_sigterm(
        tmp_path: Path, mosquitto_broker: MosquittoBroker) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(f'[gateway]\nschool = "s"\n[mqtt]\nport = {mosquitto_broker.port}\n'
                      f'[metrics]\nlisten = ""\n')
    proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "run", "--config", str(config)],
                            stderr=subprocess.PIPE, text=True, env={**os.environ})
    try:
        deadline = time.monotonic() + 20
        assert proc.stderr is not None
        for line in proc.stderr:
            if '"event": "connected"' in line or time.monotonic() > deadline:
                break
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert '"event": "stopped"' in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            pytest.fail("gateway did not stop on SIGTERM")
    assert (tmp_path / "gateway.db").exists()
