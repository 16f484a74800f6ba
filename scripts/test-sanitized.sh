#!/usr/bin/env bash
# The ASan/UBSan job of CI: the emulated GPU suites of samkit-cuda with the kernels and the fake
# driver of crates/samkit-testkit built with -fsanitize=address,undefined
# (SAMKIT_FAKE_SANITIZE=1, its own cache under target/tmp). An out-of-bounds access of a kernel
# on host memory, a use after free or undefined behaviour in a kernel stops the run with a report.
#
# The test binaries are not instrumented, so the sanitizer runtimes are preloaded into them (and
# only them: cargo's runner) and leak checking is off (Rust and NVRTC allocations live to exit).
# The compilers that samkit-testkit starts run without the preload.
#
# Usage: scripts/test-sanitized.sh [extra cargo test arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(bash scripts/install-nvrtc.sh --print-env)"
cxx=${CXX:-g++}
asan=$("$cxx" -print-file-name=libasan.so)
ubsan=$("$cxx" -print-file-name=libubsan.so)
for lib in "$asan" "$ubsan"; do
    if [[ ! -e $lib ]]; then
        echo "test-sanitized: $cxx has no $(basename "$lib") (install the compiler's sanitizer runtimes)" >&2
        exit 1
    fi
done
export SAMKIT_FAKE_SANITIZE=1
export SAMKIT_REQUIRE_EMULATION=1
# Fewer SMs, so smaller grids: this job looks for memory errors and undefined behaviour, which do
# not need hundreds of blocks (the plain emulated suites run with 132 SMs).
export SAMKIT_FAKE_SMS=${SAMKIT_FAKE_SMS:-16}
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0:abort_on_error=1:detect_odr_violation=0}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
host=$(rustc -vV | sed -n 's/^host: //p')
runner_var="CARGO_TARGET_$(echo "$host" | tr 'a-z-' 'A-Z_')_RUNNER"
export "$runner_var=env LD_PRELOAD=$asan:$ubsan"
# Bounded: a sanitized emulation is several times slower than the plain one.
timeout "${SAMKIT_SANITIZED_TIMEOUT:-900}" \
    cargo test -p samkit-cuda --test emulated --test emulator_catches "$@"
