"""document-processing hands scanned pages to vision-ocr through the overlay: real children, real gateways.

The documents child and the RapidOCR child run as processes; each is
advertised on its own node of a real membership cluster whose gateways serve
in-process (``gateways.py``). The documents child reaches vision-ocr through
its node's gateway (``RMAP2P_GATEWAY``), as the service manager wires it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from gateways import Gateways, gateways
from ml import need_modules, started
from ocr_images import render, words
from sample_docs import make_docx_with_images, make_pdf

from services.runners import make_runner
from services.runners.ocr_handoff import OcrConfig
from services.runners.process import ProcessRunner
from services.supervisor import RestartPolicy

MODULE_LOOP = pytest.mark.asyncio(loop_scope="module")

TEXT_PAGES = ["Statement of affairs for Alice Smith", "Creditor Acme Bank is owed 1200 pounds"]
SCAN = ["Arrears notice 4711", "Council tax due 310 pounds"]
SCAN_2 = ["Final reminder 8820"]
EXTRACT = "/api/service/document-processing/extract-text"


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def ocr_port() -> AsyncIterator[int]:
    need_modules("pypdf", "docx", "rapidocr", "onnxruntime", "PIL", "pypdfium2")
    policy = RestartPolicy(ready_timeout=180.0, check_interval=0.3)
    runner = make_runner(SimpleNamespace(name="vision-ocr"), "127.0.0.1", 0, "n2", {"RMAP2P_OCR_THREADS": "2"}, policy=policy, backend="rapidocr")
    await runner.start()
    try:
        deadline = time.monotonic() + 180.0
        while await runner.health() != "healthy":
            assert time.monotonic() < deadline, f"OCR child not ready: {runner.supervisor.state} {runner.failed}"
            await asyncio.sleep(0.3)
        assert runner.port is not None
        yield runner.port
    finally:
        await runner.stop()


async def documents_on(pool: Gateways, node: str, env: dict[str, str] | None = None) -> ProcessRunner:
    """A documents child whose gateway is ``node``'s, advertised on ``node``."""
    runner = await started("document-processing", {"RMAP2P_GATEWAY": pool.urls[node], **(env or {})})
    assert runner.port is not None
    pool.advertise(node, {"document-processing": runner.port})
    return runner


DOCX_TYPE = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"


async def extract(gateway: str, pdf: bytes, name: str = "letter.pdf", content_type: str = "application/pdf",
                  ) -> tuple[int, dict[str, Any], str | None]:
    form = aiohttp.FormData()
    form.add_field("file", pdf, filename=name, content_type=content_type)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=180)) as client, client.post(gateway + EXTRACT, data=form) as resp:
        return resp.status, await resp.json(), resp.headers.get("X-Rmap2p-Node")


@MODULE_LOOP
async def test_a_scanned_page_comes_back_read_by_vision_ocr_on_another_node(ocr_port: int) -> None:
    async with gateways(["n1", "n2", "n3"]) as pool:
        pool.advertise("n2", {"vision-ocr": ocr_port})
        runner = await documents_on(pool, "n1")
        try:
            # The client knows n3's gateway; documents run on n1, vision-ocr on n2.
            status, doc, served_by = await extract(pool.urls["n3"], make_pdf([TEXT_PAGES[0], render(SCAN), TEXT_PAGES[1]]))
        finally:
            await runner.stop()
    assert status == 200, doc
    assert served_by == "n1"
    assert doc["pages"] == 3 and doc["scanned_pages"] == [2]
    assert doc["ocr"] == "vision-ocr" and doc["ocr_node"] == "n2" and doc["ocr_pages"] == [2]
    assert doc["ocr_model"].startswith("rapidocr-")
    pages = doc["text"].split("\f")
    assert pages[0] == TEXT_PAGES[0] and pages[2] == TEXT_PAGES[1], "text-layer pages keep their place"
    assert words(pages[1]) == words("\n".join(SCAN)), "the scan's text takes page 2's place"


@MODULE_LOOP
async def test_images_in_a_docx_come_back_read_by_vision_ocr_where_they_stand(ocr_port: int) -> None:
    docx = make_docx_with_images("Cover letter for Alice Smith", render(SCAN), "After the scan.", "Attached:", render(SCAN_2))
    async with gateways(["n1", "n2", "n3"]) as pool:
        pool.advertise("n2", {"vision-ocr": ocr_port})
        runner = await documents_on(pool, "n1")
        try:
            status, doc, served_by = await extract(pool.urls["n3"], docx, "letter.docx", DOCX_TYPE)
        finally:
            await runner.stop()
    assert status == 200, doc
    assert served_by == "n1" and doc["format"] == "docx"
    assert doc["images"] == 2 and doc["scanned_pages"] == []
    assert doc["ocr"] == "vision-ocr" and doc["ocr_node"] == "n2" and doc["ocr_pages"] == [1, 2]
    assert doc["ocr_model"].startswith("rapidocr-")
    lines = doc["text"].split("\n")
    assert lines[0] == "Cover letter for Alice Smith", lines
    # The picture's paragraph is empty; what OCR read of it follows it, before the next paragraph.
    picture = lines.index("") + 1
    after = lines.index("After the scan.")
    assert words(" ".join(lines[picture:after])) == words(" ".join(SCAN)), lines
    row = next(i for i, line in enumerate(lines) if line.startswith("Attached:"))
    assert words(" ".join(lines[row + 1:])) == words(SCAN_2[0]), "the table's picture follows its row"


