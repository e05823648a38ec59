"""Upstreams cannot reach the readers (docs/SECURITY.md, actor 6), checked on the source itself.

What an upstream (Ed-Fi, OpenEMIS, the province relay, a notification provider) can say reaches
the gateway only as the answer to a request our code made: the forwarders and channels turn it
into a ``DeliveryResult`` for their own outbox item and nothing else. So:

- no module of ``gateway/forwarders/`` or ``gateway/channels/`` imports — directly, or through
  the gateway modules it imports — the reader commands, the registry, the roster or the MQTT
  service that talks to readers, and none imports modules by name at run time;
- none opens a listening socket or a server: nothing from outside can call in;
- the relay's MQTT bridge (``_MqttBridge``) only publishes: it never sends SUBSCRIBE and sets no
  ``on_message`` or ``message_callback_add``. A PUBLISH the provincial broker might still send it
  (a subscription left in the persistent session by another client with the same client id) is
  acknowledged by paho and dropped: its payload reaches none of our code. What the province
  says back is only the PUBACK's reason code, which settles the batch's own items.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.project_files import REPO_ROOT

UPSTREAM_PACKAGES = ("gateway/forwarders", "gateway/channels")
READER_SIDE = ("gateway.reader_commands", "gateway.registry", "gateway.roster",
               "gateway.service")
SERVERS = ("http.server", "socketserver", "aiohttp.web", "asyncio.start_server",
           "gateway.dashboard")
RELAY = REPO_ROOT / "gateway" / "forwarders" / "relay.py"


def upstream_modules() -> list[Path]:
    files = sorted(p for d in UPSTREAM_PACKAGES for p in (REPO_ROOT / d).glob("*.py"))
    assert len(files) >= 10, files  # both packages found: the test looks at something
    return files


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def module_path(name: str) -> Path | None:
    base = REPO_ROOT.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def imported(path: Path, name: str | None = None) -> Iterator[str]:
    """Every module ``path`` (the module ``name``) imports, absolute: ``from x import y`` gives
    ``x`` and ``x.y``; relative imports are resolved."""
    name = name or module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                anchor = parts[:len(parts) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)


def reaches(name: str) -> set[str]:
    """The gateway modules ``name`` loads, following its imports of gateway modules."""
    seen: set[str] = set()
    todo = [name]
    while todo:
        current = todo.pop()
        path = module_path(current)
        if current in seen or path is None:
            continue
        seen.add(current)
        todo.extend(m for m in imported(path) if m.split(".")[0] == "gateway")
    return seen


def under(name: str, modules: tuple[str, ...]) -> bool:
    return any(name == m or name.startswith(m + ".") for m in modules)


def calls(tree: ast.AST) -> Iterator[str]:
    """The called name of every call: ``subscribe`` for ``client.subscribe(...)``."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Attribute):
                yield func.attr
            elif isinstance(func, ast.Name):
                yield func.id


def test_forwarders_and_channels_import_nothing_that_reaches_readers_registry_or_roster() -> None:
    direct: dict[str, list[str]] = {}
    through: dict[str, list[str]] = {}
    for path in upstream_modules():
        name = module_name(path)
        bad = sorted({m for m in imported(path) if under(m, READER_SIDE)})
        if bad:
            direct[name] = bad
        loaded = sorted(m for m in reaches(name) if under(m, READER_SIDE))
        if loaded:
            through[name] = loaded
    assert direct == {}, f"imported by an upstream's module: {direct}"
    assert through == {}, f"loaded through the gateway modules they import: {through}"


def test_forwarders_and_channels_load_no_module_by_name_and_listen_nowhere() -> None:
    found: dict[str, list[str]] = {}
    for path in upstream_modules():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        bad = sorted({m for m in imported(path) if under(m, ("importlib", *SERVERS))}
                     | {c for c in calls(tree)
                        if c in ("__import__", "import_module", "start_server", "listen",
                                 "bind", "serve_forever")})
        if bad:
            found[module_name(path)] = bad
    assert found == {}


def test_the_relay_bridge_never_subscribes_and_takes_no_incoming_message() -> None:
    tree = ast.parse(RELAY.read_text(encoding="utf-8"))
    (bridge,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "_MqttBridge"]
    bridge_calls = set(calls(bridge))
    assert "publish" in bridge_calls and "connect_async" in bridge_calls  # the right class
    for path in upstream_modules():  # no forwarder or channel subscribes to anything
        names = set(calls(ast.parse(path.read_text(encoding="utf-8"))))
        assert not names & {"subscribe", "message_callback_add", "filtered_messages"}, path
    assigned = {target.attr for node in ast.walk(bridge) if isinstance(node, ast.Assign)
                for target in node.targets if isinstance(target, ast.Attribute)}
    assert {"on_connect", "on_disconnect", "on_publish"} <= assigned
    assert not {"on_message", "on_subscribe"} & assigned
    attributes = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    assert not {"on_message", "message_callback_add", "messages"} & attributes


@pytest.mark.parametrize("source", [
    "from gateway import registry\n",
    "from gateway.roster import import_csv\n",
    "import gateway.reader_commands as rc\n",
    "from ..service import GatewayService\n",
    "from .. import registry\n",
    "from gateway.ingest import Ingest\n",  # the ingest loads the reader commands
])
def test_the_import_check_sees_each_way_of_importing(tmp_path: Path, source: str) -> None:
    """The check above sees a forbidden import however it is written (a module written to
    ``tmp_path``, read as if it were ``gateway/channels/fake.py``)."""
    path = tmp_path / "fake.py"
    path.write_text(source, encoding="utf-8")
    names = set(imported(path, "gateway.channels.fake"))
    loaded = set().union(*(reaches(m) for m in names))
    assert any(under(m, READER_SIDE) for m in names | loaded), names
