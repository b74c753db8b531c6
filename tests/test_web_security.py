"""`pcpu-bpf serve --web-config`: TLS and basic auth, with real clients (urllib, openssl's
certificates, a real Prometheus scraping over TLS with basic auth)."""

from __future__ import annotations

import base64
import socket
import ssl
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import bcrypt
import pytest
from daemon_helpers import Daemon, error_lines, run
from prometheus_helpers import Prometheus, scrape_job
from tls_helpers import (
    PASSWORD,
    USER,
    Certificates,
    make_certificates,
    password_hash,
    web_config,
)
from waiting import wait_until

from pcpu_bpf.backends.sim import SimBackend
from pcpu_bpf.daemon.http_server import Limits
from pcpu_bpf.daemon.listener import ListenAddress, bind, bound_address
from pcpu_bpf.daemon.server import serve
from pcpu_bpf.daemon.web_config import WebSecurity, load_web_config

pytestmark = pytest.mark.needs_tool("openssl")


def client_context(certs: Certificates, *, client_cert: bool = False) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(certs.ca))
    if client_cert:
        context.load_cert_chain(certs.client_cert, certs.client_key)
    return context


def authorization(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def get(
    url: str, context: ssl.SSLContext | None, headers: dict[str, str]
) -> tuple[int, dict, bytes]:
    """(status, headers, body) of a GET, errors included."""
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, dict(exc.headers), exc.read()


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def secured(certs: Certificates, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """A sim daemon behind TLS and basic auth."""
    path = tmp_path_factory.mktemp("web") / "web.yml"
    path.write_text(web_config(certs, users={USER: password_hash()}))
    daemon = Daemon(
        "--backend",
        "sim",
        env={"PCPU_SERVE_WEB_CONFIG": str(path)},  # the unit's way of passing it
        tls=client_context(certs),
        credentials=(USER, PASSWORD),
    )
    try:
        daemon.wait_ready()
        yield daemon
    finally:
        daemon.close()


@pytest.fixture(scope="module")
def prometheus(
    secured: Daemon, certs: Certificates, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Prometheus]:
    """One Prometheus, three ways of scraping the secured daemon: right, wrong, plain."""
    tls = {"tls_config": {"ca_file": str(certs.ca)}, "scheme": "https"}
    jobs = [
        scrape_job(
            "right", [secured.hostport], basic_auth={"username": USER, "password": PASSWORD}, **tls
        ),
        scrape_job(
            "wrong", [secured.hostport], basic_auth={"username": USER, "password": "x"}, **tls
        ),
        scrape_job("plain", [secured.hostport]),
    ]
    server = Prometheus(tmp_path_factory.mktemp("prometheus"), jobs)
    try:
        yield server
    finally:
        server.close()


def test_right_credentials_get_metrics(secured: Daemon) -> None:
    assert secured.url.startswith("https://")
    assert "pcpu_exporter_info" in secured.scrape()


@pytest.mark.parametrize(
    "headers",
    [
        {},
        authorization(USER, "wrong"),
        authorization("mallory", PASSWORD),
        {"Authorization": "Bearer abc"},
        {"Authorization": "Basic ***"},
    ],
    ids=["missing", "wrong-password", "unknown-user", "not-basic", "malformed"],
)
@pytest.mark.parametrize("path", ["/metrics", "/", "/nope"])
def test_wrong_or_missing_credentials_get_401(
    secured: Daemon, certs: Certificates, headers: dict[str, str], path: str
) -> None:
    url = secured.url.removesuffix("/metrics") + path
    code, answer_headers, body = get(url, client_context(certs), headers)
    assert code == 401
    assert answer_headers["WWW-Authenticate"] == 'Basic realm="pcpu-bpf", charset="UTF-8"'
    assert b"pcpu_" not in body


def test_plain_http_to_the_tls_port_fails_cleanly(secured: Daemon) -> None:
    with socket.create_connection(("127.0.0.1", secured.port), timeout=10) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    assert answer.startswith(b"HTTP/1.0 400 Bad Request\r\n")
    assert answer.endswith(b"\r\n\r\nClient sent an HTTP request to an HTTPS server.\n")
    code, _, _ = get(f"http://{secured.hostport}/metrics", None, authorization(USER, PASSWORD))
    assert code == 400


def test_a_client_that_does_not_trust_the_certificate_is_refused(
    secured: Daemon, certs: Certificates
) -> None:
    stranger = ssl.create_default_context(cafile=str(certs.other_ca))
    with pytest.raises(urllib.error.URLError) as info:
        get(secured.url, stranger, authorization(USER, PASSWORD))
    assert isinstance(info.value.reason, ssl.SSLCertVerificationError)
    assert "pcpu_exporter_info" in secured.scrape()  # and the server goes on


@pytest.mark.needs_tool("prometheus")
def test_prometheus_scrapes_over_tls_with_basic_auth(prometheus: Prometheus) -> None:
    prometheus.wait_for('pcpu_exporter_info{job="right"}')
    up = prometheus.wait_for("up", lambda r: len(r) == 3, target_labels=True)
    assert {dict(labels)["job"]: value for labels, (_, value) in up.items()} == {
        "right": 1.0,
        "wrong": 0.0,
        "plain": 0.0,
    }
    errors = {t["labels"]["job"]: t["lastError"] for t in prometheus.targets()}
    assert "401" in errors["wrong"], errors
    assert "400" in errors["plain"], errors
    assert errors["right"] == ""
    assert prometheus.query('pcpu_allocations_total{job="wrong"}') == {}


def test_client_certificates_when_required(certs: Certificates, tmp_path: Path) -> None:
    path = tmp_path / "web.yml"
    path.write_text(web_config(certs, client_auth="RequireAndVerifyClientCert"))
    daemon = Daemon("--backend", "sim", "--web-config", str(path), tls=client_context(certs))
    try:
        with_cert = client_context(certs, client_cert=True)
        wait_until(
            lambda: _answers(daemon.url, with_cert),
            what="the daemon to answer a client with a certificate",
        )
        assert get(daemon.url, with_cert, {})[0] == 200
        with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
            get(daemon.url, client_context(certs), {})
    finally:
        daemon.close()


def _answers(url: str, context: ssl.SSLContext) -> bool:
    try:
        return get(url, context, {})[0] == 200
    except (urllib.error.URLError, ConnectionError):
        return False


def test_malformed_web_config_is_a_one_line_error_at_start(tmp_path: Path) -> None:
    path = tmp_path / "web.yml"
    path.write_text("tls_server_config:\n  cert_file: c.pem\n")
    result = run("serve", "--backend", "sim", "--listen", "127.0.0.1:0", "--web-config", str(path))
    assert result.returncode == 2
    assert error_lines(result.stderr) == [
        f"Error: web config {path}: tls_server_config: key_file is missing"
    ]


# --- in-process: stalled handshakes, and a flood of wrong passwords ------------------------


class InProcess:
    """serve() on a thread, with short limits."""

    def __init__(self, security: WebSecurity, limits: Limits) -> None:
        listener = bind(ListenAddress("127.0.0.1", 0))
        self.port = bound_address(listener).port
        self.stop = threading.Event()
        self.thread = threading.Thread(
            target=serve,
            args=(SimBackend("steady"), listener, self.stop),
            kwargs={"limits": limits, "security": security},
        )
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)


def test_stalled_handshakes_neither_stop_scrapes_nor_stay(
    certs: Certificates, tmp_path: Path
) -> None:
    path = tmp_path / "web.yml"
    path.write_text(web_config(certs))
    server = InProcess(load_web_config(path), Limits(max_connections=20, head_timeout=0.5))
    url = f"https://127.0.0.1:{server.port}/metrics"
    held: list[socket.socket] = []
    try:
        wait_until(lambda: _answers(url, client_context(certs)), what="the server to answer")
        for i in range(60):  # three times the connection bound
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            held.append(sock)
            if i % 2:
                sock.sendall(b"\x16\x03\x01\x02\x00")  # a ClientHello's first bytes, no more
        assert get(url, client_context(certs), {})[0] == 200

        def closed(sock: socket.socket) -> bool:
            sock.settimeout(10)
            try:
                return sock.recv(4096) == b""
            except ConnectionResetError:
                return True

        # Every stalled one is dropped: evicted to make room, or at the deadline.
        assert all(closed(sock) for sock in held)
    finally:
        for sock in held:
            sock.close()
        server.close()


def test_wrong_passwords_do_not_hold_up_a_known_scraper(
    certs: Certificates, tmp_path: Path
) -> None:
    slow = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(11)).decode()  # ~0.1 s a check
    path = tmp_path / "web.yml"
    path.write_text(web_config(None, users={USER: slow}))
    server = InProcess(load_web_config(path), Limits(head_timeout=60))
    url = f"http://127.0.0.1:{server.port}/metrics"
    right, wrong = authorization(USER, PASSWORD), authorization(USER, "guess")
    try:
        wait_until(lambda: get(url, None, right)[0] == 200, what="a first good scrape")
        with ThreadPoolExecutor(16) as pool:
            flood = [pool.submit(get, url, None, wrong) for _ in range(16)]
            wait_until(lambda: any(f.done() for f in flood), what="a first wrong password checked")
            # Sixteen checks queue on one thread; the known scraper passes them all by.
            assert get(url, None, right)[0] == 200
            assert not all(f.done() for f in flood)
            assert {f.result()[0] for f in flood} == {401}
    finally:
        server.close()
