"""Logger: scalars, images and videos to TensorBoard, scalars and events to `<logdir>/metrics.jsonl`, and
optionally everything to Weights & Biases as a second backend."""
from __future__ import annotations

import json
import math
import os
import pathlib
import tempfile
import time
import uuid
from typing import Sequence

import numpy as np

from fileio import atomic_write, naming_errors


class Logger:
    """Collects values between `write(step)` calls; one JSON line per write, so `metrics.jsonl` mirrors TensorBoard.

    TensorBoard is opened lazily so that a script that logs nothing leaves no event file.

    `resume_step`: the step a resumed run restarts from. Rows a crashed or interrupted run wrote after its
    last checkpoint are about to be logged again; they are moved to `metrics.superseded.jsonl` (kept, not
    deleted) and TensorBoard purges its events after that step, so each step appears once in both.

    `wandb`: settings of the optional Weights & Biases backend (`wandb_settings(config)`; None: off).

    `layout(charts)` groups tags into one TensorBoard chart each (Custom Scalars tab), e.g. one chart per
    task for the teacher's gate weights instead of one card per task and expert.
    """

    def __init__(self, logdir: str | pathlib.Path, tensorboard: bool = True, resume_step: int | None = None,
                 wandb: dict | None = None):
        self.logdir = pathlib.Path(logdir)
        self.logdir.mkdir(parents=True, exist_ok=True)
        self._use_tb = tensorboard
        self._purge_step = None
        if resume_step is not None:
            self._purge_step = int(resume_step) + 1
            self._set_aside_rows_after(int(resume_step))
        self._writer = None
        self._scalars: dict[str, float] = {}
        self._images: dict[str, np.ndarray] = {}
        self._videos: dict[str, np.ndarray] = {}
        self._last_time = None
        self._last_step = None
        self._wandb = WandbBackend(self.logdir, wandb, resume_step) if wandb else None

    @property
    def writer(self):
        if self._writer is None and self._use_tb:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.logdir), max_queue=1000, purge_step=self._purge_step)
        return self._writer

    def _set_aside_rows_after(self, step: int) -> None:
        """Move metrics.jsonl rows with a step after `step` to metrics.superseded.jsonl (atomic rewrite)."""
        path = self.logdir / "metrics.jsonl"
        if not path.is_file():
            return
        keep, later = [], []
        for line in path.read_text().splitlines(keepends=True):
            try:
                row_step = json.loads(line).get("step")
            except (json.JSONDecodeError, AttributeError):
                row_step = None  # a torn last line of a killed run: set aside, not parsed
                later.append(line if line.endswith("\n") else line + "\n")
                continue
            (later if isinstance(row_step, (int, float)) and row_step > step else keep).append(line)
        if not later:
            return
        with open(self.logdir / "metrics.superseded.jsonl", "a") as f:
            f.writelines(later)
        text = "".join(keep).encode()
        atomic_write(path, lambda f: f.write(text))

    def scalar(self, name: str, value) -> None:
        self._scalars[name] = float(value)

    def scalars(self, values: dict, prefix: str = "") -> None:
        for name, value in values.items():
            self.scalar(prefix + name, value)

    def image(self, name: str, value: np.ndarray) -> None:
        """uint8 (H, W, 3)."""
        value = np.asarray(value)
        assert value.ndim == 3 and value.shape[-1] in (1, 3), value.shape
        self._images[name] = value

    def video(self, name: str, value: np.ndarray) -> None:
        """uint8 (T, H, W, 3), or (B, T, H, W, 3) tiled side by side."""
        value = np.asarray(value)
        if value.ndim == 5:
            B, T, H, W, C = value.shape
            value = value.transpose(1, 2, 0, 3, 4).reshape(T, H, B * W, C)
        assert value.ndim == 4 and value.shape[-1] == 3, value.shape
        self._videos[name] = value

    def fps(self, step: int) -> float:
        """Steps per second since the previous call."""
        now = time.time()
        if self._last_time is None:
            self._last_time, self._last_step = now, step
            return 0.0
        rate = (step - self._last_step) / max(now - self._last_time, 1e-9)
        self._last_time, self._last_step = now, step
        return rate

    def write(self, step: int) -> dict:
        """Flush pending values at `step`; returns the scalars written."""
        scalars = self._scalars
        if scalars:
            record = {"step": int(step), "time": time.time()}
            record.update({k: (v if math.isfinite(v) else str(v)) for k, v in scalars.items()})
            with open(self.logdir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
        writer = self.writer
        if writer is not None:
            with self._naming_disk_errors():
                for name, value in scalars.items():
                    writer.add_scalar(name, value, step)
                for name, value in self._images.items():
                    writer.add_image(name, value, step, dataformats="HWC")
                for name, value in self._videos.items():
                    writer._get_file_writer().add_summary(_gif_summary(name, value), step)
                writer.flush()
        if self._wandb is not None:
            self._wandb.write(step, scalars, self._images, self._videos)
        self._scalars, self._images, self._videos = {}, {}, {}
        return scalars

    def event(self, kind: str, **fields) -> None:
        """Append a non-scalar event (e.g. a pruning decision) to metrics.jsonl, and show it in TensorBoard's
        Text tab (tag `events/<kind>`, at the event's `step` when it has one) and in W&B."""
        record = {"event": kind, "time": time.time(), **fields}
        line = json.dumps(record, default=float)
        with open(self.logdir / "metrics.jsonl", "a") as f:
            f.write(line + "\n")
        text = ", ".join(f"{k}={v}" for k, v in fields.items())
        step = fields.get("step")
        if self.writer is not None:
            self.writer.add_text(f"events/{kind}", text, int(step) if isinstance(step, (int, float)) else None)
            self.writer.flush()
        if self._wandb is not None:
            self._wandb.event(kind, text)

    def layout(self, charts: dict[str, dict[str, list[str]]]) -> None:
        """TensorBoard Custom Scalars layout: {category: {chart title: [tag regex, ...]}}, one chart per title."""
        if self.writer is not None:
            self.writer.add_custom_scalars({category: {title: ["Multiline", tags] for title, tags in group.items()}
                                            for category, group in charts.items()})

    def _naming_disk_errors(self):
        """TensorBoard writes in a thread and re-raises its disk errors (a full disk) without a file name."""
        return naming_errors(f"{self.logdir} (TensorBoard events)")

    def close(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            with self._naming_disk_errors():
                writer.close()
        if self._wandb is not None:
            self._wandb.close()
            self._wandb = None


# --- Weights & Biases ------------------------------------------------------------------------------

def wandb_settings(config) -> dict | None:
    """The W&B backend's settings from a config (keys `wandb`, `wandb_project`, `wandb_mode`), None when off."""
    get = config.get if isinstance(config, dict) else lambda key, default=None: getattr(config, key, default)
    if not get("wandb", False):
        return None
    mode = str(get("wandb_mode", "online"))
    if mode not in ("online", "offline"):
        from configs import ConfigError

        raise ConfigError(f"--wandb_mode must be online | offline, got '{mode}'")
    return {"project": str(get("wandb_project", "comet")), "mode": mode,
            "config": dict(config) if isinstance(config, dict) else None}


class WandbBackend:
    """Mirrors the Logger's values into one W&B run per logdir.

    The run id is kept in `<logdir>/wandb_id`, so a resumed training run continues the same W&B run; W&B's
    own files go to `<logdir>/wandb/` (offline runs are uploaded later with `wandb sync <logdir>/wandb`).
    Videos are passed to W&B as the same GIFs TensorBoard gets (no moviepy needed).
    """

    def __init__(self, logdir: pathlib.Path, settings: dict, resume_step: int | None):
        try:
            import wandb
        except ImportError:
            raise RuntimeError("--wandb True needs the wandb package: pip install wandb (see requirements.txt)") from None
        self._wandb = wandb
        self._logdir = logdir
        id_file = logdir / "wandb_id"
        run_id = id_file.read_text().strip() if id_file.is_file() else uuid.uuid4().hex[:12]
        id_file.write_text(run_id + "\n")
        (logdir / "wandb").mkdir(exist_ok=True)
        self.run = wandb.init(project=settings["project"], mode=settings["mode"], id=run_id, resume="allow",
                              name=logdir.name, dir=str(logdir), config=settings.get("config"), reinit="finish_previous")
        # A resumed run logs again from its checkpoint step; W&B drops steps below its last one.
        self._last_step = -1 if resume_step is None else int(resume_step)

    def write(self, step: int, scalars: dict, images: dict, videos: dict) -> None:
        wandb = self._wandb
        data: dict = {k: v for k, v in scalars.items()}
        data.update({k: wandb.Image(v) for k, v in images.items()})
        paths = []
        for name, frames in videos.items():
            handle, path = tempfile.mkstemp(suffix=".gif", dir=self._logdir / "wandb")
            with os.fdopen(handle, "wb") as f:
                f.write(gif_bytes(frames))
            paths.append(path)
            data[name] = wandb.Video(path, format="gif")
        if data:
            self.run.log(data, step=max(int(step), self._last_step))
            self._last_step = max(int(step), self._last_step)
        for path in paths:  # W&B copied them into its run folder while logging
            os.unlink(path)

    def event(self, kind: str, text: str) -> None:
        self.run.log({f"events/{kind}": self._wandb.Html(f"<pre>{text}</pre>")}, commit=False)

    def close(self) -> None:
        self.run.finish()
        # Stopping W&B's service process flushes the run file now (offline runs are complete on return).
        self._wandb.teardown()



def label_rows(video: np.ndarray, labels: Sequence[str], width: int = 40) -> np.ndarray:
    """Prepend a label column to a video made of `len(labels)` stacked rows (e.g. an open-loop strip of
    truth / model / error): uint8 (..., T, R*H, W, 3) -> (..., T, R*H, width + W, 3)."""
    from PIL import Image, ImageDraw

    video = np.asarray(video)
    rows, height = len(labels), video.shape[-3]
    assert height % rows == 0, f"{height} pixel rows do not split into {rows} labelled rows"
    column = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(column)
    step = height // rows
    for i, label in enumerate(labels):
        draw.text((2, i * step + step // 2 - 5), label, fill=(0, 0, 0))
    column = np.broadcast_to(np.asarray(column), video.shape[:-3] + (height, width, 3))
    return np.concatenate([column, video], axis=-2)


def gif_bytes(frames: np.ndarray, fps: int = 16) -> bytes:
    """An animated GIF of uint8 (T, H, W, 3) frames.

    torch's add_video (and W&B's Video from arrays) need moviepy only to make this GIF; PIL does it directly.
    """
    import io

    from PIL import Image

    images = [Image.fromarray(frame) for frame in frames]
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
    return buffer.getvalue()


def _gif_summary(name: str, frames: np.ndarray, fps: int = 16):
    """A TensorBoard image summary holding an animated GIF (TensorBoard plays it)."""
    from tensorboard.compat.proto.summary_pb2 import Summary

    T, H, W, _ = frames.shape
    image = Summary.Image(height=H, width=W, colorspace=3, encoded_image_string=gif_bytes(frames, fps))
    return Summary(value=[Summary.Value(tag=name, image=image)])
