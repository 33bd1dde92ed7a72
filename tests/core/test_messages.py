"""Another library's error text inside our messages: no terminal colour codes, one line, each path said once."""

import pytest

from storymaker_core.messages import detail, plain
from storymaker_core.weights import StoryMakerWeightsError, load_storymaker_weights

ORT = ("\x1b[1;31m[ONNXRuntimeError] : 7 : INVALID_PROTOBUF : Load model from /models/insightface/models/buffalo_l/"
       "det_10g.onnx failed:Protobuf parsing failed.\x1b[m\nsecond line")


def test_detail_is_plain_one_line_and_shortens_paths_the_message_names():
    text = detail(RuntimeError(ORT), "/models/insightface/models/buffalo_l")
    assert text == "[ONNXRuntimeError] : 7 : INVALID_PROTOBUF : Load model from buffalo_l/det_10g.onnx failed:" \
                   "Protobuf parsing failed."
    assert plain("\x1b[0;93mwarning\x1b[0m \x1b7saved") == "warning saved"
    assert detail(ValueError("x" * 500), limit=20) == "x" * 17 + "..."
    assert detail(KeyError()) == "KeyError"


def test_a_weights_read_error_carries_no_colour_codes_and_names_the_file_once(tmp_path, monkeypatch):
    import safetensors.torch

    path = tmp_path / "storymaker.safetensors"
    path.write_bytes(b"\x00" * 64)

    def failing_read(name):
        raise OSError(f"\x1b[31m[Errno 5] Input/output error: '{name}'\x1b[0m")

    monkeypatch.setattr(safetensors.torch, "load_file", failing_read)
    with pytest.raises(StoryMakerWeightsError) as error:
        load_storymaker_weights(str(path))
    message = str(error.value)
    assert "\x1b" not in message and message.count(str(path)) == 1, message
    assert "Input/output error: 'storymaker.safetensors'" in message
