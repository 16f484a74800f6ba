#!/usr/bin/env bash
# The GPU checks of samkit-cuda: every GPU test and bench, compute-sanitizer when present, and a
# JSON summary.
#
#   scripts/gpu-check.sh build [DIR]     here, no GPU needed: the release (x86-64) test and bench
#                                        binaries, stripped, and the cubins of the kernels for
#                                        sm_80/sm_90 (so the GPU machine needs no NVRTC) into DIR
#                                        (default target/gpu-check)
#   scripts/gpu-check.sh run DIR OUT     on the GPU machine: the parity tests, the criterion bench
#                                        with its kernel table, compute-sanitizer memcheck and
#                                        racecheck on the parity tests when the tool is there;
#                                        logs and OUT/summary.json (under 5 minutes on an H200)
#   scripts/gpu-check.sh all [OUT]       both, on a GPU machine with a Rust toolchain
#
# `run` sets the library path from the Python nvidia packages (libnvrtc, libcudart) and points
# samkit-cuda at the prebuilt cubins (SAMKIT_CUDA_CUBIN_DIR) and at a kernel cache inside OUT.
# Environment: CARGO_TARGET_DIR (build), GPU_CHECK_BUDGET_S (run, default 290).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cmd="${1:-}"
shift || true

die() { echo "gpu-check: $*" >&2; exit 2; }

artifacts() {
    # Executables of a cargo --message-format=json build: "<target name> <path>" per line.
    python3 -c '
import json, sys
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable"):
        print(m["target"]["name"], m["executable"])
'
}

build() {
    local dir="${1:-$ROOT/target/gpu-check}"
    [ "$(uname -m)" = x86_64 ] || die "build on x86-64 (the GPU machine is x86-64)"
    mkdir -p "$dir/bin" "$dir/cubins"
    cd "$ROOT"
    echo "gpu-check: building the release test binaries of samkit-cuda"
    cargo test -p samkit-cuda --release --no-run --message-format=json 2>/dev/null | artifacts > "$dir/tests.txt"
    echo "gpu-check: building the bench"
    cargo bench --bench cuda_kernels --no-run --message-format=json 2>/dev/null | artifacts > "$dir/benches.txt"
    local name path
    while read -r name path; do
        case "$name" in
            parity|compile|cuda_kernels) objcopy --strip-debug "$path" "$dir/bin/$name" ;;
        esac
    done < <(cat "$dir/tests.txt" "$dir/benches.txt")
    for b in parity compile cuda_kernels; do
        [ -x "$dir/bin/$b" ] || die "binary $b was not built"
    done
    # The cubins, from the compile check (NVRTC here; scripts/install-nvrtc.sh installs it).
    if ! SAMKIT_REQUIRE_NVRTC=1 SAMKIT_WRITE_CUBINS="$dir/cubins" "$dir/bin/compile" --quiet > "$dir/compile.log" 2>&1; then
        cat "$dir/compile.log" >&2
        die "the compile check failed (NVRTC missing? run scripts/install-nvrtc.sh)"
    fi
    git -C "$ROOT" rev-parse HEAD > "$dir/revision" 2>/dev/null || echo unknown > "$dir/revision"
    echo "gpu-check: $(du -sh "$dir" | cut -f1) in $dir ($(ls "$dir/cubins" | wc -l) cubins)"
}

python_nvidia_libs() {
    # lib folders of the pip packages nvidia-* (CUDA 12: nvidia/<pkg>/lib, CUDA 13: nvidia/cu13/lib).
    python3 - <<'EOF' 2>/dev/null || true
import glob, os, sys
seen = []
for p in sys.path:
    for d in glob.glob(os.path.join(p, "nvidia", "*", "lib")):
        if os.path.isdir(d) and d not in seen:
            seen.append(d)
print(":".join(seen))
EOF
}

find_sanitizer() {
    command -v compute-sanitizer 2>/dev/null && return 0
    for c in /usr/local/cuda/bin/compute-sanitizer /opt/cuda/bin/compute-sanitizer; do
        [ -x "$c" ] && { echo "$c"; return 0; }
    done
    python3 - <<'EOF' 2>/dev/null
import glob, os, sys
for p in sys.path:
    for c in glob.glob(os.path.join(p, "nvidia", "*", "compute-sanitizer", "compute-sanitizer")) + \
             glob.glob(os.path.join(p, "nvidia", "*", "bin", "compute-sanitizer")):
        if os.access(c, os.X_OK):
            print(c); sys.exit(0)
sys.exit(1)
EOF
}

