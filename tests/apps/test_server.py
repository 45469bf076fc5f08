"""The real server: headless Chromium over overview + example view; security (ROOT only, loopback only)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from apps.launch import launch, wait_until_ready
from apps.paths import PathRefused, discover, resolve_under_root
from apps.screenshot import capture, chromium_paths, make_driver


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(dash_root):
    port = _free_port()
    proc = launch(dash_root, port=port, wait=False)
    try:
        wait_until_ready(port, proc=proc, timeout=90)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _listening(port: int) -> list[str]:
    """Local addresses (hex, from /proc/net/tcp{,6}) of sockets in LISTEN state on ``port``."""
    out = []
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(name):
            continue
        for line in Path(name).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            addr, p = local.split(":")
            if state == "0A" and int(p, 16) == port:
                out.append(addr)
    return out


def test_server_listens_on_loopback_only(server):
    addrs = _listening(server)
    assert addrs, "no listening socket found for the dashboard port"
    # 127.0.0.1 little-endian hex, or ::1 in /proc/net/tcp6
    assert set(addrs) <= {"0100007F", "00000000000000000000000001000000"}, addrs


@pytest.mark.skipif(chromium_paths() is None, reason="needs Debian's chromium + chromium-driver (scripts/setup.sh installs them)")
def test_browser_overview_and_example(server, tmp_path):
    driver = make_driver()
    try:
        base = f"http://127.0.0.1:{server}/?before=before.zarr&after=after.zarr"
        text = capture(driver, base + "&view=overview", ["Verdict", "behaviour (en)", "Behavioural visual dependence"],
                       tmp_path / "overview.png")
        assert "attention (H1)" in text
        text = capture(driver, base + "&view=example", ["attention on the image", "image: data/img/quad.png"],
                       tmp_path / "example.png")
        assert "before: attention on the image" in text and "after: attention on the image" in text
        from selenium.webdriver.common.by import By

        assert len(driver.find_elements(By.CSS_SELECTOR, ".js-plotly-plot")) >= 2  # the two painted images
        refused = capture(driver, f"http://127.0.0.1:{server}/?before=../../etc", ["refused"], tmp_path / "refused.png")
        assert "contains '..'" in refused
    finally:
        driver.quit()
    for name in ("overview.png", "example.png"):
        assert (tmp_path / name).stat().st_size > 10_000


def test_paths_outside_root_refused(dash_root, tmp_path_factory):
    outside = tmp_path_factory.mktemp("outside")
    import synthetic as S

    S.write_store(outside / "secret.zarr", 4, eval_group=False)
    link = dash_root / "link.zarr"
    if not link.exists():
        link.symlink_to(outside / "secret.zarr")
    for bad in ("../x.zarr", "a/../../x.zarr", str(outside / "secret.zarr"), "link.zarr"):
        with pytest.raises(PathRefused, match="refused"):
            resolve_under_root(dash_root, bad)
    assert resolve_under_root(dash_root, "before.zarr") == (dash_root / "before.zarr").resolve()
    assert "link.zarr" not in discover(dash_root)["stores"]
    link.unlink()


def test_app_refuses_outside_root_with_one_line(app, dash_root, tmp_path_factory):
    outside = tmp_path_factory.mktemp("outside2")
    import synthetic as S

    S.write_store(outside / "secret.zarr", 4, eval_group=False)
    for bad in ("../secret.zarr", str(outside / "secret.zarr")):
        at = app(before=bad)
        at.run()
        assert not at.exception, at.exception
        assert len(at.error) == 1 and at.error[0].value.startswith("refused:") and "\n" not in at.error[0].value
        assert not at.dataframe  # nothing of the store was shown


def test_module_entry_refuses_missing_root_in_one_line(tmp_path):
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-m", "apps", str(tmp_path / "missing")], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [f"error: dashboard ROOT is not a folder: {tmp_path / 'missing'}"]
