"""`mustaple init` against real server configurations, judged by the servers' own checkers.

A certbot-style tree (live/ symlinks into archive/), nginx with includes and the same
certificate in several server blocks, lighttpd serving that certificate too, HAProxy with a
`crt` file, a `crt` directory and a `crt-list`, Apache with Include. The written mustaple.toml
must load with the real loader and sinks; `--apply` must pass `nginx -t` / `haproxy -c` or
leave every file byte for byte as it was.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from conftest import build_response
from mustaple.adapters.serverconf import read_apache, read_lighttpd, read_nginx
from mustaple.cli import main
from mustaple.keeper.daemon import check_config
from mustaple.testing.pki import CA, Leaf
from servers import Server, free_port, staple_from

NGINX = "/usr/sbin/nginx"
HAPROXY = "/usr/sbin/haproxy"


@dataclass
class Tree:
    root: Path
    nginx: Path
    haproxy: Path
    lighttpd: Path
    apache: Path
    live: Path  # live/example.test/fullchain.pem (a symlink)
    leaf: Leaf
    ca: CA


def _certbot(base: Path, name: str, leaf: Leaf) -> Path:
    """certbot's layout: archive/NAME/fullchain1.pem and live/NAME/fullchain.pem -> it."""
    archive, live = base / "archive" / name, base / "live" / name
    files = leaf.write(archive)
    live.mkdir(parents=True)
    for kind in ("fullchain", "cert", "chain", "privkey"):
        target = getattr(files, "key" if kind == "privkey" else kind)
        numbered = target.rename(archive / f"{kind}1.pem")
        (live / f"{kind}.pem").symlink_to(Path("../../archive", name, numbered.name))
    return live / "fullchain.pem"


@pytest.fixture
def tree(tmp_path: Path) -> Tree:
    ca = CA(key_type="ec", ocsp_url="http://127.0.0.1:9/ocsp")
    le = tmp_path / "etc/letsencrypt"
    example = ca.issue("example.test")
    live = _certbot(le, "example.test", example)
    _certbot(le, "plain.test", ca.issue("plain.test", must_staple=False))
    _certbot(le, "no-url.test", ca.issue("no-url.test", ocsp_urls=[]))
    run = tmp_path / "run"
    run.mkdir()
    return Tree(
        tmp_path,
        _nginx(tmp_path, le, run),
        _haproxy(tmp_path, ca),
        _lighttpd(tmp_path, le),
        _apache(tmp_path, le),
        live,
        example,
        ca,
    )


def _server(names: str, live: Path, port: int) -> str:
    return (
        f"    server {{\n        listen 127.0.0.1:{port} ssl;\n        server_name {names};\n"
        f"        ssl_certificate     {live}/fullchain.pem;\n"
        f"        ssl_certificate_key {live}/privkey.pem;\n    }}\n"
    )


def _nginx(root: Path, le: Path, run: Path) -> Path:
    conf = root / "etc/nginx"
    (conf / "sites-enabled").mkdir(parents=True)
    (conf / "nginx.conf").write_text(
        f"pid {run}/nginx.pid;\nerror_log {run}/nginx.log;\nevents {{}}\n"
        "http {\n    access_log off;\n    include sites-enabled/*.conf;\n}\n"
    )
    example = le / "live/example.test"
    (conf / "sites-enabled/example.conf").write_text(
        _server("example.test", example, 8443) + _server("www.example.test", example, 8444)
    )
    (conf / "sites-enabled/other.conf").write_text(
        _server("plain.test", le / "live/plain.test", 8445)
        + _server("no-url.test", le / "live/no-url.test", 8446)
    )
    return conf / "nginx.conf"


def _haproxy_pem(path: Path, leaf: Leaf) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(leaf.fullchain_pem + leaf.key_pem)
    return path


def _haproxy(root: Path, ca: CA) -> Path:
    conf = root / "etc/haproxy"
    _haproxy_pem(conf / "certs/shop.test.pem", ca.issue("shop.test"))
    _haproxy_pem(conf / "dir/a.test.pem", ca.issue("a.test"))
    _haproxy_pem(conf / "dir/b.test.pem", ca.issue("b.test"))
    _haproxy_pem(conf / "listed/c.test.pem", ca.issue("c.test"))
    (conf / "dir/b.test.pem.ocsp").write_bytes(b"not a certificate")
    (conf / "list.txt").write_text(f"# one per line\n{conf}/listed/c.test.pem [alpn h2] c.test\n")
    (conf / "haproxy.cfg").write_text(
        f"global\n    crt-base {conf}/certs\n\n"
        "defaults\n    mode http\n    timeout connect 5s\n    timeout client 30s\n"
        "    timeout server 30s\n\n"
        "frontend https\n"
        f"    bind 127.0.0.1:9443 ssl crt shop.test.pem crt-list {conf}/list.txt\n"
        f"    bind 127.0.0.1:9444 ssl crt {conf}/dir\n"
        "    default_backend app\n\n"
        "backend app\n    server app1 127.0.0.1:9\n"
    )
    return conf / "haproxy.cfg"


