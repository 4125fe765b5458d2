#!/usr/bin/env bash
# The first study protocol (tiny teacher): teacher_tiny, then student runs against it (one record each in
# results/first_protocol/runs/), then every final model's latency side by side
# (results/first_protocol/bench/study_latency.json), results/first_protocol/summary.md and the Pareto plots. Run from the repository root on a committed tree (records of a tree whose sources differ
# from the commit go to results/scratch/).
#   benchmarks/cpu_study.sh                                  # everything below, one run at a time
#   JOBS=2 benchmarks/cpu_study.sh                           # two runs at once, one thread each
#   LIMIT=100 STUDY="prune50_distill:100 scratch50:100" benchmarks/cpu_study.sh
# STUDY lists recipe:seed pairs. Each student: 400 steps x 8 patches of 64 px; about 10 minutes alone on
# 2 CPU cores with evaluation, about 20 minutes each when two share the cores (JOBS=2, as the committed
# records were made).
set -euo pipefail
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 LIMIT=${LIMIT:-25}
JOBS=${JOBS:-1}
STUDY=${STUDY:-"prune50_distill:100 prune50_distill:101 prune50_finetune:100 prune50_finetune:101
prune50_outputkd:100 prune50_outputkd:101 scratch50:100 scratch50:101 prune50_experts:100 prune50_depth:100
prune50_width:100 prune50_width_finetune:100 prune50_realrain:100 prune30_distill:100 prune70_distill:100
prune50_lora:100 prune50_attnkd:100 prune50_attnkd:101"}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$((JOBS > 1 ? 1 : 2))}

# the teacher: trains (or resumes) to the end of its schedule, then its record (evaluation only)
accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no \
    compress/train_teacher.py recipes/teacher_tiny.yaml --resume
RESULTS=results/first_protocol
python compress/run.py recipes/teacher_tiny.yaml --resume --set "eval.limit=$LIMIT" --results $RESULTS

printf '%s\n' $STUDY | xargs -P "$JOBS" -I{} bash -c \
    'item={}; python compress/run.py "recipes/${item%:*}.yaml" --set "eval.limit=$LIMIT" --set "seed=${item#*:}" \
     --results results/first_protocol'
OMP_NUM_THREADS=2 python -m benchmarks.study_latency --results $RESULTS
python -m compress.plots --results $RESULTS
