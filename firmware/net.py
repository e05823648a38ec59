"""Network bring-up on the reader: a Wi-Fi station or Ethernet (LAN8720), then SNTP time sync.

The link interface -- what the MQTT link (``firmware/mqtt_link.py``) and the heartbeat rely on,
the same for ``WifiLink``, ``EthernetLink`` and the simulator's loopback network:

- ``link_type``: ``"wifi"`` or ``"ethernet"``;
- ``is_up()``: the interface is up and has an IP address;
- ``rssi_dbm``: the access point's signal in dBm while up (Wi-Fi), else 0;
- ``async run()``: bring the interface up and wait for an IP address (at most
  ``connect_timeout_ms`` per attempt), then keep it up: a lost access point or an unplugged cable
  is retried at once, then after a capped exponential ``Backoff`` (every ``_RESET_AFTER``
  failures the interface is restarted). After each link-up the clock is set by SNTP
  (``firmware/sntp.py``) from ``network.ntp``, else from the MQTT broker's host (the school's
  gateway Pi runs an NTP server), and again every ``network.ntp_interval_s``; a failed sync is
  retried after its own backoff. ``run`` ends only with ``stop()``.

Also here: ``parse_network``, the check of config.json's ``network`` table, called at boot (by
``firmware.hw_esp32.build_network``) and by the technician's tools; its errors name the key.

The ``network`` and ``machine`` modules are never imported here: ``hw_esp32.build_network``
passes them in, the tests pass fakes.
"""

import asyncio

from firmware import sntp
from firmware.aio import sleep_ms, wait_ms
from firmware.backoff import Backoff
from firmware.config import ConfigError
from firmware.ticks import ticks_add, ticks_diff, ticks_ms
from protocol.compat import const

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from firmware.clock import Clock

_RESET_AFTER = const(4)  # consecutive failed attempts before the interface is restarted
DEFAULT_PORT = const(1883)
DEFAULT_NTP_INTERVAL_S = const(21600)
_NTP_INTERVAL_RANGE = (60, 86400)  # 1 min .. 1 day (the tick arithmetic allows 6 days)
_LINK_TYPES = ("wifi", "ethernet", "rs485")
_KNOWN = (
    "ssid",
    "password",
    "hostname",
    "broker",
    "port",
    "ntp",
    "ntp_interval_s",
    "mqtt_password",
)
_HOST_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-:"
_HOSTNAME_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789-"


# -- config.json's network table ------------------------------------------------------------------


class NetSettings:
    """The checked ``network`` table, defaults applied."""

    def __init__(self) -> None:
        self.ssid = ""
        self.password = ""
        self.hostname = ""
        self.broker = ""
        self.port = DEFAULT_PORT
        self.ntp = ""  # the NTP server: network.ntp, else the broker
        self.ntp_interval_s = DEFAULT_NTP_INTERVAL_S
        self.warnings: list[str] = []


def _text(table: "dict[str, Any]", key: str, required: str = "") -> str:
    value = table.get(key)
    if value is None:
        if required:
            raise ConfigError("network." + key + ": required " + required)
        return ""
    if not isinstance(value, str):
        raise ConfigError("network." + key + ": must be a string")
    return value


def _host(table: "dict[str, Any]", key: str, required: str = "") -> str:
    value = _text(table, key, required)
    if (value or key in table) and (
        not 0 < len(value) <= 253 or any(c not in _HOST_CHARS for c in value)
    ):
        raise ConfigError("network." + key + ": must be an IP address or a host name")
    return value


def _int(table: "dict[str, Any]", key: str, default: int, lowest: int, highest: int) -> int:
    value = table.get(key, default)
    if type(value) is not int or not lowest <= value <= highest:
        raise ConfigError(
            "network." + key + ": must be an integer " + str(lowest) + ".." + str(highest)
        )
    return value


