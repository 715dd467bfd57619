"""Every file in examples/ passes the real program's own check.

The examples name system paths (/etc/letsencrypt, /var/lib/mustaple, /run/haproxy ...); each
test copies the example with those paths moved under a temporary root holding real test
certificates and staples, and asks the program that reads it: `nginx -t`, `haproxy -c`,
`lighttpd -tt`, `exim -bV`, `promtool check rules`, `mustaple run --check-config`, `sh -n`.
(examples/mustaple.service is verified by `systemd-analyze` in test_install.py.)
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from conftest import build_response
from mustaple.adapters.config import load_config
from mustaple.cli import main
from mustaple.testing.pki import CA
from outside import http_get, wait_for
from servers import free_port

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
MUSTAPLE = str(Path(sys.executable).with_name("mustaple"))
MOVED = ("/etc/", "/var/lib/", "/run/", "/usr/local/sbin/")
CHECKED = {
    "nginx.conf",
    "haproxy.cfg",
    "lighttpd.conf",
    "exim.conf",
    "prometheus-alerts.yml",
    "mustaple.toml",
    "certbot-deploy-hook.sh",
    "mustaple.service",
}


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A temporary root with what the examples name: certificates, staples, a hook."""
    ca = CA(key_type="ec", ocsp_url="http://127.0.0.1:9/ocsp")
    now = datetime.now(UTC)
    for name in ("example.org", "mail.example.org"):
        leaf = ca.issue(name)
        leaf.write(tmp_path / "etc/letsencrypt/live" / name)
        staple = tmp_path / "var/lib/mustaple/staples" / f"{name}.der"
        staple.parent.mkdir(parents=True, exist_ok=True)
        staple.write_bytes(
            build_response(leaf, ca.issuing, this_update=now, next_update=now + timedelta(days=4))
        )
        if name == "example.org":
            pem = tmp_path / "etc/haproxy/certs/example.org.pem"
            pem.parent.mkdir(parents=True)
            pem.write_bytes(leaf.fullchain_pem + leaf.key_pem)
    (tmp_path / "run/haproxy").mkdir(parents=True)
    hook = tmp_path / "usr/local/sbin/renew-now"
    hook.parent.mkdir(parents=True)
    hook.write_text("#!/bin/sh\nexit 0\n")
    hook.chmod(0o755)
    return tmp_path


def _moved(name: str, root: Path) -> Path:
    """The example with its system paths under `root`."""
    text = (EXAMPLES / name).read_text()
    for prefix in MOVED:
        text = text.replace(prefix, f"{root}{prefix}")
    path = root / name
    path.write_text(text)
    return path


