#!/usr/bin/env bash
# The Autobahn|Testsuite fuzzingclient against sockhive's own WebSocket path
# (the `autobahn_echo` example: the worker's front door, production limits,
# socket core and close handling, with an echo for an application), checked
# against the committed verdicts in expected.json by check.py.
#
# Needs pyenv's Python 2.7.18 (autobahntestsuite is Python 2 code); the
# Python 2.7 environment is built once and cached in
# ${SOCKHIVE_AUTOBAHN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sockhive-autobahn}.
# Reports land in <cargo target dir>/autobahn/reports.
#
#   tests/autobahn/run.sh            run and check
#   tests/autobahn/run.sh --update   run and rewrite expected.json (review the diff!)
#
# The whole script stops itself after AUTOBAHN_TIMEOUT seconds (default 900,
# enough for a first run that creates the environment and builds the echo).
set -euo pipefail

if [ -z "${SOCKHIVE_AUTOBAHN_BOUNDED:-}" ]; then
  export SOCKHIVE_AUTOBAHN_BOUNDED=1
  exec timeout --kill-after=10 "${AUTOBAHN_TIMEOUT:-900}" "$0" "$@"
fi

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
started=$(date +%s)
cache=${SOCKHIVE_AUTOBAHN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sockhive-autobahn}
venv=$cache/py27
suite=autobahntestsuite==25.10.1
# The environment is rebuilt when the pins change.
stamp=$( (echo "$suite"; cat "$here/requirements-py27.txt") | sha256sum | cut -c1-16)

python27() {
  local candidates=()
  command -v pyenv >/dev/null 2>&1 && candidates+=("$(pyenv root)/versions/2.7.18/bin/python")
  candidates+=("$HOME/.pyenv/versions/2.7.18/bin/python")
  for python in "${candidates[@]}"; do
    [ -x "$python" ] && { echo "$python"; return 0; }
  done
  echo "autobahn: Python 2.7.18 not found (looked at: ${candidates[*]});" \
    "install it with 'pyenv install 2.7.18'" >&2
  return 1
}

if [ "$(cat "$venv/.sockhive-stamp" 2>/dev/null)" != "$stamp" ]; then
  echo "autobahn: creating the Python 2.7 environment in $venv (about a minute)"
  py27=$(python27)
  rm -rf "$cache/bootstrap" "$venv"
  mkdir -p "$cache"
  # Python 2.7 has no venv, and virtualenv 20.22 dropped 2.7 targets: an older
  # virtualenv, from a Python 3 venv, creates the 2.7 environment.
  timeout 300 python3 -m venv "$cache/bootstrap"
  timeout 300 "$cache/bootstrap/bin/pip" install -q 'virtualenv<20.22'
  timeout 300 "$cache/bootstrap/bin/virtualenv" -q -p "$py27" "$venv"
  # The suite's sdist installs no dependencies: its pins go in explicitly.
  if ! timeout 600 "$venv/bin/pip" install -q -r "$here/requirements-py27.txt" "$suite" \
    >"$cache/pip.log" 2>&1; then
    echo "autobahn: installing the suite failed; the end of $cache/pip.log:" >&2
    tail -30 "$cache/pip.log" >&2
    exit 1
  fi
  "$venv/bin/wstest" --autobahnversion >/dev/null
  echo "$stamp" >"$venv/.sockhive-stamp"
fi

cd "$root"
# Debug: the build is what dominates, and the debug echo passes every case
# in time (the cases' own waits, not the server, set the pace).
timeout 600 cargo build -q -p sockhive-worker --example autobahn_echo
target=$(cargo metadata -q --format-version 1 --no-deps |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
out=$target/autobahn
rm -rf "$out/reports"
mkdir -p "$out"

"$target/debug/examples/autobahn_echo" >"$out/echo.log" 2>&1 &
echo_pid=$!
trap 'kill "$echo_pid" 2>/dev/null || true' EXIT
address=""
for _ in $(seq 100); do
  address=$(sed -n 's/^listening on //p' "$out/echo.log")
  [ -n "$address" ] && break
  kill -0 "$echo_pid" 2>/dev/null || break
  sleep 0.1
done
if [ -z "$address" ]; then
  echo "autobahn: the echo server did not start:" >&2
  cat "$out/echo.log" >&2
  exit 1
fi

cat >"$out/fuzzingclient.json" <<EOF
{"outdir": "$out/reports/servers", "servers": [{"agent": "sockhive", "url": "ws://$address/"}],
 "cases": ["*"], "exclude-cases": [], "exclude-agent-cases": {}}
EOF
echo "autobahn: fuzzingclient against ws://$address/ (log: $out/wstest.log)"
# wstest exits 0 even when cases fail: the verdicts are judged by check.py.
if ! (cd "$out" && timeout 420 "$venv/bin/wstest" -m fuzzingclient -s fuzzingclient.json \
  >"$out/wstest.log" 2>&1); then
  echo "autobahn: wstest did not finish; its last lines:" >&2
  tail -20 "$out/wstest.log" >&2
  exit 1
fi
kill "$echo_pid" 2>/dev/null || true

status=0
python3 "$here/check.py" "$out/reports/servers/index.json" "$here/expected.json" "$@" || status=$?
echo "autobahn: $(($(date +%s) - started)) s in all"
exit "$status"
