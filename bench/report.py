"""``make bench``: run every benchmark under bench/ and write docs/BENCHMARKS.md from their figures.

    .venv/bin/python bench/report.py [--quick] [--only NAME ...] [--out docs]

Each benchmark runs in turn, alone on the machine as far as this command is concerned, with
``--json`` (bench/results.py); its figures are kept in ``docs/bench/NAME.json`` and its printed
report in ``docs/bench/NAME.txt``. ``--render`` writes the report again from those figures. The
report puts every target of ../shared/DESIGN.md next to its measured figure, met or not (and,
where not, what limits it), then the comparisons each benchmark measured side by side in the
same run, and plots tap -> ack latency percentiles against load (``docs/bench/latency.png``).
``--quick`` runs every benchmark's smoke size: for checking this command, not for figures.
"""

from __future__ import annotations

import argparse
import datetime as dt
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.results import Figure, load, machine  # noqa: E402


@dataclass(frozen=True)
class Bench:
    name: str
    args: tuple[str, ...]
    quick: tuple[str, ...]


BENCHES = (
    Bench("gateway_ingest", (), ("--quick",)),
    Bench("latency", (), ("--rates", "50,200", "--seconds", "2")),
    Bench("outage", (), ("--quick",)),
    Bench("firmware_heap", (), ("--taps", "100")),
    Bench("flash_per_tap", (), ("--taps", "1000")),
    Bench("forwarding", (), ("--quick",)),
)

# The targets of ../shared/DESIGN.md, in its order: (figure key, the target as DESIGN.md words it).
TARGETS = (
    ("ingest_ratio", "Gateway ingest, single-record messages over QoS 1: >= 0.7x a bare paho "
                     "subscriber that does no work, same publishers, same run"),
    ("batched_rate", "Gateway ingest when readers batch: >= 20,000 records/s"),
    ("ack_p99", "Tap -> gateway ack, 50 readers at 200 taps/s total: p99 <= 25 ms on loopback"),
    ("outage_drain", "Morning after an outage: 100 readers x 5,000 queued records reconnect at "
                     "once, all committed and acked within 60 s on a 2-core machine"),
    ("outage_lost", "... zero lost"),
    ("outage_doubled", "... zero doubled"),
    ("heap_per_tap", "Reader firmware on the MicroPython VM: <= 2 KB heap allocated per tap"),
    ("steady_heap_frozen", "Reader firmware: <= 48 KB steady heap for the whole application"),
    ("flash_per_tap", "Reader firmware: flash bytes written per tap <= 2x the record size, "
                      "amortised"),
    ("rss_100", "Gateway resident memory <= 80 MB with 100 readers connected"),
)

# What limits a figure that misses its target: the analysis behind it, shown only when missed.
LIMITS = {
    "ingest_ratio": (
        "Two costs, each measured in this run (table below). Answering at all: a raw relay that "
        "answers every message at once and does nothing else already reaches only the relay's "
        "fraction of the bare subscriber, since the answerer publishes a message per message "
        "besides receiving it and the broker carries two messages per record, on the same two "
        "cores as the publishers. Then the gateway's own work, in one CPython process whose MQTT "
        "thread and ingest writer share a GIL: verify two MACs, decode, dedup, place the time, "
        "run the rules, commit with synchronous=FULL, sign the ack; it keeps the fraction of the "
        "relay shown below. Verification in a second process is the next step; it is not done "
        "(docs/gateway.md, 'Measured')."),
    "batched_rate": (
        "The ingest writer: verifying each record (construct decode, its MAC), placing its time, "
        "the insert and the attendance rules, in one thread of one CPython process, while the "
        "publishers and Mosquitto take the rest of the two cores. On its own (no MQTT) the writer "
        "stores 16,000-19,000 records/s in 64-record batches on this VM, whose speed varies by a "
        "fifth to a third between runs; the raw SQLite row above shows the storage itself is not "
        "the limit (docs/gateway.md, 'Measured')."),
    "steady_heap_frozen": (
        "Computed from two VM runs, not measured on a frozen image: building one needs ESP-IDF."),
    "ack_p99": (
        "See the latency sweep below: the tail follows the machine's load (publishers, broker "
        "and gateway on two cores)."),
}


