"""document-processing: PDF (pypdf) and DOCX (python-docx) to text behind ``POST /extract-text``.

    POST /extract-text   multipart/form-data with a file part (named "file", or any part
                         with a filename), or the raw document as the body
                      -> {"text", "pages", "format", "scanned_pages", "images",
                          "ocr", "ocr_pages", "ocr_node", "ocr_model"}

The format is read from the bytes (``%PDF-``; a ZIP holding
``word/document.xml``), not trusted from the content type or file name.

- PDF: the text layer of each page, pages separated by a form feed
  (``\\f``, as pdftotext does); ``pages`` is the page count.
  ``scanned_pages`` lists the (1-based) pages that have no text layer but
  hold an image: what OCR would read.
- DOCX: paragraphs and tables in body order, one paragraph per line, table
  cells tab-separated. A DOCX has no fixed layout (Word computes pages when
  it renders), so ``pages`` is one plus the explicit breaks: hard page
  breaks, paragraphs that start a page, and sections that start on a new page.
  ``images`` counts the pictures embedded in it that OCR can read (PNG,
  JPEG, GIF, BMP, TIFF, WebP; vector drawings such as EMF are not counted):
  a scanned letter pasted into a Word file is text too.

Scanned pages go to ``vision-ocr`` through the overlay: the runner copies
them (pypdf) into one PDF, at most ``RMAP2P_OCR_MAX_PAGES`` of them (default
20, at most 50: vision-ocr's own limit per request), and posts it to
``$RMAP2P_GATEWAY/api/service/vision-ocr/ocr``. ``RMAP2P_GATEWAY`` is the
base URL of the gateway of the node this child runs on (the service manager
sets it); the gateway forwards to whichever node serves vision-ocr.
``RMAP2P_TOKEN``, if set, goes along as a bearer token. Each page's OCR text
takes that page's place in ``text``, so pages stay in order. A DOCX's
images go the same way, one request each (``read_images``), at most
``RMAP2P_OCR_MAX_PAGES`` of them; each image's text is put on the line after
the paragraph (or table row) that holds it. Then

- ``ocr`` is ``"vision-ocr"`` (or ``"vision-ocr: N of M scanned pages
  read ..."`` when there were more than the limit), ``ocr_node`` the node
  that served it (the gateway's ``X-Rmap2p-Node``), ``ocr_model`` its model,
  and ``ocr_pages`` the pages (PDF) or images (DOCX, numbered from 1 in
  body order) whose text came from OCR;
- ``ocr`` is ``"not available: <why>"`` when no gateway is configured, the
  gateway does not answer, or it answers 503 (no node serves vision-ocr);
- ``ocr`` is ``"failed: <why>"`` when vision-ocr answered but not with text
  (its 4xx/5xx, a malformed answer, or no answer within
  ``RMAP2P_OCR_TIMEOUT`` seconds, default 120).

In the last two cases the scanned pages' text stays empty and the answer is
still a 200 with everything the text layer gave: OCR is a best effort, never
a reason to fail the extraction. ``ocr`` is ``null`` when there are no
scanned pages or images, and ``ocr_pages`` is then empty.

Input that is not a readable PDF or DOCX gets 415 (another format) or 422
(damaged, encrypted, too many pages), never a 500.

Run as ``python -m services.runners.documents --service document-processing --port P``.
"""

from __future__ import annotations

import asyncio
import io
import logging
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import BodyPartReader, web

from services.capabilities import module_present
from services.runners.ocr_handoff import (
    OcrConfig,
    OcrOutcome,
    read_images,
    read_scanned,
)
from services.runners.serve import CannotRun, Engine, Route, json_error, main

log = logging.getLogger(__name__)

MAX_UPLOAD = 50 * 1024 * 1024
MAX_PAGES = 2000
DOCX_MEDIA = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
OCR_IMAGE_TYPES = frozenset({"image/png", "image/jpeg", "image/gif", "image/bmp", "image/tiff", "image/webp"})
"""Embedded picture formats vision-ocr reads (Pillow); EMF/WMF/SVG drawings are not sent."""
MAX_IMAGES = 200
"""Images listed per DOCX (each a copy in memory); only ``RMAP2P_OCR_MAX_PAGES`` of them are sent."""


class Unreadable(Exception):
    """The upload is a document of a supported format that cannot be read (HTTP 422)."""


@dataclass(slots=True)
class Loaded:
    versions: dict[str, str]
    ocr: OcrConfig
    session: aiohttp.ClientSession | None = None


