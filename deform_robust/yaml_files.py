"""Strict YAML files: :func:`read_yaml` refuses duplicate keys, recursive aliases and alias bombs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .config_types import ConfigError

__all__ = ["YAML_MAX_VALUES", "read_yaml"]

class _StrictYAMLError(yaml.YAMLError):
    """A duplicate key or an anchor/alias (:func:`read_yaml`)."""


#: Most values a YAML file may expand to through anchors and aliases (a config has hundreds).
YAML_MAX_VALUES = 100_000


class _StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses duplicate keys, recursive aliases and alias bombs (``read_yaml``)."""

    def compose_document(self) -> Any:
        self.get_event()  # DOCUMENT-START
        node = self.compose_node(None, None)  # type: ignore[arg-type]
        self.get_event()  # DOCUMENT-END
        anchors, self.anchors = self.anchors, {}
        _check_expansion(node, anchors)
        return node

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                try:
                    first = seen.get(key)
                except TypeError:  # an unhashable key: the base class says so
                    break
                if first is not None:
                    raise _StrictYAMLError(f"{key}: duplicate key at line {line} (first at line {first}); "
                                         "each key may appear once in a mapping")
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


def _check_expansion(root: Any, anchors: dict[str, Any]) -> None:
    """Refuse a node graph whose aliases expand it beyond :data:`YAML_MAX_VALUES` values, or into a loop."""
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(node: Any) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in active:
            raise _StrictYAMLError(f"recursive alias at line {node.start_mark.line + 1}: a value may not "
                                   "contain itself")
        active.add(key)
        if isinstance(node, yaml.SequenceNode):
            total = 1 + sum(size(child) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            total = 1 + sum(size(k) + size(v) for k, v in node.value)
        else:
            total = 1
        active.discard(key)
        sizes[key] = min(total, YAML_MAX_VALUES + 1)  # capped: no huge integers either
        return sizes[key]

    if size(root) > YAML_MAX_VALUES:
        name, node = max(anchors.items(), key=lambda kv: sizes.get(id(kv[1]), 0), default=("?", root))
        raise _StrictYAMLError(f"anchor {name!r} (line {node.start_mark.line + 1}): its aliases expand the file "
                               f"to more than {YAML_MAX_VALUES} values (an alias bomb?); write the values out")


def read_yaml(path: str | Path, what: str = "config") -> Any:
    """The content of a YAML file, with errors that name it.

    Stricter than ``yaml.safe_load``: a key that appears twice in a mapping is refused (YAML
    would keep the last silently), and so are aliases that make a value contain itself or
    expand the file to more than :data:`YAML_MAX_VALUES` values (``&a`` / ``*a`` nested: a
    "billion laughs" file of a few lines would expand to gigabytes downstream).

    Raises:
        FileNotFoundError: no such file (``"<what>: no file at ..."``).
        ConfigError: not valid YAML, not UTF-8, a duplicate key, a recursive alias or an alias
            bomb (names the file, and the key or anchor with its line).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what}: no file at {str(path)!r}")
    try:
        return yaml.load(path.read_text(encoding="utf-8"), Loader=_StrictLoader)  # noqa: S506 - a SafeLoader
    except _StrictYAMLError as err:
        raise ConfigError(f"{path}: {err}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: not a valid YAML file: {err}") from None
