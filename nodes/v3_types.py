"""The pack's own ComfyUI types, for its V3-schema nodes (`comfy_api.latest`)."""

from comfy_api.latest import io

StoryMaker = io.Custom("STORYMAKER")
Character = io.Custom("STORYMAKER_CHARACTER")
Cast = io.Custom("STORYMAKER_CAST")
Member = io.Custom("STORYMAKER_MEMBER")
Story = io.Custom("STORYMAKER_STORY")
InsightFace = io.Custom("INSIGHTFACE")

CATEGORY = "StoryMaker"
STORY_CATEGORY = "StoryMaker/story"


def finite(value: float, name: str) -> float:
    """The float, or a ValueError naming the input: the JSON literal NaN passes ComfyUI's min/max checks."""
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"{name} is {value}: give a number (NaN and infinity are not allowed).")
    return value
