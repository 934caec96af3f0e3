#!/usr/bin/env bash
# The GPU suite in one command, for one H100/H200-class device (< 8 min; compilation is most of it).
# Extra arguments go to run.py, e.g. `--no-compile` or `--out DIR`. Without CUDA it prints why and
# exits 0 with a "skipped" status in the JSON.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-python}"
exec timeout 600 "$PY" benchmarks/run.py --suite gpu "$@"
