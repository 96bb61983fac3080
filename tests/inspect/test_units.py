"""Pure pieces: domain XML -> disk chains, parsers, config findings."""

from __future__ import annotations

import pytest

from guestward.hypervisor.disks import chains_from_xml
from guestward.hypervisor.errors import HypervisorError
from guestward.inspect import parsers
from guestward.inspect.findings import config_findings

XML = """<domain><devices>
<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='/i/top.qcow2'/>
  <backingStore type='file'><format type='qcow2'/><source file='/i/mid.qcow2'/>
    <backingStore type='file'><format type='raw'/><source file='/i/base.raw'/><backingStore/></backingStore>
  </backingStore><target dev='vda' bus='virtio'/></disk>
<disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='/i/data.img'/><target dev='vdb'/></disk>
<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='/i/new.qcow2'/>
  <target dev='vdc'/></disk>
<disk type='file' device='cdrom'><driver name='qemu' type='raw'/><source file='/i/x.iso'/><target dev='sda'/></disk>
<disk type='network' device='disk'><driver type='raw'/><source protocol='nbd' name='x'/><target dev='vdd'/></disk>
</devices></domain>"""


def test_chains_from_domain_xml() -> None:
    chains, notes = chains_from_xml(XML)
    got = [(c.target, [(la.path, la.format) for la in c.layers], c.open_end) for c in chains]
    assert got == [
        ("vda", [("/i/top.qcow2", "qcow2"), ("/i/mid.qcow2", "qcow2"), ("/i/base.raw", "raw")], False),
        ("vdb", [("/i/data.img", "raw")], False),
        ("vdc", [("/i/new.qcow2", "qcow2")], True),  # no <backingStore>: completed under the chain rule
    ]
    assert len(notes) == 2


def test_disk_without_driver_type_is_refused() -> None:
    with pytest.raises(HypervisorError, match="never probes"):
        chains_from_xml("<domain><devices><disk type='file' device='disk'><source file='/a'/>"
                        "<target dev='vda'/></disk></devices></domain>")


def test_sshd_effective_first_value_wins_include_and_match() -> None:
    files = {"/etc/ssh/sshd_config": "Include /etc/ssh/sshd_config.d/*.conf\nPermitRootLogin no\n"
                                     "Match User bob\n  PasswordAuthentication no\n",
             "/etc/ssh/sshd_config.d/10-a.conf": "permitrootlogin=YES\n"}
    eff = parsers.sshd_effective(files.get, lambda p: [f for f in files if f.startswith(p.split("*")[0])])
    assert eff["effective"]["permitrootlogin"] == "yes"  # the include came first
    assert eff["effective"]["passwordauthentication"] == "yes" and eff["match_blocks"] == 1


def test_dpkg_status_source_fields() -> None:
    text = ("Package: libc6\nStatus: install ok installed\nSource: glibc\nVersion: 2.36-9+deb12u13\n\n"
            "Package: libfoo1\nStatus: install ok installed\nSource: foo (1.2-3)\nVersion: 1.2-3+b1\n\n"
            "Package: gone\nStatus: deinstall ok config-files\nVersion: 1\n")
    assert [(p["name"], p["source"], p["source_version"]) for p in parsers.parse_dpkg_status(text)] == [
        ("libc6", "glibc", "2.36-9+deb12u13"), ("libfoo1", "foo", "1.2-3")]


def test_apk_installed() -> None:
    text = "C:Q1abc=\nP:libcrypto3\nV:3.1.4-r5\nA:x86_64\no:openssl\n\nP:musl\nV:1.2.4-r2\n\n"
    assert [(p["name"], p["version"], p["source"]) for p in parsers.parse_apk_installed(text)] == [
        ("libcrypto3", "3.1.4-r5", "openssl"), ("musl", "1.2.4-r2", "musl")]


def test_crontab_and_keys_parsers() -> None:
    assert parsers.parse_crontab("# c\nMAILTO=x\n*/5 * * * * root run me\n@reboot bob up\n", system=True) == [
        {"schedule": "*/5 * * * *", "user": "root", "command": "run me"},
        {"schedule": "@reboot", "user": "bob", "command": "up"}]
    keys = parsers.parse_authorized_keys('command="x y" ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA== me@h\njunk\n')
    assert keys[0]["type"] == "ssh-ed25519" and keys[0]["options"] == "command=x y" and keys[0]["comment"] == "me@h"


def test_default_permitrootlogin_is_not_a_finding() -> None:
    inv = {"sshd": {"present": True, "effective": dict(parsers.SSHD_DEFAULTS), "files": []},
           "users": [{"name": "root", "uid": 0, "password": "locked", "login_shell": True, "shell": "/bin/sh",
                      "home": "/root"}]}
    assert config_findings(inv) == []
