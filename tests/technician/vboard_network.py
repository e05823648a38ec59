"""``network`` for the virtual board: a Wi-Fi station that joins the access point named in
``/lib/vboard.json`` (``wifi``: ``ssid``, ``password``; MicroPython code, runs in the VM)."""

import json

with open("/lib/vboard.json") as _f:
    _WIFI = json.load(_f).get("wifi") or {}

STA_IF = 0
AP_IF = 1
STAT_IDLE = 1000
STAT_CONNECTING = 1001
STAT_GOT_IP = 1010
STAT_NO_AP_FOUND = 201
STAT_WRONG_PASSWORD = 202


class WLAN:
    def __init__(self, interface=STA_IF):
        self._active = False
        self._status = STAT_IDLE

    def active(self, v=None):
        if v is None:
            return self._active
        self._active = bool(v)
        return None

    def config(self, *args, **kw):
        return None

    def connect(self, ssid, password=""):
        if ssid != _WIFI.get("ssid"):
            self._status = STAT_NO_AP_FOUND
        elif password != _WIFI.get("password", ""):
            self._status = STAT_WRONG_PASSWORD
        else:
            self._status = STAT_GOT_IP

    def disconnect(self):
        self._status = STAT_IDLE

    def isconnected(self):
        return self._active and self._status == STAT_GOT_IP

    def status(self, param=None):
        return -55 if param == "rssi" else self._status

    def ifconfig(self):
        return ("192.168.1.50", "255.255.255.0", "192.168.1.1", "192.168.1.1")
