"""Loader nodes (V3 schema): StoryMaker weights, InsightFace and Segment Anything, each found through
`folder_paths`; the work is in nodes/loader_ops.py."""

from __future__ import annotations

from comfy_api.latest import io

from . import loader_ops
from .v3_types import CATEGORY, InsightFace, Sam, StoryMaker


class StoryMakerLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        import folder_paths

        return io.Schema(
            node_id="StoryMakerLoader", display_name="Load StoryMaker", category=CATEGORY,
            description="Loads StoryMaker weights (the released mask.bin or its .safetensors) from models/storymaker.",
            inputs=[io.Combo.Input("storymaker_file", options=folder_paths.get_filename_list("storymaker"),
                                   tooltip="mask.bin from RED-AIGC/StoryMaker, or a converted .safetensors")],
            outputs=[StoryMaker.Output(tooltip="StoryMaker's resampler, image-branch and LoRA weights")],
        )

    @classmethod
    def execute(cls, storymaker_file) -> io.NodeOutput:
        import folder_paths

        path = folder_paths.get_full_path_or_raise("storymaker", storymaker_file)
        return io.NodeOutput(loader_ops.load_storymaker(path, storymaker_file))


class StoryMakerInsightFaceLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="StoryMakerInsightFaceLoader", display_name="Load InsightFace (StoryMaker)", category=CATEGORY,
            description="Loads InsightFace face detection + ArcFace recognition from "
                        "models/insightface/models/<name>/.",
            inputs=[
                io.Combo.Input("model_name", options=["buffalo_l", "antelopev2"],
                               tooltip="StoryMaker was trained with buffalo_l"),
                io.Combo.Input("provider", options=["CPU", "CUDA", "ROCM", "CoreML"], default="CUDA",
                               tooltip="where onnxruntime runs the face models (CPU is used when this one is not "
                                       "available)"),
                io.Int.Input("det_size", default=640, min=160, max=2048, step=32,
                             tooltip="detector input size; larger finds smaller faces"),
            ],
            outputs=[InsightFace.Output(tooltip="face detection + ArcFace identity, for Character from Image")],
        )

    @classmethod
    def execute(cls, model_name, provider, det_size) -> io.NodeOutput:
        import folder_paths

        return io.NodeOutput(loader_ops.face_analyzer(folder_paths.get_folder_paths("insightface"), model_name,
                                                      provider, det_size))


class StoryMakerSAMLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        import folder_paths

        return io.Schema(
            node_id="StoryMakerSAMLoader", display_name="Load Segment Anything (StoryMaker)", category=CATEGORY,
            description="Loads a Segment Anything checkpoint from models/sams/ to mask characters when no MASK is "
                        "given.",
            inputs=[io.Combo.Input("sam_file", options=folder_paths.get_filename_list("sams"),
                                   tooltip="sam_vit_b_01ec64.pth, sam_vit_l_0b3195.pth or sam_vit_h_4b8939.pth "
                                           "(or .safetensors)")],
            outputs=[Sam.Output(tooltip="Segment Anything, for Character from Image's sam input")],
        )

    @classmethod
    def execute(cls, sam_file) -> io.NodeOutput:
        import folder_paths

        return io.NodeOutput(loader_ops.segmenter(folder_paths.get_full_path_or_raise("sams", sam_file)))
