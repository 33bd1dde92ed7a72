"""Which packages `pip install .` installs (everything else lives in pyproject.toml).

`storymaker_core` (the model), `storymaker` (the applications and the `storymaker` command) with all their
subpackages, and the `training/` folder as `storymaker_training`: ComfyUI has a top-level module `nodes`, and
`training` is too generic a name to put in site-packages. The command needs nothing else; the ComfyUI nodes are
loaded by ComfyUI from custom_nodes/, not from here.
"""

from setuptools import find_namespace_packages, find_packages, setup

TRAINING = "storymaker_training"

setup(
    packages=find_packages(include=["storymaker_core", "storymaker_core.*", "storymaker", "storymaker.*"])
    # namespace packages too: training/configs/ holds the YAML configs (data, no __init__.py)
    + [TRAINING] + [f"{TRAINING}.{name}" for name in find_namespace_packages("training", exclude=["*__pycache__*"])],
    package_dir={TRAINING: "training"},
    py_modules=[],
)
