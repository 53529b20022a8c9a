#!/usr/bin/env node
// A socket.io 4.8 chat server speaking the subset of the contract (docs/PROTOCOL.md) that chat-bench drives, with everything in
// memory in one Node.js process: the shape of the seed's own stack (real socket.io on Node), as a baseline for
// benchmarks run side by side with ChatBroker. See README.md beside this file.
//
//   CHAT_JWT_SECRET=<32+ bytes> node chat_peer.js [serve] [--host 127.0.0.1] [--port 3001]
//
// Not a broker: no store, no limits, no receipts/typing/edits. Flags it does not know are accepted and ignored, so
// a benchmark script can start it with the same command line as ChatBroker or the Python peer.
"use strict";

const crypto = require("crypto");
const fs = require("fs");
const http = require("http");

let Server;
try {
  ({ Server } = require("socket.io"));
} catch (e) {
  process.stderr.write(
    "chat_peer: cannot load socket.io (" + e.message.split("\n")[0] + ").\n" +
      "Set NODE_PATH to a node_modules that has socket.io 4.8 (e.g. NODE_PATH=/tmp/sio/node_modules), " +
      "or run `npm install socket.io@4.8.1` next to this file.\n");
  process.exit(69);
}

const NS = "/chat";
const MESSAGE_TYPES = new Set(["Text", "Image", "File", "System"]);
const HTTP_STATUS = {
  unauthenticated: 401, invalid_payload: 400, not_found: 404, not_a_member: 403, forbidden: 403,
  payload_too_large: 413, rate_limited: 429, internal: 500,
};

// ---------------------------------------------------------------------------------------------------- options

function parseArgs(argv) {
  const opts = {};
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (!arg.startsWith("--")) continue; // `serve` and other positionals
    const eq = arg.indexOf("=");
    let key = arg.slice(2);
    let value = true;
    if (eq >= 0) {
      key = arg.slice(2, eq);
      value = arg.slice(eq + 1);
    } else if (i + 1 < argv.length && !argv[i + 1].startsWith("--")) {
      value = argv[++i];
    }
    opts[key] = value;
  }
  return opts;
}

function fail(message) {
  process.stderr.write("chat_peer: " + message + "\n");
  process.exit(64);
}

function numberOption(opts, key, env, fallback, { min = 0, integer = false } = {}) {
  const raw = opts[key] !== undefined ? opts[key] : process.env[env];
  if (raw === undefined || raw === "") return fallback;
  const n = Number(raw);
  if (!Number.isFinite(n) || n < min || (integer && !Number.isInteger(n))) fail(`--${key}: not a valid number: ${raw}`);
  return n;
}

const opts = parseArgs(process.argv.slice(2));
const config = {
  host: typeof opts.host === "string" ? opts.host : process.env.CHAT_HOST || "127.0.0.1",
  port: numberOption(opts, "port", "CHAT_PORT", 3001, { integer: true }),
  pingInterval: numberOption(opts, "ping-interval", "CHAT_PING_INTERVAL", 25), // seconds, as the contract's flags
  pingTimeout: numberOption(opts, "ping-timeout", "CHAT_PING_TIMEOUT", 20),
  maxPayload: numberOption(opts, "max-payload", "CHAT_MAX_PAYLOAD", 1000000, { min: 1, integer: true }),
  maxContent: numberOption(opts, "max-content", "CHAT_MAX_CONTENT", 16384, { min: 1, integer: true }),
  syncLimit: numberOption(opts, "sync-limit", "CHAT_SYNC_LIMIT", 1000, { min: 1, integer: true }),
  maxMembers: numberOption(opts, "max-members-per-request", "CHAT_MAX_MEMBERS_PER_REQUEST", 1000, { min: 1, integer: true }),
};
if (config.port > 65535) fail(`--port: out of range: ${config.port}`);

function loadSecret() {
  let secret = process.env.CHAT_JWT_SECRET;
  let where = "CHAT_JWT_SECRET";
  const file = typeof opts["jwt-secret-file"] === "string" ? opts["jwt-secret-file"] : process.env.CHAT_JWT_SECRET_FILE;
  if (!secret && file) {
    try {
      secret = fs.readFileSync(file, "utf8").trim();
    } catch (e) {
      fail(`cannot read the JWT secret file ${file}: ${e.message}`);
    }
    where = file;
  }
  if (!secret) fail("no JWT secret: set CHAT_JWT_SECRET (or --jwt-secret-file)");
  if (Buffer.byteLength(secret) < 32) fail(`the JWT secret from ${where} is shorter than 32 bytes`);
  return Buffer.from(secret, "utf8");
}
const SECRET = loadSecret();

