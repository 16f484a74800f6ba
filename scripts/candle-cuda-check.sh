#!/usr/bin/env bash
# Builds (and, on a machine with a CUDA driver and GPU, tests) samkit-candle's CUDA path: the
# `cuda` feature, which turns on candle-core's and candle-nn's `cuda` features. CI (.ci/run) runs
# `check`. candle-kernels runs nvcc at build time, about 9-15 minutes on 2 cores, once per cargo
# profile (dev for the library, test for the tests: the workspace's test profile has opt-level 2,
# release for the example).
#
#   scripts/candle-cuda-check.sh check   cargo check + clippy -D warnings of samkit-candle with
#                                        `cuda`, all targets (no CUDA library needed)
#   scripts/candle-cuda-check.sh build   check, then cargo build of the library (no CUDA library
#                                        needed: an rlib is not linked)
#   scripts/candle-cuda-check.sh test    check, then the linked targets: `cargo test -p
#                                        samkit-candle --features cuda` with SAMKIT_REQUIRE_CUDA=1
#                                        (the CUDA trajectory tests fail instead of skipping) and
#                                        the CNN example with --cuda. Needs the CUDA driver
#                                        (libcuda.so.1) and a GPU.
#   scripts/candle-cuda-check.sh env     prints the environment the builds use (eval it)
#
# What it sets up (no CUDA toolkit, no root):
# - nvcc for candle-kernels from NVIDIA's pip wheels in a venv at
#   ${SAMKIT_NVCC_VENV:-~/.cache/samkit/nvcc-venv}; `nvidia-nvvm` is pinned to the nvcc's release
#   (the nvcc wheel pulls the newest one, whose PTX the 13.0 `ptxas` refuses);
# - for `test`: the libraries candle's cudarc links at build time (candle's `cuda` feature turns
#   on cudarc's `dynamic-linking`; the workspace's `fallback-dynamic-loading` follows it):
#   cuBLAS, cuBLASLt, cuRAND, NVRTC, cuDNN from the pip wheels in
#   ${SAMKIT_CUDA_LIBS_VENV:-~/.cache/samkit/cuda-libs-venv}, the CUDA runtime (candle-kernels
#   links it) from the nvcc venv, and the driver's libcuda.so.1,
#   each under its unversioned name in a link folder put on LIBRARY_PATH and LD_LIBRARY_PATH.
# Environment: CARGO_TARGET_DIR (default target/candle-cuda: its own folder, so the long build
# holds no lock on the workspace's target/), CUDA_COMPUTE_CAP (default 90: the H100/H200 class;
# candle-kernels compiles for that one architecture).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cmd="${1:-}"

die() { echo "candle-cuda-check: $*" >&2; exit 2; }

NVCC_VENV="${SAMKIT_NVCC_VENV:-${HOME}/.cache/samkit/nvcc-venv}"
LIBS_VENV="${SAMKIT_CUDA_LIBS_VENV:-${HOME}/.cache/samkit/cuda-libs-venv}"
# nvcc and its companions, all of the CUDA 13.0 release the workspace's cudarc binds
# (cuda-13000).
NVCC_WHEELS=(
    "nvidia-cuda-nvcc==13.0.88"
    "nvidia-nvvm==13.0.88"
    "nvidia-cuda-crt==13.0.88"
    "nvidia-cuda-cccl==13.0.85"
    "nvidia-cuda-runtime==13.0.96"
)
# The libraries cudarc links (CUDA 13.0 releases; cuDNN 9 for CUDA 13).
LIB_WHEELS=(
    "nvidia-cublas==13.0.2.14"
    "nvidia-curand==10.4.0.35"
    "nvidia-cuda-nvrtc==13.0.88"
    "nvidia-cudnn-cu13>=9,<10"
)

venv_install() {
    # venv_install VENV WHEEL...: a venv with these wheels (once).
    local venv="$1"
    shift
    if [ ! -x "$venv/bin/pip" ]; then
        python3 -m venv "$venv" || die "python3 -m venv $venv failed (install python3-venv)"
    fi
    "$venv/bin/pip" install --quiet --disable-pip-version-check "$@" >&2
}

site() { echo "$1"/lib/python3*/site-packages; }

nvcc_root() {
    # The nvidia/cu13 folder with bin/nvcc, installed on first use.
    local r
    r="$(site "$NVCC_VENV")/nvidia/cu13"
    if [ ! -x "$r/bin/nvcc" ] || [ ! -d "$r/nvvm" ]; then
        echo "installing nvcc (${NVCC_WHEELS[*]}) into $NVCC_VENV" >&2
        venv_install "$NVCC_VENV" "${NVCC_WHEELS[@]}"
        r="$(site "$NVCC_VENV")/nvidia/cu13"
    fi
    [ -x "$r/bin/nvcc" ] || die "nvcc not found under $r after the install"
    echo "$r"
}

