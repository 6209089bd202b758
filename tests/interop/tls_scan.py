"""TLS scan of a wsgate TLS listener with sslyze, plus an ALPN check with Python's ssl module.

Usage: tls_scan.py --port PORT --ca CA.pem [--host localhost] [--out result.json]

Asserts what README.md promises for TLS listeners:
- SSL 2.0, SSL 3.0, TLS 1.0 and TLS 1.1 are refused; TLS 1.2 and TLS 1.3 are accepted;
- every TLS 1.2 suite accepted is AEAD with forward secrecy (ECDHE with AES-GCM or ChaCha20-Poly1305);
- no TLS compression, no Heartbleed, no OpenSSL CCS injection, no insecure or client-initiated
  renegotiation, TLS_FALLBACK_SCSV honoured, extended master secret supported;
- ALPN: h2 and http/1.1 are both offered (each is picked when it is all the client offers, h2 when
  both are), and a handshake offering only an unknown protocol does not get one selected.
Exits 1 on any finding.
"""

from __future__ import annotations

import argparse
import json
import re
import socket
import ssl
import sys
import time

from sslyze import (
    Scanner,
    ScanCommand,
    ScanCommandAttemptStatusEnum,
    ServerNetworkLocation,
    ServerScanRequest,
    ServerScanStatusEnum,
)

REFUSED_VERSIONS = {
    "SSL 2.0": ScanCommand.SSL_2_0_CIPHER_SUITES,
    "SSL 3.0": ScanCommand.SSL_3_0_CIPHER_SUITES,
    "TLS 1.0": ScanCommand.TLS_1_0_CIPHER_SUITES,
    "TLS 1.1": ScanCommand.TLS_1_1_CIPHER_SUITES,
}
ACCEPTED_VERSIONS = {
    "TLS 1.2": ScanCommand.TLS_1_2_CIPHER_SUITES,
    "TLS 1.3": ScanCommand.TLS_1_3_CIPHER_SUITES,
}
OTHER = [
    ScanCommand.TLS_COMPRESSION,
    ScanCommand.HEARTBLEED,
    ScanCommand.OPENSSL_CCS_INJECTION,
    ScanCommand.SESSION_RENEGOTIATION,
    ScanCommand.TLS_FALLBACK_SCSV,
    ScanCommand.TLS_EXTENDED_MASTER_SECRET,
    ScanCommand.ELLIPTIC_CURVES,
]
# IANA names (sslyze reports those): ECDHE key exchange, AEAD bulk cipher.
TLS12_GOOD = re.compile(r"^TLS_ECDHE_(ECDSA|RSA)_WITH_(AES_(128|256)_GCM_SHA(256|384)|CHACHA20_POLY1305_SHA256)$")


