"""The student Dreamer agent: world model + behavior (+ an optional distiller) and their updates.

`policy` acts in a batch of envs (no teacher involved); `train` makes one world-model update (with
the distillation loss added when a distiller is attached) and then one behavior update from the
detached posterior states of the same batch.

Shape legend: n envs, B batch, T time, A action size, F feature size.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from models import grad_share
from models.behavior import Behavior
from models.optim import adam, step_if
from models.world_model import WorldModel

# Consecutive non-finite world-model losses tolerated (each is skipped and logged) before giving up:
# one bad batch is survivable, a run of them means the model has diverged. Checked when the loop logs.
MAX_NONFINITE = 10


def obs_shapes(obs_space) -> dict | None:
    """Observation shapes {key: shape} from a dict of gymnasium Boxes, arrays or shape tuples (None passes)."""
    if obs_space is None:
        return None
    return {k: tuple(getattr(v, "shape", v)) for k, v in dict(obs_space).items()}


class Agent:
    """Student agent. `distiller` (optional) is a distillation method (`methods.Method`): any of its hooks
    `world_model_loss`, `actor_loss`, `critic_loss` that is not None joins that loss; its trainable
    parameters get one Adam of their own. It is never called while acting."""

    def __init__(self, config, obs_space, act_dim: int, device, distiller=None):
        c = config
        self.config = dict(c)
        self.device = torch.device(device)
        self.act_dim = int(act_dim)
        self.wm = WorldModel(c, self.act_dim, obs_shapes(obs_space)).to(self.device)
        self.behavior = Behavior(c, self.wm.feat_size, self.act_dim, self.device)
        self.wm_opt = adam(self.wm.parameters(), c["model_lr"], c["model_eps"], c["weight_decay"])
        self.distiller = None
        self.distill_opt = None
        self.updates = 0  # completed calls of train()
        self.share_every = int(c.get("grad_share_every", 0))  # world-model updates between gradient-share reads
        self._wm_updates = 0  # calls of train_world_model (paces the gradient-share reads; checkpointed)
        # Skipped updates in a row and the longest such run since the last check (device tensors, made lazily).
        self._nonfinite = self._worst_run = None
        self._wm_ok = None  # whether the last world-model update was taken (device bool), gating the behavior
        self.graphs = None  # models.graphs.StudentGraphs with --cuda_graphs True
        if distiller is not None:
            self.attach_distiller(distiller)

    # --- distillation hook ------------------------------------------------------------------------

    def attach_distiller(self, distiller) -> None:
        """Add a distiller: its loss joins the world-model loss, its trainable parameters get their own
        optimizer. Built after the agent (it needs the student's sizes), so attached here."""
        assert self.distiller is None, "a distiller is already attached"
        if isinstance(distiller, nn.Module):
            distiller.to(self.device)
        params = [p for p in distiller.parameters() if p.requires_grad]
        owned = {id(p) for m in (self.wm, self.behavior) for p in m.parameters()}
        shared = sum(id(p) in owned for p in params)
        assert shared == 0, f"{shared} distiller parameters belong to the student; each must be in one optimizer"
        self.distiller = distiller
        self.distill_opt = adam(params, self.config["model_lr"], self.config["model_eps"],
                                self.config["weight_decay"]) if params else None

    # --- acting -------------------------------------------------------------------------------------

    @torch.no_grad()
    def policy(self, obs: dict, state=None, training: bool = True):
        """Actions for a batch of envs.

        obs: step dict of stacked arrays (n, ...) with `is_first` (n,); where it is set the latent
        state and previous action are reset. state: None or the state returned by the previous call.
        Returns (action numpy float32 (n, A) in [-1, 1], state). Training samples the actor (exploration);
        evaluation takes its mode.
        """
        wm = self.wm
        data = wm.preprocess({k: obs[k] for k in (*wm.obs_keys, "is_first")})
        n = data["is_first"].shape[0]
        if state is None:
            latent = wm.dynamics.initial(n, self.device)
            action = torch.zeros(n, self.act_dim, device=self.device)
        else:
            latent, action = state
        with wm.autocast():
            embed = wm.embed(data)  # (n, E)
            latent, _ = wm.dynamics.step("obs", latent)(latent, action, embed, data["is_first"])
            feat = wm.dynamics.get_feat(latent)  # (n, F)
        action = self.behavior.act(feat, training)  # (n, A)
        noise = float(self.config.get("expl_noise", 0.0))
        if training and noise > 0:
            action = (action + noise * torch.randn_like(action)).clamp(-1.0, 1.0)
        out = action.float().cpu().numpy()
        assert np.all(np.abs(out) <= 1.0), f"policy produced actions outside [-1, 1]: {np.abs(out).max()}"
        return out, (latent, action)

    # --- learning -----------------------------------------------------------------------------------

    def train(self, batch: dict, step: int) -> dict:
        """One world-model (+ distiller) update, then one behavior update. batch: (B, T, ...) arrays or tensors.

        Returns the metrics as 0-d device tensors (and numbers the host knows); nothing is read back here
        (`models.metrics` reads them once per log). A non-finite world-model loss or gradient skips that
        update's optimizer steps, world model and behavior alike (metric `model_skipped` = 1), decided on the
        device; `check_finite` raises once MAX_NONFINITE updates in a row were skipped.
        """
        if self.graphs is not None:  # --cuda_graphs True: replayed from a CUDA graph (models.graphs)
            return self.graphs.train(batch, step)
        return self.train_eager(batch, step)

    def train_eager(self, batch: dict, step: int) -> dict:
        """`train` as Python runs it (what `models.graphs` captures)."""
        data, post, metrics = self.train_world_model(batch, step)
        hooks = self.behavior_hooks(data, post, step)
        metrics.update(self.behavior.train_step(self.wm, post, step, ok=self._wm_ok, **hooks))
        self.updates += 1
        return metrics

    def train_world_model(self, batch: dict, step: int) -> tuple[dict, dict, dict]:
        """The world-model (+ distiller) half of `train`: loss, backward, clipping, Adam steps (skipped on the
        device when the loss or a gradient norm is not finite). Returns the preprocessed batch, the detached
        posterior states (B, T, ...) the behavior starts from and the metrics. Does not count an update."""
        c = self.config
        wm = self.wm
        data = wm.preprocess(batch)
        loss, metrics, post = wm.loss(data)
        wm_hook = getattr(self.distiller, "world_model_loss", None)
        distill_loss = None
        if wm_hook is not None:
            distill_loss, distill_metrics = wm_hook(data, post, wm, step)
            loss = loss + distill_loss
            metrics.update(distill_metrics)
        self.wm_opt.zero_grad(set_to_none=True)
        if self.distill_opt is not None:
            self.distill_opt.zero_grad(set_to_none=True)
        measure = distill_loss is not None and self.share_every > 0 and self._wm_updates % self.share_every == 0
        self._wm_updates += 1
        params = wm.representation_parameters() if measure else []
        part = grad_share.part_gradients(distill_loss, params) if measure else None
        loss.backward()
        if part is not None:
            shares = grad_share.share(part, params)  # tensors, read when logged
            metrics.update(shares)
            record = getattr(self.distiller, "record_share", None)
            if record is not None:  # distill_weight auto moves its coefficient
                record(shares[grad_share.SHARE])
        norm = nn.utils.clip_grad_norm_(wm.parameters(), c["model_grad_clip"])
        ok = torch.isfinite(loss.detach()) & torch.isfinite(norm)
        metrics["model_grad_norm"] = norm
        if self.distill_opt is not None:
            distill_norm = nn.utils.clip_grad_norm_(self.distill_opt.param_groups[0]["params"], c["model_grad_clip"])
            ok = ok & torch.isfinite(distill_norm)
            metrics["distill_grad_norm"] = distill_norm
        metrics["model_skipped"] = (~ok).float()
        self._count_nonfinite(ok)
        step_if(self.wm_opt, ok)
        if self.distill_opt is not None:
            step_if(self.distill_opt, ok)
        self.wm_opt.zero_grad(set_to_none=True)
        self._wm_ok = ok
        return data, {k: v.detach() for k, v in post.items()}, metrics

    def _count_nonfinite(self, ok: torch.Tensor) -> None:
        """The run of skipped updates, and the longest run since the last `check_finite`, on the device."""
        if self._nonfinite is None:
            self._nonfinite = torch.zeros((), dtype=torch.long, device=ok.device)
            self._worst_run = torch.zeros((), dtype=torch.long, device=ok.device)
        # In place: a captured update replays into the tensors it was captured with.
        self._nonfinite.copy_(torch.where(ok, 0, self._nonfinite + 1))
        self._worst_run.copy_(torch.maximum(self._worst_run, self._nonfinite))

    def health(self) -> dict[str, torch.Tensor]:
        """The device value `check_finite` judges, for a loop to read along with its metrics (one copy)."""
        return {} if self._worst_run is None else {"nonfinite_run": self._worst_run}

    def check_finite(self, read: dict | None = None) -> None:
        """Raise FloatingPointError when MAX_NONFINITE or more updates in a row were skipped since the last
        call. `read`: `health()` as the loop read it; None reads it here (one read of the device)."""
        if self._worst_run is None:
            return
        worst = int(read["nonfinite_run"] if read is not None else self._worst_run)
        self._worst_run.zero_()
        if worst >= MAX_NONFINITE:
            raise FloatingPointError(
                f"world-model loss or gradient non-finite for {worst} updates in a row (by update {self.updates}); "
                f"the model diverged: lower --model_lr or check the data (rewards, observations) for NaN/inf")

    def behavior_hooks(self, data: dict, post: dict, step: int) -> dict:
        """The distiller's actor/critic hooks bound to this batch: {'actor_extra': fn(actor) -> (loss, metrics),
        'critic_extra': fn(critic) -> ...} for the hooks it defines; nothing for the others."""
        hooks = {}
        for kind in ("actor", "critic"):
            hook = getattr(self.distiller, f"{kind}_loss", None)
            if hook is not None:
                feat = self.wm.dynamics.get_feat(post)  # (B, T, F), detached posterior of the real batch
                hooks[f"{kind}_extra"] = lambda module, hook=hook, feat=feat: hook(data, feat, module, step)
        return hooks

    # --- checkpoint -----------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """Weights, optimizer states and the update counter (plain tensors and builtins)."""
        state = {
            "wm": self.wm.state_dict(),
            "behavior": self.behavior.state_dict(),
            "optimizers": {"wm": self.wm_opt.state_dict(), **self.behavior.optimizer_state()},
            "updates": self.updates,
            "wm_updates": self._wm_updates,  # paces the gradient-share reads: a resume keeps their schedule
        }
        if self.distiller is not None:
            state["distiller"] = self.distiller.state_dict()
            if self.distill_opt is not None:
                state["optimizers"]["distiller"] = self.distill_opt.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restore everything `state_dict` saved (strict: missing or extra weights are an error)."""
        has = "distiller" in state
        if has != (self.distiller is not None):
            raise ValueError("checkpoint was written " + ("with" if has else "without") + " a distiller, but this "
                             "agent has " + ("none" if self.distiller is None else "one")
                             + "; resume with the same --use_distill")
        self.wm.load_state_dict(state["wm"])
        self.behavior.load_state_dict(state["behavior"])
        self.wm_opt.load_state_dict(state["optimizers"]["wm"])
        self.behavior.load_optimizer_state(state["optimizers"])
        if self.distiller is not None:
            self.distiller.load_state_dict(state["distiller"])
            if self.distill_opt is not None:
                self.distill_opt.load_state_dict(state["optimizers"]["distiller"])
        self.updates = int(state["updates"])
        self._wm_updates = int(state.get("wm_updates", self.updates))  # older checkpoints: one per update

    def train_mode(self, training: bool = True) -> None:
        """Set train/eval mode of every module (matters only for layers like dropout/batch norm)."""
        for module in (self.wm, self.behavior, self.distiller):
            if isinstance(module, nn.Module):
                module.train(training)


def compile_agent(agent: Agent) -> None:
    """`--compile True` for a student: its world model and the distiller's frozen teacher world model (if
    any) through `models.world_model.compile_model`; the behaviour's imagination runs the compiled RSSM
    steps of the world model. Acting uses the same compiled observe step."""
    from models.world_model import compile_model

    if agent.distiller is not None and agent.share_every > 0:
        # The gradient share (models/grad_share.py) backpropagates one loss part with retain_graph=True through
        # the compiled steps before the full backward; AOTAutograd's donated buffers (reused in the first
        # backward) forbid a second one. A process-wide setting, read when a graph compiles: set only where
        # needed, since donation saves memory everywhere else.
        torch._functorch.config.donated_buffer = False
    compile_model(agent.wm)
    teacher = getattr(agent.distiller, "teacher", None)
    if isinstance(teacher, nn.Module):
        compile_model(teacher)
