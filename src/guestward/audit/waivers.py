"""The waiver file (YAML): accepted risks with a justification and an expiry date.

```yaml
waivers:
  - {check: LVD-040, guests: ["gpu-*"], justification: "GPU node, IOMMU verified", expires: 2027-01-31}
  - {check: LVH-013, host: true, justification: "single-homed host", expires: 2026-12-31}
```
"""

from __future__ import annotations

import yaml
from pydantic import ValidationError

from guestward.audit.facts import FactError
from guestward.audit.model import Waiver, WaiverFile


def parse_waivers(text: str, source: str) -> list[Waiver]:
    try:
        doc = yaml.safe_load(text) or {"waivers": []}
        parsed = WaiverFile.model_validate(doc)
    except yaml.YAMLError as exc:
        raise FactError(f"{source}: not YAML: {exc}") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise FactError(f"{source}: {where}: {first['msg']}") from None
    return [w.model_copy(update={"source": source}) for w in parsed.waivers]
