#!/usr/bin/env bash
# Next session: put the mirrored checkpoints back and restart the screen on the converged teacher where it stopped.
#   bash scripts/bootstrap.sh && bash carry-over/resume.sh
set -euo pipefail
cd /work/main
(cd carry-over/state && find . -name last.safetensors -exec cp --parents {} ../.. \;)
nohup setsid .venv/bin/gankd ablation configs/fashion-mnist-kd-screen.json --out results/fashion-mnist-kd-screen --threads 1 --jobs 2 >> carry-over/screen.out 2>&1 &
sleep 2; pgrep -f "gankd ablation configs/fashion-mnist-kd-screen" > /tmp/screen.pid  # setsid forks: $! is not the ablation
nohup setsid bash carry-over/keep.sh > /dev/null 2>&1 & echo $! > /tmp/keep.pid
echo "screen $(cat /tmp/screen.pid), mirror $(cat /tmp/keep.pid)"
