"""Network bring-up (firmware/net.py) with a fake ``network`` module and a real SNTP server on
127.0.0.1: a Wi-Fi station that connects after a few polls, loses its access point and gets it
back; Ethernet from the Olimex ESP32-POE profile with a PHY that fails to start and a cable that
is unplugged and plugged back. Reconnects follow the backoff, every attempt respects its timeout,
the clock is synced after each link-up and every interval, a failed sync is retried after its
own backoff. Also: config.json's ``network`` table checks, ``hw_esp32.build_network`` with fake
``machine``/``network`` modules, and the Wi-Fi state machine on the real MicroPython VM."""

from __future__ import annotations

import asyncio
import importlib
import itertools
import json
import sys
import time
import types
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

import firmware
from firmware.backoff import Backoff
from firmware.clock import Clock
from firmware.config import ConfigError, parse_config
from firmware.net import EthernetLink, NetLink, WifiLink, check_network, parse_network
from tests.firmware.test_sntp import LOOPBACK, SntpServer, assert_synced
from tests.mpvm import MPVM
from tests.project_files import REPO_ROOT

# short timings so the whole file runs in a few seconds
FAST: dict[str, Any] = {
    "connect_timeout_ms": 300,
    "poll_ms": 20,
    "backoff_first_ms": 100,
    "backoff_cap_ms": 400,
    "ntp_timeout_ms": 200,
    "ntp_attempts": 1,
    "ntp_retry_first_ms": 100,
    "ntp_retry_cap_ms": 200,
}
WIFI = {
    "ssid": "school-wifi",
    "password": "correct horse",
    "broker": LOOPBACK,
    "hostname": "gate-1",
}


# -- a fake ``network`` module (the ESP32 port's constants) ----------------------------------------


class FakeWLAN:
    """The ESP32 STA interface: connects ``polls_to_connect`` polls after ``connect`` while its
    access point is there and the password is right; ``ap_present = False`` drops the link."""

    PM_NONE = 0

    def __init__(self) -> None:
        self.on = False
        self.ap_present = True
        self.password_ok = True
        self.polls_to_connect = 3
        self.requested = False
        self.connected = False
        self._countdown = 0
        self.rssi = -61
        self.connects: list[tuple[float, str, str]] = []
        self.disconnects: list[float] = []
        self.activations = 0
        self.deactivations = 0
        self.configs: list[dict[str, Any]] = []

    def active(self, value: bool | None = None) -> bool | None:
        if value is None:
            return self.on
        if value and not self.on:
            self.activations += 1
        if not value and self.on:
            self.deactivations += 1
            self.requested = self.connected = False
        self.on = bool(value)
        return None

    def config(self, **kw: Any) -> None:
        self.configs.append(kw)

    def connect(self, ssid: str, key: str) -> None:
        if not self.on:
            raise OSError("Wifi Not Started")
        self.connects.append((time.monotonic(), ssid, key))
        self.requested = True
        self.connected = False
        self._countdown = self.polls_to_connect

    def disconnect(self) -> None:
        self.disconnects.append(time.monotonic())
        self.requested = self.connected = False

    def isconnected(self) -> bool:
        if self.connected and not self.ap_present:
            self.connected = False
        elif self.requested and not self.connected and self.ap_present and self.password_ok:
            self._countdown -= 1
            self.connected = self._countdown <= 0
        return self.connected

    def status(self, param: str | None = None) -> int:
        if param == "rssi":
            if not self.connected:
                raise OSError("Wifi Not Connected")
            return self.rssi
        if self.connected:
            return FakeNetwork.STAT_GOT_IP
        if not self.requested:
            return FakeNetwork.STAT_IDLE
        if not self.ap_present:
            return FakeNetwork.STAT_NO_AP_FOUND
        if not self.password_ok:
            return FakeNetwork.STAT_WRONG_PASSWORD
        return FakeNetwork.STAT_CONNECTING

    def ipconfig(self, what: str) -> tuple[str, str]:
        assert what == "addr4"
        return ("192.168.1.50", "255.255.255.0")


