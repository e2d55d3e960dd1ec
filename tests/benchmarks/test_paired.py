import json

import pytest

from benchmarks.shapes import paired


def _write(folder, correct):
    folder.mkdir()
    rows = [{"prompt_index": i, "image_index": j, "prompt": f"p{i}", "tag": "counting" if i < 2 else "colors",
             "correct": c} for (i, j), c in correct.items()]
    (folder / "results.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return str(folder)


def test_paired_difference_and_error_by_hand(tmp_path, capsys):
    base = {(0, 0): 0, (0, 1): 0, (1, 0): 1, (1, 1): 0, (2, 0): 1, (2, 1): 1}
    other = {(0, 0): 1, (0, 1): 1, (1, 0): 1, (1, 1): 1, (2, 0): 1, (2, 1): 0}
    a, b = _write(tmp_path / "a", base), _write(tmp_path / "b", other)
    r = paired.main([a, b, "--out", str(tmp_path / "p.json")])[b]
    # per-prompt differences 1, 0.5, -0.5: mean 1/3, sample sd sqrt(7/12), error sd / sqrt(3)
    assert r["difference"] == pytest.approx(1 / 3) and r["stderr"] == pytest.approx((7 / 12) ** 0.5 / 3 ** 0.5)
    assert (r["base"], r["other"], r["images"], r["prompts"]) == (pytest.approx(0.5), pytest.approx(5 / 6), 6, 3)
    assert r["tasks"] == {"colors": pytest.approx(-0.5), "counting": pytest.approx(0.75)}
    assert "+0.333" in capsys.readouterr().out and json.loads((tmp_path / "p.json").read_text())["comparisons"][b]


def test_paired_refuses_different_prompts_and_missing_folders(tmp_path):
    a = _write(tmp_path / "a", {(0, 0): 1})
    c = tmp_path / "c"
    c.mkdir()
    (c / "results.jsonl").write_text(json.dumps({"prompt_index": 0, "image_index": 0, "prompt": "other", "tag": "colors",
                                                 "correct": 1}) + "\n")
    with pytest.raises(ValueError, match="different prompts"):
        paired.main([a, str(c)])
    with pytest.raises(FileNotFoundError, match="results.jsonl"):
        paired.main([a, str(tmp_path)])


def test_mean_over_folders_averages_each_prompts_difference(tmp_path, capsys):
    base = {(0, 0): 0, (0, 1): 0, (1, 0): 1, (1, 1): 0, (2, 0): 1, (2, 1): 1}
    one = {(0, 0): 1, (0, 1): 1, (1, 0): 1, (1, 1): 1, (2, 0): 1, (2, 1): 0}
    two = {(0, 0): 0, (0, 1): 1, (1, 0): 1, (1, 1): 0, (2, 0): 1, (2, 1): 1}
    a, b, c = _write(tmp_path / "a", base), _write(tmp_path / "b", one), _write(tmp_path / "c", two)
    paired.main([a, b, c, "--mean", "--out", str(tmp_path / "p.json")])
    m = json.loads((tmp_path / "p.json").read_text())["mean"]
    # per-prompt differences: one (1, 0.5, -0.5), two (0.5, 0, 0); means 0.75, 0.25, -0.25
    # -> mean 0.25, sample sd 0.5, error 0.5 / sqrt(3)
    assert m["difference"] == pytest.approx(0.25) and m["stderr"] == pytest.approx(0.5 / 3 ** 0.5)
    assert (m["folders"], m["images"], m["prompts"]) == (2, 6, 3)
    assert "mean of the 2 folders: paired +0.250" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        paired.main([a, b, "--mean"])
    d = _write(tmp_path / "d", {(0, 0): 1})
    d_rows = tmp_path / "d" / "results.jsonl"
    d_rows.write_text(d_rows.read_text().replace('"p0"', '"other"'))
    with pytest.raises(ValueError, match="different prompts"):
        paired.paired_mean(paired.read_results(a), [paired.read_results(b), paired.read_results(d)])
