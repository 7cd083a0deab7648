#!/usr/bin/env python3
"""Judges an Autobahn fuzzingclient run of sockhive against expected.json.

usage: check.py INDEX_JSON EXPECTED_JSON [--update]

Fails, naming the cases, when a case is FAILED, when a verdict (behavior or
behaviorClose) is worse than the committed one, when a case is missing or
new, and when a 9.* case (large messages) does not do what the production
limit says: a message of at most --max-payload (default 1 MiB, inclusive) is
echoed OK; a larger one is refused with a clean 1009 close (Autobahn then
grades the case FAILED, as no echo came: that verdict is expected there).
--update rewrites EXPECTED_JSON from the run, after the same checks.
"""
import json
import os
import sys
from collections import Counter

# sockhive_shared::config::DEFAULT_MAX_PAYLOAD.
MAX_PAYLOAD = 1 << 20
MIB = 1 << 20
# Message size of each 9.* group (Autobahn's case descriptions).
SIZES = {
    "9.1": [MIB // 16, MIB // 4, MIB, 4 * MIB, 8 * MIB, 16 * MIB],
    "9.2": [MIB // 16, MIB // 4, MIB, 4 * MIB, 8 * MIB, 16 * MIB],
    "9.3": 4 * MIB, "9.4": 4 * MIB, "9.5": MIB, "9.6": MIB,
    "9.7": 4096, "9.8": 4096,
}
# Better verdicts first; INFORMATIONAL cases are never graded.
RANK = {"OK": 0, "INFORMATIONAL": 0, "NON-STRICT": 1, "UNIMPLEMENTED": 2,
        "WRONG CODE": 3, "UNCLEAN": 3, "FAILED": 4}


def case_key(case):
    return [int(part) for part in case.split(".")]


def size_of(case):
    group, number = case.rsplit(".", 1)
    size = SIZES[group]
    return size[int(number) - 1] if isinstance(size, list) else size


def was_clean(reports, result):
    with open(os.path.join(reports, result["reportfile"])) as f:
        return json.load(f).get("wasClean") is True


def judge(case, result, expected, reports):
    """What is wrong with one case, or None."""
    if case.startswith("9."):
        if size_of(case) <= MAX_PAYLOAD:
            if result["behavior"] != "OK":
                return "a message within the payload limit was not echoed"
        elif result.get("remoteCloseCode") != 1009 or not was_clean(reports, result):
            return "an oversized message did not end with a clean 1009 close"
    elif "FAILED" in (result["behavior"], result["behaviorClose"]):
        return "FAILED"
    if expected is None:
        return "new case, not in expected.json"
    for field in ("behavior", "behaviorClose"):
        if RANK[result[field]] > RANK[expected[field]]:
            return "%s %s, expected %s" % (field, result[field], expected[field])
    if case.startswith("9.") and result.get("remoteCloseCode") != expected["remoteCloseCode"]:
        return "close code %s, expected %s" % (result.get("remoteCloseCode"),
                                               expected["remoteCloseCode"])
    return None


def main():
    index_path, expected_path = sys.argv[1], sys.argv[2]
    update = "--update" in sys.argv[3:]
    with open(index_path) as f:
        run = next(iter(json.load(f).values()))
    try:
        with open(expected_path) as f:
            expected = json.load(f)
    except FileNotFoundError:
        expected = {}
    reports = os.path.dirname(index_path)
    problems = [(case, judge(case, run[case], run[case] if update else expected.get(case), reports))
                for case in sorted(run, key=case_key)]
    problems = [(case, why) for case, why in problems if why]
    if not update:
        problems += [(case, "missing from the run") for case in expected if case not in run]
    counts = Counter(result["behavior"] for result in run.values())
    print("autobahn: %d cases: %s" % (len(run), ", ".join(
        "%s %d" % (verdict, counts[verdict]) for verdict in sorted(counts, key=RANK.get))))
    refused = sorted((c for c in run if c.startswith("9.") and size_of(c) > MAX_PAYLOAD),
                     key=case_key)
    print("autobahn: FAILED is Autobahn's verdict on the %d 9.* cases above the %d-byte max"
          " payload, which must be refused with a clean 1009 close instead of echoed: %s"
          % (len(refused), MAX_PAYLOAD, " ".join(refused)))
    for case, why in problems:
        print("autobahn: case %s: %s (%s)" % (case, why, json.dumps(run.get(case))))
    if update and not problems:
        fields = ("behavior", "behaviorClose")
        recorded = {case: dict({k: run[case][k] for k in fields},
                               **({"remoteCloseCode": run[case].get("remoteCloseCode")}
                                  if case.startswith("9.") else {}))
                    for case in sorted(run, key=case_key)}
        with open(expected_path, "w") as f:
            f.write("{\n" + ",\n".join(
                "  %s: %s" % (json.dumps(case), json.dumps(v)) for case, v in recorded.items())
                + "\n}\n")
        print("autobahn: wrote %s" % expected_path)
    if problems:
        print("autobahn: %d case(s) regressed" % len(problems))
        return 1
    print("autobahn: every case as expected")
    return 0


if __name__ == "__main__":
    sys.exit(main())