def parse_network(table: "dict[str, Any]", link_type: str) -> NetSettings:
    """Check config.json's ``network`` table for a board whose link is ``link_type`` (the
    profile's ``network.type``); raise ``ConfigError`` naming the key at fault."""
    if not isinstance(table, dict):
        raise ConfigError("network: must be a JSON object")
    if link_type not in _LINK_TYPES:
        raise ConfigError("network: unknown link type " + repr(link_type))
    s = NetSettings()
    ip = link_type != "rs485"
    wifi = link_type == "wifi"
    s.ssid = _text(table, "ssid", "for a Wi-Fi board" if wifi else "")
    if s.ssid or "ssid" in table:
        if not 0 < len(s.ssid.encode()) <= 32:
            raise ConfigError("network.ssid: must be 1-32 bytes")
        if not wifi:
            s.warnings.append("network.ssid: ignored, this board's link is " + link_type)
    s.password = _text(table, "password")
    n = len(s.password)
    passphrase = 8 <= n <= 63 and all(" " <= c <= "~" for c in s.password)
    hex_key = n == 64 and all(c in "0123456789abcdefABCDEF" for c in s.password)
    if n and not (passphrase or hex_key):
        raise ConfigError(
            "network.password: a WPA passphrase is 8-63 printable ASCII characters "
            "(or 64 hex digits)"
        )
    if wifi and not n:
        s.warnings.append("network.password: empty, the reader joins an open Wi-Fi network")
    s.hostname = _text(table, "hostname")
    if s.hostname or "hostname" in table:
        h = s.hostname
        if not 0 < len(h) <= 32 or h[0] == "-" or h[-1] == "-":
            raise ConfigError("network.hostname: must be 1-32 characters of a-z 0-9 -")
        if any(c not in _HOSTNAME_CHARS for c in h):
            raise ConfigError("network.hostname: must be 1-32 characters of a-z 0-9 -")
    s.broker = _host(table, "broker", "for a Wi-Fi or Ethernet board" if ip else "")
    s.port = _int(table, "port", DEFAULT_PORT, 1, 65535)
    s.ntp = _host(table, "ntp") or s.broker
    lowest, highest = _NTP_INTERVAL_RANGE
    s.ntp_interval_s = _int(table, "ntp_interval_s", DEFAULT_NTP_INTERVAL_S, lowest, highest)
    _text(table, "mqtt_password")  # the MQTT link's; only its type is checked here
    for key in table:
        if key not in _KNOWN:
            s.warnings.append("network." + str(key) + ": unknown key, ignored")
    return s


def check_network(table: "dict[str, Any]", link_type: str) -> "list[str]":
    """``parse_network`` for the technician's tools: the warnings, or ``ConfigError``."""
    return parse_network(table, link_type).warnings


# -- links ----------------------------------------------------------------------------------------


