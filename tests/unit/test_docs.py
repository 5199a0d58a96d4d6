"""The documentation that is generated from code must be current."""

from __future__ import annotations

import runpy
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_configuration_reference_matches_the_schemas():
    generator = runpy.run_path(str(ROOT / "scripts" / "gen-config-docs"))
    current = (ROOT / "docs" / "configuration.md").read_text()
    assert current == generator["render"](), "run scripts/gen-config-docs and commit the result"


def test_every_schema_is_a_valid_json_schema():
    import jsonschema

    from pullback.common.schema import load_schema
    from pullback.plugins.manager import load_plugins

    schemas = [load_schema("pullback.common", n) for n in ("client", "service", "sidecar")]
    plugins = load_plugins(entry_points=False)
    schemas += [plugins.lookup(k).schema for k in plugins.known_keys()]
    for schema in schemas:
        jsonschema.Draft202012Validator.check_schema(schema)


def test_no_schema_text_is_cut_by_a_comma():
    """helper-135: ``{..., description: On failures only, or after every run.}`` is a YAML
    flow mapping, where a comma ends a plain text: the description was "On failures
    only" and "or after every run." a key without a value (configuration.md showed the
    cut text; so were 12 others). No schema holds a key without a value."""
    import yaml

    cut = []

    def walk(node: object, where: str) -> None:
        if isinstance(node, dict):
            cut.extend(f"{where}: {key!r}" for key, value in node.items() if value is None)
            for key, value in node.items():
                walk(value, f"{where}/{key}")
        elif isinstance(node, list):
            for index, value in enumerate(node):
                walk(value, f"{where}/{index}")

    for folder in ("common", "plugins"):
        for path in sorted((ROOT / folder / "schemas").glob("*.yaml")):
            walk(yaml.safe_load(path.read_text()), path.name)
    assert cut == [], "quote these texts (a comma ends a plain text in {...})"


ARCHITECTURE = ROOT / "docs" / "architecture.md"
SOURCES = ("common", "client", "server", "plugins")


def _defined_names() -> tuple[set[str], dict[str, set[str]]]:
    """Every function and class name of the package, and each class's methods."""
    import ast

    names: set[str] = set()
    methods: dict[str, set[str]] = {}
    for folder in SOURCES:
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.FunctionDef | ast.ClassDef | ast.AsyncFunctionDef):
                    names.add(node.name)
                if isinstance(node, ast.ClassDef):
                    methods.setdefault(node.name, set()).update(
                        item.name for item in node.body if isinstance(item, ast.FunctionDef)
                    )
    return names, methods


def test_the_architecture_names_only_files_that_exist():
    import re

    text = ARCHITECTURE.read_text()
    paths = set(
        re.findall(r"`((?:common|client|server|plugins|systemd|debian|tests)/[\w/.]*)`", text)
    )
    assert paths, "the architecture names no files"
    missing = [p for p in sorted(paths) if not (ROOT / p).exists()]
    assert not missing, f"docs/architecture.md names files that do not exist: {missing}"


def test_the_architecture_names_only_functions_and_classes_that_exist():
    import re

    text = ARCHITECTURE.read_text()
    called = set(re.findall(r"`(?:[\w.]+\.)?(\w+)\(\)`", text))  # `ClientRun.write()`
    classes = set(re.findall(r"`([A-Z][a-z]\w+)`", text))  # `HostPull`, `ArchiveWriter`
    known, methods = _defined_names()
    missing = sorted((called | classes) - known)
    assert called and classes
    assert not missing, f"docs/architecture.md names what the code does not define: {missing}"
    # `Class.method()`: that class has that method
    wrong = [
        f"{owner}.{method}()"
        for owner, method in re.findall(r"`(?:[\w.]+\.)?([A-Z]\w+)\.(\w+)\(\)`", text)
        if method not in methods.get(owner, set())
    ]
    assert not wrong, f"docs/architecture.md names methods their class does not have: {wrong}"


