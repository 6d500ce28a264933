"""What a churn soak recorded, and the figures computed from it (pure: no I/O, no clock).

Definitions (also in ``rmap2p soak --help`` and simulations/SOAK.md):

- *answered*: HTTP 200 with the right body (an echo server names the service
  it is) within the client's ``--request-timeout``; everything else is
  *failed*, counted by status or error kind. *answered after 1 s / 10 s*:
  answers that took longer (a gateway holds a request while the service has
  no reachable runner, see services/routing.py).
- *no healthy runner*: each node's own row in its ``/api/admin/workers`` says
  what it runs; a service has a healthy runner in a poll round when some node
  that is up lists it ``healthy`` in its own row (a node whose poll failed
  keeps its last row unless it was killed since). The longest run of rounds
  without one, per service, from the first uncovered round to the first
  covered one, is the window (resolution: the poll interval).
- *view gap*: the same, as one live node's view shows it (alive and healthy),
  over that observer's consecutive rounds.
- *services moved per failure*: the most (node, service) pairs, in any round
  between a kill and the victim's restart, that run on nodes other than the
  victim and did not in the last round before the kill; *not rehomed*: the
  victim's services that no other node runs healthy in the last round before
  the restart.
- *re-homing within detection + 5 s* (issue 15's bound): for each kill and
  each service the victim ran healthy, the window from the first round after
  the kill without a healthy runner to the next round with one, against that
  kill's detection (first ``dead`` in a view; the run's mean where no view
  saw it) plus 5 s. A window over the bound is *hostable* when the allocator
  (the same pure function every daemon runs) gives the service to a survivor
  on the view without the victim, and *not hostable* when no survivor may run
  it by the allocation rules (the victim was the only node of the service's
  type, or every survivor of that type is at its cap with more critical
  services): those wait for the victim's restart, whatever the protocol does.
- *false death*: an observer's view turns a member ``dead`` that was not
  killed in the preceding ``down + 20`` s. *Membership flap*: an observer's
  view turns such a member from ``alive`` to anything else (a suspicion of a
  running node, refuted or not).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from allocator.allocate import allocate
from allocator.view import NodeView

Row = tuple[str, dict[str, str], int]
"""(status, services_status, incarnation) of one member in one observer's view."""


@dataclass
class Request:
    at: float
    service: str
    entry: str
    outcome: str
    """HTTP status as text ("200", "503"), "200-wrong-body", or an error kind ("timeout", "connect-error", ...)."""
    latency: float
    served_by: str | None


@dataclass
class Observation:
    at: float
    observer: str
    rows: dict[str, Row]
    """member name -> its row in the observer's view."""


@dataclass
class Kill:
    node: str
    at: float
    restarted_at: float | None = None
    healthy_at: float | None = None


@dataclass
class SoakRecord:
    nodes: list[tuple[str, str]]
    config: dict[str, Any]
    requests: list[Request] = field(default_factory=list)
    observations: list[Observation] = field(default_factory=list)
    kills: list[Kill] = field(default_factory=list)
    load_started: float = 0.0
    load_ended: float = 0.0
    storage: dict[str, Any] = field(default_factory=lambda: {
        "writes": 0, "acknowledged": 0, "replicated": 0, "read_back_wrong": 0, "failed": {}})
    """Redis round trips through --service-proxy (a storage soak only)."""


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    k = min(len(s) - 1, max(0, int(round(q * (len(s) - 1)))))
    return s[k]


def _rounds(record: SoakRecord) -> list[tuple[float, dict[str, Observation]]]:
    """Observations grouped by poll round (one ``at`` per round), in time order."""
    by_t: dict[float, dict[str, Observation]] = {}
    for o in record.observations:
        by_t.setdefault(o.at, {})[o.observer] = o
    return sorted(by_t.items())


def _killed_between(record: SoakRecord, node: str, a: float, b: float) -> bool:
    return any(k.node == node and a < k.at <= b for k in record.kills)


def _down_at(record: SoakRecord, node: str, t: float) -> bool:
    return any(k.node == node and k.at <= t and (k.healthy_at is None or k.healthy_at > t) for k in record.kills)


def _placements(record: SoakRecord) -> list[tuple[float, dict[str, dict[str, str]]]]:
    """Per round: node -> services_status from the node's own row, carried over a failed poll unless killed since."""
    last: dict[str, tuple[float, dict[str, str]]] = {}
    out = []
    for t, obs in _rounds(record):
        for name, o in obs.items():
            row = o.rows.get(name)
            if row is not None:
                last[name] = (t, row[1])
        current = {}
        for name, (seen, services) in last.items():
            if name in obs or (not _killed_between(record, name, seen, t) and not _down_at(record, name, t)):
                current[name] = services
        out.append((t, current))
    return out


