"""Deterministic episode embeddings from the frozen teacher: the posterior-mean feature under each
task view, averaged over the episode's steps t >= 1.

The teacher's `task_features` runs the experts once per batch and applies the K gates after, so
all views of a batch cost one encoder pass. Episodes are batched; a batch is padded at the end to
its longest episode, which is exact because the posterior is causal (padding only follows the
real steps) and padded steps are masked out of the average.

Legend: B episodes in a batch, T padded length, L episode length, V task views, F feature size,
M episodes.
"""
from __future__ import annotations

import dataclasses
import logging
import pathlib
from typing import Iterable, Sequence

import numpy as np
import torch

import replay
from tools import EPISODE_KEYS, OBS_KEYS, success_any, success_final

from .sources import OODInputError

log = logging.getLogger(__name__)



@dataclasses.dataclass
class EpisodeInfo:
    """Per-episode facts kept next to the embedding."""

    file: str
    length: int
    success_any: bool   # info['success'] true at any step
    success_final: bool  # ... at the last step


@dataclasses.dataclass
class Embeddings:
    """Embeddings (M, V, F) of the episodes in `info` (same order) and the files that were skipped."""

    values: np.ndarray
    info: list[EpisodeInfo]
    skipped: list[str]


def obs_keys_for(obs_mode: str) -> tuple[str, ...]:
    """Observation keys a teacher trained with `obs: obs_mode` reads."""
    if obs_mode not in OBS_KEYS:
        raise OODInputError(f"teacher config has unknown obs mode '{obs_mode}'; expected one of {sorted(OBS_KEYS)}")
    return OBS_KEYS[obs_mode]


def require_obs_keys(have: Iterable[str], obs_mode: str, where: str) -> None:
    """Raise OODInputError unless data with keys `have` (named `where` in the message) holds every
    observation a teacher trained with `obs: obs_mode` reads."""
    keys = obs_keys_for(obs_mode)
    have = set(have)
    if any(k not in have for k in keys):
        present = [k for k in ("image", "state") if k in have]
        raise OODInputError(f"{where} holds {present} observations but the teacher was trained on "
                            f"'{obs_mode}' observations (needs {list(keys)})")


def _load(paths: Sequence[pathlib.Path], obs_mode: str, skipped: list[str]) -> list[tuple[pathlib.Path, dict]]:
    episodes = []
    for path in paths:
        try:
            episode = replay.load_episode(path)
        except replay.EpisodeError as err:
            # Same policy as replay.load_dir: a broken file is skipped with one warning, not fatal.
            log.warning("skipping episode %s", err)
            skipped.append(str(path))
            continue
        require_obs_keys(episode, obs_mode, f"{path}: episode")
        if replay.episode_length(episode) < 2:
            log.warning("skipping episode %s: only the reset observation, nothing to average", path)
            skipped.append(str(path))
            continue
        episodes.append((path, episode))
    return episodes


def _pad_batch(episodes: Sequence[dict], keys: Sequence[str]) -> tuple[dict, np.ndarray]:
    """Stack episodes into (B, T, ...) arrays padded with zeros at the end; mask (B, T) marks the
    steps t >= 1 that enter the average."""
    lengths = [replay.episode_length(ep) for ep in episodes]
    t_max = max(lengths)
    batch = {}
    for key in keys:
        first = episodes[0][key]
        out = np.zeros((len(episodes), t_max) + first.shape[1:], dtype=first.dtype)  # (B, T, ...)
        for b, ep in enumerate(episodes):
            out[b, : lengths[b]] = ep[key]
        batch[key] = out
    mask = np.zeros((len(episodes), t_max), dtype=bool)  # (B, T)
    for b, n in enumerate(lengths):
        mask[b, 1:n] = True
    return batch, mask


@torch.no_grad()
def embed_batch(teacher, batch: dict, mask: np.ndarray, views: Sequence[int]) -> np.ndarray:
    """Mean posterior feature over masked steps under each view: (B, V, F), float64.

    `teacher` needs `preprocess(batch) -> dict of tensors` and
    `task_features(data, tasks, sample=False) -> (V, B, T, F)`."""
    data = teacher.preprocess(batch)
    feats = teacher.task_features(data, list(views), sample=False)  # (V, B, T, F)
    b, t = mask.shape
    assert feats.dim() == 4 and feats.shape[:3] == (len(views), b, t), (
        f"task_features returned {tuple(feats.shape)}, expected ({len(views)}, {b}, {t}, F)")
    m = torch.from_numpy(np.ascontiguousarray(mask)).to(feats.device, torch.float64, non_blocking=True)  # (B, T)
    summed = torch.einsum("vbtf,bt->bvf", feats.double(), m)  # (B, V, F)
    return (summed / m.sum(dim=1)[:, None, None]).cpu().numpy()  # the batch's one read of the device


def embed_files(teacher, paths: Iterable[pathlib.Path], views: Sequence[int], obs_mode: str,
                batch_size: int = 16) -> Embeddings:
    """Embed every readable episode file in `paths` (order kept) under the teacher views `views`.

    Files are read `batch_size` at a time, so pixel datasets never sit in memory whole."""
    assert batch_size >= 1, f"batch size must be positive, got {batch_size}"
    obs_keys = obs_keys_for(obs_mode)
    paths = list(paths)
    values, info, skipped = [], [], []
    was_training = getattr(teacher, "training", False)
    if hasattr(teacher, "eval"):
        teacher.eval()
    try:
        for start in range(0, len(paths), batch_size):
            episodes = _load(paths[start:start + batch_size], obs_mode, skipped)
            if not episodes:
                continue
            keys = list(obs_keys) + [k for k in EPISODE_KEYS if k in episodes[0][1]]
            batch, mask = _pad_batch([ep for _, ep in episodes], keys)
            values.append(embed_batch(teacher, batch, mask, views))
            for path, ep in episodes:
                info.append(EpisodeInfo(file=str(path), length=int(len(ep["success"])),
                                        success_any=success_any(ep["success"]),
                                        success_final=success_final(ep["success"])))
    finally:
        if was_training:
            teacher.train()
    if values:
        out = np.concatenate(values, axis=0)  # (M, V, F)
    else:
        out = np.zeros((0, len(views), 0))
    assert np.isfinite(out).all(), "teacher embeddings contain NaN or inf"
    return Embeddings(values=out, info=info, skipped=skipped)
