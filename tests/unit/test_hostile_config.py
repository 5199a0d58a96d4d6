"""Hostile configuration files: whatever bytes client.yaml, server.yaml or a service.yaml
hold, the loaders accept them or refuse them as ``file:line: key: message``, never with a
traceback; the command lines exit 2 and say the same.

The documents are random bytes and text, and plausible documents built from the real
schemas' key names (dumped with ``yaml.safe_dump``) with hostile mutations: tabs, anchors
and aliases, duplicate keys, explicit tags, huge numbers, NULs, invalid UTF-8.
"""

from __future__ import annotations

import contextlib
import functools
import io
import itertools
import math
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pullback.client.cli import main as client_main
from pullback.client.config import load_client_config
from pullback.client.services import load_service
from pullback.client.stages import make_tasks
from pullback.common.errors import ConfigError
from pullback.common.schema import load_schema
from pullback.plugins.manager import load_plugins
from pullback.plugins.task import KeyProblem
from pullback.server.cli import main as server_main
from pullback.server.config import load_server_config

pytestmark = pytest.mark.unit

PROPERTY = settings(
    max_examples=120,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
CLI_PROPERTY = settings(PROPERTY, max_examples=40)

PLUGINS = load_plugins(entry_points=False)
_names = itertools.count()


@functools.cache
def work() -> Path:
    """Scratch space of the properties (function-scoped fixtures do not mix with @given),
    made on first use: a pytest-xdist worker imports this module to collect it and may run
    none of its tests, and a directory made at import stayed in /tmp."""
    return Path(tempfile.mkdtemp(prefix="pullback-hostile-"))


@pytest.fixture(scope="module", autouse=True)
def _remove_scratch():
    yield
    if work.cache_info().currsize:
        shutil.rmtree(work(), ignore_errors=True)
        work.cache_clear()


NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*", re.ASCII)
LOCATED = r"^{file}:[1-9][0-9]*: "


# --- what the documents are made of ------------------------------------------------------


def _schema_keys(node) -> set[str]:
    """Every property name in a schema, at any depth."""
    keys: set[str] = set()
    if isinstance(node, dict):
        keys.update(k for k in node.get("properties", {}) if isinstance(k, str))
        for value in node.values():
            keys |= _schema_keys(value)
    elif isinstance(node, list):
        for value in node:
            keys |= _schema_keys(value)
    return keys


TASK_KEYS = sorted(PLUGINS.known_keys())
KEYS = sorted(
    _schema_keys([load_schema("pullback.common", n) for n in ("client", "server", "service")])
    | _schema_keys([PLUGINS.lookup(k).schema for k in TASK_KEYS])
    | set(TASK_KEYS)
)

keys = st.sampled_from(KEYS) | st.text(max_size=8)
plausible_text = st.sampled_from(
    [
        *("/", "/srv/data", "relative/path", "web1", "web1\n", "app", "-app", "x" * 200),
        *("1h", "90s", "0", "36h", "2d", "512M", "2G", "1.5GiB", "lots", "zstd", "gzip"),
        *("none", "restic", "borg", "always", "on_problem", "starttls", "ops@example.org"),
        *("https://hc.example/x", "http://", "yes", "no", "on", "~", "", " ", "*.log", ".."),
        *("sftp:host:/r", "ssh://host/r", "a\tb", "\\", "{", "'", '"', "#", "%", "@x"),
    ]
)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | plausible_text
    | st.text(max_size=12)
    | st.from_regex(r"\A/[a-z]{1,6}(/[a-z.]{1,6}){0,2}\Z")
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
    max_leaves=20,
)


