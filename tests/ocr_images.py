"""Text rendered into images (Pillow's default font) for the OCR tests, and how they compare what comes back."""

from __future__ import annotations

import io
from typing import Any


def render(lines: list[str]) -> Any:
    """A white RGB image with ``lines`` in black, 36 px, one under the other."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=36)
    image = Image.new("RGB", (1000, 80 + 70 * len(lines)), "white")
    draw = ImageDraw.Draw(image)
    for i, line in enumerate(lines):
        draw.text((30, 40 + 70 * i), line, fill="black", font=font)
    return image


def png(lines: list[str]) -> bytes:
    out = io.BytesIO()
    render(lines).save(out, format="PNG")
    return out.getvalue()


def pdf(pages: list[list[str]]) -> bytes:
    """A PDF with one rendered image per page (no text layer: a scan)."""
    images = [render(lines) for lines in pages]
    out = io.BytesIO()
    images[0].save(out, format="PDF", save_all=True, append_images=images[1:], resolution=100.0)
    return out.getvalue()


def words(text: str) -> list[str]:
    """OCR may read ``due:`` as ``due :``; compare words."""
    return text.replace(":", " ").split()
