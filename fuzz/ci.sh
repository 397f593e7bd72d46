#!/usr/bin/env bash
# CI for the fuzz targets (see docs/fuzzing.md): builds every target with
# cargo-fuzz (libFuzzer + AddressSanitizer, nightly toolchain) and runs
# each for FUZZ_SECONDS (default 30) seconds on its committed corpus.
# Fails on any crash, property failure, timeout (10 s per input) or
# out-of-memory report (2 GiB RSS; any single allocation over 256 MiB).
# New inputs go to a temporary directory: the committed corpus is not
# modified. A failing input is saved under fuzz/artifacts/<target>/;
# reproduce with `cargo +nightly fuzz run <target> <that file>`.
#
# Measured on a shared 2-core VM with a cold fuzz/target: 416 s in all
# (build 189 s), plus about 3 minutes when cargo-fuzz must be installed
# first (see docs/fuzzing.md).
set -euo pipefail
cd "$(dirname "$0")"

secs="${FUZZ_SECONDS:-30}"
if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "fuzz/ci.sh: the nightly toolchain is needed (rustup toolchain install nightly)" >&2
    exit 1
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

start=$(date +%s)
cargo +nightly fuzz build
echo "fuzz/ci.sh: built in $(( $(date +%s) - start )) s"

failed=()
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
for target in $(cargo +nightly fuzz list); do
    max_len=4096
    # Its responses are read after the server is done: see the target.
    [ "$target" = manager_protocol ] && max_len=512
    mkdir -p "$work/$target" "artifacts/$target"
    echo "fuzz/ci.sh: $target for ${secs} s"
    if ! cargo +nightly fuzz run "$target" "$work/$target" "corpus/$target" -- \
        -max_total_time="$secs" -max_len="$max_len" -timeout=10 \
        -rss_limit_mb=2048 -malloc_limit_mb=256 -print_final_stats=1 \
        > "$work/$target.log" 2>&1; then
        tail -n 60 "$work/$target.log" >&2
        failed+=("$target")
    else
        grep -E '^(Done|stat::number_of_executed_units|stat::peak_rss_mb)' "$work/$target.log" || true
    fi
done
echo "fuzz/ci.sh: done in $(( $(date +%s) - start )) s"
if [ "${#failed[@]}" -gt 0 ]; then
    echo "fuzz/ci.sh: FAILED: ${failed[*]} (inputs under fuzz/artifacts/)" >&2
    exit 1
fi
