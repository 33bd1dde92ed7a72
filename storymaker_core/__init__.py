"""StoryMaker's logic, host-free: pure PyTorch/numpy, no ComfyUI import.

Modules, one job each: `weights` (load/validate files), `layout` (SDXL layer names), `resampler` (image
tokens), `attention` (decoupled cross-attention), `lora` (re-keying/merging), `preprocess` (crops),
`faces` (insightface), `convert` (CLI: .bin -> .safetensors).
"""

__version__ = "0.1.0"