def from_schema(schema: dict, root: dict) -> st.SearchStrategy:
    """Values shaped by a JSON Schema: right keys and types, strings from its patterns
    (which Hypothesis also fills with other scripts' digits, spaces and a final newline),
    integers around its bounds; so that many documents are accepted, or nearly."""
    if "$ref" in schema:
        schema = {**root["$defs"][schema["$ref"].rsplit("/", 1)[-1]], **schema}
        del schema["$ref"]
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    if "anyOf" in schema:
        return st.one_of([from_schema(s, root) for s in schema["anyOf"]])
    kinds = schema.get("type", "object" if "properties" in schema else [])
    kinds = [kinds] if isinstance(kinds, str) else kinds
    return st.one_of([_typed(kind, schema, root) for kind in kinds] or [values])


def _typed(kind: str, schema: dict, root: dict) -> st.SearchStrategy:
    if kind == "string":
        return st.from_regex(schema["pattern"]) if "pattern" in schema else plausible_text
    if kind == "integer":
        low, high = schema.get("minimum", -3), schema.get("maximum", 2**64)
        return st.integers(low, low + 100) | st.integers(low - 1, high + 1) | st.just(3.0)
    if kind == "number":
        return st.integers(-1, 10**6) | st.floats(allow_nan=False, allow_infinity=False)
    if kind == "boolean":
        return st.booleans()
    if kind == "array":
        items = from_schema(schema.get("items", {}), root)
        return st.lists(items, min_size=schema.get("minItems", 0), max_size=3)
    if kind == "object":
        properties = {k: from_schema(v, root) for k, v in schema.get("properties", {}).items()}
        required = {k: properties.pop(k) for k in schema.get("required", []) if k in properties}
        return st.fixed_dictionaries(required, optional=properties)
    return values


def _dump(data) -> str:
    return yaml.safe_dump(data, allow_unicode=True, default_flow_style=None)


def _schema_documents(name: str) -> st.SearchStrategy:
    schema = load_schema("pullback.common", name)
    return from_schema(schema, schema)


def _service_documents() -> st.SearchStrategy:
    tasks = {k: from_schema(PLUGINS.lookup(k).schema, PLUGINS.lookup(k).schema) for k in TASK_KEYS}
    return st.fixed_dictionaries(
        {"service": _schema_documents("service").map(lambda d: d.get("service", d))},
        optional=tasks,
    )


documents = st.one_of(
    st.dictionaries(keys, values, max_size=8),
    _schema_documents("client"),
    _schema_documents("server"),
    _service_documents(),
).map(_dump)

SNIPPETS = [
    *("\t", "  ", "\n", ": ", "- ", "? ", "{", "}", "[", "]", ",", "#", "'", '"', "|", ">"),
    *("&a ", "*a", "&a [*a]", "<<: *a\n", "<<: [1]\n", "!!int ", "!!float ", "!!bool "),
    *("!!timestamp ", "!!binary ", "!!set ", "!!omap ", "!!python/object:os.system ", "!x "),
    *("%YAML 1.1\n---\n", "---\n", "...\n", "\ufeff", "\x00", "\x1b", '"\\0"'),
    *("\r", "\x85", "\u2028"),  # line breaks to PyYAML, not to editors
    *('"\\ud800"', "9" * 5000, "1.0e+999", ".nan", "-.inf", "0x" + "f" * 40, "2**64"),
    *("[" * 80 + "]" * 80, "{a: " * 70 + "}" * 70),
]


def _insert(draw, text: str) -> str:
    at = draw(st.integers(0, len(text)))
    return text[:at] + draw(st.sampled_from(SNIPPETS)) + text[at:]


def _duplicate_line(draw, text: str) -> str:
    lines = text.splitlines(keepends=True) or [""]
    at = draw(st.integers(0, len(lines) - 1))
    return "".join([*lines[: at + 1], lines[at], *lines[at + 1 :]])


def _delete(draw, text: str) -> str:
    start = draw(st.integers(0, len(text)))
    return text[:start] + text[start + draw(st.integers(0, 20)) :]


def _anchor_first_value(draw, text: str) -> str:
    """``key: value`` becomes ``key: &a value`` and an alias to it is appended."""
    head, colon, tail = text.partition(": ")
    if not colon:
        return text
    return f"{head}: &a {tail}{draw(st.sampled_from(KEYS))}: *a\n"


