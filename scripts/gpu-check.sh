#!/usr/bin/env bash
# The GPU checks of samkit-cuda, samkit-nn's CUDA backend and `samkit --device cuda`, sized for
# the lent GPU machine: a bundle of at most 56 MiB travels (with the working tree, 64 MiB in
# all), the run fits in 420 s, and at most 5 files come back (8 may).
#
#   scripts/gpu-check.sh build [--profile release|test] [DIR]
#       here, no GPU needed: the x86-64 binaries parity, compile, cuda_kernels (criterion bench),
#       cuda_parity, cuda_step, samkit, cuda_training, stripped (--strip-all), the cubins of the
#       kernels for sm_80/sm_90 (the GPU machine needs no NVRTC), the PyTorch anchor; prints the
#       bundle's size and fails above 56 MiB (or above 64 MiB with the working tree). DIR:
#       target/gpu-check (release, the default) or
#       target/gpu-check-test (test: the profile `cargo test` builds in, which reuses what
#       `cargo test --workspace` compiled; the rehearsal uses it). Carry DIR to the GPU machine.
#   scripts/gpu-check.sh run [--only STAGE[,STAGE]] DIR OUT
#       on the GPU machine: the stages in priority order, each with its own cap (seconds; the
#       caps sum to 420, a stage's unused time passes on): 1 parity (120) every rule and kernel
#       against the CPU; 2 bench (80) the kernel table against copy bandwidth, variant rows
#       included; 3 nn (100) samkit-nn parity, the batch-128 ResNet-18 step and PyTorch eager
#       beside it; 4 cli (60) the `samkit --device cuda` trainer tests; 5 sanitizer (60)
#       compute-sanitizer memcheck, racecheck, synccheck, initcheck on a small parity run.
#       Everything is written to a scratch folder; OUT gets summary.json and logs.tar.gz
#       (rewritten after every stage, so a run killed at its limit still brings back what it
#       finished) and the tables bench.json, nn-step.json, torch-resnet.json. No folders.
#       Exit 0 when `ok` (stages 1-4 passed, no sanitizer errors).
#   scripts/gpu-check.sh run-nn DIR OUT    the same as run --only nn
#   scripts/gpu-check.sh run-cli DIR OUT   the same as run --only cli
#   scripts/gpu-check.sh rehearse [--bundle DIR] OUT
#       here, no GPU (CI runs it after `cargo test --workspace`; about a minute): the runner's
#       own tests, then the whole `run` against the CPU emulation of a device (the fake driver,
#       cuBLAS and cuDNN of crates/samkit-testkit/fakecuda, first on the library path) with
#       the same staging, files and summary, on small configurations and rehearsal caps: parity
#       up to 100k parameters, the kernel table through `samkit bench-kernels --width 4`, four
#       samkit-nn layer tests and a width-4 batch-2 step, the CLI's device probe, no sanitizer
#       (absent). Builds the test-profile bundle target/gpu-check-test first unless --bundle
#       names a built one. Fails unless OUT holds at most 8 files, none deeper than 2 folders,
#       and a summary.json with every stage, its time, cap and verdict, the sanitizer fields,
#       device "emulated", parity tests that really ran on it, and ok.
#   scripts/gpu-check.sh all [OUT]         build and run, on a GPU machine with a Rust toolchain
#
# On the GPU machine (the device tool; DIR carried, 64 MiB with the tree):
#   run: command "bash scripts/gpu-check.sh run target/gpu-check \$OUT", carry
#   ["target/gpu-check"], timeout_s 480 (420 s of caps, a minute of margin).
# The runner is tools/gpu-check/run.py (summary fields and verdicts are described there).
# Environment: CARGO_TARGET_DIR, GPU_CHECK_ARCHS (build: the cubins' architectures, default
# "80 90"); GPU_CHECK_CAPS="parity=100,memcheck=20,...", GPU_CHECK_TOTAL_S,
# GPU_CHECK_SANITIZER=<path>|none (run).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cmd="${1:-}"
shift || true

die() { echo "gpu-check: $*" >&2; exit 2; }

