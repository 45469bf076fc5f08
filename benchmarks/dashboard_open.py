"""Time the dashboard opening a 5,000-example store pair and drawing its overview (Streamlit AppTest, cold cache).

    PYTHONPATH=. python benchmarks/dashboard_open.py [--n 5000] [--repeat 3] [--no-save]

First runs `probe compare --save` on the pair (as a user would, once), so the overview draws the saved verdict; with
--no-save it offers the verdict on request instead, and that request is timed too. Prints seconds for: the first
(cold) run of the overview, a rerun (warm caches), and the heads view. The machine's load average is printed beside
(timings on a shared machine vary with it). Streamlit's own start-up (component discovery) and the imports of the
views are paid before timing, as a running `probe dashboard` server has paid them before the first page is opened.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "apps"))


def main() -> None:
    import streamlit as st
    import synthetic as S
    from streamlit.testing.v1 import AppTest

    from apps.launch import APP_FILE
    from probe.store import TraceStore

    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--no-save", dest="save", action="store_false", help="no saved comparison: time the verdict on request")
    ap.add_argument("--root", type=Path, help="keep the stores (and the saved comparison) in this folder; reused if there")
    ap.add_argument("--profile", type=Path, help="write a cProfile of the overview's first open to this file")
    args = ap.parse_args()
    # import what the views import before timing: the first open of a fresh server pays this once
    import apps.views.overview  # noqa: F401
    import apps.views.heads  # noqa: F401

    # Streamlit's own one-time set-up (a real server does it when it starts, before any page is opened)
    AppTest.from_string("import streamlit as st\nst.write('warm')").run()

    with tempfile.TemporaryDirectory() as tmp:
        root = args.root or Path(tmp)
        reuse = (root / "after.zarr").exists()
        t = time.perf_counter()
        # attention summary of a real model by default (32 layers × 32 heads); keys and patterns are not read here
        S.LAYERS, S.HEADS = tuple(range(args.layers)), args.heads
        for name, scale in (("before.zarr", 1.0), ("after.zarr", 0.3)) if not reuse else ():
            S.write_store(root / name, args.n, seed=int(scale * 10), visual_scale=scale, keys=False, pattern=False,
                          examples_per_chunk=512)
        print(f"{'reused' if reuse else 'built'} 2 stores of {args.n} examples ({args.layers} layers × {args.heads} heads) "
              f"in {time.perf_counter() - t:.1f} s")
        if args.save and not (reuse and "compare/index" in TraceStore.open(root / "after.zarr").groups()):
            from probe.report import compare

            t = time.perf_counter()
            compare(root / "before.zarr", root / "after.zarr", root / "compare.html", None, save_to=root / "after.zarr")
            print(f"load {os.getloadavg()[0]:.1f} | probe compare --save (once per pair): {time.perf_counter() - t:.1f} s")
        os.environ["VISBLIND_DASHBOARD_ROOT"] = str(root)
        for view in ("overview", "heads"):
            for i in range(args.repeat):
                at = AppTest.from_file(str(APP_FILE), default_timeout=600)
                at.query_params.update(before="before.zarr", after="after.zarr", view=view)
                if i == 0:
                    st.cache_data.clear()
                    st.cache_resource.clear()
                t = time.perf_counter()
                if args.profile and view == "overview" and i == 0:
                    import cProfile

                    cProfile.runctx("at.run()", globals(), {"at": at}, str(args.profile))
                else:
                    at.run()
                dt = time.perf_counter() - t
                assert not at.exception, at.exception
                if view == "overview" and args.save:
                    assert any("attention (H1)" in m.value for m in at.markdown), "the saved verdict is not shown"
                t2 = time.perf_counter()
                at.run()
                print(f"load {os.getloadavg()[0]:.1f} | {view}: open + draw {dt:.2f} s (run {i}, caches cleared before run 0); rerun {time.perf_counter() - t2:.2f} s")
                buttons = [b for b in at.button if b.key == "verdict_button"]
                if buttons:
                    t3 = time.perf_counter()
                    buttons[0].click().run()
                    assert not at.exception, at.exception
                    print(f"load {os.getloadavg()[0]:.1f} | overview: verdict on request {time.perf_counter() - t3:.2f} s (run {i})")


if __name__ == "__main__":
    main()
