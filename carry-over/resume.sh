#!/usr/bin/env bash
# Next session: put the mirrored checkpoints back and start the Fashion-MNIST re-sweep (issue 26 item 4:
# MSE and the screen's finalist joint-tc at d = 2..16, regular GANs, weight average for all, 3 seeds).
# The screen's last variants (mse+cosine at step 23,444, mse+perceptual at 7,295, relation, MMD) are paused;
# resume them when a core is free with:
#   nohup setsid .venv/bin/gankd ablation configs/fashion-mnist-kd-screen.json --out results/fashion-mnist-kd-screen --threads 1 --jobs 1 >> carry-over/screen.out 2>&1 &
#   bash scripts/bootstrap.sh && bash carry-over/resume.sh
set -euo pipefail
cd /work/main
(cd carry-over/state && find . -name last.safetensors -exec cp --parents {} ../.. \;)
nohup setsid .venv/bin/gankd sweep configs/fashion-mnist-kd.json --out results/fashion-mnist-kd --threads 1 --jobs 2 >> carry-over/sweep.out 2>&1 &
sleep 2; pgrep -f "gankd sweep configs/fashion-mnist-kd.json" > /tmp/sweep.pid  # setsid forks: $! is not the sweep
# score the finished models beside the training (N = 5,000, ~10 min each on one core, cached in each run's eval.json)
OMP_NUM_THREADS=1 nohup setsid .venv/bin/gankd sweep configs/fashion-mnist-kd.json --out results/fashion-mnist-kd --report-only >> carry-over/report.out 2>&1 &
sleep 2; pgrep -f "fashion-mnist-kd --report-only" > /tmp/report.pid
nohup setsid bash carry-over/keep.sh > /dev/null 2>&1 & echo $! > /tmp/keep.pid
echo "sweep $(cat /tmp/sweep.pid), scoring $(cat /tmp/report.pid), mirror $(cat /tmp/keep.pid)"