// ---------------------------------------------------------------------------------------------------- errors and JWT

class ApiError extends Error {
  constructor(code, message) {
    super(message);
    this.code = code;
  }
  get body() {
    return { success: false, code: this.code, error: this.message };
  }
}

function base64urlJSON(part) {
  return JSON.parse(Buffer.from(part, "base64url").toString("utf8"));
}

/** Verifies an HS256 JWT with the configured secret; returns {user, company, service} or throws ApiError. */
function verifyToken(token) {
  if (typeof token !== "string" || token === "") throw new ApiError("unauthenticated", "missing token");
  const parts = token.split(".");
  if (parts.length !== 3) throw new ApiError("unauthenticated", "invalid token");
  let header, claims;
  try {
    header = base64urlJSON(parts[0]);
    claims = base64urlJSON(parts[1]);
  } catch {
    throw new ApiError("unauthenticated", "invalid token");
  }
  if (!header || header.alg !== "HS256") throw new ApiError("unauthenticated", "invalid token");
  const expected = crypto.createHmac("sha256", SECRET).update(parts[0] + "." + parts[1]).digest();
  const given = Buffer.from(parts[2], "base64url");
  if (given.length !== expected.length || !crypto.timingSafeEqual(given, expected)) {
    throw new ApiError("unauthenticated", "invalid token");
  }
  if (!claims || typeof claims.sub !== "string" || !claims.sub || typeof claims.companyId !== "string" ||
      !claims.companyId || typeof claims.exp !== "number") {
    throw new ApiError("unauthenticated", "invalid token");
  }
  if (claims.exp * 1000 <= Date.now()) throw new ApiError("unauthenticated", "token expired");
  return { user: claims.sub, company: claims.companyId, service: claims.role === "service" || claims.service === true };
}

function bearer(header) {
  if (typeof header !== "string" || header.slice(0, 7).toLowerCase() !== "bearer ") return undefined;
  return header.slice(7).trim();
}

// ---------------------------------------------------------------------------------------------------- state

/** Every thread, by id: {id, company, name, type, createdBy, createdAt, members: string[], memberSet, lastSeq,
 *  messages (index seq-1), byTempId}. */
const threads = new Map();
/** "<company>\0<user>" → Set of thread ids. */
const userThreads = new Map();
/** Two-member direct threads: "<company>\0<a>\0<b>" (a < b) → thread id. */
const directThreads = new Map();
const counters = { messages: 0, threads: 0, authFailures: 0 };

const threadRoom = (id) => "t:" + id;
const userRoom = (company, user) => "u:" + company + ":" + user;
const userKey = (company, user) => company + "\0" + user;

function threadJSON(t) {
  const last = t.messages.length ? t.messages[t.messages.length - 1] : null;
  return {
    id: t.id, companyId: t.company, name: t.name, type: t.type, createdBy: t.createdBy, createdAt: t.createdAt,
    members: t.members, lastSeq: t.lastSeq, lastMessage: last,
  };
}

/** The thread `id` as seen by `who`: not_found across companies, not_a_member for a non-member. */
function accessibleThread(who, id) {
  if (typeof id !== "string" || id === "") throw new ApiError("invalid_payload", "`threadId` must be a non-empty string.");
  const t = threads.get(id);
  if (!t || t.company !== who.company) throw new ApiError("not_found", "No such thread.");
  if (!t.memberSet.has(who.user)) throw new ApiError("not_a_member", "You are not a member of this thread.");
  return t;
}

// ---------------------------------------------------------------------------------------------------- socket.io

const httpServer = http.createServer(handleHTTP);
const io = new Server(httpServer, {
  serveClient: false,
  cors: { origin: "*" },
  pingInterval: config.pingInterval * 1000,
  pingTimeout: config.pingTimeout * 1000,
  maxHttpBufferSize: config.maxPayload,
});
const chat = io.of(NS);

