"""Domain XML for a lab guest: TCG, direct kernel boot, one vNIC with a fixed tap name, labels and
address in guestward's `<metadata>`, the serial console in a file, and the command channel on a
virtio-serial port (a unix socket on the host). Not a second UART: under TCG on a busy host a 16550
can lose an interrupt at boot and leave the channel dead for good (seen here, about one boot in 20)."""

from __future__ import annotations

from pathlib import Path

from guestward.hypervisor.domain_xml import metadata_xml
from guestward.lab.scenario import GuestSpec, Scenario


def console_log(lab_dir: Path, name: str) -> Path:
    return lab_dir / "console" / f"{name}.log"


def command_socket(lab_dir: Path, host: str, name: str) -> Path:
    return lab_dir / "sock" / host / f"{name}.sock"


def domain_xml(lab_dir: Path, scenario: Scenario, g: GuestSpec, *, host: str | None = None,
               uuid: str | None = None) -> str:
    host = host or g.host
    assert g.address is not None
    # no_timer_check: on a busy host a TCG guest can fail the kernel's IO-APIC timer check at boot.
    cmdline = (f"console=ttyS0 quiet panic=-1 no_timer_check gw_name={g.name} gw_ip={scenario.interface(g.address)} "
               f"gw_listen={','.join(g.listen)}")
    uuid_el = f"<uuid>{uuid}</uuid>" if uuid else ""
    disk = (f"<disk type='file' device='disk'><driver name='qemu' type='qcow2' cache='none'/>"
            f"<source file='{lab_dir}/disk/{g.name}.qcow2'/><target dev='vda' bus='virtio'/></disk>\n    "
            if g.disk else "")
    return f"""<domain type='qemu'>
  <name>{g.name}</name>{uuid_el}
  <memory unit='MiB'>160</memory>
  <vcpu>1</vcpu>
  <metadata>{metadata_xml(g.labels, [(g.mac, str(g.address))])}</metadata>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{lab_dir}/guest/vmlinuz</kernel>
    <initrd>{lab_dir}/guest/initrd.gz</initrd>
    <cmdline>{cmdline}</cmdline>
  </os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff><on_reboot>destroy</on_reboot><on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    {disk}    <interface type='bridge'>
      <source bridge='gwbr0'/><mac address='{g.mac}'/><model type='virtio'/><target dev='{g.tap}'/>
    </interface>
    <serial type='file'><source path='{console_log(lab_dir, g.name)}' append='on'/><target port='0'/></serial>
    <channel type='unix'><source mode='bind' path='{command_socket(lab_dir, host, g.name)}'/>
      <target type='virtio' name='org.guestward.command.0'/></channel>
    <memballoon model='none'/>
  </devices>
</domain>"""
