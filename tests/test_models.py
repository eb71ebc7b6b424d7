"""World-model components: shapes, orthogonalisation, batched experts, multi-head dynamics,
task views, learning on a tiny dataset and teacher checkpoints. CPU, tiny sizes.

Shape legend: B batch, T time, K tasks, N experts, E embed size, F feature size, A action size.
"""
import itertools

import numpy as np
import pytest
import torch

import tools
import configs
from models import (RSSM, BatchedConvExperts, BatchedMLPExperts, ConvDecoder, ConvEncoder, LabelCNNEncoder,
                    MLPDecoder, MLPEncoder, OrthogonalMoEEncoder, TeacherWorldModel, WorldModel, gram_schmidt,
                    gram_schmidt_vectors,                     load_teacher, mean_abs_cosine, teacher_payload)

A = 4


def tiny_config(obs="pixel", k=2, n=2, mode="moe", **overrides):
    config = configs.load_config(["--configs", "defaults", "metaworld", "debug"])
    config.update(obs=obs, source_tasks=[f"task{i}" for i in range(k)], n_experts=n, teacher_encoder_mode=mode,
                  embed_size=16)
    config.update(overrides)
    return config


def batch(b, t, obs="pixel", k=2, seed=0):
    rng = np.random.default_rng(seed)
    data = {"action": rng.uniform(-1, 1, (b, t, A)).astype(np.float32),
            "reward": rng.normal(size=(b, t)).astype(np.float32),
            "discount": np.ones((b, t), np.float32),
            "is_first": np.zeros((b, t), bool),
            "task": np.arange(b) % k}
    data["is_first"][:, 0] = True
    if obs in ("pixel", "both"):
        data["image"] = rng.integers(0, 256, (b, t, 64, 64, 3), dtype=np.uint8)
    if obs in ("state", "both"):
        data["state"] = rng.normal(size=(b, t, 39)).astype(np.float32)
    return data


# --- shapes --------------------------------------------------------------------------------------

@pytest.mark.parametrize("b,t,k,n", [(1, 1, 1, 1), (2, 3, 2, 3), (3, 4, 4, 2)])
def test_module_shapes(b, t, k, n):
    torch.manual_seed(0)
    image = torch.rand(b, t, 64, 64, 3) - 0.5
    state = torch.randn(b, t, 39)
    enc = ConvEncoder(depth=4)
    assert enc(image).shape == (b, t, 128) == (b, t, enc.embed_size)
    assert ConvDecoder(10, depth=4)(torch.randn(b, t, 10)).shape == (b, t, 64, 64, 3)
    assert ConvDecoder(10, depth=4, n_tasks=k)(torch.randn(b, t, 10), torch.arange(b) % k).shape == (b, t, 64, 64, 3)
    assert MLPEncoder(39, 16, 8, 2)(state).shape == (b, t, 16)
    assert MLPDecoder(10, 39, 8, 2, n_tasks=k)(torch.randn(b, t, 10), 0).shape == (b, t, 39)
    task = torch.arange(b) % k
    for obs, e in (("pixel", 128), ("state", 16), ("both", 144)):
        moe = OrthogonalMoEEncoder(n, k, obs=obs, depth=4, embed=16, units=8, layers=2)
        feats = moe.experts({"image": image, "state": state})
        assert feats.shape == (b, t, n, e), feats.shape
        assert moe.gate(feats, task).shape == (b, t, e)
        assert moe.gate(feats, 0).shape == (b, t, e)
        assert moe.gate_weights(task).shape == (b, n)
        label = LabelCNNEncoder(k, obs=obs, depth=4, embed=16, units=8, layers=2)
        assert label({"image": image, "state": state}, task).shape == (b, t, label.embed_size)
    for discrete in (0, 3):
        rssm = RSSM(A, 12, stoch=5, deter=7, hidden=6, discrete=discrete, n_heads=k)
        post, prior = rssm.observe(torch.randn(b, t, 12), torch.randn(b, t, A), task=task)
        stoch = (b, t, 5, 3) if discrete else (b, t, 5)
        assert post["stoch"].shape == prior["stoch"].shape == stoch
        assert post["deter"].shape == (b, t, 7)
        assert rssm.get_feat(post).shape == (b, t, rssm.feat_size) == (b, t, 5 * max(discrete, 1) + 7)
        loss, value = rssm.kl_loss(post, prior)
        assert loss.dim() == 0 and value.shape == (b, t)
        assert rssm.get_dist(post).sample().shape == stoch


