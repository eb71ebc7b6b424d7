"""Recurrent state-space model (DreamerV1/V2), plain (n_heads=1) or multi-head per source task.

Multi-head: onehot(task) is appended to the prior input, and the final Linear layers of the prior
and of the posterior exist once per task, selected per sample so a batch may mix tasks. The GRU and
the hidden layers are shared.

Shape legend (docs/architecture.md): B batch, T time, M flattened batch, K tasks/heads, V listed task views,
S stoch size, Q classes per discrete variable, D deter size, U hidden units, O output size, E embed size,
A action size, F feature size.
State dicts: continuous {mean, std, stoch (..., S), deter (..., D)};
discrete {logit, stoch (..., S, Q), deter (..., D)}.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .networks import (TaskBias, TaskBlocks, activation, categorical_kl, gaussian_kl, onehot_straight_through,
                       std_from_raw)

# Graphs per step function a compiled RSSM may hold: one per (batch size, grad mode, sample, reset, task
# form) it is called with: training, acting, the imagination, a teacher's task views after each pruning.
RECOMPILE_LIMIT = 32


class LayerNormGRUCell(nn.Module):
    """DreamerV2's GRU: one Linear on [x, h], LayerNorm, update gate biased towards keeping h."""

    def __init__(self, inp: int, size: int, norm: bool = True, update_bias: float = -1.0):
        super().__init__()
        self.size, self.update_bias = size, update_bias
        self.linear = nn.Linear(inp + size, 3 * size, bias=not norm)
        self.norm = nn.LayerNorm(3 * size) if norm else nn.Identity()

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        parts = self.norm(self.linear(torch.cat([x, h], -1)))  # (M, 3D)
        reset, cand, update = parts.split(self.size, -1)
        cand = torch.tanh(torch.sigmoid(reset) * cand)
        update = torch.sigmoid(update + self.update_bias)
        return update * cand + (1 - update) * h


class TaskHeads(nn.Module):
    """K Linear layers (U -> O) applied per sample by task id.

    An int applies one head; `TaskBlocks` applies each listed head to its block of samples in one
    batched matmul and never touches the unlisted heads; a general (M,) id tensor evaluates all K
    heads in one einsum and gathers each sample's (K is small, so this beats gathering (M, U, O)
    weight copies)."""

    def __init__(self, n_heads: int, inp: int, out: int):
        super().__init__()
        bound = 1 / math.sqrt(inp)  # nn.Linear's default initialisation, per head
        self.task_weight = nn.Parameter(torch.empty(n_heads, inp, out).uniform_(-bound, bound))
        self.task_bias = nn.Parameter(torch.empty(n_heads, out).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor, task) -> torch.Tensor:
        if isinstance(task, int):
            return x @ self.task_weight[task] + self.task_bias[task]
        if isinstance(task, TaskBlocks):
            assert len(task) == x.shape[0], (len(task), x.shape)
            index = task.index(x.device)
            weight = self.task_weight[index].to(x.dtype)  # (V, U, O), listed heads only
            bias = self.task_bias[index].to(x.dtype).unsqueeze(1)  # (V, 1, O)
            out = torch.baddbmm(bias, x.reshape(len(task.tasks), task.size, -1), weight)  # (V, size, O)
            return out.reshape(x.shape[0], -1)
        assert task is not None, "a multi-head RSSM needs task ids"
        task = torch.as_tensor(task, device=x.device).long()
        assert task.shape == x.shape[:1], (task.shape, x.shape)
        every = torch.einsum("mh,kho->mko", x, self.task_weight.to(x.dtype)) + self.task_bias.to(x.dtype)
        index = task.view(-1, 1, 1).expand(-1, 1, every.shape[-1])  # (M, 1, O)
        return every.gather(1, index).squeeze(1)  # (M, O)


