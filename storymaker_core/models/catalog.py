"""The model files of the README's table: where each comes from and where ComfyUI's loaders look for it.

One entry per ``--only`` key. The target names are the ones the example workflows use, so a fetched
folder runs them unchanged. Sizes and hashes are not written here: Hugging Face publishes each file's
size and sha256 (its LFS ETag) and the release hosts send a Content-Length, so they are read at fetch time.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterable


@dataclass(frozen=True)
class HubSource:
    """A file in a Hugging Face model repository (``repo_id`` / ``filename`` at ``revision``)."""

    repo_id: str
    filename: str
    revision: str = "main"

    def describe(self) -> str:
        return f"Hugging Face {self.repo_id} -> {self.filename}"

    def browser_url(self) -> str:
        return f"https://huggingface.co/{self.repo_id}/resolve/{self.revision}/{self.filename}"


@dataclass(frozen=True)
class UrlSource:
    """A file on a plain HTTPS release host (GitHub releases, Meta's CDN)."""

    url: str

    def describe(self) -> str:
        return self.url

    def browser_url(self) -> str:
        return self.url


@dataclass(frozen=True)
class ModelItem:
    """One row of the table.

    Args:
        key: the ``--only`` name.
        folder: target folder relative to the ComfyUI folder.
        name: target file name, or for ``unzip_members`` the folder the members are unzipped into.
        unzip_members: for a zip pack, the files that must end up directly in ``folder/name``.
        licence_gate: text the user must accept (``--accept-<key>-license``) before the download.
    """

    key: str
    title: str
    source: HubSource | UrlSource
    folder: str
    name: str
    optional: bool = False
    unzip_members: tuple[str, ...] = ()
    licence_gate: str | None = None

    @property
    def relative_target(self) -> str:
        return f"{self.folder}/{self.name}" + ("/" if self.unzip_members else "")

    def manual_instructions(self) -> str:
        """What to do by hand, in one line: the source and where the result goes."""
        if self.unzip_members:
            return (f"download {self.source.browser_url()} and unzip it so that {', '.join(self.unzip_members)} "
                    f"sit directly in ComfyUI/{self.relative_target}")
        return f"download {self.source.browser_url()} and save it as ComfyUI/{self.relative_target}"


INSIGHTFACE_LICENCE = (
    "InsightFace's pretrained models (buffalo_l included) are available for non-commercial research purposes\n"
    "only, whether downloaded automatically or by hand. StoryMaker needs buffalo_l's ArcFace model for the\n"
    "character's identity. Licence: https://github.com/deepinsight/insightface/tree/master/python-package#license\n"
    "and https://github.com/deepinsight/insightface/tree/master/model_zoo"
)

ITEMS: tuple[ModelItem, ...] = (
    ModelItem("storymaker", "StoryMaker weights (3.3 GB fp32 pickle)",
              HubSource("RED-AIGC/StoryMaker", "mask.bin"), "models/storymaker", "mask.bin"),
    ModelItem("clip_vision", "CLIP vision ViT-H/14 image encoder",
              HubSource("h94/IP-Adapter", "models/image_encoder/model.safetensors"),
              "models/clip_vision", "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors"),
    ModelItem("insightface", "InsightFace buffalo_l (face detection + ArcFace, 5 .onnx files)",
              UrlSource("https://github.com/deepinsight/insightface/releases/download/v0.7/buffalo_l.zip"),
              "models/insightface/models", "buffalo_l",
              unzip_members=("1k3d68.onnx", "2d106det.onnx", "det_10g.onnx", "genderage.onnx", "w600k_r50.onnx"),
              licence_gate=INSIGHTFACE_LICENCE),
    ModelItem("sdxl", "SDXL base 1.0 checkpoint (any SDXL checkpoint works)",
              HubSource("stabilityai/stable-diffusion-xl-base-1.0", "sd_xl_base_1.0.safetensors"),
              "models/checkpoints", "sd_xl_base_1.0.safetensors"),
    ModelItem("sam", "Segment Anything ViT-B (optional: masks a character without a MASK)",
              UrlSource("https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth"),
              "models/sams", "sam_vit_b_01ec64.pth", optional=True),
    ModelItem("controlnet", "OpenPose ControlNet for SDXL (optional: pose-guided scenes)",
              HubSource("xinsir/controlnet-openpose-sdxl-1.0", "diffusion_pytorch_model.safetensors"),
              "models/controlnet", "controlnet-openpose-sdxl-1.0.safetensors", optional=True),
)

KEYS = tuple(item.key for item in ITEMS)


def select(only: Iterable[str] | None = None, urls: dict[str, str] | None = None,
           items: Iterable[ModelItem] = ITEMS) -> list[ModelItem]:
    """The items named in ``only`` (all when empty), in table order; ``urls`` replaces release-host URLs.

    Raises:
        ValueError: an unknown key, or a URL override for an item that comes from Hugging Face.
    """
    items = list(items)
    known = {item.key: item for item in items}
    wanted = set(only or known)
    unknown = sorted(wanted - set(known))
    if unknown:
        raise ValueError(f"--only: unknown model {', '.join(unknown)}; choose from {', '.join(known)}")
    urls = dict(urls or {})
    for key, url in urls.items():
        if key not in known:
            raise ValueError(f"--url {key}=...: unknown model; choose from {', '.join(known)}")
        if not isinstance(known[key].source, UrlSource):
            raise ValueError(f"--url {key}=...: {key} comes from Hugging Face; use HF_ENDPOINT for a mirror")
        known[key] = replace(known[key], source=UrlSource(url))
    return [known[item.key] for item in items if item.key in wanted]
