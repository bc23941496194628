# Task i of an array of n tasks takes manifest lines i, i+n, i+2n, ...: a selection with more lines than the
# cluster's MaxArraySize runs as an array of MaxArraySize tasks (neoxflow sizes the array at submit time).
# Every line is tried; the task exits 3 when a line failed for good (a retry would fail again), else with
# the last failure (75: transient, worth a retry), else 0. Lines that are done are skipped by each step.
: "${SLURM_ARRAY_TASK_COUNT:?this script runs as a Slurm array job}"
echo "neoxflow @@STEP@@: array task ${SLURM_ARRAY_TASK_ID} of ${SLURM_ARRAY_TASK_COUNT} (job ${SLURM_ARRAY_JOB_ID:-?}) on $(hostname)"
task_status=0
for ((line = SLURM_ARRAY_TASK_ID; line < MANIFEST_LINES; line += SLURM_ARRAY_TASK_COUNT)); do
    set +e
    (set -e; one_line "$line")
    line_status=$?
    set -e
    if [ "$line_status" != 0 ] && [ "$task_status" != 3 ]; then task_status=$line_status; fi
done
exit "$task_status"
