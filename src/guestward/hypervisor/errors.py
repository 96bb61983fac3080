"""The one error type of `hypervisor/`: libvirt's errors never leave this part unwrapped."""


class HypervisorError(RuntimeError):
    pass
