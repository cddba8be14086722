"""The wheel and the sdist a user installs carry the manifest, the samples and the weights, without symlinks."""

import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


@pytest.fixture(scope="module")
def dists(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    # --no-isolation: the build runs offline with the setuptools already installed
    subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--sdist", "--wheel", "--outdir", str(out), str(ROOT)],
                   check=True, capture_output=True, text=True)
    return next(out.glob("*.whl")), next(out.glob("*.tar.gz"))


def test_no_symbolic_links_are_tracked():
    # a Windows clone turns a link into a text file holding its target
    modes = subprocess.run(["git", "ls-files", "-s"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert not [line for line in modes.splitlines() if line.startswith("120000")]


def test_wheel_holds_manifest_samples_and_weights(dists):
    wheel, _ = dists
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in ("napari.yaml", "weights/diinn-gray.safetensors", "weights/diinn-rgb.safetensors",
                 "samples/thermal_landsat8_tirs_b10.tif"):
        assert f"diinn_napari/{name}" in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "diinn_napari:napari.yaml" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_installed_wheel_finds_its_weights_and_manifest(dists, tmp_path):
    wheel, _ = dists
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)], check=True)
    probe = ("import diinn_napari, diinn_napari.weights as w; from importlib import resources; "
             "assert diinn_napari.__file__.startswith(%r), diinn_napari.__file__; "
             "assert w.available_models() == ['gray', 'rgb'], w.weights_dir(); "
             "assert (resources.files('diinn_napari') / 'napari.yaml').is_file()") % str(target)
    subprocess.run([sys.executable, "-c", probe], check=True, env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"},
                   cwd=tmp_path)


def test_sdist_builds_the_same_wheel_contents(dists, tmp_path):
    _, sdist = dists
    with tarfile.open(sdist) as tar:
        members = tar.getmembers()
        assert not [m.name for m in members if m.issym() or m.islnk()]
        names = {m.name.partition("/")[2] for m in members}
        assert {"weights/diinn-gray.safetensors", "weights/diinn-rgb.safetensors", "src/diinn_napari/napari.yaml",
                "setup.py"} <= names
        tar.extractall(tmp_path, filter="data")
    unpacked = next(tmp_path.glob("diinn_napari-*"))
    subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--wheel", "--outdir", str(tmp_path / "w"), str(unpacked)],
                   check=True, capture_output=True)
    names = set(zipfile.ZipFile(next((tmp_path / "w").glob("*.whl"))).namelist())
    assert "diinn_napari/weights/diinn-gray.safetensors" in names
