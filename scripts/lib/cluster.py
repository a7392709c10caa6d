#!/usr/bin/env python3
"""The checks of scripts/cluster.sh: several `signet serve` instances on one
PostgreSQL. Standard library only; talks to 127.0.0.1 only; every loop is
bounded in count and in time. The shell script starts and stops the
processes (and PostgreSQL); each subcommand here checks one situation,
prints what it measured, and exits 1 if the guarantee did not hold (3 if
only a known shortfall of the current build did: printed as KNOWN-FAIL).

Subcommands:
  revoke     rounds of: create on A, mint a token, change on B (delete, or
             disable), then verify on A and C at once, while verifier
             threads hammer C with the same token; no request *sent* after
             the change answered may be accepted
  quota      concurrent creates spread over every instance against one
             organisation: exactly the quota exists afterwards
  killed-prepare  a key and its token, known to every instance, for:
  killed     one instance was just killed with SIGKILL: the others keep
             serving and deletes complete (at first within max_staleness
             plus a margin, then at once, when its heartbeat has lapsed)
  stopped    SIGSTOP an instance, delete elsewhere: the delete answers
             within max_staleness plus a margin; after SIGCONT the stopped
             instance never accepts the deleted key's token
  pg-prepare a key and its token, known to every instance, for the next two
  pg-down    with PostgreSQL stopped: JWK Sets answer, writes 503, then
             verification 503 (refuse) or 200 (serve)
  pg-back    PostgreSQL back: everything recovers, no restart
  latency    (benches/cluster-delete.sh) N creates through the first
             instance, then N sequential deletes spread over every instance,
             each timed from sending to the whole answer; with what the
             instances' /metrics say the deletes waited for the others
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import signal
import sys
import threading
import time

sys.dont_write_bytecode = True  # no __pycache__ in the repository
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from driver import Conn, jbody, mint  # noqa: E402

# How much longer than max_staleness a delete may wait for an instance that
# has not applied it, as these checks allow (signet's own margin is 100 ms;
# the rest is for a loaded machine).
MARGIN = 1.0


class Failed(Exception):
    """A check did not hold."""


def report(wrong: list[str], known: list[str] = ()) -> int:
    """Prints the failures (the first ten of each kind); the exit code."""
    for label, xs in (("FAIL", wrong), ("KNOWN-FAIL", known)):
        for w in xs[:10]:
            print(f"  {label}: {w}")
        if len(xs) > 10:
            print(f"  {label}: … and {len(xs) - 10} more")
    return 1 if wrong else 3 if known else 0


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[max(0, math.ceil(p / 100 * len(xs)) - 1)] if xs else float("nan")


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def create(c: Conn, org: str, name: str, expect: int = 201):
    """Creates an ES256 key (fast to generate); returns (status, body)."""
    status, _, body = c.request("POST", f"/v1/organisations/{org}/keys",
                                {"name": name, "algorithm": "ES256"}, auth=True)
    if expect is not None and status != expect:
        raise Failed(f"create in {org} answered {status}, expected {expect}: {body[:200]!r}")
    return status, jbody(body) or {}


def new_key(c: Conn, org: str, name: str, signet: str):
    """A key created through `c` and a token of it: (kid, token)."""
    _, res = create(c, org, name)
    kid, pem = res["id"], res["privateKey"]
    token = mint(signet, pem, kid, org, "1h")
    if not token:
        raise Failed(f"`signet token` could not mint a token for {kid}")
    return kid, token


def verify(c: Conn, token: str):
    """POST /v1/verify: (status, accepted, error code or None)."""
    status, _, body = c.request("POST", "/v1/verify", {"token": token})
    res = jbody(body) or {}
    accepted = status == 200 and res.get("valid") is True
    code = (res.get("error") or {}).get("code") or res.get("code")
    return status, accepted, code


def delete(c: Conn, org: str, kid: str) -> tuple[int, float]:
    """DELETE the key; (status, seconds until the answer was read)."""
    t0 = time.monotonic()
    status, _, _ = c.request("DELETE", f"/v1/organisations/{org}/keys/{kid}", auth=True)
    return status, time.monotonic() - t0


def disable(c: Conn, org: str, kid: str) -> tuple[int, float]:
    t0 = time.monotonic()
    status, _, _ = c.request("PATCH", f"/v1/organisations/{org}/keys/{kid}",
                             {"state": "disabled"}, auth=True)
    return status, time.monotonic() - t0


def refused(status: int, accepted: bool, code, expected: str) -> str | None:
    """None if (status, verdict) is a refusal this check allows: the
    expected code, or 503 from an instance that cannot vouch; else why not."""
    if accepted:
        return "ACCEPTED"
    if status == 503 or code == expected:
        return None
    return f"refused with {status} {code}, expected {expected}"


def label(status: int, accepted: bool, code) -> str:
    """One verdict as the summaries count it."""
    return "ACCEPTED" if accepted else "503" if status == 503 else str(code)


def tally(labels) -> str:
    """`label`s counted, as "code: n, …" in a stable order."""
    return ", ".join(f"{k}: {v}" for k, v in sorted(collections.Counter(labels).items()))


def conns(bases: str, admin: str) -> list[Conn]:
    return [Conn(b, admin, timeout=30) for b in bases.split(",")]


# ----------------------------------------------------------- revoke ----


class Hammer:
    """Verifier threads sending the current token to one instance without
    pause; each request is recorded with the monotonic time it was sent."""

    def __init__(self, base: str, threads: int):
        self.base = base
        self.current: tuple[int, str | None] = (-1, None)
        self.stop = threading.Event()
        self.records: list[list] = [[] for _ in range(threads)]
        self.errors = 0
        self.threads = [threading.Thread(target=self.run, args=(i,), daemon=True)
                        for i in range(threads)]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def finish(self) -> list[tuple]:
        self.stop.set()
        for t in self.threads:
            t.join(60)
        return [r for rs in self.records for r in rs]

    def run(self, n: int) -> None:
        c = Conn(self.base, "", timeout=30)
        out = self.records[n]
        while not self.stop.is_set():
            rnd, token = self.current
            if token is None:
                time.sleep(0.001)
                continue
            sent = time.monotonic()
            try:
                status, accepted, code = verify(c, token)
            except OSError:
                self.errors += 1
                time.sleep(0.01)
                continue
            out.append((rnd, sent, status, accepted, code))
        c.close()


def revoke(a) -> int:
    ca, cb, cc = conns(a.bases, a.admin)
    expected = {"delete": "unknown_key", "disable": "key_disabled"}[a.action]
    change = {"delete": delete, "disable": disable}[a.action]
    ok_status = {"delete": 204, "disable": 200}[a.action]
    hammer = Hammer(a.bases.split(",")[2], a.verifiers)
    hammer.start()
    answered: dict[int, float] = {}
    took: list[float] = []
    wrong: list[str] = []
    immediate: dict[str, list[str]] = {"A": [], "C": []}
    c_lookups = 0
    t_start = time.monotonic()
    try:
        for rnd in range(a.rounds):
            kid, token = new_key(ca, a.org, f"{a.action} round {rnd}", a.signet)
            # a key created elsewhere verifies at once (an unknown kid is
            # looked up); a few tries in case of a rate-limited look-up
            for tries in range(1, 51):
                status, accepted, code = verify(cc, token)
                if accepted:
                    break
                time.sleep(0.02)
            else:
                raise Failed(f"round {rnd}: C never accepted the new key's token ({status} {code})")
            c_lookups += tries > 1
            hammer.current = (rnd, token)
            time.sleep(a.before)  # let the hammer accept it a few times
            status, dt = change(cb, a.org, kid)
            answered[rnd] = time.monotonic()
            if status != ok_status:
                raise Failed(f"round {rnd}: {a.action} on B answered {status}")
            took.append(dt)
            for name, c in (("A", ca), ("C", cc)):
                status, accepted, code = verify(c, token)
                immediate[name].append(label(status, accepted, code))
                why = refused(status, accepted, code, expected)
                if why:
                    wrong.append(f"round {rnd}: {name} right after the {a.action} answered: {why}")
            if a.action == "disable":  # free the quota slot
                status, _ = delete(cb, a.org, kid)
                if status != 204:
                    raise Failed(f"round {rnd}: delete of the disabled key answered {status}")
    finally:
        records = hammer.finish()
    elapsed = time.monotonic() - t_start
    after = [r for r in records if r[0] in answered and r[1] > answered[r[0]]]
    before = [r for r in records if r[0] in answered and r[1] <= answered[r[0]]]
    accepted_after = [r for r in after if r[3]]
    for rnd, sent, status, accepted, code in accepted_after[:10]:
        wrong.append(f"round {rnd}: C accepted a request sent {ms(sent - answered[rnd])} after the {a.action} answered")
    print(f"  {a.rounds} rounds in {elapsed:.1f} s; {a.action} on B p50 {ms(pct(took, 50))}, "
          f"p99 {ms(pct(took, 99))}, max {ms(max(took))}")
    print(f"  right after each answer: A {tally(immediate['A'])}; C {tally(immediate['C'])}")
    print(f"  hammer on C ({a.verifiers} threads): {len(records)} requests, "
          f"{sum(1 for r in before if r[3])} accepted before the answer; "
          f"{len(after)} sent after the answer: {tally(label(*r[2:]) for r in after)}; "
          f"{hammer.errors} connection errors")
    if c_lookups:
        print(f"  (C needed more than one try to accept a new key in {c_lookups} rounds)")
    if not after:
        wrong.append("no verifier request was sent after an answer: the check proved nothing")
    print(f"  acceptances after the answer: {len(accepted_after)}")
    return report(wrong)


# ------------------------------------------------------------ quota ----


def quota(a) -> int:
    bases = a.bases.split(",")
    results: list[tuple[int, str | None]] = []
    lock = threading.Lock()
    barrier = threading.Barrier(a.n)

    def one(i: int) -> None:
        c = Conn(bases[i % len(bases)], a.admin, timeout=60)
        barrier.wait(30)
        try:
            status, res = create(c, a.org, f"quota {i}", expect=None)
            r = (status, res.get("code"))
        except OSError as e:
            r = (0, str(e))
        with lock:
            results.append(r)
        c.close()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(a.n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    created = sum(1 for s, _ in results if s == 201)
    over = sum(1 for s, code in results if s == 400 and code == "quota_exceeded")
    other = [r for r in results if r[0] not in (201, 400) or (r[0] == 400 and r[1] != "quota_exceeded")]
    wrong = []
    listed = []
    for b in bases:
        c = Conn(b, a.admin)
        status, _, body = c.request("GET", f"/v1/organisations/{a.org}/keys", auth=True)
        ids = sorted(k["id"] for k in (jbody(body) or {}).get("keys", []))
        listed.append(ids)
        if status != 200 or len(ids) != a.quota:
            wrong.append(f"{b} lists {len(ids)} keys (status {status}), expected {a.quota}")
    if any(ids != listed[0] for ids in listed):
        wrong.append("the instances list different keys")
    if created != a.quota or created + over != a.n or other:
        wrong.append(f"{created} created, {over} quota_exceeded, other answers {other}")
    print(f"  {a.n} concurrent creates over {len(bases)} instances, quota {a.quota}: "
          f"{created} created, {over} quota_exceeded, {len(other)} other; "
          f"each instance lists {', '.join(str(len(x)) for x in listed)}")
    return report(wrong)


# ----------------------------------------------------------- killed ----


def killed(a) -> int:
    """`bases` are the survivors; another instance was killed with SIGKILL
    just before this ran, after `killed-prepare` made a key."""
    killed_at = time.monotonic()
    st = json.load(open(a.state))
    kid, token = st["kid"], st["token"]
    cs = conns(a.bases, a.admin)
    limit = a.max_staleness + MARGIN
    wrong = []
    for i, c in enumerate(cs):
        status, accepted, code = verify(c, token)
        jwks, _, _ = c.request("GET", "/.well-known/jwks.json")
        if not accepted or jwks != 200:
            wrong.append(f"survivor {i} right after the kill: verify {status} {code}, JWK Set {jwks}")
    status, first = delete(cs[-1], a.org, kid)
    if status != 204 or first > limit:
        wrong.append(f"the first delete after the kill answered {status} after {ms(first)} (limit {ms(limit)})")
    for i, c in enumerate(cs):
        why = refused(*verify(c, token), "unknown_key")
        if why:
            wrong.append(f"survivor {i} after the delete: {why}")
    # once the dead instance's heartbeat has lapsed, deletes do not wait
    kids = [new_key(cs[i % len(cs)], a.org, f"after the kill {i}", a.signet)[0] for i in range(a.deletes)]
    time.sleep(max(0.0, killed_at + a.max_staleness + 0.2 - time.monotonic()))
    later = []
    for i, k in enumerate(kids):
        status, dt = delete(cs[i % len(cs)], a.org, k)
        later.append(dt)
        if status != 204:
            wrong.append(f"delete {i} after the heartbeat lapsed answered {status}")
    if max(later) > a.max_staleness / 2:
        wrong.append(f"a delete after the heartbeat lapsed took {ms(max(later))}: the dead instance still counts")
    print(f"  kill -9: survivors kept verifying; first delete {ms(first)} (limit {ms(limit)}); "
          f"{len(later)} deletes after the heartbeat lapsed: p50 {ms(pct(later, 50))}, max {ms(max(later))}")
    return report(wrong)


def killed_prepare(a) -> int:
    """A key and its token for `killed`, accepted by every instance."""
    cs = conns(a.bases, a.admin)
    kid, token = new_key(cs[0], a.org, "before the kill", a.signet)
    for c in cs:
        if not verify(c, token)[1]:
            raise Failed("an instance refused a live key's token before the kill")
    with open(a.state, "w") as f:
        json.dump({"kid": kid, "token": token}, f)
    return 0


# ---------------------------------------------------------- stopped ----


def stopped(a) -> int:
    """bases = A,C; pid = C's, stopped and continued here."""
    ca, cc = conns(a.bases, a.admin)
    limit = a.max_staleness + MARGIN
    wrong = []
    kid, token = new_key(ca, a.org, "to be deleted while C is stopped", a.signet)
    if not verify(cc, token)[1]:
        raise Failed("C refused a live key's token before SIGSTOP")
    os.kill(a.pid, signal.SIGSTOP)
    try:
        status, took = delete(ca, a.org, kid)
        answered = time.monotonic()
        if status != 204 or took > limit:
            wrong.append(f"the delete with C stopped answered {status} after {ms(took)} (limit {ms(limit)})")
        # requests sent to C while it is still stopped wait in its socket
        hammer = Hammer(a.bases.split(",")[1], a.verifiers)
        hammer.current = (0, token)
        hammer.start()
        time.sleep(0.3)
    finally:
        os.kill(a.pid, signal.SIGCONT)
    time.sleep(a.after)
    records = hammer.finish()
    for rnd, sent, status, accepted, code in records:
        why = refused(status, accepted, code, "unknown_key")
        if why and sent > answered:
            wrong.append(f"C, {ms(sent - answered)} after the delete answered: {why}")
    if not records:
        wrong.append("no request reached C after SIGCONT")
    print(f"  SIGSTOP C: the delete on A answered in {ms(took)} (limit {ms(limit)}); "
          f"after SIGCONT C answered {len(records)} requests: {tally(label(*r[2:]) for r in records)}")
    return report(wrong)


