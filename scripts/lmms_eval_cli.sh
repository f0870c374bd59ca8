#!/usr/bin/env bash
# lmms-eval's command line with an exit status to trust: lmms-eval 0.7.3 logs "Error during evaluation" and still
# exits 0 when an evaluation raises; this exits 1 then, and with lmms-eval's own status otherwise. Its output
# (stdout and stderr together) passes through. PYTHON picks the interpreter (default: python).
#   scripts/lmms_eval_cli.sh --model sttm_bench --model_args model=llava_video_7b,reducer=sttm,budget=0.5 --tasks videomme
set -uo pipefail
log=$(mktemp)
trap 'rm -f "$log"' EXIT
"${PYTHON:-python}" -m lmms_eval "$@" 2>&1 | tee "$log"
status=$?
if [ "$status" -eq 0 ] && grep -q "Error during evaluation" "$log"; then
    echo "lmms_eval_cli.sh: lmms-eval reported an error during evaluation (above)" >&2
    exit 1
fi
exit "$status"
