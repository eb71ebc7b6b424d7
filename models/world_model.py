"""World models: `WorldModel` (student, single task) and `TeacherWorldModel` (K source tasks:
MoE or label-CNN encoder, multi-head RSSM, heads conditioned on [feat, onehot(task)]).

Shape legend: B batch, T time, M flattened batch, K source tasks, N experts, E embed size,
S stoch size, D deter size, F feature size, A action size, Hz imagination horizon,
H/W image height/width.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

import tools
from tools import OBS_KEYS, STATE_DIM

from .moe import LabelCNNEncoder, OrthogonalMoEEncoder, mean_abs_cosine
from .networks import (MLP, ConvDecoder, ConvEncoder, MLPDecoder, MLPEncoder, TaskBlocks, bernoulli_nll,
                       gaussian_entropy, unit_normal_nll)
from .rssm import RSSM, balanced_kl

# Config keys that decide parameter shapes or the computation; a checkpoint must agree on all of them.
ARCH_KEYS = ("obs", "size", "cnn_depth", "mlp_units", "mlp_layers", "act", "norm", "embed_size", "dyn_stoch",
             "dyn_deter", "dyn_hidden", "dyn_discrete", "dyn_min_std", "pred_discount")
TEACHER_ARCH_KEYS = ARCH_KEYS + ("source_tasks", "teacher_encoder_mode", "n_experts", "use_orthogonal",
                                 "moe_temperature", "orthogonal_eps")


def obs_shapes_from(config, state_dim: int = STATE_DIM) -> dict:
    """Observation shapes implied by the config: image (H, W, 3) and/or state (Ds,)."""
    keys = OBS_KEYS.get(config["obs"])
    if keys is None:
        raise ValueError(f"obs must be one of {sorted(OBS_KEYS)}, got '{config['obs']}'")
    shapes = {}
    if "image" in keys:
        shapes["image"] = (*config["size"], 3)
    if "state" in keys:
        shapes["state"] = (state_dim,)
    return shapes


class _Base(nn.Module):
    """What the student and the teacher share: preprocessing, heads, losses, imagination."""

    def __init__(self, config, act_dim: int, obs_shapes: dict | None, n_tasks: int):
        super().__init__()
        self.config = dict(config)
        self.act_dim, self.n_tasks = int(act_dim), int(n_tasks)
        self.obs_shapes = dict(obs_shapes) if obs_shapes else obs_shapes_from(config)
        self.obs_keys = OBS_KEYS[config["obs"]]
        missing = [k for k in self.obs_keys if k not in self.obs_shapes]
        assert not missing, f"obs '{config['obs']}' needs shapes for {missing}"
        self.precision = int(config.get("precision", 32))
        self.autocast_cache = True  # False where the update is captured in a CUDA graph (models.graphs.prepare)

    # --- data ---------------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def preprocess(self, batch: dict) -> dict:
        """numpy or torch batch -> float tensors on the model's device; uint8 images -> x/255 - 0.5.

        Float images are taken as already preprocessed, so calling this twice is harmless.
        """
        device = self.device
        out = {}
        for key, value in batch.items():
            if isinstance(value, np.ndarray):
                if value.dtype == np.bool_:
                    value = torch.from_numpy(value)
                elif value.dtype.kind in "iu" and key != "image":
                    value = torch.from_numpy(value.astype(np.int64))
                else:
                    value = torch.from_numpy(np.ascontiguousarray(value))
            elif not torch.is_tensor(value):
                continue
            value = value.to(device, non_blocking=True)
            if key == "image" and value.dtype == torch.uint8:
                value = value.float() / 255.0 - 0.5
            elif key in ("is_first", "is_terminal", "is_last"):
                value = value.bool()
            elif key == "task":
                value = value.long()
            elif value.is_floating_point():
                value = value.float()
            out[key] = value
        return out

    def autocast(self):
        """bf16 autocast with precision 16 on a device with native bf16 (CUDA; a CPU with AVX-512 BF16 or
        AMX); a no-op otherwise, where bf16 would be emulated (float32 then)."""
        device = self.device
        if self.precision == 16 and tools.native_bf16(device):
            return torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=self.autocast_cache)
        return contextlib.nullcontext()

    # --- heads ----------------------------------------------------------------------------------

    def _build_heads(self, feat: int, tasks: int) -> None:
        c = self.config
        self.decoders = nn.ModuleDict()
        if "image" in self.obs_keys:
            self.decoders["image"] = ConvDecoder(feat, c["cnn_depth"], 3, c["act"], self.obs_shapes["image"][:2], tasks)
        if "state" in self.obs_keys:
            self.decoders["state"] = MLPDecoder(feat, self.obs_shapes["state"][0], c["mlp_units"], c["mlp_layers"],
                                                c["act"], c["norm"], tasks)
        self.reward = MLP(feat, 1, c["mlp_units"], c["mlp_layers"], c["act"], c["norm"], tasks)
        self.discount = (MLP(feat, 1, c["mlp_units"], c["mlp_layers"], c["act"], c["norm"], tasks)
                         if c["pred_discount"] else None)

    def _head(self, module: nn.Module, feat: torch.Tensor, task) -> torch.Tensor:
        return module(feat, task) if self.n_tasks else module(feat)

    def predict_reward(self, feat: torch.Tensor, task=None) -> torch.Tensor:
        """Mean reward for features (..., F) -> (...)."""
        return self._head(self.reward, feat, task).squeeze(-1).float()

    def predict_discount(self, feat: torch.Tensor, task=None) -> torch.Tensor | None:
        """Continuation probability (...) when a discount head exists, else None."""
        if self.discount is None:
            return None
        return torch.sigmoid(self._head(self.discount, feat, task).squeeze(-1).float())

    def decode(self, feat: torch.Tensor, task=None) -> dict:
        """Observation means for features (..., F): {image (..., H, W, 3), state (..., Ds)}."""
        return {k: self._head(dec, feat, task) for k, dec in self.decoders.items()}

    def _sample_terms(self, data: dict, feat: torch.Tensor, task) -> dict:
        """Per-position NLLs (B, T) of every head, keyed like the `*_scale` config keys."""
        terms = {}
        for key, dec in self.decoders.items():
            mean = self._head(dec, feat, task)
            terms[key] = unit_normal_nll(data[key], mean, 3 if key == "image" else 1)
        terms["reward"] = unit_normal_nll(data["reward"], self.predict_reward(feat, task), 0)
        if self.discount is not None:
            logits = self._head(self.discount, feat, task).squeeze(-1)
            terms["discount"] = bernoulli_nll(logits, data["discount"])
        return terms

    def _weighted(self, kl: torch.Tensor, terms: dict) -> torch.Tensor:
        c = self.config
        total = c["kl_scale"] * kl
        for key, value in terms.items():
            total = total + c[f"{key}_scale"] * value
        return total

    # --- imagination ----------------------------------------------------------------------------

    def imagine(self, policy: Callable[[torch.Tensor], torch.Tensor], start: dict, horizon: int, task=None):
        """Roll the prior forward from every start state with actions from `policy`.

        start: state dict with leading (B, T) (e.g. the posterior); detached here, as in Dreamer.
        policy: feat (M, F) -> action (M, A); it receives detached features, while gradients still
        flow from later states back through the sampled actions into the policy (dynamics backprop).
        Returns feats (Hz+1, M, F) with feats[0] the start, states (dict of (Hz+1, M, ...)) and
        actions (Hz, M, A) where actions[i] was taken in state i and led to state i+1. M = B*T.
        """
        state = {k: v.detach().reshape(-1, *v.shape[2:]) for k, v in start.items()}  # (M, ...)
        if torch.is_tensor(task) and task.dim() >= 1:
            b, t = next(iter(start.values())).shape[:2]
            task = task.reshape(b, -1)[:, :1].expand(b, t).reshape(-1)  # one id per start state
        task = self.dynamics.scan_task(task, state["deter"].shape[0], state["deter"].device)
        states, actions = [state], []
        with self.autocast():
            for _ in range(horizon):
                action = policy(self.dynamics.get_feat(state).detach())
                state = self.dynamics.step("img", state)(state, action, task, sample=True)
                states.append(state)
                actions.append(action)
        stacked = {k: torch.stack([s[k] for s in states]) for k in states[0]}
        return self.dynamics.get_feat(stacked), stacked, torch.stack(actions)

    @torch.no_grad()
    def open_loop(self, data: dict, context: int = 5, task=None) -> np.ndarray:
        """Video (B, T, 3H, W, 3) uint8: truth / model / error stacked vertically. The model sees
        `context` frames, then predicts the rest from the actions alone (pixel observations only)."""
        assert "image" in self.decoders, "open-loop video needs image observations"
        data = self.preprocess(data)
        if task is None and "task" in data:
            task = data["task"]
        context = min(context, data["image"].shape[1] - 1)
        sub = {k: v[:, :context] for k, v in data.items() if v.dim() >= 2}
        post, _ = self.observe(sub, task)
        last = {k: v[:, -1] for k, v in post.items()}
        with self.autocast():
            prior = self.dynamics.imagine(data["action"][:, context:], last, task, sample=False)
            feat = torch.cat([self.dynamics.get_feat(post), self.dynamics.get_feat(prior)], 1)  # (B, T, F)
            model = self._head(self.decoders["image"], feat, task).float() + 0.5
        truth = data["image"] + 0.5
        error = (model - truth + 1) / 2
        video = torch.cat([truth, model, error], 2).clamp(0, 1)  # (B, T, 3H, W, 3)
        return (video * 255).to(torch.uint8).cpu().numpy()


class WorldModel(_Base):
    """Student world model: conv encoder (pixel) / MLP encoder (state) / both, RSSM, heads."""

    def __init__(self, config, act_dim: int, obs_shapes: dict | None = None):
        super().__init__(config, act_dim, obs_shapes, n_tasks=0)
        c = config
        self.encoders = nn.ModuleDict()
        if "image" in self.obs_keys:
            self.encoders["image"] = ConvEncoder(c["cnn_depth"], 3, c["act"], self.obs_shapes["image"][:2])
        if "state" in self.obs_keys:
            self.encoders["state"] = MLPEncoder(self.obs_shapes["state"][0], c["embed_size"], c["mlp_units"],
                                                c["mlp_layers"], c["act"], c["norm"])
        self.embed_size = sum(e.embed_size for e in self.encoders.values())
        self.dynamics = RSSM(act_dim, self.embed_size, c["dyn_stoch"], c["dyn_deter"], c["dyn_hidden"],
                             c["dyn_discrete"], c["dyn_min_std"], 1, c["act"], c["norm"])
        self.feat_size = self.dynamics.feat_size
        self._build_heads(self.feat_size, 0)

    def representation_parameters(self) -> list[nn.Parameter]:
        """The encoder's and the RSSM's parameters: what the latent is made of (the heads read it)."""
        return [*self.encoders.parameters(), *self.dynamics.parameters()]

    def embed(self, data: dict) -> torch.Tensor:
        """Encoder output for preprocessed observations with any leading dims: (..., E)."""
        parts = [enc(data[k]) for k, enc in self.encoders.items()]
        return parts[0] if len(parts) == 1 else torch.cat(parts, -1)

    def observe(self, data: dict, task=None) -> tuple[dict, dict]:
        """Posterior and prior state dicts (B, T, ...) for a (preprocessed or raw) batch."""
        data = self.preprocess(data)
        with self.autocast():
            return self.dynamics.observe(self.embed(data), data["action"], data.get("is_first"))

    def loss(self, data: dict, task=None) -> tuple[torch.Tensor, dict, dict]:
        """World-model loss L = kl_scale*KL + sum_key key_scale*NLL_key on a (B, T) batch.

        Returns (loss, metrics as 0-d tensors, posterior states (B, T, ...) with gradients).
        """
        data = self.preprocess(data)
        c = self.config
        with self.autocast():
            post, prior = self.dynamics.observe(self.embed(data), data["action"], data.get("is_first"))
            kl_loss, kl_value = self.dynamics.kl_loss(post, prior, c["kl_balance"], c["kl_free"])
            terms = {k: v.mean() for k, v in self._sample_terms(data, self.dynamics.get_feat(post), None).items()}
        loss = self._weighted(kl_loss, terms)
        names = ["model_loss", "kl", "kl_value"] + list(terms)
        values = [loss, kl_loss, kl_value.mean()] + list(terms.values())
        if not self.dynamics.discrete:
            names += ["prior_ent", "post_ent"]
            values += [gaussian_entropy(prior["std"]).mean(), gaussian_entropy(post["std"]).mean()]
        metrics = {name: v.detach().float() for name, v in zip(names, values)}
        return loss, metrics, post


class TeacherWorldModel(_Base):
    """Multi-task teacher: MoE (or label-CNN) encoder, multi-head RSSM, task-conditioned heads.

    Task ids are positions in `config['source_tasks']`. Every method taking `task` accepts an int
    (one view for the whole batch) or a (B,) tensor (a batch mixing tasks).
    """

    def __init__(self, config, act_dim: int, obs_shapes: dict | None = None):
        tasks = list(config["source_tasks"])
        if not tasks:
            raise ValueError("the teacher needs at least one source task (config 'source_tasks' is empty)")
        super().__init__(config, act_dim, obs_shapes, n_tasks=len(tasks))
        c = config
        self.task_names = tasks
        self.encoder_mode = c["teacher_encoder_mode"]
        state_dim = self.obs_shapes["state"][0] if "state" in self.obs_shapes else STATE_DIM
        size = self.obs_shapes["image"][:2] if "image" in self.obs_shapes else (64, 64)
        common = dict(obs=c["obs"], depth=c["cnn_depth"], state_dim=state_dim, embed=c["embed_size"],
                      units=c["mlp_units"], layers=c["mlp_layers"], act=c["act"], norm=c["norm"], size=size)
        if self.encoder_mode == "moe":
            self.encoder = OrthogonalMoEEncoder(c["n_experts"], self.n_tasks, temperature=c["moe_temperature"],
                                                use_orthogonal=c["use_orthogonal"], eps=c["orthogonal_eps"],
                                                **common)
        elif self.encoder_mode == "label_cnn":
            self.encoder = LabelCNNEncoder(self.n_tasks, **common)
        else:
            raise ValueError(f"teacher_encoder_mode must be moe | label_cnn, got '{self.encoder_mode}'")
        self.embed_size = self.encoder.embed_size
        self.dynamics = RSSM(act_dim, self.embed_size, c["dyn_stoch"], c["dyn_deter"], c["dyn_hidden"],
                             c["dyn_discrete"], c["dyn_min_std"], self.n_tasks, c["act"], c["norm"])
        self.feat_size = self.dynamics.feat_size
        self._build_heads(self.feat_size, self.n_tasks)

    # --- task views -----------------------------------------------------------------------------

    def _task_ids(self, data: dict, task) -> torch.Tensor | int:
        if task is None:
            if "task" not in data:
                raise ValueError("teacher needs task ids: pass `task` or a 'task' entry in the batch")
            task = data["task"]
        if isinstance(task, (int, np.integer)):
            task = int(task)
            assert 0 <= task < self.n_tasks, f"task id {task} outside [0, {self.n_tasks})"
            return task
        task = torch.as_tensor(task, device=self.device).long()
        if task.dim() == 2:  # (B, T): one id per sequence
            task = task[:, 0]
        return task

    def experts(self, obs: dict) -> torch.Tensor:
        """Orthonormal expert features (B, T, N, E) of preprocessed observations; task independent,
        so compute once and apply `gate` for each task view."""
        if self.encoder_mode != "moe":
            raise ValueError("a label_cnn teacher has no experts (its encoder reads the task label); "
                             "use task_features or embed(data, task)")
        return self.encoder.experts(obs)

    def gate(self, features: torch.Tensor, task) -> torch.Tensor:
        """Task view of expert features: (B, T, N, E) -> (B, T, E)."""
        if self.encoder_mode != "moe":
            raise ValueError("a label_cnn teacher has no gate; use task_features or embed(data, task)")
        return self.encoder.gate(features, task)

    def gate_weights(self, task) -> torch.Tensor:
        """Gate softmax(W[:, task] / tau) over the N experts (moe only)."""
        return self.encoder.gate_weights(task)

    def embed(self, data: dict, task) -> torch.Tensor:
        """Encoder output (B, T, E) of preprocessed observations under task ids `task`."""
        return self.encoder(data, task)

    def observe(self, data: dict, task=None, sample: bool = True) -> tuple[dict, dict]:
        """Posterior and prior (B, T, ...) under task ids `task` (or data['task'])."""
        data = self.preprocess(data)
        task = self._task_ids(data, task)
        with self.autocast():
            return self.dynamics.observe(self.embed(data, task), data["action"], data.get("is_first"),
                                         task=task, sample=sample)

    def task_features(self, data: dict, tasks: Sequence[int], sample: bool = False,
                      return_states: bool = False, encoder_bf16: bool = False):
        """Posterior features (len(tasks), B, T, F) of one batch under each listed task view.

        The experts run once; the views are gated after and filtered together as one batch of
        len(tasks)*B sequences. Nothing task-specific of an unlisted task is evaluated (gate, RSSM
        heads, one-hot rows), so the cost follows len(tasks). Deterministic (posterior means) unless
        `sample`. Callers that do not
        train the teacher wrap this in torch.no_grad(). With `return_states`, also returns the
        posterior state dict with leading (len(tasks), B, T). `encoder_bf16` runs the encoder's
        convolutions/MLPs under bf16 autocast (the dominant cost of a frozen teacher); the expert
        orthogonalisation, the gates and the recurrent filtering stay float32, because rounding errors
        would compound over the T filtering steps.
        """
        data = self.preprocess(data)
        tasks = [int(k) for k in tasks]
        assert tasks and all(0 <= k < self.n_tasks for k in tasks), (tasks, self.n_tasks)
        v = len(tasks)
        action = data["action"]
        b, t = action.shape[:2]
        ids = TaskBlocks(tasks, b)  # view-major: sample v*B + i is sequence i under view tasks[v]
        low = (torch.autocast(action.device.type, dtype=torch.bfloat16, cache_enabled=self.autocast_cache)
               if encoder_bf16 else contextlib.nullcontext())
        # Not under the teacher's own autocast (`precision: 16` at pretraining): only `encoder_bf16` decides.
        with float32(action.device):
            if self.encoder_mode == "moe":
                with low:
                    feats = self.encoder.expert_features(data)  # (B, T, N, E), once for all views
                feats = self.encoder.orthogonalise(feats.float())
                embed = torch.stack([self.encoder.gate(feats, k) for k in tasks])  # (V, B, T, E)
                embed = embed.reshape(v * b, t, -1)
            else:
                tiled = {k: data[k].unsqueeze(0).expand(v, *data[k].shape).reshape(v * b, *data[k].shape[1:])
                         for k in self.obs_keys}
                with low:
                    embed = self.encoder(tiled, ids)  # (V*B, T, E)
                embed = embed.float()
            rep = lambda x: x.unsqueeze(0).expand(v, *x.shape).reshape(v * b, *x.shape[1:])
            first = data.get("is_first")
            post, _ = self.dynamics.observe(embed, rep(action), None if first is None else rep(first),
                                            task=ids, sample=sample)
            feat = self.dynamics.get_feat(post).float()
        feat = feat.reshape(v, b, t, -1)
        if return_states:
            return feat, {k: x.reshape(v, b, t, *x.shape[2:]) for k, x in post.items()}
        return feat

    # --- losses ---------------------------------------------------------------------------------

    def task_losses(self, data: dict, task=None) -> tuple[torch.Tensor, dict, dict]:
        """Per-task world-model losses, already weighted by each task's share of the batch, so
        that their sum is the batch loss (what gradient surgery needs).

        Returns (weighted losses (K,), metrics (0-d tensors; per-task ones NaN for tasks absent from the
        batch), posterior (B, T, ...)). Tasks absent from the batch contribute 0. Free nats apply to each
        task's mean KL.
        """
        data = self.preprocess(data)
        c = self.config
        ids = self._task_ids(data, task)
        b = data["action"].shape[0]
        if isinstance(ids, int):
            ids = torch.full((b,), ids, dtype=torch.long, device=self.device)
        assert ids.shape == (b,), ids.shape
        with self.autocast():
            post, prior = self.dynamics.observe(self.embed(data, ids), data["action"], data.get("is_first"), task=ids)
            prior_kl, post_kl = self.dynamics.kl_parts(post, prior)  # (B, T) each
            terms = self._sample_terms(data, self.dynamics.get_feat(post), ids)
        k = self.n_tasks
        # index_add, not bincount: bincount reads the largest id back to size its output (a host sync).
        count = torch.zeros(k, device=ids.device).index_add_(0, ids, torch.ones_like(ids, dtype=torch.float))  # (K,)
        per_task = lambda x: torch.zeros(k, device=x.device).index_add(0, ids, x.float().mean(1)) / count.clamp(min=1)
        prior_kl_k = per_task(prior_kl)  # (K,)
        kl_k = balanced_kl(prior_kl_k, per_task(post_kl), c["kl_balance"], c["kl_free"])  # (K,)
        terms_k = {name: per_task(value) for name, value in terms.items()}  # name -> (K,)
        loss_k = self._weighted(kl_k, terms_k)
        share = count / b
        weighted = loss_k * share  # (K,); absent tasks have share 0

        # Metrics stay on the device: global values, then one (K, ...) table whose rows of tasks absent from
        # this batch are NaN (a metrics.Window leaves them out of the means: a task's figures average over
        # the batches that held it).
        names = ["model_loss", "kl", "kl_value"] + list(terms)
        values = [weighted.sum(), (kl_k * share).sum(), prior_kl.mean()] + [v.mean() for v in terms.values()]
        metrics = {name: v.detach().float() for name, v in zip(names, values)}
        table_names = ["loss", "kl", "kl_value"] + list(terms)
        table = torch.stack([loss_k, kl_k, prior_kl_k] + list(terms_k.values()), 1).detach().float()  # (K, n)
        table = torch.where(count.unsqueeze(1) > 0, table, float("nan"))
        for i, tag in enumerate(self.task_names):
            metrics.update({f"{name}/{tag}": value for name, value in zip(table_names, table[i].unbind())})
        return weighted, metrics, post

    def loss(self, data: dict, task=None) -> tuple[torch.Tensor, dict, dict]:
        """Batch loss = sum of `task_losses`; returns (loss, metrics, posterior (B, T, ...))."""
        weighted, metrics, post = self.task_losses(data, task)
        return weighted.sum(), metrics, post

    # --- parameter groups and diagnostics -------------------------------------------------------

    def shared_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """Parameters every task's loss reaches. Task-specific ones (per-task heads, gate logits,
        one-hot biases) are named `task_*`; gradient surgery must leave those alone."""
        return [(n, p) for n, p in self.named_parameters() if not n.rsplit(".", 1)[-1].startswith("task_")]

    def task_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """Parameters that belong to one task per row (see `shared_parameters`)."""
        return [(n, p) for n, p in self.named_parameters() if n.rsplit(".", 1)[-1].startswith("task_")]

    @torch.no_grad()
    def expert_diagnostics(self, data: dict) -> dict:
        """Mean |cos| between expert features, after and before orthogonalisation (moe only)."""
        if self.encoder_mode != "moe":
            return {}
        data = self.preprocess(data)
        with self.autocast():
            raw = self.encoder.expert_features(data).float()
        out = self.encoder.orthogonalise(raw)
        return {"expert_cos": float(mean_abs_cosine(out)), "expert_cos_raw": float(mean_abs_cosine(raw))}


def float32(device: torch.device):
    """A block computed in float32 even inside an autocast region of `device`; outside one, nothing is entered
    (an autocast context, even a disabled one, is part of what a compiled graph is traced under)."""
    if torch.amp.is_autocast_available(device.type) and torch.is_autocast_enabled(device.type):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


def compile_model(model: _Base) -> None:
    """`--compile True`: torch.compile the convolutional parts and the RSSM's observe and imagine steps
    (`RSSM.compile_steps`, each step one graph without breaks) in place. Only forwards are replaced, so
    state_dict keys and checkpoints stay unchanged. Works on any device; the first calls compile."""
    from .moe import BatchedConvExperts

    model.dynamics.compile_steps()
    for module in model.modules():
        if isinstance(module, (ConvEncoder, BatchedConvExperts, ConvDecoder)):
            module.forward = torch.compile(module.forward)
        elif isinstance(module, LabelCNNEncoder) and module.cnn is not None:
            module.cnn.net.forward = torch.compile(module.cnn.net.forward)
