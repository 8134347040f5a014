"""An oslo.messaging NotificationListener following bora's notifications.

Listens on topic ``notifications`` of exchange ``bora`` and prints one JSON
line per notification; exits a second after a ``bora.workflow.end`` for
--workflow, or after --timeout seconds (exit 1). The second: ``info`` and
``error`` notifications come through two queues, so a task's ``info`` end
published before the workflow's ``error`` end may be consumed after it.
"""
import time
import argparse
import json
import sys
import threading

import oslo_messaging
from oslo_config import cfg

done = threading.Event()
# The threading executor calls endpoints from several threads at once, and
# print() writes the text and the newline separately: lines could interleave.
out = threading.Lock()


class Endpoint:
    def __init__(self, workflow):
        self.workflow = workflow

    def _emit(self, priority, publisher_id, event_type, payload):
        line = json.dumps({"priority": priority, "publisher_id": publisher_id,
                           "event_type": event_type, "payload": payload})
        with out:
            print(line, flush=True)
        if event_type == "bora.workflow.end" and payload.get("id") == self.workflow:
            done.set()

    def info(self, ctxt, publisher_id, event_type, payload, metadata):
        self._emit("info", publisher_id, event_type, payload)

    def error(self, ctxt, publisher_id, event_type, payload, metadata):
        self._emit("error", publisher_id, event_type, payload)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--workflow", required=True)
    p.add_argument("--timeout", type=float, default=60)
    a = p.parse_args()
    oslo_messaging.set_transport_defaults(control_exchange="bora")
    transport = oslo_messaging.get_notification_transport(cfg.CONF, url=a.url)
    targets = [oslo_messaging.Target(topic="notifications", exchange="bora")]
    listener = oslo_messaging.get_notification_listener(
        transport, targets, [Endpoint(a.workflow)], executor="threading")
    listener.start()
    print(json.dumps({"ready": True}), flush=True)
    ok = done.wait(a.timeout)
    if ok:
        time.sleep(1)
    listener.stop()
    listener.wait()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
