"""The pack's ComfyUI nodes, all on ComfyUI's V3 schema (`comfy_api.latest`): thin adapters that convert ComfyUI
types and call `storymaker_core`.

The node modules (loaders, characters, encode, apply; cast, story, storyboard, consistency, scene) import
`comfy_api` and so load only inside ComfyUI. What the classic-workflow nodes do lives in `*_ops.py` beside them
(loader_ops, character_ops, encode_ops, apply_ops; plus common and patching), which import nothing of ComfyUI at
import time: the offline tests call those. ComfyUI registers the nodes through the pack's `comfy_entrypoint`.
"""

NODE_MODULES = ("loaders", "characters", "encode", "apply", "cast", "story", "storyboard", "consistency", "scene")


def node_classes() -> list:
    """Every node class of the pack (V3 `io.ComfyNode`s), in menu order."""
    from . import apply, cast, characters, consistency, encode, loaders, scene, story, storyboard

    return [loaders.StoryMakerLoader, loaders.StoryMakerInsightFaceLoader, loaders.StoryMakerSAMLoader,
            characters.StoryMakerCharacterFromImage, characters.StoryMakerBlendCharacters,
            characters.StoryMakerSaveCharacter, characters.StoryMakerLoadCharacter,
            encode.StoryMakerEncodeCharacters, apply.StoryMakerApply,
            cast.StoryMakerCast, story.StoryMakerStory, storyboard.StoryMakerStoryboard,
            consistency.StoryMakerConsistencyScores,
            cast.StoryMakerEncodeMember, scene.StoryMakerApplyLoRA, scene.StoryMakerApplyScene,
            scene.StoryMakerSaveScene, scene.StoryMakerJoinImages]


def extension():
    """The pack as a V3 `ComfyExtension` (what `comfy_entrypoint` returns to ComfyUI)."""
    from comfy_api.latest import ComfyExtension

    class StoryMakerExtension(ComfyExtension):
        async def get_node_list(self) -> list:
            return node_classes()

    return StoryMakerExtension()


try:
    from comfy_api.latest import io as _io
except ImportError:  # imported outside ComfyUI (offline tests): the node modules need comfy_api
    _io = None
if _io is not None:  # inside ComfyUI (or a library-mode test): `pack.nodes.apply` etc. are imported
    node_classes()
