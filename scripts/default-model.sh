#!/usr/bin/env bash
# Builds the default model (assets/models/default) from scratch on a CPU: data, tokenizer, BitVAE,
# then the transformer with its text encoder. Every stage resumes: run the script again (in a later
# session, after an interruption) and each training command continues from its latest checkpoint;
# finished stages return at once. RUNS holds the training runs (checkpoints, logs, metrics).
#
#   bash scripts/default-model.sh [STAGE...]     # stages: data tokenizer vae1 vae2 transformer export
#
# With no stage given, all of them run in order. TRANSFORMER_STEPS raises the transformer's step
# count for a longer run (the schedule is constant after warm-up, so a run can be extended);
# EXPORT_STEP exports that checkpoint instead of the latest.
set -euo pipefail
cd "$(dirname "$0")/.."

DATA=${DATA:-data/emoji}
RUNS=${RUNS:-runs}
MODEL=assets/models/default
CONFIGS=assets/models/configs
TRANSFORMER_STEPS=${TRANSFORMER_STEPS:-3000}

cargo build --release --bin infinity-prep --bin infinity-train
prep=target/release/infinity-prep
train=target/release/infinity-train

stage() {
    case "$1" in
    data)
        # Twemoji SVGs + emojibase captions via npm, rendered at 256², 5 % of the emojis held out.
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
    transformer)
        # 8e-4 after the warm-up was noisy (step 400 drew most prompts near-blank): from step 400
        # on, the same run continues at half the rate, and at a quarter from step 1,300, where the
        # held-out loss had stopped falling at 4e-4.
        for leg in "400 8e-4" "1300 4e-4" "$TRANSFORMER_STEPS 2e-4"; do
            read -r steps lr <<< "$leg"
            "$train" transformer --data "$DATA/train" --config "$CONFIGS/transformer.json" \
                --vae "$RUNS/vae-s2/step-000000450/params.safetensors" \
                --t5-config "$CONFIGS/t5_config.json" --tokenizer "$CONFIGS/tokenizer.json" \
                --train-text-encoder --cache-latents --batch 16 --steps "$steps" \
                --warmup-steps 200 --lr "$lr" --save-every 100 --out "$RUNS/transformer"
        done ;;
    export)
        # The run's latest checkpoint, or step EXPORT_STEP of it (the bundled model is
        # EXPORT_STEP=2100, the checkpoint with the lowest held-out loss; see the README).
        local run="$RUNS/transformer"
        [ -n "${EXPORT_STEP:-}" ] && run="$run/$(printf 'step-%09d' "$EXPORT_STEP")/params.safetensors"
        "$train" export --run "$run" --vae "$RUNS/vae-s2/step-000000450/params.safetensors" \
            --t5-config "$CONFIGS/t5_config.json" --tokenizer "$CONFIGS/tokenizer.json" --out "$MODEL"
        cp "$DATA/ATTRIBUTION.md" "$MODEL/ATTRIBUTION.md"
        "$train" plot --run "$RUNS/transformer" --out "$MODEL/training-transformer.svg"
        "$train" plot --run "$RUNS/vae-s1" --out "$MODEL/training-vae-stage1.svg"
        "$train" plot --run "$RUNS/vae-s2" --out "$MODEL/training-vae-stage2.svg" ;;
    *)
        echo "unknown stage '$1' (data tokenizer vae1 vae2 transformer export)" >&2
        exit 2 ;;
    esac
}

if [ $# -eq 0 ]; then
    set -- data tokenizer vae1 vae2 transformer export
fi
for s in "$@"; do
    stage "$s"
done
