#!/usr/bin/env bash
# Train the default model on one GPU within a fixed wall-clock budget, end to end:
# shapes data -> pixel cache -> a short throughput probe -> a run whose step count fits the budget
# (so the learning-rate schedule completes) -> float16 export.
#
#   BUDGET=540 NUM=40000 OUT=/tmp/out scripts/train_on_gpu.sh [extra --set overrides for train]
#
# Env: BUDGET (seconds for the whole script), NUM (clip seeds), BATCH, WORKERS (data processes),
# WORK (scratch dir), OUT (where the exported model and logs go), PRESET (default shapes-t2v).
# A SIGINT/SIGTERM to the trainer saves a checkpoint; the export then uses the latest one.
set -u
T0=$(date +%s)
NUM=${NUM:-40000}; BUDGET=${BUDGET:-540}; BATCH=${BATCH:-128}; WORKERS=${WORKERS:-$(nproc)}
PRESET=${PRESET:-shapes-t2v}; W=${WORK:-/tmp/tubelet-gpu}; OUT=${OUT:-$W/out}; PROBE=${PROBE:-60}
mkdir -p "$W" "$OUT"
el() { echo $(( $(date +%s) - T0 )); }
TB="python3 -m tubelet"
$TB data shapes --out "$W/data" --num "$NUM" --seed 1000 --frames 16 --workers "$WORKERS" \
    --holdout tubelet/assets/suites/shapes-holdout.json --no-progress || exit 1
$TB data cache "$W/data" --pixels --workers "$WORKERS" --preset "$PRESET" --out "$W/cache" > /dev/null || exit 1
echo "data and cache ready at $(el)s"
COMMON=(--preset "$PRESET" --set "cache=$W/cache" --set "data.buckets=[[16,64,64,$BATCH]]" --no-progress "$@")
P0=$(date +%s)
$TB train "${COMMON[@]}" --out "$W/probe" --set max_steps=$PROBE --set log_every=$(( PROBE / 4 )) \
    --set save_every=0 --set samples.every=0 > "$W/probe.log" 2>&1 || { tail -30 "$W/probe.log"; exit 1; }
PWALL=$(( $(date +%s) - P0 ))
SPS=$(python3 -c "import json; r=[json.loads(l) for l in open('$W/probe/metrics.jsonl')]; print(max(x['samples_per_s'] for x in r[-2:]))")
LEFT=$(( BUDGET - $(el) - 40 ))
STEPS=$(python3 -c "over = max(0.0, $PWALL - $PROBE * $BATCH / $SPS); print(max(100, int(($LEFT - over) * $SPS / $BATCH * 0.9)))")
echo "probe: $SPS clips/s; $LEFT s left -> $STEPS steps"
timeout -s INT $(( LEFT + 15 )) $TB train "${COMMON[@]}" --out "$W/run" --set max_steps=$STEPS \
    --set log_every=50 --set save_every=500 > "$W/train.log" 2>&1
echo "train exit $? at $(el)s"; tail -3 "$W/train.log"
$TB export "$W/run" -o "$W/model16" --dtype float16 || exit 1
tar -C "$W" -cf "$W/model16.tar" model16 && split -b 15M -d "$W/model16.tar" "$OUT/model16.tar.part"
cp "$W/run/metrics.jsonl" "$W/run/config.json" "$W/train.log" "$OUT/"
echo "done at $(el)s"
