#!/usr/bin/env bash
# The GPU checks of samkit-cuda and of samkit-nn's CUDA backend: every GPU test and bench,
# compute-sanitizer when present, and a JSON summary.
#
#   scripts/gpu-check.sh build [DIR]     here, no GPU needed: the release (x86-64) test and bench
#                                        binaries, stripped, and the cubins of the kernels for
#                                        sm_80/sm_90 (so the GPU machine needs no NVRTC) into DIR
#                                        (default target/gpu-check)
#   scripts/gpu-check.sh run DIR OUT     on the GPU machine: the parity tests, the criterion bench
#                                        with its kernel table, compute-sanitizer memcheck and
#                                        racecheck on the parity tests when the tool is there;
#                                        logs and OUT/summary.json (under 8 minutes on an H200);
#                                        samkit-nn's part (as run-nn) and the CLI's (as run-cli)
#                                        before the sanitizer
#   scripts/gpu-check.sh run-nn DIR OUT  on the GPU machine, samkit-nn only (about 3 minutes):
#                                        CPU vs CUDA parity of every layer, ResNet-18, the Fisher
#                                        and a SAM step (bin/cuda_parity), the batch-128 ResNet-18
#                                        train step per phase and optimizer (bin/cuda_step), and
#                                        PyTorch's step beside it when torch is installed
#                                        (tools/anchors/torch_gpu_resnet.py); OUT/nn-summary.json
#   scripts/gpu-check.sh run-cli DIR OUT on the GPU machine, `samkit --device cuda` only (about 2
#                                        minutes): the CUDA trainer against the CPU trainer for every
#                                        rule, resume on the device, compare and bench
#                                        (bin/cuda_training with bin/samkit); OUT/cli-summary.json
#   scripts/gpu-check.sh all [OUT]       build and run, on a GPU machine with a Rust toolchain
#
# `run` sets the library path from the Python nvidia packages (libnvrtc, libcudart) and points
# samkit-cuda at the prebuilt cubins (SAMKIT_CUDA_CUBIN_DIR) and at a kernel cache inside OUT.
# Environment: CARGO_TARGET_DIR (build), GPU_CHECK_BUDGET_S (run, default 450; run-nn, 200;
# run-cli, 150).
# samkit-nn finds cuDNN and cuBLAS through the same library path (PyTorch's nvidia wheels).
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
    echo "gpu-check: building samkit-nn's CUDA parity tests and train-step bench"
    cargo test -p samkit-nn --release --test cuda_parity --no-run --message-format=json 2>/dev/null | artifacts > "$dir/nn-tests.txt"
    cargo build -p samkit-nn --release --example cuda_step --message-format=json 2>/dev/null | artifacts > "$dir/nn-examples.txt"
    echo "gpu-check: building the samkit binary and its --device cuda tests"
    cargo build -p samkit-cli --release --bin samkit --message-format=json 2>/dev/null | artifacts > "$dir/cli.txt"
    cargo test -p samkit-cli --release --test cuda_training --no-run --message-format=json 2>/dev/null | artifacts >> "$dir/cli.txt"
    local name path
    while read -r name path; do
        case "$name" in
            parity|compile|cuda_kernels|cuda_parity|cuda_step|samkit|cuda_training) objcopy --strip-debug "$path" "$dir/bin/$name" ;;
        esac
    done < <(cat "$dir/tests.txt" "$dir/benches.txt" "$dir/nn-tests.txt" "$dir/nn-examples.txt" "$dir/cli.txt")
    for b in parity compile cuda_kernels cuda_parity cuda_step samkit cuda_training; do
        [ -x "$dir/bin/$b" ] || die "binary $b was not built"
    done
    # The cubins, from the compile check (NVRTC here; scripts/install-nvrtc.sh installs it).
    if ! SAMKIT_REQUIRE_NVRTC=1 SAMKIT_WRITE_CUBINS="$dir/cubins" "$dir/bin/compile" --quiet > "$dir/compile.log" 2>&1; then
        cat "$dir/compile.log" >&2
        die "the compile check failed (NVRTC missing? run scripts/install-nvrtc.sh)"
    fi
    # samkit-nn's kernels (kernels/nn.cu), the same way.
    if ! SAMKIT_REQUIRE_NVRTC=1 SAMKIT_WRITE_CUBINS="$dir/cubins" "$dir/bin/cuda_parity" nn_kernels_compile \
        > "$dir/nn-compile.log" 2>&1; then
        cat "$dir/nn-compile.log" >&2
        die "the compile check of kernels/nn.cu failed"
    fi
    mkdir -p "$dir/anchors"
    cp "$ROOT/tools/anchors/torch_gpu_resnet.py" "$ROOT/tools/anchors/cifar_resnet.py" "$dir/anchors/"
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

