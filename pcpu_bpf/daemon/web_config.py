"""The web configuration file (--web-config): TLS and basic auth for /metrics.

The format is the Prometheus exporter-toolkit's, so one file can serve node_exporter and
pcpu-bpf alike. Read: ``tls_server_config`` (cert_file, key_file, client_ca_file,
client_auth_type, min_version, max_version) and ``basic_auth_users`` (bcrypt hashes).
Every other setting the toolkit knows is refused by name, never ignored: a security
setting that silently did nothing would be worse than an error. Relative file names are
relative to the configuration file's directory. Any fault is one WebConfigError line.
"""

from __future__ import annotations

import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from pcpu_bpf.daemon.basic_auth import BasicAuth
from pcpu_bpf.errors import WebConfigError

MAX_FILE_BYTES = 1 << 20  # a web configuration is a few hundred bytes

# client_auth_type values ssl can honour; the toolkit's other two ask for a client
# certificate without verifying it, which OpenSSL through Python cannot do.
CLIENT_AUTH = {
    "NoClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
_UNVERIFIED_CLIENT_AUTH = ("RequestClientCert", "RequireAnyClientCert")
TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
_TLS_KEYS = (
    "cert_file",
    "key_file",
    "client_ca_file",
    "client_auth_type",
    "min_version",
    "max_version",
)
# Known to the toolkit, not implemented here.
_UNSUPPORTED = {
    "tls_server_config": (
        "cert",
        "key",
        "client_ca",
        "client_allowed_sans",
        "cipher_suites",
        "curve_preferences",
        "prefer_server_cipher_suites",
    ),
    "": ("http_server_config", "rate_limit"),
}
_BCRYPT = re.compile(r"\$2[abxy]?\$(\d\d)\$[./A-Za-z0-9]{53}")


@dataclass(frozen=True, slots=True)
class TlsSettings:
    """What tls_server_config asks for; files as absolute paths."""

    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None
    client_auth_type: str = "NoClientCert"
    min_version: str = "TLS12"
    max_version: str = "TLS13"

    def context(self) -> ssl.SSLContext:
        """A server SSLContext with the certificate loaded; WebConfigError naming the file."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            context.minimum_version = TLS_VERSIONS[self.min_version]
            context.maximum_version = TLS_VERSIONS[self.max_version]
        except (ValueError, ssl.SSLError) as exc:  # an OpenSSL built without old versions
            raise WebConfigError(f"tls_server_config: TLS versions not available: {exc}") from None
        for name, path in (("cert_file", self.cert_file), ("key_file", self.key_file)):
            _readable(name, path)
        try:
            context.load_cert_chain(self.cert_file, self.key_file)
        except ssl.SSLError as exc:
            raise WebConfigError(
                f"tls_server_config: {self.cert_file} and {self.key_file} are not a PEM "
                f"certificate and its key ({exc.reason or exc})"
            ) from None
        context.verify_mode = CLIENT_AUTH[self.client_auth_type]
        if self.client_ca_file is not None:
            _readable("client_ca_file", self.client_ca_file)
            try:
                context.load_verify_locations(cafile=str(self.client_ca_file))
            except ssl.SSLError as exc:
                raise WebConfigError(
                    f"tls_server_config: client_ca_file {self.client_ca_file} holds no PEM "
                    f"certificate ({exc.reason or exc})"
                ) from None
        return context


def _frozen(users: Mapping[str, str] | None = None) -> Mapping[str, str]:
    return MappingProxyType(dict(users or {}))


@dataclass(frozen=True, slots=True)
class WebConfig:
    """A parsed web configuration: TLS (None: plain HTTP) and basic-auth users (none: open)."""

    tls: TlsSettings | None = None
    users: Mapping[str, str] = field(default_factory=_frozen)  # user -> bcrypt hash

    @property
    def scheme(self) -> str:
        """The URL scheme clients use."""
        return "http" if self.tls is None else "https"


@dataclass(frozen=True, slots=True)
class WebSecurity:
    """What the HTTP server applies: an SSLContext (None: plain) and basic auth (None: open)."""

    tls: ssl.SSLContext | None = None
    auth: BasicAuth | None = None

    @property
    def scheme(self) -> str:
        """The URL scheme clients use."""
        return "http" if self.tls is None else "https"


PLAIN = WebSecurity()


def load_web_config(path: str | Path) -> WebSecurity:
    """Read, check and apply a web configuration file; WebConfigError in one line if unusable."""
    config = read_web_config(path)
    tls = config.tls.context() if config.tls is not None else None
    return WebSecurity(tls, BasicAuth(config.users) if config.users else None)


def read_web_config(path: str | Path) -> WebConfig:
    """Parse the file at ``path`` (files it names are not opened yet)."""
    path = Path(path)
    try:
        with path.open("rb") as file:
            data = file.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise WebConfigError(f"cannot read web config {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_FILE_BYTES:
        raise WebConfigError(f"web config {path} is larger than {MAX_FILE_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise WebConfigError(f"web config {path} is not UTF-8 text") from None
    try:
        return parse_web_config(text, path.resolve().parent)
    except WebConfigError as exc:
        raise WebConfigError(f"web config {path}: {exc}") from None


def parse_web_config(text: str, base: Path) -> WebConfig:
    """Parse a web configuration; relative file names are taken from ``base``."""
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise WebConfigError(f"not YAML{where}: {problem}") from None
    except RecursionError:
        raise WebConfigError("not YAML: nested too deeply") from None
    if document is None:
        return WebConfig()  # an empty file: plain HTTP, no authentication (as the toolkit)
    top = _mapping(document, "the file")
    _known(top, "", ("tls_server_config", "basic_auth_users"))
    tls = None
    if top.get("tls_server_config") is not None:
        tls = _tls(_mapping(top["tls_server_config"], "tls_server_config"), base)
    users: dict[str, str] = {}
    if top.get("basic_auth_users") is not None:
        for user, hashed in _mapping(top["basic_auth_users"], "basic_auth_users").items():
            users[user] = _bcrypt_hash(user, hashed)
    return WebConfig(tls, _frozen(users))


def _tls(section: dict[str, Any], base: Path) -> TlsSettings:
    _known(section, "tls_server_config", _TLS_KEYS)
    for required in ("cert_file", "key_file"):
        if section.get(required) is None:
            raise WebConfigError(f"tls_server_config: {required} is missing")
    auth = _string(section, "client_auth_type", "NoClientCert")
    if auth in _UNVERIFIED_CLIENT_AUTH:
        raise WebConfigError(
            f"tls_server_config: client_auth_type {auth} is not supported (it accepts "
            "certificates without verifying them); use RequireAndVerifyClientCert"
        )
    if auth not in CLIENT_AUTH:
        raise WebConfigError(
            f"tls_server_config: client_auth_type {auth!r} is none of {', '.join(CLIENT_AUTH)}"
        )
    ca = _file(section, "client_ca_file", base)
    if ca is not None and auth == "NoClientCert":
        raise WebConfigError(
            "tls_server_config: client_ca_file is given but client_auth_type is NoClientCert "
            "(set it to RequireAndVerifyClientCert)"
        )
    if ca is None and auth != "NoClientCert":
        raise WebConfigError(f"tls_server_config: client_auth_type {auth} needs client_ca_file")
    versions = []
    for setting, default in (("min_version", "TLS12"), ("max_version", "TLS13")):
        version = _string(section, setting, default)
        if version not in TLS_VERSIONS:
            raise WebConfigError(
                f"tls_server_config: {setting} {version!r} is none of {', '.join(TLS_VERSIONS)}"
            )
        versions.append(version)
    if TLS_VERSIONS[versions[0]] > TLS_VERSIONS[versions[1]]:
        raise WebConfigError("tls_server_config: min_version is above max_version")
    cert, key = _file(section, "cert_file", base), _file(section, "key_file", base)
    assert cert is not None and key is not None  # checked present above
    return TlsSettings(cert, key, ca, auth, versions[0], versions[1])


def _mapping(value: object, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise WebConfigError(f"{what} must be a mapping of settings")
    for key in value:
        if not isinstance(key, str):
            raise WebConfigError(f"{what}: key {key!r} is not a string (quote it)")
    return value


def _known(section: dict[str, Any], where: str, keys: tuple[str, ...]) -> None:
    prefix = f"{where}: " if where else ""
    for key in section:
        if key in _UNSUPPORTED.get(where, ()):
            raise WebConfigError(f"{prefix}{key} is not supported by pcpu-bpf")
        if key not in keys:
            raise WebConfigError(f"{prefix}unknown setting {key!r}")


def _string(section: dict[str, Any], key: str, default: str) -> str:
    value = section.get(key)
    if value is None:
        return default
    if not isinstance(value, str):
        raise WebConfigError(f"tls_server_config: {key} must be a string")
    return value


def _file(section: dict[str, Any], key: str, base: Path) -> Path | None:
    value = section.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value or "\0" in value:
        raise WebConfigError(f"tls_server_config: {key} must be a file name")
    return base / value


def _bcrypt_hash(user: str, hashed: object) -> str:
    if not user:
        raise WebConfigError("basic_auth_users: a user name is empty")
    if ":" in user:
        raise WebConfigError(f"basic_auth_users: user name {user!r} contains ':'")
    match = _BCRYPT.fullmatch(hashed) if isinstance(hashed, str) else None
    if match is None or not 4 <= int(match[1]) <= 31:
        raise WebConfigError(
            f"basic_auth_users: the password of {user!r} is not a bcrypt hash "
            "(htpasswd -nBC 10 '' | tr -d ':\\n' makes one)"
        )
    assert isinstance(hashed, str)
    return hashed


def _readable(name: str, path: Path) -> None:
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        raise WebConfigError(
            f"tls_server_config: cannot read {name} {path}: {exc.strerror or exc}"
        ) from None
