"""Reader firmware for the ESP32 (MicroPython). Hardware is injected, never imported here."""
