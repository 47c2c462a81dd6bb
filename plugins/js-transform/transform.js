// A Sluice transform plugin in JavaScript: rewrites a JSON object payload. Sets the fields in `set`,
// removes those in `remove`, optionally renames the event type (`event_type`) and adds `headers`.
//
// Config: { set = { version = 2 }, remove = ["internal"], event_type = "order.v2",
//           headers = { x-transformed = "yes" } } (all optional).
//
// A payload goes back as a `Uint8Array` (WIT `list<u8>`), never as a string: `TextEncoder` (from the
// prelude) turns the new JSON text into bytes.
import '../js-prelude/prelude.js';

export function handle(event, config) {
  const settings = JSON.parse(config);
  let payload;
  try {
    payload = JSON.parse(new TextDecoder().decode(event.payload));
  } catch (e) {
    throw `payload is not JSON: ${e}`;
  }
  if (payload === null || typeof payload !== 'object' || Array.isArray(payload)) {
    throw 'payload is not a JSON object';
  }
  Object.assign(payload, settings.set ?? {});
  for (const field of settings.remove ?? []) {
    delete payload[field];
  }
  if (typeof settings.event_type === 'string') {
    event.eventType = settings.event_type;
  }
  for (const [name, value] of Object.entries(settings.headers ?? {})) {
    event.headers.push([name.toLowerCase(), String(value)]);
  }
  event.payload = new TextEncoder().encode(JSON.stringify(payload));
  return { tag: 'pass', val: event };
}