def alpn(host: str, port: int, ca: str, offer: list[str]) -> str | None:
    ctx = ssl.create_default_context(cafile=ca)
    ctx.set_alpn_protocols(offer)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        with ctx.wrap_socket(sock, server_hostname=host) as tls:
            return tls.selected_alpn_protocol()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="localhost")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ca", required=True)
    parser.add_argument("--out")
    args = parser.parse_args()

    problems: list[str] = []
    report: dict = {}
    started = time.monotonic()
    location = ServerNetworkLocation(hostname=args.host, port=args.port, ip_address="127.0.0.1")
    commands = set(REFUSED_VERSIONS.values()) | set(ACCEPTED_VERSIONS.values()) | set(OTHER)
    scanner = Scanner()
    scanner.queue_scans([ServerScanRequest(server_location=location, scan_commands=commands)])
    (result,) = list(scanner.get_results())
    if result.scan_status != ServerScanStatusEnum.COMPLETED:
        print(f"FAIL sslyze could not connect: {result.connectivity_error_trace}")
        return 1
    res = result.scan_result
    assert res is not None

    def attempt(cmd: ScanCommand):
        a = getattr(res, cmd.value)
        if a.status != ScanCommandAttemptStatusEnum.COMPLETED:
            problems.append(f"sslyze {cmd.value} did not complete: {a.error_reason} {a.error_trace}")
            return None
        return a.result

    for name, cmd in {**REFUSED_VERSIONS, **ACCEPTED_VERSIONS}.items():
        r = attempt(cmd)
        if r is None:
            continue
        accepted = [s.cipher_suite.name for s in r.accepted_cipher_suites]
        report[name] = accepted
        print(f"  {name}: {', '.join(accepted) if accepted else 'refused'}")
        if name in REFUSED_VERSIONS and accepted:
            problems.append(f"{name} is accepted ({len(accepted)} suites)")
        if name in ACCEPTED_VERSIONS and not accepted:
            problems.append(f"{name} is refused")
        if name == "TLS 1.2":
            for suite in accepted:
                if not TLS12_GOOD.match(suite):
                    problems.append(f"TLS 1.2 suite {suite} is not ECDHE + AEAD (GCM/CHACHA20)")

    r = attempt(ScanCommand.TLS_COMPRESSION)
    if r is not None:
        report["compression"] = r.supports_compression
        if r.supports_compression:
            problems.append("TLS compression is supported (CRIME)")
    r = attempt(ScanCommand.HEARTBLEED)
    if r is not None:
        report["heartbleed"] = r.is_vulnerable_to_heartbleed
        if r.is_vulnerable_to_heartbleed:
            problems.append("vulnerable to Heartbleed")
    r = attempt(ScanCommand.OPENSSL_CCS_INJECTION)
    if r is not None:
        report["ccs_injection"] = r.is_vulnerable_to_ccs_injection
        if r.is_vulnerable_to_ccs_injection:
            problems.append("vulnerable to OpenSSL CCS injection")
    r = attempt(ScanCommand.SESSION_RENEGOTIATION)
    if r is not None:
        report["client_renegotiation_dos"] = r.is_vulnerable_to_client_renegotiation_dos
        report["secure_renegotiation"] = r.supports_secure_renegotiation
        if r.is_vulnerable_to_client_renegotiation_dos:
            problems.append("client-initiated renegotiation is accepted")
    r = attempt(ScanCommand.TLS_FALLBACK_SCSV)
    if r is not None:
        report["fallback_scsv"] = r.supports_fallback_scsv
        if not r.supports_fallback_scsv:
            problems.append("TLS_FALLBACK_SCSV is not honoured")
    r = attempt(ScanCommand.TLS_EXTENDED_MASTER_SECRET)
    if r is not None:
        report["extended_master_secret"] = r.supports_ems_extension
        if not r.supports_ems_extension:
            problems.append("no extended master secret")
    r = attempt(ScanCommand.ELLIPTIC_CURVES)
    if r is not None:
        curves = [c.name for c in r.supported_curves or []]
        report["curves"] = curves
        print(f"  groups: {', '.join(curves)}")
    print(
        "  compression {compression}, heartbleed {heartbleed}, CCS injection {ccs_injection},"
        " client renegotiation {client_renegotiation_dos}, fallback SCSV {fallback_scsv},"
        " extended master secret {extended_master_secret}".format_map(
            _OrUnknown(report)
        )
    )

    # ALPN: what the server picks for each offer (None: no protocol selected).
    offers = {
        "h2,http/1.1": ["h2", "http/1.1"],
        "http/1.1": ["http/1.1"],
        "h2": ["h2"],
    }
    expected = {"h2,http/1.1": "h2", "http/1.1": "http/1.1", "h2": "h2"}
    report["alpn"] = {}
    for label, offer in offers.items():
        try:
            got = alpn(args.host, args.port, args.ca, offer)
        except (OSError, ssl.SSLError) as e:
            got = f"error: {e}"
        report["alpn"][label] = got
        print(f"  ALPN offer [{label}] -> {got}")
        if got != expected[label]:
            problems.append(f"ALPN offer [{label}] selected {got!r}, expected {expected[label]!r}")
    # An offer of nothing the server speaks: RFC 7301 lets it refuse the handshake
    # (no_application_protocol) or go on without ALPN; either is fine, selecting one is not.
    try:
        got = alpn(args.host, args.port, args.ca, ["spdy/3"])
        report["alpn"]["spdy/3"] = got
        print(f"  ALPN offer [spdy/3] -> {got}")
        if got is not None:
            problems.append(f"ALPN offer [spdy/3] selected {got!r}")
    except ssl.SSLError as e:
        report["alpn"]["spdy/3"] = f"refused: {e}"
        print(f"  ALPN offer [spdy/3] -> handshake refused ({e})")

    report["seconds"] = round(time.monotonic() - started, 1)
    report["problems"] = problems
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)
    for p in problems:
        print(f"  FAIL {p}")
    print(f"  scan took {report['seconds']}s")
    return 1 if problems else 0


class _OrUnknown(dict):
    def __missing__(self, key: str) -> str:
        return "?"


if __name__ == "__main__":
    sys.exit(main())
