// {{name}}: a Sluice plugin in JavaScript (built with jco's QuickJS backend).
//
// Drops events whose type starts with `drop_prefix` (config, default "test.") and passes the others
// on, adding an `x-processed-by: {{name}}` header. Edit `handle` to make it yours.
//
// WIT mapping: records are objects with camelCase fields (`event.eventType`), variants are
// `{ tag, val }`, a payload is a Uint8Array, and `result<verdict, string>` is "return the verdict"
// or "throw a string" (any other exception fails the event too, with its message).
// `prelude.js` gives QuickJS `console` (into the gateway's log) and TextEncoder/TextDecoder.
import './prelude.js';

export function handle(event, config) {
  const settings = JSON.parse(config);
  const prefix = settings.drop_prefix ?? 'test.';
  if (typeof prefix !== 'string') {
    throw `config \`drop_prefix\` must be a string, not ${JSON.stringify(prefix)}`;
  }
  if (event.eventType.startsWith(prefix)) {
    console.debug(`dropping ${event.eventType}`);
    return { tag: 'drop', val: `type ${event.eventType} starts with ${prefix}` };
  }
  event.headers.push(['x-processed-by', '{{name}}']);
  return { tag: 'pass', val: event };
}
