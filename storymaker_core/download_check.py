"""A failed download told from a model file's first bytes: empty, a Git LFS pointer, a saved web page.

Shared by ``weights.py`` (before a parser sees a StoryMaker file) and ``model_files.py`` (a model file judged
from its header), so that neither imports the other: ``model_files`` judges StoryMaker files with ``weights``.
"""

from __future__ import annotations

TABLE = "the README's \"Models: which file goes where\""


class FileProblem(Exception):
    """What is wrong with a file (``problem``) and what to do about it (``fix``), in plain words."""

    def __init__(self, problem: str, fix: str = f"download it again ({TABLE} says from where)"):
        super().__init__(problem)
        self.problem, self.fix = problem, fix


def human_size(n: int) -> str:
    return f"{n} bytes" if n < 10_000 else f"{n / 1e6:.1f} MB"


def failed_download(head: bytes, size: int) -> FileProblem | None:
    """The usual failed downloads, told from the first bytes: empty, a Git LFS pointer, a web page."""
    if size == 0:
        return FileProblem("is empty (0 bytes): a placeholder or a download that never started")
    if head.startswith(b"version https://git-lfs"):
        return FileProblem(f"is a Git LFS pointer ({human_size(size)}), not the file itself",
                           "download the real file (Hugging Face's download button, or `git lfs pull` in a clone)")
    low = head.lstrip()[:512].lower()
    if low.startswith(b"<") and (b"<html" in low or b"<!doctype" in low):
        return FileProblem(f"is a web page ({human_size(size)}; a login or error page saved in place of the file)",
                           "download it again in a browser where you are logged in (or with a token), and "
                           "accept the model's licence on its page first if it has one")
    return None
