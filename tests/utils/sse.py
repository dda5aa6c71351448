"""Reading Server-Sent Events bodies in tests."""

from __future__ import annotations


def parse_sse(text: str) -> list[tuple[str | None, str]]:
    """(event, data) pairs of a Server-Sent Events body."""
    frames = []
    for block in text.strip().split("\n\n"):
        event, data = None, []
        for line in block.split("\n"):
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                data.append(line[6:])
        frames.append((event, "\n".join(data)))
    return frames
