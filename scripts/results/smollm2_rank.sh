#!/usr/bin/env bash
# docs/RESULTS.md, rank classification with SmolLM2-135M-Instruct (issue 12): RTE (277 validation pairs,
# demonstrations from the 2,490 training pairs) and CB (56 validation, demonstrations from FewGLUE's 32), FLAN's
# first template, zero-shot and k = 4 (BM25), every option scored by summed log-likelihood, calibration scores
# recorded (prompt.calibrate=true) so that peftrun-score re-decides the same run without calibration and by mean
# log-likelihood. Then equal labelled data on RTE (the first 64 training pairs): ICL k = 4 from them vs LoRA and
# prompt tuning trained on them, 3 seeds each, all decided by rank classification.
#   OUT=outputs/results scripts/results/smollm2_rank.sh
set -uo pipefail   # a failed run is recorded as failed; the others still run
OUT=${OUT:-outputs/results}
DATA=${PEFTRUN_DATA_DIR:-../shared/data}
PEFTRUN=${PEFTRUN:-peftrun}
common=(backbone=smollm2-135m-instruct task.formulation=rank prompt=flan prompt.calibrate=true
        task.max_source_length=1024 trainer.threads=${THREADS:-1} logger=none)
for task in rte cb; do
  case $task in
    rte) data="$DATA/superglue/full/RTE";;
    cb) data="$DATA/superglue/fewglue/CB";;
  esac
  $PEFTRUN "${common[@]}" method=icl "task=$task" "task.data_dir=$data" "hydra.run.dir=$OUT/rank/${task}_zero_shot"
  $PEFTRUN "${common[@]}" method=icl "task=$task" "task.data_dir=$data" prompt.k=4 prompt.retriever=bm25 \
    "hydra.run.dir=$OUT/rank/${task}_k4_bm25"
done

# equal labelled data: 64 RTE training pairs
few=(task=rte "task.data_dir=$DATA/superglue/full/RTE" task.max_train_examples=64)
$PEFTRUN -m "${common[@]}" "${few[@]}" method=icl prompt.k=4 prompt.retriever=random prompt.pool=64 \
  prompt.seed=1,2,3 "hydra.sweep.dir=$OUT/rank64/icl_k4_random"
$PEFTRUN -m "${common[@]}" "${few[@]}" method=lora trainer.lr=2e-3 trainer.epochs=4 trainer.seed=1,2,3 \
  "hydra.sweep.dir=$OUT/rank64/lora"
$PEFTRUN -m "${common[@]}" "${few[@]}" method=prompt_tuning method.length=20 trainer.lr=3e-2 trainer.epochs=4 \
  trainer.seed=1,2,3 "hydra.sweep.dir=$OUT/rank64/prompt_tuning"