# ---------------------------------------------------- PostgreSQL down ----


def pg_prepare(a) -> int:
    cs = conns(a.bases, a.admin)
    kid, token = new_key(cs[0], a.org, "through the outage", a.signet)
    spare, _ = new_key(cs[0], a.org, "to delete during the outage", a.signet)
    for i, c in enumerate(cs):
        for _ in range(50):
            if verify(c, token)[1]:
                break
            time.sleep(0.02)
        else:
            raise Failed(f"instance {i} refused a live key's token")
    with open(a.state, "w") as f:
        json.dump({"kid": kid, "token": token, "spare": spare}, f)
    return 0


def pg_down(a) -> int:
    """bases = the refusing instances, serve = the one that serves stale."""
    st = json.load(open(a.state))
    cs = conns(a.bases, a.admin)
    serve = Conn(a.serve, a.admin)
    down_at = time.monotonic()  # PostgreSQL stopped just before this ran
    wrong, known = [], []
    for i, c in enumerate(cs + [serve]):
        status, _, body = c.request("GET", "/.well-known/jwks.json")
        kids = [k.get("kid") for k in (jbody(body) or {}).get("keys", [])]
        if status != 200 or st["kid"] not in kids:
            wrong.append(f"instance {i}: JWK Set {status} without the key")
        status, _, _ = c.request("GET", f"/v1/keys/{st['kid']}")
        if status != 200:
            known.append(f"instance {i}: GET /v1/keys/{{id}} answered {status} (read from the "
                         "database, not from memory like the JWK Sets)")
    status, _ = create(cs[0], a.org, "during the outage", expect=None)
    if status != 503:
        wrong.append(f"a create during the outage answered {status}, expected 503")
    status, _ = delete(cs[-1], a.org, st["spare"])
    if status != 503:
        wrong.append(f"a delete during the outage answered {status}, expected 503")
    time.sleep(max(0.0, down_at + a.max_staleness + 0.5 - time.monotonic()))
    for i, c in enumerate(cs):
        status, accepted, code = verify(c, st["token"])
        auth, _, _ = c.request("GET", "/v1/auth", headers={"Authorization": f"Bearer {st['token']}"})
        ready, _, _ = c.request("GET", "/readyz")
        if (status, code, auth, ready) != (503, "unavailable", 503, 503):
            wrong.append(f"instance {i} after max_staleness: verify {status} {code}, auth {auth}, readyz {ready}")
    status, accepted, code = verify(serve, st["token"])
    if not accepted:
        wrong.append(f"the `serve` instance after max_staleness: verify {status} {code}, expected valid")
    print(f"  PostgreSQL stopped: JWK Sets answered; writes 503; "
          f"after {a.max_staleness + 0.5:.1f} s verification 503 on {len(cs)} (refuse), "
          f"{'200 valid' if accepted else f'{status} {code}'} on the `serve` instance")
    return report(wrong, known)


