"""The lab: real libvirt hosts (each in its own namespaces), real QEMU/TCG guests, real packets.

Also a user feature: try a policy on a scenario before production (POLICY.md section 4).
"""
