"""Regenerate docs/dashboard.png: serve the dashboard, open the example view in headless Chromium, save a screenshot.

    python scripts/screenshot_dashboard.py                       # synthetic demo stores (LLaVA anyres layout)
    python scripts/screenshot_dashboard.py --root runs/quickstart --before base.zarr --after ko.zarr
"""

from __future__ import annotations

import argparse
import socket
import sys
import tempfile
from pathlib import Path

from apps.launch import launch, wait_until_ready
from apps.screenshot import capture, make_driver

REPO = Path(__file__).resolve().parents[1]
# per view: texts and number of drawn charts that say it has finished drawing
WAIT_FOR = {"example": (["attention on the image"], 2), "overview": (["Behavioural visual dependence per language"], 1)}


def demo_root(folder: Path) -> Path:
    """Synthetic before/after stores, an image and a manifest (the dashboard tests' fixture data)."""
    sys.path.insert(0, str(REPO / "tests" / "apps"))
    import json

    import synthetic as S

    S.write_store(folder / "base.zarr", 200, "llava_anyres", seed=0, visual_scale=1.0, keys=False, grid=6)
    S.write_store(folder / "ko.zarr", 200, "llava_anyres", seed=1, visual_scale=0.3, keys=False, grid=6)
    S.write_image(folder / "data" / "img" / "quad.png", tuple(int(x) for x in S.layout("llava_anyres", 6)["image_size"]))
    with (folder / "data" / "manifest.jsonl").open("w") as fh:
        for i in range(200):
            fh.write(json.dumps({"id": f"ex{i}", "image": "img/quad.png", "prompt": "What colour?", "answer": "red"}) + "\n")
    return folder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, help="ROOT with the stores (default: build synthetic demo stores)")
    ap.add_argument("--before", default="base.zarr")
    ap.add_argument("--after", default="ko.zarr")
    ap.add_argument("--view", default="example")
    ap.add_argument("--params", default="", help="extra query parameters, e.g. '&x=1'")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "dashboard.png")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.root or demo_root(Path(tmp))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        proc = launch(root, port=port, wait=False)
        try:
            wait_until_ready(port, proc=proc)
            driver = make_driver(1500, 1250)
            try:
                url = f"http://127.0.0.1:{port}/?before={args.before}&after={args.after}&view={args.view}{args.params}"
                texts, plots = WAIT_FOR.get(args.view, ([], 0))
                capture(driver, url, texts, args.out, plots=plots)
            finally:
                driver.quit()
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
