"""StoryMaker Consistency Scores: each panel of a story rendered in the editor against the cast's references.

The node converts ComfyUI's types and calls `storymaker.evaluate.panels` (the rules of `evaluate story`,
docs/evaluation.md); the returned story carries a flag on every panel below its threshold.

The one node that imports the application package `storymaker` rather than only `storymaker_core`: the scores
must be the project's existing evaluation code (the numbers `storymaker evaluate story` gives), not a copy. That
code imports `storymaker_core` through `storymaker/_core.py`, so inside ComfyUI it uses the pack's own copy, the
one these nodes' objects come from. tests/test_layering.py allows this import and no other.
"""

from __future__ import annotations

import numpy as np
from comfy_api.latest import io, ui

# The documented exception to "nodes import only storymaker_core" (see the module docstring).
from ..storymaker.evaluate.embedders import FaceEmbedder
from ..storymaker.evaluate.panels import (APPEARANCE, DEFAULT_CLIP_THRESHOLD, DEFAULT_FACE_THRESHOLD, FACE,
                                          cast_identities, identity_mode, on_stage_names, score_panels)
from .common import checked_floats, finite, images_to_numpy, numpy_to_images, progress_bar
from .v3_types import STORY_CATEGORY, Cast, InsightFace, Story


class ComfyClipEmbedder:
    """CLIP-I with ComfyUI's CLIP vision: `encode_image(IMAGE, crop=True).image_embeds`, L2-normalised, one image
    at a time (crops differ in size); the interface of `evaluate.embedders.ClipEmbedder.encode_images`."""

    def __init__(self, clip_vision):
        self.clip_vision = clip_vision

    def encode_images(self, images) -> np.ndarray:
        out = []
        for image in images:
            pixels = numpy_to_images(np.asarray(image.convert("RGB"), np.uint8)[None])
            embeds = self.clip_vision.encode_image(pixels, crop=True).image_embeds.detach().float().cpu()
            out.append((embeds / embeds.norm(dim=-1, keepdim=True).clamp_min(1e-12)).numpy())
        return np.concatenate(out).astype(np.float32)


def check_inputs(images, story, cast, insightface, clip_vision) -> None:
    """The errors a user can fix, naming the input: wrong batch, a missing model for the cast's characters."""
    if images.shape[0] != len(story.panels):
        raise ValueError(f"images has {images.shape[0]} image(s) but story '{story.name}' has {len(story.panels)} "
                         f"panel(s): connect the IMAGE output of the same story node as the story input.")
    names = on_stage_names(story)
    unknown = [n for n in names if n.lower() not in {k.lower() for k in cast.names}]
    if unknown:
        raise ValueError(f"story '{story.name}' has {unknown} on stage but the cast has only {list(cast.names)}: "
                         f"connect the cast the story was rendered with.")
    modes = {n: identity_mode(cast.character(n)) for n in names}
    faces = [n for n in names if modes[n] == FACE]
    looks = [n for n in names if modes[n] == APPEARANCE]
    if faces and insightface is None:
        raise ValueError(f"{', '.join(faces)} {'is' if len(faces) == 1 else 'are'} scored by the face (ArcFace): "
                         f"connect Load InsightFace (StoryMaker) to insightface (the model the characters were "
                         f"built with, buffalo_l).")
    if looks and clip_vision is None:
        raise ValueError(f"{', '.join(looks)} {'is' if len(looks) == 1 else 'are'} scored by the appearance (CLIP-I): "
                         f"connect a Load CLIP Vision (CLIP-ViT-H-14-laion2B) to clip_vision.")


class StoryMakerConsistencyScores(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="StoryMakerConsistencyScores",
            display_name="StoryMaker Consistency Scores",
            category=STORY_CATEGORY,
            description=("Scores every panel of a story against the cast's references, as `evaluate story` does: "
                         "ArcFace similarity for characters with a face, CLIP-I of the character's region for "
                         "appearance-only characters. Panels below a threshold are flagged in the returned story."),
            is_output_node=True,
            inputs=[
                io.Image.Input("images", tooltip="the story's IMAGE batch (one image per panel)"),
                Story.Input("story", tooltip="the story output of the same story node"),
                Cast.Input("cast", tooltip="the cast the story was rendered with"),
                InsightFace.Input("insightface", optional=True,
                                  tooltip="needed when a character has a face; the model its characters were "
                                          "built with (buffalo_l)"),
                io.ClipVision.Input("clip_vision", optional=True,
                                    tooltip="needed for appearance-only characters (CLIP-ViT-H-14-laion2B)"),
                io.Float.Input("face_threshold", default=DEFAULT_FACE_THRESHOLD, min=-1.0, max=1.0, step=0.01,
                               tooltip="ArcFace cosine below which a face is flagged; insightface counts >= 0.28 "
                                       "as the same person"),
                io.Float.Input("clip_threshold", default=DEFAULT_CLIP_THRESHOLD, min=-1.0, max=1.0, step=0.01,
                               tooltip="CLIP-I cosine below which an appearance character's region is flagged"),
            ],
            outputs=[
                Story.Output(display_name="story", tooltip="the story, panels below threshold flagged"),
                io.String.Output(display_name="table", tooltip="markdown: a row per panel and on-stage character"),
                io.String.Output(display_name="json", tooltip="the same numbers as JSON, raw cosines"),
            ],
        )

    @classmethod
    def validate_inputs(cls, face_threshold=None, clip_threshold=None):
        return checked_floats(cls, face_threshold=face_threshold, clip_threshold=clip_threshold)

    @classmethod
    def execute(cls, images, story, cast, face_threshold, clip_threshold, insightface=None,
                clip_vision=None) -> io.NodeOutput:
        face_threshold = finite(face_threshold, "face_threshold")
        clip_threshold = finite(clip_threshold, "clip_threshold")
        check_inputs(images, story, cast, insightface, clip_vision)
        bar = progress_bar(len(story.panels) + 1)
        clip = ComfyClipEmbedder(clip_vision) if clip_vision is not None else None
        references = cast_identities(cast, on_stage_names(story), clip)
        bar.update(1)
        scores = score_panels(images_to_numpy(images), story, references,
                              FaceEmbedder(insightface) if insightface is not None else None, clip,
                              face_threshold, clip_threshold, progress=lambda: bar.update(1))
        table = scores.markdown()
        return io.NodeOutput(story.with_flags(scores.flags()), table, scores.to_json(), ui=ui.PreviewText(table))

