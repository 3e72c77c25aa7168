"""Reading a config file strictly: UTF-8 with a clear error, YAML with duplicate keys refused, and
`key.path=value` overrides whose path must fit the config's shape (a wrong path names the override)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from accbench.errors import ConfigError, ConfigProblem


def read_utf8_config(p: Path) -> str:
    """The file's text; a file that is not UTF-8 is a ConfigError naming the line."""
    from accbench.data.text import NotUTF8, read_utf8

    try:
        return read_utf8(p)
    except NotUTF8 as exc:
        raise ConfigError([ConfigProblem("", f"{exc.message} (e.g. a Latin-1 character in a comment); fix: "
                                         f"{exc.hint}", exc.line, str(p))]) from None


class UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, except that a key repeated in one mapping is an error (plain YAML keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for k, _ in node.value:
            if k.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(k, deep=deep)
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: the base loader reports it
                continue
            if first is not None:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key '{key}' (first at line {first}); YAML would silently keep the "
                    "last one: remove or rename one of them", k.start_mark)
            seen[key] = k.start_mark.line + 1
        return super().construct_mapping(node, deep)


def parse_override(item: str) -> tuple[list[str], Any]:
    """`a.b.c=value` -> (['a','b','c'], typed value); the value is parsed as YAML (1 -> int, true -> bool)."""
    if "=" not in item:
        raise ConfigError([ConfigProblem("", f"override '{item}' is not of the form key.path=value")])
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply `key.path=value` items; a path that does not fit the config's shape is a ConfigError naming it."""
    problems = []
    for item in overrides:
        keys, value = parse_override(item)
        if len(keys) > 1 and keys[0] == "eval" and keys[1].isdigit() and isinstance(data.get("eval"), dict):
            data["eval"] = [data["eval"]]  # one eval block written as a mapping is block 0 (eval.0.bs=4)
        try:
            _set_path(data, keys, value)
        except _BadPath as exc:
            problems.append(ConfigProblem(".".join(keys), f"override '{item}': {exc}"))
    if problems:
        raise ConfigError(problems)
    return data


class _BadPath(Exception):
    pass


def _index(node: list, k: str, where: str) -> int:
    if not k.lstrip("-").isdigit():
        raise _BadPath(f"{where} is a list: index it with a number (0 .. {len(node) - 1}), not '{k}'")
    i = int(k)
    if not -len(node) <= i < len(node):
        raise _BadPath(f"{where} has {len(node)} item(s): index {i} is out of range (0 .. {len(node) - 1}); "
                       "add the item to the YAML file first")
    return i


def _set_path(data: dict, keys: list[str], value: Any) -> None:
    node: Any = data
    for i, k in enumerate(keys[:-1]):
        where = ".".join(keys[: i + 1])
        if isinstance(node, list):
            node = node[_index(node, k, ".".join(keys[:i]))]
        elif isinstance(node, dict):
            if k not in node or node[k] is None:
                node[k] = [] if keys[i + 1].isdigit() else {}
            node = node[k]
        else:
            raise _BadPath(f"{'.'.join(keys[:i])} is a value ({node!r}), it has no key '{k}'")
        if not isinstance(node, (dict, list)):
            raise _BadPath(f"{where} is a value ({node!r}), it has no key '{keys[i + 1]}'")
    last = keys[-1]
    if isinstance(node, list):
        node[_index(node, last, ".".join(keys[:-1]))] = value
    else:
        node[last] = value