class NetLink:
    """What Wi-Fi and Ethernet share: the attempt/hold loop, backoff, SNTP. See the module doc."""

    link_type = ""

    def __init__(
        self,
        network: "Any",
        settings: NetSettings,
        clock: "Clock",
        seed: str = "reader",
        *,
        connect_timeout_ms: int = 20000,
        poll_ms: int = 250,
        backoff_first_ms: int = 1000,
        backoff_cap_ms: int = 60000,
        ntp_port: int = sntp.NTP_PORT,
        ntp_timeout_ms: int = 2000,
        ntp_attempts: int = 3,
        ntp_interval_ms: "int | None" = None,
        ntp_retry_first_ms: int = 10000,
        ntp_retry_cap_ms: int = 600000,
    ) -> None:
        self._network = network
        self.settings = settings
        self.clock = clock
        self.connect_timeout_ms = connect_timeout_ms
        self.poll_ms = poll_ms
        self.backoff = Backoff(seed, backoff_first_ms, backoff_cap_ms)
        self.ntp_port = ntp_port
        self.ntp_timeout_ms = ntp_timeout_ms
        self.ntp_attempts = ntp_attempts
        if ntp_interval_ms is None:
            ntp_interval_ms = settings.ntp_interval_s * 1000
        self.ntp_interval_ms = ntp_interval_ms
        self.ntp_backoff = Backoff(seed + "/ntp", ntp_retry_first_ms, ntp_retry_cap_ms)
        self._nic: Any = None
        self._up = False
        self._up_event = asyncio.Event()
        self._stop = asyncio.Event()
        self._running = False
        self.ip = ""
        self.error = ""  # why the last attempt failed
        self.ntp_error = ""  # why the last time sync failed
        self.last_sample: sntp.Sample | None = None
        # counters, for diagnostics and tests
        self.link_ups = 0
        self.link_losses = 0
        self.connect_failures = 0
        self.ntp_syncs = 0
        self.ntp_failures = 0

    # -- the interface -------------------------------------------------------------------------

    def is_up(self) -> bool:
        return self._up

    @property
    def rssi_dbm(self) -> int:
        return 0

    async def wait_up(self, timeout_ms: int) -> bool:
        """True once the link is up (at once if it is), False after ``timeout_ms``."""
        return self._up or await wait_ms(self._up_event.wait(), timeout_ms)

    def stop(self) -> None:
        """End ``run`` (the interface is left as it is)."""
        self._running = False
        self._stop.set()

    async def run(self) -> None:
        self._running = True
        self._stop.clear()
        failures = 0
        try:
            while self._running:
                if await self._attempt():
                    failures = 0
                    self.backoff.reset()
                    self._set_up(True)
                    await self._hold()
                    self._set_up(False)
                    if self._running:
                        self.link_losses += 1
                    continue
                if self._stop.is_set():
                    break
                failures += 1
                self.connect_failures += 1
                try:
                    self._failed(failures % _RESET_AFTER == 0)
                except OSError:
                    pass
                await self._pause(self.backoff.next())
        finally:
            self._running = False
            self._set_up(False)

    # -- the loop ------------------------------------------------------------------------------

    def _set_up(self, up: bool) -> None:
        if up:
            self.link_ups += 1
            self._up_event.set()
        else:
            self._up_event.clear()
        self._up = up

    async def _pause(self, ms: int) -> None:
        """A backoff pause that ``stop()`` cuts short."""
        await wait_ms(self._stop.wait(), ms)

    def _ok(self) -> bool:
        try:
            return self._nic is not None and self._link_ok()
        except OSError:
            return False

    async def _attempt(self) -> bool:
        """One bring-up: start the interface, then wait for an IP address, bounded."""
        try:
            self._start()
        except (OSError, ValueError, TypeError) as exc:
            self.error = self.link_type + ": " + repr(exc)
            return False
        deadline = ticks_add(ticks_ms(), self.connect_timeout_ms)
        while self._running:
            if self._ok():
                self.ip = self._address()
                self.error = ""
                return True
            left = ticks_diff(deadline, ticks_ms())
            if left <= 0:
                self.error = (
                    self.link_type
                    + ": no IP address within "
                    + str(self.connect_timeout_ms)
                    + " ms ("
                    + self._state()
                    + ")"
                )
                return False
            await sleep_ms(min(self.poll_ms, left))  # polls allocate nothing (heap churn)
        return False

    async def _hold(self) -> None:
        """While the link stays up: sync the clock now, then every interval."""
        self.ntp_backoff.reset()
        next_sync = ticks_ms()
        while self._running and self._ok():
            if ticks_diff(ticks_ms(), next_sync) >= 0:
                wait = await self._sync_time()
                next_sync = ticks_add(ticks_ms(), wait)
                continue
            await sleep_ms(self.poll_ms)

    async def _sync_time(self) -> int:
        """Set the clock by SNTP; return the milliseconds until the next sync."""
        host = self.settings.ntp
        if not host:
            return self.ntp_interval_ms
        try:
            self.last_sample = await sntp.sync(
                self.clock, host, self.ntp_port, self.ntp_timeout_ms, self.ntp_attempts
            )
        except sntp.SntpError as exc:
            self.ntp_failures += 1
            self.ntp_error = host + ": " + str(exc)
            return self.ntp_backoff.next()
        self.ntp_syncs += 1
        self.ntp_error = ""
        self.ntp_backoff.reset()
        return self.ntp_interval_ms

    def _address(self) -> str:
        nic = self._nic
        try:
            return str(nic.ipconfig("addr4")[0])
        except (AttributeError, OSError, ValueError, TypeError):
            pass
        try:
            return str(nic.ifconfig()[0])
        except (AttributeError, OSError, ValueError, TypeError):
            return ""

    def _state(self) -> str:
        """The interface's status as words, for ``error``."""
        try:
            status = self._nic.status()
        except (AttributeError, OSError):
            return "no status"
        for name, words in self._STATES:
            if getattr(self._network, name, None) == status:
                return words
        return "status " + str(status)

    def _set_hostname(self) -> None:
        name = self.settings.hostname
        hostname = getattr(self._network, "hostname", None)  # MicroPython 1.20 and later
        if name and hostname is not None:
            hostname(name)  # sent with the DHCP request

    # -- per interface -------------------------------------------------------------------------

    _STATES: "tuple[tuple[str, str], ...]" = ()

    def _start(self) -> None:
        """Create/activate the interface and begin connecting; may raise OSError."""
        raise NotImplementedError

    def _link_ok(self) -> bool:
        raise NotImplementedError

    def _failed(self, reset: bool) -> None:
        """After a failed attempt (``reset``: restart the interface too)."""


