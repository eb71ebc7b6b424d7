"""Teacher encoders: the orthogonal mixture-of-experts encoder and the label-conditioned CNN.

The N experts' weights are stored stacked; the MLP experts run as batched matmuls, the conv experts as
one grouped convolution per layer or as N plain ones (`BatchedConvExperts.path`). Their features do not depend on the task, so callers
compute them once with `experts` and apply any number of task views with `gate`.

Shape legend: B batch, T time, M = B*T flattened samples, N experts, K source tasks, E embed size,
H/W image height/width, C image channels, Ds state size, U hidden units.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from tools import OBS_MODES, STATE_DIM

from .networks import MLP, ConvEncoder, MLPEncoder, TaskBlocks, activation, task_rows


def gram_schmidt(h: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Orthonormalise the N vectors of every sample: (..., N, E) -> (..., N, E).

    u_1 = h_1/|h_1|, w_i = h_i - sum_{j<i} <h_i,u_j> u_j, u_i = w_i / max(|w_i|, eps).
    Every u_i is a combination of h_1..h_i, u = C h with C lower-triangular (..., N, N), and all
    inner products the recursion needs are entries of the Gram matrix G = h h^T. So the recursion
    runs on the small (N, N) matrices in float64 (exact enough that one pass keeps orthogonality
    at float32 precision even for nearly collinear experts) and touches the long E axis only in
    the two batched matmuls G = h h^T and u = C h: about 3x faster than the vector recursion on a
    CPU, same result (see `gram_schmidt_vectors`). A vector with no new direction (|w_i| < eps)
    comes out short instead of as amplified noise; the squared norm is clamped before the square
    root so gradients stay finite at zero.
    """
    hd = h.double()
    gram = hd @ hd.transpose(-1, -2)  # (..., N, N)
    n = h.shape[-2]
    eye = torch.eye(n, dtype=hd.dtype, device=h.device)
    rows: list[torch.Tensor] = []
    for i in range(n):  # loop over experts (N <= 16); everything inside is batched over samples
        c = eye[i].expand(*gram.shape[:-2], n)  # (..., N): w_i = h_i so far
        if rows:
            prev = torch.stack(rows, -2)  # (..., i, N): u_j = prev_j . h
            proj = prev @ gram[..., i, :].unsqueeze(-1)  # (..., i, 1): <h_i, u_j>
            c = c - (proj * prev).sum(-2)
        norm_sq = ((c.unsqueeze(-2) @ gram).squeeze(-2) * c).sum(-1, keepdim=True)  # (..., 1): |w_i|^2
        rows.append(c / torch.sqrt(torch.clamp(norm_sq, min=eps * eps)))
    coef = torch.stack(rows, -2)  # (..., N, N) lower-triangular
    return (coef @ hd).to(h.dtype)


