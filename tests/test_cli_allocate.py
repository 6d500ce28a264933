"""``python -m rmap2p allocate`` as a real subprocess: output and error path."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run_allocate(stdin: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rmap2p", "allocate", *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )


def test_allocates_and_reports_gaps_after_assignment() -> None:
    view = {
        "nodes": [
            {"node_id": "gpu-1", "worker_type": "gpu", "services": ["llm-inference", "vision-ocr"]},
            {"node_id": "gpu-2", "worker_type": "gpu", "services": []},
            {"node_id": "cpu-1", "worker_type": "cpu", "services": [], "specialization": "ner"},
            {"node_id": "edge-1", "worker_type": "edge", "services": ["coordinator", "edge-proxy"]},
            {"node_id": "edge-2", "worker_type": "edge", "services": [], "status": "suspect"},
            {"node_id": "storage-1", "worker_type": "storage", "services": ["chromadb"], "status": "dead"},
            {"node_id": "storage-2", "worker_type": "storage", "services": [], "can_run": ["redis", "postgres"]},
        ]
    }
    proc = run_allocate(json.dumps(view))
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    out = json.loads(proc.stdout)
    assert out["assignments"] == {
        "cpu-1": ["ner-extraction", "document-processing"],
        "edge-1": ["coordinator", "edge-proxy"],
        "edge-2": ["coordinator", "load-balancer"],
        "gpu-1": ["llm-inference", "vision-ocr"],
        "gpu-2": ["rag-embeddings"],
        "storage-2": ["redis", "postgres"],
    }
    gaps = out["gaps"]
    assert set(gaps) == {"gaps", "critical_gaps", "summary"}
    by_service = {g["service"]: g for g in gaps["gaps"]}
    # Computed on the view after the assignment: chromadb's only runner is dead.
    assert by_service["chromadb"]["status"] == "critical"
    assert by_service["coordinator"] == {
        "service": "coordinator",
        "required_type": "edge",
        "priority": 1,
        "current_workers": 2,
        "status": "ok",
        "port": 8080,
    }
    assert by_service["rag-embeddings"]["current_workers"] == 1
    assert {g["service"] for g in gaps["critical_gaps"]} == {"chromadb", "notes-coa", "minio", "neo4j"}
    assert gaps["summary"] == {"total_services": 14, "covered": 1, "needs_attention": 13}


def test_services_status_decides_what_counts() -> None:
    # Two CPU nodes: ner-extraction runs on both but is broken on one and starting on the
    # other; notes-coa is broken on its only runner. Listed services default to healthy.
    view = {
        "nodes": [
            {
                "node_id": "cpu-1",
                "worker_type": "cpu",
                "services": ["ner-extraction", "document-processing"],
                "services_status": {"ner-extraction": "unhealthy"},
            },
            {
                "node_id": "cpu-2",
                "worker_type": "cpu",
                "services": ["ner-extraction", "notes-coa"],
                "services_status": {"ner-extraction": "starting", "notes-coa": "unhealthy"},
            },
        ]
    }
    proc = run_allocate(json.dumps(view))
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    # Allocation ignores health (a runner that keeps failing leaves can_run instead).
    assert out["assignments"] == {"cpu-1": ["ner-extraction", "document-processing"], "cpu-2": ["ner-extraction", "notes-coa"]}
    by_service = {g["service"]: g for g in out["gaps"]["gaps"]}
    # Once assigned: the starting copy counts, the unhealthy ones do not.
    assert (by_service["ner-extraction"]["current_workers"], by_service["ner-extraction"]["status"]) == (1, "warning")
    assert (by_service["notes-coa"]["current_workers"], by_service["notes-coa"]["status"]) == (0, "critical")
    assert (by_service["document-processing"]["current_workers"], by_service["document-processing"]["status"]) == (1, "warning")


def test_all_runners_broken_is_not_ok() -> None:
    nodes = [
        {"node_id": f"e-{i}", "worker_type": "edge", "services": ["coordinator"], "services_status": {"coordinator": "unhealthy"}}
        for i in range(2)
    ]
    proc = run_allocate(json.dumps({"nodes": nodes}))
    assert proc.returncode == 0, proc.stderr
    entry = next(g for g in json.loads(proc.stdout)["gaps"]["gaps"] if g["service"] == "coordinator")
    assert (entry["current_workers"], entry["status"]) == (0, "critical")
    healthy = [{**n, "services_status": {"coordinator": "healthy"}} for n in nodes]
    entry = next(g for g in json.loads(run_allocate(json.dumps({"nodes": healthy})).stdout)["gaps"]["gaps"] if g["service"] == "coordinator")
    assert (entry["current_workers"], entry["status"]) == (2, "ok")


def test_gpu_boxes_with_cpu_capabilities_cover_cpu_services() -> None:
    caps = ["llm-inference", "vision-ocr", "rag-embeddings", "ner-extraction", "document-processing", "notes-coa"]
    view = {"nodes": [{"node_id": f"box-{i}", "worker_type": "gpu", "services": [], "can_run": caps} for i in (1, 2)]}
    proc = run_allocate(json.dumps(view))
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assigned = [s for row in out["assignments"].values() for s in row]
    assert sorted(assigned) == sorted(caps)
    by_service = {g["service"]: g for g in out["gaps"]["gaps"]}
    assert all(by_service[s]["current_workers"] == 1 for s in caps)


def test_indent_option() -> None:
    view = json.dumps({"nodes": [{"node_id": "g", "worker_type": "gpu", "services": []}]})
    compact = run_allocate(view, "--indent", "0")
    indented = run_allocate(view, "--indent", "4")
    assert compact.returncode == indented.returncode == 0
    assert compact.stdout.count("\n") == 1
    assert '\n    "assignments"' in indented.stdout
    assert json.loads(compact.stdout) == json.loads(indented.stdout)


@pytest.mark.parametrize(
    ("stdin", "needle"),
    [
        ("{not json", "not valid JSON"),
        ("", "not valid JSON"),
        ("[1, 2]", '"nodes"'),
        ('{"nodes": 3}', '"nodes" must be a list'),
        ('{"nodes": [{"worker_type": "gpu"}]}', "node_id"),
        ('{"nodes": [{"node_id": "a", "worker_type": "tpu"}]}', "worker_type"),
        ('{"nodes": [{"node_id": "a", "worker_type": "gpu", "services": "llm-inference"}]}', "services"),
        ('{"nodes": [{"node_id": "a", "worker_type": "gpu", "status": "zombie"}]}', "status"),
        ('{"nodes": [{"node_id": "a", "worker_type": "gpu", "can_run": [1]}]}', "can_run"),
        ('{"nodes": [{"node_id": "a", "worker_type": "gpu"}, {"node_id": "a", "worker_type": "cpu"}]}', "more than once"),
        ('{"nodes": [{"node_id": "a", "worker_type": "gpu", "current_load": 7}]}', "current_load"),
        ('{"nodes": [{"node_id": "a", "worker_type": "cpu", "services_status": []}]}', "services_status"),
        (
            '{"nodes": [{"node_id": "a", "worker_type": "cpu", "services": ["notes-coa"], "services_status": {"notes-coa": "fine"}}]}',
            "must be one of starting, healthy, unhealthy, stopping",
        ),
        (
            '{"nodes": [{"node_id": "a", "worker_type": "cpu", "services": [], "services_status": {"notes-coa": "healthy"}}]}',
            "not in its services",
        ),
    ],
)
def test_bad_input_is_one_line_and_exit_2(stdin: str, needle: str) -> None:
    proc = run_allocate(stdin)
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert needle in lines[0]
    assert lines[0].startswith("rmap2p allocate:")
