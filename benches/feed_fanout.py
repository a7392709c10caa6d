#!/usr/bin/env python3
"""Feed fan-out benchmark (docs/followers.md): N raw subscribers of
GET /v1/events on one signet (sled); ROUNDS times, create a key, DELETE it,
and time from sending the DELETE to the last subscriber having received its
`withdrawn` event.

    python3 benches/feed_fanout.py BIN N ROUNDS

Standard library only; a measurement, not a test. The single-threaded
Python reader is part of what it measures.
"""
import json, os, subprocess, sys, time, socket, selectors, urllib.request, tempfile
BIN=sys.argv[1]; N=int(sys.argv[2]); ROUNDS=int(sys.argv[3])
ADMIN="operator-token-0123456789abcdef"
s=socket.socket(); s.bind(("127.0.0.1",0)); p=s.getsockname()[1]; s.close()
base=f"http://127.0.0.1:{p}"
d=tempfile.mkdtemp()
pr=subprocess.Popen([BIN,"serve"], env=dict(os.environ,SIGNET_LISTEN=f"127.0.0.1:{p}",SIGNET_LOG="warn",SIGNET_DATA_DIR=d,SIGNET_ADMIN_TOKEN=ADMIN,ORGKEYS_MAX="1000"), cwd="/tmp", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
def req(method, path, body=None):
    r=urllib.request.Request(base+path, method=method, data=None if body is None else json.dumps(body).encode(), headers={"authorization":"Bearer "+ADMIN,"content-type":"application/json"})
    with urllib.request.urlopen(r, timeout=30) as f: return f.read()
try:
    for _ in range(200):
        try:
            urllib.request.urlopen(base+"/readyz",timeout=1); break
        except Exception: time.sleep(0.05)
    sel=selectors.DefaultSelector(); socks=[]
    for i in range(N):
        c=socket.create_connection(("127.0.0.1",p)); c.sendall(b"GET /v1/events HTTP/1.1\r\nhost: x\r\n\r\n"); c.setblocking(False); sel.register(c, selectors.EVENT_READ); socks.append(c)
    time.sleep(2)
    for key,_ in sel.select(0.1): 
        try: key.fileobj.recv(1<<20)
        except BlockingIOError: pass
    lat=[]
    for r in range(ROUNDS):
        kid=json.loads(req("POST","/v1/organisations/acme/keys",{"name":"k","algorithm":"ES256"}))["id"]
        time.sleep(0.3)
        # drain
        while True:
            ev=sel.select(0.05)
            if not ev: break
            for key,_ in ev:
                try: key.fileobj.recv(1<<20)
                except BlockingIOError: pass
        got={}
        t0=time.monotonic(); req("DELETE",f"/v1/organisations/acme/keys/{kid}"); tans=time.monotonic()
        needle=b"withdrawn"
        deadline=time.monotonic()+10
        while len(got)<N and time.monotonic()<deadline:
            for key,_ in sel.select(0.5):
                try: data=key.fileobj.recv(1<<20)
                except BlockingIOError: continue
                if needle in data and key.fileobj not in got: got[key.fileobj]=time.monotonic()
        last=max(got.values())
        lat.append((last-t0)*1000)
        print(f"round {r}: {len(got)}/{N} got it; last {1000*(last-t0):.1f} ms after sending the DELETE (DELETE answered after {1000*(tans-t0):.1f} ms)", flush=True)
    lat.sort(); print(f"p50 {lat[len(lat)//2]:.1f} ms, max {lat[-1]:.1f} ms")
finally:
    pr.terminate()
