// {{name}}: a Sluice plugin in C.
//
// Drops events whose type starts with `drop_prefix` (config, default "test.") and passes the others
// on, adding an `x-processed-by: {{name}}` header. Edit `exports_plugin_handle` to make it yours;
// `gen/plugin.h` declares the types, generated from wit/plugin.wit.
//
// Ownership (wit-bindgen's C convention): the function owns `event` and `config` and frees them
// unless it moves them into `ret`; what it returns is freed after the call by the generated code.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gen/plugin.h"

// Looks up `key` in the JSON object `json` (top level, no nesting) and copies its string value into
// `out` (NUL-terminated). Returns 1 when found, 0 when absent, -1 when the value is not a string or
// does not fit. Escapes inside strings are skipped over, not decoded: for richer configs, use a JSON
// parser such as cJSON or jsmn.
static int config_string(const plugin_string_t *json, const char *key, char *out, size_t out_size) {
  const char *text = (const char *)json->ptr;
  size_t len = json->len, key_len = strlen(key), i = 0;
  while (i < len) {
    if (text[i] != '"') {
      i++;
      continue;
    }
    size_t start = ++i;  // a string: find its closing quote
    while (i < len && text[i] != '"') i += text[i] == '\\' ? 2 : 1;
    if (i >= len) return 0;
    size_t end = i++;
    size_t j = i;
    while (j < len && (text[j] == ' ' || text[j] == '\t' || text[j] == '\n' || text[j] == '\r')) j++;
    if (j >= len || text[j] != ':') continue;  // a value, not a key
    if (end - start != key_len || memcmp(text + start, key, key_len) != 0) continue;
    for (j++; j < len && (text[j] == ' ' || text[j] == '\t' || text[j] == '\n' || text[j] == '\r'); j++) {
    }
    if (j >= len || text[j] != '"') return -1;
    size_t value = ++j;
    while (j < len && text[j] != '"') j += text[j] == '\\' ? 2 : 1;
    if (j >= len || j - value >= out_size) return -1;
    memcpy(out, text + value, j - value);
    out[j - value] = '\0';
    return 1;
  }
  return 0;
}

bool exports_plugin_handle(plugin_event_t *event, plugin_string_t *config, plugin_verdict_t *ret,
                           plugin_string_t *err) {
  char prefix[256] = "test.";
  int found = config_string(config, "drop_prefix", prefix, sizeof prefix);
  plugin_string_free(config);
  if (found < 0) {
    // Returning false fails the event: the producer gets HTTP 422 with this message.
    plugin_string_dup(err, "config `drop_prefix` must be a string of at most 255 bytes");
    plugin_event_free(event);
    return false;
  }
  size_t prefix_len = strlen(prefix);
  plugin_string_t *type = &event->event_type;
  if (type->len >= prefix_len && memcmp(type->ptr, prefix, prefix_len) == 0) {
    char reason[512];
    snprintf(reason, sizeof reason, "type %.*s starts with %s", (int)type->len, (const char *)type->ptr, prefix);
    // printf lands in the gateway's log, tagged with the plugin's name and the event id. stdout is
    // not a terminal, so flush to see the line at once.
    printf("{{name}} drops %.*s\n", (int)type->len, (const char *)type->ptr);
    fflush(stdout);
    ret->tag = SLUICE_PLUGIN_TYPES_VERDICT_DROP;
    plugin_string_dup(&ret->val.drop, reason);
    plugin_event_free(event);
    return true;
  }
  size_t count = event->headers.len;
  sluice_plugin_types_header_t *headers = realloc(event->headers.ptr, (count + 1) * sizeof *headers);
  if (headers == NULL) abort();  // a trap: the event fails with 422
  plugin_string_dup(&headers[count].f0, "x-processed-by");
  plugin_string_dup(&headers[count].f1, "{{name}}");
  event->headers.ptr = headers;
  event->headers.len = count + 1;
  ret->tag = SLUICE_PLUGIN_TYPES_VERDICT_PASS;
  ret->val.pass = *event;  // moved into the verdict
  return true;
}
