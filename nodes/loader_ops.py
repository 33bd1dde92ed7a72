"""What the loader nodes do, given the paths ComfyUI's `folder_paths` found: StoryMaker weights, InsightFace and
Segment Anything under ComfyUI's model management. Imports nothing of ComfyUI at import time (offline tests
call these functions; nodes/loaders.py holds the V3 nodes)."""

from __future__ import annotations

import logging

from ..storymaker_core.adapter import StoryMakerAdapter
from ..storymaker_core.weights import load_storymaker_weights

log = logging.getLogger(__name__)


def load_storymaker(path: str, file_name: str) -> StoryMakerAdapter:
    """The StoryMaker adapter of a mask.bin / .safetensors file, logging what the file holds."""
    weights = load_storymaker_weights(path)
    log.info("StoryMaker: %s: %s", file_name, weights.info.summary())
    return StoryMakerAdapter(weights)


def face_analyzer(roots: list, model_name: str, provider: str, det_size: int):
    """InsightFace from the first of `roots` (ComfyUI's insightface folders) that holds models/<model_name>/;
    the last folder's error names what is missing. A missing insightface package says what to install."""
    from ..storymaker_core.faces import FaceAnalyzer, FaceAnalyzerConfig, FaceModelsNotFoundError

    if not roots:
        raise FaceModelsNotFoundError("ComfyUI has no 'insightface' model folder (models/insightface/): the pack "
                                      "registers one when ComfyUI loads it")
    for i, root in enumerate(roots):
        try:
            config = FaceAnalyzerConfig(root=root, name=model_name, providers=[provider, "CPU"], det_size=det_size)
            return FaceAnalyzer(config)
        except FaceModelsNotFoundError:
            if i == len(roots) - 1:
                raise


def segmenter(path: str):
    """Segment Anything from `path`, under ComfyUI's model management (see `ManagedSegmenter`)."""
    import comfy.model_management

    from ..storymaker_core.segment import PersonSegmenter

    return ManagedSegmenter(PersonSegmenter(path, device=comfy.model_management.unet_offload_device()))


class ManagedSegmenter:
    """SAM under ComfyUI's model management: loaded onto the GPU only to segment, counted with the other
    models and offloaded when they need the memory (SAM ViT-H is 2.5 GB)."""

    def __init__(self, segmenter):
        import comfy.model_management
        import comfy.model_patcher

        import torch

        self.segmenter = segmenter
        self.module = torch.nn.ModuleDict({"sam": segmenter.model})  # ModelPatcher sets .device; Sam's is read-only
        self.patcher = comfy.model_patcher.ModelPatcher(self.module,
                                                        load_device=comfy.model_management.get_torch_device(),
                                                        offload_device=comfy.model_management.unet_offload_device())

    def segment(self, *args, **kwargs):
        import comfy.model_management

        comfy.model_management.load_model_gpu(self.patcher)
        return self.segmenter.segment(*args, **kwargs)
