#!/usr/bin/env bash
# The lab demo: two libvirt hosts, real TCG guests, a sample policy, and the reachability it produces,
# measured with real packets. Leaves the lab running; `.venv/bin/guestward lab down` removes it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
G=.venv/bin/guestward
$G lab down >/dev/null 2>&1 || true
$G lab up -f examples/lab/scenario.yaml --policy examples/lab/policy.yaml
$G lab status
$G reach
$G lab probe --all
# The policy follows the guest: live-migrate web1 to hv2 (the hook binds it there before it resumes)
# and measure again, then show what the hook and the agent did.
$G lab migrate web1 hv2
$G lab status
$G lab probe --all
$G events --limit 12
