"""A real Prometheus server (Debian's) on loopback for tests, read over its HTTP API."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml
from daemon_helpers import free_port
from waiting import wait_until

TARGET_LABELS = ("__name__", "job", "instance")  # added by Prometheus, not the daemon
Labels = frozenset[tuple[str, str]]


def scrape_job(name: str, targets: Sequence[str], **settings: Any) -> dict[str, Any]:
    """One scrape_configs entry: ``targets`` are HOST:PORT; settings as Prometheus has them."""
    return {"job_name": name, "static_configs": [{"targets": list(targets)}], **settings}


class PrometheusError(AssertionError):
    """Prometheus answered a query with an error (a query that does not parse, say)."""


class Prometheus:
    """A Prometheus server on loopback scraping and evaluating every ``interval``."""

    def __init__(
        self,
        tmp: Path,
        jobs: Sequence[dict[str, Any]],
        *,
        rule_files: Sequence[Path] = (),
        interval: str = "1s",
        extra_args: Sequence[str] = (),
    ) -> None:
        tmp.mkdir(parents=True, exist_ok=True)
        config = tmp / "prometheus.yml"
        config.write_text(
            yaml.safe_dump(
                {
                    "global": {
                        "scrape_interval": interval,
                        "scrape_timeout": interval,
                        "evaluation_interval": interval,
                    },
                    "rule_files": [str(path) for path in rule_files],
                    "scrape_configs": list(jobs),
                }
            )
        )
        self.url = f"http://127.0.0.1:{free_port()}"
        self.log_path = tmp / "prometheus.log"
        self.log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [
                "prometheus",
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp / 'data'}",
                f"--web.listen-address={self.url.removeprefix('http://')}",
                "--log.level=warn",
                *extra_args,
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def api(self, path: str, **params: str) -> Any:
        """GET /api/v1/PATH; the ``data`` of a successful answer, PrometheusError otherwise."""
        url = f"{self.url}/api/v1/{path}?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                body: dict[str, Any] = json.load(response)
        except urllib.error.HTTPError as exc:  # 400 and 422 carry the error in JSON
            body = json.load(exc)
            exc.close()
        if body.get("status") != "success":
            raise PrometheusError(f"{params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query_result(self, promql: str) -> dict[str, Any]:
        """The raw result of an instant query: {"resultType": ..., "result": ...}."""
        result: dict[str, Any] = self.api("query", query=promql)
        return result

    def query(
        self, promql: str, *, target_labels: bool = False
    ) -> dict[Labels, tuple[float, float]]:
        """Instant vector: labels (without name, job and instance unless asked) -> (time, value)."""
        data = self.query_result(promql)
        if data["resultType"] == "scalar":
            return {frozenset(): (float(data["result"][0]), float(data["result"][1]))}
        return {
            frozenset(
                (k, v) for k, v in r["metric"].items() if target_labels or k not in TARGET_LABELS
            ): (float(r["value"][0]), float(r["value"][1]))
            for r in data["result"]
        }

    def wait_for(
        self,
        promql: str,
        done: Callable[[dict[Labels, tuple[float, float]]], bool] = bool,
        timeout: float = 60.0,
        *,
        target_labels: bool = False,
    ) -> dict[Labels, tuple[float, float]]:
        """The query's result once ``done`` says so (by default: once it is not empty)."""
        last: dict[Labels, tuple[float, float]] = {}

        def answered() -> tuple[dict[Labels, tuple[float, float]]] | None:
            nonlocal last
            if self.proc.poll() is not None:
                raise AssertionError(f"prometheus exited: {self.log_path.read_text()}")
            try:
                last = self.query(promql, target_labels=target_labels)
            except (urllib.error.URLError, ConnectionError):
                return None  # not listening yet
            return (last,) if done(last) else None

        (result,) = wait_until(
            answered, timeout=timeout, interval=0.2, what=lambda: f"{promql}; last result {last}"
        )
        return result

    def targets(self) -> list[dict[str, Any]]:
        """The active targets, with their health, last error and scrape duration."""
        data: dict[str, Any] = self.api("targets", state="active")
        return list(data["activeTargets"])

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


RULES = Path(__file__).resolve().parents[1] / "prometheus" / "rules.yml"
# Hours of the rules become seconds: rules.yml's windows over 180 (30 minutes: 10 s).
FAST = 180.0


def _scale_rules() -> Any:
    spec = importlib.util.spec_from_file_location("scale_rules", RULES.with_name("scale_rules.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fast_rules(directory: Path, factor: float = FAST) -> Path:
    """prometheus/rules.yml with time compressed ``factor`` times (prometheus/scale_rules.py)."""
    path = directory / "rules.yml"
    rules = _scale_rules().scale_rules(yaml.safe_load(RULES.read_text()), factor)
    path.write_text(yaml.safe_dump(rules))
    return path


def fast_expr(expr: str, factor: float = FAST, floor: float = 4.0) -> str:
    """``expr`` with its ranges, steps and offsets compressed like the rules'. No range under
    ``floor`` seconds: a rate needs two of the one-second scrapes in its window, also on a
    loaded machine whose scrapes come late."""
    return str(_scale_rules().scale_expr(expr, factor, floor))
