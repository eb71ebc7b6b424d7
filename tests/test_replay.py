"""Episode files (round trip, atomic write, bad files skipped) and replay sampling."""
import logging

import numpy as np
import pytest

import replay


def make_episode(length, obs="state", seed=0):
    rng = np.random.default_rng(seed)
    episode = {
        "action": rng.uniform(-1, 1, (length, 4)).astype(np.float32),
        "reward": rng.normal(size=length).astype(np.float32),
        "discount": np.ones(length, np.float32),
        "success": np.zeros(length, np.float32),
        "is_first": np.arange(length) == 0,
        "is_terminal": np.zeros(length, bool),
    }
    episode["action"][0] = 0
    episode["reward"][0] = 0
    if obs in ("state", "both"):
        episode["state"] = rng.normal(size=(length, 39)).astype(np.float32)
    if obs in ("pixel", "both"):
        episode["image"] = rng.integers(0, 255, (length, 64, 64, 3), dtype=np.uint8)
    return episode


@pytest.mark.parametrize("obs", ["state", "pixel", "both"])
def test_round_trip(tmp_path, obs):
    episode = make_episode(12, obs)
    path = replay.save_episode(tmp_path, episode)
    back = replay.load_episode(path)
    assert set(back) == set(episode)
    for key in episode:
        np.testing.assert_array_equal(back[key], episode[key])
        assert back[key].dtype == episode[key].dtype
    assert not list(tmp_path.glob(".*.tmp")), "temp file left behind"


def test_bad_files_are_skipped_with_one_line_each(tmp_path, caplog):
    good = replay.save_episode(tmp_path, make_episode(10))
    data = good.read_bytes()
    (tmp_path / "truncated.npz").write_bytes(data[: len(data) // 2])
    (tmp_path / "garbage.npz").write_bytes(b"not an archive")
    wrong = make_episode(10)
    wrong["reward"] = wrong["reward"][:5]
    np.savez_compressed(tmp_path / "wrong_shape.npz", **wrong)
    missing = make_episode(10)
    del missing["action"]
    np.savez_compressed(tmp_path / "missing_key.npz", **missing)
    with caplog.at_level(logging.WARNING, logger="comet"):
        episodes = replay.load_dir(tmp_path)
    assert list(episodes) == [str(good)]
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 4, messages
    for name in ("truncated.npz", "garbage.npz", "wrong_shape.npz", "missing_key.npz"):
        assert sum(name in m for m in messages) == 1, messages
    assert all("\n" not in m for m in messages)


def test_damaged_compressed_data_and_scalar_reward_are_skipped(tmp_path, caplog):
    good = replay.save_episode(tmp_path, make_episode(40))
    data = bytearray(good.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(64)  # zeroed bytes inside a compressed member, header intact
    (tmp_path / "damaged.npz").write_bytes(bytes(data))
    scalar = make_episode(10)
    scalar["reward"] = np.float32(1.0)
    np.savez_compressed(tmp_path / "scalar_reward.npz", **scalar)
    with caplog.at_level(logging.WARNING, logger="comet"):
        episodes = replay.load_dir(tmp_path)
    assert list(episodes) == [str(good)]
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2 and all("\n" not in m for m in messages), messages
    assert any("damaged.npz" in m for m in messages) and any("scalar_reward.npz" in m for m in messages)


def test_load_dir_filters_by_observation_key(tmp_path, caplog):
    replay.save_episode(tmp_path, make_episode(10, "state"))
    with caplog.at_level(logging.WARNING, logger="comet"):
        assert replay.load_dir(tmp_path, keys=["image"]) == {}
    assert "lacks keys ['image']" in caplog.text


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="episode folder not found"):
        replay.load_dir(tmp_path / "nope")


def test_a_small_side_sample_leaves_the_training_stream_unchanged():
    episodes = [make_episode(n, seed=n) for n in (30, 12)]
    a, b = (replay.Replay(episodes, batch=7, length=10, seed=0) for _ in range(2))
    side = a.sample(batch=4, rng=np.random.default_rng(1))
    assert side["state"].shape == (4, 10, 39)
    for _ in range(3):
        np.testing.assert_array_equal(a.sample()["state"], b.sample()["state"])


def test_sample_shapes_and_windows_inside_episodes():
    episodes = [make_episode(n, seed=n) for n in (30, 12, 5)]
    buffer = replay.Replay(episodes, batch=7, length=10, seed=0)
    assert buffer.num_episodes == 3 and buffer.num_steps == 47
    for _ in range(20):
        batch = buffer.sample()
        assert batch["state"].shape == (7, 10, 39) and batch["action"].shape == (7, 10, 4)
        assert batch["reward"].shape == (7, 10) and batch["is_first"].dtype == bool
        # A window never crosses into another episode: is_first can only be set at its first entry.
        assert not batch["is_first"][:, 1:].any()


def test_sampling_is_uniform_over_window_starts():
    # Episode A has 21 valid starts, B has 1: B's windows should be about 1/22 of the samples.
    episodes = {"a": make_episode(30, seed=1), "b": make_episode(10, seed=2)}
    buffer = replay.Replay(episodes, batch=2000, length=10, seed=0)
    batch = buffer.sample()
    from_b = np.isclose(batch["state"][:, 0, 0], episodes["b"]["state"][0, 0]).sum()
    assert 40 < from_b < 150, from_b


def test_same_seed_same_batches():
    episodes = [make_episode(40, seed=s) for s in range(3)]
    a = replay.Replay(episodes, batch=4, length=8, seed=3)
    b = replay.Replay(episodes, batch=4, length=8, seed=3)
    c = replay.Replay(episodes, batch=4, length=8, seed=4)
    for _ in range(3):
        sa, sb, sc = a.sample(), b.sample(), c.sample()
        np.testing.assert_array_equal(sa["state"], sb["state"])
    assert not np.array_equal(sa["state"], sc["state"])


def test_a_batch_assembled_in_given_arrays_is_the_same_batch():
    episodes = [make_episode(30, "both", seed=i) for i in range(3)]
    plain, into = (replay.Replay(episodes, batch=5, length=7, seed=3) for _ in range(2))
    buffers = {k: np.empty((5, 7, *v.shape[1:]), v.dtype) for k, v in episodes[0].items()}
    for _ in range(3):
        want, got = plain.sample(), into.sample(out=buffers)
        assert set(got) == set(want) and all(got[k] is buffers[k] for k in got)
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])


