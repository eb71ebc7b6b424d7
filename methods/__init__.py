"""Distillation methods, found by name (`distill_mode`) in one registry.

Adding a method: one new file here (a `Method` subclass defining the hooks it needs), one entry in
REGISTRY, one block of its config keys in configs.yaml (docs/architecture.md walks through `policy`).
"""
from __future__ import annotations

from .base import Method, MethodError, TeacherMethod, check_compatible
from .comet import Comet
from .critic import Critic
from .policy import Policy
from .reward import Reward
from .vid2act import Vid2Act

REGISTRY: dict[str, type[Method]] = {
    "comet": Comet,
    "vid2act": Vid2Act,
    "reward": Reward,
    "policy": Policy,
    "critic": Critic,
}


def method_class(name: str) -> type[Method]:
    """The method registered as `name`; an unknown name is a MethodError naming the known ones."""
    if name not in REGISTRY:
        raise MethodError(f"unknown distill_mode '{name}'; known methods: {', '.join(REGISTRY)}")
    return REGISTRY[name]


def build_method(config, teacher, student_feat: int, behaviour=None, logger=None, verbose: bool = True) -> Method:
    """The method `config['distill_mode']` for this teacher (and behaviour teachers) and student size."""
    return method_class(config["distill_mode"])(teacher, student_feat, config, behaviour, logger, verbose)


__all__ = ["REGISTRY", "Method", "MethodError", "TeacherMethod", "build_method", "check_compatible", "method_class"]
