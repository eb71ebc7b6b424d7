"""Building blocks shared by the student and the teacher: MLPs, conv encoder/decoder, state
encoder/decoder and the few distribution helpers the losses need.

Shape legend: B batch, T time, M flattened leading dims, E embed size, F feature size,
K source tasks, V listed task views, H/W image height/width, C channels, S stoch size, Q classes per discrete
variable (docs/architecture.md).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS = {"elu": nn.ELU, "relu": nn.ReLU, "silu": nn.SiLU, "tanh": nn.Tanh, "gelu": nn.GELU}


def activation(name: str) -> nn.Module:
    """Activation module by config name; unknown names are an error listing the valid ones."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation '{name}'; valid: {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


class TaskBlocks:
    """Task ids laid out as len(tasks) contiguous blocks of `size` samples: sample m belongs to
    tasks[m // size]. Lets per-task layers evaluate only the listed tasks' weights (a batch of
    several task views of the same data), where a general id tensor would touch every task.

    The id tensors are made once per process (by tasks, size and device; `_made`) and held by each instance
    (`_cache`): a new instance is made for every batch, and building a tensor from a list on a GPU is a
    blocking copy."""

    _made: dict = {}

    def __init__(self, tasks: Sequence[int], size: int):
        self.tasks, self.size = tuple(int(k) for k in tasks), int(size)
        self._cache: dict = {}

    def __len__(self) -> int:
        return len(self.tasks) * self.size

    def _held(self, kind: str, device, make) -> torch.Tensor:
        # The instance's key names no task: a compiled step reads it without guarding on the task values.
        key = (kind, str(device))
        if key not in self._cache:
            made = (kind, self.tasks, self.size, str(device))
            if made not in self._made:
                self._made[made] = make()
            self._cache[key] = self._made[made]
        return self._cache[key]

    def index(self, device) -> torch.Tensor:
        """The listed task ids (V,) on `device`."""
        return self._held("index", device, lambda: torch.tensor(self.tasks, dtype=torch.long, device=device))

    def ids(self, device) -> torch.Tensor:
        """One id per sample (V*size,) on `device`."""
        return self._held("ids", device, lambda: self.index(device).repeat_interleave(self.size))


def task_rows(table: torch.Tensor, task, lead: Sequence[int]) -> torch.Tensor:
    """Rows `table[task]` shaped to broadcast against a tensor with leading dims `lead`.

    `task` is an int (one task for the whole batch), an integer tensor whose shape is a prefix of
    `lead` (e.g. (B,) against (B, T)) or `TaskBlocks` over the first dim. Used instead of
    concatenating a one-hot: W·[x, onehot(k)] = W_x·x + W_k[:, k], which also keeps the
    task-specific weights in their own parameter.
    """
    if isinstance(task, int):
        return table[task]
    if isinstance(task, TaskBlocks):
        task = task.ids(table.device)
    task = torch.as_tensor(task, device=table.device).long()
    assert tuple(task.shape) == tuple(lead[: task.dim()]), (tuple(task.shape), tuple(lead))
    rows = table[task]  # (*task.shape, U)
    return rows.reshape(*task.shape, *([1] * (len(lead) - task.dim())), table.shape[-1])


class TaskBias(nn.Module):
    """Per-task additive bias of a layer's output: the one-hot part of a Linear on [x, onehot(task)]."""

    def __init__(self, n_tasks: int, size: int):
        super().__init__()
        self.task_bias = nn.Parameter(torch.zeros(n_tasks, size))

    def forward(self, x: torch.Tensor, task) -> torch.Tensor:
        return x + task_rows(self.task_bias, task, x.shape[:-1]).to(x.dtype)


