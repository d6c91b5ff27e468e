#!/usr/bin/env bash
# docs/RESULTS.md, SmolLM2-135M-Instruct on E2E and WebNLG (issues 9 and 12): one run directory per method under
# $OUT; rerunning skips the runs whose record is complete. Needs ../shared/tools/fetch-real-models (or the hub).
#   OUT=outputs/results scripts/results/smollm2_e2e.sh && peftrun-report outputs/results/e2e
# Budget: 50 steps x batch 8 (400 of 42,061 training pairs), greedy, the first 50 validation MRs, one thread
# (run beside scripts/results/minilm_superglue.sh on the 2-core machine).
set -uo pipefail   # a failed run is recorded as failed; the others still run
OUT=${OUT:-outputs/results}
DATA=${PEFTRUN_DATA_DIR:-../shared/data}
PEFTRUN=${PEFTRUN:-peftrun}
common=(backbone=smollm2-135m-instruct task=e2e "task.data_dir=$DATA/e2e" task.max_eval_examples=50
        task.generation.num_beams=1 task.generation.no_repeat_ngram_size=0 trainer.max_steps=50
        trainer.batch_size=8 trainer.threads=1 trainer.precision=fp32 logger=none)
run() { local name=$1; shift; $PEFTRUN "${common[@]}" "$@" "hydra.run.dir=$OUT/e2e/$name"; }

# no training: zero-shot with FLAN's first E2E template, then k = 4 demonstrations (issue 12)
run zero_shot method=icl prompt=flan task.max_source_length=512
run lora method=lora trainer.lr=2e-3
run full method=full trainer.lr=5e-5
run prefix method=prefix trainer.lr=2e-3
run prompt_tuning method=prompt_tuning method.length=20 trainer.lr=3e-2
run ptuning method=ptuning trainer.lr=1e-2
run adapter_houlsby method=adapter_houlsby trainer.lr=1e-3
run mam method=mam trainer.lr=1e-3
for retriever in random bm25 dense; do
  run "icl_k4_$retriever" method=icl prompt=flan prompt.k=4 "prompt.retriever=$retriever" task.max_source_length=512
done

# WebNLG 2017 (seen + unseen categories), LoRA and prefix-tuning at the same budget
web=(task=webnlg "task.data_dir=$DATA/webnlg2017" task.metrics=[bleu,chrf])
run webnlg_zero_shot "${web[@]}" method=icl prompt=flan task.max_source_length=512
run webnlg_lora "${web[@]}" method=lora trainer.lr=2e-3
run webnlg_prefix "${web[@]}" method=prefix trainer.lr=2e-3

# bfloat16 autocast on CPU (float32 master weights) against the fp32 LoRA run above (issue 14)
run lora_bf16 method=lora trainer.lr=2e-3 trainer.precision=bf16   # (overrides the fp32 above)
