#!/usr/bin/env bash
# The test suite, as CI runs it: installs NVRTC and the CUDA headers from NVIDIA's pip wheels
# (so the kernel compile check runs for real, no GPU needed), then runs every test of the
# workspace. GPU parity tests print one skip line each without a device.
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(bash scripts/install-nvrtc.sh --print-env)"
cargo test --workspace "$@"