@dataclass(frozen=True, slots=True)
class Extracted:
    text: str
    pages: int
    format: str
    scanned_pages: tuple[int, ...] = ()
    page_texts: tuple[str, ...] = ()
    """PDF only: each page's text layer (``text`` is them joined by form feeds)."""
    lines: tuple[str, ...] = ()
    """DOCX only: the body's lines (``text`` is them joined by newlines)."""
    images: tuple[DocxImage, ...] = ()
    """DOCX only: the pictures OCR can read, in body order."""


@dataclass(frozen=True, slots=True)
class DocxImage:
    line: int
    """Index in ``Extracted.lines`` of the paragraph or table row that holds it."""
    data: bytes
    content_type: str


class DocumentEngine(Engine[Loaded]):
    backend = "pypdf+python-docx"
    max_body = MAX_UPLOAD

    def preflight(self, env: Mapping[str, str]) -> None:
        for module, package in (("pypdf", "pypdf"), ("docx", "python-docx")):
            if not module_present(module):
                raise CannotRun(f"Python package {package} is not installed")

    def load(self, env: Mapping[str, str]) -> Loaded:
        import docx
        import pypdf

        versions = {"pypdf": pypdf.__version__, "python-docx": getattr(docx, "__version__", "unknown")}
        return Loaded(versions, OcrConfig.from_env(env))

    async def started(self, loaded: Loaded) -> None:
        loaded.session = aiohttp.ClientSession()  # each OCR request carries its own timeout

    async def closing(self, loaded: Loaded) -> None:
        if loaded.session is not None:
            await loaded.session.close()

    def describe(self, loaded: Loaded) -> dict[str, Any]:
        ocr = loaded.ocr
        handoff = {"gateway": ocr.gateway, "max_pages": ocr.max_pages, "timeout_s": ocr.timeout} if ocr.gateway else None
        return {"model": None, "formats": ["pdf", "docx"], "versions": loaded.versions, "ocr_handoff": handoff}

    def routes(self) -> Sequence[Route[Loaded]]:
        return (Route("POST", "/extract-text", extract_text),)


async def extract_text(loaded: Loaded, request: web.Request) -> web.Response:
    upload = await _read_upload(request)
    if isinstance(upload, web.Response):
        return upload
    data, declared = upload
    if not data:
        return json_error(400, "empty upload: send a PDF or DOCX as the body or as a multipart file part")
    kind = sniff(data)
    if kind is None:
        return json_error(415, f"unsupported document (declared {declared or 'no type'}): PDF and DOCX are supported")
    try:
        result = await asyncio.to_thread(read_pdf if kind == "pdf" else read_docx, data)
    except Unreadable as exc:
        return json_error(422, f"cannot read this {kind.upper()}: {exc}")
    ocr: OcrOutcome | None = None
    text = result.text
    if result.scanned_pages:
        assert loaded.session is not None
        ocr = await read_scanned(loaded.session, loaded.ocr, data, result.scanned_pages)
        if ocr.texts:
            text = "\f".join(ocr.texts.get(number, page) for number, page in enumerate(result.page_texts, start=1))
        else:
            log.info("document-processing: %d scanned page(s) not read: %s", len(result.scanned_pages), ocr.status)
    elif result.images:
        assert loaded.session is not None
        ocr = await read_images(loaded.session, loaded.ocr, [(i.data, i.content_type) for i in result.images])
        if ocr.texts:
            text = with_image_texts(result.lines, result.images, ocr.texts)
        else:
            log.info("document-processing: %d DOCX image(s) not read: %s", len(result.images), ocr.status)
    return web.json_response({
        "text": text,
        "pages": result.pages,
        "format": result.format,
        "scanned_pages": list(result.scanned_pages),
        "images": len(result.images),
        "ocr": ocr.status if ocr else None,
        "ocr_pages": sorted(ocr.texts) if ocr else [],
        "ocr_node": ocr.node if ocr else None,
        "ocr_model": ocr.model if ocr else None,
    })  # fmt: skip


async def _read_upload(request: web.Request) -> tuple[bytes, str | None] | web.Response:
    """The uploaded bytes and their declared type, from a multipart part or the raw body."""
    if not request.content_type.startswith("multipart/"):
        return await request.read(), request.content_type  # aiohttp enforces max_body (413)
    try:
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if isinstance(part, BodyPartReader) and (part.filename or part.name == "file"):
                data = bytearray()
                while chunk := await part.read_chunk():
                    data += chunk
                    if len(data) > MAX_UPLOAD:
                        return json_error(413, f"upload larger than {MAX_UPLOAD} bytes")
                return bytes(data), part.headers.get("Content-Type")
    except (ValueError, AssertionError, RuntimeError) as exc:
        # aiohttp's multipart reader raises these on a malformed body.
        return json_error(400, f"malformed multipart body: {exc}")
    return json_error(400, "multipart body has no file part (name it 'file')")