def run_benches(benches: Sequence[Bench], quick: bool, logs: Path,
                out_dir: Path) -> dict[str, Path]:
    """Run each benchmark; its JSON file by name (missing when it wrote none)."""
    written: dict[str, Path] = {}
    for bench in benches:
        json_path = out_dir / f"{bench.name}.json"
        command = [sys.executable, str(ROOT / "bench" / f"{bench.name}.py"),
                   *(bench.quick if quick else bench.args), "--json", str(json_path)]
        print(f"== {bench.name}: {' '.join(command[1:])}", flush=True)
        began = time.monotonic()
        with (logs / f"{bench.name}.txt").open("w", encoding="utf-8") as log:
            proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True)
            assert proc.stdout is not None
            for line in proc.stdout:
                sys.stdout.write(line)
                log.write(line)
            status = proc.wait()
        print(f"== {bench.name}: exit status {status}, {time.monotonic() - began:.0f} s",
              flush=True)
        if json_path.exists():
            written[bench.name] = json_path
    return written


def _value(f: Figure) -> str:
    if f.value == float("inf"):
        return "not reached"
    if f.unit in ("x",):
        return f"{f.value:.2f}x"
    if abs(f.value) >= 100:
        return f"{f.value:,.0f} {f.unit}"
    return f"{f.value:.1f} {f.unit}" if f.value != int(f.value) else f"{int(f.value)} {f.unit}"


def _met(f: Figure | None) -> str:
    if f is None or f.met is None:
        return "—"
    return "met" if f.met else "**not met**"


def render(documents: dict[str, dict[str, Any]], figures: dict[str, Figure],
           sources: dict[str, str], *, generated: str, commit: str, elapsed_s: float | None,
           plot: str | None, quick: bool) -> str:
    """The Markdown of docs/BENCHMARKS.md."""
    info = machine()
    lines = [
        "# Benchmarks",
        "",
        f"Written by `make bench` (bench/report.py{' --quick' if quick else ''}) on {generated}, "
        f"commit `{commit}`"
        + (f", in {elapsed_s / 60:.0f} min" if elapsed_s is not None else
           " (the text written again from that run's figures, docs/bench/*.json)")
        + ". Do not edit: run `make bench` again.",
        "",
    ]
    if quick:
        lines += ["**Smoke sizes (`--quick`): these figures check the command, they are not "
                  "the system's figures.**", ""]
    lines += ["Machine: " + "; ".join(v for v in info.values() if v) + ".", "",
              "## Targets of DESIGN.md", "",
              "| Target | Measured | Verdict | Reproduce |", "|---|---|---|---|"]
    for key, words in TARGETS:
        f = figures.get(key)
        measured = f"{_value(f)}" if f else "not measured"
        command = f"`{documents[sources[key]]['command']}`" if f else "—"
        lines.append(f"| {words} | {measured} | {_met(f)} | {command} |")
    lines.append("")
    for key, _ in TARGETS:
        f = figures.get(key)
        if f is not None and f.note:
            lines.append(f"- **{f.label}**: {f.note}.")
    missed = [key for key, _ in TARGETS if key in figures and figures[key].met is False]
    missing = [key for key, _ in TARGETS if key not in figures]
    if missed:
        lines += ["", "### Where a target is not met", ""]
        for key in missed:
            lines.append(f"- **{figures[key].label}**: "
                         + LIMITS.get(key, "not analysed yet: see the benchmark's log."))
    if missing:
        lines += ["", "Not measured in this run (its benchmark failed or was skipped): "
                  + ", ".join(f"`{k}`" for k in missing) + "."]
    lines += ["", "## Side by side, measured in the same run", ""]
    ingest = documents.get("gateway_ingest", {}).get("comparisons")
    if ingest:
        lines += [
            "| Baseline | Baseline figure | Ours | Ours / baseline |", "|---|---|---|---|",
            f"| bare paho subscriber, single-record QoS 1 | {ingest['bare_paho_msg_s']:,.0f} "
            f"msg/s | gateway {ingest['gateway_acked_s']:,.0f} records acked/s (ingest alone "
            f"{ingest['ingest_only_acked_s']:,.0f}) | "
            f"{ingest['gateway_acked_s'] / ingest['bare_paho_msg_s']:.2f}x |",
            f"| raw Mosquitto relay (a bare client answering each message at once, no work), "
            f"single-record QoS 1 | {ingest['relay_acked_s']:,.0f} acks/s "
            f"({ingest['relay_acked_s'] / ingest['bare_paho_msg_s']:.2f}x the bare subscriber) | "
            f"gateway {ingest['gateway_acked_s']:,.0f} records acked/s | "
            f"{ingest['gateway_acked_s'] / ingest['relay_acked_s']:.2f}x |",
            f"| raw SQLite `executemany`, the gateway's schema and pragmas | "
            f"{ingest['raw_sqlite_rows_s']:,.0f} rows/s | gateway, 64-record batches "
            f"{ingest['gateway_batched_records_s']:,.0f} records/s | "
            f"{ingest['gateway_batched_records_s'] / ingest['raw_sqlite_rows_s']:.2f}x |", ""]
    sweep = documents.get("latency", {}).get("sweep")
    if sweep:
        lines += ["Tap -> ack latency against load, 50 readers, one-record batches at QoS 1: "
                  "the gateway beside a raw Mosquitto relay (a bare client that answers every "
                  "batch at once, doing no work).", "",
                  "| taps/s | relay p50 / p90 / p99 (ms) | gateway p50 / p90 / p99 (ms) |",
                  "|---|---|---|"]
        for rate in sweep["rates"]:
            r, g = sweep["relay"][str(rate)], sweep["gateway"][str(rate)]
            lines.append(f"| {rate} | {r['p50']:.1f} / {r['p90']:.1f} / {r['p99']:.1f} | "
                         f"{g['p50']:.1f} / {g['p90']:.1f} / {g['p99']:.1f} |")
        lines.append("")
        if plot:
            lines += [f"![Tap -> ack latency percentiles against load]({plot})", ""]
    others = [f for name, doc in documents.items() if name == "forwarding"
              for f in (Figure(**x) for x in doc["figures"])]
    if others:
        lines += ["## Other figures (no DESIGN.md target)", "", "| Figure | Measured | Note |",
                  "|---|---|---|"]
        lines += [f"| {f.label} | {_value(f)} | {f.note} |" for f in others]
        lines += ["", f"Reproduce: `{documents['forwarding']['command']}`", ""]
    lines += ["## Logs", "", "Each benchmark's printed report, from this run: "
              + ", ".join(f"[{name}](bench/{name}.txt)" for name in documents) + ".", ""]
    return "\n".join(lines)


