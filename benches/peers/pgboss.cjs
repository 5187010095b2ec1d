// pg-boss as a peer of Cairn's scheduler (benches/support/peers.rs runs it).
//   node pgboss.cjs work URL POLL_MS[:BATCH]|default  a worker; prints READY, then one line per job:
//                                               JOB <kind> <i> <due ms> <started ms>
//   node pgboss.cjs load URL KIND COUNT T0_MS SPREAD_MS
//                                               queues COUNT no-op jobs, job i due at
//                                               T0 + i * SPREAD / COUNT; prints LOADED
"use strict";
const PgBoss = require("pg-boss");
const { performance } = require("node:perf_hooks");

const QUEUE = "noop";
const now = () => performance.timeOrigin + performance.now();

async function boss(url, options = {}) {
  const b = new PgBoss({ connectionString: url, ...options });
  b.on("error", (e) => console.error(`pg-boss: ${e.message}`));
  await b.start();
  if (!(await b.getQueue(QUEUE))) {
    try {
      await b.createQueue(QUEUE);
    } catch (e) {
      // Created meanwhile by the other worker.
    }
  }
  return b;
}

async function work(url, poll) {
  const b = await boss(url);
  // POLL_MS[:BATCH_SIZE], or `default`.
  const [ms, batch] = poll.split(":");
  const options = ms === "default" ? {} : { pollingIntervalSeconds: Number(ms) / 1000 };
  if (batch) options.batchSize = Number(batch);
  await b.work(QUEUE, options, async (jobs) => {
    const started = now();
    for (const job of jobs) {
      process.stdout.write(`JOB ${job.data.k} ${job.data.i} ${job.data.at} ${started}\n`);
    }
  });
  process.stdout.write("READY\n");
  const stop = async () => {
    await b.stop({ graceful: false, wait: false }).catch(() => {});
    process.exit(0);
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
}

async function load(url, kind, count, t0, spread) {
  const b = await boss(url, { supervise: false, schedule: false });
  const jobs = [];
  for (let i = 0; i < count; i++) {
    const at = t0 + Math.floor((i * spread) / count);
    jobs.push({ name: QUEUE, data: { k: kind, i, at }, startAfter: new Date(at).toISOString() });
  }
  for (let i = 0; i < jobs.length; i += 1000) {
    await b.insert(jobs.slice(i, i + 1000));
  }
  await b.stop({ graceful: false, wait: true });
  process.stdout.write("LOADED\n");
  process.exit(0);
}

const [cmd, url, ...rest] = process.argv.slice(2);
const run =
  cmd === "work"
    ? work(url, rest[0])
    : load(url, rest[0], Number(rest[1]), Number(rest[2]), Number(rest[3]));
run.catch((e) => {
  console.error(e);
  process.exit(1);
});
