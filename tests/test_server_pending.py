"""Durable answers on one connection: the changes of one store batch are answered together
(one callback per batch and connection), each in its own slot, in request order, with its own id."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import impls
from plugin_proc import Plugin, spec


def body(method: str, params: object, ident: bytes | None) -> bytes:
    text = '{"jsonrpc":"2.0","method":' + json.dumps(method) + ',"params":' + json.dumps(params)
    return (text + ("" if ident is None else ',"id":' + ident.decode()) + "}").encode()


@pytest.mark.parametrize("impl", impls.impl_params())
@pytest.mark.parametrize("fsync", ["always", "never"])
def test_pipelined_changes_answer_each_slot_in_order(tmp_path: Path, impl: str, fsync: str) -> None:
    env = {"INFRAKIT_INSTANCE_NO_EXTENSIONS": "1"} if impl == "pure" else {"INFRAKIT_INSTANCE_REQUIRE_EXTENSIONS": "1"}
    args = ("--fsync", "never") if fsync == "never" else ()
    p = Plugin(tmp_path, *args, env=env).start()
    with p.client() as c:
        first = c.call("Instance.Provision", {"Type": "", "Spec": spec()})["ID"]
        # Ids of every kind, a notification (no answer), a failing change and a validate among them;
        # all sent in one write, so that the changes land in the same store batch.
        ids = [b"1", b'"two"', b'"thr\\u0065e"', b"4.50", b"-0", b"null", b"7", b"8"]
        reqs = [
            body("Instance.Provision", {"Type": "", "Spec": spec("g1")}, ids[0]),
            body("Instance.Label", {"Type": "", "Instance": first, "Labels": {"k": "v"}}, ids[1]),
            body("Instance.Provision", {"Type": "", "Spec": spec("g2")}, ids[2]),
            body("Instance.Provision", {"Type": "", "Spec": spec("g3")}, None),  # a notification
            body("Instance.Destroy", {"Type": "", "Instance": "instance-nope"}, ids[3]),
            body("Instance.Validate", {"Type": "", "Properties": {}}, ids[4]),
            body("Instance.Provision", {"Type": "", "Spec": spec("g4")}, ids[5]),
            body("Instance.Destroy", {"Type": "", "Instance": first}, ids[6]),
            body("Instance.Provision", {"Type": "", "Spec": spec("g5")}, ids[7]),
        ]
        out = b""
        for b in reqs:
            out += (
                b"POST / HTTP/1.1\r\nHost: h\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(b)
                + b
            )
        c.send(out)
        answers = []
        for _ in range(len(reqs)):
            status, _, payload = c.read_response()
            assert status == 200
            answers.append(payload)
        # The notification's answer is an empty body, in its place.
        assert answers[3] == b""
        got = [a for i, a in enumerate(answers) if i != 3]
        for ident, answer in zip(ids, got, strict=True):
            assert answer.endswith(b',"id":' + ident + b"}"), (ident, answer)
        docs = [json.loads(a) for a in got]
        assert docs[0]["result"]["ID"].startswith("instance-")
        assert docs[1]["result"] == {"Type": "", "OK": True}
        assert docs[2]["result"]["ID"].startswith("instance-")
        assert docs[3]["error"]["code"] == -32000 and "no such instance" in docs[3]["error"]["message"]
        assert docs[4]["result"] == {"Type": "", "OK": True}
        assert docs[5]["result"]["ID"].startswith("instance-")
        assert docs[6]["result"] == {"Type": "", "OK": True}
        assert docs[7]["result"]["ID"].startswith("instance-")
        described = c.call("Instance.DescribeInstances", {"Type": "", "Tags": {}})
    made = {docs[i]["result"]["ID"] for i in (0, 2, 5, 7)}
    listed = {d["ID"] for d in described["Descriptions"]}
    assert made <= listed and first not in listed
    assert len(listed) == 5  # the four answered provisions and the notification's
    assert p.stop() == 0
    assert {e["ID"] for e in p.state_doc()["Instances"]} == listed