build_env() {
    local r
    r="$(nvcc_root)"
    export PATH="$r/bin:$PATH" CUDA_ROOT="$r" CUDA_PATH="$r"
    export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
    # cudarc's build script reads the version from here (candle asks it to ask nvcc otherwise).
    export CUDARC_CUDA_VERSION=13000
    export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target/candle-cuda}"
}

driver_lib() {
    # The driver's libcuda.so.1 (it comes with the NVIDIA driver, not with a wheel).
    local f
    f="$(/sbin/ldconfig -p 2>/dev/null | awk '/libcuda\.so\.1 .*x86-64/ {print $NF; exit}')"
    if [ -z "$f" ]; then
        for f in /usr/lib/x86_64-linux-gnu/libcuda.so.1 /usr/lib64/libcuda.so.1 \
            /usr/local/nvidia/lib64/libcuda.so.1 /usr/lib/wsl/lib/libcuda.so.1; do
            [ -e "$f" ] && break
            f=""
        done
    fi
    echo "$f"
}

link_env() {
    # A folder of unversioned names (what `-lcublas` etc. look for) pointing at the wheels' and
    # the driver's libraries, on the link and load paths.
    local drv sp link lib f
    drv="$(driver_lib)"
    [ -n "$drv" ] || die "no libcuda.so.1 (the NVIDIA driver) on this machine: the linked targets \
need it at build time and a GPU to run; 'check' and 'build' work without"
    sp="$(site "$LIBS_VENV")"
    if ! ls "$sp"/nvidia/cu13/lib/libcublas.so.* "$sp"/nvidia/cudnn/lib/libcudnn.so.* \
        >/dev/null 2>&1; then
        echo "installing ${LIB_WHEELS[*]} into $LIBS_VENV" >&2
        venv_install "$LIBS_VENV" "${LIB_WHEELS[@]}"
        sp="$(site "$LIBS_VENV")"
    fi
    link="$CARGO_TARGET_DIR/cuda-link"
    mkdir -p "$link"
    for lib in cublas cublasLt curand nvrtc cudnn; do
        f="$(ls "$sp"/nvidia/*/lib/lib"$lib".so.* 2>/dev/null | grep -E "/lib$lib\.so\.[0-9]+$" | head -1)"
        [ -n "$f" ] || die "lib$lib.so.N not found under $sp/nvidia after the install"
        ln -sf "$f" "$link/lib$lib.so"
    done
    ln -sf "$drv" "$link/libcuda.so"
    # candle-kernels' MoE library links the CUDA runtime too (the nvcc venv's wheel has it).
    f="$(ls "$CUDA_ROOT"/lib/libcudart.so.[0-9]* 2>/dev/null | head -1)"
    [ -n "$f" ] || die "libcudart.so.N not found under $CUDA_ROOT/lib"
    ln -sf "$f" "$link/libcudart.so"
    local dirs
    dirs="$(ls -d "$sp"/nvidia/*/lib | tr '\n' ':')"
    export LIBRARY_PATH="$link:${LIBRARY_PATH:-}"
    export LD_LIBRARY_PATH="$link:$dirs${LD_LIBRARY_PATH:-}"
}

check() {
    (cd "$ROOT" && cargo check -p samkit-candle --features cuda --all-targets)
    (cd "$ROOT" && cargo clippy -p samkit-candle --features cuda --all-targets -- -D warnings)
}

case "$cmd" in
    env)
        build_env
        echo "export PATH='$PATH' CUDA_ROOT='$CUDA_ROOT' CUDA_PATH='$CUDA_PATH'"
        echo "export CUDA_COMPUTE_CAP='$CUDA_COMPUTE_CAP' CUDARC_CUDA_VERSION=13000"
        echo "export CARGO_TARGET_DIR='$CARGO_TARGET_DIR'"
        ;;
    check)
        build_env
        check
        ;;
    build)
        build_env
        check
        (cd "$ROOT" && time cargo build -p samkit-candle --features cuda)
        ;;
    test)
        build_env
        check
        link_env
        (cd "$ROOT" && SAMKIT_REQUIRE_CUDA=1 cargo test -p samkit-candle --features cuda)
        (cd "$ROOT" && cargo run -p samkit-candle --release --features cuda --example train_cnn \
            -- --cuda)
        ;;
    -h | --help | "")
        sed -n '2,31p' "$0"
        [ -n "$cmd" ] || exit 2
        ;;
    *) die "unknown command: $cmd (check, build, test, env)" ;;
esac