# The bundle's limit (the working tree and the carried paths travel together, 64 MiB at most;
# 8 MiB are kept for the tree, 5.7 MiB on 2026-12-01). The release bundle was 32 MiB and the
# test-profile bundle of the rehearsal 40.0 MiB on 2026-12-01.
MAX_BUNDLE_BYTES=$((56 << 20))
MAX_TRAVEL_BYTES=$((64 << 20))
# The bundle's binaries (cargo target names; each unique in the workspace).
BINARIES="parity compile cuda_kernels cuda_parity cuda_step samkit cuda_training"

artifacts() {
    # Executables of a cargo --message-format=json build: "<name> <kind> <test> <path>" per line
    # (kind: test, bench, example, bin; test: 1 for a libtest harness build).
    python3 -c '
import json, sys
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable"):
        t = m["target"]
        print(t["name"], t["kind"][0], int(m["profile"]["test"]), m["executable"])
'
}

cargo_json() {
    # A cargo command with its JSON messages turned into artifacts() lines on stdout; its
    # human-readable errors go to LOG and are shown when it fails.
    local log="$1"
    shift
    local json
    json="$(mktemp)"
    if ! cargo "$@" --message-format=json-render-diagnostics > "$json" 2>> "$log"; then
        tail -40 "$log" >&2
        rm -f "$json"
        die "cargo $* failed (log: $log)"
    fi
    artifacts < "$json"
    rm -f "$json"
}

nvrtc_env() {
    # NVRTC and the CUDA headers (the cubins, the fake driver): scripts/install-nvrtc.sh.
    if [ -z "${SAMKIT_CUDA_ROOT:-}" ]; then
        eval "$(bash "$ROOT/scripts/install-nvrtc.sh" --print-env)"
    fi
}

bytes_of() { du -sb "$@" 2>/dev/null | awk '{s += $1} END {print s + 0}'; }
mib() { awk -v b="$1" 'BEGIN {printf "%.1f MiB", b / 1048576}'; }