def _lighttpd(root: Path, le: Path) -> Path:
    conf = root / "etc/lighttpd"
    (conf / "conf-enabled").mkdir(parents=True)
    (conf / "lighttpd.conf").write_text(
        f'server.document-root = "{root}"\nserver.port = 8080\ninclude "conf-enabled/*.conf"\n'
    )
    (conf / "conf-enabled/10-ssl.conf").write_text(
        'server.modules += ("mod_openssl")\n'
        '$SERVER["socket"] == "127.0.0.1:8447" {\n    ssl.engine = "enable"\n'
        f'    ssl.pemfile = "{le}/live/example.test/fullchain.pem"\n'
        f'    ssl.privkey = "{le}/live/example.test/privkey.pem"\n}}\n'
    )
    return conf / "lighttpd.conf"


def _apache(root: Path, le: Path) -> Path:
    conf = root / "etc/apache2"
    (conf / "sites-enabled").mkdir(parents=True)
    (conf / "apache2.conf").write_text(
        "Define LE " + str(le) + "\nIncludeOptional sites-enabled/*.conf\n"
    )
    (conf / "sites-enabled/site.conf").write_text(
        "<VirtualHost *:443>\n    ServerName plain.test\n    SSLEngine on\n"
        "    SSLCertificateFile ${LE}/live/plain.test/fullchain.pem\n</VirtualHost>\n"
        "<VirtualHost *:443>\n    ServerName example.test\n"
        "    SSLCertificateFile ${LE}/live/example.test/fullchain.pem\n</VirtualHost>\n"
    )
    return conf / "apache2.conf"