@pytest.mark.parametrize("obs,mode", [("pixel", "moe"), ("state", "moe"), ("both", "moe"), ("pixel", "label_cnn"),
                                      ("state", "label_cnn")])
def test_world_model_shapes(obs, mode):
    torch.manual_seed(0)
    b, t, k = 3, 4, 3
    config = tiny_config(obs, k=k, n=3, mode=mode)
    data = batch(b, t, obs, k)
    student = WorldModel(config, A)
    loss, metrics, post = student.loss(data)
    assert loss.dim() == 0 and np.isfinite(loss.item())
    # Metrics stay on the model's device, as 0-d tensors without gradients (read once per log).
    assert {"kl", "reward", "model_loss"} <= set(metrics)
    assert all(torch.is_tensor(v) and v.dim() == 0 and not v.requires_grad for v in metrics.values()), metrics
    assert ("image" in metrics) == (obs != "state") and ("state" in metrics) == (obs != "pixel")
    assert student.dynamics.get_feat(post).shape == (b, t, student.feat_size)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in student.parameters() if p.grad is not None)

    teacher = TeacherWorldModel(config, A)
    loss, metrics, post = teacher.loss(data)
    assert all(f"loss/task{i}" in metrics for i in range(k))
    feats = teacher.task_features(data, [2, 0])
    assert feats.shape == (2, b, t, teacher.feat_size)
    if mode == "moe":
        assert teacher.experts(teacher.preprocess(data)).shape == (b, t, 3, teacher.embed_size)
    else:
        with pytest.raises(ValueError, match="no experts"):
            teacher.experts(teacher.preprocess(data))


def test_imagine_shapes_and_policy_gradient():
    torch.manual_seed(0)
    config = tiny_config("state")
    wm = WorldModel(config, A)
    data = batch(2, 3, "state")
    _, _, post = wm.loss(data)
    weight = torch.zeros(wm.feat_size, A, requires_grad=True)
    feats, states, actions = wm.imagine(lambda f: torch.tanh(f @ weight), post, horizon=5)
    assert feats.shape == (6, 6, wm.feat_size) and actions.shape == (5, 6, A)
    assert states["deter"].shape == (6, 6, config.dyn_deter)
    wm.predict_reward(feats).sum().backward()
    assert weight.grad is not None and weight.grad.abs().sum() > 0  # dynamics backprop reaches the policy


# --- Gram-Schmidt --------------------------------------------------------------------------------

def test_gram_schmidt_orthonormal():
    torch.manual_seed(0)
    for n, e in ((2, 8), (6, 64), (16, 1024)):
        h = torch.relu(torch.randn(32, n, e))
        u = gram_schmidt(h)
        gram = u @ u.transpose(-1, -2)  # (M, N, N)
        assert (gram - torch.eye(n)).abs().max() < 1e-4
        assert mean_abs_cosine(u) < 1e-4


def test_gram_schmidt_degenerate_inputs_finite_gradients():
    torch.manual_seed(0)
    base = torch.relu(torch.randn(8, 1, 32))
    near = base + 1e-3 * torch.rand(8, 1, 32)  # nearly collinear with the first expert
    other = torch.relu(torch.randn(8, 1, 32))
    for h in (torch.cat([base, near, other], 1),
              torch.cat([base, torch.zeros_like(base), other], 1),  # a dead expert
              torch.cat([torch.zeros_like(base), base, other], 1),
              torch.cat([base, base.clone(), other], 1),  # an exact duplicate
              torch.zeros(8, 3, 32)):
        h = h.clone().requires_grad_(True)
        u = gram_schmidt(h)
        (u * torch.randn_like(u)).sum().backward()
        assert torch.isfinite(u).all() and torch.isfinite(h.grad).all()
        norms = u.norm(dim=-1)
        assert (norms <= 1 + 1e-4).all()
        full = norms > 0.999  # the directions that were genuinely new are orthonormal
        gram = u @ u.transpose(-1, -2)
        for m, i, j in itertools.product(range(8), range(3), range(3)):
            if i != j and full[m, i] and full[m, j]:
                assert abs(gram[m, i, j]) < 1e-4, (m, i, j, gram[m, i, j])
    # Near-collinear experts still give a full orthonormal set.
    u = gram_schmidt(torch.cat([base, near, other], 1))
    assert ((u @ u.transpose(-1, -2)) - torch.eye(3)).abs().max() < 1e-4


