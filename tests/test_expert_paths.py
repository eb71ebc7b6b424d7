"""The MoE encoder's two expert executions (one grouped convolution per layer, or each expert's
convolutions on their own) compute the same function: same outputs, same gradients."""
import pytest
import torch

from models import BatchedConvExperts, OrthogonalMoEEncoder
from models.moe import SEPARATE_FROM_IMAGES


def _forward_backward(moe: OrthogonalMoEEncoder, image: torch.Tensor, task: torch.Tensor, path: str):
    moe.zero_grad(set_to_none=True)
    moe.conv.path = path
    image = image.clone().requires_grad_(True)
    out = moe({"image": image}, task)  # (B, T, E)
    (out * torch.linspace(-1, 1, out.shape[-1])).sum().backward()
    grads = {name: p.grad.clone() for name, p in moe.named_parameters() if p.grad is not None}
    return out.detach(), grads, image.grad


@pytest.mark.parametrize("n_experts", [1, 3])
def test_separate_and_grouped_expert_paths_give_same_outputs_and_gradients(n_experts):
    torch.manual_seed(0)
    moe = OrthogonalMoEEncoder(n_experts, 2, depth=4)
    with torch.no_grad():
        moe.task_gate.normal_()
    image = torch.rand(2, 3, 64, 64, 3) - 0.5
    task = torch.tensor([1, 0])
    out_g, grads_g, img_g = _forward_backward(moe, image, task, "grouped")
    out_s, grads_s, img_s = _forward_backward(moe, image, task, "separate")
    torch.testing.assert_close(out_s, out_g, rtol=1e-5, atol=1e-5)
    assert grads_s.keys() == grads_g.keys()
    assert any(name.startswith("conv.weights") for name in grads_g), sorted(grads_g)
    for name in grads_g:
        torch.testing.assert_close(grads_s[name], grads_g[name], rtol=1e-4, atol=1e-5, msg=name)
    torch.testing.assert_close(img_s, img_g, rtol=1e-4, atol=1e-5)


def test_auto_expert_path_by_device_and_batch():
    experts = BatchedConvExperts(2, depth=4)
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert experts.resolve_path(SEPARATE_FROM_IMAGES - 1, cpu) == "grouped"
    assert experts.resolve_path(SEPARATE_FROM_IMAGES, cpu) == "separate"
    assert experts.resolve_path(10 * SEPARATE_FROM_IMAGES, cuda) == "grouped"
    experts.path = "separate"
    assert experts.resolve_path(1, cpu) == "separate"
    with pytest.raises(ValueError, match="expert path"):
        experts.path = "loop"
