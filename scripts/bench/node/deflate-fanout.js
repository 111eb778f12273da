// Fan-out through switchboard with and without permessage-deflate, on npm's `ws` (the
// Rust load generator's WebSocket library has no compression): S subscribers in one room,
// one publisher sending M messages of a realistic JSON payload, at most WINDOW in flight.
// Prints one JSON line: deliveries/s, the broker's CPU per delivery (from /proc), and the
// bytes the subscribers received on the wire.
//
//   BROKER_PID=<pid> URL=ws://127.0.0.1:18000/ws DEFLATE=1 SUBS=100 MESSAGES=5000 \
//     node deflate-fanout.js
//
// Loopback only; every loop is bounded by MESSAGES and a 60 s deadline.
'use strict';

const fs = require('fs');
const WebSocket = require('ws');

const url = process.env.URL || 'ws://127.0.0.1:18000/ws';
const deflate = process.env.DEFLATE === '1';
const subs = Number(process.env.SUBS || 100);
const messages = Number(process.env.MESSAGES || 5000);
const window = Number(process.env.WINDOW || 50);
const brokerPid = process.env.BROKER_PID;
const room = 'bench:deflate';

if (!/^ws:\/\/(127\.0\.0\.1|localhost|\[::1\])[:/]/.test(url)) {
  console.error('loopback URLs only');
  process.exit(2);
}

// About 600 bytes of the kind of JSON an agent host publishes.
const payload = {
  kind: 'agent.step',
  conversation: 'c-8f2e1a',
  step: { name: 'search_documents', status: 'running', progress: 0.42 },
  text: 'The assistant is reading the quarterly report and the notes attached to the ticket, '
    + 'then it will draft a summary for the customer with the figures that changed since the '
    + 'last review and the open questions that need an answer from the finance team.',
  tags: ['search', 'summary', 'finance', 'customer'],
};

function cpuSeconds(pid) {
  if (!pid) return NaN;
  const fields = fs.readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
  const ticks = Number(fields[11]) + Number(fields[12]);
  return ticks / 100;
}

function open(onMessage) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, ['switchboard.v1'], { perMessageDeflate: deflate });
    ws.on('error', reject);
    ws.on('message', (data, isBinary) => onMessage(ws, data, isBinary));
    ws.on('open', () => resolve(ws));
  });
}

async function main() {
  let delivered = 0;
  let wireBytes = 0;
  let acked = 0;
  let wake = null;
  const joined = new Set();
  const onSub = (ws, data) => {
    for (const line of data.toString().split('\n')) {
      if (!line) continue;
      const msg = JSON.parse(line);
      if (msg.type === 'room.message') {
        delivered++;
        if (wake) wake();
      } else if (msg.type === 'room.joined') {
        joined.add(ws);
      } else if (msg.type === 'system.ping') {
        ws.send('{"type":"system.pong"}');
      }
    }
  };
  const clients = [];
  for (let i = 0; i < subs; i++) clients.push(await open(onSub));
  for (const ws of clients) {
    ws._socket.on('data', (chunk) => { wireBytes += chunk.length; });
    ws.send(JSON.stringify({ type: 'room.join', room, id: 'j' }));
  }
  const publisher = await open((ws, data) => {
    for (const line of data.toString().split('\n')) {
      if (line && JSON.parse(line).type === 'ack') {
        acked++;
        if (wake) wake();
      }
    }
  });
  publisher.send(JSON.stringify({ type: 'room.join', room, id: 'pj' }));
  const deadline = Date.now() + 60000;
  while (joined.size < subs && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));

  const cpu0 = cpuSeconds(brokerPid);
  const wire0 = wireBytes;
  const t0 = process.hrtime.bigint();
  const expected = messages * subs;
  let sent = 0;
  while (delivered < expected && Date.now() < deadline) {
    while (sent < messages && sent - Math.floor(delivered / subs) < window) {
      publisher.send(JSON.stringify({ type: 'room.publish', room, payload: { n: sent, ...payload } }));
      sent++;
    }
    await new Promise((r) => { wake = r; setTimeout(r, 50); });
    wake = null;
  }
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  const cpu = cpuSeconds(brokerPid) - cpu0;
  console.log(JSON.stringify({
    deflate, subs, messages, delivered, lost: expected - delivered,
    deliveries_per_s: Math.round(delivered / seconds),
    broker_us_per_delivery: Number(((cpu * 1e6) / delivered).toFixed(2)),
    wire_bytes_per_delivery: Math.round((wireBytes - wire0) / delivered),
    seconds: Number(seconds.toFixed(2)),
  }));
  for (const ws of [...clients, publisher]) ws.terminate();
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
