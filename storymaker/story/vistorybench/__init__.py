"""ViStoryBench: convert its dataset to story files, and export rendered stories to its output layout.

``storymaker vistorybench convert DATASET OUT`` and ``... export RUNS... --to OUTPUTS``;
the walk-through is ``docs/vistorybench.md``. Pure Python: no ComfyUI import, no ViStoryBench import.
"""

from .dataset import (DatasetError, VistoryCharacter, VistoryShot, VistoryStory, load_dataset, load_story)
from .outputs import OutputRun, output_shot_path, output_story_dir, read_output_run, read_output_shots

__all__ = ["DatasetError", "OutputRun", "VistoryCharacter", "VistoryShot", "VistoryStory", "load_dataset", "load_story",
           "output_shot_path", "output_story_dir", "read_output_run", "read_output_shots"]
