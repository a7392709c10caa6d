#!/usr/bin/env python3
"""Verify signet-minted JWTs with jwcrypto against signet's JWKS endpoints.

Usage: jwcrypto_check.py CASES.json

CASES.json is a list of {"name", "url", "token", "alg", "expect"} where
"expect" is "ok" (the token must verify) or "no_key" (the JWKS must no longer
hold the token's kid, so jwcrypto must fail with JWTMissingKey). Every case
fetches the JWK Set afresh. Prints one "PASS ..." or "FAIL ..." line per case.
"""
import json
import urllib.request
from importlib.metadata import version

from jwcrypto import jwk, jwt

import cases

VERSION = version("jwcrypto")


def check(case):
    url, token, alg, expect = case["url"], case["token"], case["alg"], case["expect"]
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            keyset = jwk.JWKSet.from_json(answer.read())
        verified = jwt.JWT(
            jwt=token,
            key=keyset,
            algs=[alg],
            check_claims={"aud": "signet", "exp": None},
        )
    except jwt.JWTMissingKey as e:
        if expect == "no_key":
            return True, f"rejected as expected (JWTMissingKey: {e})"
        return False, f"JWTMissingKey: {e}"
    except Exception as e:  # noqa: BLE001 - any other failure is a failed check
        return False, f"{type(e).__name__}: {e}"
    if expect != "ok":
        return False, "token still verified"
    header = json.loads(verified.header)
    claims = json.loads(verified.claims)
    if header.get("alg") != alg:
        return False, f"verified but alg is {header.get('alg')!r}, want {alg!r}"
    if claims.get("org") != "acme":
        return False, f"verified but org claim is {claims.get('org')!r}"
    return True, f"verified, alg={header['alg']} sub={claims.get('sub')!r} org={claims.get('org')!r}"


if __name__ == "__main__":
    cases.run(f"jwcrypto {VERSION}", check)
