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
    results = evaluate.evaluate(sorted(folder.glob("*.png")), [2, 3], silent_weights(tmp_path, channels), protocol,
                                consistency=0)
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


def test_fidelity_columns_an_identity_model_has_no_bias(folder, tmp_path):
    results = evaluate.evaluate(sorted(folder.glob("*.png")), [1, 2], silent_weights(tmp_path, 1), consistency=0)
    identity = results["scales"]["x1"]
    for row in identity["per_image"] + [identity["mean"]]:
        assert row["bias"] == pytest.approx(0, abs=1e-4) and row["clipped"] == 0
    x2 = results["scales"]["x2"]
    for row in x2["per_image"]:  # a model that adds nothing to bicubic has bicubic's bias and clipping
        assert row["bias"] == pytest.approx(row["bicubic_bias"], abs=1e-4)
        assert row["clipped"] == pytest.approx(row["bicubic_clipped"])
    assert x2["mean"]["bias"] == pytest.approx(np.mean([r["bias"] for r in x2["per_image"]]))


def test_clipping_is_counted_at_the_files_dtype_limits(tmp_path):
    # a hard 0/250 edge: bicubic overshoots past 255 where the reference is 250 (counted) and below 0
    # where the reference is 0 (not counted: the reference is at the limit there)
    edge = np.zeros((40, 40), np.uint8)
    edge[:, 20:] = 250
    imsave(tmp_path / "edge.png", edge, check_contrast=False)
    row = evaluate.evaluate([tmp_path / "edge.png"], [2], silent_weights(tmp_path, 1),
                            consistency=0)["scales"]["x2"]["per_image"][0]
    assert 0 < row["clipped"] < 0.5


