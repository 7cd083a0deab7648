#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs what the tests need
# (redis-server, nginx, chromium, the npm clients from the committed lockfile), then
# runs every Rust test, unit and integration, against the real binary, then
# the Autobahn conformance suite and every fuzz target for a bounded time.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
command -v nginx >/dev/null 2>&1 || need_apt+=(nginx)
command -v node >/dev/null 2>&1 || need_apt+=(nodejs npm)
command -v haproxy >/dev/null 2>&1 || need_apt+=(haproxy)
# The admin console test drives Debian's Chromium with playwright-core.
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
# The deploy checks parse the compose and Kubernetes YAML with PyYAML.
python3 -c 'import yaml' 2>/dev/null || /usr/bin/python3 -c 'import yaml' 2>/dev/null || need_apt+=(python3-yaml)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing: ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
# The Debian packages start their own services; the tests start their own
# instances on free ports and need nothing running.
# playwright-core never fetches a browser (the test uses /usr/bin/chromium);
# the variable also keeps any future playwright install step from doing so.
(cd tests/js && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error)

cargo build --workspace --all-targets
cargo test --workspace -- --test-threads="${TEST_THREADS:-2}"
# The Autobahn|Testsuite against the worker's own WebSocket path (front door,
# limits, close handling), checked against tests/autobahn/expected.json.
bash tests/autobahn/run.sh
# Every fuzz target (cargo-fuzz, libFuzzer) for 30 s on its committed seeds;
# a crash fails the run and names its input (fuzz/README.md).
bash fuzz/run.sh 30
