"""services.load_progress: the progress line, vLLM's log lines, the gossip steps, the child's reporter."""

from __future__ import annotations

import threading

import pytest

from services.load_progress import (
    GOSSIP_STEP,
    Reporter,
    gossip_percent,
    parse_progress_line,
    vllm_progress,
)


@pytest.mark.parametrize(
    ("line", "percent"),
    [
        ("RMAP2P-PROGRESS 0", 0),
        ("RMAP2P-PROGRESS 42", 42),
        ("RMAP2P-PROGRESS 100", 100),
        ("RMAP2P-PROGRESS 101", None),
        ("RMAP2P-PROGRESS -1", None),
        ("RMAP2P-PROGRESS 4.5", None),
        ("RMAP2P-PROGRESS 0042", None),
        ("RMAP2P-PROGRESS", None),
        ("RMAP2P-PROGRESS 1 2", None),
        ("RMAP2P-LISTENING 8080", None),
        ("progress 42", None),
    ],
)
def test_the_progress_line(line: str, percent: int | None) -> None:
    assert parse_progress_line(line) == percent


@pytest.mark.parametrize(
    ("line", "percent"),
    [
        # vLLM's bar_format: "{desc}: {percentage:3.0f}% Completed | {n_fmt}/{total_fmt} [...]"
        ("Loading safetensors checkpoint shards:   0% Completed | 0/4 [00:00<?, ?it/s]", 0),
        ("Loading safetensors checkpoint shards:  50% Completed | 2/4 [00:03<00:03,  1.62s/it]", 50),
        ("(EngineCore_0 pid=812) Loading safetensors checkpoint shards: 100% Completed | 4/4 [00:06<00:00]", 100),
        ("Loading pt checkpoint shards:  25% Completed | 1/4 [00:01<00:03]", 25),
        ("INFO 12-02 model weights took 14.99 GiB", None),
        ("Capturing CUDA graphs: 50%", None),
    ],
)
def test_vllm_log_lines(line: str, percent: int | None) -> None:
    assert vllm_progress(line) == percent


def test_gossip_steps() -> None:
    assert [gossip_percent(p) for p in (0, 4, 5, 42, 99, 100)] == [0, 0, 5, 40, 95, 100]
    assert all(gossip_percent(p) % GOSSIP_STEP == 0 for p in range(101))


def test_the_reporter_prints_only_growth_and_never_raises() -> None:
    lines: list[str] = []
    r = Reporter(lines.append)
    for fraction in (float("nan"), 0.0, 0.004, 0.5, 0.4, 0.5, 1.7, "x"):
        r.report(fraction)  # type: ignore[arg-type]
    assert lines == ["RMAP2P-PROGRESS 0", "RMAP2P-PROGRESS 50", "RMAP2P-PROGRESS 100"]
    assert r.percent == 100


def test_the_reporter_is_safe_from_many_threads() -> None:
    lines: list[str] = []
    r = Reporter(lines.append)
    threads = [threading.Thread(target=lambda k=k: [r.report(i / 1000) for i in range(k, 1000, 8)]) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    figures = [int(line.split()[1]) for line in lines]
    assert figures == sorted(set(figures)) and figures[-1] == 99
