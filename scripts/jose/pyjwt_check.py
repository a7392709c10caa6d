#!/usr/bin/env python3
"""Verify signet-minted JWTs with PyJWT against signet's JWKS endpoints.

Usage: pyjwt_check.py CASES.json

CASES.json is a list of {"name", "url", "token", "alg", "expect"} where
"expect" is "ok" (the token must verify) or "no_key" (the JWKS must no longer
hold the token's kid, so the lookup must fail with PyJWT's "no matching key"
error). Every case uses a fresh jwt.PyJWKClient, so nothing is cached between
cases. Prints one "PASS ..." or "FAIL ..." line per case.
"""

import jwt

import cases


def check(case):
    url, token, alg, expect = case["url"], case["token"], case["alg"], case["expect"]
    client = jwt.PyJWKClient(url, cache_jwk_set=True, lifespan=300, timeout=10)
    try:
        signing_key = client.get_signing_key_from_jwt(token)
        claims = jwt.decode(
            token,
            signing_key.key,
            algorithms=[alg],
            audience="signet",
            options={"require": ["exp", "aud"]},
        )
    except jwt.PyJWKClientError as e:
        if expect == "no_key" and "Unable to find a signing key" in str(e):
            return True, f"rejected as expected ({type(e).__name__}: {e})"
        return False, f"{type(e).__name__}: {e}"
    except Exception as e:  # noqa: BLE001 - any other failure is a failed check
        return False, f"{type(e).__name__}: {e}"
    if expect != "ok":
        return False, f"token still verified (kid {jwt.get_unverified_header(token).get('kid')})"
    if claims.get("org") != "acme":
        return False, f"verified but org claim is {claims.get('org')!r}"
    return True, f"verified, sub={claims.get('sub')!r} org={claims.get('org')!r}"


if __name__ == "__main__":
    cases.run(f"pyjwt {jwt.__version__}", check)