@MODULE_LOOP
@pytest.mark.parametrize(
    ("env", "ocr", "ocr_pages"),
    [
        ({"RMAP2P_OCR_MAX_PAGES": "1"}, "vision-ocr: 1 of 2 scanned pages read (RMAP2P_OCR_MAX_PAGES=1)", [1]),
        ({"RMAP2P_OCR_TIMEOUT": "0.05"}, "failed: vision-ocr did not answer within 0.05 s (2 pages)", []),
    ],
)
async def test_ocr_is_bounded_in_pages_and_time(ocr_port: int, env: dict[str, str], ocr: str, ocr_pages: list[int]) -> None:
    async with gateways(["n1", "n2"]) as pool:
        pool.advertise("n2", {"vision-ocr": ocr_port})
        runner = await documents_on(pool, "n1", env)
        try:
            status, doc, _ = await extract(pool.urls["n1"], make_pdf([render(SCAN_2), render(SCAN), TEXT_PAGES[0]]))
        finally:
            await runner.stop()
    assert status == 200, doc
    assert doc["scanned_pages"] == [1, 2]
    assert doc["ocr"] == ocr and doc["ocr_pages"] == ocr_pages
    pages = doc["text"].split("\f")
    assert words(pages[0]) == (words(SCAN_2[0]) if ocr_pages else [])
    assert pages[1:] == ["", TEXT_PAGES[0]], "a page past the limit stays empty; the text layer stays"


@MODULE_LOOP
async def test_without_vision_ocr_in_the_pool_the_text_layer_comes_back_and_ocr_says_why() -> None:
    need_modules("pypdf", "docx", "PIL")
    async with gateways(["n1", "n2"]) as pool:
        runner = await documents_on(pool, "n1")
        try:
            status, doc, _ = await extract(pool.urls["n2"], make_pdf([TEXT_PAGES[0], render(SCAN)]))
        finally:
            await runner.stop()
    assert status == 200, doc
    assert doc["scanned_pages"] == [2] and doc["ocr_pages"] == [] and doc["ocr_node"] is None
    assert doc["ocr"] == "not available: the gateway answered 503: no alive node serves vision-ocr"
    assert doc["text"].split("\f") == [TEXT_PAGES[0], ""]


@MODULE_LOOP
async def test_docx_images_without_vision_ocr_leave_the_text_and_say_why() -> None:
    need_modules("pypdf", "docx", "PIL")
    docx = make_docx_with_images("Before", render(SCAN), "After", "Cell", render(SCAN_2))
    async with gateways(["n1", "n2"]) as pool:
        runner = await documents_on(pool, "n1", {"RMAP2P_OCR_MAX_PAGES": "1"})
        try:
            status, doc, _ = await extract(pool.urls["n2"], docx, "letter.docx", DOCX_TYPE)
        finally:
            await runner.stop()
    assert status == 200, doc
    assert doc["images"] == 2 and doc["ocr_pages"] == [] and doc["ocr_node"] is None
    assert doc["ocr"] == "not available: the gateway answered 503: no alive node serves vision-ocr"
    assert doc["text"] == "Before\n\nAfter\nCell\t"


@pytest.mark.parametrize(
    ("env", "gateway", "max_pages", "timeout"),
    [
        ({}, None, 20, 120.0),
        ({"RMAP2P_GATEWAY": " 127.0.0.1:8080/ "}, "http://127.0.0.1:8080", 20, 120.0),
        ({"RMAP2P_GATEWAY": "http://[::1]:8080", "RMAP2P_OCR_MAX_PAGES": "500"}, "http://[::1]:8080", 50, 120.0),
        ({"RMAP2P_OCR_MAX_PAGES": "0", "RMAP2P_OCR_TIMEOUT": "-3"}, None, 1, 120.0),
        ({"RMAP2P_OCR_MAX_PAGES": "many", "RMAP2P_OCR_TIMEOUT": "7.5"}, None, 20, 7.5),
    ],
)
def test_the_hand_off_configuration_is_bounded(env: dict[str, str], gateway: str | None, max_pages: int, timeout: float) -> None:
    config = OcrConfig.from_env(env)
    assert (config.gateway, config.max_pages, config.timeout) == (gateway, max_pages, timeout)
