"""Without COMFYUI_PATH, the ComfyUI tests run against the ComfyUI the pack was cloned into."""

from support.comfyui import containing_comfyui


def test_the_comfyui_two_levels_up_is_found_only_from_its_custom_nodes(tmp_path):
    root = tmp_path / "ComfyUI"
    pack = root / "custom_nodes" / "ComfyUI-StoryMaker"
    pack.mkdir(parents=True)
    assert containing_comfyui(pack) is None  # no main.py: not a ComfyUI
    (root / "main.py").write_text("")
    assert containing_comfyui(pack) == root.resolve()
    elsewhere = tmp_path / "src" / "ComfyUI-StoryMaker"
    elsewhere.mkdir(parents=True)
    (tmp_path / "main.py").write_text("")
    assert containing_comfyui(elsewhere) is None  # a main.py two levels up, but not through custom_nodes/
