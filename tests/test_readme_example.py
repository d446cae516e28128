"""The README's "Python API" section runs as written: its code blocks are extracted from README.md and executed
in order, in one namespace (the second continues the first), so the README and this test cannot drift."""

from __future__ import annotations

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def api_blocks() -> list[str]:
    text = README.read_text(encoding="utf-8")
    start = text.index("\n## Python API\n")
    end = text.find("\n## ", start + 1)
    section = text[start:end if end != -1 else len(text)]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_the_complete_example_is_short_and_runs(tmp_path, monkeypatch):
    blocks = api_blocks()
    assert len(blocks) == 2
    assert len(blocks[0].splitlines()) < 15  # the complete example stays under 15 lines
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "readme_example"}
    exec(compile(blocks[0], "README.md (Python API, example)", "exec"), namespace)
    model, small, x = namespace["model"], namespace["small"], namespace["x"]
    full = sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for p in small.parameters()) < full / 3  # half the maps, 5 of 9 taps
    assert {type(m).__name__ for m in small.modules()} >= {"IntraKernelConv2d"}
    assert small[0].out_channels == 16  # half of 32 maps (a multiple of 8 and of 16: either CPU rounding)

    exec(compile(blocks[1], "README.md (Python API, search and run folder)", "exec"), namespace)
    loaded = namespace["small"]
    assert (tmp_path / "runs" / "mine" / "model.safetensors").is_file()
    compacted = namespace["structprune"].compact(namespace["model"], namespace["masks"])
    assert torch.allclose(loaded(x), compacted(x), atol=1e-6)
    assert loaded[0].out_channels == 16
