"""The version of vgpu-sim (kept in one place; ``pyproject.toml`` carries the same)."""

__version__ = "0.1.0"