def _longest_windows(series: list[tuple[float, set[str]]], services: set[str]) -> dict[str, float]:
    longest = {s: 0.0 for s in services}
    since: dict[str, float] = {}
    for t, covered in series:
        for s in services:
            if s in covered:
                if s in since:
                    longest[s] = max(longest[s], t - since.pop(s))
            else:
                since.setdefault(s, t)
    if series:
        end = series[-1][0]
        for s, t0 in since.items():
            longest[s] = max(longest[s], end - t0)
    return longest


def _window_after(truth: list[tuple[float, set[str]]], service: str, start: float, until: float) -> float:
    """From the first round after ``start`` (and by ``until``) without ``service`` to the next round with it."""
    since = None
    for t, covered in truth:
        if t < start:
            continue
        if service in covered:
            if since is not None:
                return t - since
        elif since is None:
            if t > until:
                return 0.0
            since = t
    return truth[-1][0] - since if since is not None else 0.0


def _hostable_without(nodes: list[tuple[str, str]], placement: dict[str, dict[str, str]], victim: str) -> set[str]:
    """What the allocation gives the survivors of ``victim``, settled from what they ran before the kill.

    The victim stays in the view as dead with what it ran, as in the daemons' views until it
    returns (what a dead member ran may take a survivor's third slot: allocator/allocate.py).
    """
    view = [
        NodeView(node_id=n, worker_type=w, services=tuple(sorted(placement.get(n, {}))), status="dead" if n == victim else "alive")
        for n, w in nodes
    ]
    for _ in range(10):  # each daemon re-runs the allocation on the view its last step produced
        rows = allocate(view)
        settled = [v if v.node_id == victim else replace(v, services=tuple(rows.get(v.node_id, ()))) for v in view]
        if settled == view:
            break
        view = settled
    return {s for v in view if v.node_id != victim for s in v.services}


def _rehoming(record: SoakRecord, placements: list[tuple[float, dict[str, dict[str, str]]]],
              truth: list[tuple[float, set[str]]], kills: list[Kill], first_dead: dict[int, float]) -> dict[str, Any]:
    mean = sum(first_dead.values()) / len(first_dead) if first_dead else None
    checked, over = 0, []
    for i, k in enumerate(kills):
        before = [p for t, p in placements if t < k.at]
        detection = first_dead.get(i, mean)
        if not before or detection is None:
            continue
        hostable = _hostable_without(record.nodes, before[-1], k.node)
        until = k.restarted_at if k.restarted_at is not None else record.load_ended
        for service in sorted(_healthy(before[-1].get(k.node, {}))):
            checked += 1
            window = _window_after(truth, service, k.at, until)
            if window > detection + 5.0:
                over.append({"victim": k.node, "at": round(k.at - record.load_started, 1), "service": service,
                             "window_s": round(window, 1), "bound_s": round(detection + 5.0, 2),
                             "hostable": service in hostable})
    return {
        "checked": checked,
        "within": checked - len(over),
        "over_hostable": [o for o in over if o["hostable"]],
        "over_not_hostable": [o for o in over if not o["hostable"]],
    }


def _healthy(services: dict[str, str]) -> set[str]:
    return {s for s, h in services.items() if h == "healthy"}


