#!/usr/bin/env bash
# The test suite, as CI runs it: installs NVRTC and the CUDA headers from NVIDIA's pip wheels
# (so the kernel compile check runs for real, no GPU needed), then
#   1. every test of the workspace (GPU parity tests print one skip line each without a device;
#      their emulated twins run on the CPU emulation of a device);
#   2. the emulated GPU suites again with the kernels and the fake driver built with
#      -fsanitize=address,undefined (scripts/test-sanitized.sh);
#   3. the rehearsal of the GPU check on the emulated device (scripts/gpu-check.sh rehearse):
#      the same stages, caps, files and summary as on a lent GPU.
# Arguments go to step 1's `cargo test` (and skip steps 2-3, for a quick filtered run).
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(bash scripts/install-nvrtc.sh --print-env)"
cargo test --workspace "$@"
if [ "$#" -eq 0 ]; then
    # The cuda_step example's own tests (its step accounting on the CPU and the emulated device).
    cargo test -p samkit-nn --example cuda_step
    bash scripts/test-sanitized.sh
    bash scripts/gpu-check.sh rehearse target/gpu-rehearsal-out
fi
