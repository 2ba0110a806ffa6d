"""The protocol suite against the etcd store: the same end-to-end tests, the
plugin started with ``--store etcd://...`` on a real etcd member."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from etcd_cluster import EtcdCluster
from plugin_proc import Plugin, provision_concurrently, spec
from test_e2e_protocol import (  # noqa: F401 - collected here against the etcd store
    client,
    test_batch,
    test_big_describe_answers_arrive_whole,
    test_describe_filters_by_every_tag_and_keeps_array_order,
    test_destroy_twice_fails_the_second_time,
    test_errors_have_the_right_code_and_say_what_was_wrong,
    test_every_handshake_generation,
    test_id_is_echoed_exactly,
    test_label_adds_and_overwrites_tags_but_not_the_provisioned_spec,
    test_notification_gets_an_empty_answer_and_still_acts,
    test_params_as_one_element_array,
    test_pipelined_requests_are_answered_in_order,
    test_provision_keeps_the_whole_spec_and_ids_are_unique,
    test_unknown_instance_errors_name_the_id,
    test_unknown_type_is_a_plugin_error,
    test_wire_replay_full_lifecycle,
    test_wire_requests_split_into_single_bytes,
)

_prefixes = itertools.count()


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    cluster = EtcdCluster(tmp_path_factory.mktemp("etcd"), long_lived=True).start()
    yield cluster
    cluster.stop()


@pytest.fixture
def plugin(tmp_path: Path, etcd: EtcdCluster) -> Iterator[Plugin]:
    p = Plugin(tmp_path, "--store", etcd.url(f"/proto/{next(_prefixes)}")).start()
    yield p
    assert p.stop() == 0, p.output()
    assert not Path(p.state).exists()  # the state file is not used


def test_eight_keep_alive_clients_provision_and_destroy_what_etcd_then_holds(plugin: Plugin, etcd: EtcdCluster) -> None:
    results = provision_concurrently(plugin, 8, 100)
    made = [i for ids in results.values() for i in ids]
    assert len(made) == len(set(made)) == 800
    prefix = plugin.args[1].split("/", 3)[3]
    held = etcd.etcdctl("get", "--prefix", "--keys-only", f"/{prefix}/state/i/").split()
    assert sorted(k.rsplit("/", 1)[1] for k in held) == sorted(made)
    with plugin.client() as c:
        for n, ids in results.items():
            # Each worker's instances appear in the order it provisioned them.
            mine = [d["ID"] for d in c.call("Instance.DescribeInstances", {"Tags": {"worker": str(n)}})["Descriptions"]]
            assert mine == ids
        for i in made[::2]:
            assert c.call("Instance.Destroy", {"Instance": i})["OK"] is True
    value = json.loads(etcd.etcdctl("get", "--print-value-only", f"/{prefix}/state/i/{made[1]}"))
    assert value["ID"] == made[1] and value["Properties"]["Init"] == "#!/bin/sh\necho hello\n"
    held = etcd.etcdctl("get", "--prefix", "--keys-only", f"/{prefix}/state/i/").split()
    assert sorted(k.rsplit("/", 1)[1] for k in held) == sorted(made[1::2])


def test_two_replicas_with_consistent_reads_see_each_others_acknowledged_changes(
    tmp_path: Path, etcd: EtcdCluster
) -> None:
    url = etcd.url(f"/proto/{next(_prefixes)}")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = Plugin(tmp_path / "a", "--store", url, "--consistent-reads").start()
    b = Plugin(tmp_path / "b", "--store", url, "--consistent-reads").start()
    with a.client() as ca, b.client() as cb:
        for i in range(30):
            writer, reader = (ca, cb) if i % 2 else (cb, ca)
            made = writer.call("Instance.Provision", {"Spec": spec(n=str(i))})["ID"]
            # Acknowledged on one replica: the very next Describe on the other has it.
            seen = reader.call("Instance.DescribeInstances", {"Tags": {"n": str(i)}})["Descriptions"]
            assert [d["ID"] for d in seen] == [made]
        assert ca.call("Instance.DescribeInstances", {"Properties": True}) == cb.call(
            "Instance.DescribeInstances", {"Properties": True}
        )
    assert a.stop() == 0 and b.stop() == 0
