"""MkDocs hook: the reference pages' tables, generated from the code at every build so that they cannot drift.

A page asks for a generated section with a marker line, `<!-- leadscore:generate NAME -->`, where NAME is one of
`openapi` (the score service's OpenAPI document), `settings` (serving.settings.Settings), `cli` (the `leadscore`
Typer app) or `contract` (features.spec). The build fails if a marker names no generator or a generator is never used.
The OpenAPI document itself is also published as `reference/openapi.json`.
"""

from __future__ import annotations

import functools
import json
import re
import types
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import typer
from mkdocs.config.defaults import MkDocsConfig
from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files
from mkdocs.structure.pages import Page
from pydantic import SecretStr
from pydantic.fields import FieldInfo

from features.spec import ACTIVITIES, LEADS, LIFECYCLE_CHAIN, LIFECYCLE_PREREQUISITES, ColumnSpec, TableSpec
from leadscore.cli import app as cli_app
from serving.app import create_app
from serving.settings import Settings

MARKER = re.compile(r"^<!-- leadscore:generate (\S+) -->$", re.MULTILINE)
OPENAPI_FILE = "reference/openapi.json"
HTTP_METHODS = ("get", "put", "post", "delete", "patch")
# Where each security scheme of the OpenAPI document carries the key, in words.
KEY_PLACES = {"APIKeyHeader": "the `X-API-Key` header", "HTTPBearer": "an `Authorization: Bearer` header"}


# ---- OpenAPI -----------------------------------------------------------------------------------------------------


@functools.cache
def openapi() -> dict[str, Any]:
    """The service's OpenAPI document, as /openapi.json serves it.

    `create_app` does no I/O until its lifespan runs, and the document depends on no setting: the defaults, without
    reading the environment (`model_construct`), so that a LEADSCORE_* variable of the machine cannot change the docs.
    """
    document: dict[str, Any] = create_app(Settings.model_construct()).openapi()
    return document


def _cell(text: object, *, code: bool = False) -> str:
    """Text safe in a Markdown table cell (`code`: inside a code span, where HTML is not read)."""
    cell = str(text).replace("|", "\\|").replace("\n", " ").strip()
    return cell if code else cell.replace("<", "&lt;")


def _anchor(name: str) -> str:
    return f"schema-{name.lower()}"


def _ref_name(ref: str) -> str:
    return ref.rsplit("/", 1)[-1]


def _type(schema: Mapping[str, Any]) -> str:
    """A schema's type in words, with links to the schemas it names."""
    if "$ref" in schema:
        name = _ref_name(schema["$ref"])
        return f"[{name}](#{_anchor(name)})"
    if "anyOf" in schema:
        options = [s for s in schema["anyOf"] if s.get("type") != "null"]
        nullable = len(options) < len(schema["anyOf"])
        text = " or ".join(_type(s) for s in options)
        return f"{text} or null" if nullable else text
    if "enum" in schema:
        return "one of " + ", ".join(f"`{v}`" for v in schema["enum"])
    if "const" in schema:
        return f"`{schema['const']}`"
    kind = schema.get("type")
    if kind == "array":
        return f"list of {_type(schema.get('items', {}))}"
    if kind == "object":
        values = schema.get("additionalProperties")
        if isinstance(values, Mapping) and values:
            return f"object of {_type(values)}"
        return "object"
    if kind == "string" and schema.get("format") == "date-time":
        return "date-time (ISO 8601)"
    if kind is None:
        return "any"
    return str(kind)


def _constraints(schema: Mapping[str, Any]) -> list[str]:
    words = {
        "minimum": "at least {}",
        "exclusiveMinimum": "more than {}",
        "maximum": "at most {}",
        "exclusiveMaximum": "less than {}",
        "minLength": "at least {} characters",
        "maxLength": "at most {} characters",
        "minItems": "at least {} items",
        "maxItems": "at most {} items",
    }
    found = [text.format(schema[key]) for key, text in words.items() if key in schema]
    for option in schema.get("anyOf", ()):
        found += _constraints(option)
    return found


