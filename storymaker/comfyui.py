"""Where the ComfyUI is, and where it looks for model files: the one place every application asks.

The story runner starts this ComfyUI (or tells the user it found none), the fetcher puts model files in its
folders. Nothing here imports ComfyUI (its modules parse ComfyUI's command line and create folders on import).

**Which ComfyUI** (`find_comfyui`): ``--comfyui PATH``, else ``COMFYUI_PATH``, else the ComfyUI this pack is
installed in (``ComfyUI/custom_nodes/ComfyUI-StoryMaker``: two levels above the repository root, the way the
shell reached it when the pack is a symlink). ComfyUI usually has its own Python (portable build, venv):
`find_python` finds it (or ``COMFYUI_PYTHON``). `comfyui_output_dir` is where it saves images.

**Where it looks for each kind of model file** (`model_paths`), in the order it looks. ``fetch`` must put a
file where ComfyUI finds it and must not download a file ComfyUI already finds somewhere else (a user whose
models live on another disk, listed in ``extra_model_paths.yaml``, must not get a second 7 GB SDXL). The list is
worked out the way ComfyUI does at start-up:

* the base folder is ``--base-directory`` if given, else the ComfyUI folder; its ``models`` folder holds
  ComfyUI's own folder for each name (``models/checkpoints``; ``controlnet`` also looks in
  ``models/t2i_adapter``);
* then ``extra_model_paths.yaml`` beside ComfyUI's ``main.py`` (if there is one) and each
  ``--extra-model-paths-config`` file, in that order, add folders: each top-level section has an optional
  ``base_path`` (``~`` and environment variables expanded, relative to the yaml file's folder) and
  ``is_default``; every other key is a folder name with one path per line (relative to ``base_path``, else
  to the yaml file's folder). A path is appended to the folder's list, or with ``is_default: true`` put
  first; a path already listed is not added twice (``is_default`` moves it to the front);
* ComfyUI then appends ``<output>/checkpoints`` to ``checkpoints`` (``--output-directory``, else
  ``<base>/output``);
* last, this pack, when ComfyUI imports it, appends ``models/<name>`` for its own folders (``storymaker``,
  ``storymaker_characters``, ``insightface``, ``sams``), so folders the yaml gives for them come first.

ComfyUI loads a file from the first folder of the list that has it.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

REPO_ROOT = Path(os.path.abspath(__file__)).parents[1]  # not resolved: the pack may be a symlink in custom_nodes


class ComfyUIError(Exception):
    """No ComfyUI where the user pointed, or a ComfyUI file it cannot read; the message says what to do."""


class ComfyUINotFound(ComfyUIError):
    """No ``main.py`` in ``root``, the folder ``source`` (``--comfyui``, ``COMFYUI_PATH``, ...) named."""

    def __init__(self, root: Path, source: str):
        self.root, self.source = root, source
        super().__init__(f"no ComfyUI at {root} ({source}): {root / 'main.py'} does not exist. Point --comfyui "
                         f"(or COMFYUI_PATH) at the ComfyUI folder")


def _pack_paths() -> list:
    """Paths of this pack: as the shell reached it (custom_nodes/ComfyUI-StoryMaker may be a symlink, and
    Python only sees the physical path), then as Python imported it, then fully resolved."""
    paths = [REPO_ROOT, REPO_ROOT.resolve()]
    shell_dir = os.environ.get("PWD")
    if shell_dir:
        for candidate in (Path(shell_dir), *Path(shell_dir).parents):
            if candidate.resolve() == REPO_ROOT.resolve():
                paths.insert(0, candidate)
                break
    return paths


def find_comfyui(explicit: str | Path | None = None, environ: Mapping[str, str] = os.environ) -> Path:
    """The ComfyUI folder: ``explicit`` (``--comfyui``), else ``COMFYUI_PATH``, else the one holding this pack.

    Raises:
        ComfyUINotFound: that folder has no ``main.py``.
    """
    if explicit:
        root, source = Path(explicit), "--comfyui"
    elif environ.get("COMFYUI_PATH"):
        root, source = Path(environ["COMFYUI_PATH"]), "COMFYUI_PATH"
    else:
        candidates = [pack.parent.parent for pack in _pack_paths()]
        root = next((c for c in candidates if (c / "main.py").is_file()), candidates[0])
        source = "the ComfyUI that contains this pack"
    root = root.expanduser().resolve()
    if not (root / "main.py").is_file():
        raise ComfyUINotFound(root, source)
    return root


def find_python(root: Path, explicit: str | None = None, environ: Mapping[str, str] = os.environ) -> str:
    """ComfyUI's own interpreter: ``explicit``, ``COMFYUI_PYTHON``, the portable build's, a venv's, or ours."""
    if explicit or environ.get("COMFYUI_PYTHON"):
        return str(explicit or environ["COMFYUI_PYTHON"])
    for candidate in (root.parent / "python_embeded" / "python.exe",
                      root / "venv" / "bin" / "python", root / ".venv" / "bin" / "python",
                      root / "venv" / "Scripts" / "python.exe", root / ".venv" / "Scripts" / "python.exe"):
        if candidate.is_file():
            return str(candidate)
    return sys.executable


def _arg_value(args: Sequence[str], flag: str) -> str | None:
    """The value of ``flag`` in a command line (``--flag V`` or ``--flag=V``; the last one wins)."""
    value = None
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith(flag + "="):
            value = arg.split("=", 1)[1]
    return value


