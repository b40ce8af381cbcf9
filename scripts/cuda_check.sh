#!/usr/bin/env bash
# gankd's GPU checks as one script, for a machine with a CUDA GPU (README, "Performance"): every
# CUDA training path (fp32, bf16, channels-last, torch.compile in both memory formats, DDP through
# torchrun), resume, ONNX export of a CUDA-trained student, the speed benchmarks and the test
# suite with CUDA as the automatic device. Each stage has a wall-time budget and its own log, so a
# stage that hangs or fails costs only itself; summary.txt lists every stage's exit status and time.
#
#   OUT=runs/cuda-check bash scripts/cuda_check.sh        # from the repository root
#
# Uses MNIST from data/mnist (in the repository) and no Inception network (the tests that need one fail).
set -u
OUT=${OUT:-runs/cuda-check}
PY=${PYTHON:-python3}
export PYTHONPATH=${PYTHONPATH:-.} PYTHONUNBUFFERED=1
mkdir -p "$OUT/logs"
WORK=$(mktemp -d)
GANKD="$PY -m gankd.cli"
# (--monitor is left out of the options that torchrun also sees: its parser takes it for --monitor-interval)
COMMON="--dataset mnist --image-size 32 --batch-size 64 --log-every 50 --sample-every 100000 --checkpoint-every 100 --quiet"
SMALL="$COMMON --monitor none"

DEADLINE=${DEADLINE:-520}  # seconds for all stages; a stage gets what is left of it at most
T0=$(date +%s)
stage() {  # stage NAME SECONDS COMMAND...: run within its budget, log, record exit status and seconds
    local name=$1 budget=$2 start rc left
    shift 2
    left=$((DEADLINE - ($(date +%s) - T0)))
    if [ "$left" -lt 20 ]; then printf '%-22s skipped: past the deadline\n' "$name" | tee -a "$OUT/summary.txt"; return; fi
    [ "$budget" -le "$left" ] || budget=$left
    start=$(date +%s)
    timeout -s INT "$budget" "$@" >"$OUT/logs/$name.log" 2>&1
    rc=$?
    printf '%-22s rc=%-3s %4s s\n' "$name" "$rc" "$(($(date +%s) - start))" | tee -a "$OUT/summary.txt"
    [ "$rc" = 0 ] || tail -4 "$OUT/logs/$name.log"
}

{ nvidia-smi -L; $PY -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))"; } | tee "$OUT/summary.txt"

# Every training path once, cheapest first: fp32 teacher, bf16, channels-last, students in one
# teacher pass, joint in bf16, DDP through torchrun, resume (200 steps straight, twice, against
# 100 + resume to 200, same seed: CUDA kernels are not bitwise deterministic, so the two straight
# runs show how far apart equal runs end), ONNX export and evaluation of a CUDA-trained student.
stage teacher-fp32       60 $GANKD train $SMALL --depth 32 --loss dcgan --steps 300 --out "$WORK/teacher"
stage gan-bf16           60 $GANKD train $SMALL --depth 16 --loss wgan-gp --steps 100 --precision bf16 --out "$WORK/bf16"
stage gan-channels-last  60 $GANKD train $SMALL --depth 16 --loss wgan-gp --steps 100 --channels-last --out "$WORK/cl"
stage distill-mse        60 $GANKD distill $SMALL --teacher "$WORK/teacher/generator.safetensors" --method mse --depth 2,4,8 --steps 200 --out "$WORK/mse"
stage distill-joint-bf16 60 $GANKD distill $SMALL --teacher "$WORK/teacher/generator.safetensors" --method joint --critic-depth 4 --depth 4 --steps 200 --precision bf16 --out "$WORK/joint"
stage ddp-torchrun       90 $PY -m torch.distributed.run --standalone --nproc-per-node 1 -m gankd.cli train $COMMON --depth 8 --loss dcgan --steps 100 --out "$WORK/ddp"
stage resume-straight    60 $GANKD train $SMALL --depth 8 --loss dcgan --steps 200 --out "$WORK/straight"
stage resume-straight-2  60 $GANKD train $SMALL --depth 8 --loss dcgan --steps 200 --out "$WORK/straight-2"
stage resume-first-half  60 $GANKD train $SMALL --depth 8 --loss dcgan --steps 100 --out "$WORK/resumed"
stage resume-second-half 60 $GANKD train $SMALL --depth 8 --loss dcgan --steps 200 --resume --out "$WORK/resumed"
stage resume-compare     30 $PY -c '
import sys
from safetensors.torch import load_file
def diff(a, b):
    a, b = load_file(a), load_file(b)
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)
straight, again, resumed = sys.argv[1:4]
print(f"generator weights after 200 steps, max |difference|: two straight runs {diff(straight, again):.3g}, straight vs resumed {diff(straight, resumed):.3g}")
' "$WORK/straight/generator.safetensors" "$WORK/straight-2/generator.safetensors" "$WORK/resumed/generator.safetensors"
stage export-onnx        60 $GANKD export "$WORK/mse/d4/generator.safetensors" --out "$WORK/d4.onnx"
stage evaluate-cuda      60 $GANKD evaluate "$WORK/mse/d4/generator.safetensors" --teacher "$WORK/teacher/generator.safetensors" --metrics is,fidelity,cost --samples 2000

# torch.compile in the default memory format (where inductor's layout optimisation once crashed a
# transposed convolution's backward), the test suite with CUDA as the automatic device (tests
# that need the Inception file fail here), then speed: the paths against the plain reference,
# every option together, and the options against fp32.
stage gan-compile-fp32  120 $GANKD train $SMALL --depth 16 --loss wgan-gp --steps 100 --compile --out "$WORK/compile"
stage pytest            150 $PY -m pytest -q -p no:cacheprovider -n 8 tests
stage bench-paths       100 $PY -m benchmarks.run --device cuda --quick --only gan,mse,generation --json "$OUT/bench_paths.json"
stage gan-all-options   120 $GANKD train $SMALL --depth 16 --loss dcgan --steps 100 --precision bf16 --channels-last --compile --out "$WORK/all"
stage bench-options     240 $PY -m benchmarks.run --device cuda --quick --only cuda --json "$OUT/bench_options.json"

for f in "$OUT"/logs/*.log; do tail -3 "$f" | sed "s|^|$(basename "$f" .log): |"; done >"$OUT/tails.txt"
tar -czf "$OUT/logs.tar.gz" -C "$OUT" logs && rm -r "$OUT/logs"
rm -rf "$WORK"
