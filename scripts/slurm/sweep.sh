#!/usr/bin/env bash
# A sweep as a Slurm job array: array task i runs line i of JOBS below (plus COMMON), all runs under one
# folder, so that `peftrun-report "$SWEEP_DIR"` turns the sweep into one table and plot.
#   bash scripts/slurm/sweep.sh --list                               # the jobs, numbered (runs nothing)
#   sbatch --array=0-$(( $(bash scripts/slurm/sweep.sh --count) - 1 ))%8 scripts/slurm/sweep.sh
#   peftrun-report multirun/sweep_<array job id>                     # when the array has finished
# Submit from the repository root. Edit COMMON and JOBS (one job = one line of peftrun overrides) for your
# experiment; the default compares methods on XSum with BART-large (as He et al. 2022, Table 4 / Figure 1),
# 3 seeds each; one learning rate for all is a simplification: tune it per method for a fair comparison.
# Alternative without a job array: the submitit launcher turns a plain `peftrun -m` sweep into Slurm jobs
# (pip install -e '.[slurm]'; peftrun -m hydra/launcher=slurm method=lora,full ...; conf/hydra/launcher/slurm.yaml).
#SBATCH --job-name=peftrun-sweep
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --gpus-per-node=1
#SBATCH --cpus-per-task=8
#SBATCH --mem=32G
#SBATCH --time=12:00:00
#SBATCH --output=slurm-%x-%A_%a.out
set -euo pipefail

cd "${SLURM_SUBMIT_DIR:-$PWD}"

COMMON=(backbone=bart-large task=xsum trainer.epochs=3)
METHODS=(full lora adapter_houlsby parallel_adapter scaled_parallel_adapter)   # names of conf/method/*.yaml
SEEDS=(1 2 3)
JOBS=()
for method in "${METHODS[@]}"; do
    for seed in "${SEEDS[@]}"; do
        JOBS+=("method=$method trainer.seed=$seed")
    done
done

case "${1:-}" in
    --count) echo "${#JOBS[@]}"; exit 0 ;;
    --list) for i in "${!JOBS[@]}"; do echo "$i: ${COMMON[*]} ${JOBS[$i]}"; done; exit 0 ;;
    "") ;;
    *) echo "usage: sbatch --array=0-N scripts/slurm/sweep.sh | bash $0 --list | bash $0 --count" >&2; exit 2 ;;
esac

if [[ -z "${SLURM_ARRAY_TASK_ID:-}" ]]; then
    echo "error: not a Slurm array task; submit with sbatch --array=0-$(( ${#JOBS[@]} - 1 )) $0" >&2
    exit 2
fi
if (( SLURM_ARRAY_TASK_ID >= ${#JOBS[@]} )); then
    echo "error: array index $SLURM_ARRAY_TASK_ID but only ${#JOBS[@]} jobs (0-$(( ${#JOBS[@]} - 1 )))" >&2
    exit 2
fi

source scripts/slurm/common.sh   # PY, HF_HUB_OFFLINE, TOKENIZERS_PARALLELISM
export OMP_NUM_THREADS="${SLURM_CPUS_PER_TASK:-8}"

SWEEP_DIR="${SWEEP_DIR:-multirun/sweep_${SLURM_ARRAY_JOB_ID}}"   # one folder per array; override to reuse one
read -r -a THIS_JOB <<< "${JOBS[$SLURM_ARRAY_TASK_ID]}"
echo "peftrun sweep job $SLURM_ARRAY_TASK_ID/${#JOBS[@]} on $(hostname): ${COMMON[*]} ${THIS_JOB[*]}"
exec "$PY" -m peftrun "${COMMON[@]}" "${THIS_JOB[@]}" \
    "hydra.run.dir=$SWEEP_DIR/${SLURM_ARRAY_TASK_ID}_\${run_name}"
