"""The real GenEval evaluator: Mask2Former post-processing against hand computation, the colour crop,
and the whole evaluator on a tiny random Mask2Former and open_clip CLIP saved and reloaded."""

import math
import os

import numpy as np
import pytest
import torch

from reward_models import build_reward
from reward_models.geneval import (
    BACKGROUND,
    COLORS,
    ColorClassifier,
    GenEvalEvaluator,
    instance_postprocess,
    masks_to_boxes,
    object_names,
)
from reward_models.geneval_rules import Detection


@pytest.fixture(scope="module")
def tiny_geneval(tmp_path_factory):
    from flowalign.testing import save_tiny_mask2former, save_tiny_open_clip

    root = tmp_path_factory.mktemp("geneval_models")
    return save_tiny_mask2former(root / "m2f"), save_tiny_open_clip(root / "clip")


def test_object_names_are_geneval_coco_order():
    names = object_names()
    assert len(names) == 80 and names[0] == "person" and names[-1] == "toothbrush"
    shared = os.path.join("..", "shared", "data", "geneval", "object_names.txt")
    if os.path.exists(shared):  # the packaged copy is GenEval's own file
        assert names == object_names(shared)


def test_masks_to_boxes_follows_mask2bbox():
    m = torch.zeros(2, 6, 8, dtype=torch.bool)
    m[0, 1:3, 2:5] = True  # rows 1..2, cols 2..4
    assert masks_to_boxes(m).tolist() == [[2.0, 1.0, 5.0, 3.0], [0.0, 0.0, 0.0, 0.0]]


def test_instance_postprocess_matches_hand_computation():
    # 2 queries, 3 classes (+ no-object); query 0 is class 1 with a mask on the left half
    cls = torch.tensor([[0.0, 3.0, 0.0, 1.0], [2.0, 0.0, 0.0, 0.0]])
    mask = torch.full((2, 4, 4), -2.0)
    mask[0, :, :2] = 1.5
    mask[1, :2, :] = 0.5
    dets = instance_postprocess(cls, mask, 4, 4, max_per_image=2)
    p = cls.softmax(-1)[:, :-1]
    # top 2 (query, class) pairs: (0, 1) and (1, 0)
    want0 = p[0, 1].item() * torch.sigmoid(torch.tensor(1.5)).item()
    want1 = p[1, 0].item() * torch.sigmoid(torch.tensor(0.5)).item()
    assert [d[0] for d in dets] == [1, 0]
    assert math.isclose(dets[0][1], want0, rel_tol=1e-5) and math.isclose(dets[1][1], want1, rel_tol=1e-5)
    assert dets[0][2].tolist() == [0.0, 0.0, 2.0, 4.0] and dets[1][2].tolist() == [0.0, 0.0, 4.0, 2.0]
    assert dets[0][3].sum() == 8


def test_colour_crop_puts_the_object_on_grey():
    img = np.zeros((8, 8, 3), np.uint8)
    img[2:6, 2:6] = (255, 0, 0)
    mask = np.zeros((8, 8), bool)
    mask[3:5, 3:5] = True
    crop = ColorClassifier.crop(img, Detection(box=(2, 2, 6, 6), score=1.0, mask=mask))
    assert crop.shape == (3, 4, 4)
    assert torch.allclose(crop[:, 1, 1], torch.tensor([1.0, 0.0, 0.0]))  # inside the mask: the object
    assert torch.allclose(crop[:, 0, 0], torch.full((3,), BACKGROUND))  # outside: #999


def ref_image_crop(image, box, mask, transform):
    """djghosh13/geneval evaluation/evaluate_images.py, ImageCrops.__getitem__ with the default options
    (bgcolor '#999', crop '1'), then open_clip's eval transform from create_model_and_transforms."""
    from PIL import Image

    pil = Image.fromarray(image).convert("RGB")
    blank = Image.new("RGB", pil.size, color="#999")
    if mask is not None:
        pil = Image.composite(pil, blank, Image.fromarray(mask))
    pil = pil.crop(box[:4])
    return transform(pil)


