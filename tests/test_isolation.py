"""A fault in one certificate stays in that certificate: a real `mustaple run` fed every kind of
bad certificate beside a good one (malformed AIA URLs, a bad port, a garbled file, a leaf
without its issuer, one dropped into the watched glob while it runs, a hook that hangs) keeps
refreshing and serving the good one, and shows each bad one with its reason."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from mustaple.core.request import encode_request, get_url, make_cert_id
from mustaple.testing import CA, Behaviour, ResponderThread
from outside import get_json, http_get, wait_for
from servers import free_port

MUSTAPLE = str(Path(sys.executable).with_name("mustaple"))


def rows(port: int) -> dict[str, dict[str, Any]]:
    report = get_json(f"http://127.0.0.1:{port}/status")
    return {Path(c["paths"][0]).parent.name: c for c in report["certificates"]}


def test_bad_certificates_never_stop_the_keeper(tmp_path: Path) -> None:
    ca = CA()
    port = free_port()
    live = tmp_path / "live"
    config = tmp_path / "mustaple.toml"
    config.write_text(
        f'state_dir = "{tmp_path}/state"\n'
        f'[[certificates]]\npaths = ["{live}/*/fullchain.pem"]\n'
        f'[sinks.files]\ntype = "file"\npath = "{tmp_path}/staples/{{name}}.der"\n'
        '[hooks]\non_failure = "sleep 600"\ntimeout = "1s"\n'
        '[policy]\ntimeout = "2s"\nattempts = 1\nwatch_interval = "1s"\n'
        'retry_min = "1s"\nretry_base = "1s"\n'
        f'[http]\nlisten = "127.0.0.1:{port}"\n'
    )
    with ResponderThread(ca) as responder:
        good = ca.issue("good.test", ocsp_urls=[responder.url])
        responder.add(good)
        good.write(live / "good")
        responder.set_behaviour(Behaviour.TRY_LATER)  # the good one fails first: retried below
        ca.issue("v6.test", ocsp_urls=["http://[::1/"]).write(live / "v6")
        ca.issue("port.test", ocsp_urls=["http://127.0.0.1:99999/"]).write(live / "port")
        (live / "garbled").mkdir()
        (live / "garbled" / "fullchain.pem").write_text("-----BEGIN CERTIFICATE-----\nnope\n")
        lonely = ca.issue("lonely.test", ocsp_urls=[responder.url])
        (live / "lonely").mkdir()
        (live / "lonely" / "fullchain.pem").write_bytes(lonely.cert_pem)
        keeper = subprocess.Popen(
            [MUSTAPLE, "run", "--config", str(config)], stderr=subprocess.PIPE, text=True
        )
        try:
            wait_for(lambda: http_get(f"http://127.0.0.1:{port}/healthz")[0] == 200)
            wait_for(lambda: rows(port)["good"]["failures"] >= 1)
            # while it runs, one more bad certificate lands in the watched glob
            ca.issue("late.test", ocsp_urls=["http://[::1/late"]).write(live / "late")
            wait_for(lambda: "late" in rows(port))
            responder.set_behaviour(Behaviour.GOOD)  # the good one's next retry succeeds
            wait_for(lambda: rows(port)["good"]["state"] == "good")
            wait_for((tmp_path / "staples" / "good.test.der").exists)  # delivered at the pass end
            request = encode_request(make_cert_id(good.issuer, good.cert.serial_number))
            status, body = http_get(get_url(f"http://127.0.0.1:{port}/ocsp", request))
            assert status == 200
            assert body == (tmp_path / "staples" / "good.test.der").read_bytes()
            seen = rows(port)
            for name in ("v6", "port", "late"):
                assert seen[name]["last_error"] == "bad-url", seen[name]
            assert seen["garbled"]["state"] == "unusable"
            assert seen["lonely"]["state"] == "unusable"
            assert "`issuer`" in seen["lonely"]["last_message"]
            assert keeper.poll() is None
        finally:
            keeper.send_signal(signal.SIGTERM)
            code = keeper.wait(30)
        log = keeper.stderr.read() if keeper.stderr else ""
    assert code == 0, log
    assert "Traceback" not in log
    assert "internal error" not in log
    assert "timed out after 1 s and was killed" in log  # the hanging hook