class FakeLAN:
    """The ESP32 Ethernet interface: link ``polls_to_link`` polls after activation while the
    cable is in, then an address one poll later; ``cable = False`` drops it."""

    def __init__(self, kwargs: dict[str, Any]) -> None:
        self.kwargs = kwargs
        self.on = False
        self.cable = True
        self.polls_to_link = 2
        self.got_ip_again = True  # False: after an unplug the driver keeps the address silently
        self.had_ip = False
        self.state = FakeNetwork.ETH_INITIALIZED
        self._countdown = 0
        self.activations = 0
        self.deactivations = 0

    def active(self, value: bool | None = None) -> bool | None:
        if value is None:
            return self.on
        if value and not self.on:
            self.activations += 1
            self.state = FakeNetwork.ETH_STARTED
            self._countdown = self.polls_to_link
        if not value and self.on:
            self.deactivations += 1
            self.state = FakeNetwork.ETH_STOPPED
        self.on = bool(value)
        return None

    def isconnected(self) -> bool:
        n = FakeNetwork
        if self.on:
            if not self.cable:
                if self.state != n.ETH_STARTED:
                    self.state = n.ETH_DISCONNECTED
                self._countdown = self.polls_to_link
            elif self.state == n.ETH_CONNECTED and (self.got_ip_again or not self.had_ip):
                self.state = n.ETH_GOT_IP
                self.had_ip = True
            elif self.state in (n.ETH_STARTED, n.ETH_DISCONNECTED):
                self._countdown -= 1
                if self._countdown <= 0:
                    self.state = n.ETH_CONNECTED
        return self.on and self.cable and self.state in (n.ETH_CONNECTED, n.ETH_GOT_IP)

    def status(self) -> int:
        return self.state

    def ipconfig(self, what: str) -> tuple[str, str]:
        assert what == "addr4"
        linked = self.state in (FakeNetwork.ETH_CONNECTED, FakeNetwork.ETH_GOT_IP)
        return ("10.0.0.7" if linked and self.had_ip else "0.0.0.0", "255.255.255.0")


class FakeNetwork:
    STA_IF = 0
    STAT_IDLE = 1000
    STAT_CONNECTING = 1001
    STAT_GOT_IP = 1010
    STAT_BEACON_TIMEOUT = 200
    STAT_NO_AP_FOUND = 201
    STAT_WRONG_PASSWORD = 202
    STAT_ASSOC_FAIL = 203
    STAT_HANDSHAKE_TIMEOUT = 204
    ETH_INITIALIZED = 0
    ETH_STARTED = 1
    ETH_STOPPED = 2
    ETH_CONNECTED = 3
    ETH_DISCONNECTED = 4
    ETH_GOT_IP = 5
    PHY_LAN8720 = 1

    def __init__(self) -> None:
        self.wlan = FakeWLAN()
        self.lan: FakeLAN | None = None
        self.lan_failures = 0  # LAN() raises this many times (a PHY that does not answer)
        self.hostnames: list[str] = []

    def WLAN(self, interface: int) -> FakeWLAN:  # the port's spelling
        assert interface == self.STA_IF
        return self.wlan

    def LAN(self, **kwargs: Any) -> FakeLAN:
        if self.lan_failures:
            self.lan_failures -= 1
            raise OSError("esp_eth_driver_install failed")
        self.lan = FakeLAN(kwargs)
        return self.lan

    def hostname(self, name: str) -> None:
        self.hostnames.append(name)


class FakePin:
    IN = 1
    OUT = 3

    def __init__(self, gpio: int) -> None:
        self.gpio = gpio

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FakePin) and other.gpio == self.gpio

    def __hash__(self) -> int:
        return self.gpio

    def __repr__(self) -> str:
        return f"Pin({self.gpio})"


# -- helpers ---------------------------------------------------------------------------------------


async def until(condition: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.005)


@pytest.fixture
async def ntp() -> AsyncIterator[SntpServer]:
    s = await SntpServer(offset_s=500_000.5).start()
    yield s
    s.close()


