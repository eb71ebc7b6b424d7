"""Fitting the behaviour teachers (methods/behaviour.py) on the source datasets: relabelled behaviour cloning of
the actor, fitted Q evaluation of the critic, and their held-out checks. Why relabelled and why the raw state:
methods/behaviour.py.

Shape legend: N transitions, K source tasks, B batch, A action size, Ds state size (39).
"""
from __future__ import annotations

import pathlib
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from methods.behaviour import STATE, BehaviourError, BehaviourTeachers, TeacherActor, TeacherCritic

# --- data ---------------------------------------------------------------------------------------------

@dataclass
class Transitions:
    """One task's transitions: state o_t (N, Ds), the action taken there a_t (N, A), reward r_{t+1} (N,),
    next state o_{t+1} (N, Ds), discount (N,), expert labels at o_t and o_{t+1} (N, A), episode id (N,)."""
    state: np.ndarray
    action: np.ndarray
    reward: np.ndarray
    next_state: np.ndarray
    discount: np.ndarray
    expert: np.ndarray
    next_expert: np.ndarray
    episode: np.ndarray

    def take(self, rows: np.ndarray) -> "Transitions":
        return Transitions(*(getattr(self, f)[rows] for f in self.__dataclass_fields__))


def relabel(states: np.ndarray, task: str) -> np.ndarray:
    """Task `task`'s scripted expert action for every state (N, Ds) -> (N, A), clipped to [-1, 1]."""
    import envs
    from collection.experts import expert_policy

    policy = expert_policy(envs.env_name(task))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the experts warn about their own gains on every call
        out = [np.asarray(policy.get_action(s.astype(np.float64)), np.float64) for s in states]
    return np.clip(np.stack(out), -1.0, 1.0).astype(np.float32)


def task_transitions(episodes: dict, task: str, where: str = "") -> Transitions:
    """Transitions of one task's episodes (name -> episode dict with `state`), relabelled by its expert."""
    parts: dict[str, list] = {k: [] for k in ("state", "action", "reward", "next_state", "discount", "episode")}
    for i, episode in enumerate(episodes.values()):
        if STATE not in episode:
            raise BehaviourError(f"{where or task}: episodes hold no '{STATE}'; the behaviour teachers relabel the "
                                 f"39-d state with the scripted expert, so collect the source data with --obs state "
                                 f"or --obs both")
        state = np.asarray(episode[STATE], np.float32)  # (L, Ds)
        # action[t] led to observation t, so the action taken in state t is action[t + 1].
        parts["state"].append(state[:-1])
        parts["next_state"].append(state[1:])
        parts["action"].append(np.asarray(episode["action"][1:], np.float32))
        parts["reward"].append(np.asarray(episode["reward"][1:], np.float32))
        parts["discount"].append(np.asarray(episode["discount"][1:], np.float32))
        parts["episode"].append(np.full(len(state) - 1, i))
    if not parts["state"]:
        raise BehaviourError(f"{where or task}: no episodes to fit the behaviour teachers on")
    cat = {k: np.concatenate(v) for k, v in parts.items()}
    return Transitions(cat["state"], cat["action"], cat["reward"], cat["next_state"], cat["discount"],
                       relabel(cat["state"], task), relabel(cat["next_state"], task), cat["episode"])


def split(data: Transitions, held_out: float, seed: int) -> tuple[Transitions, Transitions]:
    """Split by episode (held-out states come from episodes never trained on)."""
    ids = np.unique(data.episode)
    rng = np.random.default_rng(seed)
    test_ids = rng.choice(ids, max(1, int(round(held_out * len(ids)))), replace=False) if len(ids) > 1 else ids[:0]
    test = np.isin(data.episode, test_ids)
    return data.take(np.flatnonzero(~test)), data.take(np.flatnonzero(test))


def load_transitions(tasks: list[str], dirs: list[str]) -> list[Transitions]:
    """Relabelled transitions of every source task (list index = task id)."""
    import replay

    if len(tasks) != len(dirs) or not tasks:
        raise BehaviourError(f"behaviour teachers need one source folder per source task, got {len(dirs)} folders "
                             f"for {len(tasks)} tasks (source_task_dirs)")
    out = []
    for task, directory in zip(tasks, dirs):
        keys = [STATE, "action", "reward", "discount", "is_first"]
        path = pathlib.Path(directory)
        episodes = replay.load_dir(path, keys=keys) if path.is_dir() else {}
        if not episodes:
            raise BehaviourError(f"{path}: no episode with keys {keys} for task '{task}'; the behaviour teachers "
                                 f"need the 39-d state (collect with --obs state or --obs both)")
        out.append(task_transitions(episodes, task, str(path)))
    return out


# --- fitting ------------------------------------------------------------------------------------------

