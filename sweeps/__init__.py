"""Experiment sweeps: a YAML spec becomes a graph of stage-script jobs run as Ray tasks (sweep.py)."""
