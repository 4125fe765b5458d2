#!/usr/bin/env bash
# The second study protocol (issue 19): the paper-shaped `study` teacher trained to its plateau
# (recipes/teacher_study.yaml), then every study_* recipe against it: students at 50/33/25% of its MACs and 50%
# of its parameters, feature / output / no distillation, LoRA, real rain, unit families at 75%, and the controls
# (the teacher trained for the students' steps and for 50% more steps, the scratch student at equal and at full
# budget). Each record scores
# all 100 + 100 Rain100L/H images and McMaster18's held-out synthetic rain, per image, into results/runs/; then the
# latency of every final model side by side, eager and deployed (OpenVINO), results/summary.md (differences to the
# teacher and to every control with paired bootstrap intervals), the Pareto plots and results/study/answers.md (the
# issue's questions, each from the records so far: `python -m benchmarks.study_answers` after any session).
#   benchmarks/study.sh                   # everything, one run at a time
#   JOBS=2 benchmarks/study.sh            # two runs at once, one thread each
#   STUDY="study_prune50_distill:100" benchmarks/study.sh
# It is resumable: run it again after an interruption; finished records are kept, interrupted runs resume.
# STUDY lists recipe:seed pairs: by default three seeds (100-102) for the main comparisons, one for the rest.
set -euo pipefail
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
JOBS=${JOBS:-1}
MAIN="study_prune50_distill study_prune50_outputkd study_prune50_finetune study_scratch50 study_teacher_continued"
REST="study_prune33_distill study_prune25_distill study_params50_distill study_prune50_lora study_prune50_realrain
study_prune75_distill study_prune75_experts study_prune75_depth study_prune75_width"
LONG=study_scratch50_long  # the teacher's steps plus a student's: as long as the whole teacher chain, so last
# seed 100 of every recipe first, then the main recipes' other seeds, the long scratch control last: a study cut
# off between sessions has answered every question once before it adds repeats
DEFAULT=$(for r in $MAIN $REST; do echo "$r:100"; done; for s in 101 102; do for r in $MAIN; do echo "$r:$s"; done; done
          echo "$LONG:100")
STUDY=${STUDY:-$DEFAULT}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$((JOBS > 1 ? 1 : 2))}

# the teacher: resumes to the end of its schedule (see results/README.md), then its record (evaluation only);
# then the plateau test: its final model trained 50% more steps in a new cycle (a control record of its own), the
# curves joined. CHAIN lists the plateau runs in order: when one still gains, its final model is the next
# candidate, and a recipe that trains it 50% more again (teacher.recipe: the previous link) is appended. The
# study teacher is the link whose test passed; the students wait for it (PLATEAU_ANYWAY=1: the last link).
# Both links so far have run (results/study/plateau.json: Rain100L/H flat after the second, McMaster18 still
# gaining, about 674k more steps projected); session 14 started the students on the second link's model:
#   JOBS=2 PLATEAU_ANYWAY=1 benchmarks/study.sh
# The third link is ready: CHAIN="study_teacher_plateau study_teacher_plateau2 study_teacher_plateau3".
CHAIN=${CHAIN:-study_teacher_plateau study_teacher_plateau2}
record() {  # recipe:seed [run.py args] -> results/runs/<stem>.json, unless it exists; an interrupted run resumes
    local recipe=${1%:*} seed=${1#*:} stem=${1%:*}
    [ "$seed" = 100 ] || stem=${recipe}_seed$seed
    if [ -f "results/runs/$stem.json" ]; then echo "study.sh: have results/runs/$stem.json"; return; fi
    shift
    python compress/run.py "recipes/$recipe.yaml" --set "seed=$seed" --resume "$@"
}
export -f record
benchmarks/study_state.sh restore  # the teacher chain's committed states (results/<run>/) into runs/, if not there
python compress/train_teacher.py recipes/teacher_study.yaml --resume
record teacher_study:100
for link in $CHAIN; do record "$link:100"; done
# the verdict at each restart: the link's record against the previous one's over every test image (the curve's
# 8 Rain100 crops are too few to tell 0.1 dB); the crop checks are kept beside it
python -m benchmarks.learning_curve runs/teacher_study $(printf -- '--continued runs/%s ' $CHAIN) \
    --records results/runs --out results/study
verdict() { python -c "import json; print(json.load(open('results/study/plateau.json'))['$1'] or '')"; }
TEACHER=$(verdict plateau_run)
if [ -z "$TEACHER" ]; then
    echo "study.sh: the teacher has not plateaued (results/study/plateau.json): 50% more steps still gain" \
         ">= 0.1 dB on some set; append a plateau run to CHAIN before the students (or PLATEAU_ANYWAY=1)" >&2
    [ "${PLATEAU_ANYWAY:-0}" = 1 ] || exit 1
    TEACHER=$(verdict last_run)
fi
# its training steps in all (the chain up to it): study_scratch50_long gets them plus the students' 1000, one cycle
# held at its peak for half the teacher's steps (the recipe's 9000 / 4000 for the 8000-step teacher)
TEACHER_STEPS=$(verdict plateau_at)
[ -n "$TEACHER_STEPS" ] || TEACHER_STEPS=$(verdict last_step)
echo "study.sh: the study teacher is runs/$TEACHER/final ($TEACHER_STEPS steps)"
export TEACHER LONG_STEPS=$((TEACHER_STEPS + 1000)) LONG_HOLD=$((TEACHER_STEPS / 2))
student() {  # recipe:seed: record it against the study teacher
    local extra=()
    [ "${1%:*}" != study_scratch50_long ] || extra=(--set "train.steps=$LONG_STEPS" --set "train.lr_hold_steps=$LONG_HOLD")
    record "$1" --set "teacher.recipe=recipes/$TEACHER.yaml" "${extra[@]}"
}
export -f student

# each student once: a recipe:seed whose record exists is skipped, an interrupted one resumes (the study spans
# sessions: run this again to continue it). Students learn from the study teacher (a resumed run refuses another
# teacher).
printf '%s\n' $STUDY | xargs -P "$JOBS" -I{} bash -c 'student {}'
# which unit families are cheapest before any training: each study_prune75_* student as it comes out of pruning
# (its record says after training), every image
python -m benchmarks.unit_sensitivity "runs/$TEACHER/final" --recipes recipes/study_prune75_*.yaml --limit 100 \
    --out results/study
OMP_NUM_THREADS=2 python -m benchmarks.study_latency --deployed openvino:fp32
python -m compress.plots
# results/study/answers.md (the questions) and the README's study results, from the records
python -m benchmarks.study_answers --readme README.md
