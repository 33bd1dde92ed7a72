"""StoryMaker Storyboard: a story's panels laid out as one page (IMAGE), to save or preview like any image."""

from __future__ import annotations

import numpy as np
import torch
from comfy_api.latest import io

from ..storymaker_core.storyboard import PageOptions, Panel, make_storyboard
from ..storymaker_core.story_render import StoryRender
from .common import images_to_numpy
from .v3_types import STORY_CATEGORY, Story


class StoryMakerStoryboard(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="StoryMakerStoryboard", display_name="StoryMaker Storyboard", category=STORY_CATEGORY,
            description="Lays a story's panels out as a page: a grid (a scene's candidates side by side) or comic "
                        "tiers, with captions; panels flagged by StoryMaker Consistency Scores get a red frame.",
            inputs=[
                io.Image.Input("images", tooltip="the story's images (StoryMaker Story's images output)"),
                Story.Input("story", tooltip="StoryMaker Story's story output (or the consistency node's)"),
                io.Combo.Input("style", options=["grid", "comic"], default="grid",
                               tooltip="grid: rows of equal panels; comic: tiers of panels across the page"),
                io.Int.Input("columns", default=3, min=1, max=16, tooltip="grid: panels per row"),
                io.Int.Input("panel_width", default=384, min=64, max=2048, step=8, tooltip="grid: panel width"),
                io.Int.Input("gutter", default=16, min=0, max=256, tooltip="space between panels, in pixels"),
                io.String.Input("order", default="", tooltip="empty = script order; else scene numbers such as "
                                                             "3,1,2 (scenes not listed are left out)"),
                io.Boolean.Input("captions", default=True, tooltip="scene number and text under each panel"),
                io.String.Input("rows", default="3,2", tooltip="comic: panels per tier, repeating (e.g. 2,3,1)"),
                io.Int.Input("page_width", default=1536, min=256, max=8192, step=8, tooltip="comic: page width"),
                io.Combo.Input("background", options=["dark", "light"], default="dark", tooltip="the page's colour"),
            ],
            outputs=[io.Image.Output(display_name="page")],
        )

    @classmethod
    def execute(cls, images, story: StoryRender, style, columns, panel_width, gutter, order, captions, rows,
                page_width, background) -> io.NodeOutput:
        if images.shape[0] != len(story.panels):
            raise ValueError(f"images holds {images.shape[0]} images but story describes {len(story.panels)}: "
                             f"connect the same StoryMaker Story's images and story outputs.")
        panels = [Panel(image=rgb, scene=p.scene, text=p.text, candidate=p.candidate, candidates=p.candidates,
                        seed=p.seed, flag=p.flag) for rgb, p in zip(images_to_numpy(images), story.panels)]
        page = make_storyboard(panels, PageOptions(style=style, columns=columns, panel_width=panel_width,
                                                   gutter=gutter, order=order, captions=captions, rows=rows,
                                                   page_width=page_width, background=background))
        return io.NodeOutput(torch.from_numpy(np.ascontiguousarray(page)).float()[None] / 255.0)
