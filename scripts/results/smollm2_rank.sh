#!/usr/bin/env bash
# docs/RESULTS.md, rank classification with SmolLM2-135M-Instruct (issue 12): RTE (277 validation pairs,
# demonstrations from the 2,490 training pairs) and CB (56 validation, demonstrations from FewGLUE's 32), FLAN's
# first template, zero-shot and k = 4 (BM25), every option scored by summed log-likelihood, calibration scores
# recorded (prompt.calibrate=true) so that peftrun-score re-decides the same run without calibration and by mean
# log-likelihood (scripts/results/tables.py does the four rules). CB k = 4 once more with trainer.precision=auto (bf16 on this CPU).
#   OUT=outputs/results scripts/results/smollm2_rank.sh
set -uo pipefail   # a failed run is recorded as failed; the others still run
OUT=${OUT:-outputs/results}
DATA=${PEFTRUN_DATA_DIR:-../shared/data}
PEFTRUN=${PEFTRUN:-peftrun}
common=(backbone=smollm2-135m-instruct task.formulation=rank prompt=flan prompt.calibrate=true
        task.max_source_length=1024 trainer.threads=${THREADS:-1} trainer.precision=fp32 logger=none)
for task in rte cb; do
  case $task in
    rte) data="$DATA/superglue/full/RTE";;
    cb) data="$DATA/superglue/fewglue/CB";;
  esac
  $PEFTRUN "${common[@]}" method=icl "task=$task" "task.data_dir=$data" "hydra.run.dir=$OUT/rank/${task}_zero_shot"
  $PEFTRUN "${common[@]}" method=icl "task=$task" "task.data_dir=$data" prompt.k=4 prompt.retriever=bm25 \
    "hydra.run.dir=$OUT/rank/${task}_k4_bm25"
done
$PEFTRUN "${common[@]}" method=icl task=cb "task.data_dir=$DATA/superglue/fewglue/CB" prompt.k=4 prompt.retriever=bm25 \
  trainer.precision=auto "hydra.run.dir=$OUT/rank/cb_k4_bm25_bf16"   # auto = bf16 here (record: precision)
