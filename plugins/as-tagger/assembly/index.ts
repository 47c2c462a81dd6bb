// A Sluice plugin in AssemblyScript. AssemblyScript emits core modules, not components, so this
// speaks the core-module ABI (see wit/core-abi.md): JSON in through linear memory, JSON verdict out.
//
// Config: {"tag": "…", "drop_type": "…"} (both optional). Drops events of type `drop_type`; passes
// the others with an `x-tagged-by` header (the `tag`, default "assemblyscript").
//
// For brevity the example finds string fields by searching the compact JSON the host writes; a real
// plugin would use a JSON library such as `json-as` or `assemblyscript-json`.

@external("sluice", "log")
declare function hostLog(level: i32, ptr: usize, len: i32): void;

function log(level: i32, message: string): void {
  const bytes = String.UTF8.encode(message);
  hostLog(level, changetype<usize>(bytes), bytes.byteLength);
}

// The host writes the input here. With the stub runtime nothing is freed; the gateway replaces the
// instance after `max_calls_per_instance` calls, which bounds the growth.
export function sluice_alloc(size: i32): usize {
  return heap.alloc(size);
}

// The string value of `"key":"value"` in `json`, or null.
function field(json: string, key: string): string | null {
  const needle = '"' + key + '":"';
  const at = json.indexOf(needle);
  if (at < 0) return null;
  const start = at + needle.length;
  const end = json.indexOf('"', start);
  return end < 0 ? null : json.substring(start, end);
}

export function sluice_handle(ptr: usize, len: i32): i64 {
  const input = String.UTF8.decodeUnsafe(ptr, len);
  // The host writes {"config":{…},"event":{…}}: split there, so each search stays in its part.
  const split = input.indexOf(',"event":{');
  const config = input.substring(0, split);
  const event = input.substring(split);
  const eventType = field(event, "type");
  const dropType = field(config, "drop_type");
  let verdict: string;
  if (eventType == null) {
    verdict = '{"error":"the event has no type"}';
  } else if (dropType != null && eventType == dropType) {
    log(2, "as-tagger drops " + eventType);
    verdict = '{"drop":"type ' + eventType + ' is dropped by config"}';
  } else {
    const tag = field(config, "tag");
    verdict = '{"pass":{"headers":[["x-tagged-by","' + (tag == null ? "assemblyscript" : tag) + '"]]}}';
  }
  const out = String.UTF8.encode(verdict);
  return (i64(changetype<usize>(out)) << 32) | i64(out.byteLength);
}
