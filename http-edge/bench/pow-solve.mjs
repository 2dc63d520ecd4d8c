// How long a shopper's browser takes to solve a seckill proof-of-work challenge.
//
// Runs the README's `solve(challenge, bits)` (copied verbatim below, Web Crypto only, as a
// page would run it) on a few random challenge strings shaped like the server's, checks each
// answer, and prints the median and max solve time and the hash rate.
//
//   node http-edge/bench/pow-solve.mjs [difficulty_bits=20] [runs=10] [batch=256 | sync]
//
// `batch` is how many digests `solve` keeps in flight at once (1: one await per hash).
// `sync` runs `solveSync` instead: the same search with a plain-JS SHA-256 in a loop, no
// await per hash, each answer checked against Web Crypto. Node 20, no npm packages.

// ---- the README snippet, verbatim ------------------------------------------------------
// Finds a nonce such that SHA-256(challenge + nonce) starts with `bits` zero bits.
// Digests are asked for `batch` at a time: one await per hash ran at half the rate.
async function solve(challenge, bits, batch = 256) {
  const prefix = new TextEncoder().encode(challenge);
  const buffers = Array.from({ length: batch }, () => {
    const buffer = new Uint8Array(prefix.length + 20); // 20 digits: any counter value
    buffer.set(prefix);
    return buffer;
  });
  for (let start = 0; ; start += batch) {
    const digests = await Promise.all(buffers.map((buffer, i) => {
      const nonce = String(start + i);
      for (let k = 0; k < nonce.length; k++) buffer[prefix.length + k] = nonce.charCodeAt(k);
      return crypto.subtle.digest('SHA-256', buffer.subarray(0, prefix.length + nonce.length));
    }));
    for (let i = 0; i < batch; i++) {
      if (leadingZeroBits(new Uint8Array(digests[i])) >= bits) return String(start + i);
    }
  }
}

function leadingZeroBits(digest) {
  let count = 0;
  for (const byte of digest) {
    if (byte !== 0) return count + Math.clz32(byte) - 24;
    count += 8;
  }
  return count;
}
// ---- end of the README snippet ---------------------------------------------------------

// ---- solveSync: the same search with a plain-JS SHA-256 --------------------------------
// The challenge's whole 64-byte blocks are hashed once; each nonce then costs the last one
// or two blocks. Returns the same nonce as `solve` (the smallest counter that works).
const SHA256_K = new Int32Array([
  0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
  0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
  0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
  0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
  0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
  0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
  0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
  0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
]);
const SHA256_H0 = new Int32Array([
  0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
]);
const sha256Schedule = new Int32Array(64);

// Writes into `out` the state `state` becomes after the 64-byte block of `bytes` at `offset`
// (`out` may be `state`). No allocation: this runs once or twice per nonce.
function sha256Block(state, bytes, offset, out) {
  const w = sha256Schedule;
  for (let i = 0; i < 16; i++) {
    const o = offset + 4 * i;
    w[i] = (bytes[o] << 24) | (bytes[o + 1] << 16) | (bytes[o + 2] << 8) | bytes[o + 3];
  }
  for (let i = 16; i < 64; i++) {
    const x = w[i - 15];
    const y = w[i - 2];
    const s0 = ((x >>> 7) | (x << 25)) ^ ((x >>> 18) | (x << 14)) ^ (x >>> 3);
    const s1 = ((y >>> 17) | (y << 15)) ^ ((y >>> 19) | (y << 13)) ^ (y >>> 10);
    w[i] = (w[i - 16] + s0 + w[i - 7] + s1) | 0;
  }
  let a = state[0], b = state[1], c = state[2], d = state[3];
  let e = state[4], f = state[5], g = state[6], h = state[7];
  for (let i = 0; i < 64; i++) {
    const S1 = ((e >>> 6) | (e << 26)) ^ ((e >>> 11) | (e << 21)) ^ ((e >>> 25) | (e << 7));
    const t1 = (h + S1 + ((e & f) ^ (~e & g)) + SHA256_K[i] + w[i]) | 0;
    const S0 = ((a >>> 2) | (a << 30)) ^ ((a >>> 13) | (a << 19)) ^ ((a >>> 22) | (a << 10));
    const t2 = (S0 + ((a & b) ^ (a & c) ^ (b & c))) | 0;
    h = g; g = f; f = e; e = (d + t1) | 0; d = c; c = b; b = a; a = (t1 + t2) | 0;
  }
  out[0] = (state[0] + a) | 0; out[1] = (state[1] + b) | 0;
  out[2] = (state[2] + c) | 0; out[3] = (state[3] + d) | 0;
  out[4] = (state[4] + e) | 0; out[5] = (state[5] + f) | 0;
  out[6] = (state[6] + g) | 0; out[7] = (state[7] + h) | 0;
}