def summarize(record: SoakRecord) -> dict[str, Any]:
    reqs = record.requests
    answered = [r for r in reqs if r.outcome == "200"]
    failed: dict[str, int] = {}
    for r in reqs:
        if r.outcome != "200":
            failed[r.outcome] = failed.get(r.outcome, 0) + 1
    lat = [r.latency for r in answered]
    entry_killed = sum(
        1 for r in reqs if r.outcome != "200" and _killed_between(record, r.entry, r.at, r.at + r.latency + 0.5)
    )

    placements = _placements(record)
    baseline = set().union(*(_healthy(s) for s in placements[0][1].values())) if placements else set()
    truth = [(t, set().union(*(_healthy(s) for s in p.values())) if p else set()) for t, p in placements]
    runner_gap = _longest_windows(truth, baseline)

    view_gap = {s: 0.0 for s in baseline}
    for observer in {name for name, _ in record.nodes}:
        series = []
        prev_t = None
        for t, obs in _rounds(record):
            o = obs.get(observer)
            if o is None:
                continue
            if prev_t is not None and _killed_between(record, observer, prev_t, t):
                for s, w in _longest_windows(series, baseline).items():
                    view_gap[s] = max(view_gap[s], w)
                series = []
            prev_t = t
            series.append((t, {s for st, svc, _ in o.rows.values() if st == "alive" for s in _healthy(svc)}))
        for s, w in _longest_windows(series, baseline).items():
            view_gap[s] = max(view_gap[s], w)

    moves = []
    kills = sorted(record.kills, key=lambda k: k.at)
    for k in kills:
        # The outage: from the kill to the victim's restart (its own services may come back with it after).
        end = k.restarted_at if k.restarted_at is not None else record.load_ended
        before = [p for t, p in placements if t < k.at]
        during = [p for t, p in placements if k.at < t <= end]
        if not before or not during:
            continue
        b = before[-1]
        moved = max(sum(len(set(p.get(n, {})) - set(b.get(n, {}))) for n in p if n != k.node) for p in during)
        elsewhere = set().union(*(_healthy(v) for n, v in during[-1].items() if n != k.node))
        moves.append({"victim": k.node, "at": round(k.at - record.load_started, 1), "moved": moved,
                      "victim_ran": sorted(b.get(k.node, {})),
                      "not_rehomed": sorted(set(b.get(k.node, {})) - elsewhere)})

    window = float(record.config.get("down_s", 10.0)) + 20.0
    false_deaths: list[dict[str, Any]] = []
    flaps: list[dict[str, Any]] = []
    detections: list[float] = []
    prev: dict[tuple[str, str], str] = {}
    last_seen: dict[str, float] = {}
    first_dead: dict[int, float] = {}
    for t, obs in _rounds(record):
        for observer, o in obs.items():
            if observer in last_seen and _killed_between(record, observer, last_seen[observer], t):
                for key in [key for key in prev if key[0] == observer]:
                    del prev[key]  # a new process: its first view is a baseline, not a transition
            last_seen[observer] = t
            for subject, (status, _, _) in o.rows.items():
                before = prev.get((observer, subject))
                prev[(observer, subject)] = status
                if subject == observer or before is None or before == status:
                    continue
                killed = _killed_between(record, subject, t - window, t) or _down_at(record, subject, t)
                if status == "dead":
                    if killed:
                        for idx, k in enumerate(kills):
                            if k.node == subject and k.at <= t and idx not in first_dead:
                                first_dead[idx] = t - k.at
                    else:
                        false_deaths.append({"at": round(t - record.load_started, 1), "observer": observer, "subject": subject})
                if before == "alive" and not killed:
                    flaps.append({"at": round(t - record.load_started, 1), "observer": observer, "subject": subject, "to": status})
    detections = [first_dead[i] for i in sorted(first_dead)]

    duration = max(1e-9, record.load_ended - record.load_started)
    return {
        "config": record.config,
        "nodes": [f"{n}:{w}" for n, w in record.nodes],
        "duration_s": round(duration, 1),
        "requests": {
            "sent": len(reqs),
            "answered": len(answered),
            "failed": sum(failed.values()),
            "failed_by_status": dict(sorted(failed.items())),
            "failed_with_entry_node_killed": entry_killed,
            "answered_ratio": round(len(answered) / len(reqs), 5) if reqs else None,
            # Answers a gateway held while a service had no reachable runner show up here, not as failures.
            "answered_after_1s": sum(1 for v in lat if v > 1.0),
            "answered_after_10s": sum(1 for v in lat if v > 10.0),
            "rate_per_s": round(len(reqs) / duration, 2),
        },
        "latency_ms": {
            "p50": _ms(_percentile(lat, 0.50)),
            "p99": _ms(_percentile(lat, 0.99)),
            "max": _ms(max(lat) if lat else None),
        },
        "kills": len(kills),
        "restarts_healthy": sum(k.healthy_at is not None for k in kills),
        "restart_to_healthy_s": _stat([k.healthy_at - k.restarted_at for k in kills if k.healthy_at and k.restarted_at]),
        "detection_s": _stat(detections),
        "detection_by_kill": [{"victim": kills[i].node, "s": round(first_dead[i], 2)} for i in sorted(first_dead)],
        "services_watched": sorted(baseline),
        "rehoming_within_detection_plus_5s": _rehoming(record, placements, truth, kills, first_dead),
        "longest_no_healthy_runner_s": {s: round(w, 1) for s, w in sorted(runner_gap.items())},
        "longest_no_healthy_runner_max_s": round(max(runner_gap.values(), default=0.0), 1),
        "longest_view_gap_s": {s: round(w, 1) for s, w in sorted(view_gap.items())},
        "longest_view_gap_max_s": round(max(view_gap.values(), default=0.0), 1),
        "services_moved_per_failure": round(sum(m["moved"] for m in moves) / len(moves), 2) if moves else None,
        "moves": moves,
        "false_deaths": len(false_deaths),
        "false_death_events": false_deaths[:20],
        "membership_flaps": len(flaps),
        "flap_events": flaps[:20],
        "poll_rounds": len(_rounds(record)),
        "storage_round_trips": record.storage if record.config.get("storage") else "not measured (run with --storage)",
    }


