"""{{name}}: a Sluice plugin in Python (built with componentize-py).

Drops events whose type starts with `drop_prefix` (config, default "test.") and passes the others on,
adding an `x-processed-by: {{name}}` header. Edit `handle` to make it yours.

`raise Err("message")` fails the event (HTTP 422 with the message); any other exception fails it
too, with its traceback's last line. `print()` lands in the gateway's log.
"""

import json

import wit_world
from componentize_py_types import Err
from wit_world.imports import host, types


class WitWorld(wit_world.WitWorld):
    def handle(self, event: types.Event, config: str) -> types.Verdict:
        settings = json.loads(config)
        prefix = settings.get("drop_prefix", "test.")
        if not isinstance(prefix, str):
            raise Err(f"config `drop_prefix` must be a string, not {json.dumps(prefix)}")
        if event.event_type.startswith(prefix):
            host.log(host.Level.DEBUG, f"dropping {event.event_type}")
            return types.Verdict_Drop(f"type {event.event_type} starts with {prefix}")
        event.headers.append(("x-processed-by", "{{name}}"))
        return types.Verdict_Pass(event)
