#!/usr/bin/env bash
# Carries the study teacher's training runs across sessions: runs/ is not in git, results/<run>/ is. Run from the
# repository root.
#   benchmarks/study_state.sh restore [RUN...]  # results/<run>/ -> runs/<run>/ where runs/<run>/ does not exist yet
#   benchmarks/study_state.sh save [RUN...]     # runs/<run>/ -> results/<run>/: state/, best/, final/, curve.json,
#                                               # summary.json (whichever exist); refused if it would go backwards
# RUN defaults to teacher_study and every study_teacher_plateau* link. An interrupted run saved at a checkpoint
# resumes exactly: `python compress/run.py recipes/<run>.yaml --set seed=100 --resume` (benchmarks/study.sh
# restores and resumes by itself).
set -euo pipefail
usage() { echo "usage: benchmarks/study_state.sh restore|save [RUN...]" >&2; exit 2; }
[ $# -ge 1 ] || usage
action=$1; shift
runs=("$@")
if [ ${#runs[@]} -eq 0 ]; then
    runs=(teacher_study)
    for d in results/study_teacher_plateau* runs/study_teacher_plateau*; do
        [ -d "$d" ] && runs+=("$(basename "$d")")
    done
    mapfile -t runs < <(printf '%s\n' "${runs[@]}" | awk '!seen[$0]++')
fi
replace() {  # copy $1 to $2 through $2.partial, so that an interrupted copy never leaves a half-written $2
    rm -rf "$2.partial" && cp -r "$1" "$2.partial" && rm -rf "$2" && mv "$2.partial" "$2"
}
step() { python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['step'])" "$1/state/progress.json" 2>/dev/null \
         || echo -1; }
case $action in
restore)
    for run in "${runs[@]}"; do
        if [ ! -d "results/$run" ]; then echo "study_state: no results/$run to restore"; continue; fi
        if [ -e "runs/$run" ]; then echo "study_state: runs/$run exists (step $(step "runs/$run")), kept"; continue; fi
        mkdir -p runs && replace "results/$run" "runs/$run"
        echo "study_state: restored runs/$run (step $(step "runs/$run"))"
    done ;;
save)
    for run in "${runs[@]}"; do  # every run checked before any is saved
        [ -d "runs/$run" ] || continue
        have=$(step "results/$run") now=$(step "runs/$run")
        if [ "$now" -lt "$have" ]; then
            echo "study_state: runs/$run is at step $now, behind results/$run (step $have): nothing saved;" \
                 "restore it (move runs/$run away first) or resume it past step $have" >&2
            exit 1
        fi
    done
    for run in "${runs[@]}"; do
        [ -d "runs/$run" ] || { echo "study_state: no runs/$run to save"; continue; }
        now=$(step "runs/$run")
        mkdir -p "results/$run"
        for item in state best final curve.json summary.json; do
            if [ -e "runs/$run/$item" ]; then replace "runs/$run/$item" "results/$run/$item"; fi
        done
        echo "study_state: saved results/$run (step $now)"
    done ;;
*) usage ;;
esac
