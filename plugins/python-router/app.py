"""A Sluice routing plugin in Python: picks endpoints by the value of one payload field.

Config: {"field": "region", "table": {"eu": ["a", "b"]}, "default": ["a"]}. Each delivery carries an
`x-routed-by: python` header. With no match and no default, the event is dropped (and `print` says
so: the gateway logs it with the plugin's name and the event id). Errors are raised as
`componentize_py_types.Err("message")`, which fails the event with HTTP 422; any other exception
fails it too, and the 422 carries the traceback's last line.
"""

import json

import wit_world
from componentize_py_types import Err
from wit_world.imports import host, types


class WitWorld(wit_world.WitWorld):
    def handle(self, event: types.Event, config: str) -> types.Verdict:
        settings = json.loads(config)
        field = settings.get("field")
        if not isinstance(field, str):
            raise Err("config needs a string `field`")
        try:
            payload = json.loads(event.payload)
        except ValueError as error:
            raise Err(f"payload is not JSON: {error}")
        value = payload.get(field) if isinstance(payload, dict) else None
        key = value if isinstance(value, str) else json.dumps(value)
        targets = settings.get("table", {}).get(key) or settings.get("default") or []
        if not targets:
            print(f"python-router drops {event.event_type}: nothing routes {field}={key}")
            return types.Verdict_Drop(f"no route for {field}={key}")
        host.log(host.Level.DEBUG, f"{field}={key} routes to {len(targets)} endpoints")
        return types.Verdict_Route(
            [types.Delivery(endpoint=name, payload=None, headers=[("x-routed-by", "python")]) for name in targets]
        )
