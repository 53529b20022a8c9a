#!/usr/bin/env bash
# Builds the libFuzzer targets of Fuzz/ (ASan + libFuzzer, scratch path .build-fuzz) and runs each for a bounded
# time. Seeds: Fuzz/Corpus/<target>/ (committed). New inputs go to .build-fuzz/corpus/<target>/ (not committed);
# crash reproducers to Fuzz/Crashes/<target>/ (commit them, and turn each into a regression test).
#
#   scripts/reliability/fuzz.sh [seconds-per-target=90] [target...]     # fuzz
#   scripts/reliability/fuzz.sh --replay [target...]                     # replay seeds + reproducers once
set -uo pipefail
export SWIFT_BACKTRACE=enable=no      # a crash report from libFuzzer/ASan, not the Swift backtracer (it can hang)
cd "$(dirname "$0")/../.."
ALL=(FuzzEngineCodec FuzzSocketCodec FuzzJSONParser FuzzClientCommand FuzzHistoryChunk)
MODE=fuzz
SECONDS_PER=90
BUILD=1
if [[ "${1:-}" == "--no-build" ]]; then BUILD=0; shift; fi
if [[ "${1:-}" == "--replay" ]]; then MODE=replay; shift; elif [[ "${1:-}" =~ ^[0-9]+$ ]]; then SECONDS_PER=$1; shift; fi
TARGETS=("$@"); [[ ${#TARGETS[@]} -eq 0 ]] && TARGETS=("${ALL[@]}")

[[ $BUILD == 1 ]] && echo "== build (flock /tmp/swiftbuild.lock; ASan + libFuzzer)" && \
flock /tmp/swiftbuild.lock swift build --package-path Fuzz --scratch-path .build-fuzz -c debug \
    -Xswiftc -sanitize=fuzzer,address -Xswiftc -parse-as-library 2>&1 | grep -E "error|Compiling|Build complete" | tail -5
BIN=.build-fuzz/debug
status=0
printf "%-18s %10s %8s %8s %s\n" target seconds execs crashes corpus
for t in "${TARGETS[@]}"; do
    mkdir -p "Fuzz/Crashes/$t" ".build-fuzz/corpus/$t"
    if [[ $MODE == replay ]]; then
        files=$(find "Fuzz/Corpus/$t" "Fuzz/Crashes/$t" -type f 2>/dev/null)
        if [[ -n "$files" ]]; then
            "$BIN/$t" $files > ".build-fuzz/$t.replay.log" 2>&1 || { echo "$t: REPLAY FAILED (see .build-fuzz/$t.replay.log)"; status=1; continue; }
        fi
        echo "$t: replayed $(echo "$files" | grep -c .) inputs, no crash"
        continue
    fi
    log=".build-fuzz/$t.log"
    before=$(find "Fuzz/Crashes/$t" -type f | wc -l)
    "$BIN/$t" ".build-fuzz/corpus/$t" "Fuzz/Corpus/$t" -max_total_time="$SECONDS_PER" -timeout=10 \
        -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1 -artifact_prefix="Fuzz/Crashes/$t/" \
        -close_fd_mask=3 > "$log" 2>&1
    rc=$?
    after=$(find "Fuzz/Crashes/$t" -type f | wc -l)
    execs=$(grep -o "stat::number_of_executed_units: [0-9]*" "$log" | awk '{print $2}' | tail -1)
    corpus=$(find ".build-fuzz/corpus/$t" -type f | wc -l)
    printf "%-18s %10s %8s %8s %s\n" "$t" "$SECONDS_PER" "${execs:-?}" "$((after - before))" "$corpus"
    if [[ $rc -ne 0 ]]; then status=1; grep -m3 -E "ERROR|Fatal|panic|precondition" "$log"; fi
done
exit $status
