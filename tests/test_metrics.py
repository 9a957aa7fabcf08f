"""Operators can see it: `consume --metrics-port` and `serve`'s `/metrics` in Prometheus' format."""

from __future__ import annotations

import signal
import urllib.request
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from pooling_ledger.embedded import free_port
from projections.api import create_app
from projections.projector import Projector
from projections.roles import ensure_reader_role, reader_url
from tests.pipeline_support import contribution, publish, run_pipeline
from tests.test_faults import (
    READY_TIMEOUT_S,
    STOP_TIMEOUT_S,
    command,
    data_dir,  # noqa: F401 - the fixture
    topics_env,
    wait_for,
)

pytestmark = pytest.mark.integration

CITY = "340100"
TOKEN = "metrics-test-token"


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus text page, by name and sorted labels."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            return samples(response.read().decode())
    except OSError:
        return {}


def test_consume_metrics_count_fates_by_reason_batches_lag_and_backlog(
    data_dir: Path, kafka_bootstrap: str, topics: dict[str, str]  # noqa: F811 - the fixture
) -> None:
    port = free_port()
    consume, log_path = command(
        data_dir, "consume", "--metrics-port", str(port), env=topics_env(kafka_bootstrap, topics)
    )
    try:
        publish(kafka_bootstrap, topics["events"], [contribution(CITY, "resident", 100) for _ in range(25)])
        publish(kafka_bootstrap, topics["events"], [(CITY.encode(), b"not json")] * 5)
        accepted = ("pooling_events_total", (("reason", ""), ("status", "accepted")))
        invalid = ("pooling_events_total", (("reason", "invalid_json"), ("status", "rejected")))

        def counted() -> bool:
            figures = scrape(port)
            return figures.get(accepted) == 25 and figures.get(invalid) == 5

        wait_for(counted, READY_TIMEOUT_S, consume, log_path)
        figures = scrape(port)
        assert figures[("pooling_batch_seconds_count", ())] >= 1
        lags = {k: v for k, v in figures.items() if k[0] == "pooling_consumer_lag_messages"}
        assert {dict(labels)["partition"] for _, labels in lags} == {"0", "1", "2", "3"}
        assert ("pooling_relay_backlog_notifications", ()) in figures
        assert figures[("pooling_unprocessable_total", ())] == 0
    finally:
        consume.send_signal(signal.SIGTERM)
        consume.wait(STOP_TIMEOUT_S)
    assert consume.returncode == 0, log_path.read_text()[-3000:]


def test_serve_metrics_report_projection_lag_and_rejections_by_reason(
    database_url: str, kafka_bootstrap: str, topics: dict[str, str]
) -> None:
    publish(kafka_bootstrap, topics["events"], [contribution(CITY, "resident", 100) for _ in range(3)])
    publish(kafka_bootstrap, topics["events"], [(CITY.encode(), b"{")] * 2)
    ledger, _ = run_pipeline(database_url, kafka_bootstrap, topics)
    with Projector(ledger, database_url) as projector:
        projector.run_until_caught_up()
    ledger.close()
    ensure_reader_role(database_url)
    app = create_app(reader_url(database_url), TOKEN)
    with TestClient(app) as client:
        response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    figures = samples(response.text)
    assert figures[("pooling_projection_lag_notifications", ())] == 0
    assert figures[("pooling_rejected_events", (("reason", "invalid_json"),))] == 2
    assert figures[("pooling_unprocessable_events", ())] == 0
