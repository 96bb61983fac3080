"""guestward: a security layer for KVM/QEMU virtualization managed by libvirt.

Security policy is written against guest identity (labels in the domain XML) and enforced at the
hypervisor on each guest's vNIC. See README.md and ARCHITECTURE.md.
"""

__version__ = "0.1.0"
