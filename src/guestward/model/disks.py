"""A guest disk as the hypervisor describes it: a chain of image layers, top first, each with its format.

The format of every layer is *given* (by the domain XML, or by the operator for an image file), never
probed from the image's content: a raw disk whose guest wrote a qcow2 header stays raw. The chain is the
complete list of host files an inspection may open for this disk.
"""

from __future__ import annotations

from dataclasses import dataclass

FORMATS = ("raw", "qcow2")


@dataclass(frozen=True)
class DiskLayer:
    path: str
    format: str  # one of FORMATS


@dataclass(frozen=True)
class DiskChain:
    """`layers[0]` is what the guest sees; each qcow2 layer's backing file is the next layer."""

    target: str  # the guest's device name (vda), or the image file's name
    layers: tuple[DiskLayer, ...]
    # True when the source said nothing about the last layer's backing file (an inactive domain's XML
    # without <backingStore>, an image file): the chain must be completed under guestward.inspect.chain's rule.
    open_end: bool = False

    def __post_init__(self) -> None:
        if not self.layers:
            raise ValueError(f"disk {self.target}: empty chain")
        for i, layer in enumerate(self.layers):
            if layer.format not in FORMATS:
                raise ValueError(f"disk {self.target}: format {layer.format!r} of {layer.path} is not supported "
                                 f"(supported: {', '.join(FORMATS)})")
            if layer.format == "raw" and i != len(self.layers) - 1:
                raise ValueError(f"disk {self.target}: raw layer {layer.path} cannot have a backing file")

    def paths(self) -> list[str]:
        return [layer.path for layer in self.layers]

    def to_json(self) -> dict[str, object]:
        return {"target": self.target, "layers": [{"path": la.path, "format": la.format} for la in self.layers],
                "open_end": self.open_end}

    @classmethod
    def from_json(cls, d: dict[str, object]) -> DiskChain:
        layers = d["layers"]
        assert isinstance(layers, list)
        return cls(str(d["target"]), tuple(DiskLayer(str(la["path"]), str(la["format"])) for la in layers),
                   bool(d.get("open_end", False)))
