"""libvirt domain events from every configured host, as (host, guest uuid, what) calls.

One thread runs libvirt's default event loop; each host has a connection with callbacks for
lifecycle, metadata change and device added/removed. A connection that closes (libvirtd restarted,
host away) is opened again with backoff, and `on_event(host, None, "reconnected")` tells the caller
to resynchronise that host, since events may have been missed meanwhile.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable

import libvirt

from guestward.hypervisor import inventory as _inventory  # noqa: F401  (installs the quiet error handler)
from guestward.model import Host

log = logging.getLogger(__name__)

OnEvent = Callable[[str, str | None, str], None]
_loop_started = False
_loop_lock = threading.Lock()

LIFECYCLE = {
    libvirt.VIR_DOMAIN_EVENT_DEFINED: "defined", libvirt.VIR_DOMAIN_EVENT_UNDEFINED: "undefined",
    libvirt.VIR_DOMAIN_EVENT_STARTED: "started", libvirt.VIR_DOMAIN_EVENT_SUSPENDED: "suspended",
    libvirt.VIR_DOMAIN_EVENT_RESUMED: "resumed", libvirt.VIR_DOMAIN_EVENT_STOPPED: "stopped",
    libvirt.VIR_DOMAIN_EVENT_SHUTDOWN: "shutdown", libvirt.VIR_DOMAIN_EVENT_PMSUSPENDED: "pmsuspended",
    libvirt.VIR_DOMAIN_EVENT_CRASHED: "crashed",
}


def _start_loop() -> None:
    global _loop_started
    with _loop_lock:
        if _loop_started:
            return
        libvirt.virEventRegisterDefaultImpl()

        def loop() -> None:
            while True:
                libvirt.virEventRunDefaultImpl()

        threading.Thread(target=loop, name="libvirt-events", daemon=True).start()
        _loop_started = True


class EventSource:
    """Subscribes to every host's domain events until `close()`."""

    def __init__(self, hosts: Iterable[Host], on_event: OnEvent) -> None:
        self.hosts = list(hosts)
        self.on_event = on_event
        self._conns: dict[str, libvirt.virConnect] = {}
        self._closed = threading.Event()
        _start_loop()
        threading.Thread(target=self._keep_connected, name="libvirt-connect", daemon=True).start()

    def close(self) -> None:
        self._closed.set()
        for conn in list(self._conns.values()):
            with contextlib.suppress(libvirt.libvirtError):
                conn.close()

    def connected(self) -> list[str]:
        return sorted(self._conns)

    def _keep_connected(self) -> None:
        backoff = {h.name: 0.2 for h in self.hosts}
        next_try = {h.name: 0.0 for h in self.hosts}
        while not self._closed.is_set():
            for h in self.hosts:
                conn = self._conns.get(h.name)
                if conn is not None:
                    try:
                        if conn.isAlive():
                            continue
                    except libvirt.libvirtError:
                        pass
                    self._conns.pop(h.name, None)
                    log.warning("%s: connection to libvirtd lost", h.name)
                if time.monotonic() < next_try[h.name]:
                    continue
                try:
                    self._conns[h.name] = self._subscribe(h)
                    backoff[h.name] = 0.2
                    self.on_event(h.name, None, "reconnected")
                except libvirt.libvirtError as exc:
                    next_try[h.name] = time.monotonic() + backoff[h.name]
                    backoff[h.name] = min(backoff[h.name] * 2, 5.0)
                    log.debug("%s: %s", h.name, exc.get_error_message())
            self._closed.wait(0.2)

    def _subscribe(self, h: Host) -> libvirt.virConnect:
        conn = libvirt.open(h.uri)
        conn.setKeepAlive(2, 3)
        name = h.name

        def lifecycle(_c: object, dom: libvirt.virDomain, event: int, detail: int, _o: object) -> None:
            self.on_event(name, dom.UUIDString(), f"{LIFECYCLE.get(event, event)}/{detail}")

        def metadata(_c: object, dom: libvirt.virDomain, _type: int, _nsuri: str, _o: object) -> None:
            self.on_event(name, dom.UUIDString(), "metadata")

        def device(what: str) -> Callable[..., None]:
            def cb(_c: object, dom: libvirt.virDomain, dev: str, _o: object) -> None:
                self.on_event(name, dom.UUIDString(), f"{what} {dev}")
            return cb

        conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, lifecycle, None)
        conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_METADATA_CHANGE, metadata, None)
        conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_DEVICE_ADDED, device("device-added"), None)
        conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_DEVICE_REMOVED, device("device-removed"), None)
        return conn
