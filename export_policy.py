"""Export a student's acting policy (encoder + one RSSM filter step + actor) as a self-contained .pt2 file.

    python export_policy.py --checkpoint runs/reach/latest.pt [--out runs/reach/policy.pt2]

The file is a `torch.export` program at batch 1 that plain torch loads without this repository; how to call
it: artefacts/export.py (and docs/architecture.md, "Artefacts").
"""
from __future__ import annotations

import argparse
import pathlib
import sys


def run(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a student's latest.pt")
    parser.add_argument("--out", default="", help="default: policy.pt2 next to the checkpoint")
    args = parser.parse_args(argv)
    from artefacts import export, student, variants

    payload = student.read(args.checkpoint)
    if payload.get("kind") == student.VARIANT_KIND:
        raise student.ArtefactError(f"--checkpoint {args.checkpoint}: a quantize.py variant; export takes the "
                                    f"student's latest.pt")
    agent = student.build_agent(payload)
    out = export.export(variants.make(agent, "fp32"), agent.wm.obs_shapes,
                        args.out or pathlib.Path(args.checkpoint).parent / "policy.pt2")
    print(f"exported the acting policy of {args.checkpoint} to {out}", flush=True)


def main(argv=None) -> int:
    """Exit code: 0 done, 2 unusable command line or checkpoint (one error line)."""
    import cli

    return cli.run_main("export_policy", run, argv)


if __name__ == "__main__":
    sys.exit(main())