def _init(tree: Tree, *args: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(["init", "--state-dir", str(tree.root / "state"), *args])
    out, err = capsys.readouterr()
    return code, out + err


def _checker(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, check=False)


def test_init_writes_a_config_the_real_loader_accepts(
    tree: Tree, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tree.root / "mustaple.toml"
    confs = ["--nginx-conf", str(tree.nginx), "--haproxy-conf", str(tree.haproxy)]
    confs += ["--lighttpd-conf", str(tree.lighttpd), "--apache-conf", str(tree.apache)]
    code, said = _init(tree, *confs, "--out", str(out), capsys=capsys)
    assert code == 0, said
    config = check_config(out)  # the real loader, and every sink built
    assert main(["run", "--check-config", "--config", str(out)]) == 0
    assert "warning" not in capsys.readouterr().err
    entries = {e.paths[0]: e for e in config.certificates}
    live = str(tree.live)
    assert live in entries  # the live/ symlink, never the archive/ file it points to
    assert "archive" not in out.read_text().replace("# ", "")
    assert entries[live].sinks == ("nginx", "lighttpd")  # one entry for both servers
    haproxy_certs = {Path(p).name for p, e in entries.items() if e.sinks == ("haproxy",)}
    assert haproxy_certs == {"shop.test.pem", "a.test.pem", "b.test.pem", "c.test.pem"}
    assert str(tree.root / "etc/letsencrypt/live/plain.test/fullchain.pem") in entries
    assert not any("no-url.test" in p for p in entries)  # left out, and said why
    assert "must-staple without an OCSP URL" in out.read_text()
    assert config.http is not None
    assert config.http.port == 8008
    assert set(config.sinks) == {"nginx", "haproxy", "lighttpd"}
    assert config.sinks["nginx"]["remove"] == "keep"
    assert config.sinks["nginx"]["reload"] == "systemctl reload nginx"
    # a graceful reload makes lighttpd read root-only keys as www-data, and exit
    assert config.sinks["lighttpd"]["reload"] == "systemctl restart lighttpd"
    # `prime --all && systemctl start nginx` works: a server not running is not reloaded
    assert config.sinks["nginx"]["running"] == "systemctl is-active --quiet nginx"
    # a wrong socket is never taken for a stopped HAProxy (docs/integrations/haproxy.md)
    assert config.sinks["haproxy"]["running"] == "systemctl is-active --quiet haproxy"
    staple = tree.root / "state/staples/example.test.der"
    assert said.count(f"ssl_stapling_file {staple};") == 2  # both server blocks, once each
    assert f'ssl.stapling-file = "{staple}"' in said
    assert "SSLStaplingForceURL http://127.0.0.1:8008/ocsp" in said
    assert "(<VirtualHost *:443> example.test):" in said
    assert "stats socket /run/haproxy/admin.sock mode 660 level admin" in said
    assert "none: can never be stapled" in said
    shop = tree.haproxy.parent / "certs/shop.test.pem"
    assert said.count(f"HAProxy loads {shop}.ocsp at start, and mustaple writes it") == 1


def test_nginx_dump_reads_like_the_files(tree: Tree) -> None:
    dump = _checker(NGINX, "-T", "-c", tree.nginx)
    assert dump.returncode == 0, dump.stderr
    saved = tree.root / "nginx-T.txt"
    saved.write_text(dump.stdout)
    from_dump, from_files = read_nginx(saved), read_nginx(tree.nginx)
    assert from_dump.main == tree.nginx
    assert from_dump.sites == from_files.sites
    assert [s.block for s in from_files.sites] == [
        "server example.test",
        "server www.example.test",
        "server plain.test",
        "server no-url.test",
    ]


def _staple(tree: Tree, name: str, leaf: Leaf) -> None:
    now = datetime.now(UTC)
    der = build_response(
        leaf, tree.ca.issuing, this_update=now, next_update=now + timedelta(days=4)
    )
    path = tree.root / "state/staples" / f"{name}.der"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(der)


def test_apply_nginx_is_undone_when_nginx_t_refuses_it(
    tree: Tree, capsys: pytest.CaptureFixture[str]
) -> None:
    sites = tree.nginx.parent / "sites-enabled/example.conf"
    before = {p: p.read_bytes() for p in tree.nginx.parent.rglob("*") if p.is_file()}
    code, said = _init(tree, "--nginx-conf", str(tree.nginx), "--apply", capsys=capsys)
    assert code == 1, said  # no staple file yet: nginx -t refuses ssl_stapling_file
    assert "its checker refused the change, so it was undone" in said
    assert "mustaple prime" in said
    assert "init --apply --force again" in said
    after = {p: p.read_bytes() for p in tree.nginx.parent.rglob("*") if p.is_file()}
    assert after == before  # byte for byte, and no backup left behind
    assert _checker(NGINX, "-t", "-c", tree.nginx).returncode == 0

    _staple(tree, "example.test", tree.leaf)
    _staple(tree, "plain.test", tree.leaf)  # any OCSP response satisfies nginx -t
    code, said = _init(tree, "--nginx-conf", str(tree.nginx), "--apply", capsys=capsys)
    assert code == 0, said
    checked = _checker(NGINX, "-t", "-c", tree.nginx)
    assert checked.returncode == 0, checked.stderr
    text = sites.read_text()
    assert text.count("ssl_stapling on;") == 2
    assert text.count(f"ssl_stapling_file {tree.root}/state/staples/example.test.der;") == 2
    backups = list((tree.root / "state/backups").rglob("example.conf"))
    assert len(backups) == 1
    assert backups[0].read_bytes() == before[sites]
    assert sorted(p.name for p in sites.parent.iterdir()) == ["example.conf", "other.conf"]


def test_configurations_read_as_the_servers_read_them(tmp_path: Path) -> None:
    """A '#' inside an nginx word is the word's; `ssl_stapling on;` set by a snippet the
    server block includes is seen; Apache's Include of a directory reads every file in it."""
    nginx = tmp_path / "nginx"
    (nginx / "snippets").mkdir(parents=True)
    (nginx / "snippets/ssl.conf").write_text("ssl_stapling on;\n")
    (nginx / "nginx.conf").write_text(
        "http {\n    server {\n        server_name a.test;\n"
        "        ssl_certificate /etc/ssl/site#1/fullchain.pem; # a comment\n"
        "        include snippets/ssl.conf;\n    }\n}\n"
    )
    (site,) = read_nginx(nginx / "nginx.conf").sites
    assert site.cert == Path("/etc/ssl/site#1/fullchain.pem")
    assert site.stapling_on
    apache = tmp_path / "apache"
    (apache / "sites").mkdir(parents=True)
    (apache / "sites/site.conf").write_text(
        "<VirtualHost *:443>\nServerName b.test\n"
        "SSLCertificateFile /etc/ssl/b.pem\n</VirtualHost>\n"
    )
    for include in ("Include", "IncludeOptional"):
        (apache / "apache2.conf").write_text(f"ServerRoot {apache}\n{include} sites\n")
        assert [s.cert for s in read_apache(apache / "apache2.conf").sites] == [
            Path("/etc/ssl/b.pem")
        ]
    lighttpd = tmp_path / "lighttpd"
    (lighttpd / "sites").mkdir(parents=True)
    (lighttpd / "lighttpd.conf").write_text('include "sites/a.conf"\n')
    (lighttpd / "sites/a.conf").write_text('include "sites/b.conf"\n')  # from the main file's
    (lighttpd / "sites/b.conf").write_text(
        '$SERVER["socket"] == ":8447" {   # site c\n  ssl.pemfile = "/etc/ssl/c.pem"\n}\n'
        '$SERVER["socket"] == ":8448" {   # site d\n  ssl.pemfile = "/etc/ssl/d.pem"\n}\n'
    )
    blocks = [(s.cert.name, s.block) for s in read_lighttpd(lighttpd / "lighttpd.conf").sites]
    assert blocks == [
        ("c.pem", '$SERVER["socket"] == ":8447"'), ("d.pem", '$SERVER["socket"] == ":8448"')
    ]  # fmt: skip


def test_a_block_serving_two_certificates_gets_the_local_responder_not_one_file(
    tree: Tree, capsys: pytest.CaptureFixture[str]
) -> None:
    """nginx staples one `ssl_stapling_file` for every certificate of a block: for an RSA and
    an ECDSA certificate, init says to use the local responder instead of adding that line."""
    le = tree.root / "etc/letsencrypt"
    ecdsa = _certbot(le, "example.test-ecdsa", tree.ca.issue("example.test", key_type="ec"))
    example = tree.nginx.parent / "sites-enabled/example.conf"
    key = ecdsa.with_name("privkey.pem")
    example.write_text(
        example.read_text().replace(
            "ssl_certificate_key",
            f"ssl_certificate {ecdsa};\n        ssl_certificate_key {key};\n"
            "        ssl_certificate_key",
            1,
        )
    )
    code, said = _init(tree, "--nginx-conf", str(tree.nginx), capsys=capsys)
    assert code == 0, said
    assert "serves 2 certificates" in said
    assert "ssl_stapling_responder http://127.0.0.1:8008/ocsp;" in said
    assert "(server example.test):" not in said  # no edit for that block
    assert "(server www.example.test):" in said  # the other block of the file still gets one


def test_two_blocks_alike_each_serving_one_certificate_each_get_a_staple_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two `server` blocks of one file with the same label (no `server_name`) were taken
    for one block serving two certificates: no file sink, no `ssl_stapling_file`, advice to
    use the local responder. Blocks are told apart by where their certificates are named."""
    ca = CA()
    for name in ("a", "b"):
        ca.issue(f"{name}.example", ocsp_urls=["http://127.0.0.1:9/"]).write(tmp_path / name)
    conf = tmp_path / "nginx.conf"
    conf.write_text(
        "http {\n"
        + "".join(
            f"    server {{\n        listen {port} ssl;\n"
            f"        ssl_certificate {tmp_path / name}/fullchain.pem;\n"
            f"        ssl_certificate_key {tmp_path / name}/privkey.pem;\n    }}\n"
            for name, port in (("a", 443), ("b", 8443))
        )
        + "}\n"
    )
    code = main(["init", "--state-dir", str(tmp_path / "state"), "--nginx-conf", str(conf)])
    said = "".join(capsys.readouterr())
    assert code == 0, said
    assert "serves 2 certificates" not in said
    assert "[sinks.nginx]" in said
    assert said.count("ssl_stapling_file ") == 2, said


def test_apply_edits_a_linked_file_where_it_is_keeps_its_bytes_and_backs_up_outside(
    tree: Tree, capsys: pytest.CaptureFixture[str]
) -> None:
    """Debian's layout: sites-enabled/example is a link to sites-available/example, loaded by
    `include sites-enabled/*;`. The link stays a link, the file it names is edited, a byte
    outside UTF-8 in a comment stays, and no backup lands where nginx would load it."""
    conf = tree.nginx.parent
    enabled = conf / "sites-enabled"
    real = conf / "sites-available/example"
    real.parent.mkdir()
    (enabled / "example.conf").rename(real)
    real.write_bytes(b"# caf\xe9 (Latin-1)\n" + real.read_bytes())
    (enabled / "example").symlink_to("../sites-available/example")
    tree.nginx.write_text(tree.nginx.read_text().replace("sites-enabled/*.conf", "sites-enabled/*"))
    _staple(tree, "example.test", tree.leaf)
    _staple(tree, "plain.test", tree.leaf)
    code, said = _init(tree, "--nginx-conf", str(tree.nginx), "--apply", capsys=capsys)
    assert code == 0, said
    assert (enabled / "example").is_symlink()
    assert real.read_bytes().startswith(b"# caf\xe9 (Latin-1)\n")
    assert real.read_bytes().count(b"ssl_stapling_file") == 2
    assert sorted(p.name for p in enabled.iterdir()) == ["example", "other.conf"]
    checked = _checker(NGINX, "-t", "-c", tree.nginx)
    assert checked.returncode == 0, checked.stderr


def test_apply_haproxy_adds_the_admin_socket_and_passes_haproxy_c(
    tree: Tree, capsys: pytest.CaptureFixture[str]
) -> None:
    before = tree.haproxy.read_text()
    code, said = _init(tree, "--haproxy-conf", str(tree.haproxy), "--apply", capsys=capsys)
    assert code == 0, said
    # the socket and the .ocsp files are read at HAProxy's next start or reload: say so
    assert "applied, not loaded: reload haproxy (after `mustaple prime" in said
    checked = _checker(HAPROXY, "-c", "-f", tree.haproxy)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    after = tree.haproxy.read_text()
    assert after.replace("    stats socket /run/haproxy/admin.sock mode 660 level admin\n", "") == (
        before
    )


def test_apply_haproxy_that_fails_haproxy_c_is_restored(
    tree: Tree, capsys: pytest.CaptureFixture[str]
) -> None:
    tree.haproxy.write_text(
        tree.haproxy.read_text().replace("default_backend app", "default_backend gone")
    )
    before = tree.haproxy.read_bytes()
    code, said = _init(tree, "--haproxy-conf", str(tree.haproxy), "--apply", capsys=capsys)
    assert code == 1, said
    assert "haproxy -c -f" in said
    assert "undone" in said
    assert tree.haproxy.read_bytes() == before
    assert not list(tree.haproxy.parent.glob("haproxy.cfg.mustaple-*"))


def test_an_include_loop_is_one_line_exit_2_for_every_server(
    tree: Tree, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A file that includes itself (a glob that matches it), two that include each other,
    a loop through a link, or includes nested deeper than any real configuration: one line
    naming the include, exit 2, never a RecursionError."""
    loops = tmp_path / "loops"
    (loops / "conf.d").mkdir(parents=True)
    (loops / "nginx.conf").write_text(f"http {{\n    include {loops}/conf.d/*.conf;\n}}\n")
    (loops / "conf.d/a.conf").write_text(f"include {loops}/conf.d/*.conf;\n")
    (loops / "apache.conf").write_text(f"Include {loops}/other.conf\n")
    (loops / "other.conf").write_text(f"Include {loops}/apache.conf\n")
    (loops / "deep").symlink_to(loops)  # deep/deep/deep/... is a new path every time
    (loops / "lighttpd.conf").write_text('include "deep/lighttpd.conf"\n')
    wanted = {
        "--nginx-conf": f"{loops}/conf.d/a.conf:1: an include loop: {loops}/conf.d/a.conf "
        f"includes {loops}/conf.d/a.conf; remove the include",
        "--apache-conf": f"{loops}/other.conf:1: an include loop: {loops}/apache.conf includes "
        f"{loops}/other.conf includes {loops}/apache.conf; remove the include",
        "--lighttpd-conf": f"{loops}/deep/lighttpd.conf:1: an include loop: "
        f"{loops}/deep/lighttpd.conf includes {loops}/deep/lighttpd.conf; remove the include",
    }
    for option, line in wanted.items():
        server = option.removeprefix("--").removesuffix("-conf")
        code, said = _init(tree, option, str(loops / f"{server}.conf"), capsys=capsys)
        assert code == 2
        assert line in said
        assert len(said.strip().splitlines()) == 1
    chain = tmp_path / "chain"  # 70 files, each including the next: deeper than any real one
    chain.mkdir()
    for n in range(70):
        (chain / f"{n}.conf").write_text(f"include {chain}/{n + 1}.conf;\n")
    (chain / "70.conf").write_text("")
    code, said = _init(tree, "--nginx-conf", str(chain / "0.conf"), capsys=capsys)
    assert code == 2
    assert f"{chain}/63.conf:1: includes nested more than 64 deep" in said


def test_init_refuses_to_overwrite_and_needs_a_server(
    tree: Tree, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out = tmp_path / "mustaple.toml"
    out.write_text("mine")
    code, said = _init(tree, "--nginx-conf", str(tree.nginx), "--out", str(out), capsys=capsys)
    assert code == 2
    assert "--force" in said
    assert out.read_text() == "mine"
    missing = tmp_path / "nope.conf"
    code, said = _init(tree, "--nginx-conf", str(missing), capsys=capsys)
    assert code == 2
    assert said.strip().endswith("configuration not found")
    assert len(said.strip().splitlines()) == 1
    fifo = tmp_path / "fifo.conf"
    os.mkfifo(fifo)
    for odd in ("/dev/zero", str(fifo)):  # never an endless read, never a wait
        code, said = _init(tree, "--nginx-conf", odd, capsys=capsys)
        assert code == 2
        assert said.strip().endswith("not a regular file; give the path of the configuration")


def test_init_with_nothing_to_staple_writes_nothing(
    tree: Tree, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = tree.root / "empty.conf"
    conf.write_text("events {}\nhttp {\n    server { listen 80; }\n}\n")
    out = tree.root / "mustaple.toml"
    code, said = _init(tree, "--nginx-conf", str(conf), "--out", str(out), capsys=capsys)
    assert code == 1
    assert f"nothing to staple: no certificate is served in {conf}" in said
    assert not out.exists()


def test_init_names_what_certificates_lack_when_none_can_be_stapled(
    tree: Tree, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A certificate with an OCSP URL but no issuer anywhere (a bundle of the leaf alone, no
    AIA caIssuers) was "no certificate with an OCSP URL served": it has one."""
    ca = CA(key_type="ec", ocsp_url="http://127.0.0.1:9/ocsp")
    leaf = ca.issue("alone.test")
    cert = tmp_path / "alone.pem"
    cert.write_bytes(leaf.cert.public_bytes(serialization.Encoding.PEM))
    conf = tmp_path / "alone.conf"
    conf.write_text(
        "events {}\nhttp {\n    server {\n        listen 443 ssl;\n"
        f"        ssl_certificate {cert};\n        ssl_certificate_key {cert};\n    }}\n}}\n"
    )
    code, said = _init(tree, "--nginx-conf", str(conf), capsys=capsys)
    assert code == 1
    assert (
        f"nothing to staple: none of the 1 certificates served in {conf} can be: each needs an "
        "OCSP URL and its issuer" in said
    )


def test_nginx_t_on_standard_input(tree: Tree) -> None:
    dump = _checker(NGINX, "-T", "-c", tree.nginx).stdout
    program = Path(sys.executable).parent / "mustaple"
    state = tree.root / "state"
    done = subprocess.run(
        [program, "init", "--nginx-conf", "-", "--state-dir", state],
        input=dump, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.count(f"ssl_stapling_file {state}/staples/example.test.der;") == 2
    assert f'paths = ["{tree.live}"]' in done.stdout


def test_apply_lighttpd_passes_lighttpd_tt(tree: Tree, capsys: pytest.CaptureFixture[str]) -> None:
    conf = tree.lighttpd.parent / "conf-enabled/10-ssl.conf"
    before = conf.read_text()
    _staple(tree, "example.test", tree.leaf)
    code, said = _init(tree, "--lighttpd-conf", str(tree.lighttpd), "--apply", capsys=capsys)
    assert code == 0, said
    checked = _checker("/usr/sbin/lighttpd", "-tt", "-f", tree.lighttpd)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    staple = tree.root / "state/staples/example.test.der"
    lines = before.splitlines(keepends=True)
    lines.insert(4, f'    ssl.stapling-file = "{staple}"\n')  # after ssl.pemfile, line 4
    assert conf.read_text() == "".join(lines)


class AppliedNginx(Server):
    """nginx run on a configuration `init --apply` edited, as it stands."""

    program = NGINX

    def __init__(self, directory: Path, config: Path, port: int) -> None:
        super().__init__(directory)
        self.config, self.fixed_port = config, port

    def choose_ports(self) -> None:
        self.port = self.fixed_port

    def write_config(self) -> None:
        """The configuration is the one under test: nothing to write."""

    def command(self) -> list[str]:
        return [NGINX, "-c", str(self.config), "-e", str(self.error_log)]


def test_nginx_staples_from_the_first_handshake_after_apply(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ca = CA(key_type="ec", ocsp_url="http://127.0.0.1:9/ocsp")
    leaf = ca.issue("e2e.test")
    live = _certbot(tmp_path / "letsencrypt", "e2e.test", leaf).parent
    port = free_port()
    conf = tmp_path / "nginx/nginx.conf"
    (conf.parent / "sites").mkdir(parents=True)
    conf.write_text(
        f"daemon off; user root; pid {tmp_path}/nginx.pid;\nevents {{}}\n"
        "http {\n    access_log off;\n    include sites/*.conf;\n}\n"
    )
    (conf.parent / "sites/e2e.conf").write_text(_server("e2e.test", live, port))
    now = datetime.now(UTC)
    staple = build_response(leaf, ca.issuing, this_update=now, next_update=now + timedelta(days=4))
    state = tmp_path / "state"
    (state / "staples").mkdir(parents=True)
    (state / "staples/e2e.test.der").write_bytes(staple)  # as `mustaple prime` leaves it
    code = main(["init", "--nginx-conf", str(conf), "--state-dir", str(state), "--apply"])
    assert code == 0, capsys.readouterr()
    with AppliedNginx(tmp_path / "run", conf, port):
        assert staple_from(port, "e2e.test") == staple


def test_apply_where_no_backup_can_be_made_changes_nothing(
    tree: Tree, capsys: pytest.CaptureFixture[str]
) -> None:
    sites = tree.nginx.parent / "sites-enabled"
    before = {p: p.read_bytes() for p in sites.iterdir()}
    subprocess.run(["chattr", "+i", str(sites)], check=True)  # not even root may add a file
    try:
        code, said = _init(tree, "--nginx-conf", str(tree.nginx), "--apply", capsys=capsys)
    finally:
        subprocess.run(["chattr", "-i", str(sites)], check=True)
    assert code == 2
    assert said.splitlines()[-1].endswith(
        "cannot back up or edit (Operation not permitted); every file is as it was"
    )
    assert {p: p.read_bytes() for p in sites.iterdir()} == before


def _with_ecdsa_block(tree: Tree) -> Path:
    """example.test in two certbot lineages (RSA-like and ECDSA), served by two blocks."""
    le = tree.root / "etc/letsencrypt"
    ecdsa = _certbot(le, "example.test-ecdsa", tree.ca.issue("example.test", key_type="ec"))
    example = tree.nginx.parent / "sites-enabled/example.conf"
    example.write_text(
        _server("example.test", le / "live/example.test", 8443)
        + _server("www.example.test", ecdsa.parent, 8444)
    )
    return ecdsa


def test_two_certificates_of_one_name_never_share_a_staple_file(
    tree: Tree, capsys: pytest.CaptureFixture[str]
) -> None:
    """Both would get `{name}.der`, and nginx would staple one's answer on the other's
    handshake: the second is left out, saying why, and its block gets no edit."""
    ecdsa = _with_ecdsa_block(tree)
    out = tree.root / "mustaple.toml"
    code, said = _init(tree, "--nginx-conf", str(tree.nginx), "--out", str(out), capsys=capsys)
    assert code == 0, said
    text = out.read_text()
    assert f"# left out: its staple file would be example.test.der, as for {tree.live}" in text
    assert f'# paths = ["{ecdsa}"]' in text
    assert "(server www.example.test):" not in said
    assert "(server example.test):" in said
    check_config(out)


def test_a_block_of_two_certificates_gets_the_local_responder_in_the_configuration(
    tree: Tree, capsys: pytest.CaptureFixture[str]
) -> None:
    """The advice names the local responder: the configuration written turns it on, and the
    block's certificates go to no nginx file (a file there would be the other's too)."""
    le = tree.root / "etc/letsencrypt"
    ecdsa = _certbot(le, "example.test-ecdsa", tree.ca.issue("example.test", key_type="ec"))
    example = tree.nginx.parent / "sites-enabled/example.conf"
    example.write_text(
        _server("example.test", le / "live/example.test", 8443).replace(
            "    }", f"        ssl_certificate {ecdsa};\n    }}"
        )
    )
    out = tree.root / "mustaple.toml"
    code, said = _init(tree, "--nginx-conf", str(tree.nginx), "--out", str(out), capsys=capsys)
    assert code == 0, said
    config = check_config(out)
    assert config.http is not None
    entries = {entry.paths[0]: entry for entry in config.certificates}
    assert entries[str(ecdsa)].sinks == ()
    assert entries[str(tree.live)].sinks == ()
    assert "its staple file would be" not in out.read_text()


def test_nginx_dump_keeps_a_files_leading_blank_lines(tmp_path: Path) -> None:
    """`nginx -T` shows each file after a header line: blank lines it starts with are its
    own, and the edit goes after the right line (it went before `server {`, at http level)."""
    conf = tmp_path / "site.conf"
    conf.write_text("\n\n\nserver {\n    ssl_certificate /x/fullchain.pem;\n}\n")
    dump = tmp_path / "nginx-T.txt"
    dump.write_text(f"# configuration file {conf}:\n{conf.read_text()}")
    main = tmp_path / "nginx.conf"
    main.write_text(f"events {{}}\nhttp {{\n    include {conf};\n}}\n")
    dump.write_text(f"# configuration file {main}:\n{main.read_text()}\n{dump.read_text()}")
    (site,) = read_nginx(dump).sites
    assert site.line == 5


def test_apply_with_a_relative_nginx_conf_and_files_the_server_user_owns(
    tree: Tree, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--nginx-conf nginx.conf` from its directory: nginx -c took it from its own prefix and
    every --apply failed; the edited file keeps its owner and group (it became root's), and
    its CRLF line ends (the lines added ended in LF)."""
    sites = tree.nginx.parent / "sites-enabled/example.conf"
    sites.write_bytes(sites.read_bytes().replace(b"\n", b"\r\n"))  # written on Windows
    os.chown(sites, 65534, 65534)
    _staple(tree, "example.test", tree.leaf)
    _staple(tree, "plain.test", tree.leaf)
    monkeypatch.chdir(tree.nginx.parent)
    code, said = _init(tree, "--nginx-conf", "nginx.conf", "--apply", capsys=capsys)
    assert code == 0, said
    assert (sites.stat().st_uid, sites.stat().st_gid) == (65534, 65534)
    edited = sites.read_bytes()
    assert edited.count(b"ssl_stapling_file") == 2
    assert b"\n" not in edited.replace(b"\r\n", b"")  # its line ends kept
    (backup,) = (tree.root / "state/backups").rglob("example.conf")
    assert backup.stat().st_uid == 65534


def test_relative_paths_in_a_relative_nginx_conf_become_full_paths(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--nginx-conf nginx/nginx.conf` whose ssl_certificate is relative to nginx's prefix:
    the config written has full paths, so its own suggested check passes (a configuration
    takes no relative path)."""
    leaf = CA(key_type="ec", ocsp_url="http://127.0.0.1:9/ocsp").issue("rel.test")
    leaf.write(tmp_path / "etc/nginx/certs")
    (tmp_path / "etc/nginx/nginx.conf").write_text(
        "events {}\nhttp {\n    server {\n        listen 443 ssl;\n"
        "        ssl_certificate certs/fullchain.pem;\n"
        "        ssl_certificate_key certs/privkey.pem;\n    }\n}\n"
    )
    monkeypatch.chdir(tmp_path / "etc")
    args = ["init", "--nginx-conf", "nginx/nginx.conf", "--state-dir", "st", "--out", "x.toml"]
    assert main(args) == 0, capsys.readouterr()
    config = check_config(tmp_path / "etc/x.toml")
    [entry] = config.certificates
    assert entry.paths == (str(tmp_path / "etc/nginx/certs/fullchain.pem"),)


def test_a_certificate_whose_name_is_not_utf8_is_left_out_not_written_into_toml(
    tree: Tree, capsys: pytest.CaptureFixture[str]
) -> None:
    odd = tree.root / "etc/haproxy/dir" / os.fsdecode(b"caf\xe9.pem")
    _haproxy_pem(odd, tree.ca.issue("cafe.test"))
    out = tree.root / "mustaple.toml"
    code, said = _init(tree, "--haproxy-conf", str(tree.haproxy), "--out", str(out), capsys=capsys)
    assert code == 0, said
    assert "its name is not UTF-8, which TOML cannot hold: rename it" in out.read_text()
    check_config(out)


def test_a_lighttpd_stapling_file_before_the_pemfile_is_seen(tmp_path: Path) -> None:
    """lighttpd takes the block's settings in any order: a stapling file written before
    `ssl.pemfile` is the block's (init proposed a second one, which lighttpd -tt refuses)."""
    conf = tmp_path / "lighttpd.conf"
    conf.write_text(
        '$SERVER["socket"] == "127.0.0.1:8447" {\n'
        '    ssl.stapling-file = "/var/lib/mustaple/staples/a.der"\n'
        '    ssl.pemfile = "/etc/ssl/a.pem"\n}\n'
        '$SERVER["socket"] == "127.0.0.1:8448" {\n    ssl.pemfile = "/etc/ssl/b.pem"\n}\n'
    )
    assert [site.stapling_file for site in read_lighttpd(conf).sites] == [
        "/var/lib/mustaple/staples/a.der",
        None,
    ]


def test_a_one_line_nginx_block_gets_advice_not_an_edit_outside_it(
    tree: Tree, capsys: pytest.CaptureFixture[str]
) -> None:
    """`server { ...; ssl_certificate X; ssl_certificate_key Y; }` on one line: lines added
    after it would be at http level, stapled by every block (and twice at a second run)."""
    example = tree.nginx.parent / "sites-enabled/example.conf"
    example.write_text(
        "".join(_server(name, tree.live.parent, port).replace("\n", " ") + "\n"
                for name, port in (("example.test", 8443), ("www.example.test", 8444)))
    )  # fmt: skip
    code, said = _init(tree, "--nginx-conf", str(tree.nginx), capsys=capsys)
    assert code == 0, said
    assert f"nginx: {example}:1 (server example.test): more follows the block's last" in said
    assert f"{example}, after line" not in said
