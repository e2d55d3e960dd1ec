import numpy as np
from scipy import ndimage

from benchmarks.shapes import clutter
from flowalign.evaluation.shapes import load_prompts
from reward_models.shapes import detector, render


def test_clutter_stats_separate_renders_from_noise():
    metas = load_prompts("held-out")[:12]
    clean = clutter.clutter_stats([render.render_prompt(m, i)[0] for i, m in enumerate(metas)], metas)
    assert clean["max"] == 0.0 and clean["correct_with_rule"] == clean["correct_without_rule"] == 1.0
    rng = np.random.default_rng(0)
    single = {"tag": "single_object", "include": [{"class": "circle", "count": 1}], "prompt": "a photo of a circle"}
    smooth = []
    for _ in range(8):
        x = ndimage.gaussian_filter(rng.normal(size=(32, 32, 3)), sigma=(1.0, 1.0, 0))
        smooth.append(np.clip(153 + x / x.std() * 90, 0, 255).astype(np.uint8))
    noisy = clutter.clutter_stats(smooth, [single] * 8)
    assert noisy["p50"] > detector.MAX_CLUTTER and noisy["share_above_max_clutter"] > 0.5
    assert noisy["correct_with_rule"] <= noisy["correct_without_rule"]
    assert set(clean) == set(noisy) >= {"mean", "p50", "p95", "p99", "max", "n"}
