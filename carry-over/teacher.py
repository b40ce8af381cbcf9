"""Train (or resume) the Fashion-MNIST KD teacher of configs/fashion-mnist-kd.json on one thread."""
import json
from pathlib import Path
from gankd.experiments.sweep import Plan, load_spec
from gankd.experiments.jobs import run_job
plan = Plan(load_spec(Path("configs/fashion-mnist-kd.json")), Path("results/fashion-mnist-kd"))
run_job(plan.teacher, threads=1)
print(plan.teacher.status, plan.teacher.error)