@pytest.fixture
async def running() -> AsyncIterator[Callable[[NetLink], asyncio.Task[None]]]:
    started: list[tuple[NetLink, asyncio.Task[None]]] = []

    def start(link: NetLink) -> asyncio.Task[None]:
        task = asyncio.create_task(link.run())
        started.append((link, task))
        return task

    yield start
    for link, task in started:
        link.stop()
        await asyncio.wait_for(task, 2)


def board(name: str) -> dict[str, Any]:
    profile: dict[str, Any] = json.loads(
        (REPO_ROOT / "hardware" / "boards" / (name + ".json")).read_text()
    )
    return profile


def ended(disconnects: list[float], start: float) -> float:
    """When the attempt that started at ``start`` gave up (its first disconnect after)."""
    return min(t for t in disconnects if t > start)


def retry_gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(times)]


# -- Wi-Fi -----------------------------------------------------------------------------------------


async def test_wifi_connects_syncs_loses_the_ap_and_reconnects_with_backoff(
    ntp: SntpServer, running: Callable[[NetLink], asyncio.Task[None]]
) -> None:
    net = FakeNetwork()
    wlan = net.wlan
    clock = Clock(rtc_seconds=lambda: 0)
    link = WifiLink(net, parse_network(WIFI, "wifi"), clock, "reader-7", ntp_port=ntp.port, **FAST)
    assert link.link_type == "wifi" and not link.is_up() and link.rssi_dbm == 0
    task = running(link)

    # up after a few polls; NTP from the broker's host (no network.ntp)
    assert await link.wait_up(2000)
    assert [(s, k) for _, s, k in wlan.connects] == [("school-wifi", "correct horse")]
    assert net.hostnames[0] == "gate-1" and wlan.configs == [{"pm": FakeWLAN.PM_NONE}]
    assert link.ip == "192.168.1.50" and link.rssi_dbm == -61 and link.error == ""
    await until(lambda: link.ntp_syncs == 1)
    assert_synced(clock, ntp, link.last_sample)
    assert link.last_sample is not None and link.last_sample.stratum == 2

    # the access point goes away: noticed within a couple of polls
    wlan.ap_present = False
    lost = time.monotonic()
    await until(lambda: not link.is_up())
    assert time.monotonic() - lost < 0.25
    assert link.rssi_dbm == 0 and link.link_losses == 1
    await until(lambda: link.connect_failures >= 3, timeout=5)
    assert "no access point" in link.error and "300 ms" in link.error

    # first retry at once, then connect_timeout + backoff between attempts, growing
    attempts = [t for t, _, _ in wlan.connects[1:]]
    assert attempts[0] - lost < 0.25
    expected = Backoff("reader-7", 100, 400)
    delays = [expected.next() / 1000 for _ in range(2)]
    for gap, delay in zip(retry_gaps(attempts[:3]), delays, strict=True):
        assert 0.3 + delay - 0.01 <= gap < 0.3 + delay + 0.25
    # each failed attempt lasted its timeout, then disconnected (the radio rests in the backoff)
    for start in attempts[:2]:
        assert 0.29 <= ended(wlan.disconnects, start) - start < 0.5

    # the access point is back: up again, time synced again
    wlan.ap_present = True
    await until(link.is_up, timeout=3)
    await until(lambda: link.ntp_syncs == 2)
    assert link.link_ups == 2 and len(ntp.requests) == 2 and link.error == ""
    assert link.backoff.base_ms == 100  # reset by the success
    link.stop()
    await asyncio.wait_for(task, 1)
    assert not link.is_up()


async def test_wifi_wrong_password_is_bounded_and_the_radio_is_restarted(
    running: Callable[[NetLink], asyncio.Task[None]],
) -> None:
    net = FakeNetwork()
    net.wlan.password_ok = False
    options = dict(FAST, connect_timeout_ms=100, backoff_first_ms=20, backoff_cap_ms=40)
    link = WifiLink(net, parse_network(WIFI, "wifi"), Clock(), "r", **options)
    running(link)
    await until(lambda: link.connect_failures >= 4, timeout=3)
    assert "wrong password" in link.error
    for start, _, _ in net.wlan.connects[:3]:
        assert 0.09 <= ended(net.wlan.disconnects, start) - start < 0.3  # the timeout, no more
    # after 4 failures in a row the interface is restarted, power saving set again
    await until(lambda: net.wlan.activations >= 2)
    assert net.wlan.deactivations == 1 and len(net.wlan.configs) == 2
    net.wlan.password_ok = True
    await until(link.is_up)