def comfyui_output_dir(root: Path, extra_args: Sequence[str] = ()) -> Path:
    """Where the ComfyUI in ``root`` started with ``extra_args`` saves images: ``--output-directory``, else
    ``<--base-directory>/output``, else ``root/output`` (relative paths are ComfyUI's, i.e. from ``root``)."""
    root = Path(root)
    output = _arg_value(extra_args, "--output-directory")
    if output:
        return (root / Path(output).expanduser()).resolve()
    base = _arg_value(extra_args, "--base-directory")
    return ((root / Path(base).expanduser()) if base else root).resolve() / "output"


# -- model folders -----------------------------------------------------------------------------------

CONFIG_NAME = "extra_model_paths.yaml"
_LEGACY_NAMES = {"unet": "diffusion_models", "clip": "text_encoders"}  # ComfyUI's old names for two folders
_COMFY_FOLDERS = {  # ComfyUI's own folders for the names the catalog uses (ComfyUI has more; yaml may add any)
    "checkpoints": ("checkpoints",),
    "clip_vision": ("clip_vision",),
    "controlnet": ("controlnet", "t2i_adapter"),
}
PACK_FOLDERS = ("storymaker", "storymaker_characters", "insightface", "sams")  # registered by this pack


@dataclass
class ComfyPaths:
    """The search folders of one ComfyUI set-up; ``origins`` says where each folder came from."""

    comfyui: Path
    base: Path
    models_dir: Path
    configs: list[Path] = field(default_factory=list)
    folders: dict[str, list[str]] = field(default_factory=dict)
    origins: dict[str, str] = field(default_factory=dict)

    def add(self, name: str, path: str, is_default: bool = False, origin: str = "") -> None:
        """Add ``path`` to folder ``name`` as ComfyUI's ``add_model_folder_path`` does."""
        name = _LEGACY_NAMES.get(name, name)
        paths = self.folders.setdefault(name, [])
        if path in paths:
            if is_default and paths[0] != path:
                paths.remove(path)
                paths.insert(0, path)
        elif is_default:
            paths.insert(0, path)
        else:
            paths.append(path)
        self.origins.setdefault(path, origin)

    def dirs(self, name: str) -> list[Path]:
        """The folders ComfyUI searches for ``name``, first searched first."""
        return [Path(p) for p in self.folders.get(_LEGACY_NAMES.get(name, name), [])]

    def origin(self, directory: Path) -> str:
        """Where a search folder comes from, in words."""
        return self.origins.get(str(directory), "")


def model_paths(comfyui: Path, base_directory: str | Path | None = None, extra_configs: Iterable[str | Path] = (),
         output_directory: str | Path | None = None) -> ComfyPaths:
    """The search folders of the ComfyUI at ``comfyui`` started with these ComfyUI options.

    Raises:
        ComfyUIError: a yaml file that cannot be read (ComfyUI would not start with it either).
    """
    comfyui = Path(comfyui)
    base = Path(os.path.abspath(base_directory)) if base_directory else Path(os.path.realpath(comfyui))
    models_dir = base / "models"
    paths = ComfyPaths(comfyui=comfyui, base=base, models_dir=models_dir)
    own = f"ComfyUI's models folder ({models_dir})"
    for name, subfolders in _COMFY_FOLDERS.items():
        for sub in subfolders:
            paths.add(name, os.path.join(str(models_dir), sub), origin=own)

    default_config = Path(os.path.realpath(comfyui / "main.py")).parent / CONFIG_NAME
    configs = ([default_config] if default_config.is_file() else []) + [Path(c) for c in extra_configs]
    for config in configs:
        _read_config(paths, config)
        paths.configs.append(config)

    output = os.path.abspath(output_directory) if output_directory else os.path.join(str(base), "output")
    paths.add("checkpoints", os.path.join(output, "checkpoints"), origin="ComfyUI's output folder")
    for name in PACK_FOLDERS:
        paths.add(name, os.path.join(str(models_dir), name), origin=own)
    return paths


def _read_config(paths: ComfyPaths, config: Path) -> None:
    import yaml

    try:
        with open(config, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except OSError as e:
        raise ComfyUIError(f"{config}: cannot read it ({e.strerror or e})") from e
    except yaml.YAMLError as e:
        raise ComfyUIError(f"{config}: not valid YAML ({e}); ComfyUI cannot read it either") from e
    if data is None:
        return
    if not isinstance(data, dict):
        raise ComfyUIError(f"{config}: expected sections of folder names, found {type(data).__name__}")
    config_dir = os.path.dirname(os.path.abspath(config))
    for section_name, section in data.items():
        if section is None:
            continue
        if not isinstance(section, dict):
            raise ComfyUIError(f"{config}: section {section_name!r} is not a mapping of folder names to paths")
        section = dict(section)
        base_path = section.pop("base_path", None)
        if base_path is not None:
            base_path = os.path.expandvars(os.path.expanduser(str(base_path)))
            if not os.path.isabs(base_path):
                base_path = os.path.abspath(os.path.join(config_dir, base_path))
        is_default = bool(section.pop("is_default", False))
        for name, value in section.items():
            if not isinstance(value, str):
                raise ComfyUIError(f"{config}: {section_name}.{name} must be one path per line, not "
                                 f"{type(value).__name__} (ComfyUI cannot read it either)")
            for line in value.split("\n"):
                if not line:
                    continue
                if base_path:
                    full = os.path.join(base_path, line)
                elif not os.path.isabs(line):
                    full = os.path.abspath(os.path.join(config_dir, line))
                else:
                    full = line
                paths.add(str(name), os.path.normpath(full), is_default,
                          origin=f"{config}, section {section_name}")
