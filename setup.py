"""Build hook: the bundled weights live in the checkout's ``weights/`` (one copy in git);
the wheel carries them inside the package, at ``diinn_napari/weights/``."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildWithWeights(build_py):
    def run(self):
        super().run()
        if self.editable_mode:  # an editable install reads the checkout's weights/ in place
            return
        target = Path(self.build_lib) / "diinn_napari" / "weights"
        target.mkdir(parents=True, exist_ok=True)
        for file in sorted(Path(__file__).parent.joinpath("weights").glob("*.safetensors")):
            shutil.copy2(file, target / file.name)


setup(cmdclass={"build_py": BuildWithWeights})
