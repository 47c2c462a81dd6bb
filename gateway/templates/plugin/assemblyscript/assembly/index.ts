// {{name}}: a Sluice plugin in AssemblyScript.
//
// Drops events whose type starts with `drop_prefix` (config, default "test.") and passes the others
// on, adding an `x-processed-by: {{name}}` header. Edit `decide` to make it yours.
//
// AssemblyScript emits a core module, not a component, so this speaks the core-module ABI of
// wit/core-abi.md: the host writes {"config":{…},"event":{…}} as compact JSON into memory that
// `sluice_alloc` gave it, and `sluice_handle` answers with a JSON verdict. For brevity the plugin reads
// fields by searching that JSON; a plugin with richer needs would use a JSON library (json-as).

@external("sluice", "log")
declare function hostLog(level: i32, ptr: usize, len: i32): void;

/** Writes a line to the gateway's log (0 trace, 1 debug, 2 info, 3 warn, 4 error). */
function log(level: i32, message: string): void {
  const bytes = String.UTF8.encode(message);
  hostLog(level, changetype<usize>(bytes), bytes.byteLength);
}

/** Where the value of `"key":` starts in `json`, or -1 when the key is absent. */
function valueAt(json: string, key: string): i32 {
  const needle = '"' + key + '":';
  const at = json.indexOf(needle);
  return at < 0 ? -1 : at + needle.length;
}

/** The JSON string starting at `at`, still escaped (so it can go back into JSON as it is), or null. */
function rawString(json: string, at: i32): string | null {
  if (at < 0 || at >= json.length || json.charCodeAt(at) != 0x22) return null;
  let end = at + 1;
  while (end < json.length && json.charCodeAt(end) != 0x22) end += json.charCodeAt(end) == 0x5c ? 2 : 1;
  return end >= json.length ? null : json.substring(at + 1, end);
}

/** The verdict for one event, as core-ABI JSON. */
function decide(config: string, event: string): string {
  let prefix = "test.";
  const prefixAt = valueAt(config, "drop_prefix");
  if (prefixAt >= 0) {
    const configured = rawString(config, prefixAt);
    if (configured == null) return '{"error":"config `drop_prefix` must be a string"}';
    prefix = configured;
  }
  const eventType = rawString(event, valueAt(event, "type"));
  if (eventType == null) return '{"error":"the event has no type"}';
  if (eventType.startsWith(prefix)) {
    log(1, "dropping " + eventType);
    return '{"drop":"type ' + eventType + " starts with " + prefix + '"}';
  }
  return '{"pass":{"headers":[["x-processed-by","{{name}}"]]}}';
}

/** The host writes the input here. With the stub runtime nothing is freed; the gateway replaces an
 * instance after `max_calls_per_instance` calls, which bounds the growth. */
export function sluice_alloc(size: i32): usize {
  return heap.alloc(size);
}

export function sluice_handle(ptr: usize, len: i32): i64 {
  const input = String.UTF8.decodeUnsafe(ptr, len);
  // {"config":{…},"event":{…}}: split there, so each search stays in its own part.
  const split = input.indexOf(',"event":{');
  const verdict = split < 0
    ? '{"error":"input is not {\\"config\\":…,\\"event\\":…}"}'
    : decide(input.substring(0, split), input.substring(split));
  const out = String.UTF8.encode(verdict);
  return (i64(changetype<usize>(out)) << 32) | i64(out.byteLength);
}
