#!/usr/bin/env bash
# One GPU step on a bare machine without internet (e.g. an air-gapped cluster node), under a
# time limit: install the wheels the image lacks, run the step, and pack its compact
# results into $OUT. Prepare on any CPU machine first and copy these along with the tree:
#   .whl/                      wheels the image lacks (scripts/wheelhouse.sh)
#   .carry/regen-cache/        text and music shards (LIT_VATTN_CACHE), made by a CPU run of the same data config
#   runs/gpu/                  (optional) run directories from earlier steps, without checkpoints:
#                              finished runs are skipped, so a table fills over several steps
# On the GPU machine (LIT_VATTN_COMMIT names the tree when its .git is absent or stale):
#   LIT_VATTN_COMMIT=<commit> OUT=/tmp/out bash scripts/gpu_steps.sh small text 0,1,2 vanilla,va,sla,las,elc-bert
# Back on the CPU machine (the table is built from the finished runs that came back):
#   tar xzf /tmp/out/runs-text-small.tgz && lit-vattn-reproduce --modality text --preset small \
#   --table-only --runs runs/gpu --archs <same>
# MQAR's runs go to runs/gpu/mqar-kv<n>/ (one folder per pair count: the 4- and 8-pair runs share a
# preset name); its table: --modality mqar --preset tiny --table-only --runs runs/gpu/mqar-kv<n>
#   --out results/gpu-probes-kv<n>
# LIMIT (default 530 s) bounds each step; OUT (default /tmp/out) receives a few compact files.
#
# Steps:
#   small <modality> [seeds] [archs]   the `small` NLL table's runs (text, music; acoustic needs the
#                                       audio wheels in .carry/audio-whl), 4 runs share the GPU
#   tests                               the tests that skip without a GPU (+ the model tests)
#   generate                            sampling speed at the GPT-2-small shape, KV cache vs recompute
#   throughput <archs>                  training throughput rows, e.g. vanilla,sla (after a change to SLA)
#   mqar [num_kv_pairs]                 the MQAR probe table at a budget that leaves the 1/n plateau
# --dry-run (first argument) prints the commands without running them.
set -euo pipefail
cd "$(dirname "$0")/.."
DRY=0; if [[ ${1:-} == --dry-run ]]; then DRY=1; shift; fi
STEP=${1:?"a step: small | tests | generate | throughput | mqar (see the header)"}; shift
OUT=${OUT:-/tmp/out}; LIMIT=${LIMIT:-530}   # seconds for the step itself, packing excluded
export LIT_VATTN_CACHE=${LIT_VATTN_CACHE:-$PWD/.carry/regen-cache}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}   # lit_vattn and datamodules from this tree, installed or not
export LIT_VATTN_COMMIT=${LIT_VATTN_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}

pack() {  # finished run directories (done.json) of $2, without checkpoints, and the count rows, into $OUT/$1
  [[ $DRY == 1 ]] && { echo "+ pack $2 -> \$OUT/$1"; return 0; }
  { find "$2" -name done.json -printf '%h\n'; find "$2" -maxdepth 1 -name counts.json; } 2>/dev/null \
    | tar czf "$OUT/$1" --exclude='*.ckpt' -T -
  echo "packed $(tar tzf "$OUT/$1" | grep -c 'done.json$') finished runs into \$OUT/$1"
}

run() {  # the step's command, time-limited; a run cut off by the limit starts again on the next call
  echo "+ $*"
  [[ $DRY == 1 ]] && return 0
  timeout --signal=INT --kill-after=30 "$LIMIT" "$@" || echo "(exit $?: cut off by the ${LIMIT}s limit or failed; finished runs are kept)"
}

if [[ $DRY == 0 ]]; then
  mkdir -p "$OUT"
  if compgen -G ".whl/*.whl" >/dev/null; then pip install -q --no-index --no-deps .whl/*.whl; fi
  pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 || echo "(no editable install: running from the source tree)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
fi

case $STEP in
  small)
    MOD=${1:?"small <modality> [seeds] [archs]"}; SEEDS=${2:-0,1,2}; ARCHS=${3:-}
    if [[ $MOD == acoustic && $DRY == 0 ]] && compgen -G ".carry/audio-whl/*.whl" >/dev/null; then
      pip install -q --no-index --no-deps .carry/audio-whl/*.whl
    fi
    run python -m lit_vattn.experiments.reproduce --modality "$MOD" --preset small --seeds "$SEEDS" ${ARCHS:+--archs "$ARCHS"} \
      --parallel 4 --runs runs/gpu --out /tmp/tables
    pack "runs-$MOD-small.tgz" "runs/gpu/$MOD-small"
    ;;
  tests)
    run python -m pytest tests/model tests/arch -k "not real_text" -rfEs -q \
      -p no:cacheprovider
    ;;
  generate)
    run python benchmarks/generate.py --d-model 768 --n-layer 12 --n-head 12 --seq-len 1024 --vocab 50304 \
      --new-tokens 512 --out "$OUT/generate-h100.md"
    ;;
  throughput)
    ARCHS=${1:?"throughput <archs>, e.g. vanilla,sla"}
    run python benchmarks/throughput.py --d-model 768 --n-layer 12 --n-head 12 --seq-len 1024 --batch-size 32 \
      --precision bf16-mixed --compile --warmup 10 --steps 30 --archs "$ARCHS" --json-dir "$OUT/throughput" \
      --num-workers 4 --out "$OUT/throughput-h100.md"
    ;;
  mqar)
    PAIRS=${1:-4}
    run python -m lit_vattn.experiments.reproduce --modality mqar --preset tiny --seeds 0,1,2 --parallel 4 \
      --runs "runs/gpu/mqar-kv$PAIRS" --out /tmp/tables --override --trainer.accelerator gpu \
      --trainer.max_steps 20000 --trainer.val_check_interval 20000 --data.init_args.num_kv_pairs "$PAIRS"
    pack "runs-mqar-kv$PAIRS.tgz" "runs/gpu/mqar-kv$PAIRS/mqar-tiny"
    ;;
  *) echo "unknown step '$STEP': small | tests | generate | throughput | mqar" >&2; exit 2 ;;
esac
[[ $DRY == 1 ]] || { ls -la "$OUT"; find /tmp/tables -name '*.md' -exec tail -n 25 {} \; 2>/dev/null || true; }
