#!/usr/bin/env bash
# The CUDA checks on a lent GPU machine, which has the NVIDIA driver and CUDA toolkit but no
# Rust: the test and benchmark binaries are built here and travel with the working tree.
#
#   bash scripts/gpu.sh pack      # here: builds and packs them into .gpu/ (git-ignored, ~15 MB), and
#                                 # moves aside what only the CPU tests read (see `aside`)
#   bash scripts/gpu.sh run       # there, from the repository root: tests, then benchmarks
#   bash scripts/gpu.sh restore   # here, after the call: puts the moved files back
#
# `run` writes one log per binary under $OUT (or /tmp/gpu-out) and ends with a summary.
# INFINITY_GPU_BENCH=0 skips the benchmarks; INFINITY_GPU_TESTS=0 skips the tests, or names the
# test binaries to run ("cuda_attention cuda_transformer"). Test binaries find tests/fixtures through the path they were built
# at, so `run` links that path to the repository root. The working tree travels to the GPU
# machine under a 64 MiB limit, so `pack` moves the files no GPU test reads into .gpu-aside/
# (git-ignored): the default model's weights and pictures, the .pth/.ckpt copies only CPU tests
# read, and the manifests; `restore` puts them back.
set -uo pipefail
cd "$(dirname "$0")/.."
pack=.gpu

# Executables of the cargo messages on stdin: "name path" per test or bench target.
executables() {
    python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"][0] in ("test", "bench"):
        print(m["target"]["name"], m["executable"])'
}

do_pack() {
    set -e
    rm -rf "$pack" && mkdir -p "$pack/bin"
    {
        # Every test binary whose bodies run on each executor (a GPU there): the CUDA tests,
        # the op and gradient harnesses (AdamW's kernels among them), the transformer goldens,
        # teacher forcing and the training steps; and NCCL's world-of-one run.
        cargo test --no-run --test 'cuda_*' --test cli --test ops --test autograd --test transformer --test teacher_forcing \
            --test train_step --test train_vae --test data_parallel --message-format=json
        cargo bench --no-run --bench cuda --bench train --message-format=json
    } | executables >"$pack/targets"
    cargo build --bin infinity-run # the debug binary the cli tests name
    while read -r name path; do strip -o "$pack/bin/$name" "$path"; done <"$pack/targets"
    strip -o "$pack/bin/infinity-run" target/debug/infinity-run
    tar -C "$pack" -cJf "$pack/bins.tar.xz" bin && rm -rf "$pack/bin"
    echo "built at: $PWD" >"$pack/origin"
    du -h "$pack/bins.tar.xz"
}

# Tracked files the GPU tests do not read, moved into .gpu-aside/ for the call.
# (The cli binary runs only its device tests there; transformer reads devB's .pth.)
aside=(assets/models/default/*.safetensors assets/models/*.png tests/fixtures/devA/vae.pth tests/fixtures/devC/vae.pth
    tests/fixtures/devV/*.pth tests/fixtures/devM/*.ckpt tests/fixtures/manifests)

do_aside() {
    mkdir -p .gpu-aside
    for f in "${aside[@]}"; do [ -e "$f" ] && mkdir -p ".gpu-aside/$(dirname "$f")" && mv "$f" ".gpu-aside/$f"; done
    du -sh .gpu-aside
}

do_restore() {
    [ -d .gpu-aside ] || return 0
    (cd .gpu-aside && find . -mindepth 1 -maxdepth 4 \( -type f -o -name manifests \) -print) | while read -r f; do
        [ -e "${f#./}" ] || { mkdir -p "$(dirname "${f#./}")" && mv ".gpu-aside/${f#./}" "${f#./}"; }
    done
    rm -rf .gpu-aside
    git status --short | head
}

do_run() {
    local out=${OUT:-/tmp/gpu-out} origin
    mkdir -p "$out"
    origin=$(sed -n 's/^built at: //p' "$pack/origin")
    if [ "$origin" != "$PWD" ] && [ ! -e "$origin" ]; then mkdir -p "$(dirname "$origin")" && ln -s "$PWD" "$origin"; fi
    tar -C "$pack" -xJf "$pack/bins.tar.xz"
    mkdir -p target/debug && cp "$pack/bin/infinity-run" target/debug/

    # cudarc dlopens libnvrtc.so.13, libcublas.so.13 and libnccl.so.2 by soname.
    local dirs
    dirs=$(find /usr/local /opt /usr/lib -name 'libnvrtc.so.13' -o -name 'libcublas.so.13' -o -name 'libnccl.so.2' 2>/dev/null |
        xargs -r -n1 dirname | sort -u | paste -sd:)
    export LD_LIBRARY_PATH="$dirs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    export INFINITY_CUDA_REQUIRE_TOOLKIT=1 RUST_BACKTRACE=1
    {
        nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
        echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
        ls -d /usr/local/cuda/include/cuda_bf16.h /usr/local/cuda/bin/ptxas
    } 2>&1 | tee "$out/env.log"

    local summary=() name
    local only=${INFINITY_GPU_TESTS:-1}
    while [ "$only" != 0 ] && read -r name _; do
        [ "$name" = cuda ] || [ "$name" = train ] && continue
        [ "$only" = 1 ] || [[ " $only " == *" $name "* ]] || continue
        local filter=()
        [ "$name" = cli ] && filter=(device)
        # Its other tests run the infinity-train binary, which does not travel.
        [ "$name" = train_vae ] && filter=(the_vae_step_on_every_executor)
        # The rest of it runs on the CPU, as in CI.
        [ "$name" = data_parallel ] && filter=(nccl)
        timeout 300 "$pack/bin/$name" "${filter[@]}" --test-threads 8 >"$out/$name.log" 2>&1
        summary+=("$name: exit $? $(grep -E '^test result' "$out/$name.log" | tail -1)")
        grep -E 'SKIP|panicked|FAILED' "$out/$name.log" | head -5
    done <"$pack/targets"
    if [ "${INFINITY_GPU_BENCH:-1}" != 0 ]; then
        timeout 300 "$pack/bin/cuda" --bench --warm-up-time 1 \
            --measurement-time 3 >"$out/bench.log" 2>&1
        summary+=("bench: exit $?")
        grep -E 'thrpt|time:|per image|per scale|anchors|SKIP|panicked' "$out/bench.log"
        INFINITY_BENCH_DEVICE=cuda timeout 400 "$pack/bin/train" --bench >"$out/train_bench.log" 2>&1
        summary+=("train bench: exit $?")
        cat "$out/train_bench.log"
    fi
    printf '%s\n' "${summary[@]}"
}

case "${1:-}" in
pack) do_pack && do_aside ;;
run) do_run ;;
restore) do_restore ;;
*) echo "usage: bash scripts/gpu.sh pack|run|restore" >&2 && exit 2 ;;
esac