def _schema_section(name: str, schema: Mapping[str, Any]) -> Iterator[str]:
    yield f"### {name} {{ #{_anchor(name)} }}"
    yield ""
    if schema.get("description"):
        yield schema["description"]
        yield ""
    properties: Mapping[str, Any] = schema.get("properties", {})
    if properties:
        required = set(schema.get("required", ()))
        yield "| Field | Type | Required | Description |"
        yield "|---|---|---|---|"
        for field, spec in properties.items():
            notes = [spec["description"]] if spec.get("description") else []
            notes += _constraints(spec)
            if "default" in spec and spec["default"] not in (None, [], {}):
                notes.append(f"default `{json.dumps(spec['default'])}`")
            yield (
                f"| `{field}` | {_cell(_type(spec))} | {'yes' if field in required else 'no'} | "
                f"{_cell('; '.join(notes))} |"
            )
        yield ""
    elif schema.get("type") or "anyOf" in schema or "enum" in schema:
        yield f"Type: {_type(schema)}."
        yield ""
    for example in schema.get("examples", ())[:1]:
        yield f'??? example "Example {name}"'
        yield ""
        yield "    ```json"
        yield from (f"    {line}" for line in json.dumps(example, indent=2).splitlines())
        yield "    ```"
        yield ""


def _operation(method: str, path: str, op: Mapping[str, Any]) -> Iterator[str]:
    yield f"### {op.get('summary') or f'{method.upper()} {path}'}"
    yield ""
    yield f"`{method.upper()} {path}`"
    yield ""
    # Any one of the schemes will do (OpenAPI lists alternatives as separate requirements).
    schemes = [name for requirement in op.get("security", ()) for name in requirement]
    if schemes:
        ways = " or ".join(KEY_PLACES.get(name, f"`{name}`") for name in schemes)
        yield f"Key: in {ways}, once the service has keys configured."
        yield ""
    if op.get("description"):
        yield op["description"]
        yield ""
    body = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
    if body:
        yield f"**Request body** (JSON): {_type(body)}"
        yield ""
    yield "| Status | Body | Meaning |"
    yield "|---|---|---|"
    for status, response in op.get("responses", {}).items():
        content: Mapping[str, Any] = response.get("content", {})
        first: Mapping[str, Any] = next(iter(content.values()), {})
        schema = first.get("schema")
        # A route that answers with its own response class (Prometheus text) declares the media type only.
        kind = _type(schema) if schema else ", ".join(f"`{media}`" for media in content) or "—"
        yield f"| {status} | {_cell(kind)} | {_cell(response.get('description', ''))} |"
    yield ""


def openapi_markdown(document: Mapping[str, Any]) -> str:
    """The operations by tag (in the document's order), then every schema, as Markdown."""
    by_tag: dict[str, list[tuple[str, str, Mapping[str, Any]]]] = {}
    for path, item in document["paths"].items():
        for method in HTTP_METHODS:
            if method in item:
                op = item[method]
                by_tag.setdefault((op.get("tags") or ["other"])[0], []).append((method, path, op))
    lines = ["## Endpoints", ""]
    lines += ["| Method | Path | What |", "|---|---|---|"]
    for operations in by_tag.values():
        lines += [f"| {m.upper()} | `{p}` | {_cell(op.get('summary', ''))} |" for m, p, op in operations]
    lines.append("")
    for tag, operations in by_tag.items():
        lines += [f"## {tag.capitalize()}", ""]
        for method, path, op in operations:
            lines += list(_operation(method, path, op))
    lines += ["## Schemas", ""]
    for name, schema in sorted(document.get("components", {}).get("schemas", {}).items()):
        lines += list(_schema_section(name, schema))
    return "\n".join(lines)


# ---- settings ----------------------------------------------------------------------------------------------------

