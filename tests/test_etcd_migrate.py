"""``state migrate`` between a state file and an etcd prefix, both ways; ``state
check`` and ``state show`` on etcd URLs; the plugin serving a migrated prefix."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from etcd_cluster import EtcdCluster
from plugin_proc import Plugin, console_script, spec

FIXTURE = Path(__file__).parent / "fixtures" / "c-plugin-state.json"


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([console_script(), *args], capture_output=True, text=True, timeout=60)


def test_migrate_file_to_etcd_to_file_keeps_everything_and_refuses_non_empty(tmp_path: Path) -> None:
    cluster = EtcdCluster(tmp_path).start()
    url = cluster.url("/mig/one")
    # A state of our own: provisions, labels, a destroy, one non-functional, one restored to the front.
    p = Plugin(tmp_path).start()
    with p.client() as c:
        ids = [c.call("Instance.Provision", {"Spec": spec(n=str(i))})["ID"] for i in range(30)]
        c.call("Instance.Label", {"Instance": ids[3], "Labels": {"x": "y"}})
        c.call("Instance.Destroy", {"Instance": ids[4]})
    assert p.stop() == 0
    doc = json.loads(Path(p.state).read_text())
    moved = doc["Instances"].pop(0)
    doc["NonFunctional"].append(doc["Instances"].pop(5))
    doc["Instances"].append(moved)
    doc["Provider"] = {"zone": "z1"}
    src = tmp_path / "src.json"
    src.write_text(json.dumps(doc))

    out = cli("state", "migrate", str(src), url)
    assert out.returncode == 0, out.stderr
    assert "28 instances, 1 non-functional" in out.stdout
    shown = cli("state", "show", url, "--properties")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout) == doc["Instances"]
    checked = cli("state", "check", url)
    assert checked.returncode == 0 and "instances: 28" in checked.stdout and "non-functional: 1" in checked.stdout
    nf = cli("state", "show", url, "--nonfunctional", "--properties")
    assert json.loads(nf.stdout) == doc["NonFunctional"]

    again = cli("state", "migrate", str(src), url)
    assert again.returncode == 1 and "not empty" in again.stderr

    back = tmp_path / "back.json"
    out = cli("state", "migrate", url, str(back))
    assert out.returncode == 0, out.stderr
    assert json.loads(back.read_text()) == doc
    refused = cli("state", "migrate", url, str(back))
    assert refused.returncode == 1 and "not empty" in refused.stderr

    # A plugin on the migrated prefix serves it in order, and appends after it.
    q = Plugin(tmp_path / "q" if (tmp_path / "q").mkdir() is None else tmp_path, "--store", url).start()
    with q.client() as c:
        new = c.call("Instance.Provision", {"Spec": spec()})["ID"]
        got = c.call("Instance.DescribeInstances", {"Properties": True})["Descriptions"]
    assert got[:-1] == doc["Instances"] and got[-1]["ID"] == new
    assert q.stop() == 0


def test_migrate_a_c_plugin_file_and_bad_urls(tmp_path: Path) -> None:
    cluster = EtcdCluster(tmp_path).start()
    url = cluster.url("/mig/c")
    out = cli("state", "migrate", str(FIXTURE), url)
    assert out.returncode == 0, out.stderr
    original = json.loads(FIXTURE.read_text())
    shown = json.loads(cli("state", "show", url).stdout)
    assert [d["ID"] for d in shown] == [i["ID"] for i in original["Instances"]]
    bad = cli("state", "show", "etcd://127.0.0.1:1")
    assert bad.returncode != 0 and "prefix" in bad.stderr
    assert cli("state", "migrate", str(tmp_path / "missing.json"), url).returncode == 2
