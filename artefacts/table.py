"""quantize.py's pipeline: every variant of a student's acting policy written as a file, then measured side by
side in one run (size, parameter bytes, latency, throughput, action error, eval success vs fp32)."""
from __future__ import annotations

import pathlib
import sys
import time

import numpy as np

from artefacts import evaluation, measure, student, variants

COMPILED = ("fp32", "int8_wo", "int8_dyn")  # torch.compile is what may make int8 fast; fp32 compiled is its baseline


def _paired(values: np.ndarray, ref: np.ndarray) -> tuple[float, float | None]:
    """Mean difference and its standard error (None for one episode) over the same seeded episodes."""
    d = values - ref
    return float(d.mean()), evaluation.standard_error(d)


def run(checkpoint_path, out_dir, names, episodes: int, seed: int, compile_: bool, calls: int = 200) -> list[dict]:
    """One row per variant (dicts of builtins); variant files go to out_dir/<name>.pt. Sizes, action errors and
    success first, variant by variant; then the timings of all variants, interleaved (`measure.interleaved_times`)."""
    payload = student.read(checkpoint_path)
    if payload.get("kind") == student.VARIANT_KIND:
        raise student.ArtefactError(f"--checkpoint {checkpoint_path}: already a variant; pass the student's latest.pt")
    agent = student.build_agent(payload)
    out_dir = pathlib.Path(out_dir)
    base = variants.make(agent, "fp32")
    rows, ref, recorded, timed = [], None, None, {}
    for name in names:
        start = time.perf_counter()
        module = variants.make(agent, name)
        path = variants.save(out_dir / f"{name}.pt", module, name, payload)
        if episodes > 0:
            eps, _, _ = evaluation.run(student.read(path), episodes, seed)  # the file, as evaluate.py loads it
            success = np.array([float(ep["success"].max()) for ep in eps])
        if recorded is None:  # observations recorded along the first variant's (fp32's) episodes
            recorded = measure.recorded_inputs(eps if episodes > 0 else evaluation.run(payload, 1, seed)[0],
                                               base.obs_keys)
            ref_actions = measure.replay_actions(base, base, recorded)
        row = {"variant": name, "file_bytes": path.stat().st_size, "param_bytes": variants.parameter_bytes(module),
               "max_action_err": float(np.abs(measure.replay_actions(module, base, recorded) - ref_actions).max())}
        timed[name, "eager"] = module
        if compile_ and name in COMPILED:
            timed[name, "compiled"] = measure.compiled(module)
        if episodes > 0:
            ref = success if ref is None else ref
            row["success"], row["success_se"] = float(success.mean()), evaluation.standard_error(success)
            row["success_diff"], row["success_diff_se"] = _paired(success, ref)
        rows.append(row)
        print(f"{name}: built and evaluated in {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    add_timings(rows, timed, base, recorded, calls)
    return rows


def add_timings(rows: list[dict], timed: dict, base, recorded, calls: int) -> None:
    """Latency at batch 1 (median, p90 of `calls` calls) and throughput at batch 64 (median of calls // 4) of every
    (variant, eager|compiled) module in `timed`, into the variants' rows."""
    start = time.perf_counter()
    one = measure.interleaved_times(timed, measure.batch_inputs(base, recorded, 1), calls)
    many = measure.interleaved_times(timed, measure.batch_inputs(base, recorded, 64), max(10, calls // 4))
    for row in rows:
        for tag in ("eager", "compiled"):
            key = (row["variant"], tag)
            if key in timed:
                (wall, cpu), (wall64, cpu64) = one[key], many[key]
                row[f"{tag}_b1_median_ms"] = float(np.median(wall))
                row[f"{tag}_b1_p90_ms"] = float(np.percentile(wall, 90))
                row[f"{tag}_b1_cpu_median_ms"] = float(np.median(cpu))
                row[f"{tag}_b64_actions_per_s"] = float(64 / (np.median(wall64) / 1e3))
                row[f"{tag}_b64_cpu_actions_per_s"] = float(64 / (np.median(cpu64) / 1e3))
    print(f"timings of {len(timed)} modules, interleaved: {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)


def markdown(rows: list[dict]) -> str:
    """One table: a row per variant (the compiled columns are blank where not compiled). Latency at batch 1 in
    ms: wall median / p90 / CPU-time median; throughput at batch 64 in actions/s: by wall / by CPU time."""
    def lat(r, tag):
        if f"{tag}_b1_median_ms" not in r:
            return "–"
        return f"{r[f'{tag}_b1_median_ms']:.3f} / {r[f'{tag}_b1_p90_ms']:.3f} / {r[f'{tag}_b1_cpu_median_ms']:.3f}"

    def thr(r, tag):
        if f"{tag}_b64_actions_per_s" not in r:
            return "–"
        return f"{r[f'{tag}_b64_actions_per_s']:.0f} / {r[f'{tag}_b64_cpu_actions_per_s']:.0f}"

    head = ("| variant | file KiB | param KiB | eager b1 ms: median / p90 / CPU | eager b64 act/s: wall / CPU "
            "| compiled b1 ms: median / p90 / CPU | compiled b64 act/s: wall / CPU | max action err | success "
            "| diff to fp32 ± se |")
    lines = [head, "|" + " --- |" * 10]
    for r in rows:
        succ = f"{r['success']:.2f}" if "success" in r else "–"
        diff = evaluation.with_error(r["success_diff"], r["success_diff_se"], signed=True) if "success" in r else "–"
        lines.append(f"| {r['variant']} | {r['file_bytes'] / 1024:.1f} | {r['param_bytes'] / 1024:.1f} | "
                     f"{lat(r, 'eager')} | {thr(r, 'eager')} | {lat(r, 'compiled')} | {thr(r, 'compiled')} | "
                     f"{r['max_action_err']:.4f} | {succ} | {diff} |")
    return "\n".join(lines)
