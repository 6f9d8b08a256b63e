"""YAML config + command-line overrides for the `train` and `sft` commands.

Both files and overrides go through `transformers.HfArgumentParser`, so types, choices and help texts are the same
everywhere: the YAML is turned into ``--key value`` arguments and the user's overrides follow them (last wins).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any


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
                config = yaml.safe_load(f) or {}
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
    parser = HfArgumentParser(tuple(dataclass_types))
    return tuple(parser.parse_args_into_dataclasses(args=yaml_to_argv(config) + list(overrides)))