async def test_time_is_resynced_every_interval_and_a_failed_sync_retried(
    running: Callable[[NetLink], asyncio.Task[None]],
) -> None:
    ntp = await SntpServer(offset_s=-86400.0, behaviour="silent").start()
    try:
        net = FakeNetwork()
        clock = Clock(rtc_seconds=lambda: 0)
        # network.ntp wins over the broker (which is never contacted by this module)
        settings = parse_network(dict(WIFI, broker="192.0.2.10", ntp=LOOPBACK), "wifi")
        options = dict(FAST, ntp_timeout_ms=50, ntp_interval_ms=150)
        link = WifiLink(net, settings, clock, "r", ntp_port=ntp.port, **options)
        running(link)
        await until(lambda: link.ntp_failures >= 3)
        assert not clock.synced and "timeout" in link.ntp_error
        arrivals = [t for t, _ in ntp.requests]
        # retries: timeout + ntp backoff (100, then capped at 200, +-20 %)
        for gap in retry_gaps(arrivals[:3]):
            assert 0.05 + 0.08 - 0.01 <= gap < 0.05 + 0.24 + 0.2
        ntp.behaviour = "ok"
        await until(lambda: link.ntp_syncs >= 1)
        assert_synced(clock, ntp, link.last_sample)
        synced = len(ntp.requests)
        await until(lambda: link.ntp_syncs >= 3, timeout=2)
        gaps = retry_gaps([t for t, _ in ntp.requests[synced - 1 :]])
        assert all(0.14 <= g < 0.4 for g in gaps)  # every ntp_interval_ms
        assert link.ntp_error == "" and link.link_ups == 1
    finally:
        ntp.close()


async def test_kiss_of_death_backs_off(running: Callable[[NetLink], asyncio.Task[None]]) -> None:
    kod = await SntpServer(behaviour="kod").start()
    try:
        link = WifiLink(
            FakeNetwork(), parse_network(WIFI, "wifi"), Clock(), "r", ntp_port=kod.port, **FAST
        )
        running(link)
        await until(lambda: link.ntp_failures >= 2)
        assert "RATE" in link.ntp_error and not link.clock.synced
        assert retry_gaps([t for t, _ in kod.requests])[0] >= 0.08
    finally:
        kod.close()


# -- Ethernet --------------------------------------------------------------------------------------


async def test_ethernet_from_the_poe_profile_survives_a_bad_start_and_an_unplugged_cable(
    ntp: SntpServer, running: Callable[[NetLink], asyncio.Task[None]]
) -> None:
    net = FakeNetwork()
    net.lan_failures = 1
    spec = board("olimex-esp32-poe-mfrc522")["network"]
    settings = parse_network({"broker": LOOPBACK, "hostname": "gate-2"}, "ethernet")
    clock = Clock(rtc_seconds=lambda: 0)
    options = dict(FAST, connect_timeout_ms=200)
    link = EthernetLink(net, FakePin, spec, settings, clock, "r9", ntp_port=ntp.port, **options)
    assert link.link_type == "ethernet"
    running(link)

    await until(lambda: link.connect_failures == 1)
    assert "esp_eth_driver_install failed" in link.error
    assert await link.wait_up(2000)
    lan = net.lan
    assert lan is not None
    assert lan.kwargs == {
        "mdc": FakePin(23),
        "mdio": FakePin(18),
        "power": FakePin(12),
        "phy_type": FakeNetwork.PHY_LAN8720,
        "phy_addr": 0,
        "ref_clk": FakePin(17),
        "ref_clk_mode": FakePin.OUT,
    }
    assert net.hostnames[-1] == "gate-2" and link.ip == "10.0.0.7" and link.rssi_dbm == 0
    await until(lambda: link.ntp_syncs == 1)
    assert_synced(clock, ntp, link.last_sample)

    lan.cable = False
    await until(lambda: not link.is_up())
    await until(lambda: link.connect_failures >= 3, timeout=3)
    assert "cable unplugged" in link.error
    lan.cable = True
    await until(link.is_up, timeout=3)
    await until(lambda: link.ntp_syncs == 2)
    assert link.link_ups == 2 and link.link_losses == 1 and len(ntp.requests) == 2


