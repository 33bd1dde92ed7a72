"""*Save StoryMaker Character* writes only plain file names inside models/storymaker_characters/ (no ComfyUI: the
node's work, `character_ops.save_character_file`, is given a temporary folder as that folder)."""

import os

import numpy as np
import pytest
import torch

from storymaker_core.characters import Character, load_character
from support.node_specs import node_module


FOLDER = []  # models/storymaker_characters of the running test


@pytest.fixture
def folders(tmp_path):
    """(models/storymaker_characters, the base folder above models/): what the node passes as the folder."""
    folder = tmp_path / "base" / "models" / "storymaker_characters"
    folder.mkdir(parents=True)
    FOLDER[:] = [str(folder)]
    return folder, tmp_path


def encoded(name: str) -> Character:
    """A saveable (encoded, appearance-only) character; its name is used when filename is empty."""
    return Character(name=name, id_embedding=torch.zeros(512), character_image=np.zeros((1, 8, 8, 3), np.uint8),
                     character_clip=torch.zeros(4, 1280), identity="appearance")


def save(filename: str, name: str = "ava", character: Character = None) -> str:
    """What Save StoryMaker Character does: the file name it wrote (the node shows it in its ui text)."""
    character = encoded(name) if character is None else character
    return node_module("character_ops").save_character_file(character, filename, FOLDER[0])


def written(root) -> set:
    return {os.path.relpath(os.path.join(d, f), root) for d, _, files in os.walk(root) for f in files}


def test_a_plain_name_is_saved_in_the_folder_and_never_overwritten(folders):
    folder, _ = folders
    assert save("ava") == "ava.safetensors"
    assert save("ava.safetensors") == "ava_001.safetensors"
    assert save("", name="Bob") == "Bob.safetensors"
    assert sorted(p.name for p in folder.iterdir()) == ["Bob.safetensors", "ava.safetensors", "ava_001.safetensors"]
    assert load_character(str(folder / "Bob.safetensors")).name == "Bob"


HOSTILE = ["../../../escaped", "../escaped", "sub/x", "..\\..\\x", "C:\\x", "C:x", "\\\\host\\share\\x", ".",
           "..", "x\x00y", "x\ny", "x" * 201, "CON"]


@pytest.mark.parametrize("hostile", HOSTILE + ["ABSOLUTE"])
@pytest.mark.parametrize("field", ["filename", "name"])
def test_a_hostile_filename_or_name_is_refused_and_nothing_is_written(folders, field, hostile):
    folder, tmp_path = folders
    hostile = str(tmp_path / "absolute") if hostile == "ABSOLUTE" else hostile
    with pytest.raises(ValueError) as info:
        save(hostile) if field == "filename" else save("  ", name=hostile)
    message = str(info.value)
    said = "filename " if field == "filename" else "filename is empty, so the character's name "
    assert message.startswith(said) and "write a plain file name in filename, such as 'ava'" in message, message
    assert written(tmp_path) == set()


def test_a_symlink_in_the_folder_is_never_written_through(folders):
    folder, tmp_path = folders
    (folder / "ava.safetensors").symlink_to(tmp_path / "outside.safetensors")  # dangling: exists() is False
    assert save("ava") == "ava_001.safetensors"
    assert not (tmp_path / "outside.safetensors").exists()


def test_a_folder_that_leads_out_is_caught_by_the_second_guard(folders, monkeypatch):
    """Should a name ever pass the validator that resolves outside the folder, the realpath check refuses it."""
    folder, tmp_path = folders
    (folder / "link").symlink_to(tmp_path)
    monkeypatch.setattr(node_module("character_ops"), "character_file_stem", lambda text, what: "link/escaped")
    with pytest.raises(ValueError, match="outside models/storymaker_characters/"):
        save("ava")
    assert not (tmp_path / "escaped.safetensors").exists()


def test_features_of_another_clip_vision_are_refused_at_save_naming_it(folders):
    folder, _ = folders
    narrow = Character(name="ava", id_embedding=torch.zeros(512), character_image=np.zeros((1, 8, 8, 3), np.uint8),
                       character_clip=torch.zeros(4, 1024), identity="appearance")  # ViT-L's width
    with pytest.raises(ValueError, match="clip_vision gives 1024-wide features; StoryMaker reads CLIP-ViT-H-14's 1280"):
        save("ava", character=narrow)
    assert not any(folder.iterdir())
