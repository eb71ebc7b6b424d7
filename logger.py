"""Logger: scalars, images and videos to TensorBoard, scalars and events to `<logdir>/metrics.jsonl`."""
from __future__ import annotations

import json
import math
import pathlib
import time

import numpy as np

from fileio import atomic_write


class Logger:
    """Collects values between `write(step)` calls; one JSON line per write, so `metrics.jsonl` mirrors TensorBoard.

    TensorBoard is opened lazily so that a script that logs nothing leaves no event file.

    `resume_step`: the step a resumed run restarts from. Rows a crashed or interrupted run wrote after its
    last checkpoint are about to be logged again; they are moved to `metrics.superseded.jsonl` (kept, not
    deleted) and TensorBoard purges its events after that step, so each step appears once in both.
    """

    def __init__(self, logdir: str | pathlib.Path, tensorboard: bool = True, resume_step: int | None = None):
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
            for name, value in scalars.items():
                writer.add_scalar(name, value, step)
            for name, value in self._images.items():
                writer.add_image(name, value, step, dataformats="HWC")
            for name, value in self._videos.items():
                writer._get_file_writer().add_summary(_gif_summary(name, value), step)
            writer.flush()
        self._scalars, self._images, self._videos = {}, {}, {}
        return scalars

    def event(self, kind: str, **fields) -> None:
        """Append a non-scalar event (e.g. a pruning decision) to metrics.jsonl."""
        record = {"event": kind, "time": time.time(), **fields}
        with open(self.logdir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record, default=float) + "\n")

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _gif_summary(name: str, frames: np.ndarray, fps: int = 16):
    """A TensorBoard image summary holding an animated GIF (TensorBoard plays it).

    torch's add_video needs moviepy only to make this GIF; PIL, already installed, does it directly.
    """
    import io

    from PIL import Image
    from tensorboard.compat.proto.summary_pb2 import Summary

    T, H, W, _ = frames.shape
    images = [Image.fromarray(frame) for frame in frames]
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
    image = Summary.Image(height=H, width=W, colorspace=3, encoded_image_string=buffer.getvalue())
    return Summary(value=[Summary.Value(tag=name, image=image)])
