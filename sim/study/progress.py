"""Progress of a sweep: a tqdm bar over finished runs on a terminal, plain lines otherwise."""

from __future__ import annotations

from typing import Any, TextIO

from sim.study.sweepfile import Task


class Progress:
    """A tqdm bar over completed runs on a terminal; otherwise one plain line per run."""

    def __init__(self, name: str, total: int, done: int, mode: str, stream: TextIO) -> None:
        self.name, self.total, self.done = name, total, done
        self.stream = stream
        self.bar = None
        self.mode = mode
        if mode == "bar":
            from tqdm import tqdm

            self.bar = tqdm(
                total=total, initial=done, desc=name, unit="run", leave=False, file=stream
            )

    def update(self, task: Task, outcome: dict[str, Any]) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)
            if outcome["error"]:
                self.bar.write(f"{self._what(task)}: FAILED: {outcome['error']}", file=self.stream)
        elif self.mode == "lines":
            wall = outcome.get("wall_s")
            took = f" ({wall:.2f} s)" if wall is not None else ""
            status = "ok" if not outcome["error"] else f"FAILED: {outcome['error']}"
            print(
                f"[{self.done}/{self.total}] {self._what(task)}: {status}{took}", file=self.stream
            )
            self.stream.flush()

    def _what(self, task: Task) -> str:
        return f"{self.name} {task.point.describe()} r{task.replication}"

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