def _ms(v: float | None) -> float | None:
    return None if v is None else round(v * 1000.0, 1)


def _stat(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"n": 0}
    return {"n": len(values), "mean": round(sum(values) / len(values), 2), "max": round(max(values), 2)}


_TRANSPORT = {"netns": "in network namespaces (one address per node)", "loopback": "on loopback"}


def render_text(f: dict[str, Any]) -> str:
    r, lat = f["requests"], f["latency_ms"]
    c = f["config"]
    lines = [
        f"soak: {c['nodes']} nodes ({', '.join(f['nodes'])}), {f['duration_s']} s, SIGKILL every {c['kill_every_s']:g} s "
        f"(down {c['down_s']:g} s), loss {c['loss']:g}, {c['services']} services, seed {c['seed']}, "
        f"{_TRANSPORT.get(c.get('transport', 'loopback'), c.get('transport'))}",
        f"requests: {r['sent']} sent, {r['answered']} answered ({_pct(r['answered_ratio'])}), {r['failed']} failed "
        f"{r['failed_by_status'] or ''} ({r['failed_with_entry_node_killed']} with the entry node killed mid-request)",
        f"latency through the gateway: p50 {lat['p50']} ms, p99 {lat['p99']} ms, max {lat['max']} ms; "
        f"answered after more than 1 s: {r['answered_after_1s']}, 10 s: {r['answered_after_10s']} "
        f"(client timeout {c.get('request_timeout_s')} s)",
        f"kills: {f['kills']}, back healthy: {f['restarts_healthy']} (restart to healthy {f['restart_to_healthy_s']}); "
        f"first dead in a view after the kill: {f['detection_s']}",
        f"longest window without a healthy runner: {f['longest_no_healthy_runner_max_s']} s {f['longest_no_healthy_runner_s']}",
        _rehoming_line(f["rehoming_within_detection_plus_5s"]),
        f"longest window a live node's view showed none: {f['longest_view_gap_max_s']} s {f['longest_view_gap_s']}",
        f"services moved per failure: {f['services_moved_per_failure']}",
        f"false deaths: {f['false_deaths']}; membership flaps: {f['membership_flaps']}",
        f"storage round trips: {f['storage_round_trips']}",
    ]
    return "\n".join(lines)


def _rehoming_line(r: dict[str, Any]) -> str:
    def names(items: list[dict[str, Any]]) -> str:
        return ", ".join(f"{o['service']} {o['window_s']} s after {o['victim']}" for o in items) or "none"

    return (f"re-homed within detection + 5 s: {r['within']} of {r['checked']} (kill, service) pairs; "
            f"over it and hostable by a survivor: {names(r['over_hostable'])}; "
            f"over it with no survivor allowed to run it: {names(r['over_not_hostable'])}")


def _pct(ratio: float | None) -> str:
    return "n/a" if ratio is None else f"{100.0 * ratio:.2f} %"


def markdown_row(f: dict[str, Any], command: str, date: str) -> str:
    """One row of the table in simulations/SOAK.md (columns as in MARKDOWN_HEADER)."""
    r, lat = f["requests"], f["latency_ms"]
    failed = ", ".join(f"{k}: {v}" for k, v in r["failed_by_status"].items()) or "-"
    return (
        f"| {date} | `{command}` | {r['sent']} | {r['answered']} ({_pct(r['answered_ratio'])}) | {failed} | "
        f"{lat['p50']} / {lat['p99']} | {r['answered_after_1s']} / {r['answered_after_10s']} / {lat['max']} | {f['kills']} | {f['longest_no_healthy_runner_max_s']} | "
        f"{f['services_moved_per_failure']} | {f['false_deaths']} | {f['membership_flaps']} | {_storage_cell(f)} |"
    )


MARKDOWN_HEADER = (
    "| date | command | sent | answered | failed by status | p50 / p99 ms | answered > 1 s / > 10 s / max ms | kills | "
    "longest no healthy runner s | services moved per failure | false deaths | flaps | "
    "storage: writes acked / replicated / acked lost |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def _storage_cell(f: dict[str, Any]) -> str:
    st = f["storage_round_trips"]
    if not isinstance(st, dict):
        return "not measured"
    return f"{st['acknowledged']} / {st['replicated']} / {st.get('acknowledged_lost')}"
