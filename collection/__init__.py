"""Source-task datasets from Meta-World's scripted experts (stage 0, collect_data.py).

cli.py       collect_data.py's own flags: parser and value checks
experts.py   expert_policy, episode_seeds, run_episode: one expert episode, fully determined by (seed, task, i)
manifest.py  the per-task manifest.json: records, settings check, reconciliation with the files on disk
pool.py      collect: every task's missing episodes, in parallel over episodes
"""
