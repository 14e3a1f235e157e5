"""The API's Prometheus metrics: requests, latency, queue depth, workers, jobs by status.

Request metrics are counted in this process by an ASGI middleware (run several API
processes? scrape each). Queue depth, live workers and finished jobs by status are read
from Redis when ``/metrics`` is scraped, so they describe the whole deployment.
"""

from __future__ import annotations

import time
from contextvars import ContextVar

from fastapi import APIRouter, Request, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from inferq import protocol as p

# The model a request was routed to, filled in by JobQueue.submit (a dict: set inside the route,
# read by the middleware once the response is sent).
request_labels: ContextVar[dict[str, str] | None] = ContextVar("request_labels", default=None)


def note_model(model: str) -> None:
    labels = request_labels.get()
    if labels is not None:
        labels["model"] = model


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "inferq_http_requests_total",
            "HTTP requests by route, method, status and model.",
            ["route", "method", "status", "model"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "inferq_http_request_duration_seconds",
            "HTTP request latency (to the end of the response) by route and method.",
            ["route", "method"],
            buckets=(0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 120),
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "inferq_queue_depth",
            "Jobs waiting on a model's queue, by priority.",
            ["model", "priority"],
            registry=self.registry,
        )
        self.workers = Gauge(
            "inferq_live_workers", "Workers serving a model.", ["model"], registry=self.registry
        )
        self.jobs = Gauge(
            "inferq_jobs_finished",
            "Jobs finished by any worker, by endpoint, model and status (a counter kept in Redis).",
            ["endpoint", "model", "status"],
            registry=self.registry,
        )

        self.messages = Gauge(
            "inferq_queue_messages_sent",
            "Celery messages this API process put on a model's queue, and the jobs they "
            "carried (interactive embeddings/rerank jobs submitted together share one).",
            ["model", "what"],
            registry=self.registry,
        )

    async def refresh(self, queue) -> None:
        """Read the deployment-wide numbers from Redis."""
        pipe = queue.redis.pipeline(transaction=False)
        entries = list(queue.catalog)
        for entry in entries:
            for key in p.queue_lists(entry.name):
                pipe.llen(key)
        pipe.hgetall(p.STATS_JOBS_KEY)
        replies = await pipe.execute()
        stats = replies.pop()
        steps = len(p.PRIORITY_STEPS)
        for i, entry in enumerate(entries):
            for priority, depth in zip(
                p.PRIORITY_STEPS, replies[i * steps : (i + 1) * steps], strict=True
            ):
                self.queue_depth.labels(entry.name, str(priority)).set(depth)
        counts = await queue.worker_counts()
        for entry in entries:
            self.workers.labels(entry.name).set(counts.get(entry.name, 0))
        for entry in entries:
            messages, jobs = queue.publisher.sent.get(p.queue_name(entry.name), (0, 0))
            self.messages.labels(entry.name, "messages").set(messages)
            self.messages.labels(entry.name, "jobs").set(jobs)
        for field, value in stats.items():
            endpoint, model, status = field.decode().split("|", 2)
            self.jobs.labels(endpoint, model, status).set(int(value))


def _route_label(scope: Scope) -> str:
    """The matched route's template with its router prefix, e.g. ``/v1/jobs/{job_id}``.

    FastAPI reports the template relative to the included router; the prefix is what comes
    before the template's first (static) segment in the request path.
    """
    template = getattr(scope.get("route"), "path", None)
    if template is None:
        return "unmatched"
    first = template.split("/")[1] if template.count("/") else ""
    at = scope["path"].find("/" + first) if first and not first.startswith("{") else 0
    return scope["path"][: max(at, 0)] + template


class MetricsMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        labels: dict[str, str] = {}
        token = request_labels.set(labels)
        status = 500

        async def send_and_watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_watch)
        finally:
            request_labels.reset(token)
            path = _route_label(scope)
            method = scope["method"]
            self.metrics.requests.labels(path, method, str(status), labels.get("model", "")).inc()
            self.metrics.latency.labels(path, method).observe(time.perf_counter() - started)


router = APIRouter(tags=["health"])


@router.get("/metrics", summary="Prometheus metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    collected: Metrics = request.app.state.metrics
    await collected.refresh(request.app.state.queue)
    return Response(generate_latest(collected.registry), media_type=CONTENT_TYPE_LATEST)
