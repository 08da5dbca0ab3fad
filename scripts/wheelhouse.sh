#!/bin/bash
# Build a wheelhouse of lit_vattn and its dependencies for an air-gapped cluster, on a machine with
# package-index access. Then on the cluster (torch from the cluster's own CUDA build):
#   pip install --no-index --find-links wheelhouse "lit-vattn[music,audio,hf,eval]"
# Usage: scripts/wheelhouse.sh [PYTHON_VERSION=3.11] [PLATFORM=manylinux_2_28_x86_64] [OUT=wheelhouse] [EXTRAS=music,audio,hf,eval]
# EXTRAS: the optional stacks to include ("" = the base install; "dev" adds the tests' and parity stacks).
# torch, triton and nvidia-* are left out (the cluster provides them); set TORCH_SPEC
# (e.g. "torch==2.11.0") to add torch and its CUDA libraries (several GB).
set -euo pipefail
PY=${1:-3.11}; PLAT=${2:-manylinux_2_28_x86_64}; OUT=${3:-wheelhouse}; EXTRAS=${4-music,audio,hf,eval}
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
pip wheel -q --no-deps -w "$OUT" .                       # lit_vattn itself (pure Python)
# 1. resolve the full dependency set here, without installing anything
WHEEL=$(ls "$OUT"/lit_vattn-*.whl)
pip install -q --dry-run --ignore-installed --report "$OUT/.report.json" "$WHEEL${EXTRAS:+[$EXTRAS]}"
mapfile -t PINS < <(python3 - "$OUT/.report.json" <<'PY'
import json, re, sys
for item in json.load(open(sys.argv[1]))["install"]:
    name, ver = item["metadata"]["name"], item["metadata"]["version"]
    if name.lower() == "lit-vattn" or re.match(r"(torch|triton|nvidia-|cuda-)", name.lower()):
        continue
    print(f"{name}=={ver}")
PY
)
# 2. download those exact versions for the target interpreter and platform; build the few that
#    exist only as sdists (pure Python, e.g. future) into wheels
for pin in "${PINS[@]}" ${TORCH_SPEC:-}; do
  pip download -q --no-deps -d "$OUT" --only-binary=:all: --python-version "$PY" --platform "$PLAT" \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform any "$pin" 2>/dev/null \
  || pip wheel -q --no-deps -w "$OUT" "$pin"
done
rm -f "$OUT/.report.json"
echo "wheelhouse in $OUT: $(ls "$OUT" | wc -l) wheels for Python $PY on $PLAT"