async def test_ethernet_up_again_on_a_kept_address_without_a_new_got_ip(
    running: Callable[[NetLink], asyncio.Task[None]],
) -> None:
    net = FakeNetwork()
    spec = board("olimex-esp32-poe-mfrc522")["network"]
    settings = parse_network({"broker": LOOPBACK}, "ethernet")
    settings.ntp = ""  # no time sync in this test
    link = EthernetLink(net, FakePin, spec, settings, Clock(), "r", **FAST)
    running(link)
    assert await link.wait_up(2000)
    lan = net.lan
    assert lan is not None
    lan.got_ip_again = False
    lan.cable = False
    await until(lambda: not link.is_up())
    lan.cable = True
    await until(link.is_up)
    assert lan.state == FakeNetwork.ETH_CONNECTED and link.ip == "10.0.0.7"
    assert link.link_ups == 2 and link.connect_failures == 0


async def test_ethernet_restarts_the_phy_after_repeated_failures(
    running: Callable[[NetLink], asyncio.Task[None]],
) -> None:
    net = FakeNetwork()
    spec = dict(board("olimex-esp32-poe-mfrc522")["network"], ref_clk_mode="in")
    settings = parse_network({"broker": LOOPBACK}, "ethernet")
    options = dict(FAST, connect_timeout_ms=50, backoff_first_ms=10, backoff_cap_ms=20)
    link = EthernetLink(net, FakePin, spec, settings, Clock(), "r", **options)
    net.lan = None
    # a cable that is never plugged in
    orig = net.LAN

    def unplugged(**kw: Any) -> FakeLAN:
        lan = orig(**kw)
        lan.cable = False
        return lan

    net.LAN = unplugged  # type: ignore[method-assign]
    running(link)
    await until(lambda: link.connect_failures >= 4, timeout=3)
    lan = net.lan
    assert lan is not None and lan.kwargs["ref_clk_mode"] == FakePin.IN
    await until(lambda: lan.deactivations >= 1 and lan.activations >= 2)
    assert "no link yet" in link.error or "cable unplugged" in link.error


# -- config.json's network table -------------------------------------------------------------------


def test_defaults_and_warnings() -> None:
    s = parse_network({"ssid": "s", "broker": "192.168.1.2"}, "wifi")
    assert (s.ssid, s.password, s.broker, s.port) == ("s", "", "192.168.1.2", 1883)
    assert s.ntp == "192.168.1.2" and s.ntp_interval_s == 21600 and s.hostname == ""
    assert s.warnings == ["network.password: empty, the reader joins an open Wi-Fi network"]
    s = parse_network(
        {
            "broker": "gw.school.lan",
            "port": 8883,
            "ntp": "10.1.1.1",
            "ntp_interval_s": 3600,
            "ssid": "left-over",
            "mqtt_password": "x" * 32,
            "sssid": "typo",
        },
        "ethernet",
    )
    assert (s.port, s.ntp, s.ntp_interval_s) == (8883, "10.1.1.1", 3600)
    assert s.warnings == [
        "network.ssid: ignored, this board's link is ethernet",
        "network.sssid: unknown key, ignored",
    ]
    assert check_network({}, "rs485") == []  # the bus needs nothing here
    hex_key = {"ssid": "s", "broker": "gw", "password": "0123456789abcdef" * 4}
    assert parse_network(hex_key, "wifi").warnings == []


