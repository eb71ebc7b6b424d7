"""Stage 3: how far do the student's episodes lie from the teacher's source tasks?

Embeds episodes with the frozen teacher (posterior means under each task view, averaged over time),
fits one shrinkage Gaussian per source task on a fit split, calibrates the threshold on a disjoint
calibration split, and scores the student's episodes. Writes ood_report.json, ood_episodes.csv,
PNG plots and TensorBoard summaries to --out. The pipeline is ood.pipeline.

  python ood_detection.py --configs defaults --teacher_model_path runs/teacher/teacher.pt \
      --source_dir data/src --student_dir runs/student/train_eps [--id_dir data/heldout] \
      --out runs/ood [--ood_bins 5]
"""
from __future__ import annotations

import logging
import sys
from typing import Sequence

import tools
import configs
from ood import pipeline


def run(argv: Sequence[str] | None = None) -> dict:
    """Parse flags and run the detection; returns the report."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    return pipeline.run(configs.load_config(argv, description=__doc__.split("\n\n")[0], stage="ood_detection.py"))


def main(argv: Sequence[str] | None = None) -> int:
    """Exit code: 0 done, 2 unusable input (one error line)."""
    return tools.run_main("ood_detection", run, argv)


if __name__ == "__main__":
    sys.exit(main())
