#!/usr/bin/env bash
# Installs the CUDA 13.0 compiler pieces the kernel checks need (NVRTC, the CUDA headers,
# ptxas) from NVIDIA's PyPI wheels into .venv at the repository root, and prints the folder
# that holds their include/, lib/ and bin/ as the only line on stdout (everything else goes to
# stderr), so that callers can write `home=$(bash .ci/tools/cuda-wheels.sh)`.
#
# The whole set is pinned and installed with --no-deps: an unpinned dependency resolves to a
# newer CUDA whose NVRTC stamps PTX that the 13.0 drivers of our GPU machines refuse.
# Idempotent: a stamp file records the installed set; a second run only checks the files.
set -euo pipefail
cd "$(dirname "$0")/../.."

PINNED=(
  nvidia-cuda-nvrtc==13.0.88   # libnvrtc.so.13: compiles the kernels
  nvidia-cuda-runtime==13.0.96 # cuda_runtime/cuda_bf16 headers (NVRTC has none built in)
  nvidia-cuda-nvcc==13.0.88    # ptxas: register / shared-memory / spill report
  nvidia-nvvm==13.0.88         # the nvcc wheel's own dependencies, pinned to the same release
  nvidia-cuda-crt==13.0.88
  nvidia-cuda-cccl==13.0.85    # <nv/target> and friends, included by the bf16 header
)
VENV=.venv
STAMP=$VENV/cuda-wheels.txt

command -v python3 >/dev/null || { echo "python3 not found: install Python 3 (with venv and pip)" >&2; exit 1; }

site_packages() {
  "$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'
}

# The files the build and the tests use; all must be present for the set to count as installed.
complete() {
  local home=$1
  [[ -f $home/lib/libnvrtc.so.13 && -x $home/bin/ptxas && -f $home/include/cuda_bf16.h ]]
}

if [[ ! -x $VENV/bin/python ]]; then
  echo "cuda-wheels: creating $VENV" >&2
  python3 -m venv "$VENV" >&2
fi
HOME_CU13="$(site_packages)/nvidia/cu13"

if [[ -f $STAMP && "$(cat "$STAMP")" == "${PINNED[*]}" ]] && complete "$HOME_CU13"; then
  echo "cuda-wheels: pinned set already installed" >&2
else
  echo "cuda-wheels: installing ${PINNED[*]}" >&2
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    "${PINNED[@]}" >&2
  complete "$HOME_CU13" || { echo "cuda-wheels: the wheels installed but $HOME_CU13 lacks NVRTC, ptxas or cuda_bf16.h" >&2; exit 1; }
  printf '%s' "${PINNED[*]}" >"$STAMP"
fi

ABS_HOME="$(cd "$HOME_CU13" && pwd)"
{
  echo "cuda-wheels: include: $ABS_HOME/include"
  echo "cuda-wheels: lib:     $ABS_HOME/lib (must be on LD_LIBRARY_PATH before the tests start)"
  echo "cuda-wheels: bin:     $ABS_HOME/bin (ptxas $("$ABS_HOME/bin/ptxas" --version | sed -n 's/.*release //p'))"
} >&2
echo "$ABS_HOME"