def test_references_to_the_architecture_name_its_sections():
    import re

    headings = set(re.findall(r"^#+ (.+)$", ARCHITECTURE.read_text(), flags=re.M))
    cited = []
    for folder in (*SOURCES, "tests"):
        for path in (ROOT / folder).rglob("*.py"):
            text = " ".join(path.read_text().split())  # a reference may wrap lines
            cited += [
                (path, s) for s in re.findall(r'docs/architecture\.md, [*"]([^*"]+)[*"]', text)
            ]
    assert cited
    wrong = [f"{p.relative_to(ROOT)}: {s}" for p, s in cited if s not in headings]
    assert not wrong, f"references to missing sections of docs/architecture.md: {wrong}"


def _options(parser) -> dict[str, set[str]]:
    """Every subcommand of ``parser`` and its long options."""
    import argparse

    found: dict[str, set[str]] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found[name] = {
                    option
                    for sub_action in sub._actions
                    for option in sub_action.option_strings
                    if option.startswith("--") and option != "--help"
                }
    return found


def test_the_man_pages_name_every_command_and_flag():
    from pullback.client.cli import build_parser as client_parser
    from pullback.server.cli import build_parser as server_parser

    missing = []
    for page, parser in (
        ("pullback-client.8", client_parser),
        ("pullback-server.8", server_parser),
    ):
        text = (ROOT / "docs" / "man" / page).read_text().replace("\\-", "-")
        synopsis = text[text.index(".SH SYNOPSIS") : text.index(".SH DESCRIPTION")]
        entries = {}  # command -> its synopsis entry (".B program", options, ".B command", ...)
        for entry in synopsis.split(".br"):
            bold = [line[3:] for line in entry.splitlines() if line.startswith(".B ")]
            entries[bold[1]] = entry
        for command, options in _options(parser()).items():
            if f".B {command}" not in text and f"B {command}\n" not in text:
                missing.append(f"{page}: command {command}")
            # each option in the command's own synopsis entry, and described somewhere
            entry = entries.get(command, "")
            missing += [
                f"{page}: {command} {o}"
                for o in sorted(options - {"--config", "--verbose", "--quiet"})
                if o not in entry or text.count(o) < 2
            ]
    assert missing == []


def test_the_commands_the_docs_give_for_a_disabled_host_parse():
    """helper-141 F8: monitoring.md, the schema (so configuration.md) and the man page
    named a run of a disabled host ``pull old`` / ``pull HOST``, which the CLI refuses
    (exit 2, unrecognized arguments): it takes ``--host NAME``."""
    import re
    import shlex

    from pullback.server.cli import build_parser

    root = Path(__file__).resolve().parents[2]
    text = " ".join((root / "docs" / "monitoring.md").read_text().split())
    said = re.findall(r"`(pullback-server (?:pull|maintain|verify) [^`]+)`", text)
    for doc in (root / "common" / "schemas" / "server.yaml", root / "docs" / "configuration.md"):
        words = " ".join(doc.read_text().split())
        said += [
            f"pullback-server {c}" for c in re.findall(r"`((?:pull|maintain|verify) [^`]+)`", words)
        ]
    man = " ".join((root / "docs" / "man" / "pullback-server.8").read_text().split())
    for command, name in re.findall(
        r"\\fB(pull|maintain|verify)( \\-\\-host\\fR \\fINAME|\\fR \\fIHOST)\\fR", man
    ):
        said.append(f"pullback-server {command}" + (" --host NAME" if "host" in name else " HOST"))
    assert len(said) >= 9, said
    for command in said:
        argv = [w.replace("HOST", "old").replace("NAME", "old") for w in shlex.split(command)[1:]]
        try:
            build_parser().parse_args(argv)
        except SystemExit as exc:
            raise AssertionError(f"{command!r} does not parse") from exc
