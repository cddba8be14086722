import json

import numpy as np
import pytest
import torch
from skimage.io import imsave

from diinn_napari import evaluate
from diinn_napari.weights import save_weights

from conftest import tiny_model


@pytest.fixture
def folder(tmp_path, rng):
    y, x = np.mgrid[0:48, 0:40]
    for i in range(2):
        img = np.stack([np.sin(x / (3 + i) + c) * np.cos(y / 4) for c in range(3)], -1)
        imsave(tmp_path / f"img{i}.png", ((img + 1) * 127.5).astype(np.uint8), check_contrast=False)
    return tmp_path


def silent_weights(tmp_path, channels):
    model = tiny_model(channels)
    torch.nn.init.zeros_(model.decoder.out.weight)
    torch.nn.init.zeros_(model.decoder.out.bias)
    return save_weights(model, tmp_path / f"silent{channels}.safetensors")


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("protocol", ["diinn", "liif"])
def test_a_model_that_adds_nothing_scores_exactly_bicubic(folder, tmp_path, channels, protocol):
    results = evaluate.evaluate(sorted(folder.glob("*.png")), [2, 3], silent_weights(tmp_path, channels), protocol)
    for scale in ("x2", "x3"):
        mean = results["scales"][scale]["mean"]
        assert mean["psnr"] == pytest.approx(mean["bicubic_psnr"], abs=1e-3)
        assert mean["gain"] == pytest.approx(0, abs=1e-3)
        assert 15 < mean["psnr"] < 60 and 0 < mean["ssim"] <= 1


def test_scale_one_is_the_identity(folder, tmp_path):
    results = evaluate.evaluate(sorted(folder.glob("*.png")), [1], silent_weights(tmp_path, 3))
    mean = results["scales"]["x1"]["mean"]
    assert mean["bicubic_psnr"] == np.inf and mean["psnr"] > 100  # float rounding only
    assert mean["ssim"] == pytest.approx(1)


def test_cli_prints_a_table_and_writes_json(folder, tmp_path, capsys):
    out = tmp_path / "r.json"
    weights = silent_weights(tmp_path, 3)
    assert evaluate.main(["--data", str(folder), "--scales", "2,2.5", "--model", str(weights), "--json", str(out), "--limit", "1"]) == 0
    text = capsys.readouterr().out
    assert "x2.5" in text and "bicubic PSNR" in text
    data = json.loads(out.read_text())
    assert len(data["images"]) == 1 and set(data["scales"]) == {"x2", "x2.5"}


def test_bad_scales_are_refused(folder):
    with pytest.raises(SystemExit):
        evaluate.main(["--data", str(folder), "--scales", "0.5"])