class RSSM(nn.Module):
    """DreamerV1/V2 RSSM. `n_heads > 1` makes the multi-head teacher dynamics (task ids required)."""

    def __init__(self, act_dim: int, embed: int, stoch: int = 50, deter: int = 200, hidden: int = 200,
                 discrete: int = 0, min_std: float = 0.1, n_heads: int = 1, act: str = "elu",
                 norm: bool = False):
        super().__init__()
        self.act_dim, self.embed_size = act_dim, embed
        self.stoch, self.deter, self.hidden, self.discrete = stoch, deter, hidden, discrete
        self.min_std, self.n_heads = min_std, n_heads
        self._compiled = None  # {"obs", "img"}: compiled step functions (compile_steps)
        self.stoch_flat = stoch * discrete if discrete else stoch
        self.feat_size = self.stoch_flat + deter
        stats = stoch * discrete if discrete else 2 * stoch

        def hidden_block(inp: int) -> nn.Sequential:
            layers = [nn.Linear(inp, hidden)] + ([nn.LayerNorm(hidden)] if norm else [])
            return nn.Sequential(*layers)

        self.img_in = hidden_block(self.stoch_flat + act_dim)
        self.img_task = TaskBias(n_heads, hidden) if n_heads > 1 else None  # onehot(task) in the prior input
        self.cell = LayerNormGRUCell(hidden, deter, norm=True)
        self.img_out = hidden_block(deter)
        self.obs_out = hidden_block(deter + embed)
        self.act = activation(act)
        if n_heads > 1:
            self.prior_head = TaskHeads(n_heads, hidden, stats)
            self.post_head = TaskHeads(n_heads, hidden, stats)
        else:
            self.prior_head = nn.Linear(hidden, stats)
            self.post_head = nn.Linear(hidden, stats)

    # --- states -------------------------------------------------------------------------------

    def initial(self, batch: int, device=None, dtype=torch.float32) -> dict:
        """All-zero state for `batch` sequences (used at t=0 and wherever is_first is set). Keys in the
        order a step returns them, so a compiled step sees the same dict at t = 0 as after."""
        device = device if device is not None else next(self.parameters()).device
        zeros = lambda *shape: torch.zeros(batch, *shape, device=device, dtype=dtype)
        if self.discrete:
            state = {"logit": zeros(self.stoch, self.discrete), "stoch": zeros(self.stoch, self.discrete)}
        else:
            state = {"mean": zeros(self.stoch), "std": zeros(self.stoch), "stoch": zeros(self.stoch)}
        state["deter"] = zeros(self.deter)
        return state

    def get_feat(self, state: dict) -> torch.Tensor:
        """Feature [stoch, deter]: (..., F)."""
        stoch = state["stoch"]
        if self.discrete:
            stoch = stoch.reshape(*stoch.shape[:-2], self.stoch_flat)
        return torch.cat([stoch, state["deter"]], -1)

    def get_dist(self, state: dict) -> torch.distributions.Distribution:
        """Distribution over stoch (event dims are the stoch dims)."""
        # No argument checks: each reads the device back (a host sync).
        if self.discrete:
            base = torch.distributions.OneHotCategoricalStraightThrough(logits=state["logit"].float(),
                                                                        validate_args=False)
            return torch.distributions.Independent(base, 1, validate_args=False)
        return torch.distributions.Independent(
            torch.distributions.Normal(state["mean"].float(), state["std"].float(), validate_args=False), 1,
            validate_args=False)

    def _stats(self, raw: torch.Tensor, sample: bool) -> dict:
        if self.discrete:
            logit = raw.reshape(*raw.shape[:-1], self.stoch, self.discrete)
            stoch = onehot_straight_through(logit) if sample else torch.softmax(logit, -1)
            return {"logit": logit, "stoch": stoch}
        mean, std = raw.chunk(2, -1)
        std = std_from_raw(std, self.min_std)
        # The mean is a strided half of `raw`; its contiguous copy keeps a compiled step's input layout the same
        # at every t (the initial state is contiguous), so one graph serves them all.
        stoch = mean + std * torch.randn_like(std) if sample else mean.contiguous()
        return {"mean": mean, "std": std, "stoch": stoch}

    def _head(self, head: nn.Module, x: torch.Tensor, task) -> torch.Tensor:
        return head(x, task) if self.n_heads > 1 else head(x)

    # --- one step -----------------------------------------------------------------------------

    def img_step(self, prev_state: dict, prev_action: torch.Tensor, task=None, sample: bool = True) -> dict:
        """Prior p(z_t | h_t), h_t = GRU(h_{t-1}, [z_{t-1}, a_{t-1}, onehot(task)]). (M, ...) -> (M, ...)."""
        stoch = prev_state["stoch"]
        if self.discrete:
            stoch = stoch.reshape(*stoch.shape[:-2], self.stoch_flat)
        x = self.img_in(torch.cat([stoch, prev_action.to(stoch.dtype)], -1))  # (M, U)
        if self.img_task is not None:
            assert task is not None, "a multi-head RSSM needs task ids"
            x = self.img_task(x, task)
        deter = self.cell(self.act(x), prev_state["deter"])  # (M, D)
        x = self.act(self.img_out(deter))
        prior = self._stats(self._head(self.prior_head, x, task), sample)
        prior["deter"] = deter
        return prior

    def obs_step(self, prev_state: dict, prev_action: torch.Tensor, embed: torch.Tensor,
                 is_first: torch.Tensor | None = None, task=None, sample: bool = True) -> tuple[dict, dict]:
        """Posterior q(z_t | h_t, embed_t) and prior for one step; resets where `is_first` (M,)."""
        if is_first is not None:
            keep = (~is_first.bool()).to(embed.dtype).unsqueeze(-1)  # (M, 1)
            prev_action = prev_action * keep
            # Only what img_step reads: the distribution parameters of the previous state are not inputs.
            prev_state = {k: prev_state[k] * keep.view(-1, *([1] * (prev_state[k].dim() - 1)))
                          for k in ("stoch", "deter")}
        prior = self.img_step(prev_state, prev_action, task, sample)
        x = self.act(self.obs_out(torch.cat([prior["deter"], embed.to(prior["deter"].dtype)], -1)))
        post = self._stats(self._head(self.post_head, x, task), sample)
        post["deter"] = prior["deter"]
        return post, prior

    # --- compilation --------------------------------------------------------------------------

    def compile_steps(self, **options) -> None:
        """Compile `obs_step` and `img_step` of this instance with `torch.compile(fullgraph=True)`, for the
        scans (`observe`, `imagine`, the world model's imagination) and acting to use through `step`.
        `options` go to torch.compile; weights, state_dict and the eager methods are unchanged.

        The step, not the whole loop, is what is compiled: a step graph is small (one GRU cell, two
        Linear blocks, the heads, the resets) and serves every t of every sequence length and imagination
        horizon, while an unrolled loop makes a graph T times longer, compiled again for each T (50 at
        the paper config, 15 for imagination, others for videos and OOD scoring). Fusing within a step
        removes most of its kernels; the launches left between steps are what capturing the whole update
        in a CUDA graph removes. `fullgraph=True` makes a graph break an error instead of a silent split,
        and `dynamic=False` keeps every graph at fixed shapes (what graph capture needs).
        """
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
        options = {"fullgraph": True, "dynamic": False, **options}
        # obs_step's graph inlines img_step (the eager method): one graph per call.
        self._compiled = {"obs": torch.compile(self.obs_step, **options),
                          "img": torch.compile(self.img_step, **options)}

    def step(self, kind: str, state: dict):
        """The step function ("obs": obs_step, "img": img_step) to apply to `state`: the compiled one after
        `compile_steps`, else the eager one. A state without gradient history while gradients are on (the
        first step of a training scan or of the imagination) runs eagerly too: it would need a graph of its
        own (the graph differs in which inputs need gradients) for one step in T."""
        compiled = self._compiled
        if compiled is None or (torch.is_grad_enabled() and not state["deter"].requires_grad):
            return self.obs_step if kind == "obs" else self.img_step
        return compiled[kind]

    def scan_task(self, task, batch: int, device):
        """`task` in the form the step graphs are traced for: an int becomes one block (else every task id
        would be a graph of its own), and TaskBlocks hold their index tensors before the first step (else
        filling their cache inside step 0 would make step 1 a graph of its own)."""
        if self.n_heads == 1:
            return task
        if isinstance(task, int) and not isinstance(task, bool):
            task = TaskBlocks([task], batch)
        if isinstance(task, TaskBlocks):
            task.index(device), task.ids(device)
        return task

    # --- sequences ----------------------------------------------------------------------------

    def observe(self, embed: torch.Tensor, action: torch.Tensor, is_first: torch.Tensor | None = None,
                state: dict | None = None, task=None, sample: bool = True) -> tuple[dict, dict]:
        """Filter a sequence: embed (B, T, E), action (B, T, A) with action[:, t] leading to obs t,
        is_first (B, T). Returns (post, prior), dicts of (B, T, ...). `task`: int, (B,) ids or TaskBlocks."""
        b, t = embed.shape[:2]
        assert action.shape[:2] == (b, t), (action.shape, embed.shape)
        if state is None:
            state = self.initial(b, embed.device)
        task = self.scan_task(task, b, embed.device)
        posts, priors = [], []
        for i in range(t):
            first = None if is_first is None else is_first[:, i]
            state, prior = self.step("obs", state)(state, action[:, i], embed[:, i], first, task, sample)
            posts.append(state)
            priors.append(prior)
        # One stack per key at the end instead of growing tensors step by step.
        post = {k: torch.stack([s[k] for s in posts], 1) for k in posts[0]}
        prior = {k: torch.stack([s[k] for s in priors], 1) for k in priors[0]}
        return post, prior

    def imagine(self, action: torch.Tensor, state: dict, task=None, sample: bool = True) -> dict:
        """Open-loop prior rollout with given actions (B, T, A) from `state` (B, ...): (B, T, ...)."""
        priors = []
        task = self.scan_task(task, action.shape[0], action.device)
        for i in range(action.shape[1]):
            state = self.step("img", state)(state, action[:, i], task, sample)
            priors.append(state)
        return {k: torch.stack([s[k] for s in priors], 1) for k in priors[0]}

    # --- loss ---------------------------------------------------------------------------------

    def kl_parts(self, post: dict, prior: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(KL(sg q || p), KL(q || sg p)) per position (...): the first trains the prior, the second
        the posterior. Values are equal; only the gradients differ."""
        sg = lambda d: {k: v.detach() for k, v in d.items()}
        return self._kl(sg(post), prior), self._kl(post, sg(prior))

    def _kl(self, q: dict, p: dict) -> torch.Tensor:
        if self.discrete:
            return categorical_kl(q["logit"], p["logit"])
        return gaussian_kl(q["mean"], q["std"], p["mean"], p["std"])

    def kl_loss(self, post: dict, prior: dict, balance: float = 0.8, free: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        """KL balancing with free nats on the batch mean: returns (loss scalar, KL value (B, T))."""
        lhs, rhs = self.kl_parts(post, prior)
        return balanced_kl(lhs.mean(), rhs.mean(), balance, free), lhs.detach()


def balanced_kl(prior_term: torch.Tensor, post_term: torch.Tensor, balance: float, free: float) -> torch.Tensor:
    """alpha * max(KL(sg q||p), free) + (1 - alpha) * max(KL(q||sg p), free), on already-averaged KLs."""
    return balance * torch.clamp(prior_term, min=free) + (1 - balance) * torch.clamp(post_term, min=free)
