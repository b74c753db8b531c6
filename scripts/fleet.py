#!/usr/bin/env python3
"""A fleet on one machine: N `pcpu-bpf serve` daemons under one real Prometheus.

    .venv/bin/python scripts/fleet.py            # 50 simulated hosts (+ the live one as root)
    .venv/bin/python scripts/fleet.py -n 10 --no-live --json /tmp/fleet.json

Each daemon is a simulated host (scenarios and seeds differ; scripts/fleet_host.py) on
its own loopback port; as root, one more serves the live kernel. One Prometheus
(Debian's) scrapes them all with prometheus/rules.yml loaded, its time compressed
(prometheus/scale_rules.py) so that an alert needing hours of a leak fires within
minutes. The script checks the cross-host queries (top call sites of the fleet, hosts
whose Percpu grows), that the leak alert fires on every leaking host and on no steady
one, and reports what the fleet costs Prometheus: series per daemon, scrape durations,
samples per second, memory. docs/fleet.md works out 10,000 hosts from these figures.
Exit 0 when every check passed. Everything listens on 127.0.0.1 and stops when the
script ends.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
PCPU_BPF = str(Path(sys.executable).with_name("pcpu-bpf"))
JOB = "pcpu-bpf"

# The mix of simulated hosts, in proportion: mostly calm hosts, a few with churn, a few
# that leak (leak: a driver leaking once a second; memcg-churn: zombie memory cgroups),
# a few whose atomic allocations fail. atomic-pressure and chunk-churn simulate the most
# work per second, so they are rarer.
MIX = (
    ("steady", 6),
    ("netns-churn", 5),
    ("bpf-maps", 5),
    ("memcg-churn", 1),
    ("leak", 1),
    ("chunk-churn", 1),
    ("atomic-pressure", 1),
    # Fragmenting churn: its live bytes level off (at most 600 long-lived processes).
    ("fragmentation", 1),
)
GROWING = {"leak", "memcg-churn"}  # scenarios whose live bytes rise for good
# Simulated operations a second: the simulator's default for the growing hosts (the leak
# alert's threshold is in bytes a second), a tenth of it for the others
# (scripts/fleet_host.py says why).
FULL_PACE, CALM_PACE = 2000.0, 200.0
# The live daemon pins its set here, never in the service's /sys/fs/bpf/pcpu-bpf, and the
# set is removed at the end (pinned programs would stay attached).
LIVE_PIN_DIR = Path(f"/sys/fs/bpf/pcpu-bpf-fleet-{os.getpid()}")
LEAK_ALERT = "PcpuCallSiteGrowing"


def scenarios(count: int) -> list[str]:
    """``count`` scenario names in MIX's proportions, every scenario at least once."""
    weights = [w for _, w in MIX]
    names = [name for name, _ in MIX]
    picked = list(names[:count])
    while len(picked) < count:
        # The scenario furthest below its share comes next.
        share = {n: picked.count(n) / w for n, w in zip(names, weights, strict=True)}
        picked.append(min(names, key=lambda n: share[n]))
    return picked


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait(what: str, check: Callable[[], Any], timeout: float, interval: float = 0.5) -> Any:
    """``check()``'s first true value, or SystemExit naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise SystemExit(f"fleet: gave up after {timeout:g} s waiting for {what}")
        time.sleep(interval)


@dataclass
class Host:
    """One daemon."""

    scenario: str
    seed: int
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, log: Path, calm_pace: float) -> None:
        if self.scenario == "live":
            command = [PCPU_BPF, "serve", "--listen", self.target, "--backend", "bpf"]
            command += ["--pin-dir", str(LIVE_PIN_DIR)]
        else:
            pace = FULL_PACE if self.scenario in GROWING else calm_pace
            command = [
                sys.executable,
                str(ROOT / "scripts" / "fleet_host.py"),
                self.target,
                self.scenario,
                str(self.seed),
                f"{pace:g}",
            ]
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                command,
                stdout=subprocess.DEVNULL,
                stderr=out,
                start_new_session=True,  # our Ctrl-C is handled once, by us
            )

    def answers(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise SystemExit(f"fleet: daemon {self.target} ({self.scenario}) exited")
        try:
            with urllib.request.urlopen(f"http://{self.target}/", timeout=5):
                return True
        except (urllib.error.URLError, ConnectionError):
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)


class Prometheus:
    """Debian's Prometheus on loopback, scraping the fleet."""

    def __init__(self, workdir: Path, hosts: list[Host], interval: float, factor: float):
        rules = workdir / "rules.yml"
        document = yaml.safe_load((ROOT / "prometheus" / "rules.yml").read_text())
        # No window shorter than four scrapes: a rate needs a few samples in it.
        rules.write_text(yaml.safe_dump(_scale_rules()(document, factor, 4 * interval)))
        by_scenario: dict[str, list[str]] = {}
        for host in hosts:
            by_scenario.setdefault(host.scenario, []).append(host.target)
        self.port = free_port()
        config = {
            "global": {
                "scrape_interval": f"{interval:g}s",
                "scrape_timeout": f"{interval:g}s",
                "evaluation_interval": f"{interval:g}s",
            },
            "rule_files": [str(rules)],
            "scrape_configs": [
                {
                    "job_name": JOB,
                    "static_configs": [
                        {"targets": targets, "labels": {"scenario": scenario}}
                        for scenario, targets in sorted(by_scenario.items())
                    ],
                },
                {
                    "job_name": "prometheus",
                    "static_configs": [{"targets": [f"127.0.0.1:{self.port}"]}],
                },
            ],
        }
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = (workdir / "prometheus.log").open("wb")
        self.proc = subprocess.Popen(
            [
                "prometheus",
                f"--config.file={workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def query(self, promql: str) -> list[dict[str, Any]]:
        """An instant query's vector: [{"metric": {...}, "value": [t, "v"]}, ...]."""
        if self.proc.poll() is not None:
            raise SystemExit("fleet: prometheus exited (see its log)")
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        try:
            with urllib.request.urlopen(url, timeout=30) as response:
                body = json.load(response)
        except urllib.error.HTTPError as exc:
            body = json.load(exc)
        except (urllib.error.URLError, ConnectionError):
            return []
        if body["status"] != "success":
            raise SystemExit(f"fleet: query {promql!r} failed: {body.get('error')}")
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def values(self, promql: str, *labels: str) -> dict[tuple[str, ...], float]:
        return {
            tuple(r["metric"].get(label, "") for label in labels): float(r["value"][1])
            for r in self.query(promql)
        }

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()


def _scale_rules() -> Callable[..., dict[str, Any]]:
    """prometheus/scale_rules.py's scale_rules (a script beside the rules, not a package)."""
    spec = importlib.util.spec_from_file_location(
        "scale_rules", ROOT / "prometheus" / "scale_rules.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    scale: Callable[..., dict[str, Any]] = module.scale_rules
    return scale


def live_backend_usable() -> str | None:
    """Why the live daemon cannot join (None when it can)."""
    if os.geteuid() != 0:
        return "not root"
    check = subprocess.run([PCPU_BPF, "doctor"], capture_output=True, text=True, timeout=120)
    return None if check.returncode == 0 else "pcpu-bpf doctor reports a problem"


class Checks:
    """Named pass/fail results, printed as they come."""

    def __init__(self) -> None:
        self.results: dict[str, bool] = {}

    def record(self, name: str, ok: bool, detail: str) -> None:
        self.results[name] = ok
        print(f"  [{'ok' if ok else 'FAIL'}] {name}: {detail}", flush=True)


def run(args: argparse.Namespace) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="pcpu-fleet-"))
    names = scenarios(args.count)
    hosts = [Host(name, seed) for seed, name in enumerate(names)]
    live_reason = "--no-live" if args.no_live else live_backend_usable()
    if live_reason is None:
        hosts.append(Host("live", 0))
    print(
        f"fleet: {args.count} simulated daemons "
        f"({', '.join(f'{n} {names.count(n)}' for n, _ in MIX)})"
        + (", plus the live kernel" if live_reason is None else f"; no live one ({live_reason})"),
        flush=True,
    )
    prometheus: Prometheus | None = None
    checks = Checks()
    report: dict[str, Any] = {
        "daemons": len(hosts),
        "scrape_interval_s": args.interval,
        "load_average_at_start": round(os.getloadavg()[0], 1),
        "cpus": os.cpu_count(),
    }
    started = time.monotonic()
    try:
        for host in hosts:
            host.start(workdir / "daemons.log", args.calm_pace)
        wait("every daemon to answer", lambda: all(h.answers() for h in hosts), 180)
        print(f"fleet: {len(hosts)} daemons answer ({time.monotonic() - started:.0f} s)")
        prometheus = Prometheus(workdir, hosts, args.interval, args.factor)
        up = f'count(max_over_time(up{{job="{JOB}"}}[10m]) == 1) == {len(hosts)}'
        wait("Prometheus to scrape every daemon once", lambda: prometheus.query(up), 300)
        print(f"fleet: Prometheus scrapes all {len(hosts)} ({time.monotonic() - started:.0f} s)")

        # Cross-host queries.
        top = wait(
            "the fleet's top call sites",
            lambda: prometheus.query("topk(10, sum by (call_site) (pcpu_live_bytes))"),
            60,
        )
        sites = [r["metric"]["call_site"] for r in top]
        checks.record("top call sites across the fleet", len(sites) >= 5, ", ".join(sites))
        growing_hosts = f"sort_desc(deriv(pcpu_meminfo_bytes{{job='{JOB}'}}[2m]) > 0)"
        seen: set[str] = set()

        def memcg_rises() -> bool:
            seen.update(r["metric"]["scenario"] for r in prometheus.query(growing_hosts))
            return "memcg-churn" in seen

        wait("the memcg-churn hosts' Percpu to grow", memcg_rises, 300, interval=2)
        rising = seen
        checks.record(
            "hosts whose Percpu grows",
            "memcg-churn" in rising,
            f"scenarios of the hosts whose Percpu grows: {', '.join(sorted(rising))}",
        )

        # The leak alert: fires on every leaking host, never on a calm one. Recording
        # rules keep instance, not the scenario label: hosts are told apart by instance.
        scenario_of = {h.target: h.scenario for h in hosts}
        leakers = {h.target for h in hosts if h.scenario == "leak"}
        leak_firing = (
            f'ALERTS{{alertname="{LEAK_ALERT}", alertstate="firing", '
            'call_site="leaky_driver_open"}'
        )
        t0 = time.monotonic()
        wait(
            f"{LEAK_ALERT} on all {len(leakers)} leaking hosts",
            lambda: leakers <= {i for (i,) in prometheus.values(leak_firing, "instance")},
            args.alert_timeout,
            interval=2,
        )
        report["leak_alert_fired_after_s"] = round(time.monotonic() - started)
        print(f"fleet: {LEAK_ALERT} fires on every leak host ({time.monotonic() - t0:.0f} s)")
        # Hold a while longer so a calm host that would fire has the time to.
        time.sleep(args.hold)
        window = f"{int(time.monotonic() - started) + 60}s"

        def fired(alert: str) -> dict[str, set[str]]:
            """scenario -> the label values (call_site or atomic) it fired for, this run."""
            ever = prometheus.values(
                f'max_over_time(ALERTS{{alertname="{alert}", alertstate="firing"}}[{window}])',
                "instance",
                "call_site",
            )
            out: dict[str, set[str]] = {}
            for instance, site in ever:
                out.setdefault(scenario_of.get(instance, "?"), set()).add(site)
            return out

        growth = fired(LEAK_ALERT)
        wrong = sorted(set(growth) - GROWING - {"live"})
        checks.record(
            f"{LEAK_ALERT} fires on growing hosts only",
            not wrong,
            "; ".join(f"{s}: {', '.join(sorted(v))}" for s, v in sorted(growth.items()))
            + (f"; wrongly on {', '.join(wrong)}" if wrong else ""),
        )
        atomic = fired("PcpuAtomicAllocationFailures")
        checks.record(
            "atomic failures alert where atomic allocations fail",
            set(atomic) == {"atomic-pressure"},
            f"fired for {', '.join(sorted(atomic)) or 'no host'}",
        )
        failed = prometheus.values(f'sum(count_over_time((up{{job="{JOB}"}} == 0)[{window}:]))')
        scrapes = prometheus.values(f'sum(count_over_time(up{{job="{JOB}"}}[{window}]))')
        missed, total = next(iter(failed.values()), 0.0), next(iter(scrapes.values()), 0.0)
        report["failed_scrapes"] = f"{missed:.0f} of {total:.0f}"
        checks.record(
            "scrapes answered in time",
            missed <= 0.01 * total,
            f"{missed:.0f} of {total:.0f} scrapes failed or timed out",
        )

        report.update(measure(prometheus, hosts, window))
        report["wall_s"] = round(time.monotonic() - started)
        report["load_average_at_end"] = round(os.getloadavg()[0], 1)
        print_report(report)
    finally:
        for host in hosts:
            host.stop()
        if prometheus is not None:
            prometheus.stop()
        for host in hosts:
            if host.proc is not None:
                try:
                    host.proc.wait(30)
                except subprocess.TimeoutExpired:
                    host.proc.kill()
        if LIVE_PIN_DIR.exists():
            # Detaching removes the directory too.
            subprocess.run([PCPU_BPF, "detach", "--pin-dir", str(LIVE_PIN_DIR)], check=False)
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"fleet: kept {workdir}")
    report["checks"] = checks.results
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    failed = [name for name, ok in checks.results.items() if not ok]
    print("fleet: all checks passed" if not failed else f"fleet: FAILED: {', '.join(failed)}")
    return 0 if not failed else 1


