"""A stock oslo.messaging RPC server acting as a bora worker.

Configured exactly as bora's README documents for oslo peers: control
exchange ``bora``, ``Target(topic="bora_tasks", server=<server id>)``, durable
queues (``amqp_durable_queues=true`` in the transport URL). Its endpoint's
``run_task(ctxt, task)`` answers with Heat's ``deploy_*`` dict, or raises.
Prints READY once it consumes.
"""
import argparse
import sys
import time

import oslo_messaging
from oslo_config import cfg


class Endpoint:
    def __init__(self, server):
        self.server = server

    def run_task(self, ctxt, task):
        if task.get("config") == "raise":
            raise ValueError("boom from oslo")
        if task.get("config", "").startswith("sleep "):
            time.sleep(float(task["config"].split()[1]))
        inputs = task.get("inputs") or {}
        return {
            "deploy_stdout": "ran %s on %s\n" % (task["name"], self.server),
            "deploy_stderr": "",
            "deploy_status_code": 0,
            "echo": inputs.get("MESSAGE", ""),
        }


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--server", required=True)
    a = p.parse_args()
    oslo_messaging.set_transport_defaults(control_exchange="bora")
    transport = oslo_messaging.get_rpc_transport(cfg.CONF, url=a.url)
    target = oslo_messaging.Target(topic="bora_tasks", server=a.server)
    server = oslo_messaging.get_rpc_server(
        transport, target, [Endpoint(a.server)], executor="threading")
    server.start()
    print("READY", flush=True)
    try:
        while True:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
        server.wait()


if __name__ == "__main__":
    sys.exit(main())
