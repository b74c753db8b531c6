"""Certificates and web configuration files for tests, made with Debian's openssl."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import bcrypt

USER, PASSWORD = "prometheus", "correct horse battery staple"
# The lowest bcrypt cost: the tests check behaviour, not bcrypt's strength.
COST = 4


@dataclass(frozen=True)
class Certificates:
    """A test CA, a server certificate for 127.0.0.1 and a client certificate, signed by it."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path  # a CA that signed nothing here


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _key_and_csr(name: str, cwd: Path) -> None:
    _openssl(
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        f"{name}.key",
        "-out",
        f"{name}.csr",
        "-subj",
        f"/CN={name}",
        cwd=cwd,
    )


def _ca(name: str, cwd: Path) -> None:
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        f"{name}.key",
        "-out",
        f"{name}.pem",
        "-days",
        "2",
        "-subj",
        f"/CN={name}",
        cwd=cwd,
    )


def _sign(name: str, extensions: str, cwd: Path) -> None:
    (cwd / f"{name}.ext").write_text(extensions + "\n")
    _openssl(
        "x509",
        "-req",
        "-in",
        f"{name}.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        f"{name}.pem",
        "-days",
        "2",
        "-extfile",
        f"{name}.ext",
        cwd=cwd,
    )


def make_certificates(directory: Path) -> Certificates:
    """Write a CA, a server and a client certificate with their keys into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    _ca("ca", directory)
    _ca("other-ca", directory)
    _key_and_csr("server", directory)
    _sign("server", "subjectAltName=IP:127.0.0.1,DNS:localhost", directory)
    _key_and_csr("client", directory)
    _sign("client", "extendedKeyUsage=clientAuth", directory)
    return Certificates(
        directory / "ca.pem",
        directory / "server.pem",
        directory / "server.key",
        directory / "client.pem",
        directory / "client.key",
        directory / "other-ca.pem",
    )


def password_hash(password: str = PASSWORD) -> str:
    """A bcrypt hash of ``password``, as htpasswd -nB makes them."""
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(COST)).decode()


def web_config(
    certs: Certificates | None,
    *,
    users: dict[str, str] | None = None,
    client_auth: str | None = None,
) -> str:
    """The text of a web configuration file."""
    lines = []
    if certs is not None:
        lines += [
            "tls_server_config:",
            f"  cert_file: {certs.server_cert}",
            f"  key_file: {certs.server_key}",
        ]
        if client_auth is not None:
            lines += [f"  client_auth_type: {client_auth}", f"  client_ca_file: {certs.ca}"]
    if users:
        lines.append("basic_auth_users:")
        lines += [f"  {user}: '{hashed}'" for user, hashed in users.items()]
    return "\n".join(lines) + "\n"
