#!/usr/bin/env bash
# Bounded fuzz smoke run for CI: builds the cargo-fuzz crate in fuzz/, replays every
# committed regression input, then fuzzes each target for FUZZ_SECONDS (default 20) starting
# from its committed seeds in fuzz/seeds/<target>/. Exits non-zero on any crash, leak,
# timeout or build failure; crashing inputs land in fuzz/artifacts/<target>/.
#
#   scripts/fuzz-smoke.sh                 # every target, 20 s each
#   FUZZ_SECONDS=60 scripts/fuzz-smoke.sh server config
#
# Needs cargo-fuzz (`cargo install cargo-fuzz --locked`) and a C++ toolchain. cargo-fuzz
# wants nightly flags (-Zsanitizer=address); with only a stable toolchain RUSTC_BOOTSTRAP=1
# unlocks them, which is what this script does. The build stays in fuzz/target (gitignored).
set -euo pipefail

cd "$(dirname "$0")/.."
SECONDS_EACH="${FUZZ_SECONDS:-20}"
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz-smoke: cargo-fuzz is not installed; run: cargo install cargo-fuzz --locked" >&2
    exit 2
fi

if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list)
fi

echo "fuzz-smoke: building ${targets[*]}"
cargo fuzz build

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
failed=()
for target in "${targets[@]}"; do
    mkdir -p "fuzz/artifacts/$target" "$work/$target"
    flags=(-max_total_time="$SECONDS_EACH" -max_len=4096 -timeout=10 -rss_limit_mb=2048
        -print_final_stats=1 -artifact_prefix="fuzz/artifacts/$target/")
    if [ -f "fuzz/dicts/$target.dict" ]; then
        flags+=(-dict="fuzz/dicts/$target.dict")
    fi
    # Regressions first: each committed crash input must now run clean.
    shopt -s nullglob
    regressions=(fuzz/regressions/"$target"-*)
    shopt -u nullglob
    if [ "${#regressions[@]}" -gt 0 ]; then
        echo "fuzz-smoke: $target: replaying ${#regressions[@]} regression input(s)"
        if ! cargo fuzz run "$target" "${regressions[@]}" -- -runs=1 \
            -artifact_prefix="fuzz/artifacts/$target/" >"$work/$target.regress.log" 2>&1; then
            grep -A3 -E 'panicked|ERROR: ' "$work/$target.regress.log" >&2 || true
            tail -n 40 "$work/$target.regress.log" >&2
            failed+=("$target (regression)")
            continue
        fi
    fi
    echo "fuzz-smoke: $target: fuzzing ${SECONDS_EACH}s from fuzz/seeds/$target"
    # Hard bound in case the fuzzer wedges: the run time, plus corpus loading and slack.
    if timeout --kill-after=10 $((SECONDS_EACH * 2 + 120)) \
        cargo fuzz run "$target" "$work/$target" "fuzz/seeds/$target" -- "${flags[@]}" \
        >"$work/$target.log" 2>&1; then
        grep -E '^#[0-9]+[[:space:]]+DONE|stat::average_exec_per_sec' "$work/$target.log" | sed "s/^/  $target: /" || true
    else
        grep -A3 -E 'panicked|ERROR: ' "$work/$target.log" >&2 || true
        tail -n 40 "$work/$target.log" >&2
        failed+=("$target")
    fi
done

if [ "${#failed[@]}" -gt 0 ]; then
    echo "fuzz-smoke: FAILED: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
    exit 1
fi
echo "fuzz-smoke: ok (${#targets[@]} targets, ${SECONDS_EACH}s each)"
