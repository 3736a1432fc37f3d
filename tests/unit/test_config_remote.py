"""The SSH forms of actions in actions.conf: parsed alike from INI and YAML, refused clearly."""

from __future__ import annotations

from pathlib import Path

import pytest

from lematt import config
from lematt.config import SshForward, SshRun, SshUpload
from lematt.errors import ConfigError


def load(tmp_path: Path, actions: str, name: str = "actions.conf") -> config.Config:
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "lematt.conf").write_text("[config]\naccountKey: a.key\nchallengeDropDir: d\n")
    (tmp_path / "domains").write_text("web.example.com\n")
    (tmp_path / name).write_text(actions)
    return config.load(tmp_path / "lematt.conf")


def test_ini_and_yaml_forms_parse_to_the_same_actions(tmp_path: Path) -> None:
    ini = load(tmp_path / "ini", """[default]
uploadCerts: [{"ssh": "web1", "to": "/etc/ssl"}, "cp CERTS /tmp"]
uploadKeys: [{"ssh": "deploy@web1:2222", "to": "/etc/ssl/private", "mode": "0640"}]
update: [{"ssh": "web1", "run": "reload DOMAINS_CN"}, {"ssh": "[::1]:22"}]
prepare: [{"ssh": "web1", "forward": "http://central.example.com/", "listen": ":8080"}]
""")
    yml = load(tmp_path / "yaml", """default:
  uploadCerts: [{ssh: web1, to: /etc/ssl}, "cp CERTS /tmp"]
  uploadKeys: [{ssh: "deploy@web1:2222", to: /etc/ssl/private, mode: "0640"}]
  update: [{ssh: web1, run: reload DOMAINS_CN}, {ssh: "[::1]:22"}]
  prepare: [{ssh: web1, forward: "http://central.example.com/", listen: ":8080"}]
""", "actions.yaml")
    assert ini.actions == yml.actions
    section = ini.actions.default
    assert section is not None
    assert section.upload_certs == (SshUpload("web1", "/etc/ssl"), "cp CERTS /tmp")
    assert section.upload_keys == (SshUpload("deploy@web1:2222", "/etc/ssl/private", 0o640),)
    assert section.update == (SshRun("web1", "reload DOMAINS_CN"), SshRun("[::1]:22"))
    assert section.prepare == (SshForward("web1", "http://central.example.com", ":8080"),)


@pytest.mark.parametrize(("value", "message"), [
    ('{"ssh": "-oProxyCommand=evil", "run": "x"}', "is not an SSH destination"),
    ('{"ssh": "web1 ; rm", "run": "x"}', "is not an SSH destination"),
    ('{"ssh": "web1", "run": "x", "sudo": true}', "unknown key 'sudo'"),
    ('{"run": "x"}', "needs 'ssh'"),
])
def test_bad_update_forms_name_the_line(tmp_path: Path, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        load(tmp_path, f"[default]\n\nupdate: [{value}]\n")
    assert "actions.conf:3:" in str(caught.value)


@pytest.mark.parametrize(("key", "value", "message"), [
    ("uploadCerts", '{"ssh": "web1", "to": "/x", "mode": "rw"}', "is not a file mode"),
    ("uploadCerts", '{"ssh": "web1"}', "needs 'to'"),
    ("prepare", '{"ssh": "web1", "forward": "http://c.example.com/path"}', "no path"),
    ("prepare", '{"ssh": "web1", "forward": "ftp://c.example.com"}', "base URL"),
])
def test_bad_upload_and_forward_forms(tmp_path: Path, key: str, value: str,
                                      message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load(tmp_path, f"[default]\n{key}: [{value}]\n")
