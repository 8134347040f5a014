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


def wait_for(check, what, timeout=30):
    deadline = time.time() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.time() < deadline, what
        time.sleep(0.2)


def operate(client, ctxt, worker):
    """Operating a run (SPEC 7.3) over RPC: pause and resume around an
    approval gate approved while paused, a rejected gate, and the 409s."""
    wf = client.call(ctxt, "create_workflow", name="operate-over-rpc", tasks=[
        {"name": "first", "server_id": worker, "group": "std.noop"},
        {"name": "gate", "group": "bora.approval", "depends_on": ["first"]},
        {"name": "after", "server_id": worker, "group": "std.echo",
         "inputs": {"k": "v"}, "depends_on": ["gate"]}])
    wf_id = wf["id"]
    gate = [t for t in wf["tasks"] if t["name"] == "gate"][0]
    assert gate["server_id"] is None, gate

    def task(name):
        return client.call(ctxt, "get_task", workflow_id=wf_id, task=name)

    wait_for(lambda: task("gate")["state"] == "running", "the gate never opened")
    paused = client.call(ctxt, "pause_workflow", workflow_id=wf_id)
    assert paused["paused"] is True and paused["state"] == "running", paused
    paused_twice = expect_remote_error(
        lambda: client.call(ctxt, "pause_workflow", workflow_id=wf_id),
        "Conflict", "is paused already")

    approved = client.call(ctxt, "approve_task", workflow_id=wf_id, task="gate",
                           comment="approved from heat")
    assert approved["state"] == "succeeded", approved
    decision = approved["result"]["decision"]
    assert decision["decision"] == "approved", approved
    assert decision["comment"] == "approved from heat", approved
    # Ready, and held by the pause: nothing is published until the resume.
    after = task("after")
    assert after["state"] == "waiting", after
    assert after["blocked_by"] == ["workflow paused"], after
    assert after["attempt"] == 0, after

    resumed = client.call(ctxt, "resume_workflow", workflow_id=wf_id)
    assert resumed["paused"] is False, resumed
    done = wait_for(
        lambda: (lambda w: w if w["state"] in ("succeeded", "failed") else None)(
            client.call(ctxt, "get_workflow", workflow_id=wf_id)),
        "the workflow never ended")
    assert done["state"] == "succeeded", done
    assert task("after")["result"]["outputs"] == {"k": "v"}

    not_pending = expect_remote_error(
        lambda: client.call(ctxt, "approve_task", workflow_id=wf_id, task="gate"),
        "Conflict", "does not wait for a decision")
    not_paused = expect_remote_error(
        lambda: client.call(ctxt, "resume_workflow", workflow_id=wf_id),
        "Conflict", "is not paused")
    not_ended = expect_remote_error(
        lambda: client.call(ctxt, "rerun_task", workflow_id=wf_id, task="after"),
        "Conflict", "succeeded")
    attempts = client.call(ctxt, "list_attempts", workflow_id=wf_id, task="gate")
    assert attempts["current_attempt"] == 1, attempts
    assert [a["state"] for a in attempts["attempts"]] == ["succeeded"], attempts
    assert attempts["attempts"][0]["result"]["decision"]["comment"] == \
        "approved from heat", attempts

    # A rejected gate fails, and the task after it is skipped.
    wf2 = client.call(ctxt, "create_workflow", name="reject-over-rpc", tasks=[
        {"name": "gate", "group": "bora.approval"},
        {"name": "never", "server_id": worker, "group": "std.noop",
         "depends_on": ["gate"]}])
    rejected = client.call(ctxt, "reject_task", workflow_id=wf2["id"], task="gate",
                           comment="not today")
    assert rejected["state"] == "failed", rejected
    assert rejected["result"]["decision"]["decision"] == "rejected", rejected
    assert rejected["result"]["error"] == "rejected: not today", rejected
    w2 = client.call(ctxt, "get_workflow", workflow_id=wf2["id"])
    assert w2["state"] == "failed", w2
    assert w2["task_counts"]["skipped"] == 1, w2

    return {"workflow": wf_id, "rejected_workflow": wf2["id"],
            "paused": paused["paused"], "resumed": resumed["paused"],
            "decision": decision, "held": after,
            "conflicts": {"paused_twice": paused_twice, "not_pending": not_pending,
                          "not_paused": not_paused, "succeeded": not_ended}}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--server", default=None)
    p.add_argument("--operate", metavar="WORKER", default=None,
                   help="run the operating scenario (SPEC 7.3) with tasks on WORKER")
    a = p.parse_args()
    oslo_messaging.set_transport_defaults(control_exchange="bora")
    transport = oslo_messaging.get_rpc_transport(cfg.CONF, url=a.url)
    target = oslo_messaging.Target(topic="bora_api", server=a.server)
    client = oslo_messaging.get_rpc_client(transport, target, timeout=30)
    ctxt = {}
    if a.operate:
        print(json.dumps(operate(client, ctxt, a.operate)), flush=True)
        transport.cleanup()
        return

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

    # minimal=True leaves the created tasks out of the answer (REST's
    # Prefer: return=minimal); they are created all the same.
    small = client.call(ctxt, "create_workflow", name="minimal-over-rpc", minimal=True,
                        tasks=[{"name": "m", "server_id": "oslo-client-x",
                                "group": "std.noop"}])
    assert "tasks" not in small, small
    assert sum(small["task_counts"].values()) == 1, small
    listed = client.call(ctxt, "list_tasks", workflow_id=small["id"])
    assert [t["name"] for t in listed["tasks"]] == ["m"], listed
    expect_remote_error(
        lambda: client.call(ctxt, "create_workflow", name="x", minimal="yes"),
        "ValidationError", "minimal")

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
