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
