# MicroPython freeze manifest for the reader's ESP32 firmware image.
#
# Frozen modules run from flash: their bytecode costs no heap, which is what keeps the reader's
# steady heap to its data (bench/firmware_heap.py prints both figures). Build from a MicroPython
# v1.29 checkout with ESP-IDF installed (see README.md in this folder):
#
#   make -C ports/esp32 BOARD=ESP32_GENERIC \
#       FROZEN_MANIFEST=/path/to/repo/hardware/esp32-image/manifest.py
#
# Paths are relative to this file. tests/test_esp32_manifest.py checks that the protocol list
# below is exactly the runtime-neutral protocol code (tests/project_files.py).

include("$(PORT_DIR)/boards/manifest.py")

package("firmware", base_path="../..", opt=2)
package(
    "protocol",
    files=[
        "__init__.py",
        "card.py",
        "cardforms.py",
        "cobs.py",
        "codec.py",
        "compat.py",
        "crc16.py",
        "errors.py",
        "frame.py",
        "hmac256.py",
        "peer.py",
        "topics.py",
    ],
    base_path="../..",
    opt=2,
)
