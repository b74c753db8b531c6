"""HTTP basic authentication against bcrypt hashes, as the exporter-toolkit does it.

A bcrypt check costs tens of milliseconds by design, so it never runs in the server's
loop: the server asks `remembered` first (a keyed hash of credentials that passed
before: a scraper pays bcrypt once), and runs `verify` on a thread of its own otherwise.
An unknown user is checked against a dummy hash of the same cost, so the time taken does
not tell which user names exist.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import threading
from collections import OrderedDict
from collections.abc import Mapping

import bcrypt

REALM = "pcpu-bpf"
CHALLENGE = f'Basic realm="{REALM}", charset="UTF-8"'
_REMEMBERED = 64  # credentials that passed, kept (as keyed hashes) to skip bcrypt


def _cost(hashed: str) -> int:
    return int(hashed.split("$")[2])


class BasicAuth:
    """Checks ``Authorization: Basic`` header values against user -> bcrypt hash."""

    def __init__(self, users: Mapping[str, str]) -> None:
        self._users = {user: hashed.encode() for user, hashed in users.items()}
        rounds = max((_cost(h) for h in users.values()), default=4)
        self._dummy = bcrypt.hashpw(os.urandom(16).hex().encode(), bcrypt.gensalt(rounds))
        self._key = os.urandom(32)  # per process: the remembered set means nothing elsewhere
        self._passed: OrderedDict[bytes, None] = OrderedDict()
        self._lock = threading.Lock()

    def remembered(self, header: str | None) -> bool:
        """True when ``header`` passed `verify` before (fast; no bcrypt)."""
        if header is None:
            return False
        digest = self._digest(header)
        with self._lock:
            if digest in self._passed:
                self._passed.move_to_end(digest)
                return True
        return False

    def verify(self, header: str | None) -> bool:
        """True when ``header`` carries a known user and its password (slow: bcrypt)."""
        credentials = parse_basic(header)
        if credentials is None:
            return False
        user, password = credentials
        hashed = self._users.get(user)
        try:
            ok = bcrypt.checkpw(password, hashed if hashed is not None else self._dummy)
        except ValueError:  # not reachable with hashes read_web_config accepted
            return False
        if ok and hashed is not None:
            assert header is not None
            with self._lock:
                self._passed[self._digest(header)] = None
                while len(self._passed) > _REMEMBERED:
                    self._passed.popitem(last=False)
            return True
        return False

    def _digest(self, header: str) -> bytes:
        return hmac.new(
            self._key, header.encode("utf-8", "surrogateescape"), hashlib.sha256
        ).digest()


def parse_basic(header: str | None) -> tuple[str, bytes] | None:
    """(user, password) from an ``Authorization: Basic ...`` value; None if it is not one."""
    if header is None:
        return None
    scheme, _, encoded = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    user, sep, password = decoded.partition(b":")
    if not sep:
        return None
    try:
        return user.decode("utf-8"), password
    except UnicodeDecodeError:
        return None
