"""TLS built in, through a real server: WebSocket (wss) and HTTP API (https) on one port, a
certificate replaced on disk and reloaded on SIGHUP without dropping a connection, a bad
reload keeping the certificate in use, and configuration mistakes refused at start."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlencode

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from websockets.asyncio.client import connect

from tests.support.node_scenarios import run_scenario
from tests.support.pusher_raw import sign_query, unique
from tests.support.server import TIMEOUT, ParleyServer

pytestmark = pytest.mark.e2e


def write_certificate(directory: Path, name: str) -> x509.Certificate:
    """A self-signed certificate for 127.0.0.1 named `name`, into cert.pem and key.pem."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    (directory / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert


def trusting(*certs: x509.Certificate) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.load_verify_locations(
        cadata="".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in certs)
    )
    return context


def served_certificate(port: int, context: ssl.SSLContext) -> x509.Certificate:
    async def handshake() -> bytes:
        _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        writer.close()
        await writer.wait_closed()
        return bytes(der)

    return x509.load_der_x509_certificate(asyncio.run(handshake()))


def wait_for_line(lines: list[str], text: str) -> str:
    """The first of the server's output lines (read by its pump thread) holding `text`."""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        for line in list(lines):
            if text in line:
                return line
        time.sleep(0.02)  # polling what the pump thread appends, bounded by the deadline
    raise AssertionError(f"no line with {text!r} within {TIMEOUT}s: {lines[-5:]}")


def wait_for_log(srv: ParleyServer, event: str) -> dict[str, object]:
    parsed: dict[str, object] = json.loads(wait_for_line(srv.stderr_lines, f'"event":"{event}"'))
    return parsed


def test_wss_and_https_on_one_port_and_a_certificate_reloaded_on_sighup(tmp_path: Path) -> None:
    first = write_certificate(tmp_path, "first")
    args = ["--tls-cert", str(tmp_path / "cert.pem"), "--tls-key", str(tmp_path / "key.pem")]
    with ParleyServer(args=args) as srv:
        wait_for_line(srv.stdout_lines, f"wss://127.0.0.1:{srv.port}/app/")
        context = trusting(first)
        channel = unique("tls-")

        async def live_connection_across_a_reload() -> x509.Certificate:
            url = f"wss://127.0.0.1:{srv.port}/app/{srv.key}?protocol=7"
            async with connect(url, ssl=context) as ws:
                established = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
                assert established["event"] == "pusher:connection_established"
                await ws.send(
                    json.dumps({"event": "pusher:subscribe", "data": {"channel": channel}})
                )
                subscribed = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
                assert subscribed["event"] == "pusher_internal:subscription_succeeded"

                second = write_certificate(tmp_path, "second")
                srv.process.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
                await asyncio.to_thread(wait_for_log, srv, "tls certificate reloaded")
                now_served = await asyncio.to_thread(
                    served_certificate, srv.port, trusting(first, second)
                )
                assert now_served.subject == second.subject

                body = json.dumps({"name": "news", "channels": [channel], "data": "over tls"})
                path = f"/apps/{srv.app_id}/events"
                query = sign_query("POST", path, {}, body.encode(), srv.key, srv.secret)
                request = urllib.request.Request(
                    f"https://127.0.0.1:{srv.port}{path}?{urlencode(query)}",
                    data=body.encode(),
                    headers={"Content-Type": "application/json"},
                )
                https = trusting(first, second)
                with await asyncio.to_thread(
                    urllib.request.urlopen, request, timeout=TIMEOUT, context=https
                ) as answer:
                    assert answer.status == 200
                # the connection made before the reload is still up and delivered to
                event = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
                assert (event["event"], event["data"]) == ("news", "over tls")
                return second

        second = asyncio.run(live_connection_across_a_reload())

        (tmp_path / "key.pem").write_bytes(b"not a key")  # a broken reload keeps the old pair
        srv.process.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
        refused = wait_for_log(srv, "tls certificate not reloaded")
        assert refused["reason"]
        still = served_certificate(srv.port, trusting(first, second))
        assert still.subject == second.subject
        with urllib.request.urlopen(
            f"https://127.0.0.1:{srv.port}/healthz", timeout=TIMEOUT, context=trusting(second)
        ) as health:
            assert health.status == 200


@pytest.mark.parametrize(
    ("args", "code", "problem"),
    [
        (["--tls-cert", "cert.pem"], 2, "'tls_cert' and 'tls_key' go together"),
        (["--tls-cert", "missing.pem", "--tls-key", "missing.pem"], 1, "is not a file"),
        (["--tls-cert", "cert.pem", "--tls-key", "cert.pem"], 1, "cannot load the TLS"),
    ],
)
def test_tls_mistakes_are_refused_at_start(
    tmp_path: Path, args: list[str], code: int, problem: str
) -> None:
    write_certificate(tmp_path, "only")
    done = subprocess.run(
        [sys.executable, "-m", "parley", "serve", "--port", "0", *args],
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "PARLEY_DATA_DIR": str(tmp_path / "data")},
        capture_output=True,
        text=True,
        timeout=TIMEOUT * 2,
    )
    assert done.returncode == code, done.stderr
    assert problem in done.stderr and "Traceback" not in done.stderr, done.stderr


@pytest.mark.node
@pytest.mark.parametrize("scenario", ["public_events.mjs", "client_events.mjs"])
def test_pusher_js_and_the_npm_sdk_over_wss_and_https(
    scenario: str, tmp_path: Path, node_modules: Path
) -> None:
    """Unmodified pusher-js (forceTLS) and the npm `pusher` SDK (useTLS) against the built-in
    TLS, trusting the test's certificate through NODE_EXTRA_CA_CERTS."""
    write_certificate(tmp_path, "pusher-js")
    args = ["--tls-cert", str(tmp_path / "cert.pem"), "--tls-key", str(tmp_path / "key.pem")]
    with ParleyServer(args=args, env={"PARLEY_APP_CLIENT_EVENTS": "true"}) as srv:
        env = {"PARLEY_E2E_TLS": "1", "NODE_EXTRA_CA_CERTS": str(tmp_path / "cert.pem")}
        run_scenario(srv, scenario, env=env)
        if scenario == "public_events.mjs":  # and it was TLS that carried it: plain ws fails
            with pytest.raises(pytest.fail.Exception, match="timed out"):
                run_scenario(srv, scenario, env={"PARLEY_E2E_WAIT_MS": "1500"})
