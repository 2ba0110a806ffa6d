"""TLS and authentication to a real etcd: the plugin with --etcd-cacert/--etcd-cert/
--etcd-key, and with --etcd-user and the password from a file or the environment."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest

from etcd_cluster import EtcdCluster
from plugin_proc import Plugin, spec


def _certs(d: Path) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make the test certificates")

    def ssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True, timeout=60)

    ssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test-ca",
        "-keyout", "ca.key", "-out", "ca.pem")  # fmt: skip
    (d / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n")
    for name in ("server", "client"):
        ssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", f"{name}.key",
            "-out", f"{name}.csr")  # fmt: skip
        ssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "2", "-extfile", "ext.cnf", "-out", f"{name}.pem")  # fmt: skip


def test_tls_with_client_certificates(tmp_path: Path) -> None:
    _certs(tmp_path)
    cluster = EtcdCluster(
        tmp_path,
        scheme="https",
        extra=[
            f"--cert-file={tmp_path / 'server.pem'}",
            f"--key-file={tmp_path / 'server.key'}",
            f"--trusted-ca-file={tmp_path / 'ca.pem'}",
            "--client-cert-auth",
        ],
    ).start()
    args = ["--store", cluster.url("/tls"), "--etcd-cacert", str(tmp_path / "ca.pem")]
    args += ["--etcd-cert", str(tmp_path / "client.pem"), "--etcd-key", str(tmp_path / "client.key")]
    p = Plugin(tmp_path, *args).start()
    with p.client() as c:
        made = c.call("Instance.Provision", {"Spec": spec()})["ID"]
        assert [d["ID"] for d in c.call("Instance.DescribeInstances", {})["Descriptions"]] == [made]
    assert p.stop() == 0


def test_user_and_password_from_a_file_or_the_environment(tmp_path: Path) -> None:
    cluster = EtcdCluster(tmp_path, extra=["--auth-token-ttl=1"]).start()
    cluster.etcdctl("user", "add", "root:s3cret")
    cluster.etcdctl("auth", "enable")
    url = cluster.url("/auth")
    (tmp_path / "pw").write_text("s3cret\n")
    (tmp_path / "a").mkdir()
    p = Plugin(tmp_path / "a", "--store", url, "--etcd-user", "root", "--etcd-password-file", str(tmp_path / "pw"))
    p.start()
    with p.client() as c:
        made = c.call("Instance.Provision", {"Spec": spec()})["ID"]
        time.sleep(2.5)  # not a synchronisation: let the token's 1 s time to live run out unused
        again = c.call("Instance.Provision", {"Spec": spec()})["ID"]  # logs in again by itself
        c.call("Instance.Destroy", {"Instance": again})
    assert p.stop() == 0
    (tmp_path / "b").mkdir()
    q = Plugin(tmp_path / "b", "--store", url, "--etcd-user", "root", env={"INFRAKIT_INSTANCE_ETCD_PASSWORD": "s3cret"})
    q.start()
    with q.client() as c:
        assert [d["ID"] for d in c.call("Instance.DescribeInstances", {})["Descriptions"]] == [made]
    assert q.stop() == 0
    (tmp_path / "c").mkdir()
    bad = Plugin(tmp_path / "c", "--store", url, "--etcd-user", "root")
    bad.start(wait=False)
    assert bad.proc is not None and bad.proc.wait(30) == 2
    assert "--etcd-user needs a password" in bad.output()
