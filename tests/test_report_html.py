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


def test_report_with_flips_shows_their_text_recovery_and_provenance(tmp_path: Path):
    """A run with flips both ways: the rendered DOM holds each flipped sample's question, gold answer and both
    models' answers, the recovery table (perplexity inverted) and the provenance block; a screenshot is kept
    under the test's tmp dir for a look (shot.png)."""
    import re
    from html import unescape

    from accbench.results import Provenance, Results

    run = write_run(compression_results(tmp_path), tmp_path / "run")
    res = Results.load(run)
    res.versions = {"accbench": "0.1.0", "torch": "2.x", "transformers": "5.x", "lm-eval": "0.4.13"}
    res.models = {"pretrain": "/models/llama-3-8b", "fake_quant": "/runs/x/models/fake_quant"}
    res.provenance = Provenance(model="/models/llama-3-8b", revision="main", method="gptq",
                                method_options={"weight": {"bit": 4, "group_size": 128}},
                                calibration={"name": "pileval", "n_samples": 128}, seeds={"base": 42},
                                config_sha256="ab" * 32, command=["accbench", "run", "cfg.yaml"],
                                machine={"host": "box", "gpus": "H100 x1"})
    res.compare = run_comparison(res, CompareCfg(gates=[GateCfg(metric="ppl", max_relative_increase=0.05),
                                                        GateCfg(max_kld=0.06)], bootstrap_resamples=1000))
    write_reports(res, run)
    r = chromium(run / "report.html", "--dump-dom")
    assert r.returncode == 0 and console_messages(r.stderr) == []
    dom = unescape(re.sub(r"\s+", " ", r.stdout))
    # what flipped: gen lost 3 and gained 1; each with question, gold, both answers; the full list is linked
    assert "correct → wrong: 3" in dom and "wrong → correct: 1" in dom
    flipped = re.findall(r"<summary>(gen-\d+) \(([01]) → ([01])\)</summary>", dom)
    assert len(flipped) == 4 and sum(1 for _, a, b in flipped if (a, b) == ("1", "0")) == 3
    sid = next(s for s, a, b in flipped if (a, b) == ("1", "0"))
    i = int(sid.split("-")[1])
    block = dom[dom.index(f"<summary>{sid} "):]
    block = block[: block.index("</details>")]
    assert f"Q{i}: what is {i} + {i}?" in block and f"<pre>{2 * i}</pre>" in block  # question, gold
    assert f"{2 * i + 1} <wrong> & more" in block  # the candidate's (escaped, rendered back) answer
    lines = (run / "flips" / "fake_quant__gen__exact_match.jsonl").read_text().splitlines()
    assert len(lines) == 4 and "flips/fake_quant__gen__exact_match.jsonl" in dom
    # recovery: mc acc 0.70 / 0.75; perplexity inverted (baseline / candidate < 100% when it got worse)
    assert "Recovery (candidate ÷ baseline)" in dom
    assert "<td>fake_quant</td><td>mc</td><td>acc</td><td>0.7500</td><td>0.7000</td><td>93.33%</td>" in dom
    ppl = next(c for c in res.compare.comparisons if c.kind == "ppl")
    assert f"{ppl.baseline_value / ppl.candidate_value * 100:.2f}%" in dom
    # provenance
    for text in ("Provenance", "/models/llama-3-8b @ main", "gptq", "bit=4", "pileval", "lm-eval=0.4.13",
                 "accbench run cfg.yaml", "H100 x1", "ab" * 32):
        assert text in dom, text
    # the gates held: no row is tinted although the perplexity change is significant
    assert "all 2 gate checks held" in dom
    assert "<tr class='bad'>" not in r.stdout.replace('"', "'")
    shot = tmp_path / "shot.png"
    r = chromium(run / "report.html", "--window-size=1280,6000", f"--screenshot={shot}")
    assert r.returncode == 0 and shot.stat().st_size > 10_000