def test_real_mode_needs_no_ground_truth_and_sees_consistency(folder, tmp_path, capsys):
    weights = silent_weights(tmp_path, 1)
    off = evaluate.evaluate_real(sorted(folder.glob("*.png")), [2], weights, consistency=0)
    on = evaluate.evaluate_real(sorted(folder.glob("*.png")), [2], weights, consistency=3)
    assert on["scales"]["x2"]["mean"]["lr_psnr"] > off["scales"]["x2"]["mean"]["lr_psnr"] + 5
    assert off["scales"]["x2"]["mean"]["lr_psnr"] == pytest.approx(off["scales"]["x2"]["mean"]["bicubic_lr_psnr"], abs=0.1)
    out = tmp_path / "real.json"
    assert evaluate.main(["--data", str(folder), "--real", "--scales", "2", "--model", str(weights), "--consistency", "2",
                          "--per-image", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "protocol real" in text and "model LR-PSNR" in text and "img1.png" in text
    data = json.loads(out.read_text())
    assert data["consistency"] == 2 and {"lr_psnr", "bias", "clipped"} <= set(data["scales"]["x2"]["per_image"][0])


def test_no_usable_image_is_an_exception_not_an_exit(tmp_path, capsys):
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises((ValueError, OSError)):
        evaluate.evaluate([tmp_path / "notes.png"], [2], silent_weights(tmp_path, 1))
    assert evaluate.main(["--data", str(tmp_path / "notes.png"), "--model", str(silent_weights(tmp_path, 1))]) == 2
    assert "error:" in capsys.readouterr().err


def test_consistency_in_the_protocol_run(folder, tmp_path):
    weights = silent_weights(tmp_path, 1)
    files = sorted(folder.glob("*.png"))
    off = evaluate.evaluate(files, [2], weights, consistency=0)["scales"]["x2"]["mean"]
    on = evaluate.evaluate(files, [2], weights, consistency=3)["scales"]["x2"]["mean"]
    assert on["lr_psnr"] > off["lr_psnr"] + 5  # the back-projection makes the output explain its input


def test_bf16_precision_is_an_option_of_evaluate_and_stays_close_to_fp32(tmp_path):
    # the approximate fast CPU path is measured with the same protocol as everything else
    y, x = np.mgrid[0:48, 0:40] / 5.0
    imsave(tmp_path / "a.png", ((np.sin(x) * np.cos(0.8 * y) * 0.4 + 0.5) * 255).astype(np.uint8))
    model = tiny_model()
    exact = evaluate.evaluate([tmp_path / "a.png"], [2.0], model=model)
    approx = evaluate.evaluate([tmp_path / "a.png"], [2.0], model=model, precision="bf16")
    assert approx["precision"] == "bf16"
    assert abs(approx["scales"]["x2"]["mean"]["psnr"] - exact["scales"]["x2"]["mean"]["psnr"]) < 0.05


@pytest.mark.parametrize("mode", [[], ["--real"]])
def test_cli_device_reaches_every_engine_call(folder, tmp_path, monkeypatch, mode):
    # every device the engine resolves (model loading, each comparison's upscale) is the one asked for, never 'auto'
    from diinn_napari import engine

    asked = []
    real_pick = engine.pick_device
    monkeypatch.setattr(engine, "pick_device", lambda name="auto": asked.append(str(name)) or real_pick(name))
    weights = save_weights(tiny_model(), tmp_path / "tiny.safetensors")
    assert evaluate.main(["--data", str(folder), "--scales", "2", "--model", str(weights), "--consistency", "0",
                          "--device", "cpu", *mode]) == 0
    assert len(asked) > 2 and set(asked) == {"cpu"}, asked


def _framed_geotiff(path, frame_value: int, nodata: str | None):
    """A 96 px uint8 texture with a 16 px frame of ``frame_value`` (the black frame of a rotated satellite scene)."""
    import tifffile

    y, x = np.mgrid[0:96, 0:96]
    data = ((np.sin(x / 3.0) * np.cos(y / 4.0) + 1) * 100 + 20).astype(np.uint8)
    data[:16], data[-16:], data[:, :16], data[:, -16:] = frame_value, frame_value, frame_value, frame_value
    geokeys = (1, 1, 0, 2, 1024, 0, 1, 1, 3072, 0, 1, 32614)
    tags = [(33550, "d", 3, (30.0, 30.0, 0.0), True), (33922, "d", 6, (0, 0, 0, 500000.0, 4200000.0, 0), True),
            (34735, "H", len(geokeys), geokeys, True)]
    if nodata is not None:
        tags.append((42113, "s", 0, nodata, True))
    tifffile.imwrite(path, data, photometric="minisblack", extratags=tags)
    return path


def test_pixels_without_data_are_left_out_of_every_score(tmp_path):
    """The frame's value changes nothing once it is declared nodata; scored: the pixels ceil(4 s) px inside it."""
    weights = silent_weights(tmp_path, 1)
    black = _framed_geotiff(tmp_path / "black.tif", 0, "0")
    white = _framed_geotiff(tmp_path / "white.tif", 255, "255")
    undeclared = _framed_geotiff(tmp_path / "undeclared.tif", 255, None)
    rows = {}
    for path in (black, white, undeclared):
        rows[path.stem] = evaluate.evaluate([path], [2], weights, consistency=0)["scales"]["x2"]["per_image"][0]
    assert rows["black"]["valid"] == pytest.approx(((96 - 32 - 2 * 8) / 96) ** 2)
    assert rows["undeclared"]["valid"] == 1.0
    for key in ("psnr", "bicubic_psnr", "lr_psnr", "bias", "clipped"):
        assert rows["black"][key] == pytest.approx(rows["white"][key], abs=1e-9), key
    # SSIM's windowed means are running sums: the frame reaches the scored pixels as float rounding only
    assert rows["black"]["ssim"] == pytest.approx(rows["white"]["ssim"], abs=1e-5)
    # scored over the frame's edge, bicubic loses several dB there
    assert rows["undeclared"]["bicubic_psnr"] < rows["white"]["bicubic_psnr"] - 3
