#!/usr/bin/env bash
# Installs NVRTC and the CUDA headers from NVIDIA's pip wheels into a virtual environment, for the
# kernel compile check of samkit-cuda (no GPU, no CUDA toolkit, no root needed), and prints the
# environment to export.
#
#   scripts/install-nvrtc.sh            # venv at ${SAMKIT_NVRTC_VENV:-~/.cache/samkit/nvrtc-venv}
#   eval "$(scripts/install-nvrtc.sh --print-env)"
#
# samkit-cuda finds that venv by default; exporting SAMKIT_CUDA_ROOT makes the choice explicit.
# Works on a fresh Debian/Ubuntu with python3 (python3-venv); falls back to `pip install --target`
# when the venv module is missing.
set -euo pipefail

NVRTC_VERSION=13.0.88
RUNTIME_VERSION=13.0.96
VENV="${SAMKIT_NVRTC_VENV:-${HOME}/.cache/samkit/nvrtc-venv}"
PRINT_ENV=0
for a in "$@"; do
    case "$a" in
        --print-env) PRINT_ENV=1 ;;
        -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
        *) echo "unknown argument: $a" >&2; exit 2 ;;
    esac
done

log() { if [ "$PRINT_ENV" = 1 ]; then echo "$@" >&2; else echo "$@"; fi; }

find_root() {
    # The nvidia/cu13 folder holding lib/libnvrtc.so.13 and include/cuda_fp16.h.
    local d
    for d in "$VENV"/lib/python3*/site-packages/nvidia/cu13 "$VENV"/site-packages/nvidia/cu13; do
        if [ -f "$d/lib/libnvrtc.so.13" ] && [ -f "$d/include/cuda_fp16.h" ]; then
            echo "$d"
            return 0
        fi
    done
    return 1
}

if ! ROOT="$(find_root)"; then
    log "installing nvidia-cuda-nvrtc==$NVRTC_VERSION nvidia-cuda-runtime==$RUNTIME_VERSION into $VENV"
    mkdir -p "$(dirname "$VENV")"
    if python3 -m venv "$VENV" >/dev/null 2>&1 && [ -x "$VENV/bin/pip" ]; then
        "$VENV/bin/pip" install --quiet --disable-pip-version-check \
            "nvidia-cuda-nvrtc==$NVRTC_VERSION" "nvidia-cuda-runtime==$RUNTIME_VERSION" >&2
    else
        # No ensurepip (python3-venv not installed): a plain target directory works as well.
        rm -rf "$VENV"
        python3 -m pip install --quiet --disable-pip-version-check --target "$VENV/site-packages" \
            "nvidia-cuda-nvrtc==$NVRTC_VERSION" "nvidia-cuda-runtime==$RUNTIME_VERSION" >&2
    fi
    ROOT="$(find_root)" || { echo "install-nvrtc: wheels installed but nvidia/cu13 not found under $VENV" >&2; exit 1; }
fi

if [ "$PRINT_ENV" = 1 ]; then
    echo "export SAMKIT_CUDA_ROOT='$ROOT'"
    echo "export SAMKIT_REQUIRE_NVRTC=1"
else
    log "NVRTC and headers in $ROOT"
    log "export SAMKIT_CUDA_ROOT='$ROOT'"
fi
