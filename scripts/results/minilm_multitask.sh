#!/usr/bin/env bash
# docs/RESULTS.md, multi-task P-tuning v2 on MiniLM-L6 (issue 13): RTE (2,490 training pairs) and CB (FewGLUE's
# 32), seeds 1-3. Per seed: each task alone; both tasks with one shared set of deep prompts and a head per task
# (experiment=ptuning_v2_multitask_minilm); then each task again, its prompts started from the shared ones.
#   OUT=outputs/results scripts/results/minilm_multitask.sh && peftrun-report outputs/results/multitask
#   SEEDS="2 3" OUT=outputs/results scripts/results/minilm_multitask.sh     # some seeds (e.g. one queue per core)
# Budget: RTE 3 epochs (468 steps x 16), CB 20 epochs (40 steps), the mixture 3 epochs; lr 5e-3, prompt length
# 16 on every layer, frozen backbone; one thread (run beside the SmolLM2 scripts on the 2-core machine).
# Reruns skip the runs whose record is complete.
set -uo pipefail   # a failed run is recorded as failed; the others still run
OUT=${OUT:-outputs/results}/multitask
DATA=${PEFTRUN_DATA_DIR:-../shared/data}
PEFTRUN=${PEFTRUN:-peftrun}
common=(backbone=minilm-l6 method=ptuning_v2 method.train=head method.length=16 method.dropout=0.1
        task.formulation=head task.max_source_length=128 trainer.lr=5e-3 trainer.batch_size=16
        trainer.warmup_steps=0 trainer.scheduler=linear trainer.threads=1 trainer.precision=fp32 logger=none)
rte=(task=rte "task.data_dir=$DATA/superglue/full/RTE" trainer.epochs=3)
cb=(task=cb "task.data_dir=$DATA/superglue/fewglue/CB" trainer.epochs=20)

for seed in ${SEEDS:-1 2 3}; do
  s=(trainer.seed=$seed)
  $PEFTRUN "${common[@]}" "${rte[@]}" "${s[@]}" "hydra.run.dir=$OUT/single_rte/$seed"
  $PEFTRUN "${common[@]}" "${cb[@]}" "${s[@]}" "hydra.run.dir=$OUT/single_cb/$seed"
  $PEFTRUN experiment=ptuning_v2_multitask_minilm trainer.epochs=3 trainer.threads=1 trainer.precision=fp32 \
    logger=none "${s[@]}" "hydra.run.dir=$OUT/shared/$seed"
  $PEFTRUN "${common[@]}" "${rte[@]}" "${s[@]}" "method.init_from=$OUT/shared/$seed" \
    "hydra.run.dir=$OUT/continued_rte/$seed"
  $PEFTRUN "${common[@]}" "${cb[@]}" "${s[@]}" "method.init_from=$OUT/shared/$seed" \
    "hydra.run.dir=$OUT/continued_cb/$seed"
done