# What a setting without a description of its own means. Descriptions belong in serving/settings.py: these fill
# the gaps until they are there, and a new setting without either still appears (its description then says so).
SETTING_NOTES = {
    "model_name": "Registered MLflow model to serve.",
    "model_alias": "Alias of that model to serve (and to follow on reloads).",
    "top_reasons": "Reasons returned per model (fit, behaviour) in each answer.",
    "host": "Interface to listen on; `leadscore serve --host` sets it. Beyond loopback, API keys are required.",
    "port": "TCP port; `leadscore serve --port` sets it.",
}


def _annotation(annotation: object) -> str:
    """A setting's type in words."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (types.UnionType, typing.Union):
        kinds = [_annotation(a) for a in args if a is not type(None)]
        return " or ".join(kinds) + (", or unset" if type(None) in args else "")
    if origin is list:
        inner = args[0] if args else str
        return "comma-separated secrets" if inner is SecretStr else f"comma-separated {_annotation(inner)}s"
    names = {str: "text", int: "integer", float: "number", bool: "`true` or `false`", SecretStr: "secret"}
    return (
        names.get(annotation, getattr(annotation, "__name__", str(annotation)))
        if isinstance(annotation, type)
        else (str(annotation))
    )


def _default(info: FieldInfo) -> str:
    value = info.get_default(call_default_factory=True)
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, list | tuple) and not value:
        return "none"
    if value == "":
        return "empty"
    if isinstance(value, int):
        return f"`{value}`" if value < 10_000 else f"`{value}` ({value:,})"
    return f"`{value}`"


def _bounds(info: FieldInfo) -> list[str]:
    words = {"ge": "at least {}", "gt": "more than {}", "le": "at most {}", "lt": "less than {}"}
    return [text.format(getattr(m, key)) for m in info.metadata for key, text in words.items() if hasattr(m, key)]


def settings_markdown(settings: type[Settings] = Settings) -> str:
    """One row per setting: its environment variable, type, default and meaning."""
    prefix = str(settings.model_config.get("env_prefix", ""))
    lines = ["| Variable | Type | Default | Meaning |", "|---|---|---|---|"]
    for name, info in settings.model_fields.items():
        meaning = info.description or SETTING_NOTES.get(name, "Not described yet in serving/settings.py.")
        bounds = _bounds(info)
        if bounds:
            meaning = f"{meaning} ({', '.join(bounds)})"
        env = f"{prefix}{name}".upper()
        lines.append(
            f"| `{env}` | {_cell(_annotation(info.annotation))} | {_cell(_default(info))} | {_cell(meaning)} |"
        )
    return "\n".join(lines)


# ---- command line ------------------------------------------------------------------------------------------------

HIDDEN_OPTIONS = frozenset({"--help", "--install-completion", "--show-completion"})


def _commands(command: Any, ctx: typer.Context) -> Iterator[tuple[Any, typer.Context]]:
    """The command and every subcommand under it, depth first, in the order the app lists them."""
    yield command, ctx
    if hasattr(command, "list_commands"):
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            if sub is not None and not getattr(sub, "hidden", False):
                yield from _commands(sub, typer.Context(sub, info_name=name, parent=ctx))


def cli_markdown(app: typer.Typer = cli_app, name: str = "leadscore") -> str:
    """Every command of the Typer app: what it does, its usage, arguments and options (with defaults)."""
    root = typer.main.get_command(app)
    lines: list[str] = []
    for command, ctx in _commands(root, typer.Context(root, info_name=name)):
        path = ctx.command_path
        lines += [f"## `{path}`", ""]
        if command.help:
            lines += [command.help.strip(), ""]
        usage = " ".join(command.collect_usage_pieces(ctx))
        lines += ["```console", f"$ {path} {usage}".rstrip(), "```", ""]
        records = [
            (param.param_type_name, record)
            for param in command.get_params(ctx)
            if (record := param.get_help_record(ctx)) is not None
            and record[0].split(",")[-1].split()[0] not in HIDDEN_OPTIONS
        ]
        if records:
            lines += ["| Argument or option | Meaning |", "|---|---|"]
            lines += [f"| `{_cell(opts, code=True)}` | {_cell(text) or '—'} |" for _, (opts, text) in records]
            lines.append("")
        if hasattr(command, "list_commands"):
            subs = [(n, command.get_command(ctx, n)) for n in command.list_commands(ctx)]
            lines += ["| Command | What |", "|---|---|"]
            lines += [
                f"| [`{path} {n}`](#{_slug(f'{path} {n}')}) | {_cell((sub.help or '').strip().splitlines()[0])} |"
                for n, sub in subs
                if sub is not None
            ]
            lines.append("")
    return "\n".join(lines)


def _slug(text: str) -> str:
    """The id Python-Markdown's toc gives a heading of `text` (in code): lower case, words joined by hyphens."""
    return re.sub(r"[-\s]+", "-", re.sub(r"[^\w\s-]", "", text).strip().lower())


