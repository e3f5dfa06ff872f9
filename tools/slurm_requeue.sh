#!/usr/bin/env bash
# A Slurm batch job that survives preemption and time limits: submit it
# with sbatch, and it requeues itself until the run is done.
#
#   sbatch -p PARTITION -J NAME --gres=gpu:8 --ntasks=8 --ntasks-per-node=8 \
#       --cpus-per-task=5 --time=4:00:00 \
#       tools/slurm_requeue.sh CONFIG WORK_DIR [flags]
#
# --signal=USR1@120 (below) has Slurm send SIGUSR1 to every task two
# minutes before the time limit; scancel --signal=TERM or a preemption
# sends SIGTERM. Either way tools/train.py finishes its iteration, saves
# WORK_DIR/resume_iter_<n>.pth, points WORK_DIR/last_checkpoint at it and
# exits with status 75; this script then requeues the job, whose --resume
# continues from that exact iteration (bitwise: docs/en/long_runs.md).
# The first start finds no checkpoint and trains from the beginning.
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --signal=USR1@120
set -u
CONFIG=$1
WORK_DIR=$2
PY_ARGS=${@:3}
PYTHON=${PYTHON:-python}
PREEMPTED=75

PYTHONPATH="$(dirname "$0")/..":${PYTHONPATH:-} \
srun --kill-on-bad-exit=1 \
    "$PYTHON" -u "$(dirname "$0")/train.py" "${CONFIG}" \
    --work-dir="${WORK_DIR}" --launcher=slurm --resume ${PY_ARGS}
status=$?
if [ "$status" -eq "$PREEMPTED" ]; then
    echo "stopped by a signal after saving; requeueing job ${SLURM_JOB_ID}"
    scontrol requeue "${SLURM_JOB_ID}"
    exit 0
fi
exit "$status"