def test_gram_schmidt_matches_vector_recursion():
    torch.manual_seed(0)
    base = torch.relu(torch.randn(16, 1, 64))
    for h in (torch.relu(torch.randn(16, 6, 64)),
              torch.cat([base, base + 1e-2 * torch.rand(16, 1, 64), torch.relu(torch.randn(16, 4, 64))], 1)):
        h1, h2 = h.clone().requires_grad_(True), h.clone().requires_grad_(True)
        u1, u2 = gram_schmidt(h1), gram_schmidt_vectors(h2)
        torch.testing.assert_close(u1, u2, rtol=1e-4, atol=1e-4)
        probe = torch.randn_like(u1)
        (u1 * probe).sum().backward()
        (u2 * probe).sum().backward()
        torch.testing.assert_close(h1.grad, h2.grad, rtol=1e-3, atol=1e-3)


# --- batched experts -----------------------------------------------------------------------------

def test_batched_conv_experts_match_separate_encoders():
    torch.manual_seed(0)
    experts = BatchedConvExperts(3, depth=4)
    image = torch.rand(5, 64, 64, 3) - 0.5
    out = experts(image)  # (M, N, E)
    for i in range(3):
        torch.testing.assert_close(out[:, i], experts.expert(i)(image), rtol=1e-5, atol=1e-5)


def test_batched_mlp_experts_match_separate_encoders():
    torch.manual_seed(0)
    for norm in (False, True):
        experts = BatchedMLPExperts(4, 39, 16, 8, 2, norm=norm)
        state = torch.randn(7, 39)
        out = experts(state)
        for i in range(4):
            torch.testing.assert_close(out[:, i], experts.expert(i)(state), rtol=1e-5, atol=1e-5)


def test_gate_mixed_tasks_per_sample():
    torch.manual_seed(0)
    moe = OrthogonalMoEEncoder(3, 4, depth=4)
    with torch.no_grad():
        moe.task_gate.normal_()
    feats = torch.randn(4, 2, 3, moe.embed_size)
    task = torch.tensor([3, 0, 2, 0])
    mixed = moe.gate(feats, task)
    for b in range(4):
        torch.testing.assert_close(mixed[b], moe.gate(feats[b:b + 1], int(task[b]))[0])
    weights = moe.gate_weights(torch.arange(4))
    torch.testing.assert_close(weights, torch.softmax(moe.task_gate / moe.temperature, -1))


# --- multi-head dynamics and task views ----------------------------------------------------------

