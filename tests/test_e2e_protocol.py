"""End to end: the real console script on a temporary socket, spoken to as InfraKit does."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from plugin_proc import Client, Plugin, provision_concurrently, spec, wait_for, wire, with_body


@pytest.fixture
def plugin(tmp_path: Path) -> Iterator[Plugin]:
    p = Plugin(tmp_path).start()
    yield p
    assert p.stop() == 0, p.output()


@pytest.fixture
def client(plugin: Plugin) -> Iterator[Client]:
    with plugin.client() as c:
        yield c


def replay(c: Client, name: str, body: bytes | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    request, reference = wire(name)
    if body is not None:
        request = with_body(request, body)
    c.send(request)
    status, _, answer = c.read_response()
    assert status == 200
    return json.loads(answer), json.loads(reference)


def swap_id(name: str, new_id: str) -> bytes:
    request, _ = wire(name)
    body = request.split(b"\r\n\r\n", 1)[1]
    doc = json.loads(body)
    doc["params"]["Instance"] = new_id
    return json.dumps(doc, separators=(",", ":")).encode()


# -- the captured Go clients --------------------------------------------------------


@pytest.mark.parametrize("era", ["new", "old"])
def test_wire_replay_full_lifecycle(client: Client, era: str) -> None:
    handshake = "new-Handshake.Hello" if era == "new" else "old-Plugin.Implements"
    got, ref = replay(client, handshake)
    assert got["id"] == ref["id"]
    if era == "new":
        assert got["result"]["Objects"]["Instance/0.6.1"] == ref["result"]["Objects"]["Instance/0.6.1"]
    else:
        assert {"Name": "Instance", "Version": "0.1.0"} in got["result"]["APIs"]

    got, ref = replay(client, f"{era}-Instance.Validate")
    assert got == ref

    got, ref = replay(client, f"{era}-Instance.Provision")
    assert got["id"] == ref["id"] and got["result"]["Type"] == ""
    new_id = got["result"]["ID"]
    assert isinstance(new_id, str) and new_id

    if era == "new":
        got, ref = replay(client, "new-Instance.Label", swap_id("new-Instance.Label", new_id))
        assert got == ref
        describe = ["new-Instance.DescribeInstances-notags-noprops", "new-Instance.DescribeInstances-tags-props"]
    else:
        describe = ["old-Instance.DescribeInstances-notags", "old-Instance.DescribeInstances-tags"]
    for name in describe:
        got, ref = replay(client, name)
        assert got["id"] == ref["id"]
        (mine,) = got["result"]["Descriptions"]
        (theirs,) = ref["result"]["Descriptions"]
        assert mine["ID"] == new_id
        theirs["ID"] = new_id
        assert mine == theirs
        assert got["result"]["Type"] == ref["result"]["Type"]

    got, ref = replay(client, f"{era}-Instance.Destroy", swap_id(f"{era}-Instance.Destroy", new_id))
    assert got == ref
    got, ref = replay(client, f"{era}-Instance.Destroy-unknown-error")
    assert got["id"] == ref["id"]
    assert got["error"]["code"] == ref["error"]["code"] == -32000
    assert "no-such-instance" in got["error"]["message"]
    assert client.call("Instance.DescribeInstances", {"Tags": None}) == {"Type": "", "Descriptions": []}


def test_wire_requests_split_into_single_bytes(client: Client) -> None:
    request, _ = wire("new-Instance.Provision")
    for i in range(len(request)):
        client.send(request[i : i + 1])
    status, headers, body = client.read_response()
    assert status == 200 and headers["content-type"] == "application/json"
    assert json.loads(body)["result"]["ID"].startswith("instance-")


def test_pipelined_requests_are_answered_in_order(client: Client) -> None:
    reqs = [
        wire(n)[0]
        for n in (
            "new-Instance.Provision",
            "new-Instance.Validate",
            "new-Instance.DescribeInstances-notags-noprops",
            "new-Handshake.Hello",
        )
    ]
    client.send(b"".join(reqs))
    answers = [json.loads(client.read_response()[2]) for _ in reqs]
    assert [a["id"] for a in answers] == [json.loads(r.split(b"\r\n\r\n")[1])["id"] for r in reqs]
    assert [d["ID"] for d in answers[2]["result"]["Descriptions"]] == [answers[0]["result"]["ID"]]


# -- handshakes -------------------------------------------------------------------


def test_every_handshake_generation(client: Client) -> None:
    versions = ["0.1.0", "0.3.0", "0.5.0", "0.6.0", "0.6.1"]
    for method in ("Plugin.Implements", "Handshake.Implements"):
        apis = client.call(method)["APIs"]
        assert [a["Version"] for a in apis if a["Name"] == "Instance"] == versions
    types = client.call("Handshake.Types")["Types"]
    assert "Instance/0.3.0" in types and types["Instance/0.3.0"] == []
    objects = client.call("Handshake.Hello")["Objects"]
    for v in versions:
        assert objects[f"Instance/{v}"] == [{"Name": ".", "ProxyFor": ""}]


# -- Instance semantics --------------------------------------------------------------


def test_provision_keeps_the_whole_spec_and_ids_are_unique(client: Client) -> None:
    s = spec(role="db")
    s["LogicalID"] = "db-1"
    s["Attachments"] = [{"ID": "vol-1", "Type": "disk"}]
    ids = set()
    for _ in range(3):
        # The C plugin built IDs from the request id: the same id three times must still give three instances.
        answer = client.call_raw("Instance.Provision", {"Type": "", "Spec": s}, id=7)
        ids.add(answer["result"]["ID"])
    assert len(ids) == 3
    descs = client.call("Instance.DescribeInstances", {"Tags": {"role": "db"}, "Properties": True})["Descriptions"]
    assert {d["ID"] for d in descs} == ids
    for d in descs:
        assert d["LogicalID"] == "db-1"
        assert d["Tags"] == s["Tags"]
        assert d["Properties"] == s
    brief = client.call("Instance.DescribeInstances", {"Tags": {"role": "db"}})["Descriptions"]
    assert all("Properties" not in d for d in brief)


def test_describe_filters_by_every_tag_and_keeps_array_order(client: Client) -> None:
    made = []
    for group, role in [("a", "x"), ("b", "x"), ("a", "y"), ("a", "x")]:
        made.append((client.call("Instance.Provision", {"Spec": spec(group, role=role)})["ID"], group, role))

    def ids(tags: Any) -> list[str]:
        return [d["ID"] for d in client.call("Instance.DescribeInstances", {"Tags": tags})["Descriptions"]]

    assert ids(None) == [m[0] for m in made]
    assert ids({}) == [m[0] for m in made]
    assert ids({"infrakit.group": "a"}) == [m[0] for m in made if m[1] == "a"]
    assert ids({"infrakit.group": "a", "role": "x"}) == [made[0][0], made[3][0]]
    assert ids({"infrakit.group": "a", "role": "z"}) == []
    assert ids({"nope": "a"}) == []
    # Labelling an early instance into a group keeps the array order in the answer.
    assert client.call("Instance.Label", {"Instance": made[1][0], "Labels": {"infrakit.group": "a"}}) == {
        "Type": "",
        "OK": True,
    }
    assert ids({"infrakit.group": "a"}) == [made[0][0], made[1][0], made[2][0], made[3][0]]


def test_label_adds_and_overwrites_tags_but_not_the_provisioned_spec(client: Client) -> None:
    s = spec()
    new_id = client.call("Instance.Provision", {"Spec": s})["ID"]
    client.call("Instance.Label", {"Type": "", "Instance": new_id, "Labels": {"infrakit.group": "moved", "extra": "1"}})
    (d,) = client.call("Instance.DescribeInstances", {"Tags": {"extra": "1"}, "Properties": True})["Descriptions"]
    assert d["Tags"] == {**s["Tags"], "infrakit.group": "moved", "extra": "1"}
    assert d["Properties"]["Tags"] == s["Tags"]
    assert client.call("Instance.DescribeInstances", {"Tags": {"infrakit.group": "workers"}})["Descriptions"] == []


def test_unknown_instance_errors_name_the_id(client: Client) -> None:
    for method, params in [
        ("Instance.Destroy", {"Instance": "ghost-1", "Context": {"Reason": "terminate"}}),
        ("Instance.Label", {"Instance": "ghost-1", "Labels": {"a": "b"}}),
    ]:
        err = client.error(method, params)
        assert err["code"] == -32000 and "ghost-1" in err["message"], err


def test_destroy_twice_fails_the_second_time(client: Client) -> None:
    new_id = client.call("Instance.Provision", {"Spec": spec()})["ID"]
    assert client.call("Instance.Destroy", {"Instance": new_id}) == {"Type": "", "OK": True}
    assert client.error("Instance.Destroy", {"Instance": new_id})["code"] == -32000


def test_unknown_type_is_a_plugin_error(client: Client) -> None:
    err = client.error("Instance.DescribeInstances", {"Type": "gpu", "Tags": None})
    assert err == {"code": -32000, "message": "no-plugin:gpu", "data": None}


# -- JSON-RPC envelope ------------------------------------------------------------------


@pytest.mark.parametrize("ident", [2**63 - 1, 2**64 + 12345, 9007199254740993, -5, 0, "req-7", "", None, 1.5])
def test_id_is_echoed_exactly(client: Client, ident: Any) -> None:
    body = (
        b'{"jsonrpc":"2.0","method":"Instance.Validate","params":{"Properties":{}},"id":'
        + json.dumps(ident).encode()
        + b"}"
    )
    client.post_bytes(body)
    _, _, answer = client.read_response()
    assert answer.endswith(b',"id":' + json.dumps(ident, separators=(",", ":")).encode() + b"}")
    assert json.loads(answer)["result"] == {"Type": "", "OK": True}


@pytest.mark.parametrize(
    "body, code, words",
    [
        (b'{"jsonrpc":"2.0","method":', -32700, "not valid JSON"),
        (b"", -32700, "not valid JSON"),
        (b'{"jsonrpc":"1.0","method":"Instance.Validate","id":1}', -32600, '"jsonrpc"'),
        (b'{"jsonrpc":"2.0","id":1}', -32600, '"method"'),
        (b'{"jsonrpc":"2.0","method":"Instance.Validate","id":{"a":1}}', -32600, "id must be"),
        (b"42", -32600, "request object"),
        (b"[]", -32600, "empty batch"),
        (b'{"jsonrpc":"2.0","method":"Instance.Nope","id":1}', -32601, "Instance.Nope"),
        (b'{"jsonrpc":"2.0","method":"Instance.Provision","params":{"Spec":3},"id":1}', -32602, '"Spec"'),
        (
            b'{"jsonrpc":"2.0","method":"Instance.Provision","params":{"Spec":{"Tags":{"a":1}}},"id":1}',
            -32602,
            "Spec.Tags",
        ),
        (b'{"jsonrpc":"2.0","method":"Instance.Destroy","params":{},"id":1}', -32602, '"Instance"'),
        (
            b'{"jsonrpc":"2.0","method":"Instance.DescribeInstances","params":{"Properties":"yes"},"id":1}',
            -32602,
            '"Properties"',
        ),
        (
            b'{"jsonrpc":"2.0","method":"Instance.Label","params":{"Instance":"x","Labels":[1]},"id":1}',
            -32602,
            "Labels",
        ),
        (b'{"jsonrpc":"2.0","method":"Instance.Validate","params":"x","id":1}', -32602, "params"),
    ],
)
def test_errors_have_the_right_code_and_say_what_was_wrong(client: Client, body: bytes, code: int, words: str) -> None:
    client.post_bytes(body)
    status, _, answer = client.read_response()
    doc = json.loads(answer)
    assert status == 200
    assert doc["error"]["code"] == code and words in doc["error"]["message"], doc
    assert doc["error"]["data"] is None
    assert client.call("Instance.Validate", {"Properties": {}}) == {"Type": "", "OK": True}


def test_params_as_one_element_array(client: Client) -> None:
    assert client.call("Instance.DescribeInstances", [{"Tags": None}]) == {"Type": "", "Descriptions": []}


def test_notification_gets_an_empty_answer_and_still_acts(client: Client) -> None:
    assert client.call_raw("Instance.Provision", {"Spec": spec("note")}, id=None) is None
    assert len(client.call("Instance.DescribeInstances", {"Tags": {"infrakit.group": "note"}})["Descriptions"]) == 1


def test_batch(client: Client) -> None:
    body = json.dumps(
        [
            {"jsonrpc": "2.0", "method": "Instance.Provision", "params": {"Spec": spec("batch")}, "id": "p"},
            {"jsonrpc": "2.0", "method": "Instance.Validate", "params": {}},
            {"jsonrpc": "2.0", "method": "No.Such", "id": 2},
            5,
            {
                "jsonrpc": "2.0",
                "method": "Instance.DescribeInstances",
                "params": {"Tags": {"infrakit.group": "batch"}},
                "id": 3,
            },
        ]
    ).encode()
    client.post_bytes(body)
    answers = json.loads(client.read_response()[2])
    assert [a["id"] for a in answers] == ["p", 2, None, 3]
    assert answers[0]["result"]["ID"].startswith("instance-")
    assert answers[1]["error"]["code"] == -32601
    assert answers[2]["error"]["code"] == -32600
    assert isinstance(answers[3]["result"]["Descriptions"], list)
    client.post_bytes(b'[{"jsonrpc":"2.0","method":"Instance.Validate","params":{}}]')
    assert client.read_response()[2] == b""


# -- HTTP ----------------------------------------------------------------------------------


def test_any_path_is_an_rpc_path(client: Client) -> None:
    for path in ("/", "/rpc", "http://h/", "/Instance.Validate"):
        client.post_bytes(b'{"jsonrpc":"2.0","method":"Instance.Validate","params":{},"id":1}', path=path)
        assert json.loads(client.read_response()[2])["result"]["OK"] is True


def test_non_post_is_405_and_wrong_content_type_is_415(client: Client) -> None:
    client.post_bytes(b"", method="GET")
    status, headers, _ = client.read_response()
    assert status == 405 and headers["allow"] == "POST"
    for ctype, expected in [
        ("text/plain", 415),
        ("application/json; charset=utf-8", 200),
        ("", 200),
        ("Application/JSON", 200),
    ]:
        client.post_bytes(
            b'{"jsonrpc":"2.0","method":"Instance.Validate","params":{},"id":1}', headers={"Content-Type": ctype}
        )
        assert client.read_response()[0] == expected, ctype


def test_chunked_body_and_expect_continue(client: Client) -> None:
    body = (
        b'{"jsonrpc":"2.0","method":"Instance.Provision","params":{"Spec":'
        + json.dumps(spec("chunky")).encode()
        + b'},"id":11}'
    )
    chunks = b"".join(
        b"%x;ext=1\r\n%s\r\n" % (len(body[i : i + 50]), body[i : i + 50]) for i in range(0, len(body), 50)
    )
    head = (
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n"
    )
    client.send(head)
    status, _, _ = client.read_response()
    assert status == 100
    client.send(chunks + b"0\r\nX-Trailer: t\r\n\r\n")
    status, _, answer = client.read_response()
    assert status == 200 and json.loads(answer)["id"] == 11
    # curl sends Expect for bodies over 1 KiB with a Content-Length.
    big = {"Properties": {"blob": "x" * 4000}}
    payload = json.dumps({"jsonrpc": "2.0", "method": "Instance.Validate", "params": big, "id": 12}).encode()
    client.send(
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Type: application/json\r\n"
        b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(payload)
    )
    assert client.read_response()[0] == 100
    client.send(payload)
    assert json.loads(client.read_response()[2])["id"] == 12


def test_info_documents(client: Client) -> None:
    client.post_bytes(b"", method="GET", path="/info/api.json")
    status, _, body = client.read_response()
    info = json.loads(body)
    assert status == 200
    assert {"Name": "Instance", "Version": "0.6.1"} in info["Implements"]
    methods = {m["Method"] for i in info["Interfaces"] for m in i["Methods"]}
    assert {
        "Instance.Provision",
        "Instance.Destroy",
        "Instance.DescribeInstances",
        "Instance.Label",
        "Instance.Validate",
    } <= methods
    assert info["Vendor"]["Name"] == "infrakit-instance"
    client.post_bytes(b"", method="GET", path="/info/functions.json")
    assert client.read_response()[2] == b"{}"


def test_body_over_the_limit_is_413(tmp_path: Path) -> None:
    p = Plugin(tmp_path, "--max-body", "1000").start()
    try:
        with p.client() as c:
            c.post_bytes(b"x" * 2000)
            status, _, body = c.read_response()
            assert status == 413 and b"1000" in body
        with p.client() as c:
            assert c.call("Instance.Validate") == {"Type": "", "OK": True}
    finally:
        assert p.stop() == 0


def test_idle_connection_is_closed_but_a_slow_client_does_not_block_others(tmp_path: Path) -> None:
    p = Plugin(tmp_path, "--idle-timeout", "0.5").start()
    try:
        slow = p.client()
        slow.send(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 500\r\n\r\n{")  # and then nothing
        with p.client() as fast:
            for _ in range(20):
                assert fast.call("Instance.Validate")["OK"] is True
        idle = p.client()
        idle.call("Instance.Validate")
        wait_for(idle.closed_by_peer, 10, "the idle connection to be closed")
        slow.close()
    finally:
        assert p.stop() == 0


def test_bad_http_gets_400_and_the_plugin_keeps_serving(client: Client, plugin: Plugin) -> None:
    for junk in (
        b"\x00\x01garbage\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
    ):
        with plugin.client() as bad:
            bad.send(junk)
            assert bad.read_response()[0] == 400
    assert client.call("Instance.Validate")["OK"] is True


# -- concurrency --------------------------------------------------------------------------


def test_eight_keep_alive_clients_provision_200_each(plugin: Plugin) -> None:
    results = provision_concurrently(plugin, 8, 200)
    made = [i for ids in results.values() for i in ids]
    assert len(made) == len(set(made)) == 1600
    with plugin.client() as c:
        described = [
            d["ID"] for d in c.call("Instance.DescribeInstances", {"Tags": {"infrakit.group": "conc"}})["Descriptions"]
        ]
        assert sorted(described) == sorted(made)
        for n, ids in results.items():
            # Each worker's instances appear in the order it provisioned them.
            mine = [d["ID"] for d in c.call("Instance.DescribeInstances", {"Tags": {"worker": str(n)}})["Descriptions"]]
            assert mine == ids
    state = plugin.state_doc()
    assert sorted(i["ID"] for i in state["Instances"]) == sorted(made)

    def destroyer(ids: list[str]) -> None:
        with plugin.client() as c:
            for i in sorted(ids):
                assert c.call("Instance.Destroy", {"Instance": i, "Context": {"Reason": "terminate"}})["OK"] is True

    threads = [threading.Thread(target=destroyer, args=(ids,)) for ids in results.values()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    with plugin.client() as c:
        assert c.call("Instance.DescribeInstances", {"Tags": None})["Descriptions"] == []
    assert plugin.state_doc()["Instances"] == []


# -- start-up, shutdown, files -----------------------------------------------------------------


def test_socket_mode_and_default_paths(tmp_path: Path) -> None:
    home = tmp_path / "ikhome"
    p = Plugin(tmp_path, env={"INFRAKIT_HOME": str(home)})
    p.socket = str(home / "plugins" / "instance-py")
    p.args = []
    p.cmdline = lambda: [__import__("plugin_proc").console_script()]  # type: ignore[method-assign]
    p.start()
    try:
        assert stat.S_IMODE(os.stat(p.socket).st_mode) == 0o600
        with p.client() as c:
            c.call("Instance.Provision", {"Spec": spec()})
        assert (
            json.loads((home / "state" / "instance-py.json").read_text())["Instances"][0]["Tags"]["infrakit.group"]
            == "workers"
        )
    finally:
        assert p.stop() == 0
    assert not os.path.exists(p.socket)


def test_options_from_the_environment(tmp_path: Path) -> None:
    plugins = tmp_path / "pl"
    p = Plugin(
        tmp_path,
        env={
            "INFRAKIT_PLUGINS_DIR": str(plugins),
            "INFRAKIT_INSTANCE_NAME": "envname",
            "INFRAKIT_INSTANCE_STATE": str(tmp_path / "env-state.json"),
        },
    )
    p.socket = str(plugins / "envname")
    p.cmdline = lambda: [__import__("plugin_proc").console_script()]  # type: ignore[method-assign]
    p.start()
    try:
        with p.client() as c:
            c.call("Instance.Provision", {"Spec": spec()})
        assert len(json.loads((tmp_path / "env-state.json").read_text())["Instances"]) == 1
    finally:
        assert p.stop() == 0


def test_a_live_socket_is_not_taken_over_and_a_stale_one_is(tmp_path: Path) -> None:
    first = Plugin(tmp_path).start()
    try:
        second = Plugin(tmp_path)
        second.state = str(tmp_path / "other.json")
        second.start(wait=False)
        assert second.proc is not None and second.proc.wait(20) != 0
        assert first.socket in second.output() and "already" in second.output()
        with first.client() as c:
            assert c.call("Instance.Validate")["OK"] is True
    finally:
        assert first.stop() == 0
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(first.socket)
    stale.close()  # a socket file nobody listens on, as a killed plugin leaves
    third = Plugin(tmp_path).start()
    with third.client() as c:
        assert c.call("Instance.Validate")["OK"] is True
    assert third.stop() == 0


def test_invalid_state_file_stops_start_up_and_is_not_touched(tmp_path: Path) -> None:
    p = Plugin(tmp_path)
    Path(p.state).write_text('{"Instances": [ {"ID": "a"}, ')
    before = Path(p.state).read_bytes()
    p.start(wait=False)
    assert p.proc is not None and p.proc.wait(20) != 0
    assert "not valid JSON" in p.output() and p.state in p.output()
    assert "Traceback" not in p.output()
    assert Path(p.state).read_bytes() == before


def test_state_written_by_the_c_plugin_loads(tmp_path: Path) -> None:
    fixture = Path(__file__).parent / "fixtures" / "c-plugin-state.json"
    p = Plugin(tmp_path)
    Path(p.state).write_bytes(fixture.read_bytes())
    p.start()
    try:
        original = json.loads(fixture.read_text())
        with p.client() as c:
            descs = c.call("Instance.DescribeInstances", {"Tags": None})["Descriptions"]
            assert descs == original["Instances"]
            group = original["Instances"][0]["Tags"]["infrakit.group"]
            sel = c.call("Instance.DescribeInstances", {"Tags": {"infrakit.group": group}})["Descriptions"]
            assert sel == [d for d in original["Instances"] if d["Tags"]["infrakit.group"] == group]
            new_id = c.call("Instance.Provision", {"Spec": spec(group)})["ID"]
            c.call("Instance.Destroy", {"Instance": original["Instances"][0]["ID"]})
        doc = p.state_doc()
        assert [i["ID"] for i in doc["Instances"]] == [i["ID"] for i in original["Instances"][1:]] + [new_id]
        assert doc["Provider"] == original["Provider"] and doc["NonFunctional"] == original["NonFunctional"]
    finally:
        assert p.stop() == 0


def test_sigterm_finishes_in_flight_requests_and_removes_the_socket(tmp_path: Path) -> None:
    p = Plugin(tmp_path).start()
    c = p.client()
    request, _ = wire("new-Instance.Provision")
    c.send(request)
    code = p.stop()
    status, _, body = c.read_response()
    assert status == 200 and json.loads(body)["result"]["ID"]
    assert code == 0
    assert not os.path.exists(p.socket)
    assert len(p.state_doc()["Instances"]) == 1


def test_requests_sent_before_sigterm_but_not_yet_read_are_answered(tmp_path: Path) -> None:
    """The plugin is stopped (SIGSTOP) while clients connect and send, so their connections
    wait in the listening socket's backlog, and their requests unread, when SIGTERM
    arrives: each is still accepted and answered, and its change kept."""
    p = Plugin(tmp_path).start()
    assert p.proc is not None
    idle = p.client()  # accepted before: its request waits unread in its socket
    idle.send(wire("new-Instance.Validate")[0])
    assert idle.read_response()[0] == 200
    request, _ = wire("new-Instance.Provision")
    p.proc.send_signal(signal.SIGSTOP)
    try:
        clients = [idle] + [p.client() for _ in range(3)]  # the kernel completes these connects
        for c in clients:
            c.send(request)
        p.proc.send_signal(signal.SIGTERM)
    finally:
        p.proc.send_signal(signal.SIGCONT)
    for c in clients:
        status, _, body = c.read_response()
        assert status == 200 and json.loads(body)["result"]["ID"]
    assert p.stop() == 0
    assert len(p.state_doc()["Instances"]) == 4


def test_tcp_listen_writes_and_removes_the_discovery_file(tmp_path: Path) -> None:
    plugins = tmp_path / "plugins"
    p = Plugin(tmp_path, "--listen", "tcp://127.0.0.1:0", env={"INFRAKIT_PLUGINS_DIR": str(plugins)})
    p.start(wait=False)
    listen = plugins / "instance-py.listen"
    address = wait_for(lambda: listen.exists() and listen.read_text(), 20, "the .listen file")
    assert address.startswith("tcp://127.0.0.1:")
    port = int(address.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        # Over TCP, Go's client names the address it dials in Host.
        s.sendall(wire("new-Handshake.Hello")[0].replace(b"Host: h\r\n", b"Host: 127.0.0.1:%d\r\n" % port))
        data = b""
        while not data.endswith(b"}"):
            data += s.recv(4096)
        assert b"Instance/0.6.1" in data
    assert p.stop() == 0
    assert not listen.exists()


def test_version_and_module_entry_point(tmp_path: Path) -> None:
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "infrakit_instance", "version"], capture_output=True, text=True, check=True
    ).stdout
    assert "implementation: " in out and "uvloop: " in out and "orjson: " in out
    helptext = subprocess.run(
        [sys.executable, "-m", "infrakit_instance", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for option in ("--name", "--log", "--state", "--listen", "--fsync"):
        assert option in helptext


def test_big_describe_answers_arrive_whole(client: Client) -> None:
    # Answers over 64 KiB are written as separate buffers, never joined: the bytes must still add up.
    s = spec("big")
    s["Properties"] = {"blob": "x" * 2000}
    made = [client.call("Instance.Provision", {"Spec": s})["ID"] for _ in range(60)]
    for _ in range(2):  # the second answer comes from the cache
        client.post_bytes(
            b'{"jsonrpc":"2.0","method":"Instance.DescribeInstances","params":{"Tags":{"infrakit.group":"big"},"Properties":true},"id":"d"}'
        )
        status, headers, body = client.read_response()
        assert status == 200 and int(headers["content-length"]) == len(body) > 64 * 1024
        answer = json.loads(body)
        assert answer["id"] == "d" and [d["ID"] for d in answer["result"]["Descriptions"]] == made
        assert answer["result"]["Descriptions"][0]["Properties"] == s
    # A batch holding a big answer is joined into one body.
    client.post_bytes(
        json.dumps(
            [{"jsonrpc": "2.0", "method": "Instance.DescribeInstances", "params": {"Properties": True}, "id": 1}]
        ).encode()
    )
    assert len(json.loads(client.read_response()[2])[0]["result"]["Descriptions"]) == 60
