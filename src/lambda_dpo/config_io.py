"""YAML config + command-line overrides for the `train` and `sft` commands.

Both files and overrides go through `transformers.HfArgumentParser`, so types, choices and help texts are the same
everywhere: the YAML is turned into ``--key value`` arguments and the user's overrides follow them (last wins).
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Mapping, Sequence
from typing import Any


def _unique_key_loader():
    """A yaml SafeLoader that rejects a key given twice in one mapping (plain YAML keeps the last, silently)."""
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            seen = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {key!r} is given twice (line {key_node.start_mark.line + 1}); keep one",
                        key_node.start_mark)
                seen.add(key)
            return super().construct_mapping(node, deep)

    return UniqueKeyLoader


def _check_override_names(command: str, overrides: Sequence[str], known: set[str]) -> None:
    """An unknown ``--key`` is a one-line error with the closest field name, not an HfArgumentParser traceback."""
    spellings = {name.replace("_", "-"): name for name in known} | {name: name for name in known}
    for token in overrides:
        if not token.startswith("--"):
            continue
        name = token[2:].split("=", 1)[0]
        if name in spellings or name.replace("-", "_") in known:
            continue
        close = difflib.get_close_matches(name.replace("-", "_"), sorted(known), n=1)
        hint = f"; did you mean --{close[0]}?" if close else ""
        raise SystemExit(f"lambda-dpo {command}: unknown option --{name}{hint} "
                         f"(`lambda-dpo {command} --help-fields` lists the fields)")


def yaml_to_argv(config: Mapping[str, Any]) -> list[str]:
    """``{key: value}`` → ``["--key", "value", …]`` as HfArgumentParser reads them (lists as several values,
    mappings as JSON, booleans as true/false)."""
    argv: list[str] = []
    for key, value in config.items():
        if value is None:
            continue
        if isinstance(value, (list, tuple)):
            argv += [f"--{key}", *map(str, value)]
        elif isinstance(value, dict):
            argv += [f"--{key}", json.dumps(value)]
        else:
            argv += [f"--{key}", str(value).lower() if isinstance(value, bool) else str(value)]
    return argv


def parse_yaml_config(command: str, dataclass_types: Sequence[type], config_path: str | None,
                      overrides: Sequence[str]) -> tuple:
    """Dataclasses of ``dataclass_types`` from a YAML file of their fields plus ``--key value`` overrides.

    Unreadable files, invalid YAML and unknown keys end the command with a message naming the file (SystemExit).
    """
    import yaml
    from transformers import HfArgumentParser

    config: Any = {}
    if config_path:
        try:
            with open(config_path) as f:
                config = yaml.load(f, Loader=_unique_key_loader()) or {}
        except OSError as err:
            raise SystemExit(f"lambda-dpo {command}: cannot read config {config_path}: {err.strerror}") from None
        except yaml.YAMLError as err:
            raise SystemExit(f"lambda-dpo {command}: {config_path} is not valid YAML: {err}") from None
        if not isinstance(config, dict):
            raise SystemExit(f"lambda-dpo {command}: {config_path} must be a mapping of field: value")
    known = {name for cls in dataclass_types for name in cls.__dataclass_fields__}
    unknown = sorted(set(config) - known)
    if unknown:
        raise SystemExit(f"lambda-dpo {command}: {config_path}: unknown key(s) {unknown}; "
                         f"`lambda-dpo {command} --help-fields` lists the fields")
    _check_override_names(command, overrides, known)
    parser = HfArgumentParser(tuple(dataclass_types))
    try:
        return tuple(parser.parse_args_into_dataclasses(args=yaml_to_argv(config) + list(overrides)))
    except ValueError as err:  # a setting's value is invalid (the dataclasses' checks name the field)
        where = f" ({config_path} and the command line)" if config_path else ""
        raise SystemExit(f"lambda-dpo {command}: invalid setting{where}: {str(err).splitlines()[0]}") from None