function solveSync(challenge, bits) {
  const bytes = new TextEncoder().encode(challenge);
  const whole = bytes.length - (bytes.length % 64);
  const midstate = Int32Array.from(SHA256_H0);
  for (let offset = 0; offset < whole; offset += 64) sha256Block(midstate, bytes, offset, midstate);
  const tail = bytes.subarray(whole);
  const block = new Uint8Array(128);
  const state = new Int32Array(8);
  for (let counter = 0; ; counter++) {
    const nonce = String(counter);
    const length = tail.length + nonce.length; // bytes in the last block(s) before padding
    const blocks = length + 9 <= 64 ? 1 : 2; // + 0x80 and the 8-byte bit length
    block.fill(0);
    block.set(tail);
    for (let k = 0; k < nonce.length; k++) block[tail.length + k] = nonce.charCodeAt(k);
    block[length] = 0x80;
    const bitLength = (bytes.length + nonce.length) * 8; // < 2^32 for any challenge here
    const end = blocks * 64;
    block[end - 4] = bitLength >>> 24;
    block[end - 3] = bitLength >>> 16;
    block[end - 2] = bitLength >>> 8;
    block[end - 1] = bitLength;
    sha256Block(midstate, block, 0, state);
    if (blocks === 2) sha256Block(state, block, 64, state);
    let zeros = 0;
    for (let i = 0; i < 8; i++) {
      if (state[i] !== 0) { zeros += Math.clz32(state[i]); break; }
      zeros += 32;
    }
    if (zeros >= bits) return nonce;
  }
}
// ---- end of solveSync ------------------------------------------------------------------

const BASE64URL = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';

function randomBase64Url(length) {
  const bytes = crypto.getRandomValues(new Uint8Array(length));
  return Array.from(bytes, (byte) => BASE64URL[byte % 64]).join('');
}

// The server's shape: v1.<id>.<expires_ms>.<bits>.<mac>; the solver only sees a string.
function randomChallenge(bits) {
  return `v1.${randomBase64Url(22)}.${Date.now() + 120_000}.${bits}.${randomBase64Url(43)}`;
}

async function check(challenge, nonce, bits) {
  const data = new TextEncoder().encode(challenge + nonce);
  const digest = new Uint8Array(await crypto.subtle.digest('SHA-256', data));
  if (leadingZeroBits(digest) < bits) throw new Error(`wrong answer ${nonce} for ${challenge}`);
}

function median(sorted) {
  const middle = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2;
}

async function main() {
  const bits = Number(process.argv[2] ?? 20);
  const runs = Number(process.argv[3] ?? 10);
  const sync = process.argv[4] === 'sync';
  const batch = sync ? 1 : Number(process.argv[4] ?? 256);
  if (!(bits >= 1 && bits <= 32 && runs >= 1 && runs <= 1000 && batch >= 1 && batch <= 65536)) {
    console.error('usage: node pow-solve.mjs [difficulty_bits 1..32] [runs 1..1000] [batch 1..65536 | sync]');
    process.exit(2);
  }
  const times_ms = [];
  let hashes = 0;
  for (let run = 0; run < runs; run++) {
    const challenge = randomChallenge(bits);
    const started = performance.now();
    const nonce = sync ? solveSync(challenge, bits) : await solve(challenge, bits, batch);
    const elapsed_ms = performance.now() - started;
    await check(challenge, nonce, bits);
    times_ms.push(elapsed_ms);
    // A whole batch is hashed even when the answer is its first entry.
    hashes += (Math.floor(Number(nonce) / batch) + 1) * batch;
    console.log(`run ${run + 1}: nonce ${nonce}, ${elapsed_ms.toFixed(0)} ms`);
  }
  times_ms.sort((a, b) => a - b);
  const total_ms = times_ms.reduce((sum, t) => sum + t, 0);
  const solver = sync ? 'solveSync' : `solve, batch ${batch}`;
  console.log(
    `difficulty ${bits} bits, ${solver}, ${runs} runs, node ${process.version}: ` +
      `median ${median(times_ms).toFixed(0)} ms, max ${times_ms[times_ms.length - 1].toFixed(0)} ms, ` +
      `${Math.round(hashes / (total_ms / 1000)).toLocaleString('en-US')} hashes/s`,
  );
}

await main();
