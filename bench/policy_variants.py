"""Size and speed of the acting-policy variants at the paper pixel sizes (untrained weights), as JSON.

    python bench/policy_variants.py [--configs defaults metaworld] [--threads 1] [--calls 100] [--no_compile]
        [--out bench/policy_variants_pixel.json]

Builds an untrained student from the config blocks (size and speed do not depend on the weights), writes it
as a checkpoint in a temporary folder and runs quantize.py's pipeline on it without evaluation episodes
(observations for the timings come from one episode of the real env). All variants are timed in one run; the
load average is recorded at its start and its end.
"""
from __future__ import annotations

import argparse
import pathlib
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from envs import headless_gl  # noqa: E402

headless_gl()  # before torch, and anything that imports mujoco


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=["defaults", "metaworld"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--no_compile", action="store_true")
    parser.add_argument("--out", default="")
    args = parser.parse_args(argv)
    import torch

    import tools
    import configs
    from artefacts import student, table, variants
    from bench.common import emit, machine

    torch.set_num_threads(args.threads)
    config = configs.load_config(["--configs", *args.configs]).to_dict()
    agent = student.build_agent({"config": config})
    before = machine()  # load average at the start; the one at the end goes in "machine"
    with tempfile.TemporaryDirectory() as tmp:
        path = pathlib.Path(tmp) / "latest.pt"
        tools.save_checkpoint(path, {"config": config, "step": 0, "agent": agent.state_dict()})
        rows = table.run(path, pathlib.Path(tmp) / "q", list(variants.VARIANTS), 0, 0, not args.no_compile, args.calls)
    result = {"configs": args.configs, "obs": config["obs"], "size": config["size"], "cnn_depth": config["cnn_depth"],
              "machine_at_start": before, "machine": machine(), "calls": args.calls, "rows": rows, "table": table.markdown(rows)}
    return emit(result, args.out)


if __name__ == "__main__":
    main()
