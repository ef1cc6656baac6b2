"""OpenTelemetry: a tracer provider from the standard OTEL_* variables, and the spans of a batch.

`modalkit.batch` and `modalkit.inference` are recorded by the server process for local containers
(with the container's own timings), so a single exporter sees a request's whole trace.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext
from opentelemetry.util.types import AttributeValue

from modalkit.exceptions import ConfigError

TRACER_NAME = "modalkit"


def configure_tracing(service_name: str) -> None:
    """Install a tracer provider exporting to OTEL_TRACES_EXPORTER (console, otlp or none; default none).

    Spans are made even with `none`, so that every log line and error carries its trace id. A
    provider the host application (or a test) already installed is left alone.
    """
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SimpleSpanProcessor
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

    if isinstance(trace.get_tracer_provider(), TracerProvider):
        return
    names = [n.strip().lower() for n in os.environ.get("OTEL_TRACES_EXPORTER", "none").split(",") if n.strip()]
    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", service_name)})
    exporting = any(name != "none" for name in names)
    # With nothing to export, spans are not recorded (cheap), yet every request still has a trace id.
    provider = TracerProvider(resource=resource, sampler=None if exporting else ALWAYS_OFF)
    for name in names:
        if name == "console":
            provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter(out=sys.stdout)))
        elif name == "otlp":
            provider.add_span_processor(BatchSpanProcessor(_otlp_exporter()))
        elif name != "none":
            raise ConfigError(
                [f"environment variable OTEL_TRACES_EXPORTER: unknown exporter {name!r} (console, otlp, none)"]
            )
    trace.set_tracer_provider(provider)


def _otlp_exporter() -> Any:
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError:
        raise ConfigError(
            ["environment variable OTEL_TRACES_EXPORTER: otlp needs `pip install 'modalkit[otlp]'`"]
        ) from None
    return OTLPSpanExporter()  # endpoint from OTEL_EXPORTER_OTLP_ENDPOINT


def tracer() -> trace.Tracer:
    """Modalkit's tracer, made once per tracer provider (`get_tracer` makes a new one each call)."""
    global _tracer
    provider = trace.get_tracer_provider()
    if _tracer is None or _tracer[0] is not provider:
        _tracer = (provider, provider.get_tracer(TRACER_NAME))
    return _tracer[1]


_tracer: tuple[trace.TracerProvider, trace.Tracer] | None = None


def current_span_context() -> SpanContext | None:
    context = trace.get_current_span().get_span_context()
    return context if context.is_valid else None


def inject_current() -> dict[str, str]:
    """The current trace context as W3C headers, to store with a job."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


def extract(carrier: dict[str, str]) -> otel_context.Context:
    return propagate.extract(carrier)


_PROPAGATED = frozenset({b"traceparent", b"tracestate", b"baggage"})


def caller_context(scope: Mapping[str, Any]) -> otel_context.Context | None:
    """The trace context an HTTP request's headers carry (W3C `traceparent`, `tracestate`, `baggage`); None when
    they carry none, the common case, which then costs one look at each header name."""
    carrier = {name.decode(): value.decode("latin-1") for name, value in scope["headers"] if name in _PROPAGATED}
    return propagate.extract(carrier) if carrier else None


def record_batch(
    model_name: str,
    requests: list[SpanContext | None],
    container_id: str,
    cold_start: bool,
    window_ns: tuple[int, int],
    inference_ns: tuple[int, int],
) -> None:
    """A `modalkit.batch` span (child of its first request, linked to all) and its `modalkit.inference`."""
    valid = [c for c in requests if c is not None]
    parent = trace.set_span_in_context(NonRecordingSpan(valid[0])) if valid else otel_context.Context()
    attributes: dict[str, AttributeValue] = {
        "modalkit.model_name": model_name,
        "modalkit.batch_size": len(requests),
        "modalkit.container_id": container_id,
        "modalkit.cold_start": cold_start,
    }
    batch = tracer().start_span(
        "modalkit.batch", context=parent, links=[Link(c) for c in valid], start_time=window_ns[0], attributes=attributes
    )
    inference = tracer().start_span(
        "modalkit.inference",
        context=trace.set_span_in_context(batch),
        start_time=inference_ns[0],
        attributes=attributes,
    )
    inference.end(end_time=inference_ns[1])
    batch.end(end_time=window_ns[1])
