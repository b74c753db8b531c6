"""--web-config: the exporter-toolkit format parsed, checked, refused in one line; basic auth."""

from __future__ import annotations

import base64
import string
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from tls_helpers import PASSWORD, USER, make_certificates, password_hash, web_config

from pcpu_bpf.daemon.basic_auth import BasicAuth, parse_basic
from pcpu_bpf.daemon.web_config import (
    TlsSettings,
    WebConfig,
    load_web_config,
    parse_web_config,
    read_web_config,
)
from pcpu_bpf.errors import WebConfigError

BASE = Path("/etc/pcpu-bpf")
HASH = "$2y$10$X0h1gDsPszWURQaxFh.zoubFi6DXncSjhoQNJgRrnGs7EsimhC7zG"  # the toolkit's example


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_the_toolkit_example_parses() -> None:
    text = (
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
        f"basic_auth_users:\n  alice: {HASH}\n  bob: '{HASH}'\n"
    )
    config = parse_web_config(text, BASE)
    assert config.tls == TlsSettings(BASE / "server.crt", BASE / "server.key")
    assert dict(config.users) == {"alice": HASH, "bob": HASH}
    assert config.scheme == "https"


@pytest.mark.parametrize("text", ["", "# nothing\n", "tls_server_config:\nbasic_auth_users:\n"])
def test_empty_means_plain_and_open(text: str) -> None:
    assert parse_web_config(text, BASE) == WebConfig()


def test_client_certificates_and_versions() -> None:
    text = (
        "tls_server_config:\n  cert_file: /c.pem\n  key_file: /k.pem\n"
        "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.pem\n"
        "  min_version: TLS13\n"
    )
    tls = parse_web_config(text, BASE).tls
    assert tls == TlsSettings(
        Path("/c.pem"), Path("/k.pem"), BASE / "ca.pem", "RequireAndVerifyClientCert", "TLS13"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[1, 2]", "the file must be a mapping of settings"),
        ("tls_server_config: {cert_file: a}", "tls_server_config: key_file is missing"),
        ("tls_server_config: {key_file: a}", "tls_server_config: cert_file is missing"),
        ("tls_server_config: [a]", "tls_server_config must be a mapping of settings"),
        ("tls_config: {}", "unknown setting 'tls_config'"),
        ("rate_limit: {burst: 1}", "rate_limit is not supported by pcpu-bpf"),
        ("http_server_config: {http2: false}", "http_server_config is not supported by pcpu-bpf"),
        (
            "tls_server_config: {cert: x, cert_file: a, key_file: b}",
            "tls_server_config: cert is not supported by pcpu-bpf",
        ),
        (
            "tls_server_config: {cert_file: a, key_file: b, client_auth_type: RequestClientCert}",
            "tls_server_config: client_auth_type RequestClientCert is not supported (it accepts "
            "certificates without verifying them); use RequireAndVerifyClientCert",
        ),
        (
            "tls_server_config: {cert_file: a, key_file: b, client_auth_type: Maybe}",
            "tls_server_config: client_auth_type 'Maybe' is none of NoClientCert, "
            "VerifyClientCertIfGiven, RequireAndVerifyClientCert",
        ),
        (
            "tls_server_config: {cert_file: a, key_file: b, client_ca_file: ca}",
            "tls_server_config: client_ca_file is given but client_auth_type is NoClientCert "
            "(set it to RequireAndVerifyClientCert)",
        ),
        (
            "tls_server_config: {cert_file: a, key_file: b, "
            "client_auth_type: VerifyClientCertIfGiven}",
            "tls_server_config: client_auth_type VerifyClientCertIfGiven needs client_ca_file",
        ),
        (
            "tls_server_config: {cert_file: a, key_file: b, min_version: TLS14}",
            "tls_server_config: min_version 'TLS14' is none of TLS10, TLS11, TLS12, TLS13",
        ),
        (
            "tls_server_config: {cert_file: a, key_file: b, min_version: TLS13, "
            "max_version: TLS12}",
            "tls_server_config: min_version is above max_version",
        ),
        ("tls_server_config: {cert_file: 1, key_file: b}", "cert_file must be a file name"),
        (
            "basic_auth_users: {alice: hunter2}",
            "basic_auth_users: the password of 'alice' is not a bcrypt hash "
            "(htpasswd -nBC 10 '' | tr -d ':\\n' makes one)",
        ),
        (
            "basic_auth_users: {alice: '" + HASH.replace("$10$", "$99$") + "'}",
            "the password of 'alice' is not a bcrypt hash",
        ),
        ("basic_auth_users: {123: x}", "basic_auth_users: key 123 is not a string (quote it)"),
        (f"basic_auth_users: {{'a:b': '{HASH}'}}", "user name 'a:b' contains ':'"),
        ("tls_server_config: {cert_file: a", "not YAML at line 1: expected ',' or '}'"),
    ],
)
def test_malformed_is_one_line(text: str, message: str) -> None:
    with pytest.raises(WebConfigError) as info:
        parse_web_config(text, BASE)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


