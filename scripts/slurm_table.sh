#!/bin/bash
# One NLL table on a SLURM cluster: an array job with one task per method (each trains that method's
# seeds, and its --lrs sweep when given, through lit-vattn-reproduce), then one job that builds the
# table once every task has succeeded. Run it on the login node, from the repository root:
#   scripts/slurm_table.sh --modality text --preset small --seeds 0,1,2 [--lrs 3e-4,1e-3] [--records DIR] [--override ...]
# ARCHS=vanilla,va,las narrows the methods (default: every registered method and its default controls);
# RUNS sets where the run directories go (default runs/reproduce; every task and the table share it);
# SBATCH_ARGS adds sbatch options to both jobs, e.g. SBATCH_ARGS="--partition gpu --gpus 1 --time 12:00:00".
# A requeued or resubmitted task skips its finished runs and resumes an unfinished one from its checkpoint.
set -euo pipefail
RUNS=${RUNS:-runs/reproduce}
ARCHS=${ARCHS:-$(python -c 'from lit_vattn.arch.registry import default_request; print(",".join(default_request()))')}
IFS=, read -ra LIST <<< "$ARCHS"

if [[ -n "${LIT_VATTN_TABLE_STEP:-}" ]]; then  # inside a job that this script submitted
  if [[ "$LIT_VATTN_TABLE_STEP" == table ]]; then
    exec lit-vattn-reproduce --archs "$ARCHS" --runs "$RUNS" --table-only "$@"
  fi
  # each task's own table of one method goes beside the runs; the full table is the last job's
  exec lit-vattn-reproduce --archs "${LIST[$SLURM_ARRAY_TASK_ID]}" --runs "$RUNS" --out "$RUNS/per-method" \
    --no-baselines "$@"
fi

mkdir -p "$RUNS"
export RUNS ARCHS  # the jobs get this environment (sbatch's default --export ALL), commas and all
# shellcheck disable=SC2086  # SBATCH_ARGS is a list of options
tasks=$(LIT_VATTN_TABLE_STEP=run sbatch --parsable ${SBATCH_ARGS:-} --job-name lit-vattn-runs \
  --array "0-$(( ${#LIST[@]} - 1 ))" --output "$RUNS/slurm-%A_%a.out" "$0" "$@")
# shellcheck disable=SC2086
table=$(LIT_VATTN_TABLE_STEP=table sbatch --parsable ${SBATCH_ARGS:-} --job-name lit-vattn-table \
  --dependency "afterok:${tasks%%;*}" --output "$RUNS/slurm-%j.out" "$0" "$@")
echo "submitted: ${#LIST[@]} run tasks (job ${tasks%%;*}), then the table (job ${table%%;*})"