def test_colour_preprocess_is_genevals_pil_pipeline(tiny_geneval):
    import open_clip

    _, clip = tiny_geneval
    cc = ColorClassifier(clip, device="cpu")
    assert cc.mode == "pil" and not cc.autocast  # autocast only on CUDA, as GenEval's zsc
    cfg = cc.model.visual.preprocess_cfg
    transform = open_clip.image_transform(cc.preprocess.size, is_train=False, mean=cfg["mean"], std=cfg["std"])
    rng = np.random.default_rng(0)
    for trial in range(6):
        img = rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)
        mask = rng.random((48, 40)) > 0.4 if trial % 2 else None
        box = (2.5, 3.49, 30.5, 41.7) if trial < 3 else (0.0, 0.0, 40.0, 48.0)  # PIL rounds half to even
        det = Detection(box=box, score=1.0, mask=mask)
        want = ref_image_crop(img, box, mask, transform)
        assert torch.equal(cc.pixels(img, [det])[0], want)
    torch_path = ColorClassifier(clip, device="cpu", preprocess="torch")
    assert not torch.equal(torch_path.pixels(img, [det])[0], want)  # float resize: a different input
    with pytest.raises(ValueError, match="preprocess 'cv2'"):
        ColorClassifier(clip, device="cpu", preprocess="cv2")


def test_evaluator_end_to_end_on_tiny_models(tiny_geneval):
    m2f, clip = tiny_geneval
    ev = GenEvalEvaluator(m2f, clip, device="cpu")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    metas = [{"tag": "single_object", "include": [{"class": "cat", "count": 1}], "prompt": "a photo of a cat"},
             {"tag": "colors", "include": [{"class": "person", "count": 1, "color": "red"}], "prompt": "a red person"},
             {"tag": "counting", "include": [{"class": "dog", "count": 2}], "exclude": [{"class": "dog", "count": 3}],
              "prompt": "a photo of two dogs"}]
    out = ev.verdicts(images, metas)
    assert len(out) == 3
    for verdict, dets in out:
        assert verdict.clauses >= 1
        for name, ds in dets.items():
            assert name in object_names()
            for d in ds:
                assert 0.0 <= d.score <= 1.0 and d.mask.shape == (64, 64)
    again = ev.verdicts(images, metas)
    assert [v.correct for v, _ in out] == [v.correct for v, _ in again]
    # the colour classifier answers one of GenEval's colours for any detection
    d = Detection(box=(0, 0, 32, 32), score=1.0, mask=np.ones((64, 64), bool))
    assert ev.colors(images[0], [d], "person")[0] in COLORS


def test_detector_batch_size_invariance(tiny_geneval):
    from reward_models.geneval import Mask2FormerDetector

    m2f, _ = tiny_geneval
    images = np.random.default_rng(1).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    a = Mask2FormerDetector(m2f, device="cpu", batch_size=1)(images)
    b = Mask2FormerDetector(m2f, device="cpu", batch_size=3)(images)
    for da, db in zip(a, b):
        assert sorted(da) == sorted(db)
        for k in da:
            assert np.allclose([d.score for d in da[k]], [d.score for d in db[k]], atol=1e-5)


def test_geneval_reward_registry_and_errors(tiny_geneval, tmp_path):
    m2f, clip = tiny_geneval
    r = build_reward("geneval", detector=m2f, clip=clip, mode="partial", device="cpu")
    imgs = torch.rand(2, 3, 64, 64)
    meta = [{"tag": "single_object", "include": [{"class": "cat", "count": 1}], "prompt": "a cat"}] * 2
    out = r(imgs, ["a cat"] * 2, metadata=meta)
    assert out.shape == (2,) and out.dtype == torch.float32 and bool(((out >= 0) & (out <= 1)).all())
    with pytest.raises(ValueError, match="needs GenEval metadata"):
        r(imgs, ["a cat"] * 2)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_reward("geneval", detector=str(tmp_path / "missing"), clip=clip)
    with pytest.raises(FileNotFoundError, match="open_clip"):
        build_reward("geneval", detector=m2f, clip=str(tmp_path / "missing_clip"))
    with pytest.raises(ValueError, match="mode"):
        build_reward("geneval", detector=m2f, clip=clip, mode="loose")