chat.use((socket, next) => {
  const auth = socket.handshake.auth || {};
  const token = typeof auth.token === "string" && auth.token ? auth.token : bearer(socket.handshake.headers.authorization);
  try {
    socket.data.who = verifyToken(token);
    next();
  } catch (e) {
    counters.authFailures++;
    next(new Error(e instanceof ApiError ? e.message : "invalid token")); // → CONNECT_ERROR {message}
  }
});

/** Registers `handler(who, data)` for `event`; its result (or error) answers the ack when one is asked. */
function on(socket, event, handler) {
  socket.on(event, (data, ack) => {
    if (typeof ack !== "function") ack = undefined;
    let answer;
    try {
      answer = { success: true, ...handler(socket, data) };
    } catch (e) {
      answer = e instanceof ApiError ? e.body : { success: false, code: "internal", error: String(e && e.message) };
      if (!(e instanceof ApiError)) process.stderr.write(`chat_peer: ${event}: ${e && e.stack}\n`);
    }
    if (ack) ack(answer);
  });
}

function needObject(data) {
  if (data === null || typeof data !== "object" || Array.isArray(data)) {
    throw new ApiError("invalid_payload", "The payload must be a JSON object.");
  }
  return data;
}

const HANDLED = new Set(["chat:send", "chat:sync", "chat:history", "chat:join", "chat:leave"]);

chat.on("connection", (socket) => {
  const who = socket.data.who;
  const rooms = [userRoom(who.company, who.user)];
  for (const id of userThreads.get(userKey(who.company, who.user)) || []) rooms.push(threadRoom(id));
  socket.join(rooms);

  on(socket, "chat:send", (socket, data) => ({ message: send(socket.data.who, needObject(data)) }));
  on(socket, "chat:sync", (socket, data) => ({ threads: sync(socket.data.who, needObject(data)) }));
  on(socket, "chat:history", (socket, data) => history(socket.data.who, needObject(data)));
  on(socket, "chat:join", (socket, data) => {
    socket.join(threadRoom(accessibleThread(socket.data.who, needObject(data).threadId).id));
    return {};
  });
  on(socket, "chat:leave", (socket, data) => {
    socket.leave(threadRoom(accessibleThread(socket.data.who, needObject(data).threadId).id));
    return {};
  });
  // Everything else of the contract (receipts, typing, edit, delete) is not implemented by this peer.
  socket.onAny((event, ...args) => {
    if (HANDLED.has(event)) return;
    const ack = args[args.length - 1];
    if (typeof ack === "function") {
      ack({ success: false, code: "invalid_payload", error: `The event ${event} is not supported by this peer.` });
    }
  });
});

/** chat:send: the next seq of the thread, stored, broadcast to the thread's room (sender's sockets included). */
function send(who, data) {
  const t = accessibleThread(who, data.threadId);
  const type = data.type === undefined || data.type === null ? "Text" : data.type;
  if (!MESSAGE_TYPES.has(type)) throw new ApiError("invalid_payload", "`type` must be one of Text, Image, File, System.");
  if (type === "System" && !who.service) throw new ApiError("forbidden", "Only service tokens may send System messages.");
  const attachmentUrl = data.attachmentUrl === undefined ? null : data.attachmentUrl;
  const attachmentType = data.attachmentType === undefined ? null : data.attachmentType;
  for (const [k, v] of [["attachmentUrl", attachmentUrl], ["attachmentType", attachmentType]]) {
    if (v !== null && typeof v !== "string") throw new ApiError("invalid_payload", `\`${k}\` must be a string.`);
  }
  const content = data.content;
  if (typeof content !== "string" || (content === "" && !attachmentUrl)) {
    throw new ApiError("invalid_payload", "`content` must be a non-empty string.");
  }
  if (content.length > config.maxContent / 3 && Buffer.byteLength(content) > config.maxContent) {
    throw new ApiError("payload_too_large", `\`content\` is over ${config.maxContent} bytes.`);
  }
  const tempId = data.tempId === undefined ? null : data.tempId;
  if (tempId !== null && (typeof tempId !== "string" || tempId.length > 200)) {
    throw new ApiError("invalid_payload", "`tempId` must be a string of at most 200 characters.");
  }
  if (tempId !== null) {
    const previous = t.byTempId.get(who.user + "\0" + tempId);
    if (previous) return previous; // an idempotent resend: no new seq, no broadcast
  }
  const message = {
    id: crypto.randomUUID(), threadId: t.id, seq: ++t.lastSeq, senderId: who.user, type, content,
    attachmentUrl, attachmentType, createdAt: new Date().toISOString(), editedAt: null, deletedAt: null, tempId,
  };
  t.messages.push(message);
  if (tempId !== null) t.byTempId.set(who.user + "\0" + tempId, message);
  counters.messages++;
  chat.to(threadRoom(t.id)).emit("chat:message", { threadId: t.id, message, tempId });
  return message;
}

