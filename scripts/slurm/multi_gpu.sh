#!/usr/bin/env bash
# One peftrun run data-parallel over the GPUs of one node (torchrun + DDP via the transformers Trainer):
#   sbatch --gpus-per-node=4 scripts/slurm/multi_gpu.sh backbone=gpt2-large method=lora task=e2e ...
#   GPUS=2 bash scripts/slurm/multi_gpu.sh ...          # on an interactive GPU node, without sbatch
# The global batch is trainer.batch_size x trainer.grad_accum x GPUS: lower grad_accum to keep a paper's batch.
# All ranks share one run directory (pinned below: Hydra's default one is a timestamp each rank would compute
# on its own). Multi-node runs need srun + torchrun --rdzv-endpoint; not covered here.
#SBATCH --job-name=peftrun-ddp
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --gpus-per-node=4
#SBATCH --cpus-per-task=32
#SBATCH --mem=128G
#SBATCH --time=12:00:00
#SBATCH --output=slurm-%x-%j.out
set -euo pipefail

cd "${SLURM_SUBMIT_DIR:-$PWD}"

# GPUs to use: $GPUS, else what Slurm granted on this node, else every visible GPU.
if [[ -z "${GPUS:-}" ]]; then
    if [[ -n "${SLURM_GPUS_ON_NODE:-}" ]]; then
        GPUS="$SLURM_GPUS_ON_NODE"
    elif command -v nvidia-smi > /dev/null; then
        GPUS="$(nvidia-smi --list-gpus | wc -l)"
    else
        echo "error: no GPU count; set GPUS=N (or submit with sbatch --gpus-per-node=N)" >&2
        exit 2
    fi
fi
if ! [[ "$GPUS" =~ ^[1-9][0-9]*$ ]]; then
    echo "error: GPUS=$GPUS is not a positive number of GPUs" >&2
    exit 2
fi

source scripts/slurm/common.sh   # PY, HF_HUB_OFFLINE, TOKENIZERS_PARALLELISM
export OMP_NUM_THREADS="$(( ${SLURM_CPUS_PER_TASK:-$(( GPUS * 4 ))} / GPUS ))"   # CPU threads per rank

RUN_DIR="${RUN_DIR:-outputs/ddp/${SLURM_JOB_ID:-$(date +%Y-%m-%d_%H-%M-%S)}}"
echo "peftrun on $(hostname): $GPUS GPUs, run dir $RUN_DIR, overrides: $*"
exec "$PY" -m torch.distributed.run --standalone --nproc_per_node="$GPUS" \
    -m peftrun "hydra.run.dir=$RUN_DIR" "$@"
