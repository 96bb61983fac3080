"""Guest assets: the Debian cloud kernel (unpacked by scripts/bootstrap.sh), a busybox initramfs with
the virtio modules, the lab's init and the static `gw-net` tool (compiled here from its C source)."""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
from importlib import resources
from pathlib import Path

KERNEL_DIR = Path(os.environ.get("GUESTWARD_ASSETS", "/var/cache/guestward/assets")) / "kernel"
MODULES = ["virtio_ring", "virtio", "virtio_pci_legacy_dev", "virtio_pci_modern_dev", "virtio_pci",
           "failover", "net_failover", "virtio_net", "virtio_console"]


class AssetError(RuntimeError):
    pass


def build_gw_net(out: Path) -> Path:
    src = resources.files("guestward.lab.guest").joinpath("gw-net.c").read_text()
    out.parent.mkdir(parents=True, exist_ok=True)
    c_file = out.with_suffix(".c")
    c_file.write_text(src)
    proc = subprocess.run(["gcc", "-static", "-O2", "-o", str(out), str(c_file)], capture_output=True, text=True,
                          check=False)
    if proc.returncode != 0:
        raise AssetError(f"building gw-net failed: {proc.stderr[-2000:]}")
    return out


def build_initrd(out: Path, gw_net: Path) -> Path:
    if not (KERNEL_DIR / "vmlinuz").exists():
        raise AssetError(f"no guest kernel in {KERNEL_DIR}: run scripts/bootstrap.sh")
    busybox = shutil.which("busybox") or "/bin/busybox"
    tree = out.parent / "initrd-tree"
    shutil.rmtree(tree, ignore_errors=True)
    for d in ("bin", "dev", "proc", "sys", "lib/modules", "tmp", "root"):
        (tree / d).mkdir(parents=True)
    init = tree / "init"
    init.write_bytes(resources.files("guestward.lab.guest").joinpath("init.sh").read_bytes())
    shutil.copy(busybox, tree / "bin" / "busybox")
    shutil.copy(gw_net, tree / "bin" / "gw-net")
    for f in (init, tree / "bin" / "busybox", tree / "bin" / "gw-net"):
        f.chmod(0o755)
    for m in MODULES:
        try:
            shutil.copy(KERNEL_DIR / "modules" / f"{m}.ko", tree / "lib" / "modules" / f"{m}.ko")
        except FileNotFoundError:
            raise AssetError(f"no {m}.ko in {KERNEL_DIR / 'modules'}: run scripts/bootstrap.sh") from None
    (tree / "lib" / "modules" / "order").write_text("\n".join(MODULES) + "\n")
    listing = subprocess.run(["find", "."], cwd=tree, capture_output=True, check=True).stdout
    archive = subprocess.run(["cpio", "--quiet", "-o", "-H", "newc"], cwd=tree, input=listing,
                             capture_output=True, check=True).stdout
    out.write_bytes(gzip.compress(archive, compresslevel=6))
    shutil.rmtree(tree)
    shutil.copy(KERNEL_DIR / "vmlinuz", out.parent / "vmlinuz")
    for p in (out, out.parent / "vmlinuz"):
        p.chmod(0o644)
    return out
