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
