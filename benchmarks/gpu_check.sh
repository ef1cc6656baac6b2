#!/usr/bin/env bash
# On a lent GPU machine (the device tool), from the repository root, with .gpu_wheels carried:
#   run(command="bash benchmarks/gpu_check.sh", carry=[".gpu_wheels"])
# The machine has torch and transformers but reaches no package index: modalkit's other dependencies come from
# .gpu_wheels (made here by `make gpu-wheels`). Checks CUDA recycling for real and GPU throughput.
set -euo pipefail
# Into the machine's own Python (the one that holds torch; the machine is thrown away after the lease).
python3 -m pip install -q --no-index --find-links .gpu_wheels --no-build-isolation -e . 2>&1 | grep -v "^WARNING" || true
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
rc=0
HF_HUB_OFFLINE=1 timeout 400 python3 benchmarks/gpu_check.py || rc=$?
# The table is also written into docs/benchmarks.md (its gpu section); bring it back with the results.
cp docs/benchmarks.md "${OUT:-.}/benchmarks.md" 2>/dev/null || true
exit $rc
