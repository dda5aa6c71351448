"""Running a generator to its end from tests: the answer text and the closing event."""

from __future__ import annotations

from app.generators.base import Delta, Finished, GenerationRequest, Generator


def generate(generator: Generator, request: GenerationRequest) -> tuple[str, Finished]:
    """The whole answer to ``request``: the deltas' text, and the :class:`Finished` event that ends it."""
    parts: list[str] = []
    for event in generator.stream(request):
        if isinstance(event, Delta):
            parts.append(event.text)
        else:
            return "".join(parts), event
    raise AssertionError(f"generator {generator.name} ended without a Finished event")
