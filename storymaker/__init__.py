"""StoryMaker's applications, built on the model in `storymaker_core`: one command, `storymaker VERB ...`.

`python -m storymaker VERB ...` is the same command (no install needed: run it from the repository root, e.g.
`ComfyUI/custom_nodes/ComfyUI-StoryMaker`); `storymaker --help` lists the verbs. Subpackages and modules:
`story/` (the story runner; `story/vistorybench/` converts the benchmark and exports to its layout),
`evaluate/` (metrics, story consistency), `models/` (the model fetcher), `comfyui` (where the ComfyUI is and
where it looks for model files, for every application), `workflow_format` / `workflow_layout` (UI <-> API
workflow files), `cli` (the verbs).

Nothing here is imported by ComfyUI when it loads the pack, except the evaluation code the consistency node
scores with (`nodes/consistency.py`). `storymaker_core` never imports this package. Importing it loads no
model library: each verb imports what it needs when it runs.
"""
