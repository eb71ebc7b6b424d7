"""Teacher checkpoints: the payload written by pretraining and `load_teacher`, which rebuilds the
model from the config stored in the file and loads its weights strictly."""
from __future__ import annotations

import pathlib

import torch

import tools

from .world_model import TEACHER_ARCH_KEYS, TeacherWorldModel

KIND = "teacher"


def _builtin(value):
    """Plain dicts/lists/numbers/strings only, so `torch.load(weights_only=True)` accepts the config."""
    if isinstance(value, dict):
        return {str(k): _builtin(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_builtin(v) for v in value]
    return tools.to_builtin(value)


def teacher_payload(model: TeacherWorldModel, optimizer: torch.optim.Optimizer | None, step: int,
                    config: dict, extra: dict | None = None) -> dict:
    """Checkpoint dict for `tools.save_checkpoint`: weights, optimizer state, step, the full resolved
    config and the facts every consumer of the teacher must agree on."""
    return {
        "kind": KIND,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "step": int(step),
        "config": _builtin(dict(config)),
        "source_tasks": list(model.task_names),
        "encoder_mode": model.encoder_mode,
        "moe_temperature": float(model.config["moe_temperature"]),
        "act_dim": int(model.act_dim),
        "obs_shapes": {k: list(v) for k, v in model.obs_shapes.items()},
        **(_builtin(extra) if extra else {}),
    }


def config_mismatches(stored: dict, current: dict, keys=TEACHER_ARCH_KEYS) -> list[str]:
    """'key: stored X, now Y' for every listed key on which two configs disagree."""
    out = []
    for key in keys:
        a, b = _builtin(stored.get(key)), _builtin(current.get(key))
        if a != b:
            out.append(f"{key}: checkpoint {a!r}, config {b!r}")
    return out


def load_teacher(path: str | pathlib.Path, device: str | torch.device = "cpu",
                 expect: dict | None = None) -> tuple[TeacherWorldModel, dict]:
    """Rebuild the teacher from `path` and load its weights strictly (weights_only file loading).

    `expect` maps checkpoint facts or config keys (e.g. {'teacher_encoder_mode': 'moe'}) to the
    values the caller relies on; any disagreement is a `tools.CheckpointError` naming it.
    Returns (model in eval mode on `device`, meta) where meta holds every payload entry except the
    weights and optimizer state.
    """
    payload = tools.load_checkpoint(path, map_location=device)
    if payload.get("kind") != KIND:
        raise tools.CheckpointError(f"{path}: not a teacher checkpoint (kind {payload.get('kind')!r})")
    for key in ("model", "config", "source_tasks", "encoder_mode", "moe_temperature", "act_dim", "obs_shapes", "step"):
        if key not in payload:
            raise tools.CheckpointError(f"{path}: teacher checkpoint lacks '{key}'")
    config = payload["config"]
    facts = {"source_tasks": payload["source_tasks"], "teacher_encoder_mode": payload["encoder_mode"],
             "moe_temperature": payload["moe_temperature"]}
    inconsistent = config_mismatches(config, facts, facts.keys())
    if inconsistent:
        raise tools.CheckpointError(f"{path}: stored config disagrees with the stored facts: {inconsistent}")
    if expect:
        known = {**config, **{k: v for k, v in payload.items() if k not in ("model", "optimizer", "config")}}
        unknown = [k for k in expect if k not in known]
        if unknown:
            raise tools.CheckpointError(f"{path}: cannot check unknown teacher keys {unknown}")
        bad = config_mismatches(known, expect, expect.keys())
        if bad:
            raise tools.CheckpointError(f"{path}: teacher does not match what is expected: {bad}")
    try:
        model = TeacherWorldModel(config, payload["act_dim"], {k: tuple(v) for k, v in payload["obs_shapes"].items()})
    except (KeyError, ValueError, TypeError) as err:
        raise tools.CheckpointError(f"{path}: cannot rebuild the teacher from its stored config ({err})") from None
    model.to(device)
    try:
        model.load_state_dict(payload["model"], strict=True)
    except RuntimeError as err:
        raise tools.CheckpointError(f"{path}: weights do not fit the teacher built from its config: "
                                         f"{' '.join(str(err).split())[:2000]}") from None
    model.eval()
    meta = {k: v for k, v in payload.items() if k not in ("model", "optimizer")}
    return model, meta


def reinitialise(model: TeacherWorldModel, seed: int) -> TeacherWorldModel:
    """Replace the weights of `model` in place by those of a freshly built teacher of the same architecture and
    config, initialised from `seed` alone (the random-teacher control: the teacher's data path without its
    knowledge). The global random state is left as it was, so the run's own seeding is untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        fresh = TeacherWorldModel(model.config, model.act_dim, model.obs_shapes)
    model.load_state_dict(fresh.state_dict(), strict=True)
    return model
