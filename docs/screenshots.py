"""Screenshots of TensorBoard for the README, taken with headless Chromium.

    python docs/screenshots.py --logdir runs/quickstart --out docs/img

Starts TensorBoard on 127.0.0.1 (a free port, nothing else listens), opens each view in headless Chromium
(Debian package `chromium`) and writes one PNG per view. Views are TensorBoard URLs: the dashboard
(`#scalars`, `#images`, `#custom_scalars`, `#text`) and its tag filter.
"""
from __future__ import annotations

import argparse
import pathlib
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parents[1]
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars"]
# file name -> (dashboard, tag filter, run filter, window size)
VIEWS = {
    "tensorboard_distillation.png": ("scalars", r"distill/(weight|relevance_ema)", "comet", (1400, 1000)),
    "tensorboard_state_video.png": ("images", r"eval/policy", "comet", (1400, 900)),
    "tensorboard_custom_scalars.png": ("custom_scalars", "", "", (1400, 1000)),
    "tensorboard_prune_events.png": ("text", "", "comet", (1400, 800)),
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_tensorboard(logdir: pathlib.Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    tensorboard = pathlib.Path(sys.executable).with_name("tensorboard")
    process = subprocess.Popen([str(tensorboard), "--logdir", str(logdir), "--host", "127.0.0.1", "--port",
                                str(port), "--reload_interval", "0"], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(120):
        try:
            # The run list is non-empty once the event files have been read.
            with urllib.request.urlopen(f"{url}/data/runs", timeout=2) as answer:
                if answer.read().strip() not in (b"", b"[]"):
                    return process, url
        except OSError:
            pass
        time.sleep(1)
    process.terminate()
    raise SystemExit(f"TensorBoard did not start on {url}")


def screenshot(chromium: str, url: str, path: pathlib.Path, size: tuple[int, int]) -> None:
    command = [chromium, *CHROMIUM_FLAGS, f"--window-size={size[0]},{size[1]}", "--virtual-time-budget=15000",
               f"--screenshot={path}", url]
    subprocess.run(command, check=True, capture_output=True, timeout=180)
    if not path.is_file():
        raise SystemExit(f"chromium wrote no screenshot for {url}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logdir", required=True, help="TensorBoard root (e.g. a quickstart --root)")
    parser.add_argument("--out", default=str(ROOT / "docs" / "img"))
    parser.add_argument("--views", default=",".join(VIEWS), help="comma list of file names in VIEWS")
    args = parser.parse_args(argv)
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("chromium not found: apt-get install -y chromium")
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    process, url = start_tensorboard(pathlib.Path(args.logdir))
    try:
        for name in args.views.split(","):
            dashboard, tags, runs, size = VIEWS[name]
            query = {"_smoothingWeight": "0"}
            if tags:
                query["tagFilter"] = tags
            if runs:
                query["regexInput"] = runs
            screenshot(chromium, f"{url}/#{dashboard}&{urllib.parse.urlencode(query)}", out / name, size)
            print(f"wrote {out / name}")
    finally:
        process.terminate()
        process.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