/** chat:sync: per thread, the events after `afterSeq` as `{event, data}` (only chat:message exists here). */
function sync(who, data) {
  const list = data.threads;
  if (!Array.isArray(list) || list.length > 1000) {
    throw new ApiError("invalid_payload", "`threads` must be a list of {threadId, afterSeq}.");
  }
  return list.map((entry) => {
    const threadId = entry && entry.threadId;
    try {
      const t = accessibleThread(who, threadId);
      const after = entry.afterSeq === undefined || entry.afterSeq === null ? 0 : entry.afterSeq;
      if (!Number.isInteger(after) || after < 0) throw new ApiError("invalid_payload", "`afterSeq` must be an integer ≥ 0.");
      const page = t.messages.slice(after, after + config.syncLimit);
      return {
        threadId: t.id,
        events: page.map((m) => ({ event: "chat:message", data: { threadId: t.id, message: m, tempId: m.tempId } })),
        hasMore: after + page.length < t.messages.length,
      };
    } catch (e) {
      if (!(e instanceof ApiError)) throw e;
      return { threadId: typeof threadId === "string" ? threadId : null, code: e.code, error: e.message };
    }
  });
}

/** chat:history: a page of messages before `beforeSeq`, ascending. */
function history(who, data) {
  const t = accessibleThread(who, data.threadId);
  const limit = data.limit === undefined || data.limit === null ? 50 : data.limit;
  if (!Number.isInteger(limit) || limit < 1 || limit > 100) throw new ApiError("invalid_payload", "`limit` must be 1…100.");
  let before = data.beforeSeq === undefined || data.beforeSeq === null ? t.lastSeq + 1 : data.beforeSeq;
  if (!Number.isInteger(before) || before < 0) throw new ApiError("invalid_payload", "`beforeSeq` must be an integer ≥ 0.");
  const end = Math.max(0, Math.min(before, t.lastSeq + 1) - 1); // messages[0..end) have seq < before
  const start = Math.max(0, end - limit);
  return { messages: t.messages.slice(start, end), hasMore: start > 0 };
}

// ---------------------------------------------------------------------------------------------------- REST

/** POST /chat/threads {name?, type, memberIds}: creates a thread with the caller as a member. */
function createThread(who, body) {
  needObject(body);
  const type = body.type === undefined ? "group" : body.type;
  if (type !== "group" && type !== "direct") throw new ApiError("invalid_payload", "`type` must be group or direct.");
  if (body.name !== undefined && body.name !== null && typeof body.name !== "string") {
    throw new ApiError("invalid_payload", "`name` must be a string.");
  }
  const ids = body.memberIds === undefined ? [] : body.memberIds;
  if (!Array.isArray(ids) || ids.some((m) => typeof m !== "string" || m === "")) {
    throw new ApiError("invalid_payload", "`memberIds` must be a list of user ids.");
  }
  if (ids.length > config.maxMembers) throw new ApiError("payload_too_large", `At most ${config.maxMembers} members per request.`);
  const members = [who.user];
  const memberSet = new Set(members);
  for (const m of ids) if (!memberSet.has(m)) { memberSet.add(m); members.push(m); }
  let directKey;
  if (type === "direct") {
    if (members.length !== 2) throw new ApiError("invalid_payload", "A direct thread has exactly 2 members.");
    directKey = who.company + "\0" + [...members].sort().join("\0");
    const existing = directThreads.get(directKey);
    if (existing) return { status: 200, thread: threads.get(existing) };
  }
  const t = {
    id: crypto.randomUUID(), company: who.company, name: typeof body.name === "string" ? body.name : null, type,
    createdBy: who.user, createdAt: new Date().toISOString(), members, memberSet, lastSeq: 0, messages: [],
    byTempId: new Map(),
  };
  threads.set(t.id, t);
  if (directKey) directThreads.set(directKey, t.id);
  counters.threads++;
  for (const m of members) {
    const key = userKey(who.company, m);
    let set = userThreads.get(key);
    if (!set) userThreads.set(key, (set = new Set()));
    set.add(t.id);
  }
  // The members' live sockets join the room before the answer, and hear about the thread.
  const memberRooms = members.map((m) => userRoom(who.company, m));
  chat.in(memberRooms).socketsJoin(threadRoom(t.id));
  chat.to(memberRooms).emit("chat:thread:created", { thread: threadJSON(t) });
  return { status: 201, thread: t };
}

