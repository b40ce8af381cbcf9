#!/usr/bin/env bash
# Next session: put the mirrored checkpoints back and restart the screens (Fashion-MNIST on the converged teacher; MNIST d=2) where they stopped.
#   bash scripts/bootstrap.sh && bash carry-over/resume.sh
set -euo pipefail
cd /work/main
(cd carry-over/state && find . -name last.safetensors -exec cp --parents {} ../.. \;)
nohup setsid .venv/bin/gankd ablation configs/fashion-mnist-kd-screen.json --out results/fashion-mnist-kd-screen --threads 1 --jobs 2 >> carry-over/screen.out 2>&1 &
sleep 2; pgrep -f "gankd ablation configs/fashion-mnist-kd-screen" > /tmp/screen.pid  # setsid forks: $! is not the ablation
OMP_NUM_THREADS=1 nohup setsid .venv/bin/gankd ablation configs/mnist-d2-screen.json --out results/mnist-d2-screen --threads 1 >> carry-over/mnist-screen.out 2>&1 &
sleep 2; pgrep -f "gankd ablation configs/mnist-d2-screen" > /tmp/mnist-screen.pid
nohup setsid bash carry-over/keep.sh > /dev/null 2>&1 & echo $! > /tmp/keep.pid
echo "screen $(cat /tmp/screen.pid), mirror $(cat /tmp/keep.pid)"
