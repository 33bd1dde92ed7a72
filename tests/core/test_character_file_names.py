"""The file names *Save StoryMaker Character* accepts: plain file names only, on every OS."""

import pytest

from storymaker_core.characters import MAX_FILE_STEM, CharacterError, character_file_stem


@pytest.mark.parametrize("text, stem", [("ava", "ava"), ("  Ava Smith  ", "Ava Smith"), ("ava.safetensors", "ava"),
                                        ("Ava-2_v1.0", "Ava-2_v1.0"), ("é" * MAX_FILE_STEM, "é" * MAX_FILE_STEM)])
def test_plain_names_are_kept(text, stem):
    assert character_file_stem(text, "filename") == stem


@pytest.mark.parametrize("text, says", [
    ("../../../../../../tmp/x", "is a path"), ("/tmp/x", "is a path"), ("sub/ava", "is a path"),
    ("..\\..\\x", "is a path"), ("\\\\server\\share\\x", "is a path"), ("C:x", "holds ':'"),
    ("C:\\Windows\\x", "is a path"), ("ava\x00.png", "control character"), ("ava\nbob", "control character"),
    ("", "is empty"), ("   ", "is empty"), (".safetensors", "is empty"), (".", "starts with '.'"),
    ("..", "holds '..'"), ("a..b", "holds '..'"), (".hidden", "starts with '.'"),
    ("x" * (MAX_FILE_STEM + 1), "at most"),
    ("CON", "device name"), ("lpt1.backup", "device name"), ("a|b", "Windows refuses"), ("ava.", "Windows refuses"),
])
def test_anything_else_is_refused_naming_the_input_and_the_fix(text, says):
    with pytest.raises(CharacterError) as info:
        character_file_stem(text, "filename")
    message = str(info.value)
    assert message.startswith("filename ") and says in message, message
    assert "write a plain file name in filename, such as 'ava'" in message and len(message) < 260, message
