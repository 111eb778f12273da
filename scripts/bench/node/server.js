// Minimal fan-out server on npm's `ws`: the Node.js peer in scripts/bench.sh.
//
// Protocol (JSON text frames):
//   client -> server  {"op":"join","room":R}  {"op":"leave","room":R}
//                     {"op":"pub","room":R,"data":<any JSON>}  {"op":"pong"}
//   server -> client  {"op":"joined","room":R}  {"op":"left","room":R}
//                     {"op":"msg","room":R,"data":<the published JSON>}  {"op":"ping"}
//
// A message is encoded once and the same Buffer is sent to every member of the room.
// Every HEARTBEAT_MS the server sends {"op":"ping"} to each client; a client that sent
// nothing for two intervals is terminated.
'use strict';

const { WebSocketServer } = require('ws');

const host = process.env.HOST || '127.0.0.1';
const port = Number(process.env.PORT || 18090);
const heartbeatMs = Number(process.env.HEARTBEAT_MS || 10000);

const rooms = new Map(); // name -> Set<WebSocket>

const wss = new WebSocketServer({
  host,
  port,
  perMessageDeflate: false,
  maxPayload: 64 * 1024,
  clientTracking: true,
});

function leaveAll(ws) {
  for (const name of ws.rooms) {
    const members = rooms.get(name);
    if (members) {
      members.delete(ws);
      if (members.size === 0) rooms.delete(name);
    }
  }
  ws.rooms.clear();
}

wss.on('connection', (ws) => {
  ws.rooms = new Set();
  ws.lastSeen = Date.now();
  ws.on('error', () => {});
  ws.on('close', () => leaveAll(ws));
  ws.on('message', (data) => {
    ws.lastSeen = Date.now();
    let m;
    try {
      m = JSON.parse(data);
    } catch (e) {
      ws.send('{"op":"error","error":"bad json"}');
      return;
    }
    switch (m.op) {
      case 'pub': {
        const members = rooms.get(m.room);
        if (!members) return;
        const out = Buffer.from(JSON.stringify({ op: 'msg', room: m.room, data: m.data }));
        for (const c of members) {
          if (c.readyState === 1) c.send(out, { binary: false });
        }
        return;
      }
      case 'join': {
        let members = rooms.get(m.room);
        if (!members) rooms.set(m.room, (members = new Set()));
        members.add(ws);
        ws.rooms.add(m.room);
        ws.send(JSON.stringify({ op: 'joined', room: m.room }));
        return;
      }
      case 'leave': {
        const members = rooms.get(m.room);
        if (members) {
          members.delete(ws);
          if (members.size === 0) rooms.delete(m.room);
        }
        ws.rooms.delete(m.room);
        ws.send(JSON.stringify({ op: 'left', room: m.room }));
        return;
      }
      case 'pong':
        return;
      default:
        ws.send('{"op":"error","error":"unknown op"}');
    }
  });
});

const ping = Buffer.from('{"op":"ping"}');
const timer = setInterval(() => {
  const now = Date.now();
  for (const ws of wss.clients) {
    if (now - ws.lastSeen > 2 * heartbeatMs) {
      ws.terminate();
    } else {
      ws.send(ping, { binary: false });
    }
  }
}, heartbeatMs);

wss.on('listening', () => {
  console.log(`nodews fan-out server listening on ws://${host}:${port}/ (ws ${require('ws/package.json').version})`);
});

function shutdown() {
  clearInterval(timer);
  for (const ws of wss.clients) ws.terminate();
  wss.close(() => process.exit(0));
  setTimeout(() => process.exit(0), 2000).unref();
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
