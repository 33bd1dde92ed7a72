"""The pack's ComfyUI nodes: thin adapters that convert ComfyUI types and call `storymaker_core`.

The story nodes use ComfyUI's V3 schema (`comfy_api.latest`): registered beside the classic ones when the
host has it (every ComfyUI that runs them does; offline tests import the classic nodes alone).
"""

from . import apply, characters, encode, loaders

NODE_CLASS_MAPPINGS = {}
NODE_DISPLAY_NAME_MAPPINGS = {}
for _module in (loaders, characters, encode, apply):
    NODE_CLASS_MAPPINGS.update(_module.NODE_CLASS_MAPPINGS)
    NODE_DISPLAY_NAME_MAPPINGS.update(_module.NODE_DISPLAY_NAME_MAPPINGS)


def v3_nodes() -> list:
    """The V3-schema node classes (story in the editor)."""
    from . import cast, consistency, scene, story, storyboard

    return [cast.StoryMakerCast, story.StoryMakerStory, storyboard.StoryMakerStoryboard,
            consistency.StoryMakerConsistencyScores,
            cast.StoryMakerEncodeMember, scene.StoryMakerApplyLoRA, scene.StoryMakerApplyScene,
            scene.StoryMakerSaveScene, scene.StoryMakerJoinImages]


try:
    import comfy_api.latest  # noqa: F401
except ImportError:  # imported outside ComfyUI
    pass
else:
    for _node in v3_nodes():
        _schema = _node.GET_SCHEMA()
        NODE_CLASS_MAPPINGS[_schema.node_id] = _node
        NODE_DISPLAY_NAME_MAPPINGS[_schema.node_id] = _schema.display_name
