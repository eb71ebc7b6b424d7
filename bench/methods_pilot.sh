#!/usr/bin/env bash
# Pilot: `policy` and `critic` students on the protocol of docs/benchmarks.md "Learning experiment 2"
# (target drawer-close, teacher on reach/push/pick-place/door-open, 12k env steps, seeds 0 and 1), for a
# side-by-side with that experiment's COMET and Dreamer seeds. Two runs at a time, one torch thread each.
#   bash bench/methods_pilot.sh [root=logs/methods_pilot]
# Summary: python bench/distill_curves.py --group policy '<root>/policy_s*' --group critic '<root>/critic_s*'
set -euo pipefail
ROOT=${1:-logs/methods_pilot}
PY=${PY:-.venv/bin/python}
TASKS=metaworld_reach,metaworld_push,metaworld_pick_place,metaworld_door_open
DIRS=$ROOT/data/reach,$ROOT/data/push,$ROOT/data/pick_place,$ROOT/data/door_open
export OMP_NUM_THREADS=1
$PY collect_data.py --tasks $TASKS --episodes 100 --obs state --noise 0.1 --random_frac 0.1 --workers 1 \
    --out $ROOT/data --seed 0 --configs defaults metaworld_state --progress False
$PY dreamer_pretrain.py --configs defaults metaworld metaworld_state metaworld_teacher_moe_pretrain \
    --source_tasks $TASKS --source_task_dirs $DIRS --n_experts 4 --batch_size 16 --pretrain_iterations 2000 \
    --teacher_actor_steps 3000 --teacher_critic_steps 3000 --threads 1 --progress False --logdir $ROOT/teacher
student() {  # mode seed
  $PY dreamer_distill.py --configs defaults metaworld metaworld_state --task metaworld_drawer_close \
      --steps 12000 --prefill 2000 --train_every 10 --batch_length 32 --prefill_updates 100 --eval_every 2000 \
      --eval_episodes 10 --threads 1 --progress False --seed $2 --use_distill True \
      --teacher_model_path $ROOT/teacher/teacher.pt --distill_mode $1 --prune_every 300 --min_active_tasks 2 \
      --logdir $ROOT/$1_s$2 > $ROOT/$1_s$2.log 2>&1
}
for seed in 0 1; do
  student policy $seed & student critic $seed & wait
done
