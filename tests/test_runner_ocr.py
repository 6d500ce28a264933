"""vision-ocr on CPU: the RapidOCR child reads back text the test renders into a PNG and a two-page PDF."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from types import SimpleNamespace

import aiohttp
import pytest
import pytest_asyncio
from ml import need_modules
from ocr_images import pdf, png, words

from services.runners import make_runner
from services.supervisor import RestartPolicy

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def ocr() -> AsyncIterator[str]:
    need_modules("rapidocr", "onnxruntime", "PIL", "pypdfium2")
    policy = RestartPolicy(ready_timeout=180.0, check_interval=0.3)
    runner = make_runner(SimpleNamespace(name="vision-ocr"), "127.0.0.1", 0, "c1", {"RMAP2P_OCR_THREADS": "2"}, policy=policy, backend="rapidocr")
    await runner.start()
    try:
        deadline = time.monotonic() + 180.0
        while await runner.health() != "healthy":
            assert time.monotonic() < deadline, f"OCR child not ready: {runner.supervisor.state} {runner.failed}"
            await asyncio.sleep(0.3)
        assert runner.loaded_models and runner.loaded_models[0].startswith("rapidocr-")
        yield f"http://127.0.0.1:{runner.port}"
    finally:
        await runner.stop()


async def test_a_png_comes_back_as_its_text(ocr: str) -> None:
    async with aiohttp.ClientSession() as client:
        async with client.get(ocr + "/health") as resp:
            health = await resp.json()
        assert health["backend"] == "rapidocr" and health["model"].startswith("rapidocr-")
        lines = ["Invoice 4711 from Acme Ltd", "Total due: 250 pounds"]
        async with client.post(ocr + "/ocr", data=png(lines), headers={"Content-Type": "image/png"}) as resp:
            assert resp.status == 200, await resp.text()
            doc = await resp.json()
    assert doc["pages"] == 1
    assert words(doc["text"]) == words("\n".join(lines))


async def test_a_two_page_pdf_upload_comes_back_page_by_page(ocr: str) -> None:
    form = aiohttp.FormData()
    form.add_field("file", pdf([["Dear Sir or Madam", "Account 99182"], ["Council tax arrears 310"]]), filename="letter.pdf", content_type="application/pdf")
    async with aiohttp.ClientSession() as client, client.post(ocr + "/ocr", data=form) as resp:
        assert resp.status == 200, await resp.text()
        doc = await resp.json()
    assert doc["pages"] == 2
    assert words(doc["page_texts"][0]) == ["Dear", "Sir", "or", "Madam", "Account", "99182"]
    assert words(doc["page_texts"][1]) == ["Council", "tax", "arrears", "310"]
    assert doc["text"] == "\n\n".join(doc["page_texts"])


@pytest.mark.parametrize(
    ("body", "content_type", "status", "says"),
    [
        (b"", "image/png", 400, "empty upload"),
        (b"this is not an image", "application/octet-stream", 415, "not an image or PDF"),
        (b"%PDF-1.4 broken", "application/pdf", 415, "not a PDF"),
    ],
)
async def test_bad_uploads_get_a_4xx_that_says_why(ocr: str, body: bytes, content_type: str, status: int, says: str) -> None:
    async with aiohttp.ClientSession() as client:
        async with client.post(ocr + "/ocr", data=body, headers={"Content-Type": content_type}) as resp:
            assert resp.status == status
            assert says in (await resp.json())["error"]
        for form in (aiohttp.FormData(default_to_multipart=True), aiohttp.FormData()):  # multipart; urlencoded
            form.add_field("other", "x")
            async with client.post(ocr + "/ocr", data=form) as resp:
                assert resp.status == 400 and "'file' field" in (await resp.json())["error"]
