#!/usr/bin/env bash
# NCR property prediction with a small label budget: supervised vs frozen vs finetuned
# (docs/RESULTS.md). Needs a pretraining workdir and an NCR export:
#   [SEED=0] bash bench/proppred_ncr.sh PRETRAIN_WORKDIR NCR_EXPORT_WORKDIR OUT_DIR [STEPS] [BUDGETS]
# The model flags must match the pretraining run (here: width 64, 3 encoder layers, latent 64).
set -euo pipefail
pretrained=${1:?pretraining workdir}
data=${2:?NCR export workdir (launch.py --config=configs/export.py:ncr)}
out=${3:?output directory}
steps=${4:-600}
budgets=${5:-"1000 10000"}
seed=${SEED:-0}
model=(--config.model.enc_emb_dim=64 --config.model.dec_emb_dim=64 --config.model.n_enc_layers=3
       --config.model.n_dec_layers=1 --config.model.n_enc_heads=4 --config.model.n_dec_heads=4
       --config.model.emb_emb_dim=16 --config.model.latent_dim=64)
train=(--config.optim.lr=1e-3 --config.optim.warmup_updates=50 --config.train.batch_size=32
       --config.train.num_train_steps="$steps" --config.train.eval_every_steps=100
       --config.train.checkpoint_every_steps="$steps" --config.train.log_every_steps=50
       --config.data.train_path="$data/split/data.prefix.train"
       --config.data.test_path="$data/split/data.prefix.test")
python=${PYTHON:-.venv/bin/python}
for n in $budgets; do
  for variant in supervised frozen finetuned; do
    init=()
    if [ "$variant" != supervised ]; then init=(--config.train.init_from="$pretrained"); fi
    "$python" launch.py --config=configs/proppred.py:ncr,"$variant" \
        --workdir="$out/ncr_${variant}_${n}_seed$seed" "${model[@]}" "${train[@]}" "${init[@]}" \
        --config.data.n_train="$n" --config.train.seed="$seed"
  done
done
"$python" bench/proppred_summary.py "$out"
