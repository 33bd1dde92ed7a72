"""The model files of the README's table: where each comes from, where ComfyUI's loaders look for it, and
the exact bytes (size and sha256) that ``fetch`` accepts.

One entry per ``--only`` key. The target names are the ones the example workflows use, so a fetched
folder runs them unchanged.

Pins. Every file is pinned to a size and a sha256 written here, not read from the host at fetch time: a
host (or a mirror given with ``HF_ENDPOINT`` or ``--url``) is only trusted to serve those bytes, and a
download is checked against the pin before it takes its final name. Each pin says where its numbers come
from (public sources that agree with each other; nothing here was guessed). A file whose numbers could
not be found is pinned as :data:`UNKNOWN`: ``fetch`` then refuses to place it unless the user passes
``--trust-unpinned`` (and then checks it only against what its own host publishes).
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
class Pin:
    """The exact file ``fetch`` accepts: ``size`` in bytes and lowercase hex ``sha256``; ``origin`` says
    where the numbers were found (or why they are unknown)."""

    size: int | None = None
    sha256: str | None = None
    origin: str = ""

    @property
    def known(self) -> bool:
        return self.size is not None and self.sha256 is not None

    def describe(self) -> str:
        if not self.known:
            return "size + sha256 unknown (not pinned)"
        return f"{self.size} bytes, sha256 {self.sha256}"


UNKNOWN = Pin(origin="size + sha256 unknown: no public source giving the exact numbers was found when the "
                     "catalog was written")


@dataclass(frozen=True)
class ModelItem:
    """One row of the table.

    Args:
        key: the ``--only`` name.
        folder: ``models/<ComfyUI folder name>[/<sub folder>]``: the folder inside ComfyUI's own ``models``;
            with ``extra_model_paths.yaml`` or ``--base-directory`` the same ComfyUI folder name
            (``checkpoints``, ``insightface``...) is looked up where ComfyUI looks.
        name: target file name, or for ``unzip_members`` the folder the members are unzipped into.
        pin: the size and sha256 of the downloaded file (for a pack: of the zip).
        unzip_members: for a zip pack, the files that must end up directly in ``folder/name``.
        member_sha256: for a zip pack, ``(member, sha256)`` of each unzipped file (checks a pack unzipped by hand).
        licence_gate: text the user must accept (``--accept-<key>-license``) before the download.
    """

    key: str
    title: str
    source: HubSource | UrlSource
    folder: str
    name: str
    pin: Pin = UNKNOWN
    optional: bool = False
    unzip_members: tuple[str, ...] = ()
    member_sha256: tuple[tuple[str, str], ...] = ()
    licence_gate: str | None = None

    @property
    def relative_target(self) -> str:
        return f"{self.folder}/{self.name}" + ("/" if self.unzip_members else "")

    @property
    def folder_name(self) -> str:
        """ComfyUI's name for the folder (``folder_paths``): ``checkpoints`` for ``models/checkpoints``."""
        return self.folder.split("/")[1]

    @property
    def subfolder(self) -> str:
        """The part of ``folder`` below ComfyUI's folder (``models`` for ``models/insightface/models``)."""
        return "/".join(self.folder.split("/")[2:])

    def member_pins(self) -> dict[str, str]:
        return dict(self.member_sha256)

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

# Where the pins come from. Hugging Face files: the "Git LFS Details" (SHA256) of the file's page on the Hub,
# with the exact byte count from a Git LFS pointer of the same sha256 (identical sha256 = identical bytes)
# and other public manifests that pin the same file; release-host files: public download manifests that
# verify the file by these numbers (several independent ones each, all agreeing).

# StoryMaker's mask.bin: the Hub's file listing shows only "3.32 GB" (huggingface.co/RED-AIGC/StoryMaker/tree/
# 2c8ffa2263cea55ee66d78b77e2e87585ebf701f); no public page or manifest giving its exact size and sha256 was
# found, so it stays unpinned rather than pinned to a guess.
STORYMAKER_PIN = UNKNOWN