def test_multi_head_rssm_mixed_batch_equals_separate_runs():
    torch.manual_seed(0)
    for discrete in (0, 4):
        rssm = RSSM(A, 12, stoch=5, deter=7, hidden=6, discrete=discrete, n_heads=3)
        embed, action = torch.randn(6, 5, 12), torch.randn(6, 5, A)
        is_first = torch.zeros(6, 5, dtype=torch.bool)
        is_first[:, 0] = True
        is_first[2, 3] = True  # an episode boundary inside one sequence
        task = torch.tensor([0, 1, 2, 2, 1, 0])
        post, prior = rssm.observe(embed, action, is_first, task=task, sample=False)
        for k in range(3):
            rows = (task == k).nonzero().flatten()
            post_k, prior_k = rssm.observe(embed[rows], action[rows], is_first[rows], task=k, sample=False)
            for key in post:
                torch.testing.assert_close(post[key][rows], post_k[key], rtol=1e-5, atol=1e-5)
                torch.testing.assert_close(prior[key][rows], prior_k[key], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("obs,mode", [("pixel", "moe"), ("state", "moe"), ("pixel", "label_cnn")])
def test_task_features_gate_once_equals_recomputing(obs, mode):
    torch.manual_seed(0)
    config = tiny_config(obs, k=3, n=3, mode=mode)
    teacher = TeacherWorldModel(config, A)
    if mode == "moe":
        with torch.no_grad():
            teacher.encoder.task_gate.normal_()
    data = teacher.preprocess(batch(2, 4, obs, 3))
    with torch.no_grad():
        views = teacher.task_features(data, [2, 0, 1])  # experts once, three gates
        for i, k in enumerate([2, 0, 1]):
            post, _ = teacher.observe(data, task=k, sample=False)  # recomputes the encoder
            torch.testing.assert_close(views[i], teacher.dynamics.get_feat(post), rtol=1e-5, atol=1e-5)
        again = teacher.task_features(data, [2, 0, 1])
    torch.testing.assert_close(views, again)  # deterministic posterior means


@pytest.mark.parametrize("mode", ["moe", "label_cnn"])
def test_task_features_never_touch_unlisted_tasks(mode):
    """Pruned task views cost nothing: NaN in every task-specific weight of tasks 1 and 3 (gate
    logits, RSSM heads, one-hot weights) must not reach the features of views 0 and 2."""
    torch.manual_seed(0)
    teacher = TeacherWorldModel(tiny_config("pixel", k=4, n=3, mode=mode), A)
    data = teacher.preprocess(batch(2, 3, "pixel", 4))
    with torch.no_grad():
        clean = teacher.task_features(data, [2, 0])
        for _, param in teacher.task_parameters():
            param[[1, 3]] = float("nan")  # every task_* parameter has the task on its first axis
        poisoned = teacher.task_features(data, [2, 0])
    torch.testing.assert_close(poisoned, clean)


def test_label_cnn_equals_conv_over_tiled_one_hot():
    torch.manual_seed(0)
    enc = LabelCNNEncoder(3, depth=4)
    image = torch.rand(5, 64, 64, 3) - 0.5
    task = torch.tensor([2, 0, 1, 1, 2])
    torch.testing.assert_close(enc.first_conv(image, task), enc.tiled_first_conv(image, task), rtol=1e-5, atol=1e-5)
    seq = image.reshape(5, 1, 64, 64, 3).expand(5, 2, 64, 64, 3)  # (B, T) with one id per sequence
    out = enc({"image": seq}, task)
    for b in range(5):
        torch.testing.assert_close(out[b], enc({"image": seq[b:b + 1]}, int(task[b]))[0], rtol=1e-5, atol=1e-5)


# --- learning ------------------------------------------------------------------------------------

def test_tiny_teacher_overfits():
    torch.manual_seed(0)
    config = tiny_config("pixel", k=2, n=2, kl_free=0.0)
    teacher = TeacherWorldModel(config, A)
    rng = np.random.default_rng(0)
    data = batch(4, 8, "pixel", 2)
    # Structured frames: a task colour that brightens over time, so there is something to learn.
    ramp = np.linspace(0, 1, 8)[None, :, None, None, None]
    colour = np.array([[200, 30, 30], [30, 30, 200]])[data["task"]][:, None, None, None, :]
    data["image"] = np.clip(colour * (0.3 + 0.7 * ramp) + rng.normal(0, 3, (4, 8, 64, 64, 3)), 0, 255).astype(np.uint8)
    data["reward"] = np.tile(np.linspace(0, 1, 8, dtype=np.float32), (4, 1))
    data = teacher.preprocess(data)
    optimizer = torch.optim.Adam(teacher.parameters(), lr=1e-3)
    losses = []
    for _ in range(150):
        loss, _, _ = teacher.loss(data)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], (losses[0], losses[-1])


# --- checkpoints ---------------------------------------------------------------------------------

