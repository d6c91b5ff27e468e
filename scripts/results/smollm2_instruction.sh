#!/usr/bin/env bash
# docs/RESULTS.md, SmolLM2-135M-Instruct and the instruction family (issue 13): one run directory per run under
# $OUT/instruction; reruns skip the runs whose record is complete. Needs ../shared/tools/fetch-real-models.
#   OUT=outputs/results scripts/results/smollm2_instruction.sh [nli|nli_k2|nli_lora_k2|ipt|ipt_150|ipt_k2|superni|superni_tuned] && peftrun-report ...
# One thread each (two parts side by side on the 2-core machine); bfloat16 autocast (trainer.precision=auto picks
# it for SmolLM2 on this CPU), the tuned and the untuned run of each comparison in the same precision.
set -uo pipefail   # a failed run is recorded as failed; the others still run
OUT=${OUT:-outputs/results}/instruction
DATA=${PEFTRUN_DATA_DIR:-../shared/data}
PEFTRUN=${PEFTRUN:-peftrun}
common=(backbone=smollm2-135m-instruct trainer.threads=1 trainer.precision=auto logger=none)
run() { local name=$1; shift; $PEFTRUN "${common[@]}" "$@" "hydra.run.dir=$OUT/$name"; }
part=${1:-all}
nli=(experiment=flan_heldout_nli method=lora task.max_eval_examples=50)
dart=(task=dart "task.data_dir=$DATA/dart" task.train_split=validation "task.eval_splits=[test]"
      task.max_eval_examples=50 "task.metrics=[bleu,chrf]" task.generation.num_beams=1
      task.generation.no_repeat_ngram_size=0 task.generation.max_new_tokens=64)
soft=(method.length=20 trainer.lr=3e-2 trainer.max_steps=50 trainer.batch_size=8)
fewshot=(prompt=fewshot prompt.k=1 prompt.retriever=bm25)
sni=(experiment=superni method=lora task.max_eval_examples=10)

# FLAN held-out NLI: train on E2E, DART, WebNLG, XSum and BoolQ through FLAN's templates, evaluate RTE and CB zero-shot
# under all ten templates each (rank classification), 50 validation examples per task. The untuned model is
# method=icl (frozen, scored in the natural layout: prompt, then " option"); LoRA 60 steps x 8 (scored in its
# training layout: prompt + EOS, then option + EOS).
if [ "$part" = all ] || [ "$part" = nli ]; then
  run nli_untuned "${nli[@]}" method=icl
  run nli_lora "${nli[@]}" trainer.optimizer=adamw_torch trainer.lr=1e-3 trainer.max_steps=60
fi
# k-shot (FLAN's few-shot setting): 2 of the member's own training examples under the query's template; the
# templates round-robin over the queries (one split per task) to keep the 3x longer prompts affordable.
if [ "$part" = all ] || [ "$part" = nli_k2 ]; then
  kshot=(task.mixture.eval_shots=2 task.mixture.template_eval=round_robin task.max_source_length=1024)
  run nli_untuned_k2 "${nli[@]}" method=icl "${kshot[@]}"
  run nli_untuned_k0_round_robin "${nli[@]}" method=icl task.mixture.template_eval=round_robin
fi

# Instruction prompt tuning against prompt tuning on DART (Sun et al. 2023 use DART): the shared folder has DART's
# dev file only, so both train on it and are evaluated on the first 50 test entries (greedy, BLEU and chrF).
# 20 soft tokens, lr 3e-2, 50 steps x 8, seeds 1-3; IPT's prompts (training and evaluation) carry k = 1 BM25-retrieved
# demonstration (the 256-token budget dropped it from 116 of the 6,980 training prompts, none at evaluation).
# In-context learning with the same demonstration, no training, as the reference.
if [ "$part" = all ] || [ "$part" = ipt ]; then
  run dart_icl_k1 "${dart[@]}" method=icl "${fewshot[@]}"
  for seed in 1 2 3; do
    run "dart_prompt_tuning/$seed" "${dart[@]}" method=prompt_tuning "${soft[@]}" trainer.seed=$seed
    run "dart_ipt/$seed" "${dart[@]}" method=ipt "${fewshot[@]}" "${soft[@]}" trainer.seed=$seed
  done
fi

# Super-NaturalInstructions preset (Def + Pos(2), exact match and ROUGE-L): the 26 shipped test tasks, the first
# 10 instances of each (the protocol's 100 cost ~10x more here), untuned (method=icl: natural layout, the answer
# cut at the first blank line); then LoRA on the 35 training tasks (40 steps x 8) on the same protocol.
if [ "$part" = all ] || [ "$part" = superni ]; then
  run superni_untuned "${sni[@]}" method=icl
fi
if [ "$part" = all ] || [ "$part" = superni_tuned ]; then
  run superni_lora "${sni[@]}" trainer.optimizer=adamw_torch trainer.lr=1e-3 \
    trainer.max_steps=40 trainer.batch_size=8 trainer.grad_accum=1
fi


# The same pair at three times the steps (150 x 8), seed 1: does IPT's gap close with more training?
if [ "$part" = all ] || [ "$part" = ipt_150 ]; then
  longer=(method.length=20 trainer.lr=3e-2 trainer.max_steps=150 trainer.batch_size=8 trainer.seed=1)
  run dart_prompt_tuning_150steps/1 "${dart[@]}" method=prompt_tuning "${longer[@]}"
  run dart_ipt_150steps/1 "${dart[@]}" method=ipt "${fewshot[@]}" "${longer[@]}"
fi

# The tuned model k-shot: LoRA as nli_lora but trained and evaluated with 1,024-token sources (room for the two
# demonstrations), evaluated zero-shot and 2-shot on the same round-robin split. The two runs train identically
# (same seed, data and lengths); only the evaluation prompts differ.
if [ "$part" = all ] || [ "$part" = nli_lora_k2 ]; then
  tuned=(trainer.optimizer=adamw_torch trainer.lr=1e-3 trainer.max_steps=60 task.max_source_length=1024
         task.mixture.template_eval=round_robin)
  run nli_lora_source1024_k0_round_robin "${nli[@]}" "${tuned[@]}"
  run nli_lora_source1024_k2 "${nli[@]}" "${tuned[@]}" task.mixture.eval_shots=2
fi

# IPT with two demonstrations (sources up to 512 tokens to hold them), the 50-step budget, seeds 1-3.
if [ "$part" = all ] || [ "$part" = ipt_k2 ]; then
  for seed in 1 2 3; do
    run "dart_ipt_k2/$seed" "${dart[@]}" method=ipt prompt=fewshot prompt.k=2 prompt.retriever=bm25 "${soft[@]}" \
      task.max_source_length=512 trainer.seed=$seed
  done
fi