def _ok(*args: str | Path) -> None:
    done = subprocess.run([str(a) for a in args], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_example_is_checked() -> None:
    assert {p.name for p in EXAMPLES.iterdir()} == CHECKED


def test_nginx_example_passes_nginx_t(root: Path) -> None:
    example = _moved("nginx.conf", root)
    main_conf = root / "main.conf"
    main_conf.write_text(
        f"pid {root}/nginx.pid;\nevents {{}}\nhttp {{\n    access_log off;\n"
        f"    include {example};\n}}\n"
    )
    _ok("/usr/sbin/nginx", "-t", "-e", "stderr", "-c", main_conf)


def test_haproxy_example_passes_haproxy_c(root: Path) -> None:
    _ok("/usr/sbin/haproxy", "-c", "-f", _moved("haproxy.cfg", root))


def test_lighttpd_example_passes_lighttpd_tt(root: Path) -> None:
    example = _moved("lighttpd.conf", root)
    main_conf = root / "lighttpd-main.conf"
    main_conf.write_text(
        f'server.document-root = "{root}"\nserver.port = 8080\ninclude "{example}"\n'
    )
    _ok("/usr/sbin/lighttpd", "-tt", "-f", main_conf)


def test_exim_example_passes_exim_bv(root: Path) -> None:
    _ok("/usr/sbin/exim4", "-C", _moved("exim.conf", root), "-bV")


def test_exim_example_guards_its_staple_file_as_exim_md_does() -> None:
    """With a plain `tls_ocsp_file`, Exim refuses every STARTTLS while the file is missing
    (a revocation with `revoked = "remove"`, an expiry): the example keeps the guarded form
    that exim.md gives and tests/test_exim.py runs against Exim."""
    doc = (EXAMPLES.parent / "docs" / "integrations" / "exim.md").read_text()
    example = (EXAMPLES / "exim.conf").read_text()
    setting = doc[doc.index("tls_ocsp_file = ${if exists{") :]
    assert setting[: setting.index("\n```")] in example


def test_prometheus_rules_pass_promtool(root: Path) -> None:
    _ok("promtool", "check", "rules", EXAMPLES / "prometheus-alerts.yml")


def test_deploy_hook_is_valid_shell() -> None:
    _ok("sh", "-n", EXAMPLES / "certbot-deploy-hook.sh")


def test_mustaple_example_passes_check_config(
    root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _moved("mustaple.toml", root)
    code = main(["run", "--check-config", "--config", str(config)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out.startswith(f"{config}: OK")
    assert "warning" not in out + err


def test_the_example_configuration_serves_what_prometheus_scrapes(root: Path) -> None:
    """The alert rules need /metrics, which only an `[http]` table serves: the example
    configuration, loaded by the real loader, has one, where the documented scrape job and
    the rules' comment look (it had none: following the examples, Prometheus scraped
    nothing and MustapleDown fired)."""
    config = load_config(_moved("mustaple.toml", root))
    assert config.http is not None
    where = f"{config.http.host}:{config.http.port}"
    observability = (EXAMPLES.parent / "docs" / "observability.md").read_text()
    assert f'- targets: ["{where}"]' in observability
    assert where in (EXAMPLES / "prometheus-alerts.yml").read_text()


def test_expiring_alerts_scale_with_the_window(tmp_path: Path) -> None:
    """`promtool test rules` on the example rules: a week's staple is critical with 5 hours
    left, a 2-hour staple with an hour left is nothing (the keeper refreshes it at half its
    window), and one with 10 minutes left is critical, as the status page judges them."""
    rules = tmp_path / "rules.yml"
    rules.write_text(_without_annotations(EXAMPLES / "prometheus-alerts.yml"))
    staples = {  # name: (window, seconds left)
        "week-5h": (604800, 18000),
        "week-20h": (604800, 72000),
        "week-30h": (604800, 108000),
        "short-1h": (7200, 3600),
        "short-20m": (7200, 1200),
        "short-10m": (7200, 600),
    }
    series = []
    for name, (window, left) in staples.items():
        labels = f'{{job="mustaple",name="{name}",serial="1"}}'
        series += [
            {"series": f"mustaple_seconds_until_expiry{labels}", "values": f"{left}x30"},
            {"series": f"mustaple_staple_window_seconds{labels}", "values": f"{window}x30"},
            {"series": f"mustaple_must_staple{labels}", "values": "1x30"},
        ]

    def firing(alert: str, severity: str, *names: str) -> dict[str, object]:
        expected = [
            {"exp_labels": {"severity": severity, "job": "mustaple", "name": n, "serial": "1"}}
            for n in names
        ]
        return {"eval_time": "20m", "alertname": alert, "exp_alerts": expected}

    tests = {
        "rule_files": [str(rules)],
        "tests": [
            {
                "interval": "1m",
                "input_series": series,
                "alert_rule_test": [
                    firing("MustStapleStapleExpiringSoon", "critical", "week-5h", "short-10m"),
                    firing(
                        "MustStapleStapleExpiring",
                        "warning",
                        "week-5h",
                        "week-20h",
                        "short-20m",
                        "short-10m",
                    ),
                ],
            }
        ],
    }
    test_file = tmp_path / "test.yml"
    test_file.write_text(json.dumps(tests))  # JSON is YAML
    _ok("promtool", "test", "rules", test_file)


def _without_annotations(rules: Path) -> str:
    """The rules with their annotations left out (`promtool test rules` compares them too)."""
    kept, skipping = [], False
    for line in rules.read_text().splitlines():
        indent = len(line) - len(line.lstrip())
        if line.strip() == "annotations:":
            skipping, depth = True, indent
            continue
        if skipping and (not line.strip() or indent > depth):
            continue
        skipping = False
        kept.append(line)
    return "\n".join(kept) + "\n"


def test_the_unusable_alert_fires_for_every_file_the_status_page_calls_critical(
    tmp_path: Path,
) -> None:
    """`promtool test rules` on what a real `mustaple run` exposes: a must-staple certificate
    without an OCSP URL and a file that cannot be read at all (whose must-staple flag is not
    known: `mustaple_must_staple` 0, `serial=""`) both fire MustapleCertificateUnusable, as
    both are CRITICAL on the status page; a certificate without must-staple and without an
    OCSP URL does not (the rule needed must-staple 1, so a garbled file never fired)."""
    ca = CA(key_type="ec")
    legacy = ca.issue("legacy.example", ocsp_urls=[])
    legacy.write(tmp_path / "live/legacy.example")
    ca.issue("plain.example", ocsp_urls=[], must_staple=False).write(tmp_path / "live/plain")
    broken = tmp_path / "live/broken.example/fullchain.pem"
    broken.parent.mkdir(parents=True)
    broken.write_text("not a certificate\n")
    port = free_port()
    config = tmp_path / "mustaple.toml"
    config.write_text(
        f'state_dir = "{tmp_path}/state"\n[[certificates]]\n'
        f'paths = ["{tmp_path}/live/*/fullchain.pem"]\n[http]\nlisten = "127.0.0.1:{port}"\n'
    )
    samples = _scraped(config, f"http://127.0.0.1:{port}/metrics", 3)
    rules = tmp_path / "rules.yml"
    rules.write_text(_without_annotations(EXAMPLES / "prometheus-alerts.yml"))
    series = [{"series": f"{s}", "values": f"{v}x20"} for s, v in samples]
    firing = 'count by (name, serial) (ALERTS{alertname="MustapleCertificateUnusable"})'
    expected = [
        {"labels": '{name="broken.example"}', "value": 1},  # serial="" is no label at all
        {
            "labels": f'{{name="legacy.example", serial="{legacy.cert.serial_number:x}"}}',
            "value": 1,
        },
    ]
    check = {"expr": firing, "eval_time": "10m", "exp_samples": expected}
    tests = {
        "rule_files": [str(rules)],
        "tests": [{"interval": "1m", "input_series": series, "promql_expr_test": [check]}],
    }
    test_file = tmp_path / "test.yml"
    test_file.write_text(json.dumps(tests))  # JSON is YAML
    _ok("promtool", "test", "rules", test_file)


def _scraped(config: Path, url: str, unusable: int) -> list[tuple[str, str]]:
    """The `mustaple_status` and `mustaple_must_staple` samples a real `mustaple run` of
    `config` exposes once `unusable` certificates are in state unusable."""
    keeper = subprocess.Popen([MUSTAPLE, "run", "--config", str(config)], stderr=subprocess.PIPE)
    try:
        wanted = 'state="unusable"} 1.0'
        wait_for(lambda: http_get(url)[1].decode().count(wanted) == unusable)
        text = http_get(url)[1].decode()
    finally:
        keeper.terminate()
        log = keeper.communicate(timeout=20)[1].decode()
    assert keeper.returncode == 0, log
    samples = []
    for line in text.splitlines():
        if line.startswith(_ALERTED_METRICS):
            series, value = line.rsplit(" ", 1)
            samples.append((series, value))
    return samples


_ALERTED_METRICS = ("mustaple_status{", "mustaple_must_staple{")
