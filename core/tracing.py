"""OpenTelemetry traces: one span per request and a child span per stage, never any text.

On when the standard variables name an OTLP endpoint (``OTEL_EXPORTER_OTLP_ENDPOINT`` or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``; ``OTEL_SDK_DISABLED=true`` turns it off again); the SDK
reads the rest itself (headers, timeouts, ``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``,
the batch processor's limits). Off, nothing of the SDK is built: :func:`stage` costs one context
variable read and returns a shared no-op context manager.

Stage spans are made where the pipeline already times its stages, so a span and the ledger's
``latency_ms`` measure the same thing. Attributes are versions, counts, tokens and cost, with
the OpenTelemetry GenAI names where one fits (``gen_ai.usage.input_tokens``...).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.propagate import extract
from opentelemetry.trace import Span, Tracer
from opentelemetry.util.types import AttributeValue

TRACER_NAME = "ragops"
ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
# The tracer of the request being served; unset when tracing is off or outside a request.
_current: ContextVar[Tracer | None] = ContextVar("ragops_tracer", default=None)
_NOTHING: contextlib.nullcontext[None] = contextlib.nullcontext()


def tracing_requested(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the standard OpenTelemetry variables ask for trace export."""
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if env.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none":
        return False
    return any(env.get(name, "").strip() for name in ENDPOINT_VARIABLES)


class Tracing:
    """The process's tracer provider (None when off) and the tracer requests use."""

    def __init__(self, provider: Any | None = None) -> None:
        self.provider = provider
        self.tracer: Tracer | None = provider.get_tracer(TRACER_NAME) if provider is not None else None

    @property
    def enabled(self) -> bool:
        """Whether spans are recorded and exported."""
        return self.tracer is not None

    @classmethod
    def from_environment(cls, service_name: str = "ragops") -> Tracing:
        """OTLP/HTTP export in batches when the standard variables ask for it; else off (nothing built)."""
        if not tracing_requested():
            return cls()
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        return cls.with_processor(BatchSpanProcessor(OTLPSpanExporter()), service_name)

    @classmethod
    def with_processor(cls, processor: Any, service_name: str = "ragops") -> Tracing:
        """A provider exporting through ``processor`` (``OTEL_SERVICE_NAME`` still wins over ``service_name``)."""
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider

        provider = TracerProvider(resource=Resource.create({SERVICE_NAME: service_name}))
        provider.add_span_processor(processor)
        return cls(provider)

    def shutdown(self) -> None:
        """Export what is buffered and stop (at the end of the app's lifespan)."""
        if self.provider is not None:
            self.provider.shutdown()

    def record_in_trace(
        self, name: str, trace_id: str, span_id: str, attributes: Mapping[str, AttributeValue] | None = None
    ) -> str | None:
        """Record an event that happened later (feedback on an answer) as a child span of a stored request span.

        ``trace_id``/``span_id``: the ledger row's. Returns the new span's id; None when tracing is off
        or the ids are not W3C hex ids.
        """
        if self.tracer is None:
            return None
        try:
            parent = trace.SpanContext(int(trace_id, 16), int(span_id, 16), is_remote=True,
                                       trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED))  # fmt: skip
        except (TypeError, ValueError):
            return None
        if not parent.is_valid:
            return None
        context = trace.set_span_in_context(trace.NonRecordingSpan(parent))
        span = self.tracer.start_span(name, context=context, attributes=attributes)
        span.end()
        return span_id_of(span)

    @contextlib.contextmanager
    def request(self, name: str, headers: Mapping[str, str]) -> Iterator[Span | None]:
        """The request's root span, current while it runs (continuing a caller's W3C ``traceparent``).

        Yields None when tracing is off.
        """
        if self.tracer is None:
            yield None
            return
        parent = extract(headers)
        span = self.tracer.start_span(name, context=parent, kind=trace.SpanKind.SERVER)
        token = otel_context.attach(trace.set_span_in_context(span, parent))
        tracer_token = _current.set(self.tracer)
        try:
            yield span
        finally:
            _current.reset(tracer_token)
            otel_context.detach(token)
            span.end()


def trace_id_of(span: Span) -> str:
    """The W3C trace id (32 hex digits) a backend shows and finds the trace by."""
    return format(span.get_span_context().trace_id, "032x")


def span_id_of(span: Span) -> str:
    """The span's id (16 hex digits)."""
    return format(span.get_span_context().span_id, "016x")


def stage(name: str, attributes: Mapping[str, AttributeValue] | None = None) -> contextlib.AbstractContextManager[Any]:
    """A child span of the current request, current while the stage runs; a shared no-op when not traced."""
    tracer = _current.get()
    if tracer is None:
        return _NOTHING
    return _stage(tracer, name, attributes)


@contextlib.contextmanager
def _stage(tracer: Tracer, name: str, attributes: Mapping[str, AttributeValue] | None) -> Iterator[Span]:
    """A current span that records a failure by its type only: an exception's message may quote the caller."""
    with tracer.start_as_current_span(
        name, attributes=attributes, record_exception=False, set_status_on_exception=False
    ) as span:
        try:
            yield span
        except BaseException as exc:
            failed(span, exc)
            raise


def failed(span: Span, exc: BaseException) -> None:
    """Mark ``span`` failed with the exception's type (``error.type``), never its message."""
    span.set_attribute("error.type", type(exc).__name__)
    span.set_status(trace.StatusCode.ERROR)


def start_stage(name: str, attributes: Mapping[str, AttributeValue] | None = None) -> Span | None:
    """A child span that is not made current (for a stage inside a generator, ended by its caller); None when off."""
    tracer = _current.get()
    if tracer is None:
        return None
    return tracer.start_span(name, attributes=attributes)


@contextlib.contextmanager
def stage_under(parent: Span, name: str) -> Iterator[Span]:
    """A child span of ``parent`` (a stage inside a stage that is not current), ended on exit."""
    tracer = _current.get()
    span = (tracer or trace.NoOpTracer()).start_span(name, context=trace.set_span_in_context(parent))
    try:
        yield span
    finally:
        span.end()


def annotate(attributes: Mapping[str, AttributeValue | None]) -> None:
    """Set attributes (None values skipped) on the current span, if the request is traced."""
    if _current.get() is None:
        return
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attributes({k: v for k, v in attributes.items() if v is not None})


NO_TRACING = Tracing()  # what an app built without tracing (or a detached meter) uses
