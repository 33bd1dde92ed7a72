"""Loaders: StoryMaker weights, InsightFace and Segment Anything, each found through `folder_paths`."""

from __future__ import annotations

import logging

from ..storymaker_core.adapter import StoryMakerAdapter
from ..storymaker_core.weights import load_storymaker_weights
from .common import CATEGORY

log = logging.getLogger(__name__)


class StoryMakerLoader:
    DESCRIPTION = "Loads StoryMaker weights (the released mask.bin or its .safetensors) from models/storymaker."

    @classmethod
    def INPUT_TYPES(cls):
        import folder_paths

        return {"required": {"storymaker_file": (folder_paths.get_filename_list("storymaker"),
                                                 {"tooltip": "mask.bin from RED-AIGC/StoryMaker, or a converted .safetensors"})}}

    RETURN_TYPES = ("STORYMAKER",)
    FUNCTION = "load"
    CATEGORY = CATEGORY

    def load(self, storymaker_file):
        import folder_paths

        weights = load_storymaker_weights(folder_paths.get_full_path_or_raise("storymaker", storymaker_file))
        log.info("StoryMaker: %s: %s", storymaker_file, weights.info.summary())
        return (StoryMakerAdapter(weights),)


class StoryMakerInsightFaceLoader:
    DESCRIPTION = "Loads InsightFace face detection + ArcFace recognition from models/insightface/models/<name>/."

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model_name": (["buffalo_l", "antelopev2"], {"tooltip": "StoryMaker was trained with buffalo_l"}),
            "provider": (["CPU", "CUDA", "ROCM", "CoreML"], {"default": "CUDA"}),
            "det_size": ("INT", {"default": 640, "min": 160, "max": 2048, "step": 32,
                                 "tooltip": "detector input size; larger finds smaller faces"}),
        }}

    RETURN_TYPES = ("INSIGHTFACE",)
    FUNCTION = "load"
    CATEGORY = CATEGORY

    def load(self, model_name, provider, det_size):
        import folder_paths

        from ..storymaker_core.faces import FaceAnalyzer, FaceAnalyzerConfig, FaceModelsNotFoundError

        roots = folder_paths.get_folder_paths("insightface")
        for i, root in enumerate(roots):
            try:
                config = FaceAnalyzerConfig(root=root, name=model_name, providers=[provider, "CPU"], det_size=det_size)
                return (FaceAnalyzer(config),)
            except FaceModelsNotFoundError:
                if i == len(roots) - 1:
                    raise


class StoryMakerSAMLoader:
    DESCRIPTION = "Loads a Segment Anything checkpoint from models/sams/ to mask characters when no MASK is given."

    @classmethod
    def INPUT_TYPES(cls):
        import folder_paths

        return {"required": {"sam_file": (folder_paths.get_filename_list("sams"),
                                          {"tooltip": "sam_vit_b_01ec64.pth, sam_vit_l_0b3195.pth or sam_vit_h_4b8939.pth (or .safetensors)"})}}

    RETURN_TYPES = ("STORYMAKER_SAM",)
    FUNCTION = "load"
    CATEGORY = CATEGORY

    def load(self, sam_file):
        import comfy.model_management
        import folder_paths

        from ..storymaker_core.segment import PersonSegmenter

        path = folder_paths.get_full_path_or_raise("sams", sam_file)
        return (ManagedSegmenter(PersonSegmenter(path, device=comfy.model_management.unet_offload_device())),)


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


NODE_CLASS_MAPPINGS = {"StoryMakerLoader": StoryMakerLoader, "StoryMakerInsightFaceLoader": StoryMakerInsightFaceLoader,
                       "StoryMakerSAMLoader": StoryMakerSAMLoader}
NODE_DISPLAY_NAME_MAPPINGS = {"StoryMakerLoader": "Load StoryMaker", "StoryMakerInsightFaceLoader": "Load InsightFace (StoryMaker)",
                              "StoryMakerSAMLoader": "Load Segment Anything (StoryMaker)"}
