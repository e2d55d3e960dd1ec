from html.parser import HTMLParser

import numpy as np
import pytest
import torch

from benchmarks.screenshot import find_browser
from flowalign.report import write_report


class _Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.imgs, self.cards, self.cells = [], [], []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.imgs.append(a["src"])
        if tag == "div" and "card" in a.get("class", ""):
            self.cards.append(a["class"])

    def handle_data(self, data):
        self.cells.append(data)


def test_report_lists_the_summary_and_every_image_failures_first(tmp_path):
    images = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    items = [{"caption": "a red circle", "correct": True}, {"caption": "two squares", "correct": False, "details": "count"},
             {"caption": "a <b> circle", "correct": True}, {"caption": "a blue square", "correct": False}]
    path = write_report(str(tmp_path), "eval", {"overall": 0.5, "tasks": {"colors": 0.25}}, images, items)
    p = _Collect()
    p.feed(open(path).read())
    assert p.cards == ["card fail", "card fail", "card pass", "card pass"]
    assert p.imgs == ["images/00001.png", "images/00003.png", "images/00000.png", "images/00002.png"]
    assert all((tmp_path / s).is_file() for s in p.imgs)
    assert "overall" in p.cells and "0.500" in p.cells and "tasks: colors" in p.cells
    assert any("a <b> circle" in c for c in p.cells)  # escaped in the page, text intact
    with pytest.raises(ValueError, match="one item per image"):
        write_report(str(tmp_path), "eval", {}, images, items[:3])


def test_eval_shapes_writes_the_report(tiny_sd3_dir, tmp_path):
    from flowalign.cli import main

    out = tmp_path / "ev"
    assert main(["eval", "shapes", "--model", tiny_sd3_dir, "--per-task", "1", "--images-per-prompt", "1",
                 "--steps", "2", "--max-sequence-length", "8", "--out", str(out)]) == 0
    page = (out / "report.html").read_text()
    assert page.count("<img") == 6 and "GenEval-shapes evaluation" in page


@pytest.mark.skipif(find_browser() is None,
                    reason="Chromium is not installed (apt-get install chromium)")
def test_report_screenshot_in_headless_chromium(tmp_path):
    """The page opens in a real browser: the screenshot shows the table (dark text on white) and the
    red-bordered failure cards with their images."""
    from PIL import Image

    from benchmarks.screenshot import screenshot
    from flowalign.report import write_report

    imgs = torch.zeros(3, 3, 16, 16)
    imgs[:, 2, 4:12, 4:12] = 1.0  # a blue square on black
    write_report(str(tmp_path), "shot", {"overall": 0.333}, imgs,
                 [{"caption": f"image {i}", "correct": i == 0} for i in range(3)])
    png = screenshot(str(tmp_path / "report.html"), str(tmp_path / "shot.png"), width=800, height=600)
    arr = np.asarray(Image.open(png).convert("RGB")).astype(int)
    assert arr.shape == (600, 800, 3)
    white = (arr.min(-1) > 240).mean()
    blue = ((arr[..., 2] > 200) & (arr[..., 0] < 60) & (arr[..., 1] < 60)).sum()
    red = ((arr[..., 0] > 150) & (arr[..., 1] < 90) & (arr[..., 2] < 90)).sum()
    dark = (arr.max(-1) < 60).mean()
    assert white > 0.5 and blue > 3 * 100 and red > 100 and dark > 0.01
