"""StoryMaker's model, host-free: pure PyTorch/numpy, no ComfyUI import; what the nodes and the trainer share.

Modules, one job each: `weights` (load/validate files), `model_files` / `download_check` (a model file judged
from its header), `layout` (SDXL layer names), `resampler` (image tokens), `attention` (decoupled
cross-attention), `patch` / `compiled` (the attn2 patch), `lora` (re-keying/merging), `adapter`, `preprocess`
(crops), `faces` (insightface), `segment` (Segment Anything), `characters` / `identity` / `encode`, `convert`
(.bin -> .safetensors), and the story in the editor: `cast`, `script`, `regions`, `story_graph`,
`story_render`, `storyboard`.

The applications built on it (story runner, ViStoryBench tools, evaluation, model fetch, workflow files) are
the package `storymaker`; nothing here imports it, the nodes or the trainer (tests/test_layering.py).
"""

__version__ = "0.1.0"
