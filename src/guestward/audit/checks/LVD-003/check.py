"""LVD-003 static_label_sharing: No two guests share one static SELinux/AppArmor label."""

from collections import defaultdict

from guestward.audit.engine import Verdict
from guestward.audit.model import Status


def evaluate(domains, params):
    """Fleet check: static labels shared by two or more of the audited guests (per view)."""
    by_label = defaultdict(list)
    for d in domains:
        for sl in d.root.iterfind("seclabel[@type='static']"):
            label = (sl.findtext("label") or "").strip()
            if label and sl.get("model") != "dac":
                by_label[(d.view, sl.get("model"), label)].append(d.name)
    out = []
    for d in domains:
        shared = [f"{label} (also {', '.join(sorted(set(n) - {d.name}))})"
                  for (view, _m, label), n in by_label.items() if view == d.view and d.name in n and len(set(n)) > 1]
        if not any(d.root.iterfind("seclabel[@type='static']")):
            out.append((d, Verdict(Status.not_applicable, "no static seclabel")))
        elif shared:
            out.append((d, Verdict(Status.failed, "static label shared: " + "; ".join(shared))))
        else:
            out.append((d, Verdict(Status.passed)))
    return out
