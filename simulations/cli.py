"""``python -m rmap2p simulate``: the real protocol code on a simulated network.

``rmap2p/cli.py`` hands over the arguments after ``simulate`` untouched
(``args.sim_args``); they are parsed here so that the simulator's options
live next to the code that uses them. Output is this module's job: one JSON
object on stdout with ``--json``, else a readable summary; a progress bar goes
to stderr on a terminal; ``--plot`` writes a PNG when matplotlib is
installed (``pip install 'rmap2p[plot]'``) and says so when it is not.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from typing import TextIO

from simulations.engine import Simulation
from simulations.metrics import Figures, Sample
from simulations.network import Clog, Latency, NetworkOptions, Partition, Starvation
from simulations.options import SimOptions

log = logging.getLogger(__name__)


def _fraction(text: str) -> float:
    """``0.05`` or ``5%``."""
    text = text.strip()
    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a fraction: {text!r}") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1): {text!r}")
    return value


def _window(text: str) -> tuple[float, float | None]:
    start, _, end = text.partition("-")
    return float(start), (float(end) if end else None)


def parse_partition(text: str) -> Partition:
    """``FRACTION@START-END[:asym]``, e.g. ``0.5@30-60`` (half the nodes split off from 30 s to 60 s)."""
    try:
        spec, _, mode = text.partition(":")
        frac, _, window = spec.partition("@")
        start, end = _window(window) if window else (0.0, None)
        if mode not in ("", "sym", "asym"):
            raise ValueError(f"mode must be sym or asym, not {mode!r}")
        return Partition(start_s=start, end_s=end, fraction=_fraction(frac), symmetric=mode != "asym")
    except (ValueError, argparse.ArgumentTypeError) as exc:
        raise argparse.ArgumentTypeError(f"--partition {text!r}: {exc} (expected FRACTION@START-END[:asym])") from None


def parse_clog(text: str) -> Clog:
    """``COUNT@START-END``: hold every datagram to and from COUNT random nodes in that window."""
    try:
        count, _, window = text.partition("@")
        start, end = _window(window)
        if end is None:
            raise ValueError("a clog needs an end")
        return Clog(start_s=start, end_s=end, count=int(count))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--clog {text!r}: {exc} (expected COUNT@START-END)") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="rmap2p simulate",
        description=(
            "Run the real membership (SWIM + Lifeguard) machines on a virtual clock and a "
            "simulated network, inject faults, and report convergence, dissemination, failure "
            "detection, false positives and bandwidth. One --seed replays a run exactly."
        ),
        epilog=(
            "examples:\n"
            "  rmap2p simulate --nodes 1000 --seconds 120 --kill 5 --start warm\n"
            "  rmap2p simulate --nodes 1000 --seconds 3600 --loss 10% --start warm --json\n"
            "  rmap2p simulate --nodes 50 --starved 1 --loss 5% --no-lifeguard\n"
            "  rmap2p simulate --nodes 100 --partition 0.5@30-90 --seconds 240 --plot view.png"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run = p.add_argument_group("run")
    run.add_argument("--nodes", type=int, default=50, help="number of nodes (default 50)")
    run.add_argument("--seconds", type=float, default=60.0, help="simulated seconds (default 60)")
    run.add_argument("--seed", type=int, default=1, help="the seed that determines the whole run (default 1)")
    run.add_argument("--profile", choices=("lan", "local"), default="lan", help="protocol preset (default lan: memberlist LAN defaults)")
    run.add_argument("--no-lifeguard", action="store_true", help="plain SWIM: no awareness, no nacks, no suspicion acceleration")
    run.add_argument(
        "--start",
        choices=("cold", "warm"),
        default="cold",
        help="cold: nodes join in waves through random earlier nodes; warm: start converged (default cold)",
    )
    run.add_argument("--waves", type=int, default=8, help="join waves of a cold start, 1 s apart (default 8)")

    churn = p.add_argument_group("churn and workload")
    churn.add_argument("--kill", type=int, default=0, metavar="K", help="crash K random nodes mid-run")
    churn.add_argument("--kill-at", type=float, default=None, metavar="S", help="first crash at S seconds (default a third into the run)")
    churn.add_argument("--kill-spread", type=float, default=None, metavar="S", help="spread the crashes over S seconds (default a sixth of the run)")
    churn.add_argument("--restart-after", type=float, default=None, metavar="S", help="restart crashed nodes (same identity) S seconds later")
    churn.add_argument("--leave", type=int, default=0, metavar="K", help="K random nodes leave gracefully")
    churn.add_argument("--updates", type=int, default=20, metavar="K", help="fresh metadata updates injected to time dissemination (default 20)")
    churn.add_argument(
        "--meta-interval",
        type=float,
        default=0.0,
        metavar="S",
        help="metadata heartbeat: each node's load changes markedly every ~S s (0 = off, default)",
    )
    churn.add_argument("--allocator", action="store_true", help="run the allocator on every node's view; report service coverage after crashes")

    net = p.add_argument_group("network faults")
    net.add_argument("--loss", type=_fraction, default=0.0, metavar="P", help="uniform datagram loss, e.g. 0.05 or 5%% (default 0)")
    net.add_argument("--dup", type=_fraction, default=0.0, metavar="P", help="datagram duplication probability")
    net.add_argument("--latency-ms", type=float, default=1.0, metavar="MS", help="one-way base latency of a link (default 1.0)")
    net.add_argument("--jitter-ms", type=float, default=0.2, metavar="MS", help="mean exponential jitter per datagram (default 0.2)")
    net.add_argument("--link-spread-ms", type=float, default=0.5, metavar="MS", help="links differ by up to this much fixed latency (default 0.5)")
    net.add_argument(
        "--partition",
        type=parse_partition,
        action="append",
        default=[],
        metavar="F@A-B[:asym]",
        help="split a fraction F of the nodes off from A to B seconds (repeatable)",
    )
    net.add_argument("--clog", type=parse_clog, action="append", default=[], metavar="K@A-B", help="hold all traffic of K random nodes from A to B seconds")
    net.add_argument("--starved", type=float, default=0.0, metavar="F", help="starved nodes: a fraction (<1) or a count (>=1)")
    net.add_argument("--stall-mean", type=float, default=2.0, metavar="S", help="mean stall of a starved node's loop (default 2.0 s)")
    net.add_argument("--run-mean", type=float, default=2.0, metavar="S", help="mean time a starved node runs between stalls (default 2.0 s)")
    net.add_argument("--stall-timers", action="store_true", help="timers stall too (default: only packet reading stalls)")
    net.add_argument("--no-seal", action="store_true", help="count bandwidth without the 29-byte keyring seal")

    out = p.add_argument_group("output")
    out.add_argument("--json", action="store_true", help="print one JSON object of figures on stdout")
    out.add_argument("--by-kind", action="store_true", help="break the bandwidth down by message kind (decodes every datagram: slower)")
    out.add_argument("--plot", metavar="FILE.png", default=None, help="plot membership over time (needs matplotlib)")
    out.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None, help="progress bar on stderr (default: when stderr is a terminal and not --json)")
    out.add_argument("--check-determinism", action="store_true", help="run twice and compare events_hash; exit 1 if they differ")
    return p


def options_from_args(a: argparse.Namespace) -> SimOptions:
    starved = a.starved
    starvation = Starvation(
        fraction=starved if 0 < starved < 1 else 0.0,
        count=int(starved) if starved >= 1 else None,
        stall_mean_s=a.stall_mean,
        run_mean_s=a.run_mean,
        timers_late=a.stall_timers,
    )
    network = NetworkOptions(
        latency=Latency(base_s=a.latency_ms / 1000, link_spread_s=a.link_spread_ms / 1000, jitter_s=a.jitter_ms / 1000),
        loss=a.loss,
        duplicate=a.dup,
        partitions=tuple(a.partition),
        clogs=tuple(a.clog),
        starvation=starvation,
        seal_overhead=0 if a.no_seal else NetworkOptions().seal_overhead,
    )
    return SimOptions(
        nodes=a.nodes,
        seconds=a.seconds,
        seed=a.seed,
        profile=a.profile,
        lifeguard=not a.no_lifeguard,
        start=a.start,
        join_waves=a.waves,
        kills=a.kill,
        kill_at_s=a.kill_at,
        kill_spread_s=a.kill_spread,
        restart_after_s=a.restart_after,
        leaves=a.leave,
        updates=a.updates,
        meta_interval_s=a.meta_interval,
        network=network,
        allocator=a.allocator,
        by_kind=a.by_kind,
    )


class ProgressBar:
    """A one-line bar on a terminal, redrawn at most ten times a second."""

    def __init__(self, total: float, stream: TextIO, width: int = 30) -> None:
        self.total = total
        self.stream = stream
        self.width = width
        self.started = time.perf_counter()
        self._last = 0.0

    def __call__(self, sim_t: float) -> None:
        now = time.perf_counter()
        if now - self._last < 0.1 and sim_t < self.total:
            return
        self._last = now
        frac = min(1.0, sim_t / self.total)
        done = int(frac * self.width)
        bar = "#" * done + "." * (self.width - done)
        self.stream.write(f"\r[{bar}] {sim_t:7.1f}/{self.total:g} s simulated, {now - self.started:6.1f} s wall")
        self.stream.flush()

    def close(self) -> None:
        self.stream.write("\n")
        self.stream.flush()


def _fmt(value: object, unit: str = "", digits: int = 2) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}{unit}"
    return f"{value}{unit}"


def summary(f: Figures, options: SimOptions) -> str:
    net = options.network
    lines = [
        f"rmap2p simulate: {f.nodes} nodes, {f.sim_s:g} s simulated in {f.wall_s:.1f} s wall "
        f"({_fmt(f.sim_speed, 'x', 1)}), seed {f.seed}, {f.start} start, profile {f.profile}, "
        f"lifeguard {'on' if f.lifeguard else 'off'}",
        f"  network: loss {net.loss:.1%}, dup {net.duplicate:.1%}, latency {net.latency.base_s * 1000:g} ms "
        f"+ up to {net.latency.link_spread_s * 1000:g} ms per link + {net.latency.jitter_s * 1000:g} ms jitter, "
        f"{f.starved} starved, {len(net.partitions)} partition(s), {len(net.clogs)} clog(s)",
        "",
        f"  join convergence        {_fmt(f.join_convergence_s, ' s')}",
        f"  dissemination rounds    p50 {_fmt(f.dissemination_rounds_p50)}  p99 {_fmt(f.dissemination_rounds_p99)}  "
        f"max {_fmt(f.dissemination_rounds_max)}  ({f.dissemination_samples} updates, {f.dissemination_incomplete} incomplete)",
        f"  failure detection       first {_fmt(f.detection_first_s, ' s')}  p50 {_fmt(f.detection_p50_s, ' s')}  "
        f"all {_fmt(f.detection_all_s, ' s')} (worst {_fmt(f.detection_all_max_s, ' s')})  "
        f"({f.kills} crashes, {f.detection_incomplete} incomplete)",
        f"  false suspicions        {f.false_suspicions} of {f.probe_rounds} probe rounds ({_fmt((f.false_suspicion_rate or 0) * 100, ' %', 4)})",
        f"  false deaths            {f.false_deaths} (member, incarnation) pairs, {f.false_death_views} observer views",
        f"  refutations             {f.refutations}",
        f"  bandwidth (sealed)      {_fmt(f.bytes_per_node_per_s, ' B/s', 1)} per node "
        f"(UDP {_fmt(f.udp_bytes_per_node_per_s, '', 1)}, TCP {_fmt(f.tcp_bytes_per_node_per_s, '', 1)}) from t={f.measure_from_s:.1f} s",
        f"  messages                {_fmt(f.msgs_per_node_per_period)} per node per protocol period",
    ]
    if f.bytes_by_kind:
        lines.append("  by kind (B/s per node)  " + ", ".join(f"{k} {v:.1f}" for k, v in f.bytes_by_kind.items()))
    if f.partition_merge_s is not None or net.partitions:
        lines.append(f"  partition merged after  {_fmt(f.partition_merge_s, ' s')} from the heal")
    if f.services_moved is not None:
        lines.append(
            f"  allocator               covered again {_fmt(f.services_covered_s, ' s')} after the first crash, "
            f"{f.services_moved} service starts, {f.uncovered_at_end} uncovered at the end"
        )
    lines += ["", f"  events {f.events}, events_hash {f.events_hash}", f"  replay: {options.repro()}"]
    return "\n".join(lines)


def plot(samples: list[Sample], path: str, title: str) -> bool:
    """Write membership over time as a PNG; False (with a message) when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        sys.stderr.write(
            f"--plot {path}: matplotlib is not installed; install it with: pip install 'rmap2p[plot]'\n"
        )
        return False
    ts = [s.t for s in samples]
    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(9, 6))
    top.plot(ts, [s.seen_fraction * 100 for s in samples], label="live pairs seen alive (%)")
    top.set_ylabel("% of (observer, member) pairs")
    top.set_ylim(0, 101)
    top.set_title(title)
    live_axis = top.twinx()  # node counts are tiny next to pair counts: give them their own scale
    live_axis.plot(ts, [s.live for s in samples], color="tab:gray", linestyle="--", label="live nodes")
    live_axis.set_ylabel("live nodes")
    live_axis.set_ylim(0, max((s.live for s in samples), default=1) * 1.05)
    handles = top.get_legend_handles_labels()
    extra = live_axis.get_legend_handles_labels()
    top.legend(handles[0] + extra[0], handles[1] + extra[1], loc="lower right")
    bottom.plot(ts, [s.suspect_views for s in samples], label="suspect verdicts")
    bottom.plot(ts, [s.dead_views for s in samples], label="dead/left verdicts")
    bottom.set_ylabel("(observer, member) verdicts")
    bottom.set_xlabel("simulated seconds")
    bottom.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def run(args: argparse.Namespace | Sequence[str]) -> int:
    """Entry point of ``python -m rmap2p simulate``; returns the exit code."""
    argv = list(args.sim_args) if isinstance(args, argparse.Namespace) else list(args)
    if argv[:1] == ["--"]:
        argv = argv[1:]
    parser = build_parser()
    a = parser.parse_args(argv)
    try:
        options = options_from_args(a)
    except ValueError as exc:
        parser.error(str(exc))
    show_progress = a.progress if a.progress is not None else (sys.stderr.isatty() and not a.json)
    bar = ProgressBar(options.seconds, sys.stderr) if show_progress else None
    sim = Simulation(options, progress=bar)
    figures = sim.run()
    if bar is not None:
        bar.close()
    same = True
    if a.check_determinism:
        again = Simulation(options).run()
        same = again.events_hash == figures.events_hash
        if not same:
            sys.stderr.write(
                f"determinism check FAILED: {figures.events_hash} != {again.events_hash}\n"
                f"  replay: {options.repro()}\n"
            )
    if a.json:
        doc = figures.to_json()
        if a.check_determinism:
            doc["deterministic"] = same
        sys.stdout.write(json.dumps(doc) + "\n")
    else:
        sys.stdout.write(summary(figures, options) + "\n")
        if a.check_determinism:
            sys.stdout.write(f"  determinism check: {'same events_hash on a second run' if same else 'FAILED'}\n")
    if a.plot:
        title = f"{options.nodes} nodes, seed {options.seed}, loss {options.network.loss:.0%}"
        if plot(sim.rec.samples, a.plot, title):
            sys.stderr.write(f"wrote {a.plot}\n")
    return 1 if a.check_determinism and not same else 0
