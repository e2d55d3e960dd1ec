from PIL import Image

from flowalign.cli import main


def test_sample_writes_a_grid(tiny_sd3_dir, tmp_path, capsys):
    out = tmp_path / "grid.png"
    rc = main(["sample", "--model", tiny_sd3_dir, "--prompt", "a red circle", "--prompt", "a blue square",
               "--images-per-prompt", "2", "--steps", "3", "--guidance", "3", "--max-sequence-length", "8",
               "--out", str(out), "--device", "cpu"])
    assert rc == 0 and out.exists()
    img = Image.open(out)
    assert img.size == (2 * 34 + 2, 2 * 34 + 2)  # 2x2 grid of 32 px images with 2 px padding
    assert "wrote 4 image(s)" in capsys.readouterr().out


def test_sample_bad_model_is_one_sentence(tmp_path, capsys):
    rc = main(["sample", "--model", str(tmp_path / "nope"), "--prompt", "x", "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2 and "nope' does not exist" in err and "Traceback" not in err
