"""The manual tells the truth (issue #9, item 32): its examples validate as copied, its
command table lists every option, and the scenarios' comments give the traps they make."""

from __future__ import annotations

import argparse
import csv
import json
import re
import shutil
from pathlib import Path

import pytest

from sim.cli import build_parser, main
from sim.model.scenario import load_scenario
from sim.model.simulation import Simulation
from sim.model.summary import totals

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def section(title: str) -> str:
    start = README.index(f"\n## {title}")
    end = README.find("\n## ", start + 1)
    return README[start : end if end != -1 else None]


def first_yaml(text: str) -> str:
    start = text.index("```yaml") + len("```yaml")
    return text[start : text.index("```", start)]


def test_the_scenario_example_validates_as_copied(tmp_path: Path) -> None:
    example = tmp_path / "example.yaml"
    example.write_text(first_yaml(section("Scenario files")))
    assert main(["validate", str(example)]) == 0


def test_the_sweep_example_validates_as_copied(tmp_path: Path) -> None:
    """Its base is ../bdw.yaml, as from scenarios/sweeps/."""
    shutil.copy(ROOT / "scenarios" / "bdw.yaml", tmp_path / "bdw.yaml")
    (tmp_path / "sweeps").mkdir()
    example = tmp_path / "sweeps" / "example.yaml"
    example.write_text(first_yaml(section("Sweeps")))
    assert main(["validate", str(example)]) == 0


def options(
    parser: argparse.ArgumentParser | None = None, prefix: str = ""
) -> dict[str, list[str]]:
    """Every (sub)command's options by their long names: "run", "trace summarize", ..."""
    parser = parser or build_parser()
    found: dict[str, list[str]] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                nested = options(sub, f"{prefix}{name} ")
                found.update(nested or {f"{prefix}{name}": []})
    if prefix and not found:
        found[prefix.strip()] = [
            max(a.option_strings, key=len)
            for a in parser._actions
            if a.option_strings and a.dest != "help"
        ]
    return found


def test_the_command_table_lists_every_command_and_option() -> None:
    table = section("Command line").split("\n\n**What a run may cost.**")[0]
    found = options()
    assert {"select", "validate", "run", "bench", "sweep", "plot", "trace summarize"} <= set(found)
    for command, opts in found.items():
        rows = [line for line in table.splitlines() if line.startswith(f"| `vgpu-sim {command}")]
        assert rows, f"the README's command table has no row for {command}"
        for opt in opts:
            assert opt in rows[0], f"the README's row for {command} does not mention {opt}"


TRAPS = re.compile(r"~([\d,]+) traps")


@pytest.mark.parametrize(
    "path",
    [p for p in sorted((ROOT / "scenarios").glob("*.yaml")) if TRAPS.search(p.read_text())],
    ids=lambda p: p.name,
)
def test_a_scenarios_comment_gives_the_traps_it_makes(path: Path) -> None:
    """bdw.yaml said ~16,000 traps and made ~4,860. If the model changes, update it."""
    claimed = int(TRAPS.search(path.read_text()).group(1).replace(",", ""))  # type: ignore[union-attr]
    made = totals(Simulation(load_scenario(path), base_dir=path.parent).run())
    assert 0.8 <= made["traps_including_warmup"] / claimed <= 1.25, (
        f"{path.name} says ~{claimed} traps, makes {made['traps_including_warmup']}"
    )


def test_trace_marks_warm_up_rows(tmp_path: Path) -> None:
    """trace.csv had warm-up rows and no column saying which."""
    out = tmp_path / "t"
    tiny = ROOT / "scenarios" / "small" / "tiny.yaml"
    assert main(["run", str(tiny), "--trace", "--out", str(out), "--no-progress"]) == 0
    rows = list(csv.DictReader((out / "trace.csv").open()))
    man = json.loads((out / "manifest.json").read_text())
    warmup_ns = man["config"]["warmup_ms"] * 1e6
    assert {r["warmup"] for r in rows} == {"0", "1"}
    for r in rows:
        assert r["warmup"] == ("1" if float(r["t_trap_ns"]) < warmup_ns else "0")
    assert sum(r["warmup"] == "0" for r in rows) == man["totals"]["accesses"]