def pg_back(a) -> int:
    st = json.load(open(a.state))
    cs = conns(a.bases, a.admin)
    t0 = time.monotonic()
    pending = set(range(len(cs)))
    while pending and time.monotonic() - t0 < a.within:
        for i in sorted(pending):
            try:
                ready, _, _ = cs[i].request("GET", "/readyz")
                ok = ready == 200 and verify(cs[i], st["token"])[1]
            except OSError:
                ok = False
            if ok:
                pending.discard(i)
        time.sleep(0.05)
    recovered = time.monotonic() - t0
    wrong = [f"instance {i} did not verify again within {a.within} s" for i in sorted(pending)]
    if not pending:
        # writes work through every instance; the delete refused during the
        # outage did not happen
        status, _, _ = cs[0].request("GET", f"/v1/keys/{st['spare']}")
        if status != 200:
            wrong.append(f"the key whose delete answered 503 answers GET {status}")
        for i, c in enumerate(cs):
            kid, token = new_key(c, a.org, f"after the outage {i}", a.signet)
            status, _ = delete(cs[(i + 1) % len(cs)], a.org, kid)
            if status != 204:
                wrong.append(f"delete after the outage answered {status}")
            for j, other in enumerate(cs):
                why = refused(*verify(other, token), "unknown_key")
                if why:
                    wrong.append(f"instance {j} after a delete after the outage: {why}")
        for k in (st["spare"], st["kid"]):
            delete(cs[0], a.org, k)
    print(f"  PostgreSQL back: every instance ready and verifying after {recovered:.1f} s; "
          f"creates and deletes through each work")
    return report(wrong)


