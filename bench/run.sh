#!/usr/bin/env bash
# One command for the whole comparison (issue 7): installs what it needs,
# builds sockhive and the load generator, starts one throwaway redis-server on
# a free loopback port, runs every scenario on every server, and writes
# bench/results/<date>.{md,json} and bench/results/latest.md.
#
#   bench/run.sh            full run (3 runs per server; about 20-30 minutes on 2 cores)
#   bench/run.sh --smoke    every scenario on every server, tiny (seconds), for CI;
#                           exits non-zero if any scenario fails to run
#   bench/run.sh --pin      also measure the fan-out and the closed-loop handshake
#                           with the servers (and this redis-server) on CPU 0
#                           and the generator on CPU 1
#   bench/run.sh soak       10,000 sockets churning for 5 minutes under publishes,
#                           worker RSS and descriptors sampled (--smoke: 200, 24 s)
#   bench/run.sh scale      one node holding 1k, 10k, 50k, 100k idle sockets:
#                           handshakes/s and RSS at each, RSS after they leave
#                           (--steps 1000,5000; --smoke: 100 and 400 sockets)
#   bench/run.sh redis-ceiling   PUBLISHes/s this redis-server relays by number of
#                           subscriber connections (for bench/SCALING.md)
#
# Other flags go to `sockhive-bench suite` (e.g. --runs 5, --sockets 20000,
# --servers sockhive-sc,sc-peer). Everything runs on 127.0.0.1 only.
set -euo pipefail

BENCH="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$BENCH/.." && pwd)"
SMOKE=0
# `bench/run.sh soak [--smoke] [--sockets N] [--minutes M]`: the churn soak
# (issue 15) instead of the comparison suite; sockhive only.
# `bench/run.sh scale [--smoke] [--steps ...] [--workers W]`: the scale run
# (issue 19); sockhive only.
COMMAND=suite
if [[ "${1:-}" == "soak" || "${1:-}" == "scale" || "${1:-}" == "redis-ceiling" ]]; then
  COMMAND="$1"
  shift
fi
for arg in "$@"; do
  [[ "$arg" == "--smoke" ]] && SMOKE=1
done

log() { echo "[run.sh] $*" >&2; }

# --- what the machine needs -------------------------------------------------
need_apt=()
command -v redis-server >/dev/null || need_apt+=(redis-server)
command -v node >/dev/null || need_apt+=(nodejs)
command -v npm >/dev/null || need_apt+=(npm)
if ((${#need_apt[@]})); then
  log "installing ${need_apt[*]}"
  if [[ $(id -u) -ne 0 ]]; then SUDO=sudo; else SUDO=; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
command -v cargo >/dev/null || { log "cargo is required (rustup)"; exit 1; }

# Ten thousand sockets on each side: lift the soft open-file limit to the hard one.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# --- the Node peers ---------------------------------------------------------
if [[ ! -f "$BENCH/peers/node_modules/.package-lock.json" ||
      "$BENCH/peers/package-lock.json" -nt "$BENCH/peers/node_modules/.package-lock.json" ]]; then
  log "npm ci in bench/peers"
  (cd "$BENCH/peers" && npm ci --no-audit --no-fund --loglevel=error)
fi

# --- builds -----------------------------------------------------------------
SERVER_TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
BENCH_TARGET="${CARGO_TARGET_DIR:-$BENCH/target}"
if [[ -n "${SOCKHIVE_BIN:-}" ]]; then
  SOCKHIVE="$SOCKHIVE_BIN"   # e.g. CI's own build; nothing to build here
else
  log "building sockhive (release)"
  (cd "$ROOT" && cargo build --release -q -p sockhive-master)
  SOCKHIVE="$SERVER_TARGET/release/sockhive"
fi
log "building sockhive-bench and bare-ws (release)"
(cd "$BENCH" && cargo build --release -q)

# --- one real redis-server on a free loopback port --------------------------
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
REDIS_PORT=6390
while ! port_free "$REDIS_PORT"; do REDIS_PORT=$((REDIS_PORT + 1)); done
LOGS="$BENCH/results/tmp/logs"
mkdir -p "$LOGS"
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
  --maxclients 20000 --logfile "$LOGS/redis.log" &
REDIS_PID=$!
cleanup() { kill "$REDIS_PID" 2>/dev/null || true; wait "$REDIS_PID" 2>/dev/null || true; }
trap cleanup EXIT
for _ in $(seq 1 100); do
  redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break
  sleep 0.1
done
redis-cli -p "$REDIS_PORT" ping >/dev/null || { log "redis-server did not start"; exit 1; }
log "redis-server on 127.0.0.1:$REDIS_PORT (pid $REDIS_PID)"

# --- the suite --------------------------------------------------------------
# Which sockhive source this is, for the report ("+dirty": uncommitted server edits).
if [[ -z "${BENCH_SOCKHIVE_COMMIT:-}" ]]; then
  BENCH_SOCKHIVE_COMMIT="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
  if [[ -n "$(git -C "$ROOT" status --porcelain -- . ':!bench' 2>/dev/null)" ]]; then
    BENCH_SOCKHIVE_COMMIT+="+dirty"
  fi
fi
export BENCH_SOCKHIVE_COMMIT
if ((SMOKE)); then OUT="$BENCH/results/tmp"; else OUT="$BENCH/results"; fi
started=$(date +%s)
set +e
if [[ "$COMMAND" == "redis-ceiling" ]]; then set -- --redis-pid "$REDIS_PID" "$@"; fi
if [[ "$COMMAND" != "suite" ]]; then
  "$BENCH_TARGET/release/sockhive-bench" "$COMMAND" \
    --sockhive "$SOCKHIVE" \
    --redis "127.0.0.1:$REDIS_PORT" \
    --out "$OUT" \
    --logs "$LOGS" \
    "$@"
  status=$?
  set -e
  log "$COMMAND finished in $(( $(date +%s) - started )) s with status $status"
  exit "$status"
fi
"$BENCH_TARGET/release/sockhive-bench" suite \
  --sockhive "$SOCKHIVE" \
  --bare "$BENCH_TARGET/release/bare-ws" \
  --peers "$BENCH/peers" \
  --redis "127.0.0.1:$REDIS_PORT" \
  --out "$OUT" \
  --logs "$LOGS" \
  --redis-pid "$REDIS_PID" \
  "$@"
status=$?
set -e
log "suite finished in $(( $(date +%s) - started )) s with status $status"
exit "$status"