@st.composite
def mutated_documents(draw) -> bytes:
    text = draw(documents)
    for _ in range(draw(st.integers(0, 3))):
        mutate = draw(st.sampled_from([_insert, _duplicate_line, _delete, _anchor_first_value]))
        text = mutate(draw, text)
    raw = text.encode("utf-8", "surrogatepass")
    if draw(st.booleans()):
        at = draw(st.integers(0, len(raw)))
        raw = (
            raw[:at]
            + draw(st.sampled_from([b"\xff", b"\xc3(", b"\xed\xa0\x80", b"\x00"]))
            + raw[at:]
        )
    return raw


def _text(encoding: str):
    return st.text(max_size=200).map(lambda s: s.encode(encoding, "surrogatepass"))


hostile_files = (
    mutated_documents()
    | documents.map(str.encode)
    | st.binary(max_size=200)
    | _text("utf-8")
    | _text("utf-16")
    | st.just(b"")
)

BOMB = b"a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n" + b"".join(
    b"%c: &%c [%s]\n" % (c, c, b", ".join([b"*%c" % (c - 1)] * 10)) for c in range(ord("b"), 110)
)


def _alias_chain(links: int, depth: int) -> bytes:
    """Each anchor nests the previous one ``depth`` levels deeper: few nodes, deep data."""
    text = b"a0: &a0 1\n"
    for i in range(1, links + 1):
        text += b"a%d: &a%d %s*a%d%s\n" % (i, i, b"[" * depth, i - 1, b"]" * depth)
    return text


HOSTILE_EXAMPLES = [
    b"",
    b"   \n# only a comment\n",
    b"a: &x [*x]\n",
    b"a: &x {b: *x}\n",
    BOMB,
    _alias_chain(25, 60),
    b"a: " + b"[" * 600 + b"]" * 600 + b"\n",
    b"keep_last: " + b"9" * 5000 + b"\n",
    b"min_interval: 1.0e+999\n",
    b"min_free_space: " + b"9" * 400 + b"M\n",
    b"min_interval: " + b"9" * 400 + b"h\n",
    b"hosts: [{name: a, max_age: " + b"9" * 400 + b"s}]\n",
    b"hostname: web1\x00\n",
    b'hostname: "web1\\0"\n',
    b'hostname: "\\ud800"\n',
    b"a: !!timestamp 2020-13-45\n",
    b"a: !!bool maybe\n",
    b"\xff\xfe",
    b"a: 1\rb: 2\rc: [\r",
    b"- a\n- b\n",
]


def hostile_cases(plausible: st.SearchStrategy | None = None):
    """``@given`` over ``hostile_files`` (and ``plausible`` documents of the file's own
    schema, so that the accepted side is tried too), plus the pinned HOSTILE_EXAMPLES."""

    def decorate(function):
        for raw in HOSTILE_EXAMPLES:
            function = example(raw)(function)
        files = hostile_files
        if plausible is not None:
            files = files | plausible.map(lambda data: _dump(data).encode())
        return given(files)(function)

    return decorate


# --- helpers -----------------------------------------------------------------------------


def write(raw: bytes, name: str) -> Path:
    """A fresh file ``<n>/<name>`` under the module's scratch directory (mode 0600)."""
    path = work() / str(next(_names)) / name
    path.parent.mkdir(parents=True)
    path.write_bytes(raw)
    path.chmod(0o600)
    return path


def assert_located(problems, path: Path) -> None:
    """Every problem names ``path`` and a line within (or just past) the file."""
    assert problems
    lines = path.read_bytes().count(b"\n") + 1
    for problem in problems:
        assert problem.file == str(path)
        assert problem.line is not None and 1 <= problem.line <= lines + 1, str(problem)
        assert re.match(LOCATED.format(file=re.escape(str(path))), str(problem)), str(problem)


