#!/usr/bin/env bash
# `make setup`, system part: the Debian packages the SIP gateway, its tests, `make demo-sip` and the SIP bench
# run (issue 11). Quick and silent when everything is there; never fails set-up on a machine it cannot
# install on (not root, not Debian): it prints the one command to run and goes on.
#
#   rtpengine-daemon        the media relay (userspace, --table=-1, NG protocol)
#   sip-tester              SIPp: the carrier and agent phones in tests, demo and bench
#   baresip                 a real softphone for the agent-phone tests
#   espeak-ng, sox          prompts (the abandon message, the recording notice)
#   libsox-fmt-mp3          sox reads uploaded MP3 recordings (abandon_recording)
#   kamailio(-tls-modules)  the SIP edge for TCP/TLS trunks (sippy speaks UDP only)
#   chromium                the browser the console's tests drive with Playwright (no browser download)
#
# Packages come from apt with --no-install-recommends; `apt-get update` runs only when the install fails
# (no package lists yet). The packages' init scripts must not leave daemons running (a Kamailio on 5060 or a
# system rtpengine would collide with the tests): a policy-rc.d forbids starting services during the install,
# the units of what was installed are disabled, and set-up fails if a new kamailio/rtpengine listens anyway.
#
# Environment (for tests of this script): SYSTEM_PACKAGES (the list), SETUP_UID (default: id -u).
set -euo pipefail

read -r -a packages <<<"${SYSTEM_PACKAGES:-rtpengine-daemon sip-tester baresip espeak-ng sox libsox-fmt-mp3 kamailio kamailio-tls-modules chromium}"
uid="${SETUP_UID:-$(id -u)}"
# The services the packages above ship (they must not run: tests start their own processes).
services=(kamailio rtpengine-daemon rtpengine)

if ! command -v apt-get >/dev/null || ! command -v dpkg-query >/dev/null; then
  # Not Debian: name what is needed by the commands it provides.
  missing_bins=()
  for bin in rtpengine sipp baresip espeak-ng sox kamailio; do
    command -v "$bin" >/dev/null || missing_bins+=("$bin")
  done
  if ((${#missing_bins[@]})); then
    echo "setup: SIP telephony tools missing (${missing_bins[*]}); the SIP tests, make demo-sip and the SIP bench need them."
    echo "setup: on Debian/Ubuntu run: sudo apt-get install -y --no-install-recommends ${packages[*]}"
  fi
  exit 0
fi

missing=()
for pkg in "${packages[@]}"; do
  status="$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)"
  [[ "$status" == "installed" ]] || missing+=("$pkg")
done
((${#missing[@]})) || exit 0

if [[ "$uid" != 0 ]]; then
  echo "setup: Debian packages missing for SIP telephony: ${missing[*]}"
  echo "setup: run once: sudo apt-get install -y --no-install-recommends ${missing[*]}"
  exit 0
fi

echo "setup: installing ${missing[*]} (apt-get, no recommends)"
# Processes of the daemons that exist before the install are not ours to touch.
listeners() { ss -H -lntup 2>/dev/null | grep -E '"(kamailio|rtpengine)"' | grep -oE 'pid=[0-9]+' | sort -u || true; }
before="$(listeners)"

guard=""
if [[ ! -e /usr/sbin/policy-rc.d ]]; then
  guard=/usr/sbin/policy-rc.d
  printf '#!/bin/sh\n# outdial make setup: no service starts while packages install\nexit 101\n' >"$guard"
  chmod 755 "$guard"
  trap 'rm -f "$guard"' EXIT
fi

install() { DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"; }
if ! install; then
  echo "setup: apt-get install failed; refreshing the package lists once and retrying"
  DEBIAN_FRONTEND=noninteractive apt-get update -q
  install
fi

# Disable (and stop, if something started them) the services of what was just installed.
for svc in "${services[@]}"; do
  unit="/lib/systemd/system/$svc.service"
  [[ -e "$unit" ]] || unit="/etc/init.d/$svc"
  [[ -e "$unit" ]] || continue
  # Only what this run installed: an operator's own Kamailio or rtpengine stays as it is.
  owner="$(dpkg-query -S "$unit" 2>/dev/null | cut -d: -f1 || true)"
  [[ " ${missing[*]} " == *" $owner "* ]] || continue
  if [[ -d /run/systemd/system ]]; then
    systemctl disable --now "$svc.service" >/dev/null 2>&1 || true
  else
    systemctl disable "$svc.service" >/dev/null 2>&1 || true
    if [[ -x "/etc/init.d/$svc" ]] && "/etc/init.d/$svc" status >/dev/null 2>&1; then
      "/etc/init.d/$svc" stop >/dev/null 2>&1 || true
    fi
  fi
done

after="$(listeners)"
new="$(comm -13 <(echo "$before") <(echo "$after") | grep . || true)"
if [[ -n "$new" ]]; then
  echo "setup: a kamailio/rtpengine daemon started by the install still listens ($(echo $new)):" >&2
  ss -H -lntup 2>/dev/null | grep -E '"(kamailio|rtpengine)"' >&2 || true
  echo "setup: stop and disable it (systemctl disable --now kamailio rtpengine-daemon): tests start their own." >&2
  exit 1
fi
echo "setup: system packages installed; no kamailio/rtpengine daemon left running"
