"""Logger backends: events and chart layouts in TensorBoard, and the optional Weights & Biases backend in
offline mode (a real wandb run, nothing uploaded)."""
import json

import numpy as np
import pytest

import configs
import tools
from tools import Logger, wandb_settings


def tensorboard_tags(logdir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance={"tensors": 0, "images": 0, "scalars": 0})
    acc.Reload()
    return acc


def test_events_show_in_tensorboard_and_layout_groups_charts(tmp_path):
    logger = Logger(tmp_path)
    logger.layout({"gates": {"gate weights of metaworld_reach": [r"gate/metaworld_reach/expert\d+"]}})
    logger.scalar("gate/metaworld_reach/expert0", 0.25)
    logger.write(5)
    logger.event("prune", step=5, update=3, task="metaworld_push", ema=0.01, active=["metaworld_reach"])
    logger.close()
    acc = tensorboard_tags(tmp_path)
    texts = acc.Tensors("events/prune/text_summary")
    assert texts[0].step == 5 and b"task=metaworld_push" in texts[0].tensor_proto.string_val[0]
    from tensorboard.plugins.custom_scalar import layout_pb2, metadata

    layout = layout_pb2.Layout.FromString(acc.Tensors(metadata.CONFIG_SUMMARY_TAG)[0].tensor_proto.string_val[0])
    chart = layout.category[0].chart[0]
    assert layout.category[0].title == "gates" and chart.multiline.tag == [r"gate/metaworld_reach/expert\d+"]
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["event"] == "prune" and lines[-1]["task"] == "metaworld_push"


def test_wandb_is_off_unless_asked():
    assert wandb_settings(configs.load_config([])) is None
    settings = wandb_settings(configs.load_config(["--wandb", "True", "--wandb_mode", "offline"]))
    assert settings["mode"] == "offline" and settings["project"] == "comet" and settings["config"]["wandb"] is True
    with pytest.raises(tools.UsageError, match="--wandb_mode must be online | offline"):
        wandb_settings(configs.load_config(["--wandb", "True", "--wandb_mode", "cloud"]))


@pytest.mark.slow
def test_wandb_offline_run_holds_scalars_videos_and_events(tmp_path):
    settings = wandb_settings({"wandb": True, "wandb_mode": "offline", "wandb_project": "comet-test", "seed": 3})
    logger = Logger(tmp_path, wandb=settings)
    logger.scalar("train/model_loss", 1.25)
    logger.video("eval/policy", np.random.default_rng(0).integers(0, 255, (4, 16, 16, 3), dtype=np.uint8))
    logger.write(10)
    logger.event("prune", step=10, task="metaworld_push")
    logger.scalar("train/model_loss", 0.75)
    logger.write(20)
    logger.close()
    run_id = (tmp_path / "wandb_id").read_text().strip()
    runs = sorted((tmp_path / "wandb").glob(f"offline-run-*-{run_id}"))
    assert len(runs) == 1
    record = (runs[0] / f"run-{run_id}.wandb").read_bytes()
    for text in (b"train/model_loss", b"1.25", b"0.75", b"eval/policy", b"events/prune"):
        assert text in record, text
    gifs = list((runs[0] / "files" / "media" / "videos").rglob("*.gif"))
    assert len(gifs) == 1 and gifs[0].read_bytes()[:6] == b"GIF89a"
    assert not list((tmp_path / "wandb").glob("*.gif"))  # the temporary copies are gone
    # TensorBoard and metrics.jsonl are unchanged by the second backend.
    assert [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()
            if "event" not in line] == [10, 20]

    # A resumed run continues the same W&B run.
    logger = Logger(tmp_path, wandb=settings, resume_step=20)
    logger.scalar("train/model_loss", 0.5)
    logger.write(30)
    logger.close()
    assert (tmp_path / "wandb_id").read_text().strip() == run_id
    records = [path.read_bytes() for path in (tmp_path / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb")]
    assert any(b"0.5" in r and b"train/model_loss" in r for r in records)


def test_open_loop_rows_are_labelled():
    from tools import label_rows

    strip = np.full((2, 5, 3 * 16, 16, 3), 128, np.uint8)  # (B, T, 3H, W, 3): truth / model / error
    out = label_rows(strip, ("truth", "model", "error"), width=40)
    assert out.shape == (2, 5, 48, 56, 3) and (out[..., 40:, :] == 128).all()
    column = out[0, 0, :, :40]
    rows = [column[i * 16:(i + 1) * 16] for i in range(3)]
    assert all((row < 128).any() for row in rows)  # dark text in every row
    assert not (rows[0] == rows[1]).all() and not (rows[1] == rows[2]).all()  # three different words