# ---------------------------------------------------------- latency ----


def waited(c: Conn) -> tuple[float, float]:
    """(sum, count) of signet_cluster_revocation_wait_seconds from /metrics."""
    _, _, body = c.request("GET", "/metrics")
    got = {}
    for line in body.decode().splitlines():
        for name in ("sum", "count"):
            if line.startswith(f"signet_cluster_revocation_wait_seconds_{name} "):
                got[name] = float(line.split()[1])
    return got.get("sum", 0.0), got.get("count", 0.0)


def latency(a) -> int:
    cs = conns(a.bases, a.admin)
    for i in range(a.warmup):  # connections, caches, the database's plans
        _, res = create(cs[0], a.org, f"warm-up {i}")
        status, _ = delete(cs[i % len(cs)], a.org, res["id"])
        if status != 204:
            raise Failed(f"warm-up delete answered {status}")
    kids = [create(cs[0], a.org, f"latency {i}")[1]["id"] for i in range(a.n)]
    before = [waited(c) for c in cs]
    took = []
    for i, kid in enumerate(kids):
        status, dt = delete(cs[i % len(cs)], a.org, kid)
        if status != 204:
            raise Failed(f"delete {i} answered {status}")
        took.append(dt)
    after = [waited(c) for c in cs]
    wait_sum = sum(x[0] - y[0] for x, y in zip(after, before))
    wait_n = sum(x[1] - y[1] for x, y in zip(after, before))
    print(json.dumps({
        "instances": len(cs), "n": len(took),
        "p50": pct(took, 50) * 1000, "p90": pct(took, 90) * 1000, "p99": pct(took, 99) * 1000,
        "max": max(took) * 1000, "mean": sum(took) / len(took) * 1000,
        "wait_mean": wait_sum / wait_n * 1000 if wait_n else None,
    }))
    return 0


