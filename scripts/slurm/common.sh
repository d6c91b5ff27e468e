# Sourced by run.sh, sweep.sh and multi_gpu.sh after they cd to the repository (SLURM_SUBMIT_DIR).
# Sets PY (the interpreter) and the environment every peftrun job wants; OMP_NUM_THREADS is the caller's.

# Interpreter: $PEFTRUN_PYTHON, else the project's .venv (make install), else `python` on PATH (module/conda).
if [[ -n "${PEFTRUN_PYTHON:-}" ]]; then
    PY="$PEFTRUN_PYTHON"
elif [[ -x .venv/bin/python ]]; then
    PY=.venv/bin/python
else
    PY=python
fi
# Offline compute nodes: HF_HUB_OFFLINE=1 makes transformers/datasets read only the local cache (HF_HOME),
# see docs/CLUSTERS.md.
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-0}"
export TOKENIZERS_PARALLELISM=false