class WifiLink(NetLink):
    """A Wi-Fi station: ``network.WLAN(network.STA_IF)``, ``network.ssid``/``password``.

    Each attempt is ``disconnect()`` (ending any association the driver keeps retrying) then
    ``connect(ssid, password)``; a failed attempt disconnects, so the radio is quiet during the
    backoff. Power saving is turned off: it delays received frames (acks, commands) by up to a
    beacon interval, and a gate reader is mains powered.
    """

    link_type = "wifi"
    _STATES = (
        ("STAT_GOT_IP", "got an IP address"),
        ("STAT_CONNECTING", "still connecting"),
        ("STAT_NO_AP_FOUND", "no access point with this SSID"),
        ("STAT_WRONG_PASSWORD", "wrong password"),
        ("STAT_BEACON_TIMEOUT", "access point lost"),
        ("STAT_ASSOC_FAIL", "association failed"),
        ("STAT_HANDSHAKE_TIMEOUT", "handshake timeout"),
        ("STAT_IDLE", "idle"),
    )

    @property
    def rssi_dbm(self) -> int:
        if not self._up:
            return 0
        try:
            return int(self._nic.status("rssi"))
        except (OSError, ValueError, TypeError):
            return 0

    def _start(self) -> None:
        net = self._network
        self._set_hostname()
        nic = self._nic
        if nic is None:
            nic = self._nic = net.WLAN(net.STA_IF)
        if not nic.active():
            nic.active(True)
            pm_none = getattr(nic, "PM_NONE", None)
            if pm_none is not None:
                try:
                    nic.config(pm=pm_none)
                except (OSError, ValueError):
                    pass
        if nic.isconnected():
            return
        try:
            nic.disconnect()
        except OSError:
            pass
        s = self.settings
        nic.connect(s.ssid, s.password)

    def _link_ok(self) -> bool:
        return bool(self._nic.isconnected())  # STA: associated and has an IP address

    def _failed(self, reset: bool) -> None:
        nic = self._nic
        if nic is not None:
            nic.disconnect()
            if reset:
                nic.active(False)


class EthernetLink(NetLink):
    """Ethernet through a LAN8720 PHY on the ESP32's RMII MAC, pins from the board profile's
    ``network`` table (``mdc``, ``mdio``, ``power``, ``phy_addr``, ``ref_clk``,
    ``ref_clk_mode``); ``pin`` is ``machine.Pin``.

    The interface is created on the first attempt (a PHY that does not answer is an attempt that
    failed, retried with backoff) and is up when the PHY has a link and DHCP gave an address.
    """

    link_type = "ethernet"
    _STATES = (
        ("ETH_GOT_IP", "got an IP address"),
        ("ETH_CONNECTED", "link up, waiting for DHCP"),
        ("ETH_DISCONNECTED", "no link: cable unplugged?"),
        ("ETH_STARTED", "started, no link yet"),
        ("ETH_STOPPED", "stopped"),
        ("ETH_INITIALIZED", "initialised"),
    )

    def __init__(
        self,
        network: "Any",
        pin: "Any",
        spec: "dict[str, Any]",
        settings: NetSettings,
        clock: "Clock",
        seed: str = "reader",
        **options: "Any",
    ) -> None:
        super().__init__(network, settings, clock, seed, **options)
        self._pin = pin
        self._spec = spec

    def _start(self) -> None:
        net = self._network
        self._set_hostname()
        nic = self._nic
        if nic is None:
            spec = self._spec
            pin = self._pin
            power = spec.get("power")
            nic = self._nic = net.LAN(
                mdc=pin(spec["mdc"]),
                mdio=pin(spec["mdio"]),
                power=None if power is None else pin(power),
                phy_type=net.PHY_LAN8720,
                phy_addr=spec["phy_addr"],
                ref_clk=pin(spec["ref_clk"]),
                ref_clk_mode=pin.OUT if spec["ref_clk_mode"] == "out" else pin.IN,
            )
        if not nic.active():
            nic.active(True)

    def _link_ok(self) -> bool:
        # isconnected() is the PHY's link; the address comes from DHCP after it (GOT_IP, or an
        # address kept over a short unplug, for which the driver may not report GOT_IP again)
        nic = self._nic
        if not nic.isconnected():
            return False
        return nic.status() == self._network.ETH_GOT_IP or self._address() not in ("", "0.0.0.0")

    def _failed(self, reset: bool) -> None:
        if reset and self._nic is not None:
            self._nic.active(False)
