#!/usr/bin/env bash
# The CPU-scale study: teacher_tiny, then student recipes against it, one record each in results/runs/,
# then results/summary.md and the Pareto plots. Run from the repository root on a committed tree
# (records of a dirty tree go to results/scratch/).
#   benchmarks/cpu_study.sh                                   # the default recipe list, first 30 test images
#   LIMIT=100 RECIPES="prune50_distill scratch50" SEEDS="100 101" benchmarks/cpu_study.sh
# Each student: 400 steps x 8 patches of 64 px, about 10 minutes on 2 CPU cores with evaluation.
set -euo pipefail
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
LIMIT=${LIMIT:-30}
RECIPES=${RECIPES:-"prune50_distill prune50_outputkd prune50_finetune scratch50"}
SEEDS=${SEEDS:-100}

# the teacher: trains (or resumes) to the end of its schedule, then its record (evaluation only)
accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no \
    compress/train_teacher.py recipes/teacher_tiny.yaml --resume
python compress/run.py recipes/teacher_tiny.yaml --resume --set "eval.limit=$LIMIT"

for recipe in $RECIPES; do
    for seed in $SEEDS; do
        python compress/run.py "recipes/$recipe.yaml" --set "eval.limit=$LIMIT" --set "seed=$seed"
    done
done
python -m compress.plots