# ---- the lead data contract --------------------------------------------------------------------------------------


def _accepted(column: ColumnSpec) -> str:
    notes = []
    if column.allowed:
        values = ", ".join(f"`{v}`" for v in column.allowed)
        notes.append(f"known: {values}; others are scored as unseen" if column.open_vocabulary else f"one of {values}")
    if column.min_value is not None:
        notes.append(f"at least {column.min_value:g}")
    if column.unique:
        notes.append("unique")
    return "; ".join(notes) or "—"


def table_markdown(table: TableSpec) -> str:
    """One row per declared column."""
    lines = ["| Column | Type | Role | Required | Description | Accepted values |", "|---|---|---|---|---|---|"]
    lines += [
        f"| `{c.name}` | {c.dtype} | {c.role} | {'no' if c.nullable else 'yes'} | {_cell(c.description)} | "
        f"{_cell(_accepted(c))} |"
        for c in table.columns
    ]
    return "\n".join(lines)


def contract_markdown() -> str:
    """Both tables of features.spec and the lifecycle rules they declare."""
    chain = " → ".join(f"`{name}`" for name in LIFECYCLE_CHAIN)
    needs = "; ".join(f"`{column}` needs `{prerequisite}`" for column, prerequisite in LIFECYCLE_PREREQUISITES)
    return "\n".join(
        [
            f"## `{LEADS.name}`: one row per lead",
            "",
            f"Key: `{LEADS.key}`.",
            "",
            table_markdown(LEADS),
            "",
            "### Lifecycle order",
            "",
            f"Non-empty lifecycle stamps follow the chain {chain}: stages may be skipped, never reversed. {needs}.",
            "",
            f"## `{ACTIVITIES.name}`: one row per touch",
            "",
            table_markdown(ACTIVITIES),
        ]
    )


# ---- MkDocs events -----------------------------------------------------------------------------------------------

GENERATORS: dict[str, Callable[[], str]] = {
    "openapi": lambda: openapi_markdown(openapi()),
    "settings": settings_markdown,
    "cli": cli_markdown,
    "contract": contract_markdown,
}
_used: set[str] = set()


def on_pre_build(config: MkDocsConfig) -> None:
    """Forget what the previous build used (`mkdocs serve` builds again on every change)."""
    _used.clear()


def on_files(files: Files, config: MkDocsConfig) -> Files:
    """Publish the OpenAPI document beside the API reference."""
    files.append(File.generated(config, OPENAPI_FILE, content=json.dumps(openapi(), indent=2) + "\n"))
    return files


def on_page_markdown(markdown: str, page: Page, config: MkDocsConfig, files: Files) -> str:
    """Replace each marker with its generated Markdown."""

    def generate(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in GENERATORS:
            raise PluginError(f"{page.file.src_uri}: no generator {name!r} (known: {', '.join(GENERATORS)})")
        _used.add(name)
        return GENERATORS[name]()

    return MARKER.sub(generate, markdown)


def on_post_build(config: MkDocsConfig) -> None:
    """Fail the build when a generated section has no page to go in."""
    unused: Sequence[str] = sorted(set(GENERATORS) - _used)
    if unused:
        raise PluginError(f"no page asks for the generated section(s) {', '.join(unused)}")
