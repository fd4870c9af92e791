"""The opt-in Prometheus endpoint (`--metrics-address 127.0.0.1:PORT`).

Most metrics are read at scrape time from what `s3fuse status` already shows (the same
numbers, one source): S3 requests and bytes from the store, cache use and block hits from
the reader, the upload queue from its journal, the link state. FUSE operation latencies
and errors are observed as they happen, by a hook in fs/boundary.py that costs nothing
while no endpoint is asked for. The endpoint is plain HTTP for a local scraper: it binds
where it is told (127.0.0.1 by default in the docs), and shows counts, never keys or paths.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from .config import parse_address
from .errors import UsageError
from .fs import boundary

log = logging.getLogger(__name__)

#: FUSE operation latency buckets, seconds: a page-cache hit to a cold S3 round trip.
LATENCY_BUCKETS = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0)


class DaemonCollector:
    """The daemon's state, read when Prometheus scrapes (in the server's thread)."""

    def __init__(self, status: Callable[[], dict[str, Any]], traffic: Callable[[], dict[str, Any]]):
        self._status = status
        self._traffic = traffic

    def collect(self) -> Iterator[Metric]:
        try:
            status, traffic = self._status(), self._traffic()
        except Exception as exc:  # noqa: BLE001 - a scrape never takes the daemon down
            log.warning("metrics: cannot read the daemon's state: %s", exc)
            return
        requests = CounterMetricFamily(
            "s3fuse_s3_requests", "S3 requests by operation and outcome (HTTP status, or "
            "the error when no answer came)", labels=["operation", "status"])
        for (operation, outcome), count in sorted(traffic["requests"].items()):
            requests.add_metric([operation, outcome], count)
        yield requests
        moved = CounterMetricFamily("s3fuse_s3_object_bytes", "Bytes of object data moved",
                                    labels=["direction"])
        moved.add_metric(["in"], traffic["bytes_in"])
        moved.add_metric(["out"], traffic["bytes_out"])
        yield moved
        yield from _cache(status.get("cache", {}))
        yield from _uploads(status.get("uploads", {}))
        link = status.get("link", {})
        yield GaugeMetricFamily("s3fuse_link_online", "1 while S3 answers, 0 while offline",
                                value=1 if link.get("state") == "online" else 0)
        yield GaugeMetricFamily("s3fuse_link_state_seconds", "Seconds in the current link state",
                                value=max(0.0, time.time() - link.get("since", time.time())))


def _cache(cache: dict[str, Any]) -> Iterator[Metric]:
    for name, text, key in (("used", "Bytes of the block cache in use", "used"),
                            ("limit", "The cache's size cap", "limit"),
                            ("pinned", "Bytes of pinned (offline) data", "pinned")):
        yield GaugeMetricFamily(f"s3fuse_cache_{name}_bytes", text, value=cache.get(key, 0))
    blocks = CounterMetricFamily("s3fuse_cache_blocks", "Blocks read, by where they came from",
                                 labels=["result"])
    blocks.add_metric(["hit"], cache.get("hits", 0))
    blocks.add_metric(["miss"], cache.get("misses", 0))
    yield blocks


def _uploads(queue: dict[str, Any]) -> Iterator[Metric]:
    yield GaugeMetricFamily("s3fuse_upload_queue_files", "Changes waiting to reach S3",
                            value=queue.get("files", 0))
    yield GaugeMetricFamily("s3fuse_upload_queue_bytes", "Bytes waiting to reach S3",
                            value=queue.get("bytes", 0))
    yield GaugeMetricFamily("s3fuse_upload_queue_oldest_seconds",
                            "Age of the oldest change waiting (0: none)",
                            value=queue.get("oldest_age") or 0)
    yield GaugeMetricFamily("s3fuse_uploads_in_flight", "Uploads being sent now",
                            value=queue.get("uploading", 0))
    yield GaugeMetricFamily("s3fuse_upload_failures", "Uploads that failed for good (see status)",
                            value=len(queue.get("failures", [])))
    yield GaugeMetricFamily("s3fuse_upload_conflicts", "Conflicts recorded (see status)",
                            value=len(queue.get("conflicts", [])))


class Metrics:
    """The endpoint and the FUSE operation metrics; `close()` stops serving."""

    def __init__(self, address: str, status: Callable[[], dict[str, Any]],
                 traffic: Callable[[], dict[str, Any]]):
        host, port = parse_address(address)
        self.registry = CollectorRegistry()
        self.registry.register(DaemonCollector(status, traffic))  # type: ignore[arg-type]
        self._latency = Histogram("s3fuse_fuse_operation_seconds", "FUSE operations by kind",
                                  ["operation"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self._errors = Counter("s3fuse_fuse_errors", "FUSE operations answered with an error",
                               ["operation", "errno"], registry=self.registry)
        try:
            self._server, _ = start_http_server(port, host, registry=self.registry)
        except OSError as exc:
            raise UsageError(f"cannot serve metrics on {address}: {exc.strerror}") from None
        boundary.observer = self.observe
        log.info("metrics at http://%s:%d/metrics", host, port)

    def observe(self, operation: str, seconds: float, errno: int | None) -> None:
        self._latency.labels(operation).observe(seconds)
        if errno is not None:
            self._errors.labels(operation, str(errno)).inc()

    def close(self) -> None:
        boundary.observer = None
        self._server.shutdown()
        self._server.server_close()