def test_pinned_batches_off_cuda_are_the_replays_own():
    from replay.pinned import PinnedBatches

    episodes = [make_episode(30, seed=i) for i in range(2)]
    plain, staged = (replay.Replay(episodes, batch=4, length=5, seed=1) for _ in range(2))
    batches = PinnedBatches("cpu")
    assert not batches.pinned  # page-locked memory only pays for a copy to a GPU
    for _ in range(3):
        want, got = plain.sample(), batches.sample(staged)
        assert all(isinstance(v, np.ndarray) and np.array_equal(v, want[k]) for k, v in got.items())


def test_pinned_batches_rotate_two_slots_and_wait_only_for_the_update_that_read_a_slot(monkeypatch):
    """The CUDA path with CUDA's pieces stood in for (no GPU here): page-locked allocation, events, stream."""
    import torch

    from replay import pinned

    log = []

    class Event:
        def record(self, stream):
            self.n = len([e for e in log if e[0] == "record"])
            log.append(("record", self.n))

        def synchronize(self):
            log.append(("wait", self.n))

    monkeypatch.setattr(pinned, "pinned_empty", lambda shape, dtype: torch.empty(shape, dtype=dtype))
    monkeypatch.setattr(torch.cuda, "Event", Event)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: None)
    episodes = [make_episode(30, "both", seed=i) for i in range(2)]
    plain, staged = (replay.Replay(episodes, batch=3, length=6, seed=5) for _ in range(2))
    batches = pinned.PinnedBatches("cuda")
    seen = []
    for i in range(5):
        got, want = batches.sample(staged), plain.sample()
        assert all(torch.is_tensor(v) and np.array_equal(v.numpy(), want[k]) for k, v in got.items())
        seen.append(got["state"].data_ptr())
    assert seen[0] == seen[2] == seen[4] != seen[1] == seen[3]  # two slots, alternating
    # Before batch i (i >= 1) the event of batch i-1's update is recorded; a slot is refilled only after
    # waiting for the event recorded when its previous batch's update had been queued.
    assert log == [("record", 0), ("record", 1), ("wait", 0), ("record", 2), ("wait", 1), ("record", 3), ("wait", 2)]


def test_rng_state_restores_the_sequence():
    episodes = [make_episode(40, seed=s) for s in range(3)]
    a = replay.Replay(episodes, batch=4, length=8, seed=3)
    a.sample()
    state = a.rng_state()
    expected = a.sample()
    b = replay.Replay(episodes, batch=4, length=8, seed=99)
    b.set_rng_state(state)
    np.testing.assert_array_equal(b.sample()["state"], expected["state"])


def test_short_episodes_raise_instead_of_looping():
    buffer = replay.Replay([make_episode(5), make_episode(6)], batch=2, length=10)
    assert not buffer.can_sample()
    with pytest.raises(replay.NotEnoughData, match="longest has 6 entries"):
        buffer.sample()


def test_capacity_drops_oldest_episodes():
    buffer = replay.Replay(batch=2, length=5, capacity=25)
    for seed in range(4):
        buffer.add(make_episode(10, seed=seed), name=f"ep{seed}")
    assert buffer.num_episodes == 2 and buffer.num_steps == 20


def test_sampling_does_not_copy_the_dataset():
    # Ten episodes of 10k entries (~15 MB of state); a batch must cost about B*T entries, not the dataset.
    import tracemalloc

    buffer = replay.Replay([make_episode(10000, seed=s) for s in range(10)], batch=4, length=10, seed=0)
    buffer.sample()
    tracemalloc.start()
    buffer.sample()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 1_000_000, peak


def test_loads_from_folder(tmp_path):
    for seed in range(3):
        replay.save_episode(tmp_path, make_episode(20, seed=seed))
    buffer = replay.Replay(str(tmp_path), batch=2, length=5, seed=0)
    assert buffer.num_episodes == 3