# Text that is often nearly a web configuration: its words, YAML punctuation, and values.
_WORDS = st.sampled_from(
    [
        "tls_server_config",
        "basic_auth_users",
        "cert_file",
        "key_file",
        "client_ca_file",
        "client_auth_type",
        "min_version",
        "max_version",
        "RequireAndVerifyClientCert",
        "TLS12",
        "TLS13",
        HASH,
        ":",
        "- ",
        "{",
        "}",
        "[",
        "]",
        "\n",
        "  ",
        "'",
        '"',
        "&a",
        "*a",
        "!!python/object:os.system",
        "!!binary",
        "~",
        "null",
        "yes",
        "0x1f",
        "\t",
        "#",
        "%YAML 1.1\n---\n",
    ]
)
_NEARLY = st.lists(st.one_of(_WORDS, st.text(string.printable, max_size=5)), max_size=40).map(
    "".join
)
_LEAF = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8), _WORDS)
_DOCUMENTS = st.recursive(
    _LEAF,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.one_of(_WORDS, st.text(max_size=5), st.integers()), inner, max_size=4),
    ),
    max_leaves=12,
)


def _parse_or_refuse(text: str) -> None:
    try:
        config = parse_web_config(text, BASE)
    except WebConfigError as exc:
        assert "\n" not in str(exc)
    else:
        assert isinstance(config, WebConfig)


@given(st.text(max_size=200))
def test_fuzz_any_text_parses_or_is_a_web_config_error(text: str) -> None:
    _parse_or_refuse(text)


@given(_NEARLY)
def test_fuzz_nearly_yaml_parses_or_is_a_web_config_error(text: str) -> None:
    _parse_or_refuse(text)


@given(
    st.one_of(
        _DOCUMENTS,
        st.fixed_dictionaries(
            {},
            optional={
                "tls_server_config": st.dictionaries(
                    st.one_of(_WORDS, st.text(max_size=4)), _LEAF, max_size=6
                ),
                "basic_auth_users": st.dictionaries(_LEAF, _LEAF, max_size=3),
            },
        ),
    )
)
def test_fuzz_documents_parse_or_are_a_web_config_error(document: object) -> None:
    _parse_or_refuse(yaml.safe_dump(document))


def test_deep_nesting_is_refused() -> None:
    with pytest.raises(WebConfigError):
        parse_web_config("[" * 100_000, BASE)


def test_files_relative_to_the_config_and_read_errors(tmp_path: Path) -> None:
    path = tmp_path / "web.yml"
    path.write_text("tls_server_config: {cert_file: c.pem, key_file: k.pem}\n")
    config = read_web_config(path)
    assert config.tls is not None and config.tls.cert_file == tmp_path / "c.pem"
    with pytest.raises(WebConfigError, match=r"tls_server_config: cannot read cert_file .*c\.pem"):
        load_web_config(path)
    with pytest.raises(WebConfigError, match="cannot read web config .*nope.yml: No such file"):
        read_web_config(tmp_path / "nope.yml")
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(WebConfigError, match="is not UTF-8 text"):
        read_web_config(path)
    path.write_text("tls_server_config: 1\n")
    with pytest.raises(WebConfigError, match=r"^web config .*web\.yml: tls_server_config must"):
        read_web_config(path)


@pytest.mark.needs_tool("openssl")
def test_certificates_that_do_not_load_are_named(tmp_path: Path) -> None:
    certs = make_certificates(tmp_path / "certs")
    path = tmp_path / "web.yml"
    # The client's key with the server's certificate: a pair that does not match.
    path.write_text(
        f"tls_server_config: {{cert_file: {certs.server_cert}, key_file: {certs.client_key}}}\n"
    )
    with pytest.raises(WebConfigError, match="are not a PEM certificate and its key"):
        load_web_config(path)
    path.write_text(
        f"tls_server_config: {{cert_file: {certs.server_cert}, key_file: {certs.server_key}, "
        f"client_auth_type: RequireAndVerifyClientCert, client_ca_file: {path}}}\n"
    )
    with pytest.raises(WebConfigError, match="client_ca_file .* holds no PEM certificate"):
        load_web_config(path)
    path.write_text(web_config(certs, users={USER: password_hash()}))
    security = load_web_config(path)
    assert security.scheme == "https" and security.auth is not None


def test_basic_auth_checks_and_remembers() -> None:
    auth = BasicAuth({USER: password_hash()})
    right, wrong = basic(USER, PASSWORD), basic(USER, "guess")
    assert not auth.remembered(right)
    assert auth.verify(right)
    assert auth.remembered(right)
    assert not auth.verify(wrong) and not auth.remembered(wrong)
    assert not auth.verify(basic("mallory", PASSWORD))
    assert not auth.verify(None) and not auth.verify("Bearer x") and not auth.verify("Basic !!")
    assert not auth.verify("Basic " + base64.b64encode(b"no colon").decode())
    assert not auth.verify(basic(USER, "nul\0byte"))


def test_parse_basic() -> None:
    assert parse_basic(basic("a", "b:c")) == ("a", b"b:c")
    assert parse_basic("basic " + base64.b64encode(b"a:").decode()) == ("a", b"")
    assert parse_basic("Basic " + base64.b64encode(b"\xff:x").decode()) is None


def test_the_shipped_example_parses() -> None:
    example = Path(__file__).resolve().parents[1] / "systemd" / "web-config.example.yml"
    config = read_web_config(example)
    assert config.tls is not None and config.tls.cert_file == example.parent / "tls.crt"
    assert list(config.users) == ["prometheus"]
