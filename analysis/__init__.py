"""Results of student runs: loading eval curves, per-target tables, rliable aggregates, plots, the report."""
