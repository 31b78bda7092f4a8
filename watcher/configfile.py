"""Reading a config file as input from a stranger, and `Section`, the key-by-key reader.

The file is read with limits (size, UTF-8), then parsed by a yaml.SafeLoader that refuses what
a hand-written config never has. `Section` takes one mapping key by key, with the default of the
same-named dataclass field for a key left out, and refuses leftover keys; every error is a
ConfigError whose one line names the file, the key and what was expected.
"""

from __future__ import annotations

import os
import reprlib
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

import yaml

# A config is small and written by hand: anything far beyond these is a mistake or an attack.
MAX_CONFIG_BYTES = 1 << 20
MAX_NODES = 10_000  # values in the file once every alias is expanded (an alias bomb has billions)
MAX_DEPTH = 32  # mappings and lists inside each other


class ConfigError(Exception):
    """A config that cannot be used; str(error) is the one line shown to the user."""


class _Refused(Exception):
    """Raised by _StrictLoader: str(error) is the reason, without the file name."""


class _StrictLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses what a hand-written config never has: a key given twice in
    one mapping (YAML would silently keep the last), aliases that expand to a huge document (an
    alias bomb: a few hundred bytes that become billions of values) and absurd nesting (which
    would end in a RecursionError). Checked on the node graph, before anything is built."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self._weights: dict[int, int] = {}  # id(node) -> values in it, aliases expanded
        self._keys: dict[int, dict[tuple[str, str], int]] = {}  # id(mapping) -> its keys -> line
        self._path: list[str] = []

    def _where(self) -> str:
        return "".join(self._path).lstrip(".") or "(top level)"

    def compose_node(self, parent: Any, index: Any) -> Any:
        line = self.peek_event().start_mark.line + 1
        if isinstance(parent, yaml.MappingNode) and isinstance(index, yaml.ScalarNode):
            self._path.append(f".{index.value}")
        elif isinstance(parent, yaml.SequenceNode):
            self._path.append(f"[{index}]")
        else:
            self._path.append("")
        try:
            if len(self._path) > MAX_DEPTH:
                where = "".join(self._path[:4]).lstrip(".") or "(top level)"
                raise _Refused(f"{where}...: nested more than {MAX_DEPTH} deep (line {line}); a config never needs that")
            alias = self.check_event(yaml.AliasEvent)
            node = super().compose_node(parent, index)
            if alias:
                weight = self._weights.get(id(node))
                if weight is None:
                    raise _Refused(f"{self._where()}: an alias that refers to the value holding it (line {line})")
            elif isinstance(node, yaml.SequenceNode):
                weight = 1 + sum(self._weights[id(child)] for child in node.value)
            elif isinstance(node, yaml.MappingNode):
                weight = 1 + sum(self._weights[id(k)] + self._weights[id(v)] for k, v in node.value)
                self._keys.pop(id(node), None)
            else:
                weight = 1
            if weight > MAX_NODES:
                raise _Refused(f"{self._where()}: expands to more than {MAX_NODES} values (line {line}); is it an alias bomb?")
            self._weights[id(node)] = weight
            if isinstance(parent, yaml.MappingNode) and index is None and isinstance(node, yaml.ScalarNode) and node.tag != "tag:yaml.org,2002:merge":
                seen = self._keys.setdefault(id(parent), {})
                first = seen.get((node.tag, node.value))
                if first is not None:
                    self._path[-1] = f".{node.value}"
                    raise _Refused(f"{self._where()}: given twice (lines {first} and {line}); keep one")
                seen[(node.tag, node.value)] = line
            return node
        finally:
            self._path.pop()


def read_yaml(file: Path) -> Any:
    """The YAML data in `file`, or a ConfigError saying why not."""
    try:
        with open(file, "rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
        text = raw.decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{file}: no such file") from None
    except IsADirectoryError:
        raise ConfigError(f"{file}: expected a YAML file, but it is a folder") from None
    except OSError as err:
        raise ConfigError(f"{file}: cannot read: {os.strerror(err.errno) if err.errno else err}") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{file}: not UTF-8 text (byte {err.start})") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{file}: larger than {MAX_CONFIG_BYTES // 1024} KiB; is it really the config?")
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 (a SafeLoader)
    except _Refused as err:
        raise ConfigError(f"{file}: {err}") from None
    except RecursionError:
        raise ConfigError(f"{file}: nested too deeply") from None
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        line = f" (line {where.line + 1})" if where is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{file}: not valid YAML{line}: {problem}") from None
    return data




_SHORT = reprlib.Repr()
_SHORT.maxstring = _SHORT.maxother = 100
_SHORT.maxlevel = 3


_FIELD = object()  # "the default is the dataclass field's"


