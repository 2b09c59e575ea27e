"""Independent SIP peers the gateway is tested, demoed and benchmarked against: SIPp 3.6 scenarios
(carrier, called parties, agent phones, a registrar, a caller) shipped in ``scenarios/`` with launchers
that read back what SIPp saw on the wire, and a headless baresip agent softphone.

Nothing here imports the gateway: these are the far ends, driven as real processes.
"""

from outdial.gateway.peers.baresip import Baresip, BaresipError, baresip_binary, write_tone
from outdial.gateway.peers.sipp import (
    SCENARIO_DIR,
    SipMessage,
    SippError,
    SippStats,
    SippUac,
    SippUas,
    dtmf_pcap,
    parse_messages,
    parse_stats,
    scenario_keys,
    scenario_path,
    sipp_binary,
)

__all__ = [
    "SCENARIO_DIR",
    "Baresip",
    "BaresipError",
    "SipMessage",
    "SippError",
    "SippStats",
    "SippUac",
    "SippUas",
    "baresip_binary",
    "dtmf_pcap",
    "parse_messages",
    "parse_stats",
    "scenario_keys",
    "scenario_path",
    "sipp_binary",
    "write_tone",
]
