"""The Strata server the tests talk to.

With ``STRATA_URL`` and ``STRATA_ADMIN_TOKEN`` set, the tests use that server. Otherwise they
start ``strata serve`` themselves: the binary from ``STRATA_BIN``, else the repository's
``target/debug/strata``, on port 0 with a fresh SQLite database and a random admin token.
Only a server started here has a readable log, where the log-only mailer writes the links
the verification and reset tests follow.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import secrets
import signal
import struct
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from strata_client import StrataClient, User

REPO_ROOT = Path(__file__).resolve().parents[3]
PASSWORD = "correct horse battery staple"


@dataclass
class StrataServer:
    url: str
    admin_token: str
    log: Path | None  # the server's stderr, when this process started it

    def mail_token(self, kind: str, email: str) -> str:
        """The newest ``ot_…`` token of a ``kind`` link (``verify-email``, ``reset-password``,
        ``confirm-email-change``) the log-only mailer wrote for ``email``."""
        if self.log is None:
            pytest.skip("the server's mail log is not readable (STRATA_URL given): mail links cannot be followed")
        deadline = time.monotonic() + 30
        pattern = re.compile(rf"/{kind}\?token=(ot_[A-Za-z0-9_-]{{43}})")
        while True:
            # Mail goes out from the worker after the request's answer; its log record
            # (STRATA_LOG_FORMAT=json, one object a line) names the recipient in "to".
            tokens = []
            for line in self.log.read_text(errors="replace").splitlines():
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                fields = record.get("fields", record) if isinstance(record, dict) else {}
                if isinstance(fields, dict) and fields.get("to") == email:
                    tokens += pattern.findall(str(fields.get("body", "")))
            if tokens:
                return str(tokens[-1])
            if time.monotonic() > deadline:
                raise AssertionError(f"no {kind} mail for {email} in the server log")
            time.sleep(0.05)


def _strata_binary() -> Path:
    configured = os.environ.get("STRATA_BIN")
    binary = Path(configured).resolve() if configured else REPO_ROOT / "target" / "debug" / "strata"
    if not binary.is_file():
        pytest.fail(
            f"no strata binary at {binary}: build it (cargo build) or set STRATA_BIN, or point STRATA_URL and "
            "STRATA_ADMIN_TOKEN at a running server",
            pytrace=False,
        )
    return binary


@pytest.fixture(scope="session")
def strata(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StrataServer]:
    url = os.environ.get("STRATA_URL")
    if url:
        admin_token = os.environ.get("STRATA_ADMIN_TOKEN")
        if not admin_token:
            pytest.fail("STRATA_URL is set but STRATA_ADMIN_TOKEN is not", pytrace=False)
        yield StrataServer(url.rstrip("/"), admin_token, None)
        return

    workdir = tmp_path_factory.mktemp("strata")
    admin_token = secrets.token_urlsafe(24)[:32]
    env = {k: v for k, v in os.environ.items() if not k.startswith("STRATA_")}
    env.update(
        STRATA_DATABASE_URL=f"sqlite://{workdir}/t.db",
        STRATA_ADMIN_TOKEN=admin_token,
        # Many registrations and logins from one address, and argon2 at test strength: the
        # defaults are for production.
        STRATA_THROTTLE_REGISTRATION_MAX="100000",
        STRATA_THROTTLE_CLIENT_MAX_FAILURES="100000",
        STRATA_PASSWORD_MEMORY_KIB="1024",
        STRATA_PASSWORD_ITERATIONS="1",
        STRATA_LOG_FORMAT="json",
    )
    stdout_path, stderr_path = workdir / "stdout", workdir / "stderr"
    with open(stdout_path, "wb") as stdout, open(stderr_path, "wb") as stderr:
        process = subprocess.Popen(
            [str(_strata_binary()), "serve", "--listen", "127.0.0.1:0"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
        )
    try:
        deadline = time.monotonic() + 60
        address = None
        while address is None:
            match = re.search(r"^strata listening on (http://\S+)", stdout_path.read_text(errors="replace"), re.M)
            if match:
                address = match.group(1)
            elif process.poll() is not None or time.monotonic() > deadline:
                log = stderr_path.read_text(errors="replace")[-3000:]
                pytest.fail(f"strata serve did not start (exit {process.poll()}):\n{log}", pytrace=False)
            else:
                time.sleep(0.05)
        yield StrataServer(address, admin_token, stderr_path)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def admin(strata: StrataServer) -> Iterator[StrataClient]:
    with StrataClient(strata.url, strata.admin_token) as client:
        yield client


@pytest.fixture
def anonymous(strata: StrataServer) -> Iterator[StrataClient]:
    with StrataClient(strata.url) as client:
        yield client


def unique_email(prefix: str = "user") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}@example.com"


@pytest.fixture
def new_user(anonymous: StrataClient) -> User:
    return anonymous.create_user(unique_email(), "Test User", PASSWORD)


def totp(secret: str, at: float | None = None, step_offset: int = 0) -> str:
    """RFC 6238 (SHA-1, 6 digits, 30 s), as Strata's enrolment says."""
    key = base64.b32decode(secret.upper() + "=" * (-len(secret) % 8))
    counter = int((time.time() if at is None else at) // 30) + step_offset
    digest = hmac.new(key, struct.pack(">Q", counter), hashlib.sha1).digest()
    offset = digest[-1] & 0x0F
    number = struct.unpack(">I", digest[offset : offset + 4])[0] & 0x7FFFFFFF
    return f"{number % 1_000_000:06d}"
