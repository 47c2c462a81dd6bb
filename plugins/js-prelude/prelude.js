// The Sluice prelude for JavaScript plugins built with jco's QuickJS backend, which has neither
// `console` nor `TextEncoder`/`TextDecoder`. Import it first: `import './prelude.js';`.
//
// - `console.log/info/debug/warn/error(...)` write to the gateway's log through the host's `log`
//   (levels info, info, debug, warn, error), tagged with the plugin's name and the event id.
// - `TextEncoder` / `TextDecoder` (UTF-8 only): `new TextDecoder().decode(event.payload)` and
//   `new TextEncoder().encode(text)`, which gives the `Uint8Array` a payload must be.
import { log } from 'sluice:plugin/host@0.1.0';

function show(value) {
  if (typeof value === 'string') return value;
  if (value instanceof Error) return `${value.name}: ${value.message}`;
  try {
    return JSON.stringify(value) ?? String(value);
  } catch {
    return String(value);
  }
}

function writer(level) {
  return (...args) => log(level, args.map(show).join(' '));
}

if (typeof globalThis.console === 'undefined') {
  globalThis.console = {
    log: writer('info'),
    info: writer('info'),
    debug: writer('debug'),
    warn: writer('warn'),
    error: writer('error'),
  };
}

class Utf8Encoder {
  get encoding() {
    return 'utf-8';
  }

  encode(text = '') {
    const out = [];
    for (const char of String(text)) {
      let code = char.codePointAt(0);
      if (code >= 0xd800 && code <= 0xdfff) code = 0xfffd; // a lone surrogate
      if (code < 0x80) {
        out.push(code);
      } else if (code < 0x800) {
        out.push(0xc0 | (code >> 6), 0x80 | (code & 0x3f));
      } else if (code < 0x10000) {
        out.push(0xe0 | (code >> 12), 0x80 | ((code >> 6) & 0x3f), 0x80 | (code & 0x3f));
      } else {
        out.push(0xf0 | (code >> 18), 0x80 | ((code >> 12) & 0x3f), 0x80 | ((code >> 6) & 0x3f), 0x80 | (code & 0x3f));
      }
    }
    return new Uint8Array(out);
  }
}

class Utf8Decoder {
  get encoding() {
    return 'utf-8';
  }

  // Invalid sequences become U+FFFD, as the web platform's decoder does by default.
  decode(input = new Uint8Array(0)) {
    const bytes = input instanceof Uint8Array ? input : new Uint8Array(input);
    let text = '';
    let i = 0;
    while (i < bytes.length) {
      const first = bytes[i];
      const need = first < 0x80 ? 0 : first < 0xc2 ? -1 : first < 0xe0 ? 1 : first < 0xf0 ? 2 : first < 0xf5 ? 3 : -1;
      let code = need === 0 ? first : need === 1 ? first & 0x1f : need === 2 ? first & 0x0f : first & 0x07;
      let ok = need >= 0 && i + need < bytes.length + (need === 0 ? 1 : 0);
      for (let k = 1; ok && k <= need; k += 1) {
        const next = bytes[i + k];
        ok = next !== undefined && (next & 0xc0) === 0x80;
        code = (code << 6) | (next & 0x3f);
      }
      const overlong = (need === 2 && code < 0x800) || (need === 3 && (code < 0x10000 || code > 0x10ffff));
      if (!ok || overlong || (code >= 0xd800 && code <= 0xdfff)) {
        text += '\ufffd';
        i += 1;
      } else {
        text += String.fromCodePoint(code);
        i += need + 1;
      }
    }
    return text;
  }
}

if (typeof globalThis.TextEncoder === 'undefined') globalThis.TextEncoder = Utf8Encoder;
if (typeof globalThis.TextDecoder === 'undefined') globalThis.TextDecoder = Utf8Decoder;
