// A Sluice filter plugin in JavaScript: drops events whose type matches one of `drop_types` (`*`
// wildcards) or whose JSON payload lacks a field listed in `require_fields`; passes the rest, adding
// an `x-filtered-by: js` header. It says why it drops an event with `console.log`.
//
// WIT mapping: records are objects with camelCase fields, variants are `{ tag, val }`, and
// `result<verdict, string>` is "return the verdict" or "throw a string" (any other exception fails
// the event too, with its message). `prelude.js` gives QuickJS `console` and `TextDecoder`.
import '../js-prelude/prelude.js';

function glob(pattern, text) {
  const escaped = pattern.split('*').map((part) => part.replace(/[.+?^${}()|[\]\\]/g, '\\$&'));
  return new RegExp(`^${escaped.join('.*')}$`).test(text);
}

export function handle(event, config) {
  const settings = JSON.parse(config);
  for (const pattern of settings.drop_types ?? []) {
    if (glob(pattern, event.eventType)) {
      console.log(`js-filter drops ${event.eventType}: it matches ${pattern}`);
      return { tag: 'drop', val: `type ${event.eventType} matches ${pattern}` };
    }
  }
  const required = settings.require_fields ?? [];
  if (required.length > 0) {
    let payload;
    try {
      payload = JSON.parse(new TextDecoder().decode(event.payload));
    } catch (e) {
      throw `payload is not JSON: ${e}`;
    }
    const missing = required.find((field) => !(field in payload));
    if (missing !== undefined) {
      console.debug(`dropping: no field ${missing}`);
      return { tag: 'drop', val: `missing field ${missing}` };
    }
  }
  event.headers.push(['x-filtered-by', 'js']);
  return { tag: 'pass', val: event };
}
