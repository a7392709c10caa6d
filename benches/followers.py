#!/usr/bin/env python3
"""Follower benchmarks (docs/followers.md), against a signet binary on sled:

    python3 benches/followers.py BIN delete N FOLLOWERS   # DELETE p50/p99 with FOLLOWERS followers

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
finally:
    for p in procs: p.terminate()
