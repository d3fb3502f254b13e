"""One error family for everything a user can get wrong.

Each message names the file, line or field at fault and says what was expected,
so the CLI can print it without a traceback.
"""

from __future__ import annotations

from pathlib import Path


class NicheError(Exception):
    """Base class: a problem the user can fix, explained in the message."""


class DataError(NicheError):
    """A data file is unreadable or a row does not match the expected shape."""

    def __init__(self, path: Path | str, message: str, line: int | None = None) -> None:
        self.path = Path(path)
        self.line = line
        self.reason = message
        where = f"{self.path}:{line}" if line is not None else str(self.path)
        super().__init__(f"{where}: {message}")


class ConfigError(NicheError):
    """niche.yaml or a command-line override is invalid."""


class ModelError(NicheError):
    """A base model or specialist cannot be found or loaded."""


LLAMA_CPP_INSTALL = (
    "run `make llama-cpp` in the niche checkout (or `pip install llama-cpp-python` in this environment): it compiles "
    "llama.cpp, which needs a C/C++ compiler and takes 8-11 minutes on 2 cores the first time"
)


def require_llama_cpp(purpose: str) -> None:
    """Fail before any work starts when llama-cpp-python, which `purpose` needs, is not installed."""
    import importlib.util

    if importlib.util.find_spec("llama_cpp") is None:
        raise ModelError(f"{purpose} needs llama-cpp-python, which is not installed: {LLAMA_CPP_INSTALL}")


def require_extra(extra: str, modules: tuple[str, ...], purpose: str) -> None:
    """Fail before any work starts when a module of one of niche's optional extras (pyproject.toml) is missing,
    naming the extra that brings it."""
    import importlib.util

    missing = [module for module in modules if importlib.util.find_spec(module) is None]
    if missing:
        raise ConfigError(
            f"{purpose} needs niche's `{extra}` extra ({', '.join(missing)} not installed): "
            f"pip install 'niche[{extra}]' (or 'niche[all]')"
        )