def measure(prometheus: Prometheus, hosts: list[Host], window: str) -> dict[str, Any]:
    """What the fleet costs Prometheus, and each daemon."""
    per_scenario: dict[str, Any] = {}
    samples = prometheus.values(
        f'max_over_time(scrape_samples_scraped{{job="{JOB}"}}[{window}])', "scenario", "instance"
    )
    durations = prometheus.values(
        f'avg_over_time(scrape_duration_seconds{{job="{JOB}"}}[{window}])', "scenario", "instance"
    )
    worst = prometheus.values(
        f'max_over_time(scrape_duration_seconds{{job="{JOB}"}}[{window}])', "scenario", "instance"
    )
    rss = prometheus.values(f'process_resident_memory_bytes{{job="{JOB}"}}', "scenario", "instance")
    cpu = prometheus.values(
        f'rate(process_cpu_seconds_total{{job="{JOB}"}}[{window}])', "scenario", "instance"
    )
    for scenario in sorted({h.scenario for h in hosts}):
        keys = [k for k in samples if k[0] == scenario]
        if not keys:
            continue
        per_scenario[scenario] = {
            "hosts": len(keys),
            "series": round(statistics.mean(samples[k] for k in keys)),
            "scrape_ms_avg": round(1000 * statistics.mean(durations.get(k, 0) for k in keys), 1),
            "scrape_ms_max": round(1000 * max(worst.get(k, 0) for k in keys), 1),
            "daemon_rss_mib": round(statistics.mean(rss.get(k, 0) for k in keys) / 2**20, 1),
            "daemon_cpu": round(statistics.mean(cpu.get(k, 0.0) for k in keys), 3),
        }
    own = "job='prometheus'"
    head = prometheus.values(f"prometheus_tsdb_head_series{{{own}}}")
    appended = prometheus.values(
        f"sum(rate(prometheus_tsdb_head_samples_appended_total{{{own}}}[1m]))"
    )
    resident = prometheus.values(f"process_resident_memory_bytes{{{own}}}")
    heap = prometheus.values(f"go_memstats_heap_inuse_bytes{{{own}}}")
    fleet_series = sum(samples.values())
    out = {
        "per_scenario": per_scenario,
        "series_per_daemon_mean": round(fleet_series / max(1, len(samples))),
        "fleet_series_scraped": round(fleet_series),
        "prometheus_head_series": round(next(iter(head.values()), 0)),
        "prometheus_samples_per_s": round(next(iter(appended.values()), 0)),
        "prometheus_rss_mib": round(next(iter(resident.values()), 0) / 2**20, 1),
        "prometheus_heap_inuse_mib": round(next(iter(heap.values()), 0) / 2**20, 1),
    }
    if out["prometheus_head_series"]:
        out["prometheus_rss_bytes_per_head_series"] = round(
            next(iter(resident.values()), 0) / out["prometheus_head_series"]
        )
    return out


