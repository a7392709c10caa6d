#!/usr/bin/env python3
"""Load drivers for scripts/crash-loop.sh and scripts/soak.sh.

Standard library only (Python 3.11). Talks to a signet server on 127.0.0.1
and nowhere else; every loop is bounded in count and in time.

Subcommands:
  crash-check   after a restart: every acknowledged create is present, every
                acknowledged delete absent and its token refused; resolves the
                requests that were in flight at the kill
  crash-load    mixed concurrent load until the server dies (or a time bound);
                records which requests were acknowledged
  crash-offline cross-checks `signet keys list` output and the audit log
                against the recorded state
  crash-summary prints the one-line summary; exit 1 on any loss
  soak          timed mixed load with per-minute p99 latency and RSS samples
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from urllib.parse import urlsplit

# ---------------------------------------------------------------- HTTP ----


class Conn:
    """One keep-alive HTTP/1.1 connection to the server, reopened on error
    and after IDLE_REOPEN seconds unused."""

    IDLE_REOPEN = 5.0

    def __init__(self, base: str, admin: str, timeout: float = 10.0):
        u = urlsplit(base)
        if u.hostname not in ("127.0.0.1", "localhost", "::1"):
            raise SystemExit(f"refusing to send traffic to {u.hostname}: loopback only")
        self.host, self.port = u.hostname, u.port
        self.admin = admin
        self.timeout = timeout
        self.c: http.client.HTTPConnection | None = None
        self.fresh = True  # the connection has not yet served a request
        self.last_used = 0.0

    def close(self) -> None:
        if self.c is not None:
            try:
                self.c.close()
            except Exception:
                pass
        self.c = None

    def request(self, method: str, path: str, body=None, auth: bool = False, headers=None):
        """Returns (status, headers dict, body bytes); raises OSError /
        http.client.HTTPException when no complete response arrived."""
        if self.c is not None and time.monotonic() - self.last_used > self.IDLE_REOPEN:
            # the server closes idle keep-alive connections (its header read
            # timeout, 10 s by default); a request sent on one that it has
            # just closed fails with no fault of the server's
            self.close()
        if self.c is None:
            self.c = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            self.fresh = True
        h = dict(headers or {})
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            h["Content-Type"] = "application/json"
        if auth:
            h["Authorization"] = f"Bearer {self.admin}"
        try:
            self.c.request(method, path, body=data, headers=h)
            r = self.c.getresponse()
            payload = r.read()  # the whole body: only then is it "complete"
        except BaseException:
            self.close()
            raise
        self.fresh = False
        self.last_used = time.monotonic()
        if r.will_close:
            self.close()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, payload


def jbody(payload: bytes):
    try:
        return json.loads(payload)
    except Exception:
        return None


# ----------------------------------------------------------- minting ----


def mint(signet_bin: str, pem: str, kid: str, org: str, ttl: str = "7d") -> str | None:
    """A token for the key, minted by `signet token` from its private PEM.
    The PEM lives only in a 0600 temp file for the duration of the call."""
    fd, path = tempfile.mkstemp(prefix="signet-key-", suffix=".pem")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(pem)
        p = subprocess.run(
            [signet_bin, "token", "--key", path, "--kid", kid, "--org", org, "--ttl", ttl],
            capture_output=True, text=True, timeout=30,
        )
        if p.returncode != 0:
            return None
        return p.stdout.strip()
    except Exception:
        return None
    finally:
        try:
            os.unlink(path)
        except OSError:
            pass


# -------------------------------------------------------- crash loop ----
#
# State file (JSON):
#   keys: id -> {org, state, token, created_cycle, deleted_cycle}
#     state: live            acknowledged create (201 arrived), not deleted
#            deleted         acknowledged delete (204 arrived)
#            gone            delete was in flight at the kill and a restart
#                            showed it had happened (404); must stay absent
#            delete_pending  delete was in flight at the kill: either outcome
#                            is allowed, resolved by the next crash-check
#   counters and findings (lost / resurrected / errors)

LIVE, DELETED, GONE, PENDING = "live", "deleted", "gone", "delete_pending"


def load_state(path: str) -> dict:
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    return {
        "cycles": 0,
        "keys": {},
        "acked_creates": 0,
        "acked_deletes": 0,
        "in_doubt_creates": 0,
        "in_doubt_deletes": 0,
        "orphans": 0,
        "quota_refusals": 0,
        "verifies": 0,
        "lost": [],
        "resurrected": [],
        "errors": [],
    }


def save_state(path: str, st: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(st, f)
    os.replace(tmp, path)


def finding(st: dict, kind: str, msg: str) -> None:
    st[kind].append(msg)
    print(f"  {kind.upper()}: {msg}", file=sys.stderr)


def crash_check(a) -> int:
    st = load_state(a.state)
    cycle = st["cycles"] + 1  # the cycle this check opens
    # every instance is checked; the first resolves deletes in doubt
    conns = [Conn(b, a.admin) for b in bases(a)]
    keys = st["keys"]
    checked = 0
    for kid, k in sorted(keys.items()):
        checked += 1
        for n, c in enumerate(conns):
            on = f" on instance {n + 1}" if len(conns) > 1 else ""
            check_key(st, c, cycle, kid, k, on)
    # the per-organisation index agrees: live keys listed, deleted ones not;
    # keys nobody acknowledged (a create in flight at the kill that did
    # commit) are allowed: delete them so they do not eat the quota.
    c = conns[0]
    orgs = sorted({k["org"] for k in keys.values()} | set(a.orgs.split(",")))
    for org in orgs:
        status, _, body = c.request("GET", f"/v1/organisations/{org}/keys", auth=True)
        if status != 200:
            finding(st, "errors", f"cycle {cycle} check: list {org} answered {status}: {body[:200]!r}")
            continue
        listed = {x["id"] for x in (jbody(body) or {}).get("keys", [])}
        for kid, k in keys.items():
            if k["org"] != org:
                continue
            if k["state"] == LIVE and kid not in listed:
                finding(st, "lost", f"cycle {cycle} check: live key {kid} missing from the list of {org}")
            if k["state"] in (DELETED, GONE) and kid in listed:
                finding(st, "resurrected", f"cycle {cycle} check: deleted key {kid} listed in {org}")
        for kid in sorted(listed - set(keys)):
            st["orphans"] += 1
            status, _, body = c.request("DELETE", f"/v1/organisations/{org}/keys/{kid}", auth=True)
            if status == 204:
                keys[kid] = {"org": org, "state": DELETED, "token": None,
                             "created_cycle": cycle - 1, "deleted_cycle": cycle, "orphan": True}
                st["acked_deletes"] += 1
            else:
                finding(st, "errors", f"cycle {cycle} check: delete of orphan {kid} answered {status}: {body[:200]!r}")
    for c in conns:
        c.close()
    save_state(a.state, st)
    live = sum(1 for k in keys.values() if k["state"] == LIVE)
    print(f"cycle {cycle} check: checked {checked} keys ({live} live), "
          f"lost {len(st['lost'])}, resurrected {len(st['resurrected'])}, errors {len(st['errors'])}")
    return 0


def check_key(st: dict, c: Conn, cycle: int, kid: str, k: dict, on: str) -> None:
    """One instance's view of one key: GET and its token agree with what
    was acknowledged (a delete in doubt is resolved by the first look)."""
    status, _, body = c.request("GET", f"/v1/keys/{kid}")
    if k["state"] == LIVE:
        if status != 200:
            finding(st, "lost", f"cycle {cycle} check: acknowledged key {kid} (org {k['org']}, created in cycle {k['created_cycle']}) answers GET {status}{on}")
    elif k["state"] in (DELETED, GONE):
        if status != 404:
            finding(st, "resurrected", f"cycle {cycle} check: key {kid} deleted ({k['state']}) in cycle {k.get('deleted_cycle')} answers GET {status}{on}")
    elif k["state"] == PENDING:
        if status == 200:
            k["state"] = LIVE  # the delete never became durable: allowed
        elif status == 404:
            k["state"] = GONE
        else:
            finding(st, "errors", f"cycle {cycle} check: GET {kid} answered {status}{on}: {body[:200]!r}")
    # tokens: live ones verify, deleted ones fail with unknown_key
    tok = k.get("token")
    if tok and k["state"] in (LIVE, DELETED, GONE):
        status, _, body = c.request("POST", "/v1/verify", {"token": tok})
        res = jbody(body) or {}
        if status != 200:
            finding(st, "errors", f"cycle {cycle} check: verify of {kid}'s token answered {status}{on}: {body[:200]!r}")
        elif k["state"] == LIVE and res.get("valid") is not True:
            finding(st, "errors", f"cycle {cycle} check: token of live key {kid} refused{on}: {res}")
        elif k["state"] != LIVE and (res.get("valid") is not False
                                     or (res.get("error") or {}).get("code") != "unknown_key"):
            finding(st, "resurrected", f"cycle {cycle} check: token of deleted key {kid} gives {res}{on}")


def bases(a) -> list[str]:
    """The instances to talk to: --bases if given, else --base."""
    return a.bases.split(",") if getattr(a, "bases", None) else [a.base]


class CrashLoad:
    """Mixed load until the server dies: creates in a few orgs, deletes of
    our own keys, verifies of live keys' (and deleted keys') tokens."""

    def __init__(self, a, st):
        self.a, self.st = a, st
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.orgs = a.orgs.split(",")
        self.cycle = st["cycles"] + 1
        self.busy: set[str] = set()  # keys with a delete in flight
        self.ops = {"create": 0, "delete": 0, "verify": 0}
        self.server_gone = False
        self.bases = bases(a)
        self.dead: set[str] = set()  # instances that stopped answering
        self.stopping: threading.Timer | None = None

    def live_keys(self, org=None):
        return [kid for kid, k in self.st["keys"].items()
                if k["state"] == LIVE and kid not in self.busy and (org is None or k["org"] == org)]

    def gone(self, base: str) -> None:
        # No complete response: that instance is dying or dead. With one,
        # stop everyone; with several, go on with the others for
        # --after-kill seconds (deletes meanwhile wait for its heartbeat to
        # lapse).
        with self.lock:
            self.server_gone = True
            self.dead.add(base)
            if len(self.dead) == len(self.bases):
                self.stop.set()
            elif self.stopping is None:
                self.stopping = threading.Timer(self.a.after_kill, self.stop.set)
                self.stopping.daemon = True
                self.stopping.start()

    def worker(self, n: int) -> None:
        rng = random.Random(os.urandom(8))
        conns = {b: Conn(b, self.a.admin, timeout=10) for b in self.bases}
        deadline = time.monotonic() + self.a.max_seconds
        ops = 0
        while not self.stop.is_set() and time.monotonic() < deadline and ops < self.a.max_ops:
            ops += 1
            r = rng.random()
            with self.lock:
                base = rng.choice([b for b in self.bases if b not in self.dead] or self.bases)
            c = conns[base]
            try:
                if n % 3 == 2:  # every third thread only verifies
                    self.verify(c, rng)
                elif r < 0.6:
                    self.create(c, rng)
                else:
                    self.delete(c, rng)
            except (OSError, http.client.HTTPException):
                self.gone(base)
        for c in conns.values():
            c.close()

    def create(self, c: Conn, rng) -> None:
        org = rng.choice(self.orgs)
        with self.lock:
            self.ops["create"] += 1
        try:
            status, h, body = c.request("POST", f"/v1/organisations/{org}/keys",
                                        {"name": f"crash-{self.cycle}-{rng.randrange(1 << 30)}"}, auth=True)
        except BaseException:
            with self.lock:
                self.st["in_doubt_creates"] += 1
            raise
        if status == 201:
            res = jbody(body) or {}
            kid, pem = res.get("id"), res.get("privateKey")
            with self.lock:
                self.st["acked_creates"] += 1
                self.st["keys"][kid] = {"org": org, "state": LIVE, "token": None,
                                        "created_cycle": self.cycle, "deleted_cycle": None,
                                        "via": c.port, "created_at": time.time()}
                if res.get("organisationId") != org or h.get("location") != f"/v1/keys/{kid}":
                    finding(self.st, "errors", f"cycle {self.cycle}: create answered {res.get('organisationId')!r}, Location {h.get('location')!r}")
            tok = mint(self.a.signet, pem, kid, org) if pem else None
            with self.lock:
                if kid in self.st["keys"]:
                    self.st["keys"][kid]["token"] = tok
        elif status == 400 and (jbody(body) or {}).get("code") == "quota_exceeded":
            with self.lock:
                self.st["quota_refusals"] += 1
        else:
            with self.lock:
                finding(self.st, "errors", f"cycle {self.cycle}: create in {org} answered {status}: {body[:200]!r}")

    def delete(self, c: Conn, rng) -> None:
        with self.lock:
            # keep a few live keys per org across cycles, so that every
            # check has acknowledged keys to find
            live = [kid for org in self.orgs
                    if len(ks := self.live_keys(org)) > self.a.keep_live for kid in ks]
            kid = rng.choice(live) if live else None
            if kid is not None:
                org = self.st["keys"][kid]["org"]
                self.busy.add(kid)
                self.ops["delete"] += 1
        if kid is None:
            return self.create(c, rng)
        try:
            status, _, body = c.request("DELETE", f"/v1/organisations/{org}/keys/{kid}", auth=True)
        except BaseException:
            with self.lock:
                self.st["keys"][kid]["state"] = PENDING
                self.st["keys"][kid]["deleted_cycle"] = self.cycle
                self.st["in_doubt_deletes"] += 1
            raise
        with self.lock:
            self.busy.discard(kid)
            k = self.st["keys"][kid]
            if status == 204:
                k["state"] = DELETED
                k["deleted_cycle"] = self.cycle
                self.st["acked_deletes"] += 1
            elif status == 404:
                finding(self.st, "lost", f"cycle {self.cycle}: acknowledged key {kid} answers DELETE 404")
                k["state"] = GONE
            else:
                finding(self.st, "errors", f"cycle {self.cycle}: DELETE {kid} answered {status}: {body[:200]!r}")

    def verify(self, c: Conn, rng) -> None:
        with self.lock:
            self.ops["verify"] += 1
            if rng.random() < 0.8:
                cand = [kid for kid in self.live_keys() if self.st["keys"][kid].get("token")]
            else:
                cand = [kid for kid, k in self.st["keys"].items()
                        if k["state"] == DELETED and k.get("token")]
            if not cand:
                time.sleep(0.01)  # nothing to verify yet
                return
            kid = rng.choice(cand)
            k = self.st["keys"][kid]
            state_before, tok = k["state"], k["token"]
        status, _, body = c.request("POST", "/v1/verify", {"token": tok})
        res = jbody(body) or {}
        with self.lock:
            self.st["verifies"] += 1
            now = self.st["keys"][kid]["state"]
            if status == 503 and len(self.bases) > 1 and (res.get("code") == "unavailable"):
                # an instance that cannot vouch refuses: counted, allowed
                self.st["unavailable"] = self.st.get("unavailable", 0) + 1
            elif status != 200:
                finding(self.st, "errors", f"cycle {self.cycle}: verify answered {status}: {body[:200]!r}")
            elif state_before == DELETED:
                if res.get("valid") is not False or (res.get("error") or {}).get("code") != "unknown_key":
                    finding(self.st, "resurrected", f"cycle {self.cycle}: token of deleted key {kid} gives {res}")
            elif now == LIVE and kid not in self.busy and res.get("valid") is not True:
                k = self.st["keys"][kid]
                where = (f" by port {c.port} (created through port {k.get('via')} "
                         f"{time.time() - k.get('created_at', 0):.3f} s earlier)") if len(self.bases) > 1 else ""
                finding(self.st, "errors", f"cycle {self.cycle}: token of live key {kid} refused{where}: {res}")

    def run(self) -> None:
        threads = [threading.Thread(target=self.worker, args=(i,), daemon=True)
                   for i in range(self.a.threads)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(self.a.max_seconds + 60)


def crash_load(a) -> int:
    st = load_state(a.state)
    load = CrashLoad(a, st)
    before = (st["acked_creates"], st["acked_deletes"])
    load.run()
    st["cycles"] += 1
    save_state(a.state, st)
    print(f"  load: {load.ops['create']} creates ({st['acked_creates'] - before[0]} acknowledged), "
          f"{load.ops['delete']} deletes ({st['acked_deletes'] - before[1]} acknowledged), "
          f"{load.ops['verify']} verifies; server {'killed' if load.server_gone else 'still up at the time bound'}")
    return 0


def crash_offline(a) -> int:
    """`signet keys list` output vs. the state after the final clean check."""
    st = load_state(a.state)
    with open(a.list_json) as f:
        listed = {x["id"]: x for x in json.load(f)["keys"]}
    keys = st["keys"]
    for kid, k in keys.items():
        if k["state"] == LIVE and kid not in listed:
            finding(st, "lost", f"offline: live key {kid} missing from `signet keys list`")
        elif k["state"] == LIVE and listed[kid]["organisationId"] != k["org"]:
            finding(st, "errors", f"offline: key {kid} listed under {listed[kid]['organisationId']}, created in {k['org']}")
        elif k["state"] in (DELETED, GONE) and kid in listed:
            finding(st, "resurrected", f"offline: deleted key {kid} in `signet keys list`")
        elif k["state"] == PENDING:
            finding(st, "errors", f"offline: key {kid} still unresolved")
    for kid in set(listed) - set(keys):
        finding(st, "errors", f"offline: `signet keys list` shows {kid}, which no request created")
    # audit: each acknowledged create has a key.created event, each
    # acknowledged delete a key.deleted one.
    if a.audit_json:
        with open(a.audit_json) as f:
            events = json.load(f)
        created = {e.get("keyId") for e in events if e.get("action") == "key.created"}
        deleted = {e.get("keyId") for e in events if e.get("action") == "key.deleted"}
        for kid, k in keys.items():
            if not k.get("orphan") and kid not in created:
                finding(st, "errors", f"audit: no key.created event for acknowledged key {kid}")
            if k["state"] in (DELETED, GONE) and kid not in deleted:
                finding(st, "errors", f"audit: no key.deleted event for deleted key {kid}")
    save_state(a.state, st)
    print(f"offline: `signet keys list` shows {len(listed)} keys; "
          f"{sum(1 for k in keys.values() if k['state'] == LIVE)} expected live")
    return 0


def crash_audit_dump(a) -> int:
    """All audit events of the given orgs, paged, to a JSON file."""
    c = Conn(a.base, a.admin)
    out = []
    for org in a.orgs.split(","):
        before = None
        for _ in range(10_000):  # bounded paging
            q = f"?limit=1000" + (f"&before={before}" if before else "")
            status, _, body = c.request("GET", f"/v1/organisations/{org}/audit{q}", auth=True)
            if status != 200:
                print(f"audit of {org} answered {status}: {body[:200]!r}", file=sys.stderr)
                return 1
            events = (jbody(body) or {}).get("events", [])
            out.extend(events)
            if len(events) < 1000:
                break
            before = events[-1]["id"]
    with open(a.out, "w") as f:
        json.dump(out, f)
    print(f"audit: {len(out)} events fetched")
    return 0


def crash_summary(a) -> int:
    st = load_state(a.state)
    for kind in ("lost", "resurrected", "errors"):
        for m in st[kind]:
            print(f"{kind}: {m}")
    print(f"  (in doubt at a kill: {st['in_doubt_creates']} creates, {st['in_doubt_deletes']} deletes; "
          f"{st['orphans']} unacknowledged creates found committed and removed; "
          f"{st['quota_refusals']} quota refusals; {st['verifies']} verifies under load"
          f"{' (%d answered 503 unavailable)' % st['unavailable'] if st.get('unavailable') else ''}; "
          f"{len(st['errors'])} other errors)")
    print(f"crash loop: {st['cycles']} cycles, {st['acked_creates']} acknowledged creates, "
          f"{st['acked_deletes']} acknowledged deletes, lost {len(st['lost'])}, "
          f"resurrected {len(st['resurrected'])}")
    return 1 if (st["lost"] or st["resurrected"] or st["errors"]) else 0


# -------------------------------------------------------------- soak ----


def rss_kb(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def pct(xs: list[float], p: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    i = min(len(xs) - 1, max(0, int(round(p / 100 * len(xs) + 0.5)) - 1))
    return xs[i]


KINDS = ("jwks", "verify", "create", "delete")


class Soak:
    def __init__(self, a):
        self.a = a
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.t0 = time.monotonic()
        self.lat: dict[tuple[int, str], list[float]] = {}
        self.count: dict[tuple[int, str], int] = {}
        self.errors: dict[tuple[int, str], int] = {}
        self.client_4xx: dict[str, int] = {}
        self.c4xx_min: dict[int, int] = {}
        self.error_samples: list[str] = []
        self.wrong: list[str] = []
        self.orgs = [f"soak-{i}" for i in range(a.orgs)]
        self.live: dict[str, list[tuple[str, str | None]]] = {o: [] for o in self.orgs}
        self.org_locks = {o: threading.Lock() for o in self.orgs}
        self.tokens: list[tuple[str, str]] = []  # (kid, token) of live keys
        self.rss: list[tuple[float, int | None]] = []
        self.pool: dict[int, tuple[int, int]] = {}  # minute -> (samples, empty)

    def minute(self) -> int:
        return int((time.monotonic() - self.t0) // 60)

    def record(self, kind: str, started: float, status: int | None, body: bytes, exc=None):
        dt = (time.monotonic() - started) * 1000
        m = int((started - self.t0) // 60)
        with self.lock:
            self.count[(m, kind)] = self.count.get((m, kind), 0) + 1
            self.lat.setdefault((m, kind), []).append(dt)
            if exc is not None or status is None or status >= 500:
                self.errors[(m, kind)] = self.errors.get((m, kind), 0) + 1
                if len(self.error_samples) < 20:
                    what = f"{type(exc).__name__}: {exc}" if exc is not None else f"{status} {body[:200]!r}"
                    self.error_samples.append(f"t={started - self.t0:.1f}s {kind}: {what}")
            elif status >= 400:
                code = (jbody(body) or {}).get("code", str(status))
                key = f"{kind} {status} {code}"
                self.client_4xx[key] = self.client_4xx.get(key, 0) + 1
                self.c4xx_min[m] = self.c4xx_min.get(m, 0) + 1

    def call(self, c: Conn, kind: str, method: str, path: str, body=None, auth=False, headers=None):
        started = time.monotonic()
        try:
            status, h, payload = c.request(method, path, body, auth=auth, headers=headers)
        except (OSError, http.client.HTTPException) as e:
            self.record(kind, started, None, b"", e)
            return None, {}, b""
        self.record(kind, started, status, payload)
        return status, h, payload

    def worker(self, n: int) -> None:
        rng = random.Random(os.urandom(8))
        c = Conn(self.a.base, self.a.admin, timeout=30)
        deadline = self.t0 + self.a.warmup + self.a.seconds
        etag = None
        ops = 0
        while not self.stop.is_set() and time.monotonic() < deadline and ops < self.a.max_ops:
            ops += 1
            if n < self.a.churn_threads:
                # create/delete under quota, paced: key generation is
                # CPU-bound and would otherwise starve the other kinds
                self.churn(c, rng)
                self.stop.wait(max(0.0, min(self.a.churn_pause, deadline - time.monotonic())))
                continue
            r = rng.random()
            if r < 0.45:
                hdr = {"If-None-Match": etag} if etag and rng.random() < 0.5 else None
                status, h, _ = self.call(c, "jwks", "GET", "/.well-known/jwks.json", headers=hdr)
                if status in (200, 304):
                    etag = h.get("etag", etag)
            else:
                with self.lock:
                    pick = rng.choice(self.tokens) if self.tokens else None
                if pick is None:
                    continue
                kid, tok = pick
                status, _, body = self.call(c, "verify", "POST", "/v1/verify", {"token": tok})
                if status == 200:
                    res = jbody(body) or {}
                    if res.get("valid") is not True:
                        with self.lock:
                            still_live = (kid, tok) in self.tokens
                            if still_live and len(self.wrong) < 20:
                                self.wrong.append(f"token of live key {kid} refused: {res}")
        c.close()

    def churn(self, c: Conn, rng) -> None:
        """Create under quota; at quota, delete the org's oldest key, or now
        and then try one create too many (expected 400 quota_exceeded)."""
        org = rng.choice(self.orgs)
        if not self.org_locks[org].acquire(timeout=1):
            return
        try:
            with self.lock:
                full = len(self.live[org]) >= self.a.quota
            if full and rng.random() < 0.2:
                status, _, body = self.call(c, "create", "POST", f"/v1/organisations/{org}/keys",
                                            {"name": "one too many"}, auth=True)
                if status == 201:
                    with self.lock:
                        if len(self.wrong) < 20:
                            self.wrong.append(f"create in {org} beyond the quota answered 201")
                    self.adopt(org, jbody(body) or {})
            elif full or (self.live[org] and rng.random() < 0.3):
                with self.lock:
                    kid, tok = self.live[org].pop(0)
                    if tok and (kid, tok) in self.tokens:
                        self.tokens.remove((kid, tok))
                self.call(c, "delete", "DELETE", f"/v1/organisations/{org}/keys/{kid}", auth=True)
            else:
                status, _, body = self.call(c, "create", "POST", f"/v1/organisations/{org}/keys",
                                            {"name": f"soak-{rng.randrange(1 << 30)}"}, auth=True)
                if status == 201:
                    self.adopt(org, jbody(body) or {})
        finally:
            self.org_locks[org].release()

    def adopt(self, org: str, res: dict) -> None:
        kid, pem = res.get("id"), res.get("privateKey")
        tok = mint(self.a.signet, pem, kid, org, "2h") if pem else None
        with self.lock:
            self.live[org].append((kid, tok))
            if tok:
                self.tokens.append((kid, tok))

    def sampler(self) -> None:
        # every 10 s; the baseline is the sample at the end of the warm-up
        while not self.stop.wait(10):
            self.rss.append((time.monotonic() - self.t0, rss_kb(self.a.pid)))

    def pool_sampler(self) -> None:
        """Once a second, the 2048-bit key pool's depth from /metrics: a
        create that finds it empty waits for an RSA generation."""
        c = Conn(self.a.base, self.a.admin)
        while not self.stop.wait(1):
            m = self.minute()
            try:
                status, _, body = c.request("GET", "/metrics")
            except (OSError, http.client.HTTPException):
                continue
            depth = next((float(line.rsplit(" ", 1)[1]) for line in body.decode().splitlines()
                          if line.startswith('signet_keypool_depth{bits="2048"}')), None)
            if status == 200 and depth is not None:
                with self.lock:
                    n, empty = self.pool.get(m, (0, 0))
                    self.pool[m] = (n + 1, empty + (depth == 0))
        c.close()

    def run(self) -> int:
        rss_start = rss_kb(self.a.pid)
        self.rss.append((0.0, rss_start))
        for target in (self.sampler, self.pool_sampler):
            threading.Thread(target=target, daemon=True).start()
        threads = [threading.Thread(target=self.worker, args=(i,), daemon=True)
                   for i in range(self.a.threads)]
        for t in threads:
            t.start()
        baseline = None
        while any(t.is_alive() for t in threads):
            for t in threads:
                t.join(1)
            el = time.monotonic() - self.t0
            if baseline is None and el >= self.a.warmup:
                baseline = (el, rss_kb(self.a.pid))
            if el > self.a.warmup + self.a.seconds + 120:
                self.stop.set()
                break
        self.stop.set()
        elapsed = time.monotonic() - self.t0
        rss_end = rss_kb(self.a.pid)
        self.rss.append((elapsed, rss_end))
        return self.report(elapsed, rss_start, baseline, rss_end)

    def report(self, elapsed, rss_start, baseline, rss_end) -> int:
        minutes = sorted({m for m, _ in self.count})
        total = sum(self.count.values())
        errs = sum(self.errors.values())
        c4 = sum(self.client_4xx.values())
        print(f"## signet soak: {elapsed:.0f} s, {self.a.threads} threads "
              f"({self.a.churn_threads} create/delete, paced {self.a.churn_pause} s; the rest JWKS/verify), "
              f"ORGKEYS_MAX={self.a.quota}, {len(self.orgs)} orgs\n")
        print("p99 latency in ms per minute (requests in parentheses); errors = 5xx or no complete response; "
              f"the first {self.a.warmup:.0f} s are the warm-up; key pool empty = share of 1 s /metrics samples "
              "with no pre-generated 2048-bit key\n")
        print("| minute | " + " | ".join(f"{k} p99 (n)" for k in KINDS)
              + " | errors | 4xx | key pool empty | RSS at minute end (MiB) |")
        print("|---:|" + "---:|" * len(KINDS) + "---:|---:|---:|---:|")
        for m in minutes:
            cells = []
            for k in KINDS:
                n = self.count.get((m, k), 0)
                cells.append(f"{pct(self.lat.get((m, k), []), 99):.1f} ({n})" if n else "– (0)")
            e = sum(self.errors.get((m, k), 0) for k in KINDS)
            rs = [r for t, r in self.rss if m * 60 <= t < (m + 1) * 60 + 5 and r]
            rss = f"{rs[-1] / 1024:.1f}" if rs else "–"
            n, empty = self.pool.get(m, (0, 0))
            pool = f"{empty * 100 / n:.0f} %" if n else "–"
            print(f"| {m + 1} | " + " | ".join(cells) + f" | {e} | {self.c4xx_min.get(m, 0)} | {pool} | {rss} |")
        print("\n| kind | requests | errors | 4xx | p50 ms | p99 ms | max ms |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for k in KINDS:
            xs = [x for (m, kk), v in self.lat.items() if kk == k for x in v]
            n = sum(v for (m, kk), v in self.count.items() if kk == k)
            e = sum(v for (m, kk), v in self.errors.items() if kk == k)
            k4 = sum(v for key, v in self.client_4xx.items() if key.startswith(k + " "))
            if n:
                print(f"| {k} | {n} | {e} | {k4} | {pct(xs, 50):.1f} | {pct(xs, 99):.1f} | {max(xs):.1f} |")
            else:
                print(f"| {k} | 0 | 0 | 0 | – | – | – |")
        print(f"| **all** | {total} | {errs} | {c4} | | | |")
        print()
        mib = lambda kb: f"{kb / 1024:.1f} MiB" if kb else "n/a"
        print(f"- throughput: {total / elapsed:.0f} requests/s")
        print(f"- expected 4xx: " + (", ".join(f"{k}: {v}" for k, v in sorted(self.client_4xx.items())) or "none"))
        print(f"- RSS: {mib(rss_start)} at start; baseline {mib(baseline[1] if baseline else None)} "
              f"after a {self.a.warmup:.0f} s warm-up (t={baseline[0]:.0f} s); {mib(rss_end)} at the end"
              if baseline else f"- RSS: {mib(rss_start)} at start, {mib(rss_end)} at the end (run shorter than the warm-up)")
        growth = None
        if baseline and baseline[1] and rss_end:
            growth = (rss_end - baseline[1]) / baseline[1] * 100
            print(f"- RSS growth since the baseline: {growth:+.1f} % (target ≤ 10 %)")
            # A leak keeps its pace; a cache that is still filling slows down.
            half = baseline[0] + (elapsed - baseline[0]) / 2
            mid = [r for t, r in self.rss if t >= half and r]
            if mid:
                late = (rss_end - mid[0]) / mid[0] * 100
                print(f"- RSS growth over the second half of the measured window: {late:+.1f} %")
        samples = ", ".join(f"{t:.0f}s={r / 1024:.1f}" for t, r in self.rss if r)
        print(f"- RSS samples (MiB): {samples}")
        if self.error_samples:
            print("- error samples: " + "; ".join(self.error_samples))
        if self.wrong:
            print("- wrong verification results: " + "; ".join(self.wrong))
        ok = errs == 0 and not self.wrong and (growth is None or growth <= 10)
        print(f"\nsoak: {total} requests, {errs} errors, {c4} expected 4xx, "
              f"RSS growth {growth:+.1f} %" if growth is not None else
              f"\nsoak: {total} requests, {errs} errors, {c4} expected 4xx")
        return 0 if ok else 1


def soak(a) -> int:
    return Soak(a).run()


# -------------------------------------------------------------- main ----


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)

    def common(sp):
        sp.add_argument("--base", required=True, help="http://127.0.0.1:PORT")
        sp.add_argument("--admin", default=os.environ.get("SIGNET_ADMIN_TOKEN", ""))
        sp.add_argument("--signet", default="target/release/signet")

    for name in ("crash-check", "crash-load"):
        sp = sub.add_parser(name)
        common(sp)
        sp.add_argument("--state", required=True)
        sp.add_argument("--orgs", default="crash-a,crash-b,crash-c")
        sp.add_argument("--threads", type=int, default=6)
        sp.add_argument("--max-seconds", type=float, default=20)
        sp.add_argument("--max-ops", type=int, default=5000)
        sp.add_argument("--keep-live", type=int, default=3,
                        help="deletes only touch orgs with more live keys than this")
        sp.add_argument("--bases", help="several instances, comma-separated: requests are "
                        "spread over them, checks ask each")
        sp.add_argument("--after-kill", type=float, default=2.5,
                        help="with several instances, seconds of load on the others after one died")
    sp = sub.add_parser("crash-audit")
    common(sp)
    sp.add_argument("--orgs", default="crash-a,crash-b,crash-c")
    sp.add_argument("--out", required=True)
    sp = sub.add_parser("crash-offline")
    sp.add_argument("--state", required=True)
    sp.add_argument("--list-json", required=True)
    sp.add_argument("--audit-json")
    sp = sub.add_parser("crash-summary")
    sp.add_argument("--state", required=True)
    sp = sub.add_parser("soak")
    common(sp)
    sp.add_argument("--pid", type=int, required=True)
    sp.add_argument("--seconds", type=float, default=600, help="measured, after the warm-up")
    sp.add_argument("--warmup", type=float, default=600)
    sp.add_argument("--threads", type=int, default=6)
    sp.add_argument("--orgs", type=int, default=4)
    sp.add_argument("--quota", type=int, default=5)
    sp.add_argument("--max-ops", type=int, default=5_000_000)
    sp.add_argument("--churn-threads", type=int, default=2)
    sp.add_argument("--churn-pause", type=float, default=0.25)
    a = p.parse_args()
    return {
        "crash-check": crash_check,
        "crash-load": crash_load,
        "crash-audit": crash_audit_dump,
        "crash-offline": crash_offline,
        "crash-summary": crash_summary,
        "soak": soak,
    }[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
