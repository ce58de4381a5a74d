#!/usr/bin/env bash
# Builds the default model (assets/models/default) on a CPU: data, tokenizer, BitVAE, a sweep of
# transformer sizes, then the chosen transformer with its text encoder. Every stage resumes: run
# the script again (in a later session, after an interruption) and each training command continues
# from its latest checkpoint; finished stages return at once. RUNS holds the training runs
# (checkpoints, logs, metrics).
#
#   bash scripts/default-model.sh [STAGE...]   # stages: data tokenizer vae1 vae2 sweep transformer export
#
# With no stage given, all of them run in order, except vae1 and vae2: the BitVAE of the bundled
# model is kept unless VAE names another (vae1 and vae2 train one from scratch). The transformer
# stage continues the sweep's run of size SIZE to TRANSFORMER_STEPS (the learning rate is constant
# after warm-up, so a run can be extended); EXPORT_STEP exports that checkpoint instead of the
# latest. The bundled model before this recipe (Twemoji only, d6-w256) came from the script of
# commit 9b2d95d.
set -euo pipefail
cd "$(dirname "$0")/.."

DATA=${DATA:-data/emoji}
RUNS=${RUNS:-runs}
MODEL=assets/models/default
CONFIGS=assets/models/configs
SWEEP_STEPS=${SWEEP_STEPS:-300}
SIZE=${SIZE:-d8-w320}
TRANSFORMER_STEPS=${TRANSFORMER_STEPS:-3000}
# The BitVAE the transformer is trained over (its path is in each run's train.log): VAE if set
# (e.g. the vae2 stage's runs/vae-s2/step-000000450/params.safetensors), else the one bundled
# in f32 at commit 9b2d95d, taken from the repository's history (trained on Twemoji alone by
# vae1 and vae2; it reconstructs every style's held-out images at 20.5–21.7 dB PSNR).
bitvae() {
    if [ -n "${VAE:-}" ]; then
        [ -f "$VAE" ] || { echo "VAE=$VAE: no such file" >&2; exit 2; }
        echo "$VAE"
        return
    fi
    local kept=$RUNS/vae-9b2d95d.safetensors
    if [ ! -f "$kept" ]; then
        mkdir -p "$RUNS"
        git show 9b2d95d:assets/models/default/vae.safetensors > "$kept.partial"
        mv "$kept.partial" "$kept"
    fi
    echo "$kept"
}

cargo build --release --bin infinity-prep --bin infinity-train
prep=target/release/infinity-prep
train=target/release/infinity-train

# A transformer run over the data, the BitVAE and the text encoder trained with it: batch 8,
# official initialisation, Bitwise Self-Correction and caption dropout at their defaults.
train_transformer() {
    local size=$1 steps=$2 lr=$3 vae
    vae=$(bitvae)
    "$train" transformer --data "$DATA/train" --config "$CONFIGS/transformer/$size.json" --vae "$vae" \
        --t5-config "$CONFIGS/t5_config.json" --tokenizer "$CONFIGS/tokenizer.json" \
        --train-text-encoder --cache-latents --batch 8 --steps "$steps" --warmup-steps 30 --lr "$lr" \
        --save-every 50 --out "$RUNS/transformer-$size"
}

stage() {
    case "$1" in
    data)
        # Five renderings of the emojis (Twemoji, Noto, Fluent flat/modern/3D) + emojibase
        # captions via npm, at 256², 5 % of the emojis held out in every style.
        "$prep" emoji --out "$DATA" ;;
    tokenizer)
        # Committed with the configurations: the model was trained with this one. (Training it
        # again gives the same pieces, their scores equal up to float rounding.)
        [ -f "$CONFIGS/tokenizer.json" ] ||
            "$prep" tokenizer --data "$DATA/train" --vocab-size 2000 --out "$CONFIGS/tokenizer.json" ;;
    vae1)
        # Stage 1: single-scale BSQ on random 128² crops, to learn the filters quickly.
        "$train" vae --data "$DATA/train" --config "$CONFIGS/vae.json" --stage 1 --crop 128 \
            --batch 8 --steps 800 --warmup-steps 100 --lr 4e-4 --save-every 200 --out "$RUNS/vae-s1" ;;
    vae2)
        # Stage 2: the multi-scale quantizer of the 0.06M schedule on whole images. The decoder
        # must learn its inputs, sums of the scales' codes (16.0 → 18.3 dB held-out PSNR in the
        # first 20 steps); per pixel it costs about what stage 1 does. The last 150 steps run at
        # a third of the rate (the same run resumed with a lower --lr).
        for leg in "300 3e-4" "450 1e-4"; do
            read -r steps lr <<< "$leg"
            "$train" vae --data "$DATA/train" --init "$RUNS/vae-s1/step-000000800/params.safetensors" --stage 2 \
                --batch 4 --steps "$steps" --warmup-steps 20 --lr "$lr" --save-every 50 --out "$RUNS/vae-s2"
        done ;;
    sweep)
        # Loss against parameters and steps, to choose SIZE: every candidate configuration
        # trains SWEEP_STEPS steps from the same seed, data order and learning rate.
        for config in "$CONFIGS"/transformer/*.json; do
            train_transformer "$(basename "$config" .json)" "$SWEEP_STEPS" 6e-4
        done ;;
    transformer)
        # The chosen size's sweep run, continued at the same rate.
        train_transformer "$SIZE" "$TRANSFORMER_STEPS" 6e-4 ;;
    export)
        # The run's latest checkpoint, or step EXPORT_STEP of it, in bf16 (the 50 MB budget).
        local run="$RUNS/transformer-$SIZE"
        [ -n "${EXPORT_STEP:-}" ] && run="$run/$(printf 'step-%09d' "$EXPORT_STEP")/params.safetensors"
        local vae
        vae=$(bitvae)
        "$train" export --run "$run" --vae "$vae" --weights bf16 \
            --t5-config "$CONFIGS/t5_config.json" --tokenizer "$CONFIGS/tokenizer.json" --out "$MODEL"
        cp "$DATA/ATTRIBUTION.md" "$MODEL/ATTRIBUTION.md"
        "$train" plot --run "$RUNS/transformer-$SIZE" --out "$MODEL/training-transformer.svg" ;;
    *)
        echo "unknown stage '$1' (data tokenizer vae1 vae2 sweep transformer export)" >&2
        exit 2 ;;
    esac
}

if [ $# -eq 0 ]; then
    set -- data tokenizer sweep transformer export
fi
for s in "$@"; do
    stage "$s"
done