def plot_latency(sweep: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    rates = sweep["rates"]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    styles = {"p50": ":", "p90": "--", "p99": "-"}
    for who, colour in (("gateway", "tab:blue"), ("relay", "tab:gray")):
        for p, style in styles.items():
            ax.plot(rates, [sweep[who][str(r)][p] for r in rates], style, color=colour,
                    marker="o", markersize=3, label=f"{who} {p}")
    ax.axhline(25, color="tab:red", linewidth=0.8)
    ax.annotate("target p99 <= 25 ms at 200 taps/s", (rates[0], 25), textcoords="offset points",
                xytext=(2, 4), fontsize=8, color="tab:red")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(rates, [str(r) for r in rates])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.yaxis.set_major_formatter(ScalarFormatter())
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("taps/s, 50 readers (one-record batches, QoS 1)")
    ax.set_ylabel("tap -> ack latency (ms)")
    ax.set_title("Tap -> ack latency: gateway vs raw Mosquitto relay")
    ax.grid(True, which="both", linewidth=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def _commit() -> str:
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT,
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke sizes: check the command")
    parser.add_argument("--only", nargs="+", choices=[b.name for b in BENCHES],
                        help="run only these benchmarks")
    parser.add_argument("--out", type=Path, default=ROOT / "docs",
                        help="where BENCHMARKS.md and bench/ go (default: docs)")
    parser.add_argument("--render", action="store_true",
                        help="run nothing: write the report again from the figures of the last "
                             "run (bench/NAME.json under --out)")
    args = parser.parse_args()
    benches = [b for b in BENCHES if not args.only or b.name in args.only]
    logs = args.out / "bench"
    logs.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()
    if args.render:
        written = {b.name: logs / f"{b.name}.json" for b in benches
                   if (logs / f"{b.name}.json").exists()}
    else:
        for stale in logs.glob("*.json"):
            stale.unlink()
        written = run_benches(benches, args.quick, logs, logs)
    documents: dict[str, dict[str, Any]] = {}
    figures: dict[str, Figure] = {}
    sources: dict[str, str] = {}
    for name, path in written.items():
        document, found = load(path)
        documents[name] = document
        for f in found:
            figures[f.key] = f
            sources[f.key] = name
    plot = None
    if "latency" in documents:
        plot_latency(documents["latency"]["sweep"], logs / "latency.png")
        plot = "bench/latency.png"
    if args.render:  # when the figures were measured, not when the text was written again
        finished = max((d["finished"] for d in documents.values()), default="")
        generated = finished.replace("T", " ").replace("+00:00", " UTC")
    else:
        generated = dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    text = render(documents, figures, sources, generated=generated, commit=_commit(),
                  elapsed_s=None if args.render else time.monotonic() - began, plot=plot,
                  quick=args.quick)
    (args.out / "BENCHMARKS.md").write_text(text, encoding="utf-8")
    print(f"wrote {args.out / 'BENCHMARKS.md'}")
    failed = [b.name for b in benches if b.name not in written]
    if failed:
        print(f"no figures from: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