# h94/IP-Adapter models/image_encoder/model.safetensors (CLIP ViT-H/14 vision tower):
#   sha256: huggingface.co/h94/IP-Adapter/blob/94e28fff1b6932cada2f95358d7191eca2106001/models/image_encoder/
#           model.safetensors ("Git LFS Details", 2.53 GB);
#   size: Git LFS pointer of the same oid in huggingface.co/XuminYu/example_safetensors commit 897ca16
#         ("oid sha256:6ca9667d... size 2528373448"); invoke-ai/InvokeAI invokeai/app/api/routers/model_manager.py
#         (example metadata) gives the same size and sha256 for its copy, InvokeAI/ip_adapter_sd_image_encoder.
CLIP_VISION_PIN = Pin(2528373448, "6ca9667da1ca9e0b0f75e46bb030f7e011f44f86cbfb8d5a36590fcd7507b030",
                      "Hub LFS sha256 of h94/IP-Adapter models/image_encoder/model.safetensors; size from a Git "
                      "LFS pointer of the same oid")

# buffalo_l.zip (InsightFace model zoo, release v0.7):
#   Visionatrix/Visionatrix visionatrix/basic_node_list.py (hash=80ffe37d..., file_size=288621354, with the
#   sha256 of each of the five .onnx members, used below); two more public manifests pin the v0.7 GitHub
#   release URL itself to the same size and sha256, and the member hashes of det_10g.onnx and w600k_r50.onnx
#   recur in several independent face-recognition projects.
INSIGHTFACE_PIN = Pin(288621354, "80ffe37d8a5940d59a7384c201a2a38d4741f2f3c51eef46ebb28218a7b0ca2f",
                      "Visionatrix/Visionatrix visionatrix/basic_node_list.py and other public manifests of "
                      "the v0.7 release asset")
BUFFALO_L_MEMBERS = (
    ("1k3d68.onnx", "df5c06b8a0c12e422b2ed8947b8869faa4105387f199c477af038aa01f9a45cc"),
    ("2d106det.onnx", "f001b856447c413801ef5c42091ed0cd516fcd21f2d6b79635b1e733a7109dbf"),
    ("det_10g.onnx", "5838f7fe053675b1c7a08b633df49e7af5495cee0493c7dcf6697200b85b5b91"),
    ("genderage.onnx", "4fde69b1c810857b88c64a335084f1c3fe8f01246c9a191b48c7bb756d6652fb"),
    ("w600k_r50.onnx", "4c06341c33c2ca1f86781dab0e829f88ad5b64be9fba56e56bc9ebdefc619e43"),
)

# stabilityai/stable-diffusion-xl-base-1.0 sd_xl_base_1.0.safetensors:
#   sha256: the Hub's "Git LFS Details" of this file (also shown for its byte-identical duplicates, e.g.
#           huggingface.co/cgburgos/sdxl-1-0-base "Duplicate from stabilityai/stable-diffusion-xl-base-1.0");
#   size and sha256 together: several public download manifests that verify this exact URL (one notes
#         "extracted from the upstream object metadata (x-linked-etag header)"), all 6938078334 bytes.
SDXL_PIN = Pin(6938078334, "31e35c80fc4829d14f90153f4c74cd59c90b779f6afe05a74cd6120b893f7e5b",
               "Hub LFS sha256 of stabilityai/stable-diffusion-xl-base-1.0 sd_xl_base_1.0.safetensors; size "
               "from public manifests pinning the same sha256")