setup_env() {
    # Library path, cubins and kernel cache of the GPU machine (args: DIR OUT).
    local dir="$1" out="$2" libs
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
}

# samkit-nn: the parity tests, the train-step bench and PyTorch's step beside it, then
# OUT/nn-summary.json (args: DIR OUT SECONDS; returns 0 when everything passed on a device).
nn_checks() {
    local dir="$1" out="$2" budget="$3" t0
    t0=$(date +%s)
    nleft() { echo $(( budget - ($(date +%s) - t0) )); }
    cap() { local want="$1" have; have=$(( $(nleft) - 5 )); echo $(( have < want ? (have > 1 ? have : 1) : want )); }
    local rc_p=0 rc_b=0 rc_t=skipped anchor="$dir/anchors/torch_gpu_resnet.py"
    [ -f "$anchor" ] || anchor="$ROOT/tools/anchors/torch_gpu_resnet.py"
    echo "gpu-check: samkit-nn CUDA parity"
    SAMKIT_REQUIRE_CUDA=1 timeout "$(cap 150)" "$dir/bin/cuda_parity" --nocapture --test-threads=4 \
        > "$out/nn-parity.log" 2>&1 || rc_p=$?
    tail -3 "$out/nn-parity.log"
    echo "gpu-check: samkit-nn ResNet-18 train step (batch 128, per phase and optimizer)"
    timeout "$(cap 100)" "$dir/bin/cuda_step" --out "$out/nn-step.json" > "$out/nn-step.log" 2>&1 || rc_b=$?
    if python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
        echo "gpu-check: PyTorch's ResNet-18 step on the same GPU"
        rc_t=0
        timeout "$(cap 120)" python3 "$anchor" --samkit "$out/nn-step.json" --out "$out/torch-resnet.json" \
            > "$out/torch-resnet.log" 2>&1 || rc_t=$?
    else
        echo "gpu-check: torch with CUDA not found: PyTorch anchor skipped"
    fi
    python3 - "$out" "$rc_p" "$rc_b" "$rc_t" "$(( $(date +%s) - t0 ))" <<'EOF'
import json, os, re, sys
out, rc_p, rc_b, rc_t, secs = sys.argv[1:]
def load(f):
    try:
        return json.load(open(os.path.join(out, f)))
    except (OSError, ValueError):
        return None
try:
    log = open(os.path.join(out, "nn-parity.log")).read()
except OSError:
    log = ""
m = re.findall(r"test result: (\w+)\. (\d+) passed; (\d+) failed", log)
parity = {"exit": int(rc_p), "log": "nn-parity.log",
          "skipped_no_device": len(re.findall(r"^skip: no CUDA", log, re.M))}
if m:
    parity.update(result=m[-1][0], passed=int(m[-1][1]), failed=int(m[-1][2]))
step = load("nn-step.json")
torch = load("torch-resnet.json")
s = {
    "seconds": int(secs),
    "parity": parity,
    "bench": {"exit": int(rc_b), "result": step},
    "torch": {"exit": rc_t if rc_t == "skipped" else int(rc_t), "result": torch},
    "samkit_vs_torch": (torch or {}).get("samkit_vs_torch"),
}
s["device_found"] = parity["skipped_no_device"] == 0 and bool(m) and step is not None and "skipped" not in step
s["ok"] = s["device_found"] and parity["exit"] == 0 and int(rc_b) == 0
json.dump(s, open(os.path.join(out, "nn-summary.json"), "w"), indent=2)
brief = {k: v for k, v in s.items() if k not in ("bench", "torch")}
if step and "optimizers" in step:
    brief["median_step_ms"] = {k: v.get("median_step_ms") for k, v in step["optimizers"].items()}
print(json.dumps(brief, indent=2)[:3000])
sys.exit(0 if s["ok"] else 1)
EOF
}

