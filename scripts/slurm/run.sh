#!/usr/bin/env bash
# One peftrun run as one Slurm job. Submit from the repository root (the job starts there):
#   sbatch scripts/slurm/run.sh backbone=gpt2-medium method=lora task=e2e task.data_dir=../shared/data/e2e
#   sbatch --partition=a100 --time=12:00:00 scripts/slurm/run.sh method=adapter_houlsby ...   # flags beat headers
#   HF_HUB_OFFLINE=1 sbatch scripts/slurm/run.sh ...    # compute nodes without internet (docs/CLUSTERS.md)
# Arguments are peftrun overrides, passed through unchanged. The run directory is Hydra's usual
# outputs/<run_name>/<time>/ (results.json, predictions.jsonl, adapter/); Slurm's log goes to slurm-<jobid>.out.
# Edit the headers below for your cluster (partition/account names are site-specific).
#SBATCH --job-name=peftrun
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --gpus-per-node=1
#SBATCH --cpus-per-task=8
#SBATCH --mem=32G
#SBATCH --time=04:00:00
#SBATCH --output=slurm-%x-%j.out
set -euo pipefail

cd "${SLURM_SUBMIT_DIR:-$PWD}"   # Slurm runs a copy of this script from its spool folder; work from the repo

source scripts/slurm/common.sh   # PY, HF_HUB_OFFLINE, TOKENIZERS_PARALLELISM
export OMP_NUM_THREADS="${SLURM_CPUS_PER_TASK:-8}"

echo "peftrun on $(hostname): job ${SLURM_JOB_ID:-local}, HF_HUB_OFFLINE=$HF_HUB_OFFLINE, overrides: $*"
exec "$PY" -m peftrun "$@"