def load_or_problems(loader, path: Path):
    """The loaded configuration, or None after checking the ConfigError's problems."""
    try:
        return loader(path)
    except ConfigError as exc:
        assert exc.exit_code == 2
        assert_located(exc.problems, path)
        return None


def run_cli(main, argv: list[str]) -> tuple[int, str, str]:
    """``main(argv)`` in-process, with stdout and stderr encoded like a real UTF-8 terminal
    (strict for stdout, backslashreplace for stderr), so an unprintable message fails."""
    out = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="strict")
    err = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="backslashreplace")
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    out.flush()
    err.flush()
    return code, out.buffer.getvalue().decode(), err.buffer.getvalue().decode()


def is_duration(value) -> bool:
    return isinstance(value, float) and math.isfinite(value) and value >= 0


# --- the loaders -------------------------------------------------------------------------


@PROPERTY
@hostile_cases(_schema_documents("client"))
def test_client_yaml_is_loaded_or_refused_with_file_and_line(raw):
    """client.yaml: a traceback-free answer, and whatever is accepted is well-formed."""
    path = write(raw, "client.yaml")
    config = load_or_problems(load_client_config, path)
    if config is not None:
        assert NAME.fullmatch(config.hostname)
        for directory in (config.archive_dir, config.work_dir, config.lock_dir):
            assert directory.is_absolute()
        assert all(d.is_absolute() for d in (*config.service_dirs, *config.plugin_dirs))
        for number in (config.keep_last, config.keep_days, config.fetched_keep):
            assert type(number) is int and number >= 0
        assert config.compression_level is None or type(config.compression_level) is int
        assert type(config.min_free_space) is int
        assert is_duration(config.min_interval)


@PROPERTY
@hostile_cases(_schema_documents("server"))
def test_server_yaml_is_loaded_or_refused_with_file_and_line(raw):
    """server.yaml: a traceback-free answer, and whatever is accepted is well-formed."""
    path = write(raw, "server.yaml")
    config = load_or_problems(load_server_config, path)
    if config is not None:
        assert type(config.parallel) is int and config.parallel >= 1
        assert 1 <= config.ssh.port <= 65535 and type(config.ssh.port) is int
        durations = [config.host_timeout, config.lock_wait, config.min_interval]
        durations += [config.backend.timeout, config.ssh.idle_timeout]
        for host in config.hosts:
            assert NAME.fullmatch(host.name)
            assert type(host.port) is int and 1 <= host.port <= 65535
            durations += [host.max_age, host.min_interval, host.verify_every]
        assert all(is_duration(d) for d in durations)


def check_service_file(raw: bytes) -> None:
    """load_service answers ``raw`` without a traceback: its problems name file and line;
    an accepted service has a valid name, and every plugin's validate hook answers."""
    path = write(raw, "service.yaml")
    service = load_service(path, PLUGINS)
    if service.broken:
        assert_located(service.problems, path)
        return
    assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", service.name, re.ASCII)
    assert service.tasks
    for task in make_tasks(service, work() / "staging", None, dry_run=True):
        problems = PLUGINS.call("validate", task) or []
        assert all(isinstance(p, str | KeyProblem) for p in problems)


@PROPERTY
@hostile_cases(_service_documents())
def test_service_yaml_is_loaded_or_refused_with_file_and_line(raw):
    """service.yaml, plugin sections included, see ``check_service_file``."""
    check_service_file(raw)


task_sections = st.fixed_dictionaries(
    {"service": st.fixed_dictionaries({"name": st.sampled_from(["app", "app\n", "-x", "ok.1"])})}
).flatmap(
    lambda head: st.dictionaries(st.sampled_from(TASK_KEYS), values, min_size=1, max_size=3).map(
        lambda tasks: _dump({**head, **tasks})
    )
)


