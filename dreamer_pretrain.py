"""Stage 1: pretrain the multi-task teacher world model on the K source-task datasets.

    python dreamer_pretrain.py --configs defaults metaworld metaworld_teacher_moe_pretrain \
        --logdir logs/teacher --device cpu --seed 0

Writes `<logdir>/teacher.pt` (final), `<logdir>/latest.pt` (periodic, on Ctrl-C and on SIGTERM), `config.yaml`,
`metrics.jsonl` and TensorBoard events. Re-running with the same logdir resumes from the step reached,
optimizer and sampling state included. The loop is training.teacher.
"""
from __future__ import annotations

import sys

import tools
import configs
from training.teacher import TeacherTrainer

def run(argv=None) -> None:
    """Parse flags and pretrain; raises tools.UsageError for an unusable command line or input."""
    argv = list(sys.argv[1:] if argv is None else argv)
    config = configs.load_config(argv, description=__doc__.split("\n\n")[0], stage="dreamer_pretrain.py")
    trainer = TeacherTrainer(config)
    try:
        trainer.run()
    finally:
        trainer.close()


def main(argv=None) -> int:
    """Exit code: 0 done, 1 training diverged, 2 unusable command line or input, 130 interrupted."""
    return tools.run_main("dreamer_pretrain", run, argv)


if __name__ == "__main__":
    sys.exit(main())
