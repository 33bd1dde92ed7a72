"""The pack's own ComfyUI types, for its V3-schema nodes (`comfy_api.latest`)."""

from comfy_api.latest import io

StoryMaker = io.Custom("STORYMAKER")
Character = io.Custom("STORYMAKER_CHARACTER")
Cast = io.Custom("STORYMAKER_CAST")
Member = io.Custom("STORYMAKER_MEMBER")
Story = io.Custom("STORYMAKER_STORY")
InsightFace = io.Custom("INSIGHTFACE")
Embeds = io.Custom("STORYMAKER_EMBEDS")
Sam = io.Custom("STORYMAKER_SAM")

CATEGORY = "StoryMaker"
STORY_CATEGORY = "StoryMaker/story"