def test_teacher_save_load_roundtrip_and_mismatch(tmp_path):
    torch.manual_seed(0)
    config = tiny_config("pixel", k=2, n=2)
    teacher = TeacherWorldModel(config, A)
    optimizer = torch.optim.Adam(teacher.parameters())
    data = batch(2, 3, "pixel", 2)
    loss, _, _ = teacher.loss(data)
    loss.backward()
    optimizer.step()
    path = tools.save_checkpoint(tmp_path / "teacher.pt", teacher_payload(teacher, optimizer, 7, config))
    raw = torch.load(path, weights_only=True)  # plain tensors and builtins only
    assert raw["step"] == 7 and raw["source_tasks"] == ["task0", "task1"] and raw["moe_temperature"] == 2.0
    assert raw["encoder_mode"] == "moe" and raw["format_version"] >= 1

    loaded, meta = load_teacher(path, "cpu", expect={"teacher_encoder_mode": "moe", "moe_temperature": 2.0})
    assert meta["step"] == 7 and not loaded.training
    teacher.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded.task_features(data, [0, 1]), teacher.task_features(data, [0, 1]),
                                   rtol=0, atol=0)

    with pytest.raises(tools.CheckpointError, match="moe_temperature"):
        load_teacher(path, "cpu", expect={"moe_temperature": 1.0})
    with pytest.raises(tools.CheckpointError, match="teacher_encoder_mode"):
        load_teacher(path, "cpu", expect={"teacher_encoder_mode": "label_cnn"})
    # Weights that do not fit the stored config (e.g. a label_cnn teacher's config on MoE weights).
    broken = dict(raw)
    broken["config"] = dict(raw["config"], teacher_encoder_mode="label_cnn")
    broken["encoder_mode"] = "label_cnn"
    tools.save_checkpoint(tmp_path / "broken.pt", {k: v for k, v in broken.items() if k != "format_version"})
    with pytest.raises(tools.CheckpointError, match="weights do not fit"):
        load_teacher(tmp_path / "broken.pt")
    # Stored facts that contradict the stored config.
    liar = dict(raw, moe_temperature=1.0)
    tools.save_checkpoint(tmp_path / "liar.pt", {k: v for k, v in liar.items() if k != "format_version"})
    with pytest.raises(tools.CheckpointError, match="moe_temperature"):
        load_teacher(tmp_path / "liar.pt")
    tools.save_checkpoint(tmp_path / "student.pt", {"kind": "student", "model": {}, "step": 0})
    with pytest.raises(tools.CheckpointError, match="not a teacher"):
        load_teacher(tmp_path / "student.pt")


@pytest.mark.skipif(not tools.native_bf16("cpu"), reason="this CPU has no native bf16 (precision 16 is float32 here)")
def test_precision_16_on_a_native_bf16_cpu_is_bf16_and_close_to_float32():
    """`--precision 16` on a CPU with native bf16 runs the teacher's convolutions in bf16 (what makes its
    pretraining faster, docs/benchmarks.md) while the loss and gradients stay close to float32's."""
    torch.manual_seed(0)
    config = tiny_config("pixel", k=2, n=2, cnn_depth=8)
    runs = {}
    for precision in (32, 16):
        torch.manual_seed(0)
        teacher = TeacherWorldModel({**config, "precision": precision}, A)
        seen = []
        hook = teacher.encoder.conv.register_forward_hook(lambda m, i, out: seen.append(out.dtype))
        loss, _, _ = teacher.loss(batch(2, 4, "pixel", 2))
        loss.backward()
        hook.remove()
        grad = torch.cat([p.grad.flatten() for p in teacher.parameters() if p.grad is not None])
        runs[precision] = (loss.detach(), grad, seen[0])
    assert runs[32][2] == torch.float32 and runs[16][2] == torch.bfloat16, (runs[32][2], runs[16][2])
    assert runs[16][0].dtype == torch.float32
    torch.testing.assert_close(runs[16][0], runs[32][0], rtol=2e-2, atol=0)
    cos = torch.nn.functional.cosine_similarity(runs[16][1], runs[32][1], dim=0)
    assert cos > 0.99, cos


@pytest.mark.parametrize("mode", ["moe", "label_cnn"])
def test_bf16_autocast_path(mode):
    """The precision-16 path (bf16 autocast on CUDA), exercised with CPU autocast: dtypes mix
    without errors, losses and features come out float32 and finite."""
    torch.manual_seed(0)
    teacher = TeacherWorldModel(tiny_config("pixel", k=2, n=2, mode=mode, pred_discount=True), A)
    teacher.autocast = lambda: torch.autocast("cpu", dtype=torch.bfloat16)
    data = batch(2, 4, "pixel", 2)
    loss, _, post = teacher.loss(data)
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in teacher.parameters() if p.grad is not None)
    with torch.no_grad():
        feats = teacher.task_features(data, [1, 0])
    assert feats.dtype == torch.float32 and torch.isfinite(feats).all()
    imagined, _, _ = teacher.imagine(lambda f: torch.tanh(f[:, :A]), post, 3, torch.tensor([0, 1]))
    assert torch.isfinite(imagined).all()
    assert teacher.open_loop(data, 2).dtype == np.uint8
