"""Story runner: render a whole story (one cast, many scenes) through ComfyUI's HTTP API.

``storymaker story STORY.yaml`` (or ``python -m storymaker story STORY.yaml``). The story file
schema is in ``docs/story-runner.md``. This package talks to ComfyUI over HTTP only and never imports
ComfyUI itself, so it runs anywhere (a laptop queueing to a GPU box, CI, a second machine).
"""

from .errors import (NoServerLeft, PromptRejected, SceneFailed, SceneTimeout, ServerUnavailable, StoryError,
                     StoryFileError, ValidationFailed)
from .plan import ScenePlan, plan_story
from .runner import RunOptions, RunReport, StoryRunner, run_story
from .schema import Story, load_story

__all__ = [
    "NoServerLeft", "PromptRejected", "RunOptions", "RunReport", "SceneFailed", "ScenePlan", "SceneTimeout",
    "ServerUnavailable", "Story", "StoryError", "StoryFileError", "StoryRunner", "ValidationFailed",
    "load_story", "plan_story", "run_story",
]
