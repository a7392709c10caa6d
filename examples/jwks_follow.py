#!/usr/bin/env python3
"""Keep a JWK Set cache in step with signet's change feed (Python stdlib only).

    python3 examples/jwks_follow.py URL                 # follow for ever
    python3 examples/jwks_follow.py --once URL          # print the reset, exit
    python3 examples/jwks_follow.py --until-gone KID URL

URL is a signet server (or follower) base URL, e.g. http://127.0.0.1:8081;
add /v1/organisations/ORG to it via --org ORG to follow one organisation.

The cache is a dict kid -> JWK: `reset` replaces it, `published` adds or
replaces a key, `withdrawn` drops one. A verifier that looks keys up in this
dict stops accepting a deleted key's tokens as soon as the event arrives,
instead of when its JWK Set's max-age runs out. On a dropped connection it
reconnects with Last-Event-ID (the server replays what it missed, or sends
a new reset). If no event or heartbeat arrives for a while, treat the cache
as stale (here: reconnect) - that is what keeps the cache fail-closed.
"""
import json
import os
import sys
import time
import urllib.request

STALE_AFTER = 5.0  # seconds without any event (heartbeats come every 0.5 s)


def events(url, last_id):
    """Yields (id, event, data) from one connection to the feed."""
    req = urllib.request.Request(url, headers={"Accept": "text/event-stream"})
    if last_id is not None:
        req.add_header("Last-Event-ID", str(last_id))
    with urllib.request.urlopen(req, timeout=STALE_AFTER) as stream:
        ev_id, ev_name, data = None, "", []
        for raw in stream:
            line = raw.decode("utf-8").rstrip("\r\n")
            if line == "":
                if data or ev_name:
                    yield ev_id, ev_name, json.loads("\n".join(data))
                ev_id, ev_name, data = None, "", []
            elif line.startswith(":"):
                continue
            else:
                field, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if field == "id":
                    ev_id = int(value)
                elif field == "event":
                    ev_name = value
                elif field == "data":
                    data.append(value)


def main(argv):
    once, until_gone, org = False, None, None
    args = list(argv)
    while args and args[0].startswith("--"):
        flag = args.pop(0)
        if flag == "--once":
            once = True
        elif flag == "--until-gone":
            until_gone = args.pop(0)
        elif flag == "--org":
            org = args.pop(0)
        else:
            sys.exit(f"unknown option {flag}")
    if len(args) != 1:
        sys.exit(__doc__)
    base = args[0].rstrip("/")
    url = f"{base}/v1/organisations/{org}/events" if org else f"{base}/v1/events"
    deadline = time.monotonic() + float(os.environ.get("JWKS_FOLLOW_TIMEOUT", "inf"))
    cache, last_id = {}, None
    while time.monotonic() < deadline:
        try:
            for ev_id, name, data in events(url, last_id):
                if name == "reset":
                    cache = {k["kid"]: k["jwk"] for k in data["keys"]}
                    last_id = data["version"]
                    for kid in cache:
                        print(f"cached {kid}", flush=True)
                    if once:
                        return 0
                elif name == "published":
                    cache[data["kid"]] = data["jwk"]
                    last_id = ev_id
                    print(f"cached {data['kid']}", flush=True)
                elif name == "withdrawn":
                    cache.pop(data["kid"], None)
                    last_id = ev_id
                    print(f"dropped {data['kid']} ({data['reason']})", flush=True)
                    if data["kid"] == until_gone:
                        return 0
                if time.monotonic() >= deadline:
                    break
        except (OSError, ValueError) as e:
            print(f"feed interrupted ({e}); reconnecting", file=sys.stderr, flush=True)
            time.sleep(0.2)
    print("timed out", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
