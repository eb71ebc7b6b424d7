"""Training loops and the parts they share (docs/architecture.md, "Layout").

student.py   Trainer: the online student loop (stage 2); build_distiller; load_agent
teacher.py   TeacherTrainer: the multi-task teacher loop (stage 1)
sources.py   load_sources, TaskBatcher: the teacher's task-balanced batches
gradients.py per-task gradients, PCGrad, gradient cosines
episodes.py  EpisodeBuilder, episode_stats, merge_reset
evaluation.py evaluate: mode-action episodes on the eval envs
run_state.py RunDir: the one checkpoint / resume / rollback mechanism of every loop
"""
