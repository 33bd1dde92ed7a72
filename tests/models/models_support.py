"""Small stand-ins for the model files, and the command-line arguments that point at the fake hosts."""

from __future__ import annotations

import io
import random
import zipfile

ONNX_NAMES = ("1k3d68.onnx", "2d106det.onnx", "det_10g.onnx", "genderage.onnx", "w600k_r50.onnx")


def payload(name: str, size: int) -> bytes:
    """Deterministic random bytes, distinct per name."""
    return random.Random(name).randbytes(size)


def zip_of(members: dict[str, bytes], folder: str = "") -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(folder + name, data)
    return buffer.getvalue()


def release_args(hosts) -> list[str]:
    """--url overrides that send the release-host items to the loopback server."""
    return ["--url", f"insightface={hosts.release_url('buffalo_l.zip')}",
            "--url", f"sam={hosts.release_url('sam_vit_b_01ec64.pth')}"]
