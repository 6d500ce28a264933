"""What ``rmap2p join`` tells a volunteer while it starts, read from real nodes' logs."""

from __future__ import annotations

import re
from pathlib import Path

from procs import NodeProc, wait_for

from rmap2p.startup_report import summary


def test_summary_names_running_services_and_the_gaps_in_words() -> None:
    doc = {"gaps": [
        {"service": "llm-inference", "required_type": "gpu", "status": "critical"},
        {"service": "vision-ocr", "required_type": "gpu", "status": "critical"},
        {"service": "coordinator", "required_type": "edge", "status": "critical"},
        {"service": "ner-extraction", "required_type": "cpu", "status": "warning"},
        {"service": "document-processing", "required_type": "cpu", "status": "ok"},
    ]}
    line = summary({"ner-extraction": "healthy", "document-processing": "starting"}, doc)
    assert line == (
        "running: document-processing (starting), ner-extraction (assigned by the allocation); "
        "the pool still needs a GPU worker for llm-inference, vision-ocr; an edge worker for coordinator; "
        "no spare for ner-extraction"
    )
    assert summary({}, {"gaps": []}).startswith("running no service")


def test_join_logs_discovery_membership_services_and_a_summary(tmp_path: Path) -> None:
    first = NodeProc("first", tmp_path, services=True)
    second = NodeProc("second", tmp_path, services=True)
    try:
        first.start().wait_healthy()
        second.start(join=[f"{first.gossip},127.0.0.1:1"]).wait_healthy()
        wait_for(lambda: "running:" in second.log.read_text(), 30, "second's summary line")
        wait_for(lambda: "running:" in first.log.read_text(), 30, "first's summary line")
        one, two = first.log.read_text(), second.log.read_text()
        assert "discovering a pool through nothing" in one, one
        assert f"discovering a pool through --join {first.gossip}, 127.0.0.1:1" in two, two
        assert re.search(r"joined a pool of 2", two), two
        running = re.search(r"running: (.*) \(assigned by the allocation\); (the pool still needs .*|every service)", one)
        assert running, one
        for service in running.group(1).split(", "):
            assert f"started {service.split(' ')[0]} (assigned by the allocation)" in one
    finally:
        second.terminate()
        first.terminate()