@PROPERTY
@given(task_sections)
def test_plugin_sections_are_validated_by_their_plugin(text):
    """Sections of real task types with random content: each plugin's schema and validate
    hook refuse or accept them without a traceback (see ``check_service_file``)."""
    check_service_file(text.encode())


# --- the command lines -------------------------------------------------------------------


def client_yaml_beside(service: Path) -> Path:
    """A good client.yaml for ``<root>/services/<name>/service.yaml``, in ``<root>``."""
    root = service.parent.parent.parent
    config = root / "client.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "archive_dir": str(root / "archives"),
                "work_dir": str(root / "work"),
                "lock_dir": str(root / "run"),
                "service_dirs": [str(root / "services")],
                "compression": "none",
            }
        )
    )
    return config


def _assert_cli_refusal(code: int, stream: str, path: Path) -> None:
    assert code == 2, stream
    assert "Traceback" not in stream and "internal error" not in stream
    lines = stream.splitlines()
    assert lines
    for line in lines:
        assert re.match(LOCATED.format(file=re.escape(str(path))), line), line


@CLI_PROPERTY
@hostile_cases(_schema_documents("client"))
def test_client_check_refuses_a_bad_client_yaml_with_exit_2(raw):
    """``pullback-client check`` on a client.yaml the loader refuses: exit 2, and each
    line of stderr is ``file:line: ...``."""
    path = write(raw, "client.yaml")
    try:
        load_client_config(path)
    except ConfigError:
        code, out, err = run_cli(client_main, ["check", "--config", str(path)])
        assert out == ""
        _assert_cli_refusal(code, err, path)


@CLI_PROPERTY
@hostile_cases(_service_documents())
def test_client_check_reports_a_bad_service_yaml_with_exit_2(raw):
    """``pullback-client check`` with a broken service.yaml beside a good client.yaml:
    exit 2, and each problem it prints is ``service.yaml:line: ...``."""
    service = write(raw, "services/app/service.yaml")
    if not load_service(service, PLUGINS).broken:
        return
    config = client_yaml_beside(service)
    code, out, err = run_cli(client_main, ["check", "--config", str(config)])
    assert "Traceback" not in err and "internal error" not in err
    _assert_cli_refusal(code, out, service)


@CLI_PROPERTY
@hostile_cases(_schema_documents("server"))
def test_server_check_refuses_a_bad_server_yaml_with_exit_2(raw):
    """``pullback-server check`` on a server.yaml the loader refuses: exit 2 before any
    host is contacted, and each line of stderr is ``file:line: ...``."""
    path = write(raw, "server.yaml")
    try:
        load_server_config(path)
    except ConfigError:
        code, out, err = run_cli(server_main, ["check", "--config", str(path)])
        assert out == ""
        _assert_cli_refusal(code, err, path)


def test_plugin_validate_problems_name_the_line_of_their_task(tmp_path):
    """``pullback-client check``: what a plugin's validate hook finds also names the
    line of its task."""
    service = tmp_path / "services" / "app" / "service.yaml"
    service.parent.mkdir(parents=True)
    service.write_text("service: {name: app}\n\nfiles: {paths: [/nonexistent/pullback]}\n")
    code, out, _ = run_cli(client_main, ["check", "--config", str(client_yaml_beside(service))])
    assert code == 2
    assert out == f"{service}:3: files: path /nonexistent/pullback does not exist\n"


@pytest.mark.parametrize("raw", [b"a: &x [*x]\n", b"hostname: \xff\n", b"a: !!int x\n"])
@pytest.mark.parametrize("program", ["client", "server"])
def test_the_installed_programs_refuse_hostile_files_with_exit_2(tmp_path, program, raw):
    """The same through a real process (the console-script module), a few files only."""
    path = tmp_path / f"{program}.yaml"
    path.write_bytes(raw)
    result = subprocess.run(
        [sys.executable, "-m", f"pullback.{program}.cli", "check", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    _assert_cli_refusal(result.returncode, result.stderr, path)