class MLP(nn.Module):
    """`layers` hidden Linear+act(+LayerNorm) layers of `units`, then a Linear to `out` (or none).

    With `n_tasks > 0` the first layer also sees onehot(task) (as a per-task bias, see `task_rows`).
    """

    def __init__(self, inp: int, out: int | Sequence[int] | None, units: int, layers: int,
                 act: str = "elu", norm: bool = False, n_tasks: int = 0):
        super().__init__()
        self.out_shape = (out,) if isinstance(out, int) else (tuple(out) if out is not None else None)
        hidden = []
        size = inp
        for _ in range(layers):
            hidden.append(nn.Linear(size, units))
            if norm:
                hidden.append(nn.LayerNorm(units))
            hidden.append(activation(act))
            size = units
        self.hidden = nn.ModuleList(hidden)
        self.task = TaskBias(n_tasks, units) if n_tasks > 0 and layers > 0 else None
        if n_tasks > 0 and layers == 0:
            raise ValueError("a task-conditioned MLP needs at least one hidden layer")
        self.out = nn.Linear(size, math.prod(self.out_shape)) if self.out_shape is not None else None
        self.out_size = math.prod(self.out_shape) if self.out_shape is not None else size

    def forward(self, x: torch.Tensor, task=None) -> torch.Tensor:
        for i, layer in enumerate(self.hidden):
            x = layer(x)
            if i == 0 and self.task is not None:
                assert task is not None, "task-conditioned MLP needs a task"
                x = self.task(x, task)
        if self.out is None:
            return x
        x = self.out(x)
        return x.reshape(*x.shape[:-1], *self.out_shape)


class ConvEncoder(nn.Module):
    """Dreamer's image encoder: 4 convs (k4, s2, ELU, channels d,2d,4d,8d), 64x64x3 -> E = 32d.

    Input (..., H, W, C) float already scaled to [-0.5, 0.5]; output (..., E).
    """

    def __init__(self, depth: int = 32, channels: int = 3, act: str = "elu", size: Sequence[int] = (64, 64)):
        super().__init__()
        self.depth, self.channels = depth, channels
        layers, inp = [], channels
        for i in range(4):
            layers += [nn.Conv2d(inp, depth * 2 ** i, 4, 2), activation(act)]
            inp = depth * 2 ** i
        self.net = nn.Sequential(*layers)
        h, w = size
        for _ in range(4):
            h, w = (h - 4) // 2 + 1, (w - 4) // 2 + 1
        self.out_hw = (h, w)
        self.embed_size = inp * h * w

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        lead = image.shape[:-3]
        x = image.reshape(-1, *image.shape[-3:]).permute(0, 3, 1, 2)  # (M, C, H, W), channels-last memory
        x = self.net(x)
        return x.reshape(*lead, self.embed_size)


class ConvDecoder(nn.Module):
    """Dreamer's image decoder: Linear -> (32d,1,1) -> transposed convs k5,5,6,6 s2 -> 64x64xC mean.

    Input (..., F); output mean (..., H, W, C). The likelihood is Normal(mean, 1) per pixel.
    With `n_tasks > 0` the input is [feat, onehot(task)].
    """

    def __init__(self, feat: int, depth: int = 32, channels: int = 3, act: str = "elu",
                 size: Sequence[int] = (64, 64), n_tasks: int = 0):
        super().__init__()
        if tuple(size) != (64, 64):
            raise ValueError(f"ConvDecoder produces 64x64 images; got size {tuple(size)}")
        self.depth, self.channels = depth, channels
        self.linear = nn.Linear(feat, 32 * depth)
        self.task = TaskBias(n_tasks, 32 * depth) if n_tasks > 0 else None
        chans = [32 * depth, 4 * depth, 2 * depth, depth, channels]
        kernels = [5, 5, 6, 6]
        layers = []
        for i, k in enumerate(kernels):
            layers.append(nn.ConvTranspose2d(chans[i], chans[i + 1], k, 2))
            if i < len(kernels) - 1:
                layers.append(activation(act))
        self.net = nn.Sequential(*layers)

    def forward(self, feat: torch.Tensor, task=None) -> torch.Tensor:
        lead = feat.shape[:-1]
        x = self.linear(feat)
        if self.task is not None:
            x = self.task(x, task)
        # The first transposed conv sees a 1x1 input: it is a matmul onto its (C_out, 5, 5) output,
        # several times cheaper on a CPU than the transposed-conv kernel (same function).
        first = self.net[0]
        x = x.reshape(-1, 32 * self.depth) @ first.weight.flatten(1).to(x.dtype)  # (M, C_out*5*5)
        x = x.view(-1, first.out_channels, *first.kernel_size) + first.bias.to(x.dtype).view(-1, 1, 1)
        x = self.net[1:](x)  # (M, C, 64, 64)
        return x.permute(0, 2, 3, 1).reshape(*lead, 64, 64, self.channels)


