"""No cleartext secrets, strong tokens, and roles on the control API.

The review's attacks: a control listener on 0.0.0.0 serving a bearer token over plain HTTP;
MQTT credentials sent to a remote broker in clear; short tokens, tokens in group-readable
files, a token that a reload did not re-read; anyone in the socket's group able to reload or
override. Each is shown refused here, over real sockets.
"""

from __future__ import annotations

import asyncio
import grp
import json
import logging
import os
import pwd
import socket
import ssl
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from test_api import MemoryPlane

from coolctl.config import ConfigError, load_config
from coolctl.config.schema import DaemonConfig, is_loopback
from coolctl.daemon.http import server_ssl_context
from coolctl.ops.api import ControlApi, ControlApiError, load_private_token
from coolctl.ops.client import ClientError, ControlClient
from coolctl.simulators.tls import TlsMaterial, create_tls_material, issue_certificate

RACK = """
[racks.r01.devices.cdu1]
driver = "modbus"
profile = "generic-cdu"
address = "127.0.0.1"
"""
OPERATOR_TOKEN = "operator-" + "a" * 40
VIEWER_TOKEN = "viewer-" + "b" * 40


def config_text(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "coolctl.toml"
    path.write_text(text + RACK)
    return path


def secret(tmp_path: Path, name: str, value: str, mode: int = 0o600) -> Path:
    path = tmp_path / name
    path.write_text(value + "\n")
    path.chmod(mode)
    return path


# -- check-config ------------------------------------------------------------------------------


def test_loopback_is_only_loopback() -> None:
    assert all(map(is_loopback, ("127.0.0.1", "127.8.9.1", "::1", "[::1]", "localhost")))
    assert not any(map(is_loopback, ("0.0.0.0", "::", "10.1.2.3", "rackmgr", "192.168.1.1")))


def test_a_control_listener_beyond_loopback_needs_tls(tmp_path: Path) -> None:
    token = secret(tmp_path, "token", OPERATOR_TOKEN)
    listen = f'[daemon]\ncontrol_listen = "0.0.0.0:8470"\ncontrol_token_file = "{token}"\n'
    with pytest.raises(ConfigError) as refused:
        load_config(config_text(tmp_path, listen))
    assert "not loopback" in str(refused.value) and "allow_plaintext" in str(refused.value)
    load_config(config_text(tmp_path, listen + "allow_plaintext = true\n"))
    cert = tmp_path / "c.pem"
    tls = f'tls_cert_file = "{cert}"\ntls_key_file = "{cert}"\n'
    load_config(config_text(tmp_path, listen + tls))
    loopback = listen.replace("0.0.0.0", "127.0.0.1")
    load_config(config_text(tmp_path, loopback))


def test_mqtt_credentials_to_a_remote_broker_need_tls(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    password = secret(tmp_path, "mqtt", "broker-password")
    mqtt = (
        f'[mqtt]\nbroker = "10.0.0.5:1883"\nusername = "coolctl-site1"\n'
        f'password_file = "{password}"\n'
    )
    with pytest.raises(ConfigError) as refused:
        load_config(config_text(tmp_path, mqtt))
    assert "in clear" in str(refused.value)
    load_config(config_text(tmp_path, mqtt + "tls = true\n"))
    load_config(config_text(tmp_path, mqtt.replace("10.0.0.5", "127.0.0.1")))
    allowed = load_config(config_text(tmp_path, mqtt + "allow_plaintext = true\n"))
    from coolctl.daemon.mqtt_bridge import open_connection

    caplog.set_level(logging.WARNING)
    assert open_connection(allowed) is not None  # no I/O until started
    assert any("in clear" in record.getMessage() for record in caplog.records)


# -- tokens ------------------------------------------------------------------------------------


def test_a_token_must_be_long_and_private(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least 32"):
        load_private_token(secret(tmp_path, "short", "s3cret"))
    for mode in (0o640, 0o604, 0o620):
        with pytest.raises(ValueError, match="open to group or others"):
            load_private_token(secret(tmp_path, f"open{mode:o}", OPERATOR_TOKEN, mode))
    assert load_private_token(secret(tmp_path, "good", OPERATOR_TOKEN)) == OPERATOR_TOKEN


@pytest_asyncio.fixture
async def tcp_api(tmp_path: Path) -> AsyncIterator[tuple[ControlApi, MemoryPlane, str]]:
    plane = MemoryPlane()
    api = ControlApi(
        plane,
        socket_path=tmp_path / "control.sock",
        tcp_listen=("127.0.0.1", 0),
        token_file=secret(tmp_path, "operator", OPERATOR_TOKEN),
        viewer_token_file=secret(tmp_path, "viewer", VIEWER_TOKEN),
    )
    await api.start()
    try:
        yield api, plane, f"http://127.0.0.1:{api.tcp_port}"
    finally:
        await api.stop()


PUMP = "cdu1/pump_speed_command"


@pytest.mark.asyncio
async def test_a_reload_re_reads_the_tokens(
    tcp_api: tuple[ControlApi, MemoryPlane, str], tmp_path: Path
) -> None:
    api, _, url = tcp_api
    new = secret(tmp_path, "rotated", "rotated-" + "c" * 40)
    api.reload_tokens(new, None)
    async with ControlClient(url=url, token=OPERATOR_TOKEN) as old:
        with pytest.raises(ClientError) as refused:
            await old.status()
        assert refused.value.status == 401
    async with ControlClient(url=url, token_file=new) as rotated:
        assert "version" in await rotated.status()
    # A bad token file on reload is refused, and the tokens in force stay.
    with pytest.raises(ValueError, match="open to group"):
        api.reload_tokens(secret(tmp_path, "loose", "x" * 40, 0o644), None)
    async with ControlClient(url=url, token_file=new) as rotated:
        assert "version" in await rotated.status()


@pytest.mark.asyncio
async def test_the_viewer_token_reads_and_changes_nothing(
    tcp_api: tuple[ControlApi, MemoryPlane, str],
) -> None:
    _, plane, url = tcp_api
    async with ControlClient(url=url, token=VIEWER_TOKEN) as viewer:
        assert "version" in await viewer.status()
        await viewer.events()
        for change in (
            viewer.set_override("r01", PUMP, 0.8, ttl_s=600, reason="seal check"),
            viewer.set_mode("r01", "manual", reason="seal check"),
            viewer.reload(),
        ):
            with pytest.raises(ClientError) as refused:
                await change
            assert refused.value.status == 403 and "viewer" in refused.value.message
    assert plane.mutations == []
    async with ControlClient(url=url, token=OPERATOR_TOKEN) as operator:
        record = await operator.set_override("r01", PUMP, 0.8, ttl_s=600, reason="seal check")
    assert record["who"] == "token@127.0.0.1 as operator"  # the audit names the role


# -- TLS ---------------------------------------------------------------------------------------


def client_certificate(tls: TlsMaterial, folder: Path) -> Path:
    """A client certificate and its key in one PEM file, from the test CA."""
    ca_key = serialization.load_pem_private_key(tls.ca_key.read_bytes(), password=None)
    from cryptography import x509

    ca_cert = x509.load_pem_x509_certificate(tls.ca_cert.read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    cert = issue_certificate(ca_key, ca_cert, key.public_key(), "operator", client=True)
    path = folder / "client.pem"
    path.write_bytes(
        cert.public_bytes(serialization.Encoding.PEM)
        + key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)
    return path


@pytest.mark.asyncio
@pytest.mark.parametrize("client_ca", [False, True])
async def test_the_control_listener_serves_tls_and_asks_for_a_client_certificate(
    tmp_path: Path, client_ca: bool
) -> None:
    tls = create_tls_material(tmp_path / "tls")
    daemon = DaemonConfig(
        tls_cert_file=tls.server_cert,
        tls_key_file=tls.server_key,
        tls_client_ca_file=tls.ca_cert if client_ca else None,
    )
    api = ControlApi(
        MemoryPlane(),
        socket_path=tmp_path / "control.sock",
        tcp_listen=("127.0.0.1", 0),
        token_file=secret(tmp_path, "operator", OPERATOR_TOKEN),
        ssl_context=server_ssl_context(daemon),
    )
    await api.start()
    try:
        plain = f"http://127.0.0.1:{api.tcp_port}"
        url = f"https://127.0.0.1:{api.tcp_port}"
        async with ControlClient(url=plain, token=OPERATOR_TOKEN) as cleartext:
            with pytest.raises(Exception):  # noqa: B017 - no answer in clear, however it fails
                await cleartext.status()
        async with ControlClient(url=url, token=OPERATOR_TOKEN, ca_file=tls.ca_cert) as anon:
            if client_ca:
                with pytest.raises(Exception):  # noqa: B017 - refused in the handshake
                    await anon.status()
            else:
                assert "version" in await anon.status()
        cert = client_certificate(tls, tmp_path)
        async with ControlClient(
            url=url, token=OPERATOR_TOKEN, ca_file=tls.ca_cert, cert_file=cert
        ) as holder:
            assert "version" in await holder.status()
    finally:
        await api.stop()


@pytest.mark.asyncio
async def test_metrics_serve_tls(tmp_path: Path) -> None:
    from coolctl.daemon.http import MetricsServer
    from coolctl.daemon.runtime import Daemon

    tls = create_tls_material(tmp_path / "tls")
    context = server_ssl_context(
        DaemonConfig(tls_cert_file=tls.server_cert, tls_key_file=tls.server_key)
    )
    config = load_config(Path(__file__).parent / "configs" / "hil-rack.toml")
    server = MetricsServer(Daemon(config), "127.0.0.1", 0, context)
    await server.start()
    try:
        assert server.url.startswith("https://")
        client = ssl.create_default_context(cafile=str(tls.ca_cert))
        async with (
            aiohttp.ClientSession() as session,
            session.get(server.url, ssl=client) as response,
        ):
            assert response.status == 200 and "coolctl" in await response.text()
    finally:
        await server.stop()


# -- roles on the socket -----------------------------------------------------------------------


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory other users can reach (pytest's tmp_path is private to its owner)."""
    path = Path(tempfile.mkdtemp(prefix="coolctl-roles-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        for child in path.iterdir():
            child.unlink()
        path.rmdir()


def http_as(path: Path, uid: int, gid: int, groups: list[int], request: bytes) -> tuple[int, Any]:
    """Fork, become uid:gid with `groups`, send one request over the socket; its answer."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: only system calls from here on, then _exit
        try:
            os.setgroups(groups)
            os.setgid(gid)
            os.setuid(uid)
            with socket.socket(socket.AF_UNIX) as sock:
                sock.connect(str(path))
                sock.sendall(request)
                os.write(write_end, b"".join(iter(lambda: sock.recv(65536), b"")))
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        answer = pipe.read()
    os.waitpid(pid, 0)
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def request(method: str, path: str, body: bytes = b"") -> bytes:
    return (
        f"{method} {path} HTTP/1.1\r\nHost: coolctl\r\nConnection: close\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as other users")
@pytest.mark.asyncio
async def test_socket_users_outside_the_operator_group_are_viewers(shared_dir: Path) -> None:
    nogroup = grp.getgrnam("nogroup").gr_gid
    operators = grp.getgrnam("daemon").gr_gid  # any group the test user (root) is not in
    nobody = pwd.getpwnam("nobody").pw_uid
    plane = MemoryPlane()
    api = ControlApi(
        plane,
        socket_path=shared_dir / "control.sock",
        socket_group="nogroup",
        operator_group="daemon",
    )
    await api.start()
    override = request(
        "PUT",
        "/v1/racks/r01/overrides/cdu1%2Fpump_speed_command",
        b'{"value": 0.5, "ttl_s": 600, "reason": "seal check"}',
    )

    async def as_user(groups: list[int], what: bytes) -> tuple[int, Any]:
        return await asyncio.to_thread(http_as, api.socket_path, nobody, nogroup, groups, what)

    try:
        status, _ = await as_user([], request("GET", "/v1/status"))
        assert status == 200  # a viewer reads
        for change in (override, request("POST", "/v1/reload")):
            status, body = await as_user([], change)
            assert status == 403 and "viewer" in body["error"]
        assert plane.mutations == []
        status, body = await as_user([operators], override)
        assert status == 200 and body["who"] == f"nobody (uid {nobody}) as operator"
    finally:
        await api.stop()


# -- a reload re-reads the tokens, in the daemon ---------------------------------------------


def _site(tmp_path: Path, token_file: Path) -> Path:
    """The example config with nothing to reach (Modbus on closed ports, no MQTT) and a TCP
    control listener on loopback."""
    import re

    text = (Path(__file__).resolve().parents[1] / "deploy" / "config" / "example.toml").read_text()
    with socket.socket() as one, socket.socket() as two:
        one.bind(("127.0.0.1", 0))
        two.bind(("127.0.0.1", 0))
        ports = one.getsockname()[1], two.getsockname()[1]
    text = text.replace("port = 15020", f"port = {ports[0]}").replace(
        "port = 15021", f"port = {ports[1]}"
    )
    text = re.sub(r"\[mqtt\][^\[]*", "", text)
    text = re.sub(r"\[racks\.r01\.devices\.sensors1\][^\[]*", "", text)
    text = text.replace(', "sensors1/inlet_temperature" = 45.0', "")
    text = text.replace(
        "[daemon]\n",
        f'[daemon]\ncontrol_listen = "127.0.0.1:0"\ncontrol_token_file = "{token_file}"\n',
        1,
    )
    path = tmp_path / "site.toml"
    path.write_text(text)
    return path


@pytest.mark.asyncio
async def test_the_daemon_re_reads_its_token_on_reload(tmp_path: Path) -> None:
    from coolctl.daemon.service import Service, ServiceOptions
    from coolctl.ops.protocol import ControlError
    from coolctl.rack.check import load_checked_config

    token_file = secret(tmp_path, "token", OPERATOR_TOKEN)
    path = _site(tmp_path, token_file)
    service = Service(
        load_checked_config(path),
        ServiceOptions(tmp_path / "coolctl.db", tmp_path / "control.sock", metrics=False),
    )
    await service.start()
    try:
        assert service.api is not None
        url = f"http://127.0.0.1:{service.api.tcp_port}"
        async with ControlClient(url=url, token=OPERATOR_TOKEN) as client:
            assert "version" in await client.status()
        rotated = "rotated-" + "d" * 40
        token_file.write_text(rotated + "\n")
        await service.reload()
        async with ControlClient(url=url, token=OPERATOR_TOKEN) as old:
            with pytest.raises(ClientError) as refused:
                await old.status()
            assert refused.value.status == 401
        async with ControlClient(url=url, token=rotated) as new:
            assert "version" in await new.status()
        # A token file others can read is refused at reload; the old config and token stay.
        token_file.chmod(0o644)
        with pytest.raises(ControlError, match="open to group or others"):
            await service.reload()
        async with ControlClient(url=url, token=rotated) as new:
            assert "version" in await new.status()
    finally:
        await service.stop()


@pytest.mark.asyncio
async def test_a_plaintext_listener_beyond_loopback_is_logged_as_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # 192.0.2.1 (TEST-NET-1) is on no interface here: the warning comes before the bind,
    # which then fails; nothing is sent anywhere.
    caplog.set_level(logging.WARNING, logger="coolctl.ops.api")
    api = ControlApi(
        MemoryPlane(),
        socket_path=tmp_path / "control.sock",
        tcp_listen=("192.0.2.1", 0),
        token_file=secret(tmp_path, "operator", OPERATOR_TOKEN),
    )
    with pytest.raises(ControlApiError, match="cannot listen"):
        await api.start()
    assert any("plain HTTP" in record.getMessage() for record in caplog.records)