def field_default(shape: type, name: str) -> Any:
    """The default of `shape`'s field `name`: the one place each default is written."""
    for f in fields(shape):
        if f.name == name:
            if f.default is not MISSING:
                return f.default
            if f.default_factory is not MISSING:
                return f.default_factory()
    raise LookupError(f"{shape.__name__}.{name} has no default")


class Section:
    """One mapping of the file, read key by key; leftover keys are refused on close(). A key
    left out gets the default of the same-named field of `shape`, unless a caller names one."""

    def __init__(self, file: Path, prefix: str, data: Any, shape: type | None = None):
        self.file = file
        self.prefix = prefix
        self.shape = shape
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise self.error(prefix.rstrip(".") or "(top level)", "expected a mapping", data)
        self.data = dict(data)

    def error(self, key: str, expected: str, got: Any = ...) -> ConfigError:
        text = f"{self.file}: {key}: {expected}"
        if got is not ...:
            text += f", got {_SHORT.repr(got)}"
        return ConfigError(text)

    def key(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def default(self, name: str, default: Any = _FIELD) -> Any:
        if default is not _FIELD:
            return default
        assert self.shape is not None, f"{self.prefix}{name}: no default given and no dataclass to take it from"
        return field_default(self.shape, name)

    def take(self, name: str, default: Any = _FIELD) -> Any:
        if name in self.data:
            return self.data.pop(name)
        return self.default(name, default)

    def boolean(self, name: str, default: Any = _FIELD) -> bool:
        value = self.take(name, default)
        if not isinstance(value, bool):
            raise self.error(self.key(name), "expected true or false", value)
        return value

    def integer(self, name: str, default: Any = _FIELD, *, low: int, high: int | None = None) -> Any:
        default = self.default(name, default)
        value = self.take(name, default)
        if value is None and default is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(self.key(name), "expected a whole number", value)
        if value < low or (high is not None and value > high):
            bounds = f"from {low} to {high}" if high is not None else f"of at least {low}"
            raise self.error(self.key(name), f"expected a whole number {bounds}", value)
        return value

    def number(self, name: str, default: Any = _FIELD, *, low: float, allow_zero: bool = False) -> float:
        value = self.take(name, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.error(self.key(name), "expected a number of seconds", value)
        if value < low or (value == 0 and not allow_zero and low == 0):
            raise self.error(self.key(name), f"expected a number greater than {low}", value)
        return float(value)

    def choice(self, name: str, choices: tuple[str, ...], default: Any = _FIELD) -> str:
        value = self.take(name, default)
        if isinstance(value, str):
            value = value.lower()
        if value not in choices:
            raise self.error(self.key(name), "expected one of " + ", ".join(choices), value)
        return value

    def string(self, name: str, default: Any = _FIELD) -> Any:
        default = self.default(name, default)
        value = self.take(name, default)
        if value is None and default is None:
            return None
        if not isinstance(value, str) or not value:
            raise self.error(self.key(name), "expected a non-empty string", value)
        return value

    def strings(self, name: str, default: Any = _FIELD) -> tuple[str, ...]:
        value = self.take(name, list(self.default(name, default)))
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise self.error(self.key(name), "expected a list of strings", value)
        return tuple(value)

    def section(self, name: str, shape: type | None = None) -> "Section":
        return Section(self.file, self.key(name) + ".", self.take(name, None), shape)

    def close(self) -> None:
        if self.data:
            unknown = sorted(str(k) for k in self.data)
            raise self.error(self.key(unknown[0]), "unknown key (check the spelling against config/thumbwatch.yaml)")


def check_writable(source: Path, key: str, path: Path, *, folder: bool) -> None:
    """The folder or file at `path` (named by `key` in the config file `source`) can be made
    and written, or a ConfigError says why not. Creates nothing."""

    def refuse(why: str) -> ConfigError:
        return ConfigError(f"{source}: {key}: {why}")

    if os.path.exists(path):
        if folder and not path.is_dir():
            raise refuse(f"expected a folder, but {path} is not one")
        if not folder and path.is_dir():
            raise refuse(f"expected a file, but {path} is a folder")
        need = os.R_OK | os.W_OK | os.X_OK if folder else os.W_OK
        if not os.access(path, need, effective_ids=os.access in os.supports_effective_ids):
            raise refuse(f"{path} is not {'readable and writable' if folder else 'writable'} by uid {os.geteuid()}")
        return
    existing = path if folder else path.parent
    while not os.path.exists(existing):
        if os.path.lexists(existing):
            raise refuse(f"cannot create {path}: {existing} is a broken symlink")
        existing = existing.parent
    if not existing.is_dir():
        raise refuse(f"cannot create {path}: {existing} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK, effective_ids=os.access in os.supports_effective_ids):
        raise refuse(f"cannot create {path}: {existing} is not writable by uid {os.geteuid()}")
