"""LVD-003 static_label_sharing: No two guests share one static SELinux/AppArmor label.

Linear in the fleet and bounded in what it says: a guest's message names at most SHOWN other guests
per label (sorted) and how many more there are, so 8,000 guests sharing one label make 8,000 short
messages, not 8,000 lists of 7,999 names.
"""

from collections import defaultdict

from guestward.audit.engine import Verdict
from guestward.audit.model import Status

SHOWN = 5
MAX_LABELS_SHOWN = 3


def _static_labels(d):
    out = []
    for sl in d.root.iterfind("seclabel[@type='static']"):
        label = (sl.findtext("label") or "").strip()
        if label and sl.get("model") != "dac":
            out.append((d.view, sl.get("model"), label))
    return out


def evaluate(domains, params):
    """Fleet check: static labels shared by two or more of the audited guests (per view)."""
    labels_of = {id(d): list(dict.fromkeys(_static_labels(d))) for d in domains}
    by_label = defaultdict(set)
    for d in domains:
        for key in labels_of[id(d)]:
            by_label[key].add(d.name)
    names = {key: sorted(n) for key, n in by_label.items() if len(n) > 1}  # sorted once per label
    out = []
    for d in domains:
        shared = []
        for key in labels_of[id(d)]:
            others_all = names.get(key)
            if not others_all:
                continue
            count = len(others_all) - (d.name in by_label[key])
            if count <= 0:
                continue
            others = [n for n in others_all[:SHOWN + 1] if n != d.name][:SHOWN]
            more = f" and {count - len(others)} more" if count > len(others) else ""
            shared.append(f"{key[2][:200]} (shared with {count} other guest(s): {', '.join(others)}{more})")
        if not any(d.root.iterfind("seclabel[@type='static']")):
            out.append((d, Verdict(Status.not_applicable, "no static seclabel")))
        elif shared:
            hidden = len(shared) - MAX_LABELS_SHOWN
            extra = f"; and {hidden} more shared labels" if hidden > 0 else ""
            out.append((d, Verdict(Status.failed, "static label shared: " + "; ".join(shared[:MAX_LABELS_SHOWN])
                                   + extra)))
        else:
            out.append((d, Verdict(Status.passed)))
    return out
