"""vision-ocr on CPU: RapidOCR (PaddleOCR's PP-OCR models on ONNX Runtime) behind ``POST /ocr``.

    POST /ocr   an image (PNG, JPEG, TIFF, BMP, WebP...) or a PDF, either as the raw
                body or as the ``file`` field of a multipart form
             -> {"text", "pages", "page_texts": [...], "model", "backend"}

``text`` is the pages' texts joined by a blank line; each page's text is its
recognised lines, top to bottom. PDF pages are rendered with pypdfium2 at
``RENDER_SCALE`` (about 200 dpi) first. The detection, orientation and
recognition models ship inside the ``rapidocr`` wheel, so this runs offline.
``RMAP2P_OCR_THREADS`` bounds ONNX Runtime's threads (default: its own choice).

On a CUDA GPU vision-ocr is a vision model on vLLM instead
(``services.runners.vllm``, ``RMAP2P_VISION_MODEL``), whose ``POST /ocr`` is
``services.runners.vllm_ocr`` (it shares ``page_images`` with this module).

Run as ``python -m services.runners.ocr --service vision-ocr --port P``.
"""

from __future__ import annotations

import asyncio
import io
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

from aiohttp import web

from services.engine_choice import MODULES, RAPIDOCR, module_present
from services.runners.serve import CannotRun, Engine, Route, json_error, main

MAX_PAGES = 50
RENDER_SCALE = 200 / 72
"""pypdfium2 renders at 72 dpi times the scale."""
MAX_PIXELS = 40_000_000
"""Per image; Pillow's decompression-bomb guard is about 89 M, and OCR time grows with the area."""


@dataclass(slots=True)
class Loaded:
    engine: Any
    model: str
    pdf: bool
    """Whether pypdfium2 is there to render PDFs."""
    lock: threading.Lock = field(default_factory=threading.Lock)


class OcrEngine(Engine[Loaded]):
    backend = RAPIDOCR
    max_body = 32 * 1024 * 1024

    def preflight(self, env: Mapping[str, str]) -> None:
        missing = [m for m in (*MODULES[RAPIDOCR], "PIL", "numpy") if not module_present(m)]
        if missing:
            raise CannotRun(f"Python package(s) {', '.join(missing)} not installed (pip install '.[ml]')")

    def load(self, env: Mapping[str, str]) -> Loaded:
        from rapidocr import RapidOCR

        params: dict[str, Any] = {"Global.log_level": "warning"}
        threads = env.get("RMAP2P_OCR_THREADS", "").strip()
        if threads.isdigit() and int(threads) > 0:
            params["EngineConfig.onnxruntime.intra_op_num_threads"] = int(threads)
        try:
            engine = RapidOCR(params=params)
        except Exception as exc:  # noqa: BLE001 - any failure to build the engine means it cannot run here
            raise CannotRun(f"RapidOCR cannot start: {exc}") from None
        rec = getattr(getattr(engine, "cfg", None), "Rec", None)
        version = getattr(rec, "ocr_version", None)
        model = f"rapidocr-{metadata.version('rapidocr')}/{version}" if version else f"rapidocr-{metadata.version('rapidocr')}"
        return Loaded(engine=engine, model=str(model), pdf=module_present("pypdfium2"))

    def describe(self, loaded: Loaded) -> dict[str, Any]:
        return {"model": loaded.model, "pdf": loaded.pdf}

    def routes(self) -> Sequence[Route[Loaded]]:
        return (Route("POST", "/ocr", ocr),)


async def ocr(loaded: Loaded, request: web.Request) -> web.Response:
    data = await _upload(request)
    if isinstance(data, web.Response):
        return data
    if not data:
        return json_error(400, "empty upload: send an image or a PDF as the body or as the 'file' form field")
    try:
        page_texts = await asyncio.to_thread(read, loaded, data)
    except BadInput as exc:
        return json_error(exc.status, str(exc))
    return web.json_response(
        {"text": "\n\n".join(page_texts), "pages": len(page_texts), "page_texts": page_texts, "model": loaded.model, "backend": RAPIDOCR}
    )


async def _upload(request: web.Request) -> bytes | web.Response:
    if request.content_type == "application/x-www-form-urlencoded":
        return json_error(400, "a form upload must be multipart/form-data with a 'file' field holding the image or PDF")
    if request.content_type.startswith("multipart/"):
        try:
            form = await request.post()
        except ValueError as exc:
            return json_error(400, f"malformed multipart body: {exc}")
        part = form.get("file")
        if part is None or isinstance(part, str):
            return json_error(400, "multipart upload needs a 'file' field holding the image or PDF")
        return bytes(part.file.read())
    return await request.read()


class BadInput(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def read(loaded: Loaded, data: bytes) -> list[str]:
    """The text of each page of ``data`` (a PDF or one image). Blocking."""
    images = page_images(data, loaded.pdf)
    with loaded.lock:  # one page at a time: ONNX Runtime already uses every core for one
        return [_recognise(loaded.engine, image) for image in images]


def page_images(data: bytes, pdf: bool) -> list[Any]:
    """``data`` (a PDF, or one image) as RGB Pillow images, one per page; raises ``BadInput``.

    ``pdf``: whether pypdfium2 is there to render PDFs. Shared with the GPU
    engine (``services.runners.vllm_ocr``).
    """
    if data.startswith(b"%PDF"):
        if not pdf:
            raise BadInput(415, "this node cannot render PDFs (pypdfium2 not installed); send page images")
        return _pdf_pages(data)
    return [_image(data)]


def _image(data: bytes) -> Any:
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(io.BytesIO(data))
        if image.width * image.height > MAX_PIXELS:
            raise BadInput(413, f"image of {image.width}x{image.height} pixels is larger than {MAX_PIXELS}")
        return image.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise BadInput(415, f"not an image or PDF Pillow can read: {exc}") from None


def _pdf_pages(data: bytes) -> list[Any]:
    import pypdfium2 as pdfium

    try:
        pdf = pdfium.PdfDocument(data)
    except pdfium.PdfiumError as exc:
        raise BadInput(415, f"not a PDF pdfium can read: {exc}") from None
    try:
        if len(pdf) > MAX_PAGES:
            raise BadInput(413, f"PDF has {len(pdf)} pages, at most {MAX_PAGES} per request")
        return [pdf[i].render(scale=RENDER_SCALE).to_pil().convert("RGB") for i in range(len(pdf))]
    finally:
        pdf.close()


def _recognise(engine: Any, image: Any) -> str:
    import numpy as np

    result = engine(np.asarray(image))
    lines = getattr(result, "txts", None) or ()
    return "\n".join(str(line) for line in lines)


if __name__ == "__main__":
    main(OcrEngine())