build() {
    local profile=release dir=""
    while [ $# -gt 0 ]; do
        case "$1" in
            --profile) profile="${2:?--profile release|test}"; shift 2 ;;
            --profile=*) profile="${1#--profile=}"; shift ;;
            -*) die "build: unknown option $1" ;;
            *) dir="$1"; shift ;;
        esac
    done
    local flags=()
    case "$profile" in
        release) flags=(--release); dir="${dir:-$ROOT/target/gpu-check}" ;;
        # `cargo test`'s own profile (target/debug): after `cargo test --workspace` only the
        # bench is new. (cargo's dev profile proper would rebuild everything at opt-level 0.)
        test|dev|debug) profile=test; dir="${dir:-$ROOT/target/gpu-check-test}" ;;
        *) die "build: --profile release or test, not $profile" ;;
    esac
    [ "$(uname -m)" = x86_64 ] || die "build on x86-64 (the GPU machine is x86-64)"
    nvrtc_env
    rm -rf "$dir/bin" "$dir/cubins" "$dir/anchors" "$dir/meta"
    mkdir -p "$dir/bin" "$dir/cubins" "$dir/anchors" "$dir/meta"
    dir="$(cd "$dir" && pwd)"
    cd "$ROOT"
    local t0 list="$dir/meta/artifacts.txt" log="$dir/meta/cargo.log"
    t0=$(date +%s)
    : > "$log"
    # --workspace everywhere: the features are unified as in `cargo test --workspace`, so the
    # libraries it compiled are reused, not rebuilt for another feature set.
    if [ "$profile" = test ]; then
        echo "gpu-check: cargo test --workspace --no-run (what CI's cargo test built) and the bench"
        cargo_json "$log" test --workspace --no-run > "$list"
    else
        echo "gpu-check: release test binaries, the samkit binary and the bench (several minutes)"
        cargo_json "$log" test --workspace --release --no-run \
            --test parity --test compile --test cuda_parity --test cuda_training > "$list"
        # Built as an example, not as a test harness (`cargo test --example` would be one).
        cargo_json "$log" build --workspace --release --example cuda_step >> "$list"
    fi
    # A criterion bench (harness = false): built by `cargo test` it is the same program, and
    # `--bench` runs it as `cargo bench` would.
    cargo_json "$log" test --workspace "${flags[@]}" --no-run --bench cuda_kernels >> "$list"
    local secs_cargo=$(( $(date +%s) - t0 ))

    local name kind test path want
    while read -r name kind test path; do
        case "$name:$kind:$test" in
            parity:test:1|compile:test:1|cuda_parity:test:1|cuda_training:test:1|cuda_kernels:bench:*|cuda_step:example:0|samkit:bin:0)
                objcopy --strip-all "$path" "$dir/bin/$name" ;;
        esac
    done < "$list"
    for want in $BINARIES; do
        [ -x "$dir/bin/$want" ] || die "binary $want was not built (see $list)"
    done

    # The cubins, from the compile check (NVRTC here).
    if ! SAMKIT_REQUIRE_NVRTC=1 SAMKIT_WRITE_CUBINS="$dir/cubins" "$dir/bin/compile" --quiet \
        > "$dir/meta/compile.log" 2>&1; then
        cat "$dir/meta/compile.log" >&2
        die "the compile check failed (NVRTC missing? run scripts/install-nvrtc.sh)"
    fi
    # samkit-nn's kernels (crates/samkit-kernels/kernels/nn.cu), the same way.
    if ! SAMKIT_REQUIRE_NVRTC=1 SAMKIT_WRITE_CUBINS="$dir/cubins" "$dir/bin/cuda_parity" nn_kernels_compile \
        > "$dir/meta/nn-compile.log" 2>&1; then
        cat "$dir/meta/nn-compile.log" >&2
        die "the compile check of crates/samkit-kernels/kernels/nn.cu failed"
    fi
    # GPU_CHECK_ARCHS="90" keeps only the H200's cubins (the sm_80 ones are half the cubins'
    # size); a GPU without a cubin of its architecture compiles the kernels with NVRTC there.
    local c arch keep
    for c in "$dir"/cubins/*.cubin; do
        keep=0
        for arch in ${GPU_CHECK_ARCHS:-80 90}; do
            case "$c" in *-sm_"$arch"-*) keep=1 ;; esac
        done
        [ "$keep" = 1 ] || rm -f "$c"
    done
    cp "$ROOT/tools/anchors/torch_gpu_resnet.py" "$ROOT/tools/anchors/cifar_resnet.py" "$dir/anchors/"
    git -C "$ROOT" rev-parse HEAD > "$dir/revision" 2>/dev/null || echo unknown > "$dir/revision"
    if ! git -C "$ROOT" diff --quiet HEAD 2>/dev/null; then
        echo "$(cat "$dir/revision")+uncommitted" > "$dir/revision"
    fi

    local total tree
    total=$(bytes_of "$dir")
    # What travels beside it: tracked and untracked-not-ignored files.
    tree=$(cd "$ROOT" && git ls-files -z --cached --others --exclude-standard 2>/dev/null \
        | du -cb --files0-from=- 2>/dev/null | tail -1 | cut -f1)
    tree=${tree:-0}
    echo "gpu-check: bundle $dir: $(mib "$total") ($(ls "$dir/cubins" | wc -l) cubins; binaries $(mib "$(bytes_of "$dir/bin")"), cubins $(mib "$(bytes_of "$dir/cubins")")); working tree $(mib "$tree"); built in $(( $(date +%s) - t0 )) s (cargo $secs_cargo s)"
    ls -l "$dir/bin" | awk 'NR > 1 {printf "gpu-check:   %-14s %6.1f MiB\n", $9, $5 / 1048576}'
    [ "$total" -le "$MAX_BUNDLE_BYTES" ] || die "the bundle is $(mib "$total"), over the limit of $(mib "$MAX_BUNDLE_BYTES")"
    [ $((total + tree)) -le "$MAX_TRAVEL_BYTES" ] || \
        die "bundle and working tree are $(mib $((total + tree))) together, over the $(mib "$MAX_TRAVEL_BYTES") that travel"
}

run() {
    local only=""
    while [ $# -gt 0 ]; do
        case "$1" in
            --only) only="${2:?--only STAGE[,STAGE]}"; shift 2 ;;
            --only=*) only="${1#--only=}"; shift ;;
            -*) die "run: unknown option $1" ;;
            *) break ;;
        esac
    done
    local dir="${1:?run DIR OUT}" out="${2:?run DIR OUT}"
    [ -x "$dir/bin/parity" ] || die "$dir is no bundle (scripts/gpu-check.sh build)"
    exec python3 "$ROOT/tools/gpu-check/run.py" --bundle "$dir" --out "$out" ${only:+--only "$only"}
}

fake_libs() {
    # The fake driver, cuBLAS and cuDNN (one line each into FILE), built by samkit-testkit through
    # its test binary crates/samkit-testkit/tests/fake_libs.rs (the same build, and the same
    # cache under target/tmp, as the emulated tests).
    local file="$1" log="$2" exe
    exe="$(cargo_json "$log" test --workspace --no-run --test fake_libs | awk '$1 == "fake_libs" && $2 == "test" {print $4}' | tail -1)"
    [ -x "$exe" ] || die "the fake_libs test binary was not built"
    SAMKIT_REQUIRE_EMULATION=1 SAMKIT_FAKE_LIBS_LIST="$file" "$exe" --exact fake_libraries_are_built_and_listed \
        >> "$log" 2>&1 || { tail -30 "$log" >&2; die "building the fake CUDA libraries failed"; }
    [ "$(wc -l < "$file")" -eq 3 ] || die "expected 3 fake libraries in $file"
}

rehearse() {
    local dir="" build_it=1
    while [ $# -gt 0 ]; do
        case "$1" in
            --bundle) dir="${2:?--bundle DIR}"; build_it=0; shift 2 ;;
            -*) die "rehearse: unknown option $1" ;;
            *) break ;;
        esac
    done
    local out="${1:?rehearse OUT}" t0 t1 t2
    t0=$(date +%s)
    echo "gpu-check: rehearsal: the runner's own tests"
    python3 "$ROOT/tools/gpu-check/test_run.py" 2>&1 | tail -3
    [ "${PIPESTATUS[0]}" -eq 0 ] || die "tools/gpu-check/test_run.py failed"
    nvrtc_env
    if [ "$build_it" = 1 ]; then
        dir="$ROOT/target/gpu-check-test"
        build --profile test "$dir"
    fi
    dir="$(cd "$dir" && pwd)"
    t1=$(date +%s)
    local libs="$dir/meta/fake-libs.txt"
    fake_libs "$libs" "$dir/meta/fake-libs.log"
    # Only the runner's own files are cleared (OUT must hold nothing else: it is checked below).
    mkdir -p "$out"
    rm -f "$out"/summary.json "$out"/logs.tar.gz "$out"/bench.json "$out"/nn-step.json \
        "$out"/torch-resnet.json "$out"/.*.tmp
    t2=$(date +%s)
    local rc=0 scratch="$ROOT/target/gpu-check-rehearsal-scratch"
    rm -rf "$scratch"
    GPU_CHECK_SANITIZER=none python3 "$ROOT/tools/gpu-check/run.py" --mode emulated \
        --bundle "$dir" --out "$out" --fake-libs "$libs" --scratch "$scratch" || rc=$?
    echo "gpu-check: rehearsal: build $((t1 - t0)) s, fake libraries $((t2 - t1)) s, run $(( $(date +%s) - t2 )) s (exit $rc)"
    python3 "$ROOT/tools/gpu-check/run.py" --verify "$out" --expect-device emulated --require-ok \
        || die "rehearsal: $out is not what the GPU machine must bring back"
    [ "$rc" -eq 0 ] || die "rehearsal: the run failed (exit $rc)"
    echo "gpu-check: rehearsal passed in $(( $(date +%s) - t0 )) s: $(ls "$out" | tr '\n' ' ')"
}

case "$cmd" in
    build) build "$@" ;;
    run) run "$@" ;;
    run-nn) run --only nn "$@" ;;
    run-cli) run --only cli "$@" ;;
    rehearse) rehearse "$@" ;;
    all)
        out="${1:-$ROOT/target/gpu-check-results}"
        build "$ROOT/target/gpu-check"
        run "$ROOT/target/gpu-check" "$out"
        ;;
    *) sed -n '2,45p' "$0"; exit 2 ;;
esac
