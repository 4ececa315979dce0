"""TOTP login rate for bench/lifecycle.sh: enrols USERS accounts (register, log in, start
TOTP, confirm with a pyotp code), then for DURATION seconds runs complete TOTP logins
(POST /v1/sessions → 401 mfa_required → POST /v1/sessions/mfa with a pyotp code) and, with
the same client and concurrency, password-only logins of accounts without TOTP, so the
two rates compare like with like.

A code is accepted once per account and time step (no replay), and ±1 step of skew is
allowed, so each account gives at least one login per 30 s (up to three): the script picks,
per login, the earliest step in now-1..now+1 later than the account's last one, and skips
accounts with none left. When every account is spent the run stops early (said on stderr)
and the rate is over the time it ran: enrol more accounts than rate × duration.

    python bench/totp_logins.py BASE PREFIX USERS DURATION CONCURRENCY PASSWORD
Prints one line: "<totp logins/s> <password logins/s> <totp p50 ms> <password p50 ms> <failures>".
"""

import http.client
import json
import sys
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor

import pyotp

BASE, PREFIX, USERS, DURATION, CONCURRENCY, PASSWORD = sys.argv[1:7]
USERS, DURATION, CONCURRENCY = int(USERS), float(DURATION), int(CONCURRENCY)
HOST = urllib.parse.urlsplit(BASE).netloc
local = threading.local()


def call(method, path, body=None, token=None):
    if not hasattr(local, "conn"):
        local.conn = http.client.HTTPConnection(HOST, timeout=30)
    headers = {"content-type": "application/json"}
    if token:
        headers["authorization"] = f"Bearer {token}"
    for attempt in range(2):
        try:
            local.conn.request(method, path, json.dumps(body) if body is not None else None, headers)
            r = local.conn.getresponse()
            data = r.read()
            return r.status, json.loads(data) if data else None
        except (http.client.HTTPException, OSError):
            local.conn.close()
            local.conn = http.client.HTTPConnection(HOST, timeout=30)
            if attempt:
                raise


def enrol(n):
    email = f"{PREFIX}{n}@bench.example"
    status, _ = call("POST", "/v1/users", {"email": email, "name": "Bench", "password": PASSWORD})
    assert status == 201, status
    status, body = call("POST", "/v1/sessions", {"email": email, "password": PASSWORD})
    assert status == 201, (status, body)
    token, uid = body["token"], body["user"]["id"]
    status, body = call("POST", f"/v1/users/{uid}/mfa/totp", {"current_password": PASSWORD}, token)
    assert status == 200, (status, body)
    secret = body["secret"]
    now = time.time()
    status, body = call("POST", f"/v1/users/{uid}/mfa/totp/confirm", {"code": pyotp.TOTP(secret).at(now)}, token)
    assert status == 200, (status, body)
    return email, secret, int(now // 30)


def plain(n):
    email = f"{PREFIX}plain-{n}@bench.example"
    status, _ = call("POST", "/v1/users", {"email": email, "name": "Bench", "password": PASSWORD})
    assert status == 201, status
    return email


with ThreadPoolExecutor(CONCURRENCY) as pool:
    accounts = list(pool.map(enrol, range(USERS)))
    plain_emails = list(pool.map(plain, range(USERS)))

last_step = {email: step for email, _, step in accounts}
lock = threading.Lock()
cursor = [0]


def next_totp_login():
    """(email, secret, step) for the next login that no code was accepted for yet."""
    with lock:
        for _ in range(len(accounts)):
            email, secret, _ = accounts[cursor[0] % len(accounts)]
            cursor[0] += 1
            now = int(time.time() // 30)
            for step in (now - 1, now, now + 1):
                if step > last_step[email]:
                    last_step[email] = step
                    return email, secret, step
    return None


class Exhausted(Exception):
    pass


def totp_login():
    picked = next_totp_login()
    if picked is None:
        raise Exhausted()
    email, secret, step = picked
    status, body = call("POST", "/v1/sessions", {"email": email, "password": PASSWORD})
    if status != 401 or body.get("code") != "mfa_required":
        return False
    code = pyotp.TOTP(secret).at(step * 30)
    status, _ = call("POST", "/v1/sessions/mfa", {"challenge": body["challenge"], "code": code})
    return status == 201


def password_login():
    with lock:
        email = plain_emails[cursor[0] % len(plain_emails)]
        cursor[0] += 1
    status, _ = call("POST", "/v1/sessions", {"email": email, "password": PASSWORD})
    return status == 201


def run(login):
    deadline = time.monotonic() + DURATION
    latencies, failures = [], [0]

    def worker():
        while time.monotonic() < deadline:
            started = time.monotonic()
            try:
                ok = login()
            except Exhausted:
                print("every account's codes are spent: enrol more (MFA_USERS)", file=sys.stderr)
                return
            latencies.append(time.monotonic() - started)
            if not ok:
                failures[0] += 1

    started = time.monotonic()
    threads = [threading.Thread(target=worker) for _ in range(CONCURRENCY)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    ok = len(latencies) - failures[0]
    latencies.sort()
    p50 = latencies[len(latencies) // 2] * 1000 if latencies else 0.0
    return ok / elapsed, p50, failures[0]


password_rate, password_p50, password_failures = run(password_login)
totp_rate, totp_p50, totp_failures = run(totp_login)
print(f"{totp_rate:.1f} {password_rate:.1f} {totp_p50:.1f} {password_p50:.1f} {totp_failures + password_failures}")
