"""wss:// end to end: the server in-process on a fake backend (no model) behind a self-signed certificate."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
import threading

import pytest

from pdlink.common.client import CloudClient
from pdlink.cloud.config import CloudConfig
from pdlink.cloud.server import CloudServer
from pdlink.cloud.server_process import free_port
from tests.unit.cloud.fake_backend import FakeBackend, FakeClock, continuation

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory):
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    return cert, key


@pytest.fixture(scope="module")
def tls_server(tls_files):
    from pdlink.cloud.torch_backend import checkpoint_tokenizer
    from pdlink.compile.checkpoint import open_checkpoint

    backend = FakeBackend(FakeClock())
    backend.tokenizer = checkpoint_tokenizer(open_checkpoint("smollm2-135m"))
    backend.model_id, backend.vocab_size = "smollm2-135m", backend.tokenizer.vocab_size
    cert, key = tls_files
    cfg = CloudConfig(port=free_port(), tls_cert=str(cert), tls_key=str(key), auth_token="tls-token", warm_up=False,
                      max_prompt_tokens=256, max_leading_tokens=16)
    server, ready = CloudServer(cfg, backend=backend), threading.Event()
    urls = []
    thread = threading.Thread(target=lambda: asyncio.run(server.serve_forever(
        on_ready=lambda url: (urls.append(url), ready.set()))), daemon=True)
    thread.start()
    assert ready.wait(30), "in-process TLS server did not start"
    yield urls[0], cert, backend.tokenizer.hash
    server.request_shutdown()
    thread.join(15)


def test_wss_serves_tokens_and_plain_ws_is_refused(tls_server):
    url, cert, token_hash = tls_server
    assert url.startswith("wss://127.0.0.1:")
    prompt = [5, 6, 7, 8]

    async def go():
        trust = ssl.create_default_context(cafile=str(cert))
        async with await CloudClient.connect(url, auth_token="tls-token", ssl_context=trust, event_timeout_s=30,
                                             tokenizer_hash=token_hash) as client:
            stream = await (await client.prefill(prompt_token_ids=prompt, max_leading_tokens=6)).collect()
        with pytest.raises(Exception):  # the certificate is not in the default trust store
            await CloudClient.connect(url, auth_token="tls-token", open_timeout_s=10)
        with pytest.raises(Exception):  # plain websocket to a TLS port
            await CloudClient.connect(url.replace("wss://", "ws://"), auth_token="tls-token", open_timeout_s=10)
        return stream

    stream = asyncio.run(asyncio.wait_for(go(), 60))
    assert [t.token_id for t in stream.tokens] == continuation(prompt, 6)
    assert stream.done.reason == "max_leading_tokens"
