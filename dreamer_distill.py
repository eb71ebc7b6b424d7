"""Stage 2: train a student Dreamer agent online on one Meta-World target task.

    python dreamer_distill.py --configs defaults metaworld metaworld_state --task metaworld_reach \
        --logdir runs/reach --use_distill False [--device cpu --seed 0]

Step counts (steps, prefill, train_every, eval_every, log_every, checkpoint_every) are ENV steps.
Writes to --logdir: config.yaml, train_eps/ and eval_eps/ (one .npz per episode), metrics.jsonl +
TensorBoard events, latest.pt (every checkpoint_every env steps, on Ctrl-C and on SIGTERM). Running the same
command again resumes from latest.pt; what a killed run wrote after it is set aside. With --use_distill True
the teacher given by --teacher_model_path guides the student's world model. The loop is training.student.
"""
from __future__ import annotations

import sys

import tools
import configs
from training.student import Trainer


def run(argv=None) -> None:
    """Parse flags and train; raises tools.UsageError for an unusable command line."""
    config = configs.load_config(argv, description=__doc__, stage="dreamer_distill.py")
    trainer = Trainer(config)
    try:
        trainer.run()
    finally:
        trainer.close()


def main(argv=None) -> int:
    """Exit code: 0 done, 2 unusable command line, 130 interrupted (checkpoint saved)."""
    return tools.run_main("dreamer_distill", run, argv)


if __name__ == "__main__":
    sys.exit(main())
