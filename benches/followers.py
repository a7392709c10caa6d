#!/usr/bin/env python3
"""Follower benchmarks (docs/followers.md), against a signet binary on sled:

    python3 benches/followers.py BIN delete N FOLLOWERS   # DELETE p50/p99 with FOLLOWERS followers
    python3 benches/followers.py BIN auth ROUNDS          # GET /v1/auth, follower vs upstream

`auth`: one RS256 token repeated, wrk -t2 -c64 -d5s (wrk on PATH),
alternating upstream and follower ROUNDS times each; the median rate of
each and their ratio.

(Idle subscribers' memory and the feed's fan-out: benches/feed_fanout.rs.)

Standard library only; talks to 127.0.0.1 only; starts and stops its own
processes. A measurement, not a test: it asserts nothing.
"""
import json, os, subprocess, sys, time, socket, statistics, urllib.request, threading
BIN=sys.argv[1]; mode=sys.argv[2]
ADMIN="operator-token-0123456789abcdef"; FT="follower-token-0123456789abcdef"
def port():
    s=socket.socket(); s.bind(("127.0.0.1",0)); p=s.getsockname()[1]; s.close(); return p
procs=[]
def start(env, args, d):
    p=port(); e=dict(os.environ, SIGNET_LISTEN=f"127.0.0.1:{p}", SIGNET_LOG="warn", SIGNET_DATA_DIR=d, **env)
    pr=subprocess.Popen([BIN,"serve",*args], env=e, cwd="/tmp", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs.append(pr)
    base=f"http://127.0.0.1:{p}"
    for _ in range(300):
        try:
            if urllib.request.urlopen(base+"/readyz",timeout=1).status==200: return base, pr
        except Exception: time.sleep(0.05)
    raise SystemExit("not ready")
def req(base, method, path, body=None):
    r=urllib.request.Request(base+path, method=method, data=None if body is None else json.dumps(body).encode(),
        headers={"authorization":"Bearer "+ADMIN, "content-type":"application/json"})
    with urllib.request.urlopen(r, timeout=30) as f: return f.status, f.read()
import tempfile
try:
    d=tempfile.mkdtemp()
    up,_=start({"SIGNET_ADMIN_TOKEN":ADMIN,"SIGNET_FOLLOWER_TOKEN":FT,"ORGKEYS_MAX":"1000"}, [], d+"/up")
    if mode=="delete":
        n=int(sys.argv[3]); nf=int(sys.argv[4])
        for i in range(nf): start({"SIGNET_UPSTREAM_TOKEN":FT}, ["--upstream", up], d+f"/f{i}")
        times=[]
        for i in range(n):
            st,b=req(up,"POST","/v1/organisations/acme/keys",{"name":"k","algorithm":"ES256"})
            kid=json.loads(b)["id"]
            t=time.monotonic(); req(up,"DELETE",f"/v1/organisations/acme/keys/{kid}"); times.append(time.monotonic()-t)
        times.sort()
        print(f"followers={nf} deletes={n} p50={statistics.median(times)*1000:.2f}ms p99={times[int(len(times)*0.99)-1]*1000:.2f}ms")
    if mode=="auth":
        rounds=int(sys.argv[3])
        fol,_=start({"SIGNET_UPSTREAM_TOKEN":FT}, ["--upstream", up], d+"/f")
        st,b=req(up,"POST","/v1/organisations/acme/keys",{"name":"k","algorithm":"RS256"})
        created=json.loads(b)
        with open(d+"/key.pem","w") as f: f.write(created["privateKey"])
        token=subprocess.run([BIN,"token","--key",d+"/key.pem","--kid",created["id"],"--org","acme","--ttl","1h"],
            capture_output=True, text=True, check=True).stdout.strip()
        os.remove(d+"/key.pem")
        for base in (up, fol):
            for _ in range(200):
                r=urllib.request.Request(base+"/v1/auth", headers={"authorization":"Bearer "+token})
                try:
                    if urllib.request.urlopen(r, timeout=1).status==200: break
                except Exception: time.sleep(0.05)
            else: raise SystemExit(base+" never accepted the token")
        rates={"upstream":[], "follower":[]}
        for _ in range(rounds):
            for name, base in (("upstream", up), ("follower", fol)):
                out=subprocess.run(["wrk","-t2","-c64","-d5s","-H","Authorization: Bearer "+token, base+"/v1/auth"],
                    capture_output=True, text=True, check=True).stdout
                rate=float(next(l.split()[1] for l in out.splitlines() if l.startswith("Requests/sec")))
                non2xx=[l for l in out.splitlines() if "Non-2xx" in l]
                if non2xx: raise SystemExit(f"{name}: {non2xx[0]}")
                rates[name].append(rate)
        u=statistics.median(rates["upstream"]); f=statistics.median(rates["follower"])
        print(f"auth upstream={u:.0f}/s follower={f:.0f}/s follower/upstream={f/u:.2f} "
              f"runs upstream={[round(r) for r in rates['upstream']]} follower={[round(r) for r in rates['follower']]}")
finally:
    for p in procs: p.terminate()
