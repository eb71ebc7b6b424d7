"""Post-training variants of the acting policy: fp32, bf16, fp16, int8 weight-only, int8 dynamic activations.

int8 uses torchao's `quantize_` configs, which replace each `nn.Linear` weight by an int8 tensor with one
float scale per output row (symmetric, scale = max|w_row| / 127), and run int8 matmuls on it; nothing is
dequantized ahead of time. Layers that stay float in the int8 variants, and why:
* convolutions of the pixel encoder: torchao's int8 configs quantize linear layers only;
* LayerNorms, the GRU's gate nonlinearities, ELU and the actor's tanh: elementwise, no weights worth storing
  in int8, and their inputs' range is what makes int8 lossy;
* biases: a few hundred floats, added after the int8 matmul.

A variant file holds the policy's config and its state dict (quantized tensors included); `load` rebuilds
the fp32 policy from the config, applies the same transform and assigns the stored tensors.
"""
from __future__ import annotations

import pathlib

import torch
from torch import nn

import tools
from artefacts.policy import ActingPolicy
from artefacts.student import VARIANT_KIND, ArtefactError, build_agent, import_torchao


def _half(dtype):
    def apply(module: nn.Module) -> nn.Module:
        return module.to(dtype)
    return apply


def _int8(dynamic: bool):
    def apply(module: nn.Module) -> nn.Module:
        quantization = import_torchao().quantization
        config = quantization.Int8DynamicActivationInt8WeightConfig() if dynamic else quantization.Int8WeightOnlyConfig()
        quantization.quantize_(module, config)
        return module
    return apply


# name -> transform of an fp32 ActingPolicy (in place, returns it)
VARIANTS = {
    "fp32": lambda module: module,
    "bf16": _half(torch.bfloat16),
    "fp16": _half(torch.float16),
    "int8_wo": _int8(dynamic=False),
    "int8_dyn": _int8(dynamic=True),
}


def make(agent, name: str) -> ActingPolicy:
    """The acting policy of `agent` transformed into variant `name` (a fresh module; the agent is untouched)."""
    if name not in VARIANTS:
        raise ArtefactError(f"unknown variant '{name}'; known: {', '.join(VARIANTS)}")
    import copy

    module = copy.deepcopy(ActingPolicy(agent)).eval().requires_grad_(False)
    return VARIANTS[name](module)


def save(path, module: ActingPolicy, name: str, payload: dict) -> pathlib.Path:
    """Write variant `name` of the student in `payload` (its checkpoint dict) as a loadable file."""
    return tools.save_checkpoint(path, {"kind": VARIANT_KIND, "variant": name, "config": payload["config"],
                                  "step": payload.get("step", 0), "policy": module.state_dict()})


def load(payload: dict) -> ActingPolicy:
    """The policy of a variant file's payload (as `student.read` returns it), in eval mode."""
    agent = build_agent({"config": payload["config"]})
    module = make(agent, payload["variant"])
    try:
        module.load_state_dict(payload["policy"], assign=True)
    except (RuntimeError, KeyError) as err:
        raise ArtefactError(f"variant '{payload['variant']}' does not fit its config: {str(err).splitlines()[0]}") from None
    return module.eval()


def inner_tensors(tensor: torch.Tensor) -> list[torch.Tensor]:
    """The plain tensors a (possibly torchao subclass) tensor stores, e.g. int8 data and float scales."""
    flatten = getattr(type(tensor), "__tensor_flatten__", None)
    if flatten is None or type(tensor) in (torch.Tensor, nn.Parameter):
        return [tensor]
    names, _ = tensor.__tensor_flatten__()
    return [t for name in names for t in inner_tensors(getattr(tensor, name))]


def parameter_bytes(module: nn.Module) -> int:
    """Bytes of everything the state dict stores (quantized tensors: int8 data + scales)."""
    return sum(t.numel() * t.element_size() for v in module.state_dict().values() for t in inner_tensors(v))


def int8_weights(module: nn.Module) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """(name, int8 data, per-row scale) of each quantized weight of an int8 variant."""
    out = []
    for name, value in module.state_dict().items():
        qdata, scale = getattr(value, "qdata", None), getattr(value, "scale", None)
        if qdata is not None and scale is not None:
            out.append((name, qdata, scale))
    return out