run() {
    local dir="${1:?run DIR OUT}" out="${2:?run DIR OUT}"
    dir="$(cd "$dir" && pwd)"
    mkdir -p "$out"
    out="$(cd "$out" && pwd)"
    local budget="${GPU_CHECK_BUDGET_S:-290}" start
    start=$(date +%s)
    left() { echo $(( budget - ($(date +%s) - start) )); }

    local libs
    libs="$(python_nvidia_libs)"
    export LD_LIBRARY_PATH="${libs}${libs:+:}${LD_LIBRARY_PATH:-}"
    for d in ${libs//:/ }; do
        if [ -f "$d/libnvrtc.so.13" ] || [ -f "$d/libnvrtc.so.12" ]; then
            [ -d "$d/../include" ] && export SAMKIT_CUDA_ROOT="${SAMKIT_CUDA_ROOT:-$(cd "$d/.." && pwd)}"
        fi
    done
    export SAMKIT_CUDA_CUBIN_DIR="$dir/cubins"
    export SAMKIT_CUDA_CACHE="$out/kernel-cache"
    export RUST_BACKTRACE=1
    { nvidia-smi -L 2>/dev/null || echo "nvidia-smi: not found"; } > "$out/device.txt"
    echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH" >> "$out/device.txt"

    local rc_parity=0 rc_bench=0 rc_mem=skipped rc_race=skipped
    echo "gpu-check: parity tests"
    timeout "$(( $(left) > 200 ? 170 : $(left) - 30 ))" "$dir/bin/parity" --nocapture --test-threads=4 \
        > "$out/parity.log" 2>&1 || rc_parity=$?
    tail -3 "$out/parity.log"

    echo "gpu-check: bench"
    SAMKIT_BENCH_JSON="$out/bench.json" timeout "$(( $(left) > 120 ? 90 : $(left) - 30 ))" \
        "$dir/bin/cuda_kernels" --bench > "$out/bench.log" 2>&1 || rc_bench=$?
    sed -n '/kernel .*time (us)/,$p' "$out/bench.log" | head -20

    local san
    if san="$(find_sanitizer)"; then
        echo "gpu-check: compute-sanitizer ($san)"
        if [ "$(left)" -gt 40 ]; then
            rc_mem=0
            SAMKIT_PARITY_MAX=100000 timeout "$(( $(left) / 2 ))" "$san" --tool memcheck --error-exitcode 9 \
                "$dir/bin/parity" --test-threads=1 every_rule top_k ssam_d non_finite \
                > "$out/memcheck.log" 2>&1 || rc_mem=$?
        fi
        if [ "$(left)" -gt 20 ]; then
            rc_race=0
            SAMKIT_PARITY_MAX=100000 timeout "$(( $(left) - 10 ))" "$san" --tool racecheck --error-exitcode 9 \
                "$dir/bin/parity" --test-threads=1 every_rule top_k ssam_d \
                > "$out/racecheck.log" 2>&1 || rc_race=$?
        fi
    else
        echo "gpu-check: compute-sanitizer not found: memcheck and racecheck skipped"
    fi

    python3 - "$dir" "$out" "$rc_parity" "$rc_bench" "$rc_mem" "$rc_race" "$(( $(date +%s) - start ))" <<'EOF'
import json, os, re, sys
d, out, rc_p, rc_b, rc_m, rc_r, secs = sys.argv[1:]
def counts(log):
    try:
        text = open(os.path.join(out, log)).read()
    except OSError:
        return None
    m = re.findall(r"test result: (\w+)\. (\d+) passed; (\d+) failed", text)
    skips = len(re.findall(r"^skip: ", text, re.M))
    errors = re.findall(r"ERROR SUMMARY: (\d+) error", text)
    r = {"log": log}
    if m:
        r.update(result=m[-1][0], passed=int(m[-1][1]), failed=int(m[-1][2]))
    r["skipped"] = skips
    if errors:
        r["sanitizer_errors"] = int(errors[-1])
    return r
def code(x):
    return x if x == "skipped" else int(x)
bench = None
try:
    bench = json.load(open(os.path.join(out, "bench.json")))
except (OSError, ValueError):
    pass
summary = {
    "revision": open(os.path.join(d, "revision")).read().strip() if os.path.exists(os.path.join(d, "revision")) else None,
    "device": open(os.path.join(out, "device.txt")).read().splitlines()[0],
    "seconds": int(secs),
    "parity": dict(exit=code(rc_p), **(counts("parity.log") or {})),
    "bench": {"exit": code(rc_b), "table": bench},
    "memcheck": dict(exit=code(rc_m), **(counts("memcheck.log") or {})),
    "racecheck": dict(exit=code(rc_r), **(counts("racecheck.log") or {})),
}
# Every parity test skipped means there was no device: not a pass.
summary["device_found"] = summary["parity"].get("skipped", 0) == 0 and bench is not None
ok = summary["device_found"] and summary["parity"]["exit"] == 0 and summary["bench"]["exit"] == 0 and \
     summary["memcheck"]["exit"] in (0, "skipped") and summary["racecheck"]["exit"] in (0, "skipped")
summary["ok"] = ok
json.dump(summary, open(os.path.join(out, "summary.json"), "w"), indent=2)
print(json.dumps(summary, indent=2)[:4000])
sys.exit(0 if ok else 1)
EOF
}

case "$cmd" in
    build) build "$@" ;;
    run) run "$@" ;;
    all)
        out="${1:-$ROOT/target/gpu-check-results}"
        build "$ROOT/target/gpu-check"
        run "$ROOT/target/gpu-check" "$out"
        ;;
    *) sed -n '2,20p' "$0"; exit 2 ;;
esac
