"""document-processing's hand-off of scanned PDF pages and DOCX images to ``vision-ocr`` through a node's gateway.

The pages without a text layer are copied (pypdf) into one PDF and posted
as the raw body to ``{gateway}/api/service/vision-ocr/ocr``; vision-ocr
renders and reads each page and answers ``page_texts`` in the order sent.
A PDF rather than page images because the serving engine renders at the
scale its model wants (RapidOCR and the vLLM vision model both take PDFs),
and the document node then needs no renderer of its own.

Images embedded in a DOCX (``read_images``) are already pictures: each goes
as it is, one request per image (vision-ocr reads one image per request),
at most ``max_pages`` of them, all within one ``timeout``.

Every outcome is a value (``OcrOutcome``), never an exception: the caller
answers 200 with the text layer whatever happens here. The configuration
is read once at start (``OcrConfig.from_env``).
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from services.routing import NODE_HEADER

log = logging.getLogger(__name__)

OCR_PATH = "/api/service/vision-ocr/ocr"
VISION_OCR_MAX_PAGES = 50
"""vision-ocr refuses (413) a PDF of more pages in one request (``services.runners.ocr.MAX_PAGES``)."""
DEFAULT_MAX_PAGES = 20
DEFAULT_TIMEOUT = 120.0
"""RapidOCR on two CPU cores reads a page in a few seconds; 20 pages fit with room for the hop."""
CONNECT_TIMEOUT = 5.0


@dataclass(frozen=True, slots=True)
class OcrConfig:
    gateway: str | None
    """Base URL of a node's gateway (``RMAP2P_GATEWAY``), or None: no hand-off."""
    token: str | None = None
    max_pages: int = DEFAULT_MAX_PAGES
    """Scanned pages sent per document (``RMAP2P_OCR_MAX_PAGES``, 1..50); the rest stay empty."""
    timeout: float = DEFAULT_TIMEOUT
    """Seconds for the whole OCR request (``RMAP2P_OCR_TIMEOUT``)."""

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> OcrConfig:
        gateway = env.get("RMAP2P_GATEWAY", "").strip().rstrip("/") or None
        if gateway is not None and "://" not in gateway:
            gateway = "http://" + gateway
        return cls(
            gateway=gateway,
            token=env.get("RMAP2P_TOKEN", "").strip() or None,
            max_pages=_bounded_int(env.get("RMAP2P_OCR_MAX_PAGES"), DEFAULT_MAX_PAGES, 1, VISION_OCR_MAX_PAGES),
            timeout=_positive_float(env.get("RMAP2P_OCR_TIMEOUT"), DEFAULT_TIMEOUT),
        )


@dataclass(frozen=True, slots=True)
class OcrOutcome:
    status: str
    """``vision-ocr``..., ``not available: ...`` or ``failed: ...`` (the answer's ``ocr`` field)."""
    texts: dict[int, str] = field(default_factory=dict)
    """1-based page number -> the text vision-ocr read there."""
    node: str | None = None
    model: str | None = None


def scanned_pdf(data: bytes, pages: Sequence[int]) -> bytes:
    """A PDF holding only ``pages`` (1-based) of ``data``, in that order. Blocking; raises on a PDF pypdf cannot copy."""
    import pypdf

    reader = pypdf.PdfReader(io.BytesIO(data))
    writer = pypdf.PdfWriter()
    for number in pages:
        writer.add_page(reader.pages[number - 1])
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


async def read_scanned(session: aiohttp.ClientSession, config: OcrConfig, data: bytes, scanned: Sequence[int]) -> OcrOutcome:
    """Send the first ``config.max_pages`` of the (non-empty) ``scanned`` pages of the PDF ``data`` to vision-ocr."""
    if config.gateway is None:
        return OcrOutcome("not available: RMAP2P_GATEWAY (the gateway to reach vision-ocr through) is not set")
    pages = list(scanned[: config.max_pages])
    try:
        body = await asyncio.to_thread(scanned_pdf, data, pages)
    except Exception as exc:  # noqa: BLE001 -- pypdf raises many types on odd files; the text layer still stands
        return OcrOutcome(f"failed: cannot copy the scanned pages into a PDF for OCR ({type(exc).__name__}: {exc})")
    read = await _post(session, config, body, "application/pdf", len(pages), config.timeout, f"{len(pages)} pages")
    if isinstance(read, OcrOutcome):
        return read
    texts, node, model = read
    log.info("vision-ocr on node %s read %d scanned page(s)", node, len(pages))
    status_text = "vision-ocr"
    if len(pages) < len(scanned):
        status_text += f": {len(pages)} of {len(scanned)} scanned pages read (RMAP2P_OCR_MAX_PAGES={config.max_pages})"
    return OcrOutcome(status_text, dict(zip(pages, texts, strict=True)), node, model)


