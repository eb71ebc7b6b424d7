"""Load a student checkpoint (`<logdir>/latest.pt`) or a policy variant written by quantize.py.

Every problem with the file is an `ArtefactError` whose message names the file and what to pass instead.
"""
from __future__ import annotations

import pathlib

import tools

# `kind` of the policy-variant files written by quantize.py (a student checkpoint has no `kind`).
VARIANT_KIND = "student_policy"


class ArtefactError(tools.UsageError):
    """A file that is not the artefact asked for; the message is one line naming it."""


def import_torchao():
    """torchao, imported with its warnings about optional kernels this build lacks silenced. Importing it registers
    its tensor types (an int8 variant's weights) as safe for weights-only unpickling."""
    import logging

    log = logging.getLogger("torchao")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        import torchao
    finally:
        log.setLevel(level)
    return torchao


def _names_torchao(path: pathlib.Path) -> bool:
    """Whether the checkpoint's pickle refers to torchao's types (an int8 variant), read without unpickling it."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            pickle = next((n for n in archive.namelist() if n.endswith("/data.pkl")), None)
            return pickle is not None and b"torchao" in archive.read(pickle)
    except (OSError, zipfile.BadZipFile):
        return False  # not a checkpoint at all: load_checkpoint says so


def read(path) -> dict:
    """The checkpoint dict of a student run or a policy variant; anything else is an ArtefactError."""
    path = pathlib.Path(path).expanduser()
    if _names_torchao(path):  # in a fresh process weights-only unpickling refuses torchao's types until it is imported
        import_torchao()
    try:
        payload = tools.load_checkpoint(path)
    except tools.CheckpointError as err:
        raise ArtefactError(f"--checkpoint: {err}") from None
    kind = payload.get("kind")
    if kind == "teacher":
        raise ArtefactError(f"--checkpoint {path}: a teacher checkpoint (written by dreamer_pretrain.py); evaluate.py "
                            f"takes a student's latest.pt (dreamer_distill.py) or a variant from quantize.py")
    if kind not in (None, VARIANT_KIND) or (kind is None and "agent" not in payload):
        raise ArtefactError(f"--checkpoint {path}: not a student checkpoint (no agent weights); pass the latest.pt "
                            f"of a dreamer_distill.py run or a variant from quantize.py")
    if "config" not in payload:
        raise ArtefactError(f"--checkpoint {path}: no stored config, so the agent cannot be rebuilt")
    return payload


def build_agent(payload: dict, device: str = "cpu"):
    """The student Agent rebuilt from the checkpoint's own config, weights loaded strictly, in eval mode."""
    from models.agent import Agent
    from envs import ACTION_DIM
    from models.world_model import obs_shapes_from

    import configs

    config = configs.Config({**configs.read_blocks()["defaults"], **payload["config"]})  # keys added since
    agent = Agent(config, obs_shapes_from(config), ACTION_DIM, device)
    state = payload.get("agent")
    if state is not None:
        agent.wm.load_state_dict(state["wm"])
        agent.behavior.load_state_dict(state["behavior"])
    agent.train_mode(False)
    return agent