class MLPEncoder(MLP):
    """State-vector encoder (obs: state): MLP from the state size to E."""

    def __init__(self, inp: int, embed: int, units: int, layers: int, act: str = "elu", norm: bool = False):
        super().__init__(inp, embed, units, layers, act, norm)
        self.embed_size = embed


class MLPDecoder(MLP):
    """State-vector decoder: MLP from the feature (and optional task) to the state mean."""


# --- distribution helpers ----------------------------------------------------------------------
# Losses are written out in closed form: cheaper than torch.distributions and exact in float32
# under autocast. Constants of the unit-variance Gaussian log-likelihood are dropped (they do not
# change gradients and would hide the learning progress in the logged values).

def std_from_raw(raw: torch.Tensor, min_std: float) -> torch.Tensor:
    """Dreamer's std parameterisation 2*sigmoid(x/2) + min_std: bounded in (min_std, 2 + min_std)."""
    return 2.0 * torch.sigmoid(raw / 2.0) + min_std


def unit_normal_nll(x: torch.Tensor, mean: torch.Tensor, event_dims: int) -> torch.Tensor:
    """-log N(x; mean, 1) up to its constant, summed over the last `event_dims` dims."""
    sq = 0.5 * (x.float() - mean.float()) ** 2
    return sq.sum(dim=tuple(range(-event_dims, 0))) if event_dims else sq


def bernoulli_nll(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """-log Bernoulli(target; sigmoid(logits)), elementwise."""
    return F.binary_cross_entropy_with_logits(logits.float(), target.float(), reduction="none")


def gaussian_kl(mean_q, std_q, mean_p, std_p) -> torch.Tensor:
    """KL(N(mean_q, std_q) || N(mean_p, std_p)) for diagonal Gaussians, summed over the last dim."""
    mean_q, std_q, mean_p, std_p = (t.float() for t in (mean_q, std_q, mean_p, std_p))
    var_ratio = (std_q / std_p) ** 2
    term = ((mean_q - mean_p) / std_p) ** 2
    return 0.5 * (var_ratio + term - 1.0 - torch.log(var_ratio)).sum(-1)


def categorical_kl(logit_q: torch.Tensor, logit_p: torch.Tensor) -> torch.Tensor:
    """KL(Cat(q) || Cat(p)) per variable, summed over the S variables. Logits (..., S, Q)."""
    logq = torch.log_softmax(logit_q.float(), -1)
    logp = torch.log_softmax(logit_p.float(), -1)
    return (logq.exp() * (logq - logp)).sum((-2, -1))


def onehot_straight_through(logit: torch.Tensor) -> torch.Tensor:
    """One-hot sample of Cat(logit) with straight-through gradients of the probabilities. (..., Q)."""
    probs = torch.softmax(logit, -1)
    index = torch.multinomial(probs.reshape(-1, probs.shape[-1]).float(), 1).reshape(probs.shape[:-1])
    sample = F.one_hot(index, probs.shape[-1]).to(probs.dtype)
    return sample + probs - probs.detach()


def gaussian_entropy(std: torch.Tensor) -> torch.Tensor:
    """Entropy of a diagonal Gaussian, summed over the last dim."""
    return (0.5 * math.log(2 * math.pi * math.e) + torch.log(std.float())).sum(-1)
