"""Hand-built PDFs (pypdf cannot lay out text): a one-page document, optionally lying or compressed."""

from __future__ import annotations

import io
import zlib


def text_pdf(text: str, *, claimed_pages: int = 1, inflate_to: int = 0) -> bytes:
    """A one-page PDF showing ``text``.

    ``claimed_pages``: the page count its page tree claims (a lie above 1). ``inflate_to``: pad the
    text to that many bytes inside a FlateDecode stream (a decompression bomb: tiny on disk).
    """
    shown = text.encode() + b" " * max(inflate_to - len(text), 0)
    stream = b"BT /F1 12 Tf 72 720 Td (" + shown + b") Tj ET"
    header = b"<< /Length %d >>"
    if inflate_to:
        stream, header = zlib.compress(stream, 9), b"<< /Length %d /Filter /FlateDecode >>"
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count %d >>" % claimed_pages,
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        header % len(stream) + b"\nstream\n" + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(out.tell())
        out.write(f"{number} 0 obj\n".encode() + body + b"\nendobj\n")
    xref = out.tell()
    out.write(f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode())
    for offset in offsets:
        out.write(f"{offset:010d} 00000 n \n".encode())
    out.write(f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode())
    return out.getvalue()