# sam_vit_b_01ec64.pth (Meta's Segment Anything release). Its name carries the first six hex digits of its
# MD5 (01ec64d29a2fca3f0661936605ae66f8, as pinned by Sanster/IOPaint iopaint/plugins/interactive_seg.py), not
# of its sha256; the sha256 is pinned by computational-cell-analytics/micro-sam micro_sam/util.py (pooch
# registry "vit_b") and the size (375042383 bytes) with the same sha256 by Visionatrix/Visionatrix
# visionatrix/basic_node_list.py, among others.
SAM_PIN = Pin(375042383, "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
              "computational-cell-analytics/micro-sam micro_sam/util.py (sha256); Visionatrix/Visionatrix "
              "visionatrix/basic_node_list.py (size and sha256)")
SAM_MD5 = "01ec64d29a2fca3f0661936605ae66f8"  # the name's 01ec64 (Sanster/IOPaint); not checked, documented

# xinsir/controlnet-openpose-sdxl-1.0 diffusion_pytorch_model.safetensors:
#   sha256: huggingface.co/xinsir/controlnet-openpose-sdxl-1.0/blob/main/diffusion_pytorch_model.safetensors
#           ("Git LFS Details", 2.5 GB, commit 86d911d);
#   size: Git LFS pointer of the same oid in huggingface.co/MichaelBui/Collection commit affc29a
#         (xinsir-controlnet-openpose-sdxl-1.0.safetensors: "oid sha256:b8524e55... size 2502139104").
CONTROLNET_PIN = Pin(2502139104, "b8524e557a7df60d081f5d4a0eb109967d107df217943bf88c2d99b9ebcc06c5",
                     "Hub LFS sha256 of xinsir/controlnet-openpose-sdxl-1.0 diffusion_pytorch_model.safetensors; "
                     "size from a Git LFS pointer of the same oid")

ITEMS: tuple[ModelItem, ...] = (
    ModelItem("storymaker", "StoryMaker weights (3.3 GB fp32 pickle)",
              HubSource("RED-AIGC/StoryMaker", "mask.bin"), "models/storymaker", "mask.bin", pin=STORYMAKER_PIN),
    ModelItem("clip_vision", "CLIP vision ViT-H/14 image encoder",
              HubSource("h94/IP-Adapter", "models/image_encoder/model.safetensors"),
              "models/clip_vision", "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors", pin=CLIP_VISION_PIN),
    ModelItem("insightface", "InsightFace buffalo_l (face detection + ArcFace, 5 .onnx files)",
              UrlSource("https://github.com/deepinsight/insightface/releases/download/v0.7/buffalo_l.zip"),
              "models/insightface/models", "buffalo_l", pin=INSIGHTFACE_PIN,
              unzip_members=tuple(name for name, _ in BUFFALO_L_MEMBERS), member_sha256=BUFFALO_L_MEMBERS,
              licence_gate=INSIGHTFACE_LICENCE),
    ModelItem("sdxl", "SDXL base 1.0 checkpoint (any SDXL checkpoint works)",
              HubSource("stabilityai/stable-diffusion-xl-base-1.0", "sd_xl_base_1.0.safetensors"),
              "models/checkpoints", "sd_xl_base_1.0.safetensors", pin=SDXL_PIN),
    ModelItem("sam", "Segment Anything ViT-B (optional: masks a character without a MASK)",
              UrlSource("https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth"),
              "models/sams", "sam_vit_b_01ec64.pth", pin=SAM_PIN, optional=True),
    ModelItem("controlnet", "OpenPose ControlNet for SDXL (optional: pose-guided scenes)",
              HubSource("xinsir/controlnet-openpose-sdxl-1.0", "diffusion_pytorch_model.safetensors"),
              "models/controlnet", "controlnet-openpose-sdxl-1.0.safetensors", pin=CONTROLNET_PIN, optional=True),
)

KEYS = tuple(item.key for item in ITEMS)


def select(only: Iterable[str] | None = None, urls: dict[str, str] | None = None,
           items: Iterable[ModelItem] = ITEMS) -> list[ModelItem]:
    """The items named in ``only`` (all when empty), in table order; ``urls`` replaces release-host URLs
    (a mirror: the item keeps its pin, so the mirror must serve the same bytes).

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
