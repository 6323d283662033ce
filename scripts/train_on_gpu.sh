#!/usr/bin/env bash
# Train default-model candidates on one GPU within a fixed wall-clock budget, end to end:
# shapes data -> latent cache (the shipped frame VAE, encoded on the GPU) -> a short throughput probe
# of every run at once -> the runs, side by side on the one GPU, each sized to end inside the budget
# (so every learning-rate schedule completes) -> float16 exports.
#
#   BUDGET=540 NUM=20000 OUT=/tmp/out scripts/train_on_gpu.sh
#
# Env: BUDGET (seconds for the whole script), NUM (clip seeds), WORKERS (data processes), WORK
# (scratch dir), OUT (where the exports, as 15 MB tar parts without the VAE, and the logs go),
# PROBE (probe steps), RUNS (which of the runs below), INIT (the model the runs start from;
# default the embedded model), SMALL=1 (tiny batches: a CPU smoke test), BENCH=1 (first run
# benchmarks/token_conv_gpu.py, beside the data generation). The default model's third DiT
# stage is the `big` run from its second stage's model (docs/experiments/shapes-default-model.md,
# run N: BUDGET=540 NUM=20000 RUNS=big INIT=<its model>), its fifth the `det` run from the fourth
# stage's (run S: BUDGET=535 NUM=25000 RUNS="det low" INIT=<its model>). The presets' own paths
# (docs/model-card.md) are overridden here: this script keeps its data, cache and runs under WORK.
# A run that is still going at the deadline gets SIGTERM, saves a checkpoint and stops; its export
# then uses that checkpoint (and says so in its train log).
set -u
T0=$(date +%s)
el() { echo $(( $(date +%s) - T0 )); }
NUM=${NUM:-20000}; BUDGET=${BUDGET:-540}; WORKERS=${WORKERS:-$(nproc)}; PROBE=${PROBE:-40}
W=${WORK:-/tmp/tubelet-gpu}; OUT=${OUT:-$W/out}; RUNS=${RUNS:-big}
VAE=tubelet/assets/shapes-t2v  # the shipped pipeline: its frame VAE is the recipe's (identical weights)
INIT=${INIT:-$VAE}
mkdir -p "$W" "$OUT"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}; TB="$PY -m tubelet"

# name -> training flags (preset + overrides); batch sizes are part of each.
flags() {
  local b256="[[16,64,64,256]]"
  if [ "${SMALL:-0}" = 1 ]; then b256="[[16,64,64,4]]"; fi
  case $1 in
    big) echo "--preset shapes-t2v-frames-big --set init_from=$INIT --set data.buckets=$b256" ;;
    det) echo "--preset shapes-t2v-frames-gpu --set init_from=$INIT --set data.buckets=$b256" ;;
    low) echo "--preset shapes-t2v-frames-gpu --set init_from=$INIT --set data.buckets=$b256 --set flow.shift_mix=[5.0,1.0,0.4]" ;;
    *) echo "unknown run $1" >&2; exit 1 ;;
  esac
}
batch() { flags "$1" | sed -E 's/.*buckets=\[\[16,64,64,([0-9]+)\]\].*/\1/'; }
train() {  # seconds name out-dir extra-args... (SIGTERM at the limit: the trainer saves and stops)
  local secs=$1 name=$2 out=$3; shift 3
  # shellcheck disable=SC2046
  OMP_NUM_THREADS=4 timeout -s TERM "$secs" $TB train $(flags "$name") --set "cache=$W/cache" \
    --set "vae_path=$VAE/vae" --set samples.every=0 --no-progress --out "$out" "$@"
}

nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
if [ "${BENCH:-0}" = 1 ]; then $PY benchmarks/token_conv_gpu.py > "$OUT/token_conv_gpu.txt" 2>&1 & fi
$TB data shapes --out "$W/data" --num "$NUM" --seed 1000 --frames 16 --workers "$WORKERS" \
    --holdout shapes-holdout --no-progress || exit 1
wait
[ -s "$OUT/token_conv_gpu.txt" ] && cat "$OUT/token_conv_gpu.txt"
echo "data at $(el)s: $(find "$W/data" -name '*.mp4' | wc -l) clips"
$TB data cache "$W/data" --model "$VAE" --preset shapes-t2v-frames --out "$W/cache" --batch-size 256 \
    --workers "$WORKERS" > "$W/cache.log" 2>&1 || { tail -20 "$W/cache.log"; exit 1; }
echo "cache at $(el)s"

P0=$(date +%s)
for r in $RUNS; do
  train 300 "$r" "$W/probe-$r" --set max_steps="$PROBE" --set log_every=$(( PROBE > 3 ? PROBE / 4 : 1 )) --set save_every=0 \
    > "$W/probe-$r.log" 2>&1 &
done
wait
PWALL=$(( $(date +%s) - P0 ))
LEFT=$(( BUDGET - $(el) - 35 ))
for r in $RUNS; do
  m="$W/probe-$r/metrics.jsonl"
  [ -s "$m" ] || { echo "probe $r failed:"; tail -20 "$W/probe-$r.log"; continue; }
  B=$(batch "$r")
  SPS=$($PY -c "import json; r=[json.loads(l) for l in open('$m')]; print(max(x['samples_per_s'] for x in r[-2:]))")
  STEPS=$($PY -c "over = max(0.0, $PWALL - $PROBE * $B / $SPS); print(max(100, int(($LEFT - over) * $SPS / $B * 0.92)))")
  echo "probe $r: $SPS clips/s (batch $B, all runs at once); $LEFT s left -> $STEPS steps"
  train $(( LEFT + 10 )) "$r" "$W/run-$r" --set max_steps="$STEPS" --set log_every=50 --set save_every=1000 \
    > "$W/train-$r.log" 2>&1 &
done
wait
echo "training done at $(el)s"
for r in $RUNS; do
  [ -d "$W/run-$r" ] || continue
  tail -2 "$W/train-$r.log"
  $TB export "$W/run-$r" -o "$W/m-$r" --dtype float16 > /dev/null || { echo "export $r failed"; continue; }
  cp "$W/run-$r/metrics.jsonl" "$W/m-$r/metrics.jsonl"; cp "$W/train-$r.log" "$W/m-$r/train.log"
done
(cd "$W" && tar --exclude=vae -cf models.tar m-*) && split -b 15M -d "$W/models.tar" "$OUT/models.tar.part"
echo "done at $(el)s"
