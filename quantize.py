"""Post-training quantization of a student's acting policy (encoder + RSSM filter step + actor).

    python quantize.py --checkpoint runs/reach/latest.pt [--out runs/reach/quantized] [--episodes 20]
        [--variants fp32,bf16,fp16,int8_wo,int8_dyn] [--no_compile] [--seed 0] [--threads 1]

Writes <out>/<variant>.pt for each variant (each accepted by evaluate.py --checkpoint), <out>/table.json and
<out>/table.md: size on disk, parameter bytes, latency per action at batch 1 (wall median, p90, and median
thread CPU time, which other processes' load barely moves), throughput at batch 64 (by wall and by CPU time),
eager and (fp32/int8) torch.compile'd, all variants timed in alternating blocks; largest action difference to
fp32 on recorded observations; eval success over --episodes seeded episodes with its difference to fp32 and
standard error. Which layers stay float, and why: artefacts/variants.py.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys


def run(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a student's latest.pt")
    parser.add_argument("--out", default="", help="output folder (default: <checkpoint dir>/quantized)")
    parser.add_argument("--variants", default="fp32,bf16,fp16,int8_wo,int8_dyn")
    parser.add_argument("--episodes", type=int, default=20, help="eval episodes per variant (0: skip evaluation)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--calls", type=int, default=200,
                        help="timed calls per batch-1 latency (a quarter of that at batch 64), interleaved across variants")
    parser.add_argument("--no_compile", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    os.environ.setdefault("MUJOCO_GL", "egl")
    import torch

    from artefacts import student, table, variants

    torch.set_num_threads(args.threads)
    names = [n.strip() for n in args.variants.split(",") if n.strip()]
    unknown = [n for n in names if n not in variants.VARIANTS]
    if unknown or not names or names[0] != "fp32":
        raise student.ArtefactError(f"--variants must start with fp32 (the reference) and name only "
                                    f"{', '.join(variants.VARIANTS)}; got {args.variants}")
    out = pathlib.Path(args.out or pathlib.Path(args.checkpoint).parent / "quantized")
    rows = table.run(args.checkpoint, out, names, args.episodes, args.seed, not args.no_compile, args.calls)
    (out / "table.json").write_text(json.dumps({"checkpoint": str(args.checkpoint), "episodes": args.episodes,
                                                "seed": args.seed, "threads": args.threads, "rows": rows}, indent=1) + "\n")
    md = table.markdown(rows)
    (out / "table.md").write_text(md + "\n")
    print(md, flush=True)


def main(argv=None) -> int:
    """Exit code: 0 done, 2 unusable command line or checkpoint (one error line)."""
    import cli

    return cli.run_main("quantize", run, argv)


if __name__ == "__main__":
    sys.exit(main())
