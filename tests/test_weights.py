import os
import stat

import pytest
import torch

from diinn_napari import weights
from diinn_napari.engine import get_model
from diinn_napari.weights import WeightsError, load_weights, read_metadata, resolve, save_weights

from conftest import tiny_model


def test_weights_round_trip_with_config_and_metadata(tmp_path):
    model = tiny_model(variant="d", skip="none")
    path = save_weights(model, tmp_path / "m.safetensors", {"steps": 12, "metrics": {"x2": 30.5}})
    meta = read_metadata(path)
    assert meta["steps"] == 12 and meta["metrics"] == {"x2": 30.5}
    assert meta["config"]["variant"] == "d"
    loaded = load_weights(path)
    assert loaded.config == model.config
    lr = torch.rand(1, 1, 8, 8)
    with torch.no_grad():
        # float16 storage: equal up to half-precision rounding of the weights
        assert (loaded(lr, (16, 16)) - model(lr, (16, 16))).abs().max() < 1e-2
    assert all(p.dtype == torch.float32 for p in loaded.parameters())


def test_saving_never_leaves_a_partial_file(tmp_path):
    path = save_weights(tiny_model(), tmp_path / "m.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_saved_weights_get_the_permissions_of_a_plain_write(tmp_path, umask):
    # regression: the temporary file's 0600 survived the atomic rename, so other accounts could not read the weights
    old = os.umask(umask)
    try:
        path = save_weights(tiny_model(), tmp_path / "m.safetensors")
        plain = tmp_path / "plain.bin"
        plain.write_bytes(b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode) == 0o666 & ~umask


def test_corrupt_file_gets_a_clear_error(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(WeightsError, match="not a readable safetensors"):
        load_weights(bad)


def test_file_without_config_is_refused(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(WeightsError, match="no DIINN config"):
        load_weights(path)


def test_tensors_that_do_not_match_the_config_are_refused(tmp_path):
    from safetensors.torch import save_file

    model = tiny_model()
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    state.pop("decoder.out.bias")
    path = tmp_path / "broken.safetensors"
    import json

    save_file(state, str(path), metadata={"config": json.dumps(model.config)})
    with pytest.raises(WeightsError, match="does not match"):
        load_weights(path)


def test_missing_bundled_model_fails_clearly(tmp_path, monkeypatch):
    monkeypatch.setattr(weights, "weights_dir", lambda: tmp_path)
    with pytest.raises(WeightsError, match="not installed"):
        resolve("default", 1)
    with pytest.raises(WeightsError, match="weights file not found"):
        resolve(tmp_path / "nope.safetensors")
    with pytest.raises(WeightsError, match="no default model for 2-channel"):
        resolve("default", 2)


def test_models_are_loaded_once_per_file_and_device(tmp_path):
    path = save_weights(tiny_model(), tmp_path / "m.safetensors")
    assert get_model(path, device="cpu") is get_model(str(path), device="cpu")


def test_bundled_weights_are_found_and_described():
    for name in weights.available_models():
        meta = read_metadata(resolve(name))
        assert meta["config"]["in_channels"] == {"gray": 1, "rgb": 3}[name]
        assert meta["steps"] > 0 and "metrics" in meta and "data" in meta
