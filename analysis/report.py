"""results.md, results.json and results.csv from a Table and its rliable estimates."""
from __future__ import annotations

import csv
import io
import json
import pathlib

import numpy as np

import configs
import tools
from analysis import paired, plots, stats
from analysis.aggregate import Table

SUCCESS_RULE = ("an episode succeeds when info['success'] is true at any step (success_any); success at the last "
                "step (success_final) is reported beside it")


def paired_rule(baseline: str | None, margin: float, seed: int, reps: int) -> str:
    against = f"arm − {baseline}" if baseline else "later arm − earlier arm (name order)"
    return (f"per-seed difference ({against}) of the AUC and of the final score over the seeds both ran; "
            f"{int(paired.CI * 100)}% percentile bootstrap of the mean ({reps} reps, numpy default_rng seeded "
            f"[{seed}, crc32 of the comparison]); two-sided Wilcoxon signed-rank and paired t p-values (scipy); "
            f"verdict at margin {margin:g}: better if the CI lies above 0, worse if below 0, "
            f"'{paired.equivalence_label(margin)}' if it contains 0 and lies inside (-{margin:g}, {margin:g}), "
            "else inconclusive")


def protocol(table: Table, runs: list, seed: int, reps: int, pairing: str) -> dict:
    kept = [r for r in runs if r.method in table.methods]
    eval_episodes = sorted({r.eval_episodes for r in kept})
    return {"success_rule": SUCCESS_RULE, "policy": "deterministic (mode action)",
            "eval_episodes": eval_episodes, "eval_goals": sorted({r.eval_goals for r in kept}), "prefill": "random prefill episodes are training data only; every "
            "success figure comes from separate evaluation episodes",
            "env_steps": int(table.steps[-1]), "eval_steps": table.steps.tolist(), "final_score":
            f"mean of the last {table.last} evaluations", "auc": "trapezoid area under the success curve divided "
            "by the evaluated step range", "ci": f"{int(stats.CI * 100)}% stratified bootstrap (rliable, "
            f"{reps} reps, numpy seed {seed})", "paired": pairing, "seeds": table.seeds, "targets": table.targets,
            # the code the runs ran (their config histories), not this checkout's: the report is remade the same
            "commits": sorted({c for r in kept for c in configs.run_commits(r.path)})}


def _fmt(estimate) -> str:
    point, low, high = estimate
    return f"{point:.3f} [{low:.3f}, {high:.3f}]"


def per_target_rows(table: Table) -> list[dict]:
    rows = []
    for method in table.methods:
        final, final_last, auc = table.final(method), table.final(method, "success_final"), table.auc(method)
        ret = table.final(method, "return")
        for j, target in enumerate(table.targets):
            rows.append({"target": target, "method": method, "seeds": len(table.seeds[method]),
                         "final_success": float(final[:, j].mean()), "final_success_std": float(final[:, j].std()),
                         "final_success_laststep": float(final_last[:, j].mean()), "auc": float(auc[:, j].mean()),
                         "final_return": float(ret[:, j].mean()),
                         "per_seed_final": [float(v) for v in final[:, j]]})
    return sorted(rows, key=lambda r: (r["target"], r["method"]))


def paired_lines(rows: list[dict]) -> list[str]:
    if not rows:
        return []
    lines = ["", "## Paired differences (arm − baseline over the seeds both ran)", "",
             "| target | arm − baseline | metric | pairs | mean Δ | 95% CI (bootstrap) | 95% CI (t) | Wilcoxon p | "
             "paired t p | verdict |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['target']} | {r['arm']} − {r['baseline']} | {paired.METRICS[r['metric']]} | {r['pairs']} | "
                     f"{r['mean']:+.3f} | [{r['ci'][0]:+.3f}, {r['ci'][1]:+.3f}] | "
                     f"[{r['ci_t'][0]:+.3f}, {r['ci_t'][1]:+.3f}] | {r['wilcoxon_p']:.3g} | {r['t_p']:.3g} | "
                     f"{r['verdict']} |")
    return lines


