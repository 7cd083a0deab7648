#!/usr/bin/env bash
# Bounded fuzzing of every target, for CI: `fuzz/run.sh [SECONDS_PER_TARGET]` (default 30).
#
# Installs cargo-fuzz once into a cache, builds all targets once, then runs
# each from a scratch copy of its committed seeds (fuzz/seeds/<target>) for
# the given time. Exits non-zero naming the target and the crash artifact if
# any target crashes, times out or runs out of memory. See fuzz/README.md.
#
# Environment:
#   FUZZ_TOOLS_DIR   where cargo-fuzz is installed (default ~/.cache/sockhive/fuzz-tools)
#   FUZZ_TARGETS     space-separated subset of targets (default: all)
#   FUZZ_SANITIZER   address (default) or none
#   FUZZ_TOOLCHAIN   auto (default), nightly, or stable (RUSTC_BOOTSTRAP=1)
#   FUZZ_TARGET_DIR  build directory (default fuzz/target)
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER_TARGET=${1:-30}
CARGO_FUZZ_VERSION=0.13.2
TOOLS=${FUZZ_TOOLS_DIR:-$HOME/.cache/sockhive/fuzz-tools}
TRIPLE=$(rustc -vV | sed -n 's/^host: //p')
started=$(date +%s)

# cargo-fuzz from crates.io, pinned and cached: a CI machine pays the ~1 min install once.
if ! "$TOOLS/bin/cargo-fuzz" --version 2>/dev/null | grep -qx "cargo-fuzz $CARGO_FUZZ_VERSION"; then
  echo "installing cargo-fuzz $CARGO_FUZZ_VERSION into $TOOLS"
  cargo install cargo-fuzz --locked --version "$CARGO_FUZZ_VERSION" --root "$TOOLS"
fi
export PATH="$TOOLS/bin:$PATH"

# libFuzzer needs `-Z` flags, so a nightly compiler. Use one when rustup has it; otherwise the
# machine's only toolchain is stable (CI cannot download another), and RUSTC_BOOTSTRAP=1 lets a
# stable compiler accept them (its AddressSanitizer runtime ships in rust-std; tested with 1.95).
toolchain=()
choice=${FUZZ_TOOLCHAIN:-auto}
if [ "$choice" = auto ]; then
  if rustc --version | grep -q nightly; then
    choice=current
  elif command -v rustup >/dev/null 2>&1 && rustup toolchain list | grep -q '^nightly'; then
    choice=nightly
  else
    choice=stable
  fi
fi
case $choice in
  current) ;;
  nightly) toolchain=(+nightly) ;;
  stable)
    export RUSTC_BOOTSTRAP=1
    echo "no nightly toolchain: using $(rustc --version) with RUSTC_BOOTSTRAP=1" ;;
  *) echo "FUZZ_TOOLCHAIN must be auto, nightly or stable" >&2; exit 2 ;;
esac
sanitizer=${FUZZ_SANITIZER:-address}
target_dir=${FUZZ_TARGET_DIR:-fuzz/target}
build_flags=(--sanitizer "$sanitizer" --target-dir "$target_dir")

targets=${FUZZ_TARGETS:-$(cargo "${toolchain[@]}" fuzz list)}

build_started=$(date +%s)
cargo "${toolchain[@]}" fuzz build "${build_flags[@]}"
echo "built in $(( $(date +%s) - build_started )) s (sanitizer: $sanitizer)"

bin_dir=$target_dir/$TRIPLE/release
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
artifacts=fuzz/artifacts
failed=()
printf '%-22s %12s %8s\n' target executions seconds
for target in $targets; do
  corpus=$work/corpus/$target
  mkdir -p "$corpus" "$artifacts/$target"
  # The working corpus grows during the run; it is scratch, only the seeds are committed.
  cp fuzz/seeds/"$target"/* "$corpus"/
  dict=()
  [ -f "fuzz/dicts/$target.dict" ] && dict=(-dict="fuzz/dicts/$target.dict")
  log=$work/$target.log
  target_started=$(date +%s)
  status=0
  # libFuzzer stops itself after -max_total_time; the outer timeout catches a hang anyway.
  timeout --kill-after=10 $(( SECONDS_PER_TARGET + 60 )) \
    "$bin_dir/$target" "$corpus" "${dict[@]}" \
    -max_total_time="$SECONDS_PER_TARGET" -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1 -artifact_prefix="$artifacts/$target/" >"$log" 2>&1 || status=$?
  executions=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  printf '%-22s %12s %8s\n' "$target" "${executions:-?}" "$(( $(date +%s) - target_started ))"
  if [ "$status" -ne 0 ]; then
    artifact=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -1)
    echo "FAILED: $target (exit $status), crash artifact: ${artifact:-none written}" >&2
    grep -E 'panicked|ERROR: (libFuzzer|AddressSanitizer)|SUMMARY' "$log" | head -5 >&2 || true
    echo "reproduce: cargo ${toolchain[*]} fuzz run $target ${artifact:-<artifact>}" >&2
    failed+=("$target")
  fi
done
echo "total $(( $(date +%s) - started )) s"
if [ ${#failed[@]} -gt 0 ]; then
  echo "crashed: ${failed[*]}" >&2
  exit 1
fi
