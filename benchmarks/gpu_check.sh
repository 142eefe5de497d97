#!/usr/bin/env bash
# The GPU checks of issue 27 (goal 4), in one short run (a few minutes on one GPU):
#   1. the sync-debug test: a Grad-CAM call on a known layer makes no host synchronisation
#      other than its one read (tests/test_hot_path.py, skipped without CUDA);
#   2. grad_cam / forward on ResNet-50 at 224 px, batch 1 and 16 (goal <= 1.15x);
#   3. explain_dataset against a plain forward loop at 112 px (goal >= 0.8x its throughput);
#   4. integrated_gradients (50 steps) against captum (goal <= 1.0x).
# Run from the repository root:  bash benchmarks/gpu_check.sh
# Without a GPU (or with SMALL=1) it runs the same code with tiny sizes on the CPU: a check
# that the script works, not a measurement.
set -euo pipefail
cd "$(dirname "$0")/.."

small=${SMALL:-}
if ! python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    small=1
fi

echo "== $(date -u '+%Y-%m-%d %H:%M UTC'), git $(git rev-parse --short HEAD 2>/dev/null || echo '?'), uptime: $(uptime)"
python -c "import torch; print('torch', torch.__version__, '| cuda', torch.cuda.is_available(), '|', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')"

echo "== 1. no host synchronisation but the one read (sync debug mode 'error')"
python -m pytest -q -p no:cacheprovider tests/test_hot_path.py -k "no_host_synchronisation or one_host_read"

echo "== 2-4. ratios, side by side in one process"
if [ -n "$small" ]; then
    timeout 300 python benchmarks/gpu_check.py --small
else
    timeout 420 python benchmarks/gpu_check.py --device cuda --rounds 10
fi
