"""Documents made by the tests: a PDF written by hand (text pages and image-only "scanned" pages), a DOCX,
and the multipart form a client uploads one in."""

from __future__ import annotations

import io
import uuid
import zlib
from typing import Any


def make_pdf(pages: list[Any]) -> bytes:
    """A PDF with one page per item: a line of Helvetica text (a str), or an image and no text.

    The image is a gray ramp (None) or a Pillow image (a scan: e.g.
    ``ocr_images.render`` of some lines), placed across the page's width.
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
        elif not isinstance(text, str):
            gray = text.convert("L")
            data = zlib.compress(gray.tobytes())
            scan = add(b"<< /Type /XObject /Subtype /Image /Width %d /Height %d /ColorSpace /DeviceGray /BitsPerComponent 8 /Filter /FlateDecode /Length %d >>\nstream\n"
                       % (gray.width, gray.height, len(data)) + data + b"\nendstream")
            width, height = 540, 540 * gray.height // gray.width
            content = b"q %d 0 0 %d 36 %d cm /Im1 Do Q" % (width, height, 756 - height)
            resources = b"<< /XObject << /Im1 %d 0 R >> >>" % scan
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


def make_docx_with_images(before: str, scan: Any, after: str, cell: str, cell_scan: Any) -> bytes:
    """A DOCX: a paragraph, a picture (``scan``: a Pillow image, e.g. ``ocr_images.render``), a
    paragraph, then a one-row table whose second cell holds another picture next to ``cell``."""
    import docx
    from docx.shared import Inches

    def png(image: Any) -> io.BytesIO:
        out = io.BytesIO()
        image.save(out, format="PNG")
        out.seek(0)
        return out

    document = docx.Document()
    document.add_paragraph(before)
    document.add_picture(png(scan), width=Inches(6))
    document.add_paragraph(after)
    table = document.add_table(rows=1, cols=2)
    table.cell(0, 0).text = cell
    table.cell(0, 1).paragraphs[0].add_run().add_picture(png(cell_scan), width=Inches(3))
    buf = io.BytesIO()
    document.save(buf)
    return buf.getvalue()


def multipart(name: str, data: bytes, content_type: str) -> tuple[bytes, str]:
    """``data`` as the one file (field ``file``) of a multipart/form-data body; (body, Content-Type)."""
    boundary = uuid.uuid4().hex
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
        f"Content-Type: {content_type}\r\n\r\n"
    ).encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"
