#!/usr/bin/env bash
# Runs every wsgate fuzz target for SECONDS each (default 30) and fails on any crash.
#
#   tests/fuzz/run.sh [SECONDS] [TARGET...]
#
# Installs cargo-fuzz (from crates.io, --locked) when `cargo fuzz` is missing, builds all
# targets once, fuzzes each from its committed seeds (tests/fuzz/corpus/<target>/seed-*), and
# prints the runs per target. A crash (panic, broken invariant, timeout, out of memory) leaves
# its input in tests/fuzz/artifacts/<target>/ and makes the script exit 1.
#
# Environment:
#   FUZZ_SANITIZER  none (default: wsgate forbids unsafe code, and the build is ~40% faster)
#                   or address (ASan, for the unsafe code in fastwebsockets and simdutf8)
#   FUZZ_TIMEOUT    seconds one input may take before it counts as a crash (default 10)
#   FUZZ_TOOLCHAIN  the nightly toolchain to use (default nightly)
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"
fuzz_dir=tests/fuzz
all_targets=(config_loader handshake upstream_response frames)
cargo_fuzz_version=0.13.2

seconds=${1:-30}
if ! [[ $seconds =~ ^[0-9]+$ ]] || ((seconds < 1)); then
    echo "usage: tests/fuzz/run.sh [SECONDS] [TARGET...]   (SECONDS: whole seconds per target)" >&2
    exit 2
fi
shift || true
targets=("$@")
((${#targets[@]})) || targets=("${all_targets[@]}")
sanitizer=${FUZZ_SANITIZER:-none}
timeout=${FUZZ_TIMEOUT:-10}
toolchain=${FUZZ_TOOLCHAIN:-nightly}

step() { printf '\n==> %s\n' "$*"; }
now() { date +%s; }
started=$(now)

if ! cargo "+$toolchain" --version >/dev/null 2>&1; then
    step "installing the $toolchain toolchain"
    rustup toolchain install "$toolchain" --profile minimal
fi
if ! cargo "+$toolchain" fuzz --version >/dev/null 2>&1; then
    step "installing cargo-fuzz $cargo_fuzz_version"
    t=$(now)
    cargo install cargo-fuzz --locked --version "$cargo_fuzz_version"
    echo "cargo-fuzz installed in $(($(now) - t)) s"
fi

# One target directory per sanitizer: the flags differ, so sharing one would rebuild every
# crate each time the sanitizer changes (plain `cargo fuzz run` uses tests/fuzz/target itself).
build=(--fuzz-dir "$fuzz_dir" --sanitizer "$sanitizer" --target-dir "$fuzz_dir/target/$sanitizer")
step "building ${targets[*]} (sanitizer: $sanitizer)"
t=$(now)
# Built once per target; `cargo fuzz run` below then finds them up to date.
for target in "${targets[@]}"; do
    cargo "+$toolchain" fuzz build "${build[@]}" "$target"
done
echo "built in $(($(now) - t)) s"

logs=$fuzz_dir/target/logs
mkdir -p "$logs"
failed=()
summary=()
for target in "${targets[@]}"; do
    step "fuzzing $target for $seconds s"
    mkdir -p "$fuzz_dir/corpus/$target" "$fuzz_dir/artifacts/$target"
    args=(-max_total_time="$seconds" -timeout="$timeout" -print_final_stats=1)
    if [[ -f $fuzz_dir/dict/$target.dict ]]; then
        args+=(-dict="$fuzz_dir/dict/$target.dict")
    fi
    log=$logs/$target.log
    t=$(now)
    status=0
    cargo "+$toolchain" fuzz run "${build[@]}" "$target" -- "${args[@]}" >"$log" 2>&1 || status=$?
    elapsed=$(($(now) - t))
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    [[ -n $runs ]] || runs=$(sed -n 's/^Done \([0-9]*\) runs.*/\1/p' "$log" | tail -1)
    [[ -n $runs ]] || runs=$({ grep -o '^#[0-9]*' "$log" || true; } | tail -1 | tr -d '#')
    corpus=$(find "$fuzz_dir/corpus/$target" -type f | wc -l)
    if ((status == 0)); then
        result=ok
        echo "$target: ${runs:-?} runs in $elapsed s, corpus $corpus inputs"
    else
        result="FAILED (exit $status)"
        failed+=("$target")
        echo "$target FAILED after ${runs:-?} runs in $elapsed s (whole log: $log):"
        { grep -E -A3 'panicked at|==[0-9]+== ?ERROR|^SUMMARY|^error' "$log" || tail -40 "$log"; } | head -60
        artifact=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -1)
        if [[ -n $artifact ]]; then
            echo "reproduce: cargo +$toolchain fuzz run ${build[*]} $target $artifact"
        fi
    fi
    summary+=("$(printf '%-18s %12s runs  %5s s  %s' "$target" "${runs:-?}" "$elapsed" "$result")")
done

step "summary (${seconds} s per target, sanitizer $sanitizer, $(($(now) - started)) s in all)"
printf '%s\n' "${summary[@]}"
if ((${#failed[@]})); then
    echo "fuzzing found crashes in: ${failed[*]} (inputs under $fuzz_dir/artifacts/)" >&2
    exit 1
fi
