"""``attendance-gateway run --config FILE``: the gateway service.

Opens the database (migrating it), loads the readers' keys from the registry, and runs, around one
ingest (``gateway/ingest.py``, whose writer thread is the database's only writer):

* the MQTT session (``gateway/service.py``) and one RS-485 bus master per ``[[rs485]]`` table
  (``gateway/rs485.py``) with the readers the registry puts on that port;
* the attendance rules (``gateway/rules.py``), called inside each ingest transaction, and their
  absence timer every ``RULES_TIMER_S`` seconds (through the ingest's writer);
* the delivery of commands to readers (``gateway/reader_commands.py``): what
  ``attendance-gateway readers command`` queued goes out over MQTT or the reader's bus;
* the Prometheus endpoint on ``[metrics] listen``;
* one outbox delivery loop per enabled ``[[forward]]`` target (``gateway/outbox.py``): the rules
  enqueue each event version in their transaction, the loops deliver outside it, with the
  timings of ``[outbox]`` (retry backoff, circuit breaker, poll);
* with ``[notify]``, the notifier (``gateway/notify.py``) as a second rules listener, deciding
  and storing parent messages in the same transaction, and one delivery loop per enabled
  ``[[notify.channel]]`` (the same ``gateway/outbox.py`` loop over the notifier's queue, the
  same ``[outbox]`` timings);
* with ``[export] daily_dir``, the day's attendance workbooks per class after ``daily_at``
  (``gateway/export.py``; a worker thread on a read-only connection).
* with ``[dashboard]``, the operations dashboard (``gateway/dashboard/``) on this event loop;
* under systemd, ``sd_notify`` (``gateway/systemd.py``): READY once started, WATCHDOG while a
  no-op transaction still goes through the ingest writer in time, STOPPING on the way out.

A reader added, rotated or revoked with ``attendance-gateway readers`` reaches the running gateway
within ``KEY_POLL_S`` seconds (keys and bus addresses). SIGTERM or SIGINT stop it gracefully:
transports stop taking messages, what they took is committed and acknowledged, deliveries in
flight upstream get up to 10 s to finish and be recorded (the rest stay pending and go again,
under the same idempotency keys, after the restart), the database is closed; nothing is lost.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from typing import Any

from gateway import db, systemd
from gateway.channels import Channel, Message
from gateway.commands import add_config_argument
from gateway.config import GatewayConfig, load_config
from gateway.dashboard.app import Dashboard
from gateway.export import DailyExport
from gateway.forwarders import Adapter, ForwardTarget
from gateway.ingest import Ingest
from gateway.keystore import KeystoreError
from gateway.logs import setup_logging
from gateway.metrics import GatewayMetrics, MetricsServer
from gateway.notify import Notifier, build_channel, make_store
from gateway.outbox import Enqueuer, OutboxService, build_adapter, policy_from_config
from gateway.reader_commands import CommandDispatcher
from gateway.registry import Registry, RegistryError
from gateway.rs485 import BusMaster
from gateway.rules import AttendanceRules, EventListener
from gateway.service import GatewayService
from gateway.types import system_clock

log = logging.getLogger("gateway.run")

KEY_POLL_S = 2.0
RULES_TIMER_S = 60.0
_LEVELS = ["debug", "info", "warning", "error"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "run", help="chạy cổng / run the gateway",
        description="Chạy cổng: nhận, xác thực, lưu và xác nhận lượt quẹt thẻ / run the gateway: "
                    "receive, verify, store and acknowledge card taps")
    add_config_argument(parser)
    parser.add_argument("--log-level", dest="run_log_level", choices=_LEVELS,
                        help="mức ghi nhật ký / log level (default: info)")
    parser.set_defaults(func=_command)


def _command(args: argparse.Namespace) -> int:
    level = args.run_log_level or ("info" if args.log_level == "warning" else args.log_level)
    setup_logging(level)
    config = load_config(args.config)  # ConfigError: reported by gateway/cli.py
    try:
        return asyncio.run(run(config))
    except (RegistryError, KeystoreError, db.DatabaseError) as exc:
        print(f"Lỗi / Error: {exc}", file=sys.stderr)
        return 2


async def run(config: GatewayConfig, stop: asyncio.Event | None = None, *,
              with_rules: bool = True) -> int:
    """Run the gateway until ``stop`` is set (or SIGTERM/SIGINT when ``stop`` is None).

    ``with_rules=False`` runs the ingest alone (benchmarks compare it with the whole gateway).
    """
    loop = asyncio.get_running_loop()
    if stop is None:
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
    targets = [t for t in config.forward if t.enabled] if with_rules else []
    adapters = await _adapters(config, targets)  # ConfigError before anything is opened
    try:
        channels = await _channels(config) if with_rules else []
    except BaseException:
        for adapter in adapters:
            with contextlib.suppress(Exception):
                await adapter.close()
        raise
    conn = db.connect(config.database)
    registry_conn = db.connect(config.database, migrate=False)
    commands_conn = db.connect(config.database, migrate=False)
    outbox_conn = db.connect(config.database, migrate=False)
    notify_conn = db.connect(config.database, migrate=False)
    server: MetricsServer | None = None
    outbox: OutboxService[Any] | None = None
    notifications: OutboxService[Message] | None = None
    try:
        registry = Registry.open(registry_conn, config.master_key_file)
        version = registry.key_ring_version()
        metrics = GatewayMetrics()
        listeners: list[EventListener] = []
        if targets:
            listeners.append(Enqueuer([t.name for t in targets]))
        if with_rules and config.notify.enabled:
            listeners.append(Notifier(config.notify, config.attendance, config.timezone,
                                      school=config.school, metrics=metrics))
        rules = AttendanceRules(config.attendance, config.timezone,
                                config.ingest.repeat_window_s, system_clock,
                                listeners=listeners)
        ingest = Ingest(conn, registry.key_ring(), config=config.ingest, metrics=metrics,
                        on_scans=rules.on_scans if with_rules else None)
        policy = policy_from_config(config.outbox)  # [outbox]: forwarding and notifications
        outbox = OutboxService(ingest, adapters, outbox_conn, metrics=metrics, policy=policy)
        staff = config.notify.staff
        notifications = OutboxService(ingest, channels, notify_conn, metrics=metrics,
                                      policy=policy,
                                      store=make_store(staff.phone if staff else None))
        if config.metrics_listen:
            server = MetricsServer(metrics, config.metrics_listen)
            log.info("metrics", extra={"listen": config.metrics_listen})
        ingest.start()
        buses = [BusMaster(bus.port, bus.baudrate, _bus_readers(registry, bus.port), ingest)
                 for bus in config.rs485]
        helpers = [asyncio.create_task(_watch_registry(registry, ingest, buses, version, stop))]
        if with_rules:
            helpers.append(asyncio.create_task(_rules_timer(rules, ingest, stop)))
        if config.export.daily_dir is not None:  # the Ministry workbooks, in a worker thread
            helpers.append(asyncio.create_task(DailyExport(config).run(stop)))
        service = GatewayService(config, ingest)
        dispatcher = CommandDispatcher(ingest, mqtt=service, buses=buses,
                                       read_conn=commands_conn, metrics=metrics)
        dashboard = Dashboard(config, ingest, metrics)  # [dashboard]: gateway/dashboard/
        try:
            await asyncio.gather(service.run(stop), dispatcher.run(stop), outbox.run(stop),
                                 notifications.run(stop), dashboard.run(stop),
                                 *(bus.run(stop) for bus in buses),
                                 systemd.supervise(ingest, stop, service.connected))
        finally:
            for task in helpers:
                task.cancel()
            for task in helpers:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await ingest.close()
    finally:
        if outbox is not None:
            await outbox.close()
        else:
            for adapter in adapters:
                with contextlib.suppress(Exception):
                    await adapter.close()
        if notifications is not None:
            await notifications.close()
        else:
            for channel in channels:
                with contextlib.suppress(Exception):
                    await channel.close()
        if server is not None:
            server.close()
        outbox_conn.close()
        notify_conn.close()
        commands_conn.close()
        registry_conn.close()
        conn.close()
    log.info("stopped")
    return 0


async def _adapters(config: GatewayConfig, targets: list[ForwardTarget]) -> list[Adapter]:
    """The enabled targets' adapters; if one cannot be built, those built are closed."""
    adapters: list[Adapter] = []
    try:
        for target in targets:
            adapters.append(build_adapter(target, clock=system_clock, config_path=config.path,
                                          timezone=config.timezone))
    except BaseException:
        for adapter in adapters:
            with contextlib.suppress(Exception):
                await adapter.close()
        raise
    return adapters


