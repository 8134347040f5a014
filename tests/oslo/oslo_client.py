"""An oslo.messaging RPC client driving bora's RPC API (topic bora_api).

Checks results and errors itself and exits non-zero on any mismatch; prints
one JSON line with what it saw for the Rust test to check again.
"""
import argparse
import json
import sys
import time

import oslo_messaging
from oslo_config import cfg


def expect_remote_error(fn, exc_type, fragment):
    try:
        fn()
    except oslo_messaging.RemoteError as e:
        assert e.exc_type == exc_type, (e.exc_type, e.value)
        assert fragment in e.value, (fragment, e.value)
        return e.value
    raise AssertionError("no %s raised" % exc_type)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--server", default=None)
    a = p.parse_args()
    oslo_messaging.set_transport_defaults(control_exchange="bora")
    transport = oslo_messaging.get_rpc_transport(cfg.CONF, url=a.url)
    target = oslo_messaging.Target(topic="bora_api", server=a.server)
    client = oslo_messaging.get_rpc_client(transport, target, timeout=30)
    ctxt = {}

    wf = client.call(ctxt, "create_workflow", name="from-oslo", description="heat",
                     tasks=[{"name": "first", "server_id": "oslo-client-x",
                             "group": "std.noop"}])
    assert wf["name"] == "from-oslo", wf
    assert wf["tasks"][0]["name"] == "first", wf
    wf_id = wf["id"]
    task = client.call(ctxt, "add_task", workflow_id=wf_id,
                       task={"name": "second", "server_id": "oslo-client-x",
                             "depends_on": ["first"], "group": "std.echo",
                             "inputs": {"k": "v"}})
    # "first" may have run already (a worker serves oslo-client-x).
    assert task["depends_on"] == ["first"], task
    assert task["blocked_by"] in (["first"], []), task
    got = client.call(ctxt, "get_task", workflow_id=wf_id, task="second")
    assert got["id"] == task["id"], got
    listed = client.call(ctxt, "list_tasks", workflow_id=wf_id)
    assert [t["name"] for t in listed["tasks"]] == ["first", "second"], listed

    # Wait for the bora worker of oslo-client-x to run both.
    deadline = time.time() + 30
    while True:
        w = client.call(ctxt, "get_workflow", workflow_id=wf_id)
        if w["state"] == "succeeded":
            break
        assert time.time() < deadline, w
        time.sleep(0.2)
    second = client.call(ctxt, "get_task", workflow_id=wf_id, task="second")
    assert second["result"]["outputs"] == {"k": "v"}, second

    # An input reference (SPEC 7.1) in the same task body: the reference
    # alone orders the two, and the consumer gets the producer's output.
    wf3 = client.call(ctxt, "create_workflow", name="refs-over-rpc", tasks=[
        {"name": "use", "server_id": "oslo-client-x", "group": "std.echo",
         "inputs": {"DB_URL": {"get_output": ["make", "url"]}}},
        {"name": "make", "server_id": "oslo-client-x", "group": "std.echo",
         "inputs": {"url": "pg://from-rpc"}, "outputs": ["url"]}])
    use = [t for t in wf3["tasks"] if t["name"] == "use"][0]
    assert use["depends_on"] == ["make"], use
    deadline = time.time() + 30
    while client.call(ctxt, "get_workflow", workflow_id=wf3["id"])["state"] != "succeeded":
        assert time.time() < deadline
        time.sleep(0.2)
    use = client.call(ctxt, "get_task", workflow_id=wf3["id"], task="use")
    assert use["result"]["outputs"] == {"DB_URL": "pg://from-rpc"}, use
    assert use["resolved_inputs"]["DB_URL"]["from"]["task"] == "make", use

    # Errors raised by bora's API reach the client with class and message.
    nf = expect_remote_error(
        lambda: client.call(ctxt, "get_workflow",
                            workflow_id="6b3a3c9e-0000-7000-8000-000000000000"),
        "NotFound", "not found")
    bad = expect_remote_error(
        lambda: client.call(ctxt, "add_task", workflow_id=wf_id,
                            task={"server_id": "bad id!"}),
        "ValidationError", "server_id")
    cyc = expect_remote_error(
        lambda: client.call(ctxt, "add_task", workflow_id=wf_id,
                            task={"name": "x", "server_id": "s", "depends_on": ["ghost"]}),
        "ValidationError", "ghost")
    expect_remote_error(
        lambda: client.call(ctxt, "add_task", workflow_id=wf_id,
                            task={"name": "y", "server_id": "s",
                                  "inputs": {"X": {"get_output": ["first", "nope"]}}}),
        "ValidationError", "nope")
    dup = expect_remote_error(
        lambda: client.call(ctxt, "add_task", workflow_id=wf_id,
                            task={"name": "first", "server_id": "s"}),
        "Conflict", "first")
    try:
        client.call(ctxt, "drop_database")
        raise AssertionError("unknown method accepted")
    except oslo_messaging.NoSuchMethod:
        pass
    except oslo_messaging.RemoteError as e:
        assert e.exc_type == "NoSuchMethod", e.exc_type

    # A cast is accepted too (no reply): cancel a second workflow that way.
    wf2 = client.call(ctxt, "create_workflow", name="cast-me")
    client.cast(ctxt, "cancel_workflow", workflow_id=wf2["id"])
    deadline = time.time() + 10
    while client.call(ctxt, "get_workflow", workflow_id=wf2["id"])["state"] != "cancelled":
        assert time.time() < deadline
        time.sleep(0.1)

    print(json.dumps({"workflow": wf_id, "not_found": nf, "invalid": bad,
                      "unknown_dependency": cyc, "conflict": dup}), flush=True)
    transport.cleanup()


if __name__ == "__main__":
    sys.exit(main())
