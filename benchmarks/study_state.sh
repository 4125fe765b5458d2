#!/usr/bin/env bash
# Carries the study's training runs across sessions: runs/ is not in git, results/ is. Run from the repository root.
#   benchmarks/study_state.sh restore [RUN...]  # saved runs -> runs/<run>/ where runs/<run>/ does not exist yet
#   benchmarks/study_state.sh save [RUN...]     # runs/<run>/ -> its saved copy; refused if it would go backwards
# The teacher chain (teacher_study and every study_teacher_plateau* link) is saved whole into results/<run>/:
# state/, best/, final/, curve.json, summary.json (whichever exist). A student (any other runs/study_* run) goes to
# results/study_students/<run>/: the same until its record results/runs/<run>.json exists (so that it resumes,
# into its evaluation if it finished training), then only final/, summary.json and curve.json (what
# benchmarks/study_latency needs).
# RUN defaults to all of them. An interrupted run saved at a checkpoint resumes exactly:
# `python compress/run.py recipes/<run>.yaml --set seed=100 --resume` (benchmarks/study.sh restores and resumes).
set -euo pipefail
usage() { echo "usage: benchmarks/study_state.sh restore|save [RUN...]" >&2; exit 2; }
[ $# -ge 1 ] || usage
action=$1; shift
runs=("$@")
chain() { [ "$1" = teacher_study ] || [[ $1 == study_teacher_plateau* ]]; }
home() { if chain "$1"; then echo "results/$1"; else echo "results/study_students/$1"; fi; }  # a run's saved copy
if [ ${#runs[@]} -eq 0 ]; then
    runs=(teacher_study)
    for d in results/study_teacher_plateau* runs/study_teacher_plateau* results/study_students/* runs/study_*; do
        [ -d "$d" ] && runs+=("$(basename "$d")")
    done
    mapfile -t runs < <(printf '%s\n' "${runs[@]}" | awk '!seen[$0]++')
fi
replace() {  # copy $1 to $2 through $2.partial, so that an interrupted copy never leaves a half-written $2
    rm -rf "$2.partial" && cp -r "$1" "$2.partial" && rm -rf "$2" && mv "$2.partial" "$2"
}
step() { python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['step'])" "$1/state/progress.json" 2>/dev/null \
         || echo -1; }
recorded() { ! chain "$1" && [ -f "results/runs/$1.json" ]; }  # a student whose record is made: done
items() {  # what of runs/$1 is saved
    if recorded "$1"; then echo final summary.json curve.json
    else echo state best final curve.json summary.json; fi  # trained but not scored: resumes into its evaluation
}
case $action in
restore)
    for run in "${runs[@]}"; do
        saved=$(home "$run")
        if [ ! -d "$saved" ]; then echo "study_state: no $saved to restore"; continue; fi
        if [ -e "runs/$run" ]; then echo "study_state: runs/$run exists (step $(step "runs/$run")), kept"; continue; fi
        mkdir -p runs && replace "$saved" "runs/$run"
        echo "study_state: restored runs/$run from $saved (step $(step "runs/$run"))"
    done ;;
save)
    for run in "${runs[@]}"; do  # every run checked before any is saved
        [ -d "runs/$run" ] || continue
        saved=$(home "$run")
        have=$(step "$saved") now=$(step "runs/$run")
        if [ "$now" -lt "$have" ]; then
            echo "study_state: runs/$run is at step $now, behind $saved (step $have): nothing saved;" \
                 "restore it (move runs/$run away first) or resume it past step $have" >&2
            exit 1
        fi
    done
    for run in "${runs[@]}"; do
        [ -d "runs/$run" ] || { echo "study_state: no runs/$run to save"; continue; }
        saved=$(home "$run") now=$(step "runs/$run")
        mkdir -p "$saved"
        for item in $(items "$run"); do
            if [ -e "runs/$run/$item" ]; then replace "runs/$run/$item" "$saved/$item"; fi
        done
        if recorded "$run"; then rm -rf "$saved/state" "$saved/best"; fi  # nothing left to resume
        echo "study_state: saved $saved (step $now)"
    done ;;
*) usage ;;
esac
