"""document-processing: the real pypdf/python-docx child; a PDF and a DOCX made here come back as text."""

from __future__ import annotations

import io
import socket
from collections.abc import AsyncIterator

import aiohttp
import pytest
import pytest_asyncio
from ml import need_modules, started, url
from sample_docs import make_docx, make_pdf

from services.runners.process import ProcessRunner

pytestmark = pytest.mark.asyncio(loop_scope="module")

PAGE_TEXTS = ["Statement of affairs for Alice Smith", "Creditor Acme Bank is owed 1200 pounds"]


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def runner() -> AsyncIterator[ProcessRunner]:
    need_modules("pypdf", "docx")
    r = await started("document-processing", {})
    yield r
    await r.stop()


@pytest_asyncio.fixture(loop_scope="module")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


async def test_a_pdf_upload_comes_back_as_its_text_and_page_count(runner: ProcessRunner, http: aiohttp.ClientSession) -> None:
    form = aiohttp.FormData()
    form.add_field("file", make_pdf(PAGE_TEXTS), filename="affairs.pdf", content_type="application/pdf")
    async with http.post(url(runner, "/extract-text"), data=form) as resp:
        doc = await resp.json()
    assert resp.status == 200, doc
    assert doc["pages"] == 2 and doc["format"] == "pdf"
    assert doc["text"].split("\f") == PAGE_TEXTS
    assert doc["scanned_pages"] == [] and doc["ocr"] is None and doc["ocr_pages"] == []


async def test_a_page_without_a_text_layer_is_reported_as_scanned(runner: ProcessRunner, http: aiohttp.ClientSession) -> None:
    pdf = make_pdf([PAGE_TEXTS[0], None, PAGE_TEXTS[1]])
    async with http.post(url(runner, "/extract-text"), data=pdf, headers={"Content-Type": "application/pdf"}) as resp:
        doc = await resp.json()
    assert resp.status == 200, doc
    assert doc["pages"] == 3 and doc["scanned_pages"] == [2] and doc["ocr_pages"] == []
    assert doc["ocr"] == "not available: RMAP2P_GATEWAY (the gateway to reach vision-ocr through) is not set"
    assert doc["text"].split("\f") == [PAGE_TEXTS[0], "", PAGE_TEXTS[1]]


async def test_a_gateway_that_does_not_answer_leaves_scanned_pages_empty_with_a_200(http: aiohttp.ClientSession) -> None:
    with socket.socket() as s:  # a port nothing listens on once closed
        s.bind(("127.0.0.1", 0))
        gateway = f"http://127.0.0.1:{s.getsockname()[1]}"
    r = await started("document-processing", {"RMAP2P_GATEWAY": gateway})
    try:
        async with http.get(url(r, "/health")) as resp:
            assert (await resp.json())["ocr_handoff"] == {"gateway": gateway, "max_pages": 20, "timeout_s": 120.0}
        async with http.post(url(r, "/extract-text"), data=make_pdf([None, PAGE_TEXTS[0]])) as resp:
            doc = await resp.json()
    finally:
        await r.stop()
    assert resp.status == 200, doc
    assert doc["ocr"].startswith(f"not available: the gateway {gateway} did not answer (")
    assert doc["text"].split("\f") == ["", PAGE_TEXTS[0]] and doc["ocr_node"] is None


async def test_a_docx_comes_back_as_its_text_in_order(runner: ProcessRunner, http: aiohttp.ClientSession) -> None:
    # Raw body, declared as octet-stream: the format is read from the bytes.
    async with http.post(url(runner, "/extract-text"), data=make_docx(), headers={"Content-Type": "application/octet-stream"}) as resp:
        doc = await resp.json()
    assert resp.status == 200, doc
    assert doc["format"] == "docx" and doc["pages"] == 2
    lines = [line for line in doc["text"].split("\n") if line.strip()]
    assert lines == ["Client budget", "Income is paid monthly.", "Rent\t650", "Council tax\t120", "Second page: the creditors."]


async def test_health_names_the_backend(runner: ProcessRunner, http: aiohttp.ClientSession) -> None:
    async with http.get(url(runner, "/health")) as resp:
        doc = await resp.json()
    assert resp.status == 200 and doc["backend"] == "pypdf+python-docx" and doc["model"] is None
    assert set(doc["versions"]) == {"pypdf", "python-docx"}
    assert doc["ocr_handoff"] is None, "no RMAP2P_GATEWAY: no hand-off"
    assert runner.loaded_models == ()


@pytest.mark.parametrize(
    ("body", "content_type", "status"),
    [
        (b"", "application/pdf", 400),
        (b"plain words, not a document", "text/plain", 415),
        (b"PK\x03\x04 not really a zip", "application/zip", 415),
        (b"%PDF-1.7\nthis is no pdf at all", "application/pdf", 422),
        (make_pdf(PAGE_TEXTS)[:200], "application/pdf", 422),
        (b"PK\x03\x04", "application/octet-stream", 415),
        (b"--x\r\nContent-Disposition: form-data; name=\"other\"\r\n\r\nvalue\r\n--x--\r\n", "multipart/form-data; boundary=x", 400),
        (b"garbage without boundaries", "multipart/form-data; boundary=x", 400),
    ],
)
async def test_bad_uploads_are_a_4xx_with_a_reason(runner: ProcessRunner, http: aiohttp.ClientSession, body: bytes, content_type: str, status: int) -> None:
    async with http.post(url(runner, "/extract-text"), data=body, headers={"Content-Type": content_type}) as resp:
        doc = await resp.json()
    assert resp.status == status, doc
    assert doc["error"]


async def test_a_damaged_docx_is_a_422(runner: ProcessRunner, http: aiohttp.ClientSession) -> None:
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("word/document.xml", "<not-word/>")
    async with http.post(url(runner, "/extract-text"), data=buf.getvalue(), headers={"Content-Type": "application/octet-stream"}) as resp:
        doc = await resp.json()
    assert resp.status == 422 and "DOCX" in doc["error"]