async def _channels(config: GatewayConfig) -> list[Channel]:
    """The enabled ``[[notify.channel]]`` tables' channels (with ``[notify]`` enabled); if one
    cannot be built, those built are closed."""
    if not config.notify.enabled:
        return []
    built: list[Channel] = []
    try:
        for channel in config.notify.channels:
            if channel.enabled:
                built.append(build_channel(channel, clock=system_clock,
                                           config_path=config.path))
    except BaseException:
        for c in built:
            with contextlib.suppress(Exception):
                await c.close()
        raise
    return built


def _bus_readers(registry: Registry, port: str) -> dict[int, int]:
    """Bus address -> reader id of the active readers the registry puts on ``port``."""
    return {r.bus_address: r.reader_id for r in registry.readers()
            if r.status == "active" and r.bus_port == port and r.bus_address is not None}


async def _watch_registry(registry: Registry, ingest: Ingest, buses: list[BusMaster],
                          version: tuple[int, ...], stop: asyncio.Event) -> None:
    """Reload keys and bus addresses when the registry changes (reader added, rotated, revoked)."""
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), KEY_POLL_S)
        try:
            current = await loop.run_in_executor(None, registry.key_ring_version)
            if current == version:
                continue
            ingest.keys = await loop.run_in_executor(None, registry.key_ring)
            for bus in buses:
                bus.set_readers(await loop.run_in_executor(None, _bus_readers, registry,
                                                           bus.port))
            version = current
            log.info("reader registry reloaded")
        except Exception as exc:  # keep what we have; say why the new registry is not used
            log.error("reader registry not reloaded", extra={"error": str(exc)})


async def _rules_timer(rules: AttendanceRules, ingest: Ingest, stop: asyncio.Event) -> None:
    """Record absences once each session's cut-off has passed (in the ingest's writer)."""
    while not stop.is_set():
        try:
            created = await ingest.run_in_transaction(
                lambda conn: rules.close_due_sessions(conn, system_clock()))
            if created:
                log.info("absences recorded", extra={"absences": created})
        except Exception as exc:
            log.error("absences not recorded", extra={"error": str(exc)})
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), RULES_TIMER_S)