# -------------------------------------------------------------- main ----


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)

    def common(name):
        sp = sub.add_parser(name)
        sp.add_argument("--bases", required=True, help="http://127.0.0.1:PORT,…")
        sp.add_argument("--admin", default=os.environ.get("SIGNET_ADMIN_TOKEN", ""))
        sp.add_argument("--signet", default="target/release/signet")
        sp.add_argument("--org", required=True)
        sp.add_argument("--max-staleness", type=float, default=2.0, help="seconds")
        return sp

    sp = common("revoke")
    sp.add_argument("--action", choices=("delete", "disable"), default="delete")
    sp.add_argument("--rounds", type=int, default=200)
    sp.add_argument("--verifiers", type=int, default=3)
    sp.add_argument("--before", type=float, default=0.005,
                    help="seconds the hammer runs on a live token before the change")
    sp = common("quota")
    sp.add_argument("--n", type=int, default=20)
    sp.add_argument("--quota", type=int, default=5)
    sp = common("killed")
    sp.add_argument("--state", required=True)
    sp.add_argument("--deletes", type=int, default=5)
    sp = common("killed-prepare")
    sp.add_argument("--state", required=True)
    sp = common("stopped")
    sp.add_argument("--pid", type=int, required=True)
    sp.add_argument("--verifiers", type=int, default=2)
    sp.add_argument("--after", type=float, default=2.0, help="seconds of requests after SIGCONT")
    for name in ("pg-prepare", "pg-down", "pg-back"):
        sp = common(name)
        sp.add_argument("--state", required=True)
        sp.add_argument("--serve", help="the instance with stale_verification = serve")
        sp.add_argument("--within", type=float, default=20.0, help="seconds to recover")
    sp = common("latency")
    sp.add_argument("--n", type=int, default=500)
    sp.add_argument("--warmup", type=int, default=20)
    a = p.parse_args()
    handlers = {"latency": latency, "revoke": revoke, "quota": quota, "killed": killed,
                "killed-prepare": killed_prepare, "stopped": stopped,
                "pg-prepare": pg_prepare, "pg-down": pg_down, "pg-back": pg_back}
    try:
        return handlers[a.cmd](a)
    except Failed as e:
        print(f"  FAIL: {e}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