# The samkit CLI on the device: the CUDA trainer against the CPU trainer for every rule, resume,
# compare and bench (args: DIR OUT SECONDS); OUT/cli-summary.json.
cli_checks() {
    local dir="$1" out="$2" budget="$3" rc=0 t0
    t0=$(date +%s)
    echo "gpu-check: samkit --device cuda (trainer parity with the CPU, resume, compare, bench)"
    SAMKIT_BIN="$dir/bin/samkit" SAMKIT_TEST_TMP="$out/cli-runs" SAMKIT_REQUIRE_CUDA=1 \
        timeout "$budget" "$dir/bin/cuda_training" --nocapture --test-threads=1 > "$out/cli.log" 2>&1 || rc=$?
    tail -3 "$out/cli.log"
    python3 - "$out" "$rc" "$(( $(date +%s) - t0 ))" <<'EOF'
import json, os, re, sys
out, rc, secs = sys.argv[1:]
try:
    log = open(os.path.join(out, "cli.log")).read()
except OSError:
    log = ""
m = re.findall(r"test result: (\w+)\. (\d+) passed; (\d+) failed", log)
s = {"exit": int(rc), "seconds": int(secs), "log": "cli.log"}
if m:
    s.update(result=m[-1][0], passed=int(m[-1][1]), failed=int(m[-1][2]))
s["ok"] = int(rc) == 0 and bool(m)
json.dump(s, open(os.path.join(out, "cli-summary.json"), "w"), indent=2)
print(json.dumps(s))
sys.exit(0 if s["ok"] else 1)
EOF
}

# One part of `run` alone (args: CHECKS DEFAULT_SECONDS DIR OUT).
run_part() {
    local checks="$1" secs="$2" dir="${3:?DIR OUT}" out="${4:?DIR OUT}"
    dir="$(cd "$dir" && pwd)"
    mkdir -p "$out"
    out="$(cd "$out" && pwd)"
    setup_env "$dir" "$out"
    "$checks" "$dir" "$out" "${GPU_CHECK_BUDGET_S:-$secs}"
}

run() {
    local dir="${1:?run DIR OUT}" out="${2:?run DIR OUT}"
    dir="$(cd "$dir" && pwd)"
    mkdir -p "$out"
    out="$(cd "$out" && pwd)"
    local budget="${GPU_CHECK_BUDGET_S:-450}" start
    start=$(date +%s)
    left() { echo $(( budget - ($(date +%s) - start) )); }
    setup_env "$dir" "$out"

    local rc_parity=0 rc_bench=0 rc_mem=skipped rc_race=skipped
    echo "gpu-check: parity tests"
    timeout "$(( $(left) > 200 ? 170 : $(left) - 30 ))" "$dir/bin/parity" --nocapture --test-threads=4 \
        > "$out/parity.log" 2>&1 || rc_parity=$?
    tail -3 "$out/parity.log"

    echo "gpu-check: bench"
    SAMKIT_BENCH_JSON="$out/bench.json" timeout "$(( $(left) > 120 ? 90 : $(left) - 30 ))" \
        "$dir/bin/cuda_kernels" --bench > "$out/bench.log" 2>&1 || rc_bench=$?
    sed -n '/kernel .*time (us)/,$p' "$out/bench.log" | head -20

    # samkit-nn (its own summary, OUT/nn-summary.json); the sanitizer gets what is left.
    nn_checks "$dir" "$out" "$(( $(left) > 260 ? 200 : $(left) / 2 ))" || true
    cli_checks "$dir" "$out" "$(( $(left) > 200 ? 120 : $(left) / 2 ))" || true

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
for key, f in (("nn", "nn-summary.json"), ("cli", "cli-summary.json")):
    try:
        summary[key] = json.load(open(os.path.join(out, f)))
    except (OSError, ValueError):
        summary[key] = None
summary["device_found"] = summary["parity"].get("skipped", 0) == 0 and bench is not None
ok = summary["device_found"] and summary["parity"]["exit"] == 0 and summary["bench"]["exit"] == 0 and \
     summary["memcheck"]["exit"] in (0, "skipped") and summary["racecheck"]["exit"] in (0, "skipped") and \
     bool(summary["nn"] and summary["nn"]["ok"]) and bool(summary["cli"] and summary["cli"]["ok"])
summary["ok"] = ok
json.dump(summary, open(os.path.join(out, "summary.json"), "w"), indent=2)
print(json.dumps(summary, indent=2)[:4000])
sys.exit(0 if ok else 1)
EOF
}

case "$cmd" in
    build) build "$@" ;;
    run) run "$@" ;;
    run-nn) run_part nn_checks 200 "$@" ;;
    run-cli) run_part cli_checks 150 "$@" ;;
    all)
        out="${1:-$ROOT/target/gpu-check-results}"
        build "$ROOT/target/gpu-check"
        run "$ROOT/target/gpu-check" "$out"
        ;;
    *) sed -n '2,31p' "$0"; exit 2 ;;
esac
