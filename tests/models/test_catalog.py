"""The catalog is the README's model table as data: the two must name the same files, folders and sources."""

from __future__ import annotations

from pathlib import Path

import pytest

from storymaker.models.catalog import ITEMS, HubSource, UrlSource, select

README = Path(__file__).resolve().parents[2] / "README.md"


def _table_rows() -> list[str]:
    text = README.read_text(encoding="utf-8")
    section = text.split("## Models: which file goes where", 1)[1].split("\n## ", 1)[0]
    return [line for line in section.splitlines() if line.startswith("| `")]


@pytest.mark.parametrize("item", ITEMS, ids=lambda item: item.key)
def test_every_catalog_entry_is_a_row_of_the_readme_table(item):
    rows = [row for row in _table_rows() if f"`{item.name}" in row.split("|")[1]]
    assert len(rows) == 1, f"README has no single row for {item.name}"
    _, save_as, folder, source, _ = rows[0].split("|")
    assert f"`{item.folder}/`" in folder
    if isinstance(item.source, HubSource):
        assert item.source.repo_id in source
        if "/" in item.source.filename:  # a file inside the repo that gets renamed: the README says which
            assert item.source.filename in source
    else:
        assert isinstance(item.source, UrlSource)
        assert item.source.url.rsplit("/", 1)[-1] in rows[0]  # the release file the row names


def test_select_keeps_table_order_and_rejects_unknown_names():
    assert [item.key for item in select(["sam", "storymaker"])] == ["storymaker", "sam"]
    with pytest.raises(ValueError, match="unknown model vae"):
        select(["vae"])
    with pytest.raises(ValueError, match="HF_ENDPOINT"):
        select(urls={"sdxl": "http://mirror/x"})
    assert select(["sam"], urls={"sam": "http://mirror/sam.pth"})[0].source == UrlSource("http://mirror/sam.pth")


def test_the_names_the_example_workflows_load_are_the_names_fetch_writes():
    import json

    fields = {"ckpt_name": "sdxl", "clip_name": "clip_vision", "storymaker_file": "storymaker",
              "control_net_name": "controlnet", "sam_file": "sam", "model_name": "insightface"}
    names = {item.key: item.name for item in ITEMS}
    used = set()
    for path in (README.parent / "workflows" / "api").glob("*.api.json"):
        for node in json.loads(path.read_text(encoding="utf-8")).values():
            for field, key in fields.items():
                value = node.get("inputs", {}).get(field)
                if isinstance(value, str):
                    assert value == names[key], f"{path.name}: {field} = {value!r}, fetch writes {names[key]!r}"
                    used.add(key)
    assert used == set(fields.values())  # every fetched model is used by some example