def markdown(table: Table, proto: dict, rows: list[dict], agg: dict, poi: dict, pairs: list[dict],
             notes: list[str]) -> str:
    lines = ["# Results", "", "## Protocol", ""]
    lines += [f"* {key}: {value}" for key, value in proto.items()]
    lines += ["", f"## Per target (final score = {proto['final_score']}; mean ± std over seeds)", "",
              "| target | method | seeds | final success | final success (last step) | AUC | final return |",
              "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['target']} | {r['method']} | {r['seeds']} | {r['final_success']:.3f} ± {r['final_success_std']:.3f}"
              f" | {r['final_success_laststep']:.3f} | {r['auc']:.3f} | {r['final_return']:.1f} |" for r in rows]
    lines += ["", "## Across targets (final success, 95% CI)", "", "| method | IQM | mean |", "|---|---|---|"]
    lines += [f"| {m} | {_fmt(agg[m]['iqm'])} | {_fmt(agg[m]['mean'])} |" for m in table.methods]
    if poi:
        lines += ["", "## Probability of improvement P(row > column), 95% CI", "",
                  "| | " + " | ".join(table.methods) + " |", "|---" * (len(table.methods) + 1) + "|"]
        for x in table.methods:
            cells = ["—" if x == y else _fmt(poi[(x, y)]) for y in table.methods]
            lines.append(f"| {x} | " + " | ".join(cells) + " |")
    lines += paired_lines(pairs)
    lines += ["", "## Plots", "", "![curves](curves.png)", "", "![IQM curves](iqm_curves.png)", "",
              "![performance profiles](profiles.png)", ""]
    if notes:
        lines += ["## Left out", ""] + [f"* {n}" for n in notes] + [""]
    return "\n".join(lines)


FILES = ("results.md", "results.json", "results.csv", "curves.png", "iqm_curves.png", "profiles.png")


def write(table: Table, runs: list, notes: list[str], out: pathlib.Path, seed: int, reps: int,
          baseline: str | None = "dreamer", margin: float = 0.05) -> pathlib.Path:
    """Every report file, computed first and then swapped in as one folder (`tools.atomic_folder`): `out` holds the
    previous report or this one, whole, whenever the process is killed."""
    baseline = baseline if baseline in table.methods else None
    proto = protocol(table, runs, seed, reps, paired_rule(baseline, margin, seed, reps))
    rows = per_target_rows(table)
    agg, poi = stats.aggregates(table, seed, reps), stats.improvement(table, seed, reps)
    pairs = paired.analyse(table, baseline, margin, seed, reps)
    curves = stats.iqm_curves(table, seed, reps)
    taus, prof = stats.profiles(table, seed, reps)
    payload = {"protocol": proto, "per_target": rows, "aggregate": agg,
               "probability_of_improvement": {f"{x} > {y}": v for (x, y), v in poi.items()}, "paired": pairs,
               "iqm_curves": {m: {"steps": table.steps.tolist(), "iqm": c[0].tolist(), "low": c[1].tolist(),
                                  "high": c[2].tolist()} for m, c in curves.items()},
               "profiles": {"tau": taus.tolist(), **{m: [v.tolist() for v in p] for m, p in prof.items()}},
               "curves": {m: {"steps": table.steps.tolist(), "per_seed_target": table.curves[m].tolist()}
                          for m in table.methods},
               "left_out": notes}
    texts = {"results.md": markdown(table, proto, rows, agg, poi, pairs, notes),
             "results.json": json.dumps(payload, indent=1, default=_plain), "results.csv": _csv(rows)}

    def fill(folder: pathlib.Path) -> None:
        plots.curves(table, folder / "curves.png")
        plots.iqm_curves(table, curves, folder / "iqm_curves.png")
        plots.profiles(table, taus, prof, folder / "profiles.png")
        for name, text in texts.items():
            data = text.encode()
            tools.atomic_write(folder / name, lambda f: f.write(data))

    tools.atomic_folder(out, fill, own=FILES)
    return out / "results.md"


def _csv(rows: list[dict]) -> str:
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=[k for k in rows[0] if k != "per_seed_final"], extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return text.getvalue()


def tables(path: pathlib.Path) -> str:
    """The text of a results.md up to its plots: protocol and tables, for a console."""
    return path.read_text().split("## Plots")[0].rstrip()


def _plain(value):
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(type(value))
