"""document-processing: the real pypdf/python-docx child; a PDF and a DOCX made here come back as text."""

from __future__ import annotations

import io
import zlib
from collections.abc import AsyncIterator

import aiohttp
import pytest
import pytest_asyncio
from ml import need_modules, started, url

from services.runners.process import ProcessRunner

pytestmark = pytest.mark.asyncio(loop_scope="module")

PAGE_TEXTS = ["Statement of affairs for Alice Smith", "Creditor Acme Bank is owed 1200 pounds"]


def make_pdf(pages: list[str | None]) -> bytes:
    """A PDF with one page per item: a line of Helvetica text, or (None) a gray image and no text.

    Written by hand (objects, offsets, xref) so the test needs no PDF writer
    and the scanned page is exactly "an image, no text layer".
    """
    objects: list[bytes] = []

    def add(body: bytes) -> int:
        objects.append(body)
        return len(objects)

    catalog = add(b"")  # filled in below, once the page tree's number is known
    font = add(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    pixels = zlib.compress(bytes(range(0, 256, 4)) * 64)
    image = add(b"<< /Type /XObject /Subtype /Image /Width 64 /Height 64 /ColorSpace /DeviceGray /BitsPerComponent 8 /Filter /FlateDecode /Length %d >>\nstream\n" % len(pixels) + pixels + b"\nendstream")
    tree = add(b"")
    kids = []
    for text in pages:
        if text is None:
            content = b"q 400 0 0 400 100 200 cm /Im1 Do Q"
            resources = b"<< /XObject << /Im1 %d 0 R >> >>" % image
        else:
            escaped = text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)").encode("latin-1")
            content = b"BT /F1 14 Tf 72 720 Td (" + escaped + b") Tj ET"
            resources = b"<< /Font << /F1 %d 0 R >> >>" % font
        stream = add(b"<< /Length %d >>\nstream\n" % len(content) + content + b"\nendstream")
        kids.append(add(b"<< /Type /Page /Parent %d 0 R /MediaBox [0 0 612 792] /Resources %s /Contents %d 0 R >>" % (tree, resources, stream)))
    objects[catalog - 1] = b"<< /Type /Catalog /Pages %d 0 R >>" % tree
    objects[tree - 1] = b"<< /Type /Pages /Kids [%s] /Count %d >>" % (b" ".join(b"%d 0 R" % k for k in kids), len(kids))
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root %d 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, catalog, xref)
    return bytes(out)


def make_docx() -> bytes:
    import docx

    document = docx.Document()
    document.add_heading("Client budget", level=1)
    document.add_paragraph("Income is paid monthly.")
    table = document.add_table(rows=2, cols=2)
    for r, row in enumerate([("Rent", "650"), ("Council tax", "120")]):
        for c, value in enumerate(row):
            table.cell(r, c).text = value
    document.add_page_break()
    document.add_paragraph("Second page: the creditors.")
    buf = io.BytesIO()
    document.save(buf)
    return buf.getvalue()


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
    assert doc["scanned_pages"] == [] and doc["ocr"] is None


async def test_a_page_without_a_text_layer_is_reported_as_scanned(runner: ProcessRunner, http: aiohttp.ClientSession) -> None:
    pdf = make_pdf([PAGE_TEXTS[0], None, PAGE_TEXTS[1]])
    async with http.post(url(runner, "/extract-text"), data=pdf, headers={"Content-Type": "application/pdf"}) as resp:
        doc = await resp.json()
    assert resp.status == 200, doc
    assert doc["pages"] == 3 and doc["scanned_pages"] == [2] and doc["ocr"] == "not available"
    assert doc["text"].split("\f") == [PAGE_TEXTS[0], "", PAGE_TEXTS[1]]


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