def gram_schmidt_vectors(h: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """The same orthonormalisation written directly on the vectors (classical Gram-Schmidt applied
    twice, as one float32 pass loses orthogonality for nearly collinear inputs). Slower; kept as
    the reference that `gram_schmidt` is checked against."""
    basis: list[torch.Tensor] = []
    for i in range(h.shape[-2]):
        w = h[..., i, :]  # (..., E)
        if basis:
            U = torch.stack(basis, -2)  # (..., i, E)
            for _ in range(2):
                w = w - ((U @ w.unsqueeze(-1)) * U).sum(-2)
        norm = torch.sqrt(torch.clamp((w * w).sum(-1, keepdim=True), min=eps * eps))
        basis.append(w / norm)
    return torch.stack(basis, -2)


def mean_abs_cosine(features: torch.Tensor) -> torch.Tensor:
    """Mean |cos| over distinct expert pairs, averaged over samples. (..., N, E) -> scalar.

    About 0 for orthogonalised experts; near 1 when the experts have collapsed onto one direction.
    """
    n = features.shape[-2]
    if n < 2:
        return features.new_zeros(())
    unit = features / features.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    cos = unit @ unit.transpose(-1, -2)  # (..., N, N)
    off = ~torch.eye(n, dtype=torch.bool, device=features.device)
    return cos.abs()[..., off].mean()


# Expert execution on a CPU: one grouped convolution is faster at small batches (fewer, larger kernels);
# at large ones separate convolutions need a third less peak memory (N = 6, depth 32, 400 frames: 1.87
# vs 2.84 GiB) at equal or better speed (docs/benchmarks.md, "Teacher").
SEPARATE_FROM_IMAGES = 256
EXPERT_PATHS = ("auto", "grouped", "separate")


class BatchedConvExperts(nn.Module):
    """N ConvEncoders over the same images, weights stored stacked per layer as (N, C_out, C_in, 4, 4).

    Two executions of the same function (same outputs and gradients up to float rounding, so the
    choice is a pure speed choice, `path`):
    * "grouped": layer 1 is one conv with N*d output channels (identical to a grouped conv on an
      N-times channel-repeated input, without materialising the copy); layers 2-4 use groups=N.
    * "separate": every expert's four layers as ordinary convolutions.
    "auto" picks per call: grouped on CUDA and for small CPU batches, separate for CPU batches of at
    least SEPARATE_FROM_IMAGES images.
    Input (M, H, W, C); output (M, N, E) with each expert's features flattened exactly like a
    ConvEncoder's.
    """

    def __init__(self, n_experts: int, depth: int = 32, channels: int = 3, act: str = "elu",
                 size: Sequence[int] = (64, 64), path: str = "auto"):
        super().__init__()
        self.n = n_experts
        # Build N ordinary encoders only to borrow their (PyTorch default) initialisation.
        encoders = [ConvEncoder(depth, channels, act, size) for _ in range(n_experts)]
        self.embed_size = encoders[0].embed_size
        self.out_hw = encoders[0].out_hw
        self.depth, self.channels, self.act_name, self.size = depth, channels, act, tuple(size)
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        convs = [[m for m in enc.net if isinstance(m, nn.Conv2d)] for enc in encoders]
        for layer in range(4):
            self.weights.append(nn.Parameter(torch.stack([c[layer].weight.detach() for c in convs])))
            self.biases.append(nn.Parameter(torch.stack([c[layer].bias.detach() for c in convs])))
        self.act = activation(act)
        self.path = path

    @property
    def path(self) -> str:
        return self._path

    @path.setter
    def path(self, value: str) -> None:
        if value not in EXPERT_PATHS:
            raise ValueError(f"expert path must be one of {EXPERT_PATHS}, got '{value}'")
        self._path = value

    def resolve_path(self, images: int, device: torch.device) -> str:
        """The execution `forward` uses for `images` images on `device`."""
        if self._path != "auto":
            return self._path
        return "separate" if device.type == "cpu" and images >= SEPARATE_FROM_IMAGES else "grouped"

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        m = image.shape[0]
        x = image.permute(0, 3, 1, 2)  # (M, C, H, W)
        if self.resolve_path(m, image.device) == "grouped":
            for layer, (w, b) in enumerate(zip(self.weights, self.biases)):
                x = self.act(F.conv2d(x, w.flatten(0, 1), b.flatten(), stride=2, groups=1 if layer == 0 else self.n))
            return x.reshape(m, self.n, self.embed_size)  # (M, N*C_out, h, w) -> (M, N, E)
        # Each expert's whole chain on its own: its layer-1 output is then contiguous, where a channel
        # slice of one shared layer-1 conv would be copied (and kept for backward) by every layer-2 conv.
        outs = []
        for i in range(self.n):
            h = x
            for w, b in zip(self.weights, self.biases):
                h = self.act(F.conv2d(h, w[i], b[i], stride=2))
            outs.append(h.reshape(m, self.embed_size))
        return torch.stack(outs, 1)  # (M, N, E)

    def expert(self, i: int) -> ConvEncoder:
        """A standalone ConvEncoder holding a copy of expert i's weights (for checks and export)."""
        enc = ConvEncoder(self.depth, self.channels, self.act_name, self.size)
        convs = [m for m in enc.net if isinstance(m, nn.Conv2d)]
        with torch.no_grad():
            for layer, conv in enumerate(convs):
                conv.weight.copy_(self.weights[layer][i])
                conv.bias.copy_(self.biases[layer][i])
        return enc.to(self.weights[0].device)


class BatchedMLPExperts(nn.Module):
    """N MLPEncoders (obs: state) evaluated together with batched matmuls over stacked weights.

    Input (M, Ds); output (M, N, E).
    """

    def __init__(self, n_experts: int, inp: int, embed: int, units: int, layers: int,
                 act: str = "elu", norm: bool = False):
        super().__init__()
        self.n, self.embed_size, self.norm = n_experts, embed, norm
        self.args = (inp, embed, units, layers, act, norm)
        encoders = [MLPEncoder(inp, embed, units, layers, act, norm) for _ in range(n_experts)]
        linears = [[m for m in enc.modules() if isinstance(m, nn.Linear)] for enc in encoders]
        self.weights = nn.ParameterList()  # (N, in, out) per layer
        self.biases = nn.ParameterList()  # (N, out)
        for layer in range(len(linears[0])):
            self.weights.append(nn.Parameter(torch.stack([l[layer].weight.detach().t() for l in linears])))
            self.biases.append(nn.Parameter(torch.stack([l[layer].bias.detach() for l in linears])))
        if norm:
            self.norm_weights = nn.Parameter(torch.ones(layers, n_experts, units))
            self.norm_biases = nn.Parameter(torch.zeros(layers, n_experts, units))
        self.act = activation(act)

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        x = torch.einsum("mi,nio->mno", state, self.weights[0]) + self.biases[0]  # (M, N, U)
        last = len(self.weights) - 1
        for layer in range(len(self.weights)):
            if layer > 0:
                x = torch.einsum("mni,nio->mno", x, self.weights[layer]) + self.biases[layer]
            if layer < last:
                if self.norm:
                    x = F.layer_norm(x, x.shape[-1:]) * self.norm_weights[layer] + self.norm_biases[layer]
                x = self.act(x)
        return x  # (M, N, E)

    def expert(self, i: int) -> MLPEncoder:
        """A standalone MLPEncoder holding a copy of expert i's weights (for checks and export)."""
        enc = MLPEncoder(*self.args)
        linears = [m for m in enc.modules() if isinstance(m, nn.Linear)]
        norms = [m for m in enc.modules() if isinstance(m, nn.LayerNorm)]
        with torch.no_grad():
            for layer, lin in enumerate(linears):
                lin.weight.copy_(self.weights[layer][i].t())
                lin.bias.copy_(self.biases[layer][i])
            for layer, ln in enumerate(norms):
                ln.weight.copy_(self.norm_weights[layer][i])
                ln.bias.copy_(self.norm_biases[layer][i])
        return enc.to(self.weights[0].device)


class OrthogonalMoEEncoder(nn.Module):
    """N experts -> ReLU -> Gram-Schmidt across experts -> per-sample task gate -> ReLU(sum w_i u_i).

    `use_orthogonal=False` skips the Gram-Schmidt step (plain MoE over the ReLU features).
    Gate: w = softmax(W[:, task] / temperature), W (N, K) learned (`task_gate`, stored as (K, N)).
    """

    def __init__(self, n_experts: int, n_tasks: int, obs: str = "pixel", depth: int = 32,
                 state_dim: int = STATE_DIM, embed: int = 256, units: int = 400, layers: int = 2,
                 act: str = "elu", norm: bool = False, temperature: float = 2.0,
                 use_orthogonal: bool = True, eps: float = 1e-6, size: Sequence[int] = (64, 64)):
        super().__init__()
        if obs not in OBS_MODES:
            raise ValueError(f"obs must be pixel | state | both, got '{obs}'")
        if temperature <= 0:
            raise ValueError(f"moe_temperature must be positive, got {temperature}")
        self.n, self.k, self.obs = n_experts, n_tasks, obs
        self.temperature, self.use_orthogonal, self.eps = float(temperature), bool(use_orthogonal), float(eps)
        self.conv = BatchedConvExperts(n_experts, depth, 3, act, size) if obs in ("pixel", "both") else None
        self.mlp = (BatchedMLPExperts(n_experts, state_dim, embed, units, layers, act, norm)
                    if obs in ("state", "both") else None)
        self.embed_size = (self.conv.embed_size if self.conv else 0) + (self.mlp.embed_size if self.mlp else 0)
        # Zero logits: every task starts from the uniform mixture.
        self.task_gate = nn.Parameter(torch.zeros(n_tasks, n_experts))  # (K, N) = W^T

    def expert_features(self, obs: dict) -> torch.Tensor:
        """ReLU'd expert features before orthogonalisation: (B, T, N, E)."""
        parts, lead = [], None
        if self.conv is not None:
            image = obs["image"]
            lead = image.shape[:-3]
            parts.append(self.conv(image.reshape(-1, *image.shape[-3:])))  # (M, N, Ec)
        if self.mlp is not None:
            state = obs["state"]
            lead = state.shape[:-1]
            parts.append(self.mlp(state.reshape(-1, state.shape[-1])))  # (M, N, Es)
        h = parts[0] if len(parts) == 1 else torch.cat(parts, -1)
        return torch.relu(h).reshape(*lead, self.n, self.embed_size)

    def experts(self, obs: dict) -> torch.Tensor:
        """Task-independent expert features, orthonormal per sample when `use_orthogonal`: (B, T, N, E)."""
        return self.orthogonalise(self.expert_features(obs))

    def orthogonalise(self, h: torch.Tensor) -> torch.Tensor:
        """Gram-Schmidt over the N experts of each sample (in float32) when `use_orthogonal`: (B, T, N, E)."""
        return gram_schmidt(h.float(), self.eps).to(h.dtype) if self.use_orthogonal else h

    def gate_weights(self, task) -> torch.Tensor:
        """softmax(W[:, task] / temperature): (N,) for an int task, (*task.shape, N) for a tensor."""
        rows = task_rows(self.task_gate, task, task.shape if torch.is_tensor(task) else ())
        return torch.softmax(rows / self.temperature, -1)

    def gate(self, features: torch.Tensor, task) -> torch.Tensor:
        """One task view of precomputed expert features: (B, T, N, E) -> ReLU(sum_i w_i u_i) (B, T, E).

        `task` is an int or a (B,) / (B, T) tensor of task ids (batches may mix tasks).
        """
        lead = features.shape[:-2]
        w = task_rows(self.task_gate, task, lead)  # (..., N) broadcastable to lead
        w = torch.softmax(w / self.temperature, -1).to(features.dtype)
        y = (w.unsqueeze(-2) @ features).squeeze(-2)  # (B, T, E)
        return torch.relu(y)

    def forward(self, obs: dict, task) -> torch.Tensor:
        return self.gate(self.experts(obs), task)


class LabelCNNEncoder(nn.Module):
    """Vid2Act-style encoder: one ConvEncoder whose input carries onehot(task) tiled as K extra
    image channels (state obs: the one-hot appended to the state). Output (B, T, E).

    The first conv's weights for the K label channels live in their own parameter `task_weight`
    (K, C_out, 4, 4). A tiled one-hot is constant over the image and the conv has no padding, so
    its contribution to every output position is sum_{kh,kw} task_weight[k, c] for the sample's
    task k: the layer is computed as conv(image) + that per-task bias, which equals the conv over
    the 3+K channels (`tiled_first_conv` checks it) without convolving K mostly-zero channels,
    and never reads the weights of tasks absent from the batch.
    """

    def __init__(self, n_tasks: int, obs: str = "pixel", depth: int = 32, state_dim: int = STATE_DIM,
                 embed: int = 256, units: int = 400, layers: int = 2, act: str = "elu",
                 norm: bool = False, size: Sequence[int] = (64, 64)):
        super().__init__()
        if obs not in OBS_MODES:
            raise ValueError(f"obs must be pixel | state | both, got '{obs}'")
        self.k, self.obs = n_tasks, obs
        self.cnn = None
        if obs in ("pixel", "both"):
            self.cnn = ConvEncoder(depth, 3 + n_tasks, act, size)
            first = self.cnn.net[0]
            self.image_weight = nn.Parameter(first.weight.detach()[:, :3].clone())  # (C_out, 3, 4, 4)
            self.task_weight = nn.Parameter(first.weight.detach()[:, 3:].transpose(0, 1).clone())  # (K, C_out, 4, 4)
            self.image_bias = nn.Parameter(first.bias.detach().clone())
            self.cnn.net = self.cnn.net[1:]  # the first conv is applied here, from the two weights
        # W·[state, onehot(task)] = W_s·state + W_k[:, k]: the one-hot columns become a per-task bias.
        self.mlp = (MLP(state_dim, embed, units, layers, act, norm, n_tasks=n_tasks)
                    if obs in ("state", "both") else None)
        self.embed_size = (self.cnn.embed_size if self.cnn else 0) + (embed if self.mlp else 0)

    def tiled_first_conv(self, image: torch.Tensor, task) -> torch.Tensor:
        """The first conv written literally, over [image, onehot(task) tiled]: (M, H, W, 3) -> (M, C, h, w)."""
        eye = torch.eye(self.k, device=image.device, dtype=image.dtype)
        label = task_rows(eye, task, image.shape[:-1]).expand(*image.shape[:-1], self.k)  # (M, H, W, K)
        x = torch.cat([image, label], -1).permute(0, 3, 1, 2)
        weight = torch.cat([self.image_weight, self.task_weight.transpose(0, 1)], 1)  # (C_out, 3+K, 4, 4)
        return F.conv2d(x, weight, self.image_bias, stride=2)

    def first_conv(self, image: torch.Tensor, task) -> torch.Tensor:
        """The first conv as conv(image) + per-task bias: (M, H, W, 3) -> (M, C, h, w)."""
        x = F.conv2d(image.permute(0, 3, 1, 2), self.image_weight, self.image_bias, stride=2)
        bias = task_rows(self.task_weight.sum((-2, -1)), task, x.shape[:1])  # (M, C) or (C,)
        return x + bias.to(x.dtype)[..., None, None]

    def _conv(self, image: torch.Tensor, task) -> torch.Tensor:
        lead = image.shape[:-3]
        flat = image.reshape(-1, *image.shape[-3:])  # (M, H, W, 3)
        if torch.is_tensor(task) and task.dim() == 1 and len(lead) == 2:
            task = task.repeat_interleave(lead[1])  # one id per sequence -> one per frame
        elif isinstance(task, TaskBlocks):
            task = TaskBlocks(task.tasks, task.size * lead[1])
        x = self.cnn.net(self.first_conv(flat, task))
        return x.reshape(*lead, self.cnn.embed_size)

    def forward(self, obs: dict, task) -> torch.Tensor:
        parts = []
        if self.cnn is not None:
            parts.append(self._conv(obs["image"], task))
        if self.mlp is not None:
            parts.append(self.mlp(obs["state"], task))
        return parts[0] if len(parts) == 1 else torch.cat(parts, -1)