def _batch(data: list[Transitions], batch: int, rng: np.random.Generator, device) -> tuple[dict, torch.Tensor]:
    """A task-balanced batch: batch // K transitions of each task (B = K * (batch // K)) and task ids (B,)."""
    k = len(data)
    per = max(1, batch // k)
    rows = [rng.integers(0, len(d.state), per) for d in data]
    out = {f: torch.as_tensor(np.concatenate([getattr(d, f)[r] for d, r in zip(data, rows)]), device=device)
           for f in ("state", "action", "reward", "next_state", "discount", "expert", "next_expert")}
    return out, torch.arange(k, device=device).repeat_interleave(per)


def action_error(actor: TeacherActor, data: list[Transitions]) -> list[float]:
    """Mean squared error (per action dimension) of the actor against the expert labels, per task."""
    device = actor.mean.device
    with torch.no_grad():
        return [float((actor(torch.as_tensor(d.state, device=device), k) - torch.as_tensor(d.expert, device=device))
                      .pow(2).mean()) for k, d in enumerate(data)]


def fit_actor(data: list[Transitions], steps: int, batch: int = 256, lr: float = 1e-3, units: int = 256,
              layers: int = 2, seed: int = 0, device="cpu") -> TeacherActor:
    """Relabelled behaviour cloning: L = MSE(pi(o, k), a_E(o)) on task-balanced batches."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    actor = TeacherActor(data[0].state.shape[1], data[0].expert.shape[1], len(data), units, layers).to(device)
    actor.set_normaliser(np.concatenate([d.state for d in data]))
    opt = torch.optim.Adam(actor.parameters(), lr=lr)
    for _ in range(steps):
        b, task = _batch(data, batch, rng, device)
        loss = (actor(b["state"], task) - b["expert"]).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return actor.eval()


def fit_critic(data: list[Transitions], steps: int, discount: float, batch: int = 256, lr: float = 3e-4,
               units: int = 256, layers: int = 2, conservative: float = 1.0, target_every: int = 100,
               random_actions: int = 4, temperature: float = 0.05, seed: int = 0, device="cpu") -> TeacherCritic:
    """Fitted Q evaluation of the expert behaviour with a conservative term (see the module docstring)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed + 1)
    act_dim = data[0].action.shape[1]
    critic = TeacherCritic(data[0].state.shape[1], act_dim, len(data), units, layers).to(device)
    critic.set_normaliser(np.concatenate([d.state for d in data]))
    reward_scale = max(float(np.abs(np.concatenate([d.reward for d in data])).max()), 1e-6)
    scale = reward_scale / (1.0 - discount)
    critic.value_scale.fill_(scale)
    target = TeacherCritic(critic.state_dim, act_dim, len(data), units, layers).to(device)
    opt = torch.optim.Adam(critic.parameters(), lr=lr)
    for step in range(steps):
        if step % target_every == 0:
            target.load_state_dict(critic.state_dict())
        b, task = _batch(data, batch, rng, device)
        with torch.no_grad():
            bootstrap = target.normalised(b["next_state"], b["next_expert"], task)  # (B,)
            y = b["reward"] / scale + discount * b["discount"] * bootstrap
        q_data = critic.normalised(b["state"], b["action"], task)  # (B,)
        loss = 0.5 * (q_data - y).pow(2).mean()
        if conservative > 0:
            rand = torch.rand(random_actions, *b["action"].shape, device=device) * 2 - 1  # (R, B, A)
            states = b["state"].unsqueeze(0).expand(random_actions, *b["state"].shape)
            q_rand = critic.normalised(states, rand, task.unsqueeze(0).expand(random_actions, -1))  # (R, B)
            both = torch.cat([q_rand, q_data.unsqueeze(0)]) / temperature  # (R + 1, B)
            loss = loss + conservative * (temperature * torch.logsumexp(both, 0) - q_data).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return critic.eval()


def fit(config, tasks: list[str], dirs: list[str], device="cpu", log=print) -> BehaviourTeachers:
    """Fit the behaviour teachers the config asks for (`teacher_actor_steps`, `teacher_critic_steps` > 0)
    on the source datasets; logs held-out action error / value ranking per task with `log`."""
    c = config
    if c["teacher_actor_steps"] <= 0 and c["teacher_critic_steps"] <= 0:
        return BehaviourTeachers()
    data = load_transitions(list(tasks), list(dirs))
    parts = [split(d, 0.1, int(c["seed"]) + k) for k, d in enumerate(data)]
    train, held = [p[0] for p in parts], [p[1] for p in parts]
    held = [h if len(h.state) else t for h, t in zip(held, train)]  # one-episode tasks: report on training data
    sizes = {"units": int(c["teacher_behaviour_units"]), "layers": int(c["teacher_behaviour_layers"]),
             "batch": int(c["teacher_behaviour_batch"]), "seed": int(c["seed"]), "device": device}
    out = BehaviourTeachers()
    if c["teacher_actor_steps"] > 0:
        out.actor = fit_actor(train, int(c["teacher_actor_steps"]), lr=float(c["teacher_actor_lr"]), **sizes)
        for task, err in zip(tasks, action_error(out.actor, held)):
            log(f"behaviour actor {task}: held-out action MSE {err:.4f}")
    if c["teacher_critic_steps"] > 0:
        out.critic = fit_critic(train, int(c["teacher_critic_steps"]), float(c["discount"]),
                                lr=float(c["teacher_critic_lr"]), conservative=float(c["teacher_critic_conservative"]),
                                **sizes)
        for task, frac in zip(tasks, expert_ranking(out.critic, held, int(c["seed"]))):
            log(f"behaviour critic {task}: Q(expert) > Q(random) on {frac:.0%} of held-out states")
    return out


def expert_ranking(critic: TeacherCritic, data: list[Transitions], seed: int = 0) -> list[float]:
    """Per task, the fraction of states where the critic values the expert action above a uniform random one."""
    rng = np.random.default_rng(seed)
    device = critic.mean.device
    out = []
    with torch.no_grad():
        for k, d in enumerate(data):
            state = torch.as_tensor(d.state, device=device)
            rand = torch.as_tensor(rng.uniform(-1, 1, d.expert.shape).astype(np.float32), device=device)
            q_e = critic(state, torch.as_tensor(d.expert, device=device), k)
            out.append(float((q_e > critic(state, rand, k)).float().mean()))
    return out


