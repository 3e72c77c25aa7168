"""report.html rendered in headless Chromium: it renders, logs no console errors, and the charts are visible.

Needs the Debian package `chromium` (apt-get install -y chromium); skipped cleanly without it.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest

from accbench.compare import run_comparison
from accbench.config import CompareCfg, GateCfg
from accbench.report.html import write_reports
from compare_fixtures import compression_results, write_run

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install -y chromium)")


def chromium(page: Path, *args: str) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                               "--disable-background-networking", "--disable-component-update", "--no-first-run",
                               f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", "--hide-scrollbars",
                               *args, page.as_uri()], capture_output=True, text=True, timeout=120)


def console_messages(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if ":CONSOLE" in line]


def color_share(img: np.ndarray, hex_color: str, tol: float = 0.04) -> float:
    rgb = np.array([int(hex_color[i:i + 2], 16) / 255 for i in (1, 3, 5)])
    return float(np.mean(np.all(np.abs(img[..., :3] - rgb) < tol, axis=-1)))


def test_console_error_detection_works(tmp_path: Path):
    page = tmp_path / "bad.html"
    page.write_text("<html><body><script>console.error('boom'); missingFunction();</script></body></html>")
    r = chromium(page, "--dump-dom")
    assert any("boom" in m for m in console_messages(r.stderr))


def test_report_renders_without_console_errors_and_shows_charts(tmp_path: Path):
    import matplotlib.image

    run = write_run(compression_results(tmp_path), tmp_path / "run")
    from accbench.results import Results

    res = Results.load(run)
    res.compare = run_comparison(res, CompareCfg(gates=[GateCfg(task="mc", metric="acc", max_drop=0.01)],
                                                 bootstrap_resamples=1000))
    write_reports(res, run)
    shot = tmp_path / "shot.png"
    r = chromium(run / "report.html", "--window-size=1280,4200", f"--screenshot={shot}")
    assert r.returncode == 0, r.stderr[-2000:]
    assert console_messages(r.stderr) == []
    img = matplotlib.image.imread(shot)
    assert img.shape[:2] == (4200, 1280)
    # the charts' colours are on screen: matplotlib's orange bars (categories), the red of lost samples
    # (flips), and the failed gate's row background
    assert color_share(img, "#ff7f0e") > 0.002
    assert color_share(img, "#c0392b") > 0.001
    assert color_share(img, "#fdecea") > 0.0005
    assert "1 of 1 gate checks FAILED" in (run / "report.html").read_text()
