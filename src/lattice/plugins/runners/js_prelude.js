// Lattice JS worker prelude: evaluated once per isolate, before the worker source.
//
// It (1) removes globals a worker must not have, (2) installs the supported subset
// of the Workers web APIs (Headers, Request, Response, URL, URLSearchParams,
// TextEncoder/TextDecoder, atob/btoa, crypto.randomUUID/getRandomValues, console,
// queueMicrotask), and (3) defines `__lattice`, the driver the Python side calls.
//
// Nothing here can call Python.  Host calls (KV, static assets) are queued as plain
// records; Python collects them with `__lattice.poll()`, validates them against the
// declared bindings, runs them through the host, and answers with
// `__lattice.resume(results)`.  Every value that leaves the isolate is produced by
// the JSON.stringify captured below, so it is always well-formed text.
(function (global) {
  "use strict";

  // ---- 1. capabilities a worker must not have ---------------------------------
  const FORBIDDEN = [
    "WebAssembly", "FinalizationRegistry", "SharedArrayBuffer", "fetch", "require",
    "process", "module", "exports", "setTimeout", "clearTimeout", "setInterval",
    "clearInterval", "setImmediate", "__timer_manager",
  ];
  for (const name of FORBIDDEN) {
    if (!Reflect.deleteProperty(global, name)) {
      // `var`-declared globals (mini-racer's timer shim) cannot be deleted: blank them.
      Object.defineProperty(global, name, { value: undefined, writable: false });
    }
  }
  // Atomics.waitAsync is a timer in disguise; Atomics.wait blocks the isolate.
  Reflect.deleteProperty(Atomics, "wait");
  Reflect.deleteProperty(Atomics, "waitAsync");

  // ---- 2. intrinsics captured before worker code can touch them ---------------
  const stringify = JSON.stringify;
  const parseJSON = JSON.parse;
  const fromBase64 = Uint8Array.fromBase64;
  const toBase64 = Uint8Array.prototype.toBase64;
  const apply = Reflect.apply;
  const fromCharCode = String.fromCharCode;
  const b64encode = (bytes) => apply(toBase64, bytes, []);
  const b64decode = (text) => apply(fromBase64, Uint8Array, [text]);
  const EMPTY = new Uint8Array(0);

  // ---- 3. UTF-8 ----------------------------------------------------------------
  function utf8Encode(input) {
    const str = String(input);
    const out = new Uint8Array(str.length * 3);
    let p = 0;
    for (let i = 0; i < str.length; i++) {
      let c = str.charCodeAt(i);
      if (c < 0x80) {
        out[p++] = c;
        continue;
      }
      if (c < 0x800) {
        out[p++] = 0xc0 | (c >> 6);
        out[p++] = 0x80 | (c & 0x3f);
        continue;
      }
      if (c >= 0xd800 && c <= 0xdbff && i + 1 < str.length) {
        const d = str.charCodeAt(i + 1);
        if (d >= 0xdc00 && d <= 0xdfff) {
          const cp = 0x10000 + ((c - 0xd800) << 10) + (d - 0xdc00);
          out[p++] = 0xf0 | (cp >> 18);
          out[p++] = 0x80 | ((cp >> 12) & 0x3f);
          out[p++] = 0x80 | ((cp >> 6) & 0x3f);
          out[p++] = 0x80 | (cp & 0x3f);
          i++;
          continue;
        }
      }
      if (c >= 0xd800 && c <= 0xdfff) c = 0xfffd; // lone surrogate
      out[p++] = 0xe0 | (c >> 12);
      out[p++] = 0x80 | ((c >> 6) & 0x3f);
      out[p++] = 0x80 | (c & 0x3f);
    }
    return out.slice(0, p);
  }

  // WHATWG UTF-8 decode: each maximal invalid subpart becomes one U+FFFD.
  function utf8Decode(bytes, fatal = false, ignoreBOM = false) {
    const parts = [];
    let units = [];
    const push = (cp) => {
      if (cp > 0xffff) {
        cp -= 0x10000;
        units.push(0xd800 + (cp >> 10), 0xdc00 + (cp & 0x3ff));
      } else {
        units.push(cp);
      }
      if (units.length >= 8192) {
        parts.push(apply(fromCharCode, null, units));
        units = [];
      }
    };
    const bad = () => {
      if (fatal) throw new TypeError("The encoded data was not valid UTF-8");
      push(0xfffd);
    };
    let needed = 0, seen = 0, cp = 0, lower = 0x80, upper = 0xbf;
    for (let i = 0; i < bytes.length; i++) {
      const b = bytes[i];
      if (needed === 0) {
        if (b <= 0x7f) push(b);
        else if (b >= 0xc2 && b <= 0xdf) { needed = 1; cp = b & 0x1f; }
        else if (b >= 0xe0 && b <= 0xef) {
          if (b === 0xe0) lower = 0xa0;
          if (b === 0xed) upper = 0x9f;
          needed = 2; cp = b & 0x0f;
        } else if (b >= 0xf0 && b <= 0xf4) {
          if (b === 0xf0) lower = 0x90;
          if (b === 0xf4) upper = 0x8f;
          needed = 3; cp = b & 0x07;
        } else bad();
        continue;
      }
      if (b < lower || b > upper) {
        needed = seen = cp = 0; lower = 0x80; upper = 0xbf;
        bad();
        i--; // reprocess this byte as a lead byte
        continue;
      }
      lower = 0x80; upper = 0xbf;
      cp = (cp << 6) | (b & 0x3f);
      if (++seen === needed) {
        push(cp);
        needed = seen = cp = 0;
      }
    }
    if (needed !== 0) bad();
    parts.push(apply(fromCharCode, null, units));
    const text = parts.join("");
    return !ignoreBOM && text.charCodeAt(0) === 0xfeff ? text.slice(1) : text;
  }

  function toBytes(input, what) {
    if (input instanceof ArrayBuffer) return new Uint8Array(input);
    if (ArrayBuffer.isView(input)) {
      return new Uint8Array(input.buffer, input.byteOffset, input.byteLength);
    }
    throw new TypeError(`${what} must be an ArrayBuffer or a typed array`);
  }

  const UTF8_LABELS = ["utf-8", "utf8", "unicode-1-1-utf-8"];

  class TextEncoder {
    get encoding() { return "utf-8"; }
    encode(input = "") { return utf8Encode(input); }
    encodeInto(input, dest) {
      const bytes = utf8Encode(input);
      // Only whole characters are written: back off from a split sequence.
      let n = Math.min(bytes.length, dest.length);
      while (n > 0 && n < bytes.length && (bytes[n] & 0xc0) === 0x80) n--;
      dest.set(bytes.subarray(0, n));
      return { read: utf8Decode(bytes.subarray(0, n), false, true).length, written: n };
    }
  }

  class TextDecoder {
    #fatal; #ignoreBOM;
    constructor(label = "utf-8", options = {}) {
      if (!UTF8_LABELS.includes(String(label).trim().toLowerCase())) {
        throw new RangeError(`The encoding label "${label}" is not supported`);
      }
      this.#fatal = Boolean(options.fatal);
      this.#ignoreBOM = Boolean(options.ignoreBOM);
    }
    get encoding() { return "utf-8"; }
    get fatal() { return this.#fatal; }
    get ignoreBOM() { return this.#ignoreBOM; }
    decode(input) {
      if (input === undefined) return "";
      return utf8Decode(toBytes(input, "input"), this.#fatal, this.#ignoreBOM);
    }
  }

  function btoa(data) {
    const s = String(data);
    const bytes = new Uint8Array(s.length);
    for (let i = 0; i < s.length; i++) {
      const c = s.charCodeAt(i);
      if (c > 0xff) throw new TypeError("btoa: string contains characters outside Latin-1");
      bytes[i] = c;
    }
    return b64encode(bytes);
  }

  function atob(data) {
    let bytes;
    try {
      bytes = b64decode(String(data).replace(/[\t\n\f\r ]/g, ""));
    } catch {
      throw new TypeError("atob: the string is not correctly encoded");
    }
    let out = "";
    for (let i = 0; i < bytes.length; i += 8192) {
      out += apply(fromCharCode, null, bytes.subarray(i, i + 8192));
    }
    return out;
  }

  // ---- 4. randomness: ChaCha20 (RFC 8439) keyed with entropy from Python --------
  const rotl = (v, n) => (v << n) | (v >>> (32 - n));
  function chachaBlock(key, counter, nonce) {
    const s = new Uint32Array(16);
    s.set([0x61707865, 0x3320646e, 0x79622d32, 0x6b206574]);
    s.set(key, 4);
    s[12] = counter;
    s.set(nonce, 13);
    const x = s.slice();
    const qr = (a, b, c, d) => {
      x[a] += x[b]; x[d] = rotl(x[d] ^ x[a], 16);
      x[c] += x[d]; x[b] = rotl(x[b] ^ x[c], 12);
      x[a] += x[b]; x[d] = rotl(x[d] ^ x[a], 8);
      x[c] += x[d]; x[b] = rotl(x[b] ^ x[c], 7);
    };
    for (let i = 0; i < 10; i++) {
      qr(0, 4, 8, 12); qr(1, 5, 9, 13); qr(2, 6, 10, 14); qr(3, 7, 11, 15);
      qr(0, 5, 10, 15); qr(1, 6, 11, 12); qr(2, 7, 8, 13); qr(3, 4, 9, 14);
    }
    const out = new Uint8Array(64);
    for (let i = 0; i < 16; i++) {
      const w = (x[i] + s[i]) >>> 0;
      out[4 * i] = w & 0xff;
      out[4 * i + 1] = (w >>> 8) & 0xff;
      out[4 * i + 2] = (w >>> 16) & 0xff;
      out[4 * i + 3] = w >>> 24;
    }
    return out;
  }
  const words = (bytes) => {
    const w = new Uint32Array(bytes.length / 4);
    for (let i = 0; i < w.length; i++) {
      w[i] = bytes[4 * i] | (bytes[4 * i + 1] << 8) | (bytes[4 * i + 2] << 16) | (bytes[4 * i + 3] << 24);
    }
    return w;
  };

  const rng = { key: new Uint32Array(8), nonce: new Uint32Array(3), counter: 0, buf: EMPTY, pos: 0 };
  function reseed(entropyB64) {
    const seed = b64decode(entropyB64);
    rng.key = words(seed.subarray(0, 32));
    rng.nonce = words(seed.subarray(32, 44));
    rng.counter = 0;
    rng.buf = EMPTY;
    rng.pos = 0;
  }
  function randomBytes(target) {
    for (let i = 0; i < target.length; i++) {
      if (rng.pos >= rng.buf.length) {
        rng.buf = chachaBlock(rng.key, rng.counter++, rng.nonce);
        rng.pos = 0;
      }
      target[i] = rng.buf[rng.pos++];
    }
  }

  const crypto = Object.freeze({
    getRandomValues(array) {
      if (!(array instanceof Int8Array || array instanceof Uint8Array ||
            array instanceof Uint8ClampedArray || array instanceof Int16Array ||
            array instanceof Uint16Array || array instanceof Int32Array ||
            array instanceof Uint32Array || array instanceof BigInt64Array ||
            array instanceof BigUint64Array)) {
        throw new TypeError("getRandomValues: argument must be an integer typed array");
      }
      if (array.byteLength > 65536) {
        throw new RangeError("getRandomValues: at most 65536 bytes per call");
      }
      randomBytes(new Uint8Array(array.buffer, array.byteOffset, array.byteLength));
      return array;
    },
    randomUUID() {
      const b = new Uint8Array(16);
      randomBytes(b);
      b[6] = (b[6] & 0x0f) | 0x40;
      b[8] = (b[8] & 0x3f) | 0x80;
      const hex = Array.from(b, (v) => v.toString(16).padStart(2, "0")).join("");
      return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
    },
  });

  // ---- 5. Headers ----------------------------------------------------------------
  const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
  function headerName(name) {
    const n = String(name);
    if (!TOKEN.test(n)) throw new TypeError(`Invalid header name: ${stringify(n)}`);
    return n.toLowerCase();
  }
  function headerValue(value) {
    const v = String(value).replace(/^[\t\n\r ]+|[\t\n\r ]+$/g, "");
    if (/[\0\r\n]/.test(v)) throw new TypeError("Invalid header value");
    return v;
  }

  let headerPairs; // (Headers) => [[name, value], ...] in insertion order
  class Headers {
    #list = [];
    static { headerPairs = (h) => h.#list.map((p) => [p[0], p[1]]); }
    constructor(init = undefined) {
      if (init === undefined || init === null) return;
      if (init instanceof Headers) {
        this.#list = headerPairs(init);
      } else if (typeof init === "object" && typeof init[Symbol.iterator] === "function") {
        for (const pair of init) {
          const p = Array.from(pair);
          if (p.length !== 2) throw new TypeError("Each header pair must have two items");
          this.append(p[0], p[1]);
        }
      } else if (typeof init === "object") {
        for (const key of Object.keys(init)) this.append(key, init[key]);
      } else {
        throw new TypeError("Headers init must be an object or an iterable of pairs");
      }
    }
    append(name, value) { this.#list.push([headerName(name), headerValue(value)]); }
    delete(name) {
      const n = headerName(name);
      this.#list = this.#list.filter((p) => p[0] !== n);
    }
    get(name) {
      const n = headerName(name);
      const values = this.#list.filter((p) => p[0] === n).map((p) => p[1]);
      return values.length ? values.join(", ") : null;
    }
    getSetCookie() { return this.#list.filter((p) => p[0] === "set-cookie").map((p) => p[1]); }
    has(name) {
      const n = headerName(name);
      return this.#list.some((p) => p[0] === n);
    }
    set(name, value) {
      const n = headerName(name);
      const v = headerValue(value);
      const i = this.#list.findIndex((p) => p[0] === n);
      if (i < 0) {
        this.#list.push([n, v]);
        return;
      }
      this.#list[i] = [n, v];
      this.#list = this.#list.filter((p, j) => j <= i || p[0] !== n);
    }
    *entries() {
      const names = [...new Set(this.#list.map((p) => p[0]))].sort();
      for (const n of names) {
        if (n === "set-cookie") for (const v of this.getSetCookie()) yield [n, v];
        else yield [n, this.get(n)];
      }
    }
    *keys() { for (const [k] of this.entries()) yield k; }
    *values() { for (const [, v] of this.entries()) yield v; }
    forEach(callback, thisArg = undefined) {
      for (const [k, v] of this.entries()) apply(callback, thisArg, [v, k, this]);
    }
    [Symbol.iterator]() { return this.entries(); }
    get [Symbol.toStringTag]() { return "Headers"; }
  }

  // ---- 6. bodies, Request, Response ------------------------------------------------
  const bodies = new WeakMap(); // Request|Response -> {bytes: Uint8Array|null, used}

  // Returns [bytes, default content-type or null].
  function extractBody(body) {
    if (typeof body === "string") return [utf8Encode(body), "text/plain;charset=UTF-8"];
    if (body instanceof ArrayBuffer || ArrayBuffer.isView(body)) {
      return [toBytes(body, "body").slice(), null];
    }
    if (body instanceof URLSearchParams) {
      return [utf8Encode(body.toString()), "application/x-www-form-urlencoded;charset=UTF-8"];
    }
    if (typeof body === "object" && typeof body.getReader === "function") {
      throw new TypeError("ReadableStream bodies are not supported by this runtime");
    }
    return [utf8Encode(String(body)), "text/plain;charset=UTF-8"];
  }

  function consume(owner) {
    const state = bodies.get(owner);
    if (state === undefined) return Promise.reject(new TypeError("Illegal invocation"));
    if (state.used) return Promise.reject(new TypeError("Body has already been used"));
    state.used = true;
    return Promise.resolve(state.bytes === null ? EMPTY : state.bytes);
  }

  const BodyMethods = {
    get bodyUsed() { return bodies.get(this).used; },
    text() { return consume(this).then((b) => utf8Decode(b)); },
    json() { return consume(this).then((b) => parseJSON(utf8Decode(b))); },
    arrayBuffer() { return consume(this).then((b) => b.slice().buffer); },
    bytes() { return consume(this).then((b) => b.slice()); },
  };
  const mixBody = (cls) => Object.defineProperties(
    cls.prototype, Object.getOwnPropertyDescriptors(BodyMethods));

  const STANDARD_METHODS = ["DELETE", "GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH"];
  function normalizeMethod(method) {
    const m = String(method);
    if (!TOKEN.test(m)) throw new TypeError(`Invalid method: ${stringify(m)}`);
    const upper = m.toUpperCase();
    return STANDARD_METHODS.includes(upper) ? upper : m;
  }

  class Request {
    #method; #url; #headers;
    constructor(input, init = {}) {
      let bytes = null;
      if (input instanceof Request) {
        this.#method = input.method;
        this.#url = input.url;
        this.#headers = new Headers(input.headers);
        const src = bodies.get(input);
        if (src.used) throw new TypeError("Cannot construct a Request from a used body");
        bytes = src.bytes;
      } else {
        this.#method = "GET";
        this.#url = new URL(String(input)).href;
        this.#headers = new Headers();
      }
      if (init.method !== undefined) this.#method = normalizeMethod(init.method);
      if (init.headers !== undefined) this.#headers = new Headers(init.headers);
      if (init.body !== undefined && init.body !== null) {
        if (this.#method === "GET" || this.#method === "HEAD") {
          throw new TypeError("Request with GET/HEAD method cannot have a body");
        }
        const [b, type] = extractBody(init.body);
        bytes = b;
        if (type !== null && !this.#headers.has("content-type")) this.#headers.set("content-type", type);
      }
      bodies.set(this, { bytes, used: false });
    }
    get method() { return this.#method; }
    get url() { return this.#url; }
    get headers() { return this.#headers; }
    get redirect() { return "follow"; }
    clone() {
      const state = bodies.get(this);
      if (state.used) throw new TypeError("Cannot clone a used body");
      return new Request(this);
    }
    get [Symbol.toStringTag]() { return "Request"; }
  }
  mixBody(Request);

  const NULL_BODY_STATUS = [101, 204, 205, 304];
  const REDIRECT_STATUS = [301, 302, 303, 307, 308];

  class Response {
    #status; #statusText; #headers;
    constructor(body = null, init = {}) {
      const status = init.status === undefined ? 200 : init.status;
      if (!Number.isInteger(status) || status < 200 || status > 599) {
        throw new RangeError(`Response status must be an integer in 200..599, got ${String(status)}`);
      }
      const statusText = init.statusText === undefined ? "" : String(init.statusText);
      if (/[\0\r\n]/.test(statusText)) throw new TypeError("Invalid statusText");
      this.#status = status;
      this.#statusText = statusText;
      this.#headers = new Headers(init.headers);
      let bytes = null;
      if (body !== null && body !== undefined) {
        if (NULL_BODY_STATUS.includes(status)) {
          throw new TypeError(`Response with status ${status} cannot have a body`);
        }
        const [b, type] = extractBody(body);
        bytes = b;
        if (type !== null && !this.#headers.has("content-type")) this.#headers.set("content-type", type);
      }
      bodies.set(this, { bytes, used: false });
    }
    static json(data, init = {}) {
      const text = stringify(data);
      if (text === undefined) throw new TypeError("Response.json: value is not JSON-serializable");
      const headers = new Headers(init.headers);
      if (!headers.has("content-type")) headers.set("content-type", "application/json");
      return new Response(text, { ...init, headers });
    }
    static redirect(url, status = 302) {
      if (!REDIRECT_STATUS.includes(status)) throw new RangeError(`Invalid redirect status ${status}`);
      return new Response(null, { status, headers: { location: new URL(String(url)).href } });
    }
    get status() { return this.#status; }
    get statusText() { return this.#statusText; }
    get ok() { return this.#status >= 200 && this.#status <= 299; }
    get headers() { return this.#headers; }
    get redirected() { return false; }
    get type() { return "default"; }
    get url() { return ""; }
    clone() {
      const state = bodies.get(this);
      if (state.used) throw new TypeError("Cannot clone a used body");
      const copy = new Response(null, { status: this.#status, statusText: this.#statusText, headers: this.#headers });
      bodies.set(copy, { bytes: state.bytes, used: false });
      return copy;
    }
    get [Symbol.toStringTag]() { return "Response"; }
  }
  mixBody(Response);

  // ---- 7. URLSearchParams and URL (WHATWG subset) -------------------------------
  // Percent-encode sets, as predicates over an ASCII code unit.
  const C0 = (c) => c < 0x20 || c > 0x7e;
  const FRAGMENT_SET = (c) => C0(c) || ' "<>`'.includes(fromCharCode(c));
  const QUERY_SET = (c) => C0(c) || ' "#<>'.includes(fromCharCode(c));
  const SPECIAL_QUERY_SET = (c) => QUERY_SET(c) || c === 0x27;
  const PATH_SET = (c) => QUERY_SET(c) || "?`{}".includes(fromCharCode(c));
  const USERINFO_SET = (c) => PATH_SET(c) || "/:;=@[\\]^|".includes(fromCharCode(c));
  const HEX = "0123456789ABCDEF";

  function percentEncode(str, inSet) {
    const bytes = utf8Encode(str);
    let out = "";
    for (const b of bytes) {
      out += b < 0x80 && !inSet(b) ? fromCharCode(b) : "%" + HEX[b >> 4] + HEX[b & 15];
    }
    return out;
  }

  function percentDecode(str) {
    const bytes = utf8Encode(str);
    const out = new Uint8Array(bytes.length);
    let p = 0;
    const hex = (b) => (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x46) || (b >= 0x61 && b <= 0x66);
    for (let i = 0; i < bytes.length; i++) {
      if (bytes[i] === 0x25 && i + 2 < bytes.length && hex(bytes[i + 1]) && hex(bytes[i + 2])) {
        out[p++] = parseInt(fromCharCode(bytes[i + 1], bytes[i + 2]), 16);
        i += 2;
      } else {
        out[p++] = bytes[i];
      }
    }
    return utf8Decode(out.subarray(0, p), false, true);
  }

  function formEncode(str) {
    const bytes = utf8Encode(str);
    let out = "";
    for (const b of bytes) {
      const ch = fromCharCode(b);
      if (/[A-Za-z0-9*\-._]/.test(ch)) out += ch;
      else if (b === 0x20) out += "+";
      else out += "%" + HEX[b >> 4] + HEX[b & 15];
    }
    return out;
  }

  function parseForm(input) {
    const list = [];
    for (const part of input.split("&")) {
      if (part === "") continue;
      const eq = part.indexOf("=");
      const name = eq < 0 ? part : part.slice(0, eq);
      const value = eq < 0 ? "" : part.slice(eq + 1);
      list.push([percentDecode(name.replace(/\+/g, " ")), percentDecode(value.replace(/\+/g, " "))]);
    }
    return list;
  }

  let attachParams; // (URLSearchParams, onChange) => void
  let replaceParams; // (URLSearchParams, query) => void
  class URLSearchParams {
    #list = [];
    #onChange = null;
    static {
      attachParams = (p, onChange) => { p.#onChange = onChange; };
      replaceParams = (p, query) => { p.#list = parseForm(query); };
    }
    constructor(init = "") {
      if (init instanceof URLSearchParams) {
        this.#list = init.#list.map((p) => [p[0], p[1]]);
      } else if (typeof init === "object" && init !== null) {
        if (typeof init[Symbol.iterator] === "function") {
          for (const pair of init) {
            const p = Array.from(pair);
            if (p.length !== 2) throw new TypeError("Each query pair must have two items");
            this.#list.push([String(p[0]), String(p[1])]);
          }
        } else {
          for (const key of Object.keys(init)) this.#list.push([key, String(init[key])]);
        }
      } else {
        const s = String(init);
        this.#list = parseForm(s.startsWith("?") ? s.slice(1) : s);
      }
    }
    #changed() { if (this.#onChange !== null) this.#onChange(this.toString()); }
    get size() { return this.#list.length; }
    append(name, value) { this.#list.push([String(name), String(value)]); this.#changed(); }
    delete(name, value = undefined) {
      const n = String(name);
      this.#list = this.#list.filter((p) => p[0] !== n || (value !== undefined && p[1] !== String(value)));
      this.#changed();
    }
    get(name) {
      const hit = this.#list.find((p) => p[0] === String(name));
      return hit === undefined ? null : hit[1];
    }
    getAll(name) { return this.#list.filter((p) => p[0] === String(name)).map((p) => p[1]); }
    has(name, value = undefined) {
      const n = String(name);
      return this.#list.some((p) => p[0] === n && (value === undefined || p[1] === String(value)));
    }
    set(name, value) {
      const n = String(name);
      const v = String(value);
      const i = this.#list.findIndex((p) => p[0] === n);
      if (i < 0) this.#list.push([n, v]);
      else this.#list = this.#list.filter((p, j) => j <= i || p[0] !== n).map((p, j) => (j === i ? [n, v] : p));
      this.#changed();
    }
    sort() {
      this.#list = this.#list
        .map((p, i) => [p, i])
        .sort((a, b) => (a[0][0] < b[0][0] ? -1 : a[0][0] > b[0][0] ? 1 : a[1] - b[1]))
        .map((x) => x[0]);
      this.#changed();
    }
    *entries() { for (const p of this.#list.slice()) yield [p[0], p[1]]; }
    *keys() { for (const p of this.#list.slice()) yield p[0]; }
    *values() { for (const p of this.#list.slice()) yield p[1]; }
    forEach(callback, thisArg = undefined) {
      for (const [k, v] of this.entries()) apply(callback, thisArg, [v, k, this]);
    }
    [Symbol.iterator]() { return this.entries(); }
    toString() { return this.#list.map((p) => formEncode(p[0]) + "=" + formEncode(p[1])).join("&"); }
    get [Symbol.toStringTag]() { return "URLSearchParams"; }
  }

  const SPECIAL = { "http:": "80", "https:": "443", "ws:": "80", "wss:": "443", "ftp:": "21", "file:": "" };
  const FORBIDDEN_HOST = /[\0\t\n\r #/:<>?@[\\\]^|%]/;

  function invalid(input) { return new TypeError(`Invalid URL: ${stringify(String(input))}`); }

  function parseHost(raw, special, input) {
    if (raw.startsWith("[")) {
      if (!/^\[[0-9A-Fa-f:.]+\]$/.test(raw)) throw invalid(input);
      return raw.toLowerCase();
    }
    const host = special ? percentDecode(raw).toLowerCase() : raw;
    if (special ? FORBIDDEN_HOST.test(host) : /[\0\t\n\r #/:<>?@[\\\]^|]/.test(host)) throw invalid(input);
    return special ? host : percentEncode(host, C0);
  }

  function normalizePath(path, special) {
    const segs = path.split(special ? /[/\\]/ : /\//);
    if (segs[0] === "") segs.shift();
    const out = [];
    segs.forEach((seg, i) => {
      const last = i === segs.length - 1;
      const lower = seg.toLowerCase();
      if (lower === ".." || lower === ".%2e" || lower === "%2e." || lower === "%2e%2e") {
        out.pop();
        if (last) out.push("");
      } else if (lower === "." || lower === "%2e") {
        if (last) out.push("");
      } else {
        out.push(percentEncode(seg, PATH_SET));
      }
    });
    return "/" + out.join("/");
  }

  // Splits "path?query#fragment" into its three parts (query/fragment null if absent).
  function splitTail(rest) {
    let fragment = null, query = null;
    const h = rest.indexOf("#");
    if (h >= 0) { fragment = rest.slice(h + 1); rest = rest.slice(0, h); }
    const q = rest.indexOf("?");
    if (q >= 0) { query = rest.slice(q + 1); rest = rest.slice(0, q); }
    return [rest, query, fragment];
  }

  function encodeTail(rec, query, fragment) {
    const special = rec.protocol in SPECIAL;
    rec.query = query === null ? null : percentEncode(query, special ? SPECIAL_QUERY_SET : QUERY_SET);
    rec.fragment = fragment === null ? null : percentEncode(fragment, FRAGMENT_SET);
    return rec;
  }

  function parseAuthority(protocol, rest, input) {
    const special = protocol in SPECIAL;
    const end = rest.search(special ? /[/\\?#]/ : /[/?#]/);
    const authority = end < 0 ? rest : rest.slice(0, end);
    const tail = end < 0 ? "" : rest.slice(end);
    const rec = { protocol, username: "", password: "", hostname: "", port: "", path: "", query: null, fragment: null, opaque: false };
    let hostport = authority;
    const at = authority.lastIndexOf("@");
    if (at >= 0) {
      const info = authority.slice(0, at);
      hostport = authority.slice(at + 1);
      const colon = info.indexOf(":");
      rec.username = percentEncode(colon < 0 ? info : info.slice(0, colon), USERINFO_SET);
      rec.password = colon < 0 ? "" : percentEncode(info.slice(colon + 1), USERINFO_SET);
    }
    const m = /^(\[[^\]]*\]|[^:]*)(?::(.*))?$/.exec(hostport);
    if (m === null) throw invalid(input);
    rec.hostname = parseHost(m[1], special, input);
    if (special && protocol !== "file:" && rec.hostname === "") throw invalid(input);
    if (m[2] !== undefined && m[2] !== "") {
      if (!/^[0-9]+$/.test(m[2]) || Number(m[2]) > 65535) throw invalid(input);
      const port = String(Number(m[2]));
      rec.port = SPECIAL[protocol] === port ? "" : port;
    }
    const [path, query, fragment] = splitTail(tail);
    rec.path = special || path !== "" ? normalizePath(path, special) : "";
    return encodeTail(rec, query, fragment);
  }

  function parseURL(input, base) {
    const text = String(input).replace(/^[\0-\x20]+|[\0-\x20]+$/g, "").replace(/[\t\n\r]/g, "");
    const m = /^([A-Za-z][A-Za-z0-9+\-.]*):/.exec(text);
    if (m !== null) {
      const protocol = m[1].toLowerCase() + ":";
      const rest = text.slice(m[0].length);
      if (protocol in SPECIAL) {
        if (base !== null && base.protocol === protocol && !/^[/\\]/.test(rest)) {
          return resolve(rest, base, input);
        }
        return parseAuthority(protocol, rest.replace(/^[/\\]*/, ""), input);
      }
      if (rest.startsWith("//")) return parseAuthority(protocol, rest.slice(2), input);
      const [path, query, fragment] = splitTail(rest);
      if (path.startsWith("/")) {
        const rec = { protocol, username: "", password: "", hostname: null, port: "", path: normalizePath(path, false), opaque: false };
        return encodeTail(rec, query, fragment);
      }
      const rec = { protocol, username: "", password: "", hostname: null, port: "", path: percentEncode(path, C0), opaque: true };
      return encodeTail(rec, query, fragment);
    }
    if (base === null) throw invalid(input);
    return resolve(text, base, input);
  }

  function resolve(text, base, input) {
    const special = base.protocol in SPECIAL;
    if (base.opaque) {
      if (!text.startsWith("#")) throw invalid(input);
      return encodeTail({ ...base }, base.query, text.slice(1));
    }
    if (special ? /^[/\\]{2}/.test(text) : text.startsWith("//")) {
      return parseAuthority(base.protocol, special ? text.replace(/^[/\\]*/, "") : text.slice(2), input);
    }
    const [path, query, fragment] = splitTail(text);
    const rec = { ...base };
    if (special ? /^[/\\]/.test(path) : path.startsWith("/")) {
      rec.path = normalizePath(path, special);
    } else if (path !== "") {
      const dir = base.path.slice(0, base.path.lastIndexOf("/") + 1);
      rec.path = normalizePath(dir + path, special);
    } else if (query === null) {
      // Re-encoding an encoded query is a no-op: '%' is in no encode set.
      return encodeTail(rec, base.query, fragment);
    }
    return encodeTail(rec, query, fragment);
  }

  class URL {
    #rec;
    #params;
    constructor(url, base = undefined) {
      const baseRec = base === undefined ? null : parseURL(String(base), null);
      this.#rec = parseURL(url, baseRec);
      this.#params = new URLSearchParams(this.#rec.query === null ? "" : this.#rec.query);
      attachParams(this.#params, (query) => { this.#rec.query = query === "" ? null : query; });
    }
    static canParse(url, base = undefined) {
      try { new URL(url, base); return true; } catch { return false; }
    }
    static parse(url, base = undefined) {
      try { return new URL(url, base); } catch { return null; }
    }
    #reparams() { replaceParams(this.#params, this.#rec.query === null ? "" : this.#rec.query); }
    get href() {
      const r = this.#rec;
      let out = r.protocol;
      if (r.hostname !== null && !r.opaque) {
        out += "//";
        if (r.username !== "" || r.password !== "") {
          out += r.username + (r.password !== "" ? ":" + r.password : "") + "@";
        }
        out += this.host;
      }
      out += r.path;
      if (r.query !== null) out += "?" + r.query;
      if (r.fragment !== null) out += "#" + r.fragment;
      return out;
    }
    set href(value) { this.#rec = parseURL(value, null); this.#reparams(); }
    get origin() {
      const r = this.#rec;
      return r.protocol in SPECIAL && r.protocol !== "file:" ? `${r.protocol}//${this.host}` : "null";
    }
    get protocol() { return this.#rec.protocol; }
    get username() { return this.#rec.username; }
    set username(v) { this.#rec.username = percentEncode(String(v), USERINFO_SET); }
    get password() { return this.#rec.password; }
    set password(v) { this.#rec.password = percentEncode(String(v), USERINFO_SET); }
    get host() {
      const r = this.#rec;
      if (r.hostname === null) return "";
      return r.port === "" ? r.hostname : `${r.hostname}:${r.port}`;
    }
    set host(v) {
      const rec = parseAuthority(this.#rec.protocol, String(v).replace(/[/\\?#].*$/s, ""), v);
      this.#rec.hostname = rec.hostname;
      this.#rec.port = rec.port;
    }
    get hostname() { return this.#rec.hostname === null ? "" : this.#rec.hostname; }
    set hostname(v) {
      this.#rec.hostname = parseHost(String(v), this.#rec.protocol in SPECIAL, v);
    }
    get port() { return this.#rec.port; }
    set port(v) {
      const s = String(v);
      if (s === "") { this.#rec.port = ""; return; }
      const digits = /^[0-9]+/.exec(s);
      if (digits === null || Number(digits[0]) > 65535) return;
      const port = String(Number(digits[0]));
      this.#rec.port = SPECIAL[this.#rec.protocol] === port ? "" : port;
    }
    get pathname() { return this.#rec.path; }
    set pathname(v) {
      if (this.#rec.opaque) return;
      const special = this.#rec.protocol in SPECIAL;
      this.#rec.path = normalizePath(String(v), special);
    }
    get search() { const q = this.#rec.query; return q === null || q === "" ? "" : "?" + q; }
    set search(v) {
      const s = String(v);
      encodeTail(this.#rec, s === "" ? null : s.replace(/^\?/, ""), this.#rec.fragment);
      this.#reparams();
    }
    get searchParams() { return this.#params; }
    get hash() { const f = this.#rec.fragment; return f === null || f === "" ? "" : "#" + f; }
    set hash(v) {
      const s = String(v);
      encodeTail(this.#rec, this.#rec.query, s === "" ? null : s.replace(/^#/, ""));
    }
    toString() { return this.href; }
    toJSON() { return this.href; }
    get [Symbol.toStringTag]() { return "URL"; }
  }

  // ---- 8. console -> host log ----------------------------------------------------
  const MAX_LOG_LINES = 64;
  const MAX_LOG_CHARS = 2048;
  let logs = [];
  let dropped = 0;
  function formatArg(v) {
    try {
      if (typeof v === "string") return v;
      if (v instanceof Error) return String(v.stack === undefined ? v : v.stack);
      if (typeof v === "object" && v !== null) {
        const s = stringify(v);
        return s === undefined ? String(v) : s;
      }
      return String(v);
    } catch {
      return "[unprintable]";
    }
  }
  function emit(level, args) {
    if (logs.length >= MAX_LOG_LINES) { dropped++; return; }
    let text = args.map(formatArg).join(" ");
    if (text.length > MAX_LOG_CHARS) text = text.slice(0, MAX_LOG_CHARS) + "...[truncated]";
    logs.push([level, text]);
  }
  function takeLogs() {
    const out = logs;
    if (dropped > 0) out.push(["warn", `${dropped} console line(s) dropped (limit ${MAX_LOG_LINES} per request)`]);
    logs = [];
    dropped = 0;
    return out;
  }
  const console = Object.freeze({
    log: (...a) => emit("info", a),
    info: (...a) => emit("info", a),
    debug: (...a) => emit("debug", a),
    warn: (...a) => emit("warn", a),
    error: (...a) => emit("error", a),
  });

  function errorText(e) {
    try {
      if (e instanceof Error && typeof e.stack === "string") return e.stack;
      return "Uncaught " + formatArg(e);
    } catch {
      return "Uncaught [unprintable]";
    }
  }

  // ---- 9. bindings and the request driver ---------------------------------------
  const MAX_HOST_CALLS = 64;
  let handler = null;
  let bindings = []; // [[name, "kv" | "static"], ...]
  let current = null; // the request in flight

  function hostCall(req, op) {
    if (req !== current || req.outcome !== null) {
      return Promise.reject(new Error("bindings can only be used while their request is running"));
    }
    if (req.calls >= MAX_HOST_CALLS) {
      return Promise.reject(new Error(`too many binding calls (limit ${MAX_HOST_CALLS} per request)`));
    }
    req.calls++;
    op.id = req.calls;
    req.queue.push(op);
    return new Promise((res, rej) => req.waiting.set(op.id, { res, rej }));
  }

  function kvBinding(req, binding) {
    return Object.freeze({
      get(key, options = undefined) {
        if (typeof key !== "string") return Promise.reject(new TypeError("KV key must be a string"));
        const type = typeof options === "string" ? options : (options && options.type) || "text";
        if (!["text", "json", "arrayBuffer"].includes(type)) {
          return Promise.reject(new TypeError(`Unsupported KV get type: ${String(type)}`));
        }
        return hostCall(req, { op: "kv_get", binding, key }).then((v) => {
          if (v === null) return null;
          if (type === "json") return parseJSON(v);
          if (type === "arrayBuffer") return utf8Encode(v).buffer;
          return v;
        });
      },
      list(options = {}) {
        const prefix = options.prefix === undefined || options.prefix === null ? "" : String(options.prefix);
        const limit = options.limit === undefined ? 1000 : options.limit;
        if (!Number.isInteger(limit) || limit < 1 || limit > 1000) {
          return Promise.reject(new RangeError("KV list limit must be an integer in 1..1000"));
        }
        const cursor = options.cursor === undefined || options.cursor === null ? null : String(options.cursor);
        return hostCall(req, { op: "kv_list", binding, prefix, limit, cursor }).then(([names, next]) => {
          const result = { keys: names.map((name) => ({ name })), list_complete: next === null };
          if (next !== null) result.cursor = next;
          return result;
        });
      },
    });
  }

  function staticBinding(req, binding) {
    return Object.freeze({
      get(path) {
        if (typeof path !== "string") return Promise.reject(new TypeError("asset path must be a string"));
        return hostCall(req, { op: "static_get", binding, path }).then((found) => {
          if (found === null) return null;
          return new Response(b64decode(found[0]), { headers: { "content-type": found[1] } });
        });
      },
    });
  }

  function makeEnv(req) {
    const env = {};
    for (const [name, kind] of bindings) {
      env[name] = kind === "kv" ? kvBinding(req, name) : staticBinding(req, name);
    }
    return env;
  }

  function install(bindingList, entropy, load) {
    reseed(entropy);
    bindings = bindingList;
    let exported;
    try {
      exported = load();
    } catch (e) {
      return stringify({ t: "error", stack: errorText(e), logs: takeLogs() });
    }
    const shaped = (typeof exported === "object" || typeof exported === "function") && exported !== null;
    if (!shaped) return stringify({ t: "invalid", reason: "the default export must be an object with a fetch() method", logs: takeLogs() });
    if (typeof exported.fetch !== "function") {
      return stringify({ t: "invalid", reason: "the default export has no fetch() handler", logs: takeLogs() });
    }
    handler = exported;
    return stringify({ t: "ready", logs: takeLogs() });
  }

  // One request: returns its final message when the handler settled without
  // awaiting anything (it threw, or returned a Response), else "" and the driver
  // polls after the microtasks ran.
  function start(spec, entropy, maxBody) {
    reseed(entropy);
    takeLogs();
    const req = { calls: 0, queue: [], waiting: new Map(), outcome: null, maxBody };
    current = req;
    let result;
    try {
      const headers = new Headers();
      for (const [k, v] of spec.headers) {
        try { headers.append(k, v); } catch { /* drop what the Headers API cannot hold */ }
      }
      const init = { method: spec.method, headers };
      if (spec.body !== "") init.body = b64decode(spec.body);
      const request = new Request(spec.url, init);
      const ctx = Object.freeze({
        waitUntil(p) { Promise.resolve(p).catch((e) => emit("error", [errorText(e)])); },
        passThroughOnException() {},
      });
      result = apply(handler.fetch, handler, [request, makeEnv(req), ctx]);
    } catch (e) {
      req.outcome = { error: e };
      return poll();
    }
    if (result instanceof Response) {
      req.outcome = { value: result };
      return poll();
    }
    Promise.resolve(result).then(
      (value) => { if (req.outcome === null) req.outcome = { value }; },
      (error) => { if (req.outcome === null) req.outcome = { error }; },
    );
    return "";
  }

  function resume(results) {
    const req = current;
    if (req === null) return "";
    for (const r of results) {
      const w = req.waiting.get(r.id);
      if (w === undefined) continue;
      req.waiting.delete(r.id);
      if ("err" in r) w.rej(new Error(r.err));
      else w.res(r.ok);
    }
    return "";
  }

  function finish(req) {
    current = null;
    if ("error" in req.outcome) return { t: "error", stack: errorText(req.outcome.error) };
    const res = req.outcome.value;
    if (!(res instanceof Response)) {
      return { t: "error", stack: "TypeError: the fetch handler did not return a Response" };
    }
    const state = bodies.get(res);
    const bytes = state.bytes === null ? EMPTY : state.bytes;
    if (bytes.length > req.maxBody) return { t: "too_large", size: bytes.length };
    return { t: "done", status: res.status, headers: headerPairs(res.headers), body: b64encode(bytes) };
  }

  function poll() {
    const req = current;
    let msg;
    if (req === null) msg = { t: "stalled" };
    else if (req.outcome !== null) msg = finish(req);
    else if (req.queue.length > 0) msg = { t: "ops", ops: req.queue.splice(0) };
    else {
      current = null;
      msg = { t: "stalled" };
    }
    msg.logs = takeLogs();
    return stringify(msg);
  }

  // Test hook: one raw ChaCha20 block, so tests can check it against RFC 8439.
  function chacha20(keyB64, counter, nonceB64) {
    return b64encode(chachaBlock(words(b64decode(keyB64)), counter, words(b64decode(nonceB64))));
  }

  // ---- 10. publish ----------------------------------------------------------------
  const globals = {
    Headers, Request, Response, URL, URLSearchParams, TextEncoder, TextDecoder,
    atob, btoa, crypto, console,
    queueMicrotask(callback) {
      if (typeof callback !== "function") throw new TypeError("queueMicrotask needs a function");
      Promise.resolve().then(() => callback());
    },
  };
  for (const [name, value] of Object.entries(globals)) {
    Object.defineProperty(global, name, { value, writable: true, enumerable: false, configurable: true });
  }
  Object.defineProperty(global, "__lattice", {
    value: Object.freeze({ install, start, resume, poll, chacha20 }),
    writable: false, enumerable: false, configurable: false,
  });
})(globalThis);
// The completion value: the engine adapter accepts only strings.
"lattice-prelude";
