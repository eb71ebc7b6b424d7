"""Source-task datasets from Meta-World's scripted experts (stage 0, collect_data.py).

experts.py   expert_policy, episode_seeds, run_episode: one expert episode, fully determined by (seed, task, i)
manifest.py  the per-task manifest.json: records, settings check, reconciliation with the files on disk
pool.py      collect: every task's missing episodes, in parallel over episodes
"""