function reply(res, status, body, type = "application/json") {
  const text = type === "application/json" ? JSON.stringify(body) : body;
  res.writeHead(status, {
    "Content-Type": type, "Content-Length": Buffer.byteLength(text), "Access-Control-Allow-Origin": "*",
  });
  res.end(text);
}

function handleHTTP(req, res) {
  const path = req.url.split("?")[0];
  if (req.method === "OPTIONS" && (path.startsWith("/chat/") || path === "/chat")) {
    res.writeHead(204, {
      "Access-Control-Allow-Origin": "*", "Access-Control-Allow-Methods": "GET, POST, PATCH, DELETE, OPTIONS",
      "Access-Control-Allow-Headers": "Authorization, Content-Type", "Access-Control-Max-Age": "600",
    });
    return res.end();
  }
  if (req.method === "GET" && path === "/health") return reply(res, 200, { status: "ok" });
  if (req.method === "GET" && path === "/metrics") {
    return reply(res, 200,
      "# TYPE chat_connections gauge\nchat_connections " + chat.sockets.size + "\n" +
        "# TYPE chat_messages_sent_total counter\nchat_messages_sent_total " + counters.messages + "\n" +
        "# TYPE chat_threads_created_total counter\nchat_threads_created_total " + counters.threads + "\n" +
        "# TYPE chat_auth_failures_total counter\nchat_auth_failures_total " + counters.authFailures + "\n",
      "text/plain; version=0.0.4");
  }
  if (req.method === "POST" && path === "/chat/threads") {
    const chunks = [];
    let size = 0;
    let tooLarge = false;
    req.on("data", (c) => {
      size += c.length;
      if (size > config.maxPayload) tooLarge = true;
      else chunks.push(c);
    });
    req.on("end", () => {
      try {
        if (tooLarge) throw new ApiError("payload_too_large", "Request body too large.");
        const who = verifyToken(bearer(req.headers.authorization));
        let body;
        try {
          body = JSON.parse(Buffer.concat(chunks).toString("utf8") || "{}");
        } catch {
          throw new ApiError("invalid_payload", "The body must be JSON.");
        }
        const { status, thread } = createThread(who, body);
        reply(res, status, { thread: threadJSON(thread) });
      } catch (e) {
        if (!(e instanceof ApiError)) {
          process.stderr.write(`chat_peer: POST /chat/threads: ${e && e.stack}\n`);
          e = new ApiError("internal", "Internal error.");
        }
        reply(res, HTTP_STATUS[e.code], { code: e.code, error: e.message });
      }
    });
    return;
  }
  // Not part of this peer: the other REST routes of the contract.
  reply(res, 404, { code: "not_found", error: "Unknown route." });
}

// ---------------------------------------------------------------------------------------------------- start / stop

httpServer.on("error", (e) => fail(`cannot listen on ${config.host}:${config.port}: ${e.message}`));
httpServer.listen(config.port, config.host, () => {
  const sio = require("socket.io/package.json").version;
  process.stderr.write(
    `chat_peer (socket.io ${sio}, node ${process.version}) listening on http://${config.host}:${config.port} ` +
      `(pid ${process.pid})\n`);
});

let stopping = false;
function stop() {
  if (stopping) return;
  stopping = true;
  io.close(() => process.exit(0)); // closes every client and the HTTP server
  setTimeout(() => process.exit(0), 3000).unref();
}
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