def sniff(data: bytes) -> str | None:
    """``pdf``, ``docx`` or None, from the bytes themselves."""
    # The PDF spec lets a header sit anywhere in the first 1024 bytes.
    if b"%PDF-" in data[:1024]:
        return "pdf"
    if data[:4] == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as z:
                if "word/document.xml" in z.namelist():
                    return "docx"
        except zipfile.BadZipFile:
            return None
    return None


def read_pdf(data: bytes) -> Extracted:
    import pypdf

    # pypdf raises many exception types on hostile or damaged files (its own PdfReadError,
    # but also KeyError, ValueError, TypeError from deep in its object model): all of them
    # are the client's file being unreadable, so all become one 422.
    try:
        reader = pypdf.PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):
            raise Unreadable("it is encrypted")
        count = len(reader.pages)
        if count > MAX_PAGES:
            raise Unreadable(f"{count} pages, at most {MAX_PAGES} are read")
        texts: list[str] = []
        scanned: list[int] = []
        for number, page in enumerate(reader.pages, start=1):
            text = page.extract_text() or ""
            if not text.strip() and _has_images(page):
                scanned.append(number)
            texts.append(text)
    except Unreadable:
        raise
    except Exception as exc:  # noqa: BLE001 -- see above
        raise Unreadable(f"{type(exc).__name__}: {exc}") from None
    return Extracted("\f".join(texts), count, "pdf", tuple(scanned), tuple(texts))


def _has_images(page: Any) -> bool:
    try:
        return len(page.images) > 0
    except Exception:  # noqa: BLE001 -- an image pypdf cannot enumerate still counts as no text layer we can read
        return True


def with_image_texts(lines: Sequence[str], images: Sequence[DocxImage], texts: Mapping[int, str]) -> str:
    """The DOCX's lines with each read image's text (``texts``: 1-based image number) after its line."""
    after: dict[int, list[str]] = {}
    for number, image in enumerate(images, start=1):
        read = texts.get(number, "").strip()
        if read:
            after.setdefault(image.line, []).append(read)
    out: list[str] = []
    for index, line in enumerate(lines):
        out.append(line)
        out.extend(after.get(index, ()))
    return "\n".join(out)


_PICTURE_NS = {
    "a": "http://schemas.openxmlformats.org/drawingml/2006/main",
    "r": "http://schemas.openxmlformats.org/officeDocument/2006/relationships",
    "v": "urn:schemas-microsoft-com:vml",
}


def _images_in(element: Any, part: Any, line: int, found: list[DocxImage]) -> None:
    """Append the OCR-readable pictures ``element`` shows (DrawingML ``a:blip``, legacy VML ``v:imagedata``)."""
    from lxml import etree

    for rid in etree.XPath(".//a:blip/@r:embed | .//v:imagedata/@r:id", namespaces=_PICTURE_NS)(element):
        if len(found) >= MAX_IMAGES:
            return
        target = part.related_parts.get(rid)
        content_type = getattr(target, "content_type", "")
        if content_type in OCR_IMAGE_TYPES:
            found.append(DocxImage(line, target.blob, content_type))


def read_docx(data: bytes) -> Extracted:
    import docx
    from docx.table import Table

    try:
        document = docx.Document(io.BytesIO(data))
        lines: list[str] = []
        images: list[DocxImage] = []
        for block in document.iter_inner_content():
            if isinstance(block, Table):
                for row in block.rows:
                    lines.append("\t".join(cell.text for cell in row.cells))
                    _images_in(row._tr, document.part, len(lines) - 1, images)
            else:
                lines.append(block.text)
                _images_in(block._p, document.part, len(lines) - 1, images)
        body = document.element.body
        breaks = len(body.xpath(".//w:br[@w:type='page']"))
        breaks += len(body.xpath(".//w:pPr/w:pageBreakBefore[not(@w:val) or @w:val='1' or @w:val='true' or @w:val='on']"))
        # A section's type says how it starts; absent means a new page. The body's final
        # sectPr describes the last section, which starts where the one before ends.
        breaks += sum(1 for s in document.sections[1:] if s.start_type.name in ("NEW_PAGE", "EVEN_PAGE", "ODD_PAGE"))
    except Exception as exc:  # noqa: BLE001 -- like pypdf: a damaged package raises KeyError, lxml errors, ...
        raise Unreadable(f"{type(exc).__name__}: {exc}") from None
    return Extracted("\n".join(lines), 1 + breaks, "docx", lines=tuple(lines), images=tuple(images))


if __name__ == "__main__":
    main(DocumentEngine(), description=__doc__.splitlines()[0] if __doc__ else "")
