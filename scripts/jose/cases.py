"""The loop both Python JOSE checks share: read CASES.json, run each case
through a library's `check`, print one PASS or FAIL line per case, and exit
non-zero if any failed."""
import json
import sys


def run(library, check):
    """`library` names the client and its version in every line; `check`
    takes one case and returns (passed, detail)."""
    with open(sys.argv[1]) as f:
        cases = json.load(f)
    failed = 0
    for case in cases:
        ok, detail = check(case)
        failed += not ok
        print(f"{'PASS' if ok else 'FAIL'} {library}: {case['name']} -- {detail}", flush=True)
    sys.exit(1 if failed else 0)
