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
#   throughput [archs]                  compiled training throughput (default every method; e.g. vanilla,hc,mhc)
#   mqar [num_kv_pairs]                 the MQAR probe table at a budget that leaves the 1/n plateau
#   ladder [rungs] [archs]              the scaling ladder's rungs the CPU cannot reach (default 4,5), 4 runs
#                                       at once: the lrs tuned on the CPU rungs come from results/records
#                                       (committed), finished rungs are skipped, the records come back in
#                                       $OUT/records (copy text-ladder-<k> into results/records, then
#                                       lit-vattn-ladder ... --table-only --runs results/records). Its shards
#                                       (the 2,048-id BPE) are prepared on the CPU into the carried cache:
#                                       LIT_VATTN_CACHE=.carry/regen-cache lit-vattn-prepare --config
#                                       configs/data/text.yaml --data.init_args.bpe_vocab_size 2048
#   acceptance                          what any user with one GPU runs to check the suite on it, in one
#                                       bounded call (<= 9 min on an H100/H200): the tests that skip without a
#                                       GPU, the throughput of every registered method (bf16, eager: the
#                                       compiled table is the throughput step), and a
#                                       small text comparison (vanilla, VA, SLA, LAS, one seed); compact results
#                                       (tables, JSON rows, run records without checkpoints) in $OUT
# --dry-run (first argument) prints the commands without running them.
# --cpu-dry-run (first argument) runs them on this CPU at a scale of seconds (same code paths, same
#   outputs in $OUT): the rehearsal before a GPU call.
set -euo pipefail
cd "$(dirname "$0")/.."
DRY=0; CPU=0
if [[ ${1:-} == --dry-run ]]; then DRY=1; shift; elif [[ ${1:-} == --cpu-dry-run ]]; then CPU=1; shift; fi
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
  if [[ $CPU == 0 ]]; then
    if compgen -G ".whl/*.whl" >/dev/null; then pip install -q --no-index --no-deps .whl/*.whl; fi
    pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 || echo "(no editable install: running from the source tree)"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  fi
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
    ARCHS=${1:-}   # default: every registered method
    run python benchmarks/throughput.py --d-model 768 --n-layer 12 --n-head 12 --seq-len 1024 --batch-size 32 \
      --precision bf16-mixed --compile --warmup 10 --rounds 5 --steps 6 ${ARCHS:+--archs "$ARCHS"} --json-dir "$OUT/throughput" \
      --num-workers 4 --out "$OUT/throughput-h100.md"
    ;;
  mqar)
    PAIRS=${1:-4}
    run python -m lit_vattn.experiments.reproduce --modality mqar --preset tiny --seeds 0,1,2 --parallel 4 \
      --runs "runs/gpu/mqar-kv$PAIRS" --out /tmp/tables --override --trainer.accelerator gpu \
      --trainer.max_steps 20000 --trainer.val_check_interval 20000 --data.init_args.num_kv_pairs "$PAIRS"
    pack "runs-mqar-kv$PAIRS.tgz" "runs/gpu/mqar-kv$PAIRS/mqar-tiny"
    ;;
  ladder)
    RUNGS=${1:-4,5}; ARCHS=${2:-vanilla,va,va-frozen,sla,las}
    # the CPU rungs' records (their lr choices) beside the new ones: the ladder reads and writes one records folder
    [[ $DRY == 1 ]] || { mkdir -p "$OUT/records"; cp -r results/records/text-ladder-* "$OUT/records/" 2>/dev/null || true; }
    run python -m lit_vattn.experiments.ladder --modality text --rungs "1,2,3,$RUNGS" --tune-rungs 1,2,3 \
      --archs "$ARCHS" --seeds 0,1,2 --lr-seed 100 --lrs 3e-3,6e-3,1.2e-2 --widen 2 --check-archs vanilla \
      --parallel 4 --runs runs/gpu --records "$OUT/records" --out /tmp/tables
    ;;
  acceptance)
    ALL=$(python -c 'from lit_vattn.arch.registry import methods; print(",".join(methods()))')
    if [[ $CPU == 1 ]]; then  # the same three parts at a CPU scale of seconds
      TESTS=(tests/model/test_attention.py); SHAPE=(--d-model 64 --n-layer 2 --n-head 2 --seq-len 64 --batch-size 2)
      SPEED=(--precision 32-true --warmup 1 --rounds 2 --steps 1 --num-workers 0); PRESET=tiny; DEV=(); LIM=(120 240 240)
      CMP=(--trainer.max_steps 4 --trainer.val_check_interval 4 --trainer.limit_val_batches 2 --trainer.limit_test_batches 2)
    else
      TESTS=(tests/model tests/arch tests/train/test_gpu_preset_on_cpu.py); SHAPE=(--d-model 768 --n-layer 12 --n-head 12 --seq-len 1024 --batch-size 32)
      SPEED=(--precision bf16-mixed --warmup 3 --rounds 3 --steps 4 --lightning vanilla --num-workers 4); PRESET=small; DEV=(--parallel 4); LIM=(150 210 150)
      CMP=(--trainer.max_steps 300 --trainer.val_check_interval 300)
    fi
    LIMIT=${LIM[0]} run python -m pytest "${TESTS[@]}" -k "not real_text" -rfEs -q -p no:cacheprovider \
      --junitxml "$OUT/acceptance-tests.xml"
    LIMIT=${LIM[1]} run python benchmarks/throughput.py "${SHAPE[@]}" "${SPEED[@]}" --archs "$ALL" \
      --json-dir "$OUT/throughput" --out "$OUT/throughput.md"
    if [[ ! -f $OUT/throughput.md ]] && compgen -G "$OUT/throughput/*.json" >/dev/null; then  # cut off: the rows measured
      run python benchmarks/throughput.py --from-json "$OUT"/throughput/*.json --out "$OUT/throughput.md"
    fi
    LIMIT=${LIM[2]} run python -m lit_vattn.experiments.reproduce --modality text --preset "$PRESET" --seeds 0 \
      --archs vanilla,va,sla,las "${DEV[@]}" --runs "${RUNS:-runs/acceptance}" --out "$OUT/tables" --no-baselines --override "${CMP[@]}"
    pack "runs-acceptance.tgz" "${RUNS:-runs/acceptance}/text-$PRESET"
    ;;
  *) echo "unknown step '$STEP': small | tests | generate | throughput | mqar | ladder | acceptance" >&2; exit 2 ;;
esac
[[ $DRY == 1 ]] || { ls -la "$OUT"; find /tmp/tables -name '*.md' -exec tail -n 25 {} \; 2>/dev/null || true; }