@pytest.mark.parametrize(
    ("table", "link_type", "message"),
    [
        ([], "wifi", "network: must be a JSON object"),
        ({"broker": "gw"}, "wifi", "network.ssid: required for a Wi-Fi board"),
        ({"ssid": 7, "broker": "gw"}, "wifi", "network.ssid: must be a string"),
        ({"ssid": "", "broker": "gw"}, "wifi", "network.ssid: must be 1-32 bytes"),
        ({"ssid": "é" * 17, "broker": "gw"}, "wifi", "network.ssid: must be 1-32 bytes"),
        ({"ssid": "s", "broker": "gw", "password": "short"}, "wifi", "network.password: a WPA"),
        ({"ssid": "s", "broker": "gw", "password": "x" * 64}, "wifi", "network.password"),
        ({"ssid": "s", "broker": "gw", "password": "mật khẩu 1"}, "wifi", "network.password"),
        ({"ssid": "s"}, "wifi", "network.broker: required for a Wi-Fi or Ethernet board"),
        ({}, "ethernet", "network.broker: required"),
        ({"broker": "gate way"}, "ethernet", "network.broker: must be an IP address or a host"),
        ({"broker": ""}, "ethernet", "network.broker: must be an IP address"),
        ({"broker": "gw", "port": 0}, "ethernet", "network.port: must be an integer 1..65535"),
        ({"broker": "gw", "port": "1883"}, "ethernet", "network.port: must be an integer"),
        ({"broker": "gw", "port": True}, "ethernet", "network.port: must be an integer"),
        ({"broker": "gw", "ntp": 5}, "ethernet", "network.ntp: must be a string"),
        ({"broker": "gw", "ntp": "a/b"}, "ethernet", "network.ntp: must be an IP address"),
        ({"broker": "gw", "ntp_interval_s": 59}, "ethernet", "network.ntp_interval_s: must be"),
        ({"broker": "gw", "ntp_interval_s": 86401}, "ethernet", "network.ntp_interval_s"),
        ({"broker": "gw", "hostname": "Gate_1"}, "ethernet", "network.hostname: must be 1-32"),
        ({"broker": "gw", "hostname": "-gate"}, "ethernet", "network.hostname"),
        ({"broker": "gw", "hostname": "g" * 33}, "ethernet", "network.hostname"),
        ({"broker": "gw", "mqtt_password": 1}, "ethernet", "network.mqtt_password: must be"),
        ({"port": 0}, "rs485", "network.port"),  # keys given are checked on any board
        ({}, "lora", "network: unknown link type 'lora'"),
    ],
)
def test_bad_network_tables(table: Any, link_type: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_network(table, link_type)
    assert str(info.value).startswith(message)


# -- hw_esp32.build_network ------------------------------------------------------------------------


@pytest.fixture
def hw_esp32(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[types.ModuleType, FakeNetwork]]:
    """``firmware.hw_esp32`` imported against fake ``machine`` and ``network`` modules."""
    machine = types.ModuleType("machine")
    machine.Pin = FakePin  # type: ignore[attr-defined]
    setattr(machine, "__getattr__", lambda name: type(name, (), {}))  # noqa: B010 -- PEP 562
    network = FakeNetwork()
    monkeypatch.setitem(sys.modules, "machine", machine)
    monkeypatch.setitem(sys.modules, "network", network)
    saved = sys.modules.pop("firmware.hw_esp32", None)
    try:
        yield importlib.import_module("firmware.hw_esp32"), network
    finally:
        sys.modules.pop("firmware.hw_esp32", None)
        if saved is not None:
            sys.modules["firmware.hw_esp32"] = saved
            firmware.hw_esp32 = saved  # type: ignore[attr-defined]
        elif hasattr(firmware, "hw_esp32"):
            delattr(firmware, "hw_esp32")


def reader_config(board_name: str, network: dict[str, Any]) -> Any:
    return parse_config(
        json.dumps(
            {
                "reader_id": 7,
                "school": "s1",
                "gate": "main",
                "board": board_name,
                "network": network,
            }
        )
    )


async def test_build_network_from_profile_and_config(
    hw_esp32: tuple[types.ModuleType, FakeNetwork],
) -> None:
    hw, network = hw_esp32
    clock = Clock()
    wifi = hw.build_network(
        board("esp32-devkitc-rdm6300"), reader_config("esp32-devkitc-rdm6300", WIFI), clock
    )
    assert isinstance(wifi, WifiLink) and wifi.settings.ssid == "school-wifi"
    assert wifi.clock is clock and wifi.settings.ntp == LOOPBACK
    name = "olimex-esp32-poe-mfrc522"
    eth = hw.build_network(board(name), reader_config(name, {"broker": "10.0.0.1"}), clock)
    assert isinstance(eth, EthernetLink)
    eth._start()
    assert network.lan is not None and network.lan.kwargs["mdc"] == FakePin(23)
    bus = "esp32-devkitc-wiegand"
    assert hw.build_network(board(bus), reader_config(bus, {}), clock) is None
    with pytest.raises(ConfigError, match=r"^network\.ssid: required"):
        hw.build_network(
            board("esp32-devkitc-mfrc522"),
            reader_config("esp32-devkitc-mfrc522", {"broker": "10.0.0.1"}),
            clock,
        )


# -- on the real MicroPython VM --------------------------------------------------------------------

VM_CODE = """
import asyncio
from firmware.clock import Clock
from firmware.config import ConfigError
from firmware.net import WifiLink, parse_network

def error(table, kind):
    try:
        parse_network(table, kind)
    except ConfigError as e:
        return str(e)
    return "ok"

print(error({"broker": "gw"}, "wifi"))
print(error({"ssid": "s", "broker": "gw", "password": "short"}, "wifi"))
print(error({"broker": "gw", "ntp_interval_s": 5}, "ethernet"))
print(parse_network({"ssid": "s", "broker": "gw", "zz": 1}, "wifi").warnings)

class WLAN:
    def __init__(self):
        self.on = False
        self.ap = True
        self.want = False
        self.up = False
        self.count = 0
        self.connects = 0
    def active(self, v=None):
        if v is None:
            return self.on
        self.on = v
    def connect(self, ssid, key):
        self.connects += 1
        self.want = True
        self.count = 2
    def disconnect(self):
        self.want = self.up = False
    def isconnected(self):
        if self.up and not self.ap:
            self.up = False
        elif self.want and self.ap and not self.up:
            self.count -= 1
            self.up = self.count <= 0
        return self.up
    def status(self, p=None):
        if p == "rssi":
            return -70
        return 1010 if self.up else 201
    def ipconfig(self, what):
        return ("192.168.4.2", "255.255.255.0")

class Net:
    STA_IF = 0
    STAT_GOT_IP = 1010
    STAT_NO_AP_FOUND = 201
    def __init__(self):
        self.wlan = WLAN()
    def WLAN(self, i):
        return self.wlan
    def hostname(self, name):
        pass

async def main():
    settings = parse_network({"ssid": "s", "broker": "gw"}, "wifi")
    settings.ntp = ""  # no sockets in this port: no time sync here
    net = Net()
    link = WifiLink(net, settings, Clock(), "vm", connect_timeout_ms=100, poll_ms=10,
                    backoff_first_ms=20, backoff_cap_ms=40)
    task = asyncio.create_task(link.run())
    print("up", await link.wait_up(1000), link.ip, link.rssi_dbm)
    net.wlan.ap = False
    while link.connect_failures < 2:
        await asyncio.sleep_ms(10)
    print("down", link.is_up(), link.link_losses, link.rssi_dbm, link.error)
    net.wlan.ap = True
    print("back", await link.wait_up(1000), link.link_ups, net.wlan.connects >= 3)
    link.stop()
    await task
    print("stopped", link.is_up())

asyncio.run(main())
"""


def test_net_on_micropython(mpvm: MPVM) -> None:
    out = mpvm.run(VM_CODE, timeout=30).splitlines()
    assert out == [
        "network.ssid: required for a Wi-Fi board",
        "network.password: a WPA passphrase is 8-63 printable ASCII characters (or 64 hex digits)",
        "network.ntp_interval_s: must be an integer 60..86400",
        "['network.password: empty, the reader joins an open Wi-Fi network', "
        "'network.zz: unknown key, ignored']",
        "up True 192.168.4.2 -70",
        "down False 1 0 wifi: no IP address within 100 ms (no access point with this SSID)",
        "back True 2 True",
        "stopped False",
    ]
