"""``avseg report RUN``: a self-contained HTML page, checked by parsing it and by rendering it in headless
Chromium (skipped when the ``chromium`` package is absent)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

DATA_URI = re.compile(r'<img src="data:image/png;base64,[A-Za-z0-9+/=]+"')


@pytest.fixture(scope="module")
def tiny_run(tiny_ws_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the session's tiny WS-AVS run (the report writes eval/ and report.html into it)."""
    import shutil

    return Path(shutil.copytree(tiny_ws_run, tmp_path_factory.mktemp("tiny-report") / "run"))


@pytest.fixture(scope="module")
def report(tiny_run: Path) -> Path:
    from avseg.inference.report import write_report

    assert not (tiny_run / "eval").exists()
    return write_report(tiny_run, split="test", device="cpu")


def test_report_is_self_contained_with_both_protocols(report: Path, tiny_run: Path) -> None:
    assert report == tiny_run / "report.html"
    page = report.read_text(encoding="utf-8")
    # Missing metrics were computed through runner.evaluate_run, and the table shows the files' numbers.
    for protocol in ("clean", "avsbench"):
        result = json.loads((tiny_run / "eval" / f"test-{protocol}.json").read_text())
        assert f"<td>{protocol}</td><td>{100 * result['miou']:.2f}</td><td>{100 * result['fscore']:.2f}</td>" in page
    images = DATA_URI.findall(page)
    # 2 test videos (one strip each) + worst/best pairs over their 10 frames + the pseudo-mask contact sheet
    assert len(images) >= 2 + 2 * 6 + 1
    assert "Pseudo masks" in page and "Worst" in page and "Best" in page
    assert not re.search(r'src="(?!data:)', page) and "http://" not in page and "https://" not in page
    assert "<script" not in page


def test_report_reuses_existing_metrics(report: Path, tiny_run: Path, tmp_path: Path) -> None:
    from avseg.inference.report import write_report

    clean = tiny_run / "eval" / "test-clean.json"
    stamped = json.loads(clean.read_text()) | {"miou": 0.123456}
    clean.write_text(json.dumps(stamped))
    out = write_report(tiny_run, split="test", out=tmp_path / "r.html", device="cpu")
    assert "<td>clean</td><td>12.35</td>" in out.read_text(encoding="utf-8")
    assert len(DATA_URI.findall(out.read_text(encoding="utf-8"))) >= 15  # pictures from their own pass


def test_report_command_line(tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from test_segment import run_cli

    out = tmp_path / "cli.html"
    assert run_cli(["report", str(tiny_run), "--out", str(out), "--device", "cpu"]) == 0
    assert out.is_file() and str(out) in capsys.readouterr().out


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _chromium_args(tmp_path: Path, name: str) -> list[str]:
    return [
        _chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={tmp_path / name}",
    ]  # fmt: skip


@pytest.mark.skipif(_chromium() is None, reason="chromium not installed (Debian package 'chromium')")
def test_report_renders_in_headless_chromium(report: Path, tmp_path: Path) -> None:
    page = report.read_text(encoding="utf-8")
    expected = len(DATA_URI.findall(page))
    # A copy with a probe script: the browser itself counts images that decoded (complete, naturalWidth > 0).
    probe = tmp_path / "probe.html"
    script = (
        "<script>addEventListener('load',()=>{const i=[...document.images];document.title='IMAGES '+i.length+' DECODED '"
        "+i.filter(x=>x.complete&&x.naturalWidth>0&&x.src.startsWith('data:image/png')).length+' TABLES '+document.querySelectorAll('table').length;});</script>"
    )
    probe.write_text(page.replace("</body>", script + "</body>"), encoding="utf-8")
    dom = subprocess.run([*_chromium_args(tmp_path, "dom"), "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    title = re.search(r"<title>IMAGES (\d+) DECODED (\d+) TABLES (\d+)</title>", dom.stdout)
    assert title, dom.stdout[:500]
    assert int(title.group(1)) == expected and int(title.group(2)) == expected and int(title.group(3)) >= 2

    shot = tmp_path / "shot.png"
    run = subprocess.run([*_chromium_args(tmp_path, "shot"), "--window-size=1000,1400", f"--screenshot={shot}", report.as_uri()], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and shot.is_file(), run.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=np.float32)
    assert pixels.std() > 20  # not blank: text, tables and pictures
    colourful = (pixels.max(axis=2) - pixels.min(axis=2)) > 60
    assert colourful.mean() > 0.02  # the overlays (red / green) are drawn, not just black text on white


def test_report_shows_whether_the_model_listens(report: Path, tiny_run: Path) -> None:
    page = report.read_text(encoding="utf-8")
    assert "Does the model listen?" in page and "audio dependence" in page and "swap IoU" in page
    assert (tiny_run / "eval" / "listen-test.json").is_file()  # computed when missing, then reused
    assert page.count("data:image/png;base64,") >= 2