async def read_images(session: aiohttp.ClientSession, config: OcrConfig, images: Sequence[tuple[bytes, str]]) -> OcrOutcome:
    """Send the first ``config.max_pages`` of the (non-empty) ``images`` ((bytes, content type)) to vision-ocr.

    ``texts`` of the outcome is keyed by the 1-based image number. One request
    per image, in order, all within ``config.timeout``; the first failure ends
    the hand-off, and what was read before it is kept.
    """
    if config.gateway is None:
        return OcrOutcome("not available: RMAP2P_GATEWAY (the gateway to reach vision-ocr through) is not set")
    sent = list(images[: config.max_pages])
    loop = asyncio.get_running_loop()
    deadline = loop.time() + config.timeout
    texts: dict[int, str] = {}
    node: str | None = None
    model: str | None = None
    for number, (data, content_type) in enumerate(sent, start=1):
        left = deadline - loop.time()
        what = f"image {number} of {len(sent)}"
        read = await _post(session, config, data, content_type, 1, left, what) if left > 0 else OcrOutcome(
            f"failed: vision-ocr did not answer within {config.timeout:g} s ({what})"
        )
        if isinstance(read, OcrOutcome):
            return OcrOutcome(read.status, texts, read.node or node, model)
        page_texts, node, model = read
        texts[number] = page_texts[0]
    log.info("vision-ocr on node %s read %d image(s)", node, len(sent))
    status_text = "vision-ocr"
    if len(sent) < len(images):
        status_text += f": {len(sent)} of {len(images)} images read (RMAP2P_OCR_MAX_PAGES={config.max_pages})"
    return OcrOutcome(status_text, texts, node, model)


async def _post(
    session: aiohttp.ClientSession, config: OcrConfig, body: bytes, content_type: str, pages: int, timeout: float, what: str,
) -> OcrOutcome | tuple[list[str], str | None, str | None]:
    """One upload to vision-ocr: its ``pages`` page texts, serving node and model, or the outcome that says why not."""
    assert config.gateway is not None
    url = config.gateway + OCR_PATH
    headers = {"Content-Type": content_type}
    if config.token:
        headers["Authorization"] = f"Bearer {config.token}"
    try:
        async with session.post(url, data=body, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout, sock_connect=CONNECT_TIMEOUT)) as resp:
            raw = await resp.read()
            status = resp.status
            node = resp.headers.get(NODE_HEADER)
    except TimeoutError:  # before OSError, its base class
        return OcrOutcome(f"failed: vision-ocr did not answer within {config.timeout:g} s ({what})")
    except (aiohttp.ClientError, OSError) as exc:
        return OcrOutcome(f"not available: the gateway {config.gateway} did not answer ({type(exc).__name__}: {exc})")
    answer = _json_or_text(raw)
    if status == 503:
        why = answer.get("error") if isinstance(answer, dict) else answer
        return OcrOutcome(f"not available: the gateway answered 503: {why}")
    where = f" on node {node}" if node else ""
    if status != 200:
        why = answer.get("error") if isinstance(answer, dict) else answer
        return OcrOutcome(f"failed: vision-ocr{where} answered {status}: {why}", node=node)
    texts = answer.get("page_texts") if isinstance(answer, dict) else None
    if not isinstance(texts, list) or len(texts) != pages or not all(isinstance(t, str) for t in texts):
        return OcrOutcome(f"failed: vision-ocr{where} answered 200 without one page text per page sent ({pages})", node=node)
    model = answer.get("model")
    return texts, node, model if isinstance(model, str) else None


def _json_or_text(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw[:500].decode(errors="replace")


def _bounded_int(value: str | None, default: int, low: int, high: int) -> int:
    try:
        number = int((value or "").strip())
    except ValueError:
        return default
    return min(max(number, low), high)


def _positive_float(value: str | None, default: float) -> float:
    try:
        number = float((value or "").strip())
    except ValueError:
        return default
    return number if number > 0 else default
