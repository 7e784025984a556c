"""YAML read the 1.2 way for config files: only true and false are booleans, so `Yes`, `no` and `on` stay text."""

from __future__ import annotations

import re

import yaml


class Yaml12Loader(yaml.SafeLoader):
    """SafeLoader that reads only true/false as booleans (YAML 1.2): `positive: [Yes]` must stay the text 'Yes'."""


Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, pattern) for tag, pattern in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def load_yaml12(text: str) -> object:
    """The document in `text` (yaml.YAMLError when it is not YAML); builds no Python objects (a SafeLoader)."""
    return yaml.load(text, Loader=Yaml12Loader)  # a SafeLoader subclass
