"""The pack's ComfyUI nodes: thin adapters that convert ComfyUI types and call `storymaker_core`."""

from . import apply, characters, encode, loaders

NODE_CLASS_MAPPINGS = {}
NODE_DISPLAY_NAME_MAPPINGS = {}
for _module in (loaders, characters, encode, apply):
    NODE_CLASS_MAPPINGS.update(_module.NODE_CLASS_MAPPINGS)
    NODE_DISPLAY_NAME_MAPPINGS.update(_module.NODE_DISPLAY_NAME_MAPPINGS)