def print_report(report: dict[str, Any]) -> None:
    print("\nper scenario (means over its hosts):")
    print(
        "| scenario | hosts | series | scrape ms avg | scrape ms max | daemon RSS MiB "
        "| daemon CPU |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, row in report["per_scenario"].items():
        print(
            f"| {name} | {row['hosts']} | {row['series']} | {row['scrape_ms_avg']} | "
            f"{row['scrape_ms_max']} | {row['daemon_rss_mib']} | {row['daemon_cpu']} |"
        )
    print()
    for key, value in report.items():
        if key != "per_scenario":
            print(f"{key}: {value}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--count", type=int, default=50, help="simulated daemons")
    parser.add_argument(
        "--interval", type=float, default=2.0, help="scrape and evaluation interval, seconds"
    )
    # 30: a 30-minute window is 60 s, 30 scrapes. The windows must hold about as many
    # samples as in production, or the floor of a churning host is noise and the leak
    # alert fires where it should not.
    parser.add_argument(
        "--factor", type=float, default=30.0, help="how many times faster the rules' time runs"
    )
    parser.add_argument("--alert-timeout", type=float, default=1200.0, help="seconds")
    parser.add_argument(
        "--hold", type=float, default=60.0, help="seconds to watch after the leak alert fired"
    )
    parser.add_argument(
        "--calm-pace",
        type=float,
        default=CALM_PACE,
        help="simulated operations a second of hosts that do not grow",
    )
    parser.add_argument("--no-live", action="store_true", help="no live-kernel daemon")
    parser.add_argument("--keep", action="store_true", help="keep the working directory")
    parser.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args()
    if args.count < len(MIX):
        parser.error(f"--count must be at least {len(MIX)}, one host per scenario")
    for tool in ("prometheus",):
        if shutil.which(tool) is None:
            raise SystemExit(f"fleet: {tool} not found (Debian package prometheus; setup.sh)")
    sys.exit(run(args))


if __name__ == "__main__":
    main()
