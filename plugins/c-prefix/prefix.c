// A Sluice plugin in C: passes events whose type starts with `allow_prefix` (from the plugin's
// config, e.g. {"allow_prefix": "order"}), adding an `x-checked-by: c` header, and drops the rest.
//
// It prints why it drops an event with printf (stdout, which the gateway logs with the plugin's name
// and the event id), and an `allow_prefix` longer than 200 bytes makes it print to stderr and abort():
// the gateway answers 422 with what it wrote.
//
// Ownership (wit-bindgen's C convention): the callee owns its arguments, so `event` and `config`
// are freed here unless handed back; what is returned is freed by the generated post-return code.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gen/plugin.h"

// Finds the string value of `"key": "value"` in a flat JSON object (no escapes inside the value).
static bool config_string(const plugin_string_t *config, const char *key, const uint8_t **value, size_t *len) {
  char quoted[64];
  int quoted_len = snprintf(quoted, sizeof quoted, "\"%s\"", key);
  const uint8_t *end = config->ptr + config->len;
  for (const uint8_t *p = config->ptr; p + quoted_len <= end; p++) {
    if (memcmp(p, quoted, (size_t)quoted_len) != 0) continue;
    p += quoted_len;
    while (p < end && (*p == ' ' || *p == ':')) p++;
    if (p >= end || *p != '"') return false;
    const uint8_t *start = ++p;
    while (p < end && *p != '"') p++;
    if (p >= end) return false;
    *value = start;
    *len = (size_t)(p - start);
    return true;
  }
  return false;
}

bool exports_plugin_handle(plugin_event_t *event, plugin_string_t *config, plugin_verdict_t *ret,
                           plugin_string_t *err) {
  const uint8_t *prefix;
  size_t prefix_len;
  if (!config_string(config, "allow_prefix", &prefix, &prefix_len)) {
    plugin_string_dup(err, "config needs a string `allow_prefix`");
    plugin_string_free(config);
    plugin_event_free(event);
    return false;
  }
  if (prefix_len > 200) {
    fprintf(stderr, "c-prefix: allow_prefix is %zu bytes long; at most 200 are supported\n", prefix_len);
    abort();
  }
  plugin_string_t *type = &event->event_type;
  if (type->len < prefix_len || memcmp(type->ptr, prefix, prefix_len) != 0) {
    char reason[512];
    snprintf(reason, sizeof reason, "type %.*s does not start with %.*s", (int)type->len, (const char *)type->ptr,
             (int)prefix_len, (const char *)prefix);
    printf("c-prefix drops %.*s\n", (int)type->len, (const char *)type->ptr);
    fflush(stdout);  // stdout is not a terminal, so libc buffers it: flush to see the line now
    ret->tag = SLUICE_PLUGIN_TYPES_VERDICT_DROP;
    plugin_string_dup(&ret->val.drop, reason);
    plugin_string_free(config);
    plugin_event_free(event);
    return true;
  }
  size_t n = event->headers.len;
  sluice_plugin_types_header_t *headers = realloc(event->headers.ptr, (n + 1) * sizeof *headers);
  if (headers == NULL) abort();
  plugin_string_dup(&headers[n].f0, "x-checked-by");
  plugin_string_dup(&headers[n].f1, "c");
  event->headers.ptr = headers;
  event->headers.len = n + 1;
  ret->tag = SLUICE_PLUGIN_TYPES_VERDICT_PASS;
  ret->val.pass = *event;  // moved: freed after the call by the generated post-return code
  plugin_string_free(config);
  return true;
}
